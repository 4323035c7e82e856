package delivery

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/vmta"
)

// Traffic shaping. A rule of the provider's <smtp-pattern-list> with a
// lasting action puts the provider's queue (one VMTA's mail to one
// provider) into a state for a while: backoff (the backoff-* limits),
// suspend (no connections), disable-source-ip (not from the address the
// reply came to), reroute=NAME (sent through another VMTA or pool), or
// bounce-queue (everything queued bounces). With threshold=N/DUR the rule
// triggers only at its Nth match within DUR. The states are written to the
// spool, so a restart does not lift a suspension early, and an operator
// can list and lift them.

// Shaping actions, as views name them.
const (
	ShapeBackoff       = "backoff"
	ShapeSuspend       = "suspend"
	ShapeDisableSource = "disable-source-ip"
	ShapeReroute       = "reroute"
	ShapeBounceQueue   = "bounce-queue"
)

// Shaping is one traffic-shaping state in force.
type Shaping struct {
	VMTA     string `json:"vmta"`
	Provider string `json:"provider"`
	// Rollup is the provider's <mx-rollup-list> name, if any.
	Rollup string `json:"rollup,omitempty"`
	Action string `json:"action"`
	// Source is the address disabled, for disable-source-ip.
	Source netip.Addr `json:"source,omitzero"`
	// Reroute is the VMTA or pool the mail goes through, for reroute.
	Reroute string    `json:"reroute,omitempty"`
	Since   time.Time `json:"since"`
	// Until is when the state ends by itself; zero for a backoff that
	// ends only at a delivery or by an operator.
	Until time.Time `json:"until,omitzero"`
	// Rule is where the rule that triggered is, and its pattern.
	Rule string `json:"rule"`
	// Reply is the reply that triggered it.
	Reply string `json:"reply"`
}

// shapeKey identifies a state: one per action per provider queue (per
// source address for disable-source-ip).
type shapeKey struct {
	prov   provKey
	action string
	source netip.Addr
}

func (k shapeKey) stateName() string {
	return "shape/" + k.prov.VMTA + "\x00" + k.prov.Provider + "\x00" + k.action + "\x00" + k.source.String()
}

// threshKey counts one rule's matches for one provider queue.
type threshKey struct {
	prov provKey
	rule string
}

// maxThresholdMatches bounds the match times kept per rule and queue.
const maxThresholdMatches = 10000

// matchReply finds the first rule of the provider's smtp-pattern-list
// that matches reply and applies it: a lasting action takes effect (at
// once, or at its threshold), mode=normal ends a backoff. It returns the
// rule's actions for the caller to apply to the reply at hand, nil when
// no rule matched or the rule has not reached its threshold. src is the
// address the reply came to.
func (s *Scheduler) matchReply(reg *vmta.Registry, r *runner, cpol *config.DomainSettings, reply string, src netip.Addr) *config.ReplyActions {
	name := cpol.SMTPPatternList.Value
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
			if act.Threshold.Set && !s.reached(r, rule) {
				return nil
			}
			s.trigger(r, rule, reply, src)
			return act
		}
		return nil
	}
	return nil
}

// reached counts a match of a threshold rule and reports whether it has
// now matched Count times within Interval (the count then starts over).
func (s *Scheduler) reached(r *runner, rule *config.ReplyRule) bool {
	now := s.clock.Now()
	th := rule.Actions.Threshold.Value
	k := threshKey{prov: r.key, rule: rule.Pos.String()}
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.thresh[k]
	cut := now.Add(-th.Interval)
	i := 0
	for i < len(ts) && !ts[i].After(cut) {
		i++
	}
	ts = append(ts[i:], now)
	if len(ts) > maxThresholdMatches {
		ts = ts[len(ts)-maxThresholdMatches:]
	}
	if len(ts) >= max(th.Count, 1) {
		delete(s.thresh, k)
		return true
	}
	s.thresh[k] = ts
	return false
}

// trigger applies a matched rule's lasting actions.
func (s *Scheduler) trigger(r *runner, rule *config.ReplyRule, reply string, src netip.Addr) {
	act := &rule.Actions
	why := "reply matched " + rule.Regexp.String() + ": " + reply
	where := rule.Pos.String() + " " + rule.Regexp.String()
	switch act.Mode {
	case config.ModeBackoff:
		if act.BackoffToNormalAfter.Set {
			r.mode.after.Store(int64(act.BackoffToNormalAfter.Value))
		}
		s.switchMode(r, true, why, where, reply)
	case config.ModeNormal:
		s.setMode(r, false, why)
	}
	now := s.clock.Now()
	d := act.For.Value
	if d <= 0 {
		d = config.DefaultReplyFor
	}
	st := Shaping{VMTA: r.key.VMTA, Provider: r.key.Provider, Rollup: r.rollup, Since: now, Until: now.Add(d),
		Rule: where, Reply: reply}
	switch {
	case act.Suspend:
		st.Action = ShapeSuspend
	case act.Reroute != "":
		st.Action, st.Reroute = ShapeReroute, act.Reroute
	case act.BounceQueue:
		st.Action = ShapeBounceQueue
	}
	if st.Action != "" {
		s.setShaping(r, st)
	}
	if act.DisableSourceIP && src.IsValid() {
		st.Action, st.Source, st.Reroute = ShapeDisableSource, src, ""
		s.setShaping(r, st)
	}
}

