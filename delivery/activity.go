package delivery

import (
	"maps"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ternmta/tern/queue"
)

// activityEvents is how many recent outcomes each queue keeps for its
// detail view: enough to see a pattern in the replies, small enough that
// thousands of queues cost little (the ring grows only as events come).
const activityEvents = 100

// ActivityEvent is one recipient outcome as the queue detail view shows it.
type ActivityEvent struct {
	Time       time.Time
	ID         queue.ID
	Recipient  string
	Kind       queue.Kind
	Reply      string
	RemoteHost string
	RemoteIP   netip.Addr
	SourceIP   netip.Addr
}

// QueueActivity is what the scheduler knows of one queue key right now.
type QueueActivity struct {
	// Connections counts the queue's connection workers: connections open
	// or being opened.
	Connections int
	// DeliveredLastMinute counts recipients delivered in the last minute.
	DeliveredLastMinute int
	// LastError is the latest reply that was not a success (or Tern's own
	// diagnostic when no server answered), with its time; empty if none.
	LastError   string
	LastErrorAt time.Time
	// Events are the most recent outcomes, newest first.
	Events []ActivityEvent
	// Held says why the scheduler holds the queue's mail without sending
	// it ("max-msg-rate 0 at tern.conf:12:5"); empty when it does not.
	Held string
}

// activity is a queue's recent history: a ring of outcomes and a
// per-second count of deliveries over the last minute.
type activity struct {
	mu        sync.Mutex
	ring      []ActivityEvent // grows to activityEvents, then wraps
	n         int             // events ever added; the newest is ring[(n-1)%len]
	lastErr   string
	lastErrAt time.Time
	sec       [60]int64 // the Unix second each slot of perSec counts
	perSec    [60]int32
}

// add records ev. It is called once per recipient outcome, so it only
// copies a few fields under a short lock.
func (a *activity) add(ev *Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := ActivityEvent{Time: ev.Time, ID: ev.ID, Recipient: ev.Recipient.Address,
		Kind: ev.Kind, Reply: ev.Reply, RemoteHost: ev.RemoteHost, RemoteIP: ev.RemoteIP, SourceIP: ev.SourceIP}
	if len(a.ring) < activityEvents {
		a.ring = append(a.ring, e)
	} else {
		a.ring[a.n%activityEvents] = e
	}
	a.n++
	if ev.Kind == queue.Delivered {
		now := time.Now().Unix() // wall time: a rate is about now, not the scheduler's clock
		i := now % 60
		if a.sec[i] != now {
			a.sec[i], a.perSec[i] = now, 0
		}
		a.perSec[i]++
	} else {
		a.lastErr, a.lastErrAt = strings.TrimSpace(ev.Reply), ev.Time
	}
}

// snapshot copies the activity with at most events outcomes.
func (a *activity) snapshot(events int) QueueActivity {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := QueueActivity{LastError: a.lastErr, LastErrorAt: a.lastErrAt}
	now := time.Now().Unix()
	for i, s := range a.sec {
		if s > now-60 && s <= now {
			out.DeliveredLastMinute += int(a.perSec[i])
		}
	}
	events = min(events, a.n, activityEvents)
	out.Events = make([]ActivityEvent, 0, max(events, 0))
	for i := 1; i <= events; i++ {
		out.Events = append(out.Events, a.ring[(a.n-i)%activityEvents])
	}
	return out
}

// Activity reports the queue key's connections (those of its provider),
// delivery rate, last error and up to events recent outcomes (newest
// first), and why it is held, if it is. A key the scheduler has not worked
// on yet has no connections, rate or outcomes.
func (s *Scheduler) Activity(key queue.Key, events int) QueueActivity {
	s.mu.Lock()
	ki := s.keys[key]
	conns := 0
	if ki != nil && ki.runner != nil {
		conns = ki.runner.workers
	}
	s.mu.Unlock()
	if ki == nil {
		return QueueActivity{Events: []ActivityEvent{}, Held: s.Held(key)}
	}
	out := ki.act.snapshot(events)
	out.Connections = conns
	out.Held = s.Held(key)
	return out
}

// Connections is the number of outbound connection workers running.
func (s *Scheduler) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// ConnectionsByVMTA counts the connection workers of each VMTA.
func (s *Scheduler) ConnectionsByVMTA() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.perVMTA)
}

// SetMode puts every existing queue sel matches into backoff mode (or back
// to normal), as an operator's override of the reply rules; it returns how
// many of those queues changed mode. The mode belongs to a queue's
// provider, so the other domains of the same provider (for the same VMTA)
// change with it. A queue a rule or a timer later moves out of the mode
// follows its rules from then on.
func (s *Scheduler) SetMode(sel queue.Selector, backoff bool) int {
	n := 0
	changed := map[*runner]bool{}
	for _, st := range s.opts.Queue.Keys(sel) {
		r := s.runnerFor(st.Key)
		c, seen := changed[r]
		if !seen {
			c = s.setMode(r, backoff, "set by an operator")
			changed[r] = c
		}
		if c {
			n++
		}
	}
	return n
}
