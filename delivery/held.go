package delivery

import (
	"errors"
	"fmt"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// A queue whose policy says `max-msg-rate 0` is held, as PowerMTA does: its
// mail stays queued and nothing is sent, no connection opened for it, like
// an operator's pause, until a reload gives it a rate. Unlike a pause,
// bounce-after still applies: the scheduler takes the held queue's expired
// recipients out of the FIFO at their expiry and bounces them (with a
// delivery status notification and an accounting record, as for any
// expired mail).
//
// The hold is decided from the running configuration each time the
// scheduler looks at the queue (when it takes it from its provider's ready
// list, and for each message of a lease), so a reload that sets a real rate
// releases it: the reload's Start notifies every queue with due mail.

// errZeroRate is a limiter's answer for a rate that allows nothing; a held
// queue never reaches a limiter, so it only guards against a reload racing
// a delivery.
var errZeroRate = errors.New("max-msg-rate 0: the queue sends nothing")

// heldBy returns why the runner's queue for domain holds its mail (its
// max-msg-rate 0, and where that is written), or "" when it does not. The
// policy is the configured one, without the runner's mode (a backoff does
// not lift a hold): that of domain, and for a rollup that of the provider.
func heldBy(reg *vmta.Registry, r *runner, pool, domain string) string {
	if s := reg.Policy(r.key.VMTA, pool, domain).Settings.MaxMsgRate; s.Value.Zero() {
		return holdReason(s)
	}
	if r.rollup != "" {
		if s := reg.Policy(r.key.VMTA, pool, r.rollup).Settings.MaxMsgRate; s.Value.Zero() {
			return holdReason(s)
		}
	}
	return ""
}

func holdReason(s config.Setting[config.Rate]) string {
	why := "max-msg-rate 0"
	if s.Set {
		why += " at " + s.Pos.String()
	}
	return why
}

// Held returns why the scheduler holds the queue key's mail without
// sending it ("max-msg-rate 0 at tern.conf:12:5"), or "" when it does not,
// by the running configuration.
func (s *Scheduler) Held(key queue.Key) string {
	reg := s.opts.Registry()
	s.mu.Lock()
	var r *runner
	pool := ""
	if ki := s.keys[key]; ki != nil && ki.runner != nil {
		r, pool = ki.runner, ki.runner.pool
	}
	s.mu.Unlock()
	if r == nil {
		r = &runner{key: provKey{VMTA: key.VMTA, Provider: key.Domain}}
	}
	return heldBy(reg, r, pool, key.Domain)
}

// dropHeldLocked takes the held keys off the front of the runner's ready
// list, so that a runner whose due mail is all held starts no worker (the
// keys further back are dropped when a worker reaches them). It returns the
// keys to hold, with their reasons; s.mu must be held.
func (s *Scheduler) dropHeldLocked(reg *vmta.Registry, r *runner) (keys []queue.Key, why []string) {
	for len(r.ready) > 0 {
		k := r.ready[0]
		w := heldBy(reg, r, r.pool, k.Domain)
		if w == "" {
			break
		}
		r.ready[0] = queue.Key{}
		r.ready = r.ready[1:]
		delete(r.inReady, k)
		keys, why = append(keys, k), append(why, w)
	}
	if len(r.ready) == 0 {
		r.ready = nil
	}
	return keys, why
}

// holdKey records that the queue key is held for why: the first time, it
// logs it and arms the check that bounces its mail at expiry.
func (s *Scheduler) holdKey(r *runner, key queue.Key, why string) {
	s.mu.Lock()
	ki := s.keyInfoLocked(key)
	first := !ki.held
	ki.held = true
	s.mu.Unlock()
	if first {
		s.log.Info("queue held: it sends nothing until a reload gives it a rate", "queue", key.String(), "reason", why)
		s.armExpiry(ki, r, key)
	}
}

// unholdKey records that the queue key is no longer held, logging it when
// it was.
func (s *Scheduler) unholdKey(key queue.Key) {
	s.mu.Lock()
	ki := s.keys[key]
	was := ki != nil && ki.held
	if was {
		ki.held = false
	}
	s.mu.Unlock()
	if was {
		s.log.Info("queue released: its max-msg-rate is no longer 0", "queue", key.String())
	}
}

// heldCheckFloor is the least wait between two expiry checks of a held
// queue: an expired recipient deferred until its expiry may come due a
// moment after the check meant for it.
const heldCheckFloor = time.Second

// heldExpireBatch bounds the recipients one lease of an expiry check takes.
const heldExpireBatch = 1000

// armExpiry schedules the expiry check of a held queue at its oldest
// message's expiry (bounce-after), or drops the hold's state when the
// queue is empty.
func (s *Scheduler) armExpiry(ki *keyInfo, r *runner, key queue.Key) {
	st := s.opts.Queue.Stats(key)
	if st.Total() == 0 || st.Oldest.IsZero() {
		s.mu.Lock()
		ki.held = false // held again, and armed, when mail comes
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	pool := r.pool
	s.mu.Unlock()
	after := s.opts.Registry().Policy(key.VMTA, pool, key.Domain).Settings.BounceAfter.Value
	d := max(st.Oldest.Add(after).Sub(s.clock.Now()), heldCheckFloor)
	s.after(d, func() { s.expireHeld(ki, key) })
}

// expireHeld is the expiry check of a held queue: it bounces the due
// recipients whose message is past its bounce-after, and arms the next
// check. A queue released meanwhile is notified instead, for its mail to
// go.
func (s *Scheduler) expireHeld(ki *keyInfo, key queue.Key) {
	reg := s.opts.Registry()
	s.mu.Lock()
	r := ki.runner
	current := s.keys[key] == ki && ki.held && r != nil
	pool := ""
	if r != nil {
		pool = r.pool
	}
	s.mu.Unlock()
	if !current {
		return // forgotten by the sweep, or released: nothing to check
	}
	if heldBy(reg, r, pool, key.Domain) == "" {
		s.unholdKey(key)
		s.Notify(key)
		return
	}
	s.bounceExpired(reg, r, key)
	s.armExpiry(ki, r, key)
}

// bounceExpired bounces the due recipients of key whose message is past
// its bounce-after; the others go back to the queue as they were.
func (s *Scheduler) bounceExpired(reg *vmta.Registry, r *runner, key queue.Key) {
	s.mu.Lock()
	pool := r.pool
	s.mu.Unlock()
	// The cutoff by the policy of the runner's pool; each message is then
	// judged by its own.
	now := s.clock.Now()
	cutoff := now.Add(-reg.Policy(key.VMTA, pool, key.Domain).Settings.BounceAfter.Value)
	var leases []*queue.Lease
	defer func() {
		for _, l := range leases {
			l.Release()
		}
	}()
	for s.ctx.Err() == nil {
		l, err := s.opts.Queue.LeaseExpired(s.ctx, key, cutoff, heldExpireBatch)
		if err != nil {
			s.log.Error("lease of a held queue's expired mail failed", "queue", key.String(), "err", err)
			return
		}
		if l == nil {
			return
		}
		leases = append(leases, l)
		for _, entry := range l.Messages {
			if len(entry.Recipients) == 0 {
				continue
			}
			pol := s.msgPolicy(reg, r, entry.Recipients[0].Pool, key.Domain)
			if age := now.Sub(entry.Envelope.Received); age >= pol.BounceAfter.Value {
				s.reportAll(nil, l, entry, queue.Bounced, expiredReply(age, pol.BounceAfter.Value), pol)
			}
		}
	}
}

// expiredReply is the diagnostic of a recipient bounced at its expiry.
func expiredReply(age, bounceAfter time.Duration) string {
	return fmt.Sprintf("5.4.7 message expired after %s in the queue (bounce-after %s)",
		config.FormatDuration(age.Truncate(time.Second)), config.FormatDuration(bounceAfter))
}