// setShaping puts st in force (replacing the same action's state), writes
// it to the spool, arms its end, and applies its immediate effect.
func (s *Scheduler) setShaping(r *runner, st Shaping) {
	k := shapeKey{prov: r.key, action: st.Action, source: st.Source}
	s.mu.Lock()
	if old := s.shapes[k]; old != nil && !st.Until.After(old.Until) && !old.Until.IsZero() {
		// Already in force for at least as long: a storm of matching
		// replies must not rewrite the spool at each one.
		s.mu.Unlock()
		return
	}
	cp := st
	s.shapes[k] = &cp
	if st.Action == ShapeSuspend && st.Until.After(r.holdUntil) {
		r.holdUntil = st.Until
	}
	s.mu.Unlock()
	s.persistShaping(k, &st)
	attrs := []any{"queue", r.key.String(), "action", st.Action, "until", st.Until.Format(time.RFC3339), "rule", st.Rule, "reply", st.Reply}
	if st.Source.IsValid() {
		attrs = append(attrs, "source", st.Source.String())
	}
	if st.Reroute != "" {
		attrs = append(attrs, "reroute", st.Reroute)
	}
	s.log.Warn("traffic shaping in force", attrs...)
	if !st.Until.IsZero() {
		until := st.Until
		s.after(until.Sub(s.clock.Now()), func() { s.expireShaping(k, until) })
	}
}

// expireShaping ends the state k when it is still the one that ends at
// until (a later trigger may have extended it).
func (s *Scheduler) expireShaping(k shapeKey, until time.Time) {
	s.mu.Lock()
	st := s.shapes[k]
	if st == nil || !st.Until.Equal(until) {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.liftShaping(k, "its time is up")
}

// liftShaping ends the state k, in memory and in the spool, and restarts
// the provider queue.
func (s *Scheduler) liftShaping(k shapeKey, why string) bool {
	s.mu.Lock()
	st := s.shapes[k]
	if st == nil {
		s.mu.Unlock()
		return false
	}
	delete(s.shapes, k)
	r := s.runners[k.prov]
	if r != nil && k.action == ShapeSuspend {
		r.holdUntil = time.Time{}
	}
	s.mu.Unlock()
	if err := s.opts.Queue.DeleteState(k.stateName()); err != nil {
		s.log.Error("removing a traffic-shaping state from the spool failed", "queue", k.prov.String(), "err", err)
	}
	attrs := []any{"queue", k.prov.String(), "action", k.action, "reason", why}
	if k.source.IsValid() {
		attrs = append(attrs, "source", k.source.String())
	}
	s.log.Info("traffic shaping lifted", attrs...)
	if r != nil {
		s.kick(r)
	}
	return true
}

// persistShaping writes st to the spool; a failure is logged (the state
// holds in memory until a restart).
func (s *Scheduler) persistShaping(k shapeKey, st *Shaping) {
	b, err := json.Marshal(st)
	if err == nil {
		err = s.opts.Queue.PutState(k.stateName(), b)
	}
	if err != nil {
		s.log.Error("writing a traffic-shaping state to the spool failed; it holds until a restart", "queue", k.prov.String(), "err", err)
	}
}

// loadShaping restores the states the spool holds: those still in force
// take effect again, the others are removed.
func (s *Scheduler) loadShaping() {
	states, err := s.opts.Queue.States("shape/")
	if err != nil {
		s.log.Error("reading traffic-shaping states from the spool failed", "err", err)
		return
	}
	now := s.clock.Now()
	for name, b := range states {
		var st Shaping
		if err := json.Unmarshal(b, &st); err != nil || st.Action == "" || st.VMTA == "" || st.Provider == "" {
			s.log.Warn("dropping an unreadable traffic-shaping state", "name", name, "err", err)
			_ = s.opts.Queue.DeleteState(name)
			continue
		}
		k := shapeKey{prov: provKey{VMTA: st.VMTA, Provider: st.Provider}, action: st.Action, source: st.Source}
		if !st.Until.IsZero() && !now.Before(st.Until) {
			_ = s.opts.Queue.DeleteState(name)
			continue
		}
		s.mu.Lock()
		r := s.runners[k.prov]
		if r == nil {
			r = newRunner(k.prov)
			r.rollup = st.Rollup
			s.runners[k.prov] = r
		}
		cp := st
		s.shapes[k] = &cp
		if st.Action == ShapeSuspend {
			r.holdUntil = st.Until
		}
		s.mu.Unlock()
		if st.Action == ShapeBackoff {
			r.mode.on.Store(true)
			r.mode.since.Store(st.Since.UnixNano())
			if !st.Until.IsZero() {
				r.mode.after.Store(int64(st.Until.Sub(st.Since)))
			}
		}
		s.log.Info("traffic shaping restored from the spool", "queue", k.prov.String(), "action", st.Action, "until", st.Until.Format(time.RFC3339))
		if !st.Until.IsZero() {
			until := st.Until
			s.after(until.Sub(now), func() { s.expireShaping(k, until) })
		}
	}
}

// ShapingStates lists the traffic-shaping states in force, by queue.
func (s *Scheduler) ShapingStates() []Shaping {
	s.mu.Lock()
	out := make([]Shaping, 0, len(s.shapes))
	for _, st := range s.shapes {
		out = append(out, *st)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Shaping) int {
		return strings.Compare(a.Provider+"/"+a.VMTA+"/"+a.Action+a.Source.String(), b.Provider+"/"+b.VMTA+"/"+b.Action+b.Source.String())
	})
	return out
}

