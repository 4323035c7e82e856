package delivery

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
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
// whether the mode changed.
func (s *Scheduler) setMode(r *runner, backoff bool, why string) bool {
	if r.mode.on.Swap(backoff) == backoff {
		return false
	}
	mode := "normal"
	if backoff {
		mode = "backoff"
		r.mode.since.Store(s.clock.Now().UnixNano())
	} else {
		r.mode.after.Store(0)
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

// matchReply finds the first rule of the queue's smtp-pattern-list that
// matches reply, and applies its mode actions. The other actions are the
// caller's to apply.
func (s *Scheduler) matchReply(reg *vmta.Registry, r *runner, pol *config.DomainSettings, reply string) *config.ReplyActions {
	name := pol.SMTPPatternList.Value
	if name == "" || reply == "" {
		return nil
	}
	for _, list := range reg.Config().SMTPPatternLists {
		if !strings.EqualFold(list.Name, name) {
			continue
		}
		for i := range list.Rules {
			rule := &list.Rules[i]
			if !rule.Regexp.MatchString(reply) {
				continue
			}
			act := &rule.Actions
			switch act.Mode {
			case config.ModeBackoff:
				if act.BackoffToNormalAfter.Set {
					r.mode.after.Store(int64(act.BackoffToNormalAfter.Value))
				}
				s.setMode(r, true, "reply matched "+rule.Regexp.String()+": "+reply)
			case config.ModeNormal:
				s.setMode(r, false, "reply matched "+rule.Regexp.String()+": "+reply)
			}
			return act
		}
		return nil
	}
	return nil
}
