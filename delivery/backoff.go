package delivery

import (
	"sync/atomic"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// modeState is a queue's backoff mode. While on, the queue runs with its
// backoff-* limits; it returns to normal after backoff-to-normal-after, at a
// delivery (backoff-to-normal-after-delivery), or on a mode=normal rule.
// Atomic fields: workers read it without the scheduler's lock.
type modeState struct {
	on    atomic.Bool
	since atomic.Int64 // unix nanoseconds when backoff began
	// after overrides backoff-to-normal-after when a reply rule set one
	// (nanoseconds; 0 means the policy's).
	after atomic.Int64
}

// withMode applies the queue's mode to its policy: in backoff the backoff-*
// limits replace the normal ones. It also ends a backoff that has lasted
// its time. The policy is shared, so a backoff view is a copy.
func (s *Scheduler) withMode(r *runner, p *config.DomainSettings) *config.DomainSettings {
	if !r.mode.on.Load() {
		return p
	}
	d := p.BackoffToNormalAfter.Value
	if o := r.mode.after.Load(); o > 0 {
		d = time.Duration(o)
	}
	if d != config.Never && s.clock.Now().Sub(time.Unix(0, r.mode.since.Load())) >= d {
		s.setMode(r, false, "backoff-to-normal-after "+config.FormatDuration(d)+" elapsed")
		return p
	}
	c := *p
	c.MaxSMTPOut = c.BackoffMaxSMTPOut
	c.MaxMsgRate = c.BackoffMaxMsgRate
	c.RetryAfter = c.BackoffRetryAfter
	return &c
}

// setMode switches the queue's mode and logs the change; it reports
// whether the mode changed. A backoff is a traffic-shaping state: it is
// kept in the spool until it ends.
func (s *Scheduler) setMode(r *runner, backoff bool, why string) bool {
	return s.switchMode(r, backoff, why, "", "")
}

// switchMode is setMode for a reply rule: rule (where it is and its
// pattern) and reply are kept with a backoff's state for the views.
func (s *Scheduler) switchMode(r *runner, backoff bool, why, rule, reply string) bool {
	if r.mode.on.Swap(backoff) == backoff {
		return false
	}
	k := shapeKey{prov: r.key, action: ShapeBackoff}
	mode := "normal"
	if backoff {
		mode = "backoff"
		now := s.clock.Now()
		r.mode.since.Store(now.UnixNano())
		st := Shaping{VMTA: r.key.VMTA, Provider: r.key.Provider, Rollup: r.rollup, Action: ShapeBackoff, Since: now, Rule: why, Reply: reply}
		if rule != "" {
			st.Rule = rule
		}
		if a := r.mode.after.Load(); a > 0 {
			st.Until = now.Add(time.Duration(a))
		}
		s.mu.Lock()
		s.shapes[k] = &st
		s.mu.Unlock()
		s.persistShaping(k, &st)
	} else {
		r.mode.after.Store(0)
		s.mu.Lock()
		_, had := s.shapes[k]
		delete(s.shapes, k)
		s.mu.Unlock()
		if had {
			if err := s.opts.Queue.DeleteState(k.stateName()); err != nil {
				s.log.Error("removing a backoff from the spool failed", "queue", r.key.String(), "err", err)
			}
		}
	}
	s.log.Info("queue mode changed", "queue", r.key.String(), "mode", mode, "reason", why)
	return true
}

// Mode reports whether the queue key is in backoff mode, and since when.
// The mode belongs to the key's provider: every domain of one provider
// (for one VMTA) shares it.
func (s *Scheduler) Mode(key queue.Key) (backoff bool, since time.Time) {
	r := s.runnerOf(key)
	if r == nil || !r.mode.on.Load() {
		return false, time.Time{}
	}
	return true, time.Unix(0, r.mode.since.Load())
}

// runnerOf returns the runner of key's provider, nil before key is routed.
func (s *Scheduler) runnerOf(key queue.Key) *runner {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ki := s.keys[key]; ki != nil {
		return ki.runner
	}
	return nil
}