// ShapingSelector picks shaping states to lift; empty fields match all.
type ShapingSelector struct {
	VMTA, Provider, Action string
}

// LiftShaping ends every state sel matches, as an operator's decision, and
// returns how many it ended. Lifting a backoff returns its queue to
// normal mode.
func (s *Scheduler) LiftShaping(sel ShapingSelector) int {
	s.mu.Lock()
	var keys []shapeKey
	for k := range s.shapes {
		if (sel.VMTA == "" || strings.EqualFold(sel.VMTA, k.prov.VMTA)) &&
			(sel.Provider == "" || strings.EqualFold(sel.Provider, k.prov.Provider)) &&
			(sel.Action == "" || sel.Action == k.action) {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	n := 0
	for _, k := range keys {
		if k.action == ShapeBackoff {
			if r := s.runnerByKey(k.prov); r != nil {
				s.setMode(r, false, "lifted by an operator")
				n++
				continue
			}
		}
		if s.liftShaping(k, "lifted by an operator") {
			n++
		}
	}
	return n
}

// runnerByKey returns the runner of k, nil if there is none.
func (s *Scheduler) runnerByKey(k provKey) *runner {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runners[k]
}

// shapingOf returns the state of action for r, nil when none is in force.
func (s *Scheduler) shapingOf(r *runner, action string) *Shaping {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shapes[shapeKey{prov: r.key, action: action}]
}

// sourceDisabled reports whether src is disabled for r's provider.
func (s *Scheduler) sourceDisabled(r *runner, src netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sourceDisabledLocked(r, src)
}

// sourceDisabledLocked reports whether src is disabled for r's provider.
func (s *Scheduler) sourceDisabledLocked(r *runner, src netip.Addr) bool {
	return s.shapes[shapeKey{prov: r.key, action: ShapeDisableSource, source: src}] != nil
}

// effectiveVMTA is the VMTA r's mail goes out through: its own, or the
// one a reroute rule names (a pool's members in turn).
func (s *Scheduler) effectiveVMTA(reg *vmta.Registry, r *runner) (*vmta.VMTA, bool) {
	v, ok := reg.VMTA(r.key.VMTA)
	st := s.shapingOf(r, ShapeReroute)
	if st == nil {
		return v, ok
	}
	if rv, ok := reg.VMTA(st.Reroute); ok {
		return rv, true
	}
	if p, ok := reg.Pool(st.Reroute); ok && len(p.Members) > 0 {
		s.mu.Lock()
		s.rerouteTurn++
		m := p.Members[s.rerouteTurn%uint64(len(p.Members))]
		s.mu.Unlock()
		return m, true
	}
	// The target is gone from the configuration: the mail goes out as
	// if not rerouted rather than wait.
	return v, ok
}

// reroutedAway reports whether a reroute state sends r's mail through
// another VMTA than v (a pool counts when v is not one of its members).
func (s *Scheduler) reroutedAway(reg *vmta.Registry, r *runner, v *vmta.VMTA) bool {
	st := s.shapingOf(r, ShapeReroute)
	if st == nil {
		return false
	}
	if rv, ok := reg.VMTA(st.Reroute); ok {
		return rv.Name != v.Name
	}
	if p, ok := reg.Pool(st.Reroute); ok {
		return !slices.Contains(p.Members, v)
	}
	return false
}

// bounceShaped reports the reply a bounce-queue state gives r's mail, ""
// when none is in force.
func (s *Scheduler) bounceShaped(r *runner) string {
	st := s.shapingOf(r, ShapeBounceQueue)
	if st == nil {
		return ""
	}
	return fmt.Sprintf("5.7.1 bounced by traffic shaping (%s) after: %s", st.Rule, st.Reply)
}
