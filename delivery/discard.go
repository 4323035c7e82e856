package delivery

import (
	"context"
	"errors"

	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// PowerMTA's `type discard`. A queue whose policy says type discard has
// its recipients completed as delivered without a DNS lookup or a
// connection: each gets a Delivered outcome (removed from the spool, a d
// record, a debug log line) whose reply is discardReply. Rates and
// connection caps do not apply, since nothing is sent.
//
// The policy is that of the recipient's domain (with its VMTA and pool),
// never that of a provider: a type discard domain is never rolled up
// (providerOf), and it is decided again for every message.
//
//   - When every policy the key's mail may have discards (the one without a
//     pool and that of every pool), Notify hands the key to a discarder,
//     which leases and discards its due mail away from the runners: no
//     route, no worker, no cap.
//   - Otherwise (a pool's <domain> differs) the key is routed as usual,
//     without an MX lookup, and deliver discards each message whose own
//     policy says so before it opens a connection for it. That check also
//     covers a key a reload switched to discard while a worker held it.
//
// A reload applies at the key's next Notify: switched to discard, what is
// queued is discarded when it comes due; switched back, it is routed and
// sent again.

// discardReply is the diagnostic of a discarded recipient, in the log and
// the accounting file.
const discardReply = "discarded (type discard)"

// discardBatch is how many recipients a discarder leases at a time.
const discardBatch = 500

// discarder is the goroutine emptying one discard key. again is set (under
// Scheduler.mu) when the key was notified while it ran.
type discarder struct {
	again bool
}

// discardsAll reports whether every policy the mail of key may have under
// reg says type discard: the VMTA's (with the global blocks) and that of
// each pool, since a recipient carries the pool it was selected through.
// A key whose VMTA is not configured is not: its mail waits.
func discardsAll(reg *vmta.Registry, key queue.Key) bool {
	if _, ok := reg.VMTA(key.VMTA); !ok {
		return false
	}
	if !reg.Policy(key.VMTA, "", key.Domain).Settings.Discard.Value {
		return false
	}
	for _, p := range reg.Pools() {
		if !reg.Policy(key.VMTA, p.Name, key.Domain).Settings.Discard.Value {
			return false
		}
	}
	return true
}

// discardsAny reports whether some policy the mail of key may have under
// reg says type discard: such a key is not routed by its MX hosts.
func discardsAny(reg *vmta.Registry, key queue.Key) bool {
	if reg.Policy(key.VMTA, "", key.Domain).Settings.Discard.Value {
		return true
	}
	for _, p := range reg.Pools() {
		if reg.Policy(key.VMTA, p.Name, key.Domain).Settings.Discard.Value {
			return true
		}
	}
	return false
}

// discardAll is discardsAll, remembered per key and configuration.
func (s *Scheduler) discardAll(reg *vmta.Registry, key queue.Key) bool {
	s.mu.Lock()
	ki := s.keyInfoLocked(key)
	if ki.discardReg == reg {
		all := ki.discardAll
		s.mu.Unlock()
		return all
	}
	s.mu.Unlock()
	all := discardsAll(reg, key)
	s.mu.Lock()
	ki = s.keyInfoLocked(key)
	ki.discardReg, ki.discardAll = reg, all
	s.mu.Unlock()
	return all
}

// maxDiscarding bounds the discarders working at once.
const maxDiscarding = 8

// discard starts (or wakes) key's discarder when all its mail is to be
// discarded under reg, and reports whether it did. The key leaves its
// provider, if it had one.
func (s *Scheduler) discard(reg *vmta.Registry, key queue.Key) bool {
	if !s.discardAll(reg, key) {
		return false
	}
	s.mu.Lock()
	if d := s.discarding[key]; d != nil {
		d.again = true
		s.mu.Unlock()
		return true
	}
	d := &discarder{}
	s.discarding[key] = d
	ki := s.keyInfoLocked(key)
	if r := ki.runner; r != nil {
		r.dropLocked(key)
		ki.runner, ki.rt = nil, route{}
	}
	s.mu.Unlock()
	s.wg.Add(1)
	go s.runDiscarder(key, d)
	return true
}

// runDiscarder leases key's due recipients and discards them until none is
// due. When a reload makes the key deliverable again, it hands the key
// back to Notify, which routes it.
func (s *Scheduler) runDiscarder(key queue.Key, d *discarder) {
	defer s.wg.Done()
	// At most maxDiscarding discarders lease and write at once, however
	// many discard queues there are: the others wait their turn here.
	select {
	case s.discardSlots <- struct{}{}:
		defer func() { <-s.discardSlots }()
	case <-s.ctx.Done():
		s.mu.Lock()
		delete(s.discarding, key)
		s.mu.Unlock()
		return
	}
	done := func() {
		s.mu.Lock()
		delete(s.discarding, key)
		s.mu.Unlock()
	}
	for s.ctx.Err() == nil {
		reg := s.opts.Registry()
		if !s.discardAll(reg, key) {
			done()
			s.Notify(key)
			return
		}
		lease, err := s.opts.Queue.Lease(s.ctx, key, discardBatch)
		if err != nil {
			done()
			if !errors.Is(err, context.Canceled) {
				s.log.Error("lease failed; the queue waits before trying again", "queue", key.String(), "err", err, "wait", leaseRetry.String())
				s.after(leaseRetry, func() { s.Notify(key) })
			}
			return
		}
		if lease == nil {
			s.mu.Lock()
			if d.again {
				d.again = false
				s.mu.Unlock()
				continue
			}
			delete(s.discarding, key)
			s.mu.Unlock()
			return
		}
		for _, entry := range lease.Messages {
			s.discardEntry(lease, entry)
		}
		lease.Release()
	}
	done()
}

// discardEntry completes every live recipient of entry as discarded.
func (s *Scheduler) discardEntry(lease *queue.Lease, entry queue.Entry) {
	outs := make([]queue.Outcome, 0, len(entry.Recipients))
	for _, rc := range entry.Recipients {
		if !lease.Live(entry.ID, rc.N) {
			continue
		}
		out := queue.Outcome{ID: entry.ID, N: rc.N, Kind: queue.Delivered, Reply: discardReply}
		ev := Event{Time: s.clock.Now(), ID: entry.ID, Envelope: entry.Envelope, Recipient: rc,
			Kind: queue.Delivered, Reply: discardReply, Size: int(entry.Envelope.Size), Discarded: true}
		s.publish(lease.Key, &ev, &out, nil)
		outs = append(outs, out)
	}
	if err := lease.Report(outs...); err != nil {
		s.log.Error("recording outcomes failed", "id", entry.ID.String(), "err", err)
	}
}
