package delivery

import (
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// deliver sends every message of the lease, one transaction each, over the
// worker's session (opened or replaced as needed), and reports each
// recipient's outcome. ahead is the lease's first message when it already
// went out behind the previous lease's last one. It returns the next lease
// with its first message's transaction when deliver took that lease to
// pipeline the message behind its own last one.
func (s *Scheduler) deliver(reg *vmta.Registry, v *vmta.VMTA, w *worker, lease *queue.Lease, ahead *txn) (nextLease *queue.Lease, nextAhead *txn) {
	r := w.r
	domain := lease.Key.Domain
	// connErr is the failure to reach the destination: once every host
	// failed, the rest of the lease shares that fate without more dialing.
	var connErr error
	// ahead is the next entry's transaction, prepared when its commands
	// went out behind the previous message (outConn.sendTxn); carry is
	// the next lease, taken when this one ran out while the connection
	// was busy, for its first message to go out the same way.
	var carry *queue.Lease
	defer func() {
		if p := recover(); p != nil {
			s.contain(w, p, lease, carry)
			nextLease, nextAhead = nil, nil
		}
	}()
	for i, entry := range lease.Messages {
		pool := entry.Recipients[0].Pool
		pol := s.msgPolicy(reg, r, pool, domain)
		cpol := s.connPolicy(reg, r, pool, domain)
		now := s.clock.Now()
		pre := ahead
		ahead = nil
		if pre != nil && pre.id != entry.ID {
			// Not the message whose commands went out (cannot happen:
			// a carried lease is delivered next): the connection's
			// replies belong to another transaction.
			if w.sess != nil && w.sess.state().ahead == pre {
				w.sess.markBroken()
			}
			pre = nil
		}
		if pol.Discard.Value && pre == nil {
			// type discard for this message's domain (and pool): a
			// rolled-up or pool-dependent queue, or one a reload just
			// switched. Completed here, never sent (discard.go).
			s.discardEntry(lease, entry)
			continue
		}
		if reply := s.bounceShaped(r); reply != "" && pre == nil {
			s.reportAll(w, lease, entry, queue.Bounced, reply, nil)
			continue
		}
		if age := now.Sub(entry.Envelope.Received); pre == nil && age >= pol.BounceAfter.Value {
			s.reportAll(w, lease, entry, queue.Bounced, expiredReply(age, pol.BounceAfter.Value), nil)
			continue
		}
		if why := heldBy(reg, r, pool, domain); why != "" && pre == nil {
			// max-msg-rate 0 for this message's policy (a reload, or
			// another pool than the lease's first message): it is not
			// sent, and goes back to the queue with the lease; the key
			// waits until a reload releases it.
			s.holdKey(r, lease.Key, why)
			continue
		}
		if w.sess != nil && (connErr != nil || !s.reusable(w, pol, cpol)) {
			s.endSession(w)
		}
		if w.sess == nil {
			err := connErr
			if err == nil {
				s.reseat(w, v, cpol)
				err = s.connect(w, v, domain, pol, cpol)
			}
			if err != nil {
				var capErr *capacityError
				if errors.As(err, &capErr) {
					// Released with the lease: the recipients are due again
					// at once for the sessions that work.
					w.leave = true
					return carry, nil
				}
				connErr = err
				var perm *permanentError
				if errors.As(err, &perm) {
					s.reportAll(w, lease, entry, queue.Bounced, perm.Error(), nil)
				} else {
					s.reportAll(w, lease, entry, queue.Deferred, err.Error(), pol)
				}
				continue
			}
		}
		t := pre
		if t == nil {
			var stop bool
			if t, stop = s.prepare(reg, v, w, lease, entry, cpol, true); stop {
				return carry, nil
			}
			if t == nil {
				continue
			}
		}
		// next offers the following entry to go out behind this message
		// when nothing has to happen between the two: no rate to wait
		// for, no reason to change connections, nothing expired.
		next := func() *txn {
			if connErr != nil || w.sess.state().broken {
				return nil
			}
			from := lease
			var ne queue.Entry
			if i+1 < len(lease.Messages) {
				ne = lease.Messages[i+1]
			} else {
				// The lease is done once this message is: take the next
				// now (without waiting), so that its first message need
				// not wait for this one's reply.
				if carry == nil && s.ctx.Err() == nil {
					nl, err := s.opts.Queue.Lease(s.ctx, lease.Key, pol.MaxRcptPerTransaction.Value)
					if err != nil || nl == nil {
						return nil // the worker's own Lease reports a failure
					}
					carry = nl
				}
				if carry == nil || len(carry.Messages) == 0 ||
					carry.Messages[0].Recipients[0].Pool != entry.Recipients[0].Pool {
					return nil // another pool: its slot is checked first
				}
				from, ne = carry, carry.Messages[0]
			}
			if heldBy(reg, r, ne.Recipients[0].Pool, domain) != "" {
				return nil
			}
			npol := s.msgPolicy(reg, r, ne.Recipients[0].Pool, domain)
			ncpol := s.connPolicy(reg, r, ne.Recipients[0].Pool, domain)
			if npol.Discard.Value || !s.reusable(w, npol, ncpol) || s.clock.Now().Sub(ne.Envelope.Received) >= npol.BounceAfter.Value {
				return nil
			}
			ahead, _ = s.prepare(reg, v, w, from, ne, ncpol, false)
			return ahead
		}
		results := w.sess.sendTxn(t, next)
		body, live := t.body, t.rcpts
		if st := w.sess.state(); st.stale {
			// The server closed the connection while it sat idle (a
			// restart, its idle timeout), or refused the transaction with
			// 421 at MAIL: nothing of it reached the server, so it goes
			// out on a new connection instead of being deferred.
			switch {
			case len(results) > 0 && results[0].atMail && results[0].code == 421:
				s.learnMsgsPerConn(r, st.txns-1, results[0].text)
			case st.idleBefore < closedAfterIdle:
				// Closed right after the previous transaction, not by an
				// idle timeout: the server takes that many per connection.
				s.learnMsgsPerConn(r, st.txns-1, "the server closed the connection after the previous transaction")
			}
			s.log.Info("reused connection was closed by the server; reconnecting", "queue", lease.Key.String(), "host", st.target.host)
			s.endSession(w)
			if err := s.connect(w, v, domain, pol, cpol); err != nil {
				// Deferred for the reason that counts now: the server is
				// gone, not the closed connection.
				for i := range results {
					results[i].code, results[i].text = 0, err.Error()
				}
			} else {
				results = w.sess.sendTxn(&txn{id: t.id, env: entry.Envelope, rcpts: live, body: body}, nil)
			}
		}
		var st *sessionState
		if w.sess != nil {
			ss := w.sess.state()
			st = &ss
		}
		outs := make([]queue.Outcome, 0, len(results))
		var bounced, delayed []Event
		delivered := false
		for _, res := range results {
			out := queue.Outcome{ID: entry.ID, N: res.rcpt.N, Reply: res.text}
			var act *config.ReplyActions
			if res.code/100 != 2 {
				src := w.src.IP
				if st != nil {
					src = st.source
				}
				act = s.matchReply(reg, r, cpol, res.text, src)
				pol = s.msgPolicy(reg, r, pool, domain) // the mode may have changed
			}
			vd := judgeReply(res.code, res.atRcpt, act)
			out.Kind = vd.kind
			switch {
			case vd.kind == queue.Delivered:
				delivered = true
				if pol.BackoffToNormalAfterDelivery.Value && r.mode.on.Load() {
					s.setMode(r, false, "delivered")
				}
			case vd.kind == queue.Deferred && vd.now:
				out.Until = s.clock.Now()
			case vd.kind == queue.Deferred:
				out.Until = s.nextAttempt(entry, res.rcpt, pol)
			}
			if vd.avoidHost && st != nil {
				s.mu.Lock()
				r.skipHost, r.skipUntil = st.target.host, s.clock.Now().Add(pol.RetryAfter.Value[0])
				s.mu.Unlock()
			}
			if vd.holdQueue {
				// Stop the queue until its next retry: the rest of this
				// lease waits too, without another attempt.
				connErr = fmt.Errorf("queue deferred by smtp-pattern-list after: %s", res.text)
				s.hold(r, out.Until)
			}
			if vd.closeSession && w.sess != nil {
				w.sess.markBroken()
			}
			ev := s.record(lease.Key, entry, res.rcpt, st, &out, body, pol)
			outs = append(outs, out)
			switch {
			case out.Kind == queue.Bounced:
				bounced = append(bounced, ev)
			case delayReport(&ev, res.rcpt, pol):
				delayed = append(delayed, ev)
			}
		}
		if delivered {
			s.windowSuccess(w, cpol)
		}
		s.bounce(entry, bounced, func() ([]byte, error) { return body, nil })
		s.delay(entry, delayed, func() ([]byte, error) { return body, nil })
		if err := lease.Report(outs...); err != nil {
			s.log.Error("recording outcomes failed", "id", entry.ID.String(), "err", err)
		}
		if (st != nil && s.sourceDisabled(r, st.source)) || s.reroutedAway(reg, r, v) {
			// A rule just disabled this address for the provider, or sent
			// the provider queue through another VMTA: the rest of the
			// lease goes back to the queue for the workers that may send it.
			if w.sess != nil {
				w.sess.markBroken()
			}
			w.leave = true
			return carry, nil
		}
	}
	return carry, ahead
}

// reusable reports whether the worker's session may carry another
// transaction under pol (the message's policy) and cpol (the provider's).
func (s *Scheduler) reusable(w *worker, pol, cpol *config.DomainSettings) bool {
	st := w.sess.state()
	if st.broken {
		return false
	}
	limit := cpol.MaxMsgPerConnection.Value
	if l := int(w.r.msgsPerConn.Load()); l > 0 && (limit == 0 || l < limit) {
		limit = l
	}
	if limit > 0 && st.txns >= limit {
		return false
	}
	if n := cpol.MaxErrorsPerConnection.Value; n > 0 && st.errs >= n {
		return false
	}
	return classOf(pol) == w.class
}

// closedAfterIdle: a reused session found closed after idling less than
// this was closed by the server after its previous transaction (a limit of
// transactions per connection), not by an idle timeout.
const closedAfterIdle = time.Second

// learnMsgsPerConn records that the provider refused a transaction with
// 421 after n on one connection: from now on a connection carries at most
// n, and closes politely instead of being refused.
func (s *Scheduler) learnMsgsPerConn(r *runner, n int, reply string) {
	if n < 1 {
		return
	}
	if old := r.msgsPerConn.Load(); old == 0 || int32(n) < old {
		r.msgsPerConn.Store(int32(n))
		s.log.Info("provider limits transactions per connection", "queue", r.key.String(), "transactions", n, "reply", reply)
	}
}

// hold stops the runner's new workers until t, and kicks it then.
func (s *Scheduler) hold(r *runner, t time.Time) {
	s.mu.Lock()
	r.holdUntil = t
	s.mu.Unlock()
	s.after(t.Sub(s.clock.Now()), func() { s.kick(r) })
}

// prepare gets entry ready to send: it waits for the message rates (each
// recipient counts; stop reports a shutdown during the wait), reads the
// body and keeps the recipients still live. A nil txn means there is
// nothing to send now. Without wait it gives nil rather than wait for a
// rate, for a message that would go out behind another.
func (s *Scheduler) prepare(reg *vmta.Registry, v *vmta.VMTA, w *worker, lease *queue.Lease, entry queue.Entry, cpol *config.DomainSettings, wait bool) (t *txn, stop bool) {
	r := w.r
	p, hasPool := reg.Pool(entry.Recipients[0].Pool)
	poolRated := hasPool && !p.MaxSMTPMsgRate.Unlimited()
	srcRate, srcRated := sourceIPMaxMsgRate(cpol, w.src.IP)
	if !wait && (!cpol.MaxMsgRate.Value.Unlimited() || !v.MaxSMTPMsgRate.Unlimited() || poolRated || srcRated) {
		return nil, false
	}
	if wait {
		// Rates count recipients attempted, so wait once the connection
		// is up.
		for range entry.Recipients {
			if err := r.msg.wait(s.ctx, s.clock, cpol.MaxMsgRate.Value); err != nil {
				return nil, true
			}
			if err := limiterFor(s, s.vmtaRate, v.Name).wait(s.ctx, s.clock, v.MaxSMTPMsgRate); err != nil {
				return nil, true
			}
			if poolRated {
				if err := limiterFor(s, s.poolRate, p.Name).wait(s.ctx, s.clock, p.MaxSMTPMsgRate); err != nil {
					return nil, true
				}
			}
			if srcRated {
				if err := s.site(w.src.IP, r.key.Provider, cpol).msg.wait(s.ctx, s.clock, srcRate); err != nil {
					return nil, true
				}
			}
		}
	}
	body, err := lease.Body(entry.ID)
	if err != nil {
		s.log.Error("reading a queued body failed", "id", entry.ID.String(), "err", err)
		return nil, false // released with the lease: tried again later
	}
	live := entry.Recipients[:0:0]
	for _, rc := range entry.Recipients {
		if lease.Live(entry.ID, rc.N) { // an operator may have deleted it meanwhile
			live = append(live, rc)
		}
	}
	if len(live) == 0 {
		return nil, false
	}
	return &txn{id: entry.ID, env: entry.Envelope, rcpts: live, body: body}, false
}

// reportAll gives every live recipient of entry the same outcome.
func (s *Scheduler) reportAll(w *worker, lease *queue.Lease, entry queue.Entry, kind queue.Kind, reply string, pol *config.DomainSettings) {
	outs := make([]queue.Outcome, 0, len(entry.Recipients))
	var bounced, delayed []Event
	for _, rc := range entry.Recipients {
		if !lease.Live(entry.ID, rc.N) {
			continue
		}
		out := queue.Outcome{ID: entry.ID, N: rc.N, Kind: kind, Reply: reply}
		if kind == queue.Deferred {
			out.Until = s.nextAttempt(entry, rc, pol)
		}
		ev := s.record(lease.Key, entry, rc, nil, &out, nil, pol)
		outs = append(outs, out)
		switch {
		case kind == queue.Bounced:
			bounced = append(bounced, ev)
		case delayReport(&ev, rc, pol):
			delayed = append(delayed, ev)
		}
	}
	s.bounce(entry, bounced, func() ([]byte, error) { return lease.Body(entry.ID) })
	s.delay(entry, delayed, func() ([]byte, error) { return lease.Body(entry.ID) })
	if err := lease.Report(outs...); err != nil {
		s.log.Error("recording outcomes failed", "id", entry.ID.String(), "err", err)
	}
}

// nextAttempt applies retry-after: the interval for this recipient's
// attempt number, the last one repeating, plus up to a tenth of it of
// jitter, and never past the message's expiry, so an expired message
// bounces on time.
func (s *Scheduler) nextAttempt(entry queue.Entry, rc queue.RecipientState, pol *config.DomainSettings) time.Time {
	sched := pol.RetryAfter.Value
	d := sched[min(rc.Attempts, len(sched)-1)]
	next := s.clock.Now().Add(d + s.jitter(d))
	if expiry := entry.Envelope.Received.Add(pol.BounceAfter.Value); next.After(expiry) {
		next = expiry
	}
	return next
}

// jitter is a random share, up to a tenth, of d.
func (s *Scheduler) jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * 0.1 * s.opts.Jitter())
}

// panicReply is the diagnostic of the recipients deferred by contain.
const panicReply = "451 4.3.0 internal error in Tern's delivery; retried later"

// contain keeps a panic in one delivery from ending the daemon: every
// delivery, and every session receiving mail, would go with it, and a
// message that makes delivery panic would do it again after each restart.
// The panic is logged with its stack, the connection (whose state is
// unknown) is dropped, and the recipients of the lease and of the lease
// taken to follow it that have no outcome yet are deferred by the retry
// schedule, so a message that panics again is retried on that schedule
// and bounces at its expiry instead of looping. A recipient the remote
// server accepted just before the panic is sent again: at least once.
func (s *Scheduler) contain(w *worker, p any, leases ...*queue.Lease) {
	r := w.r
	s.log.Error("delivery panicked; its recipients are deferred", "queue", r.key.String(),
		"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	var reg *vmta.Registry // nil until read; deferBare reads it then
	defer func() {
		// Deferring goes through the outcome hooks, where the panic may
		// have come from: if it happens again, the recipients still
		// without an outcome are deferred in the spool alone, without the
		// hooks. Released instead, they would be due again at once with
		// no attempt counted, and a hook that panics for them every time
		// would have the worker deliver, panic and retry in a tight loop.
		if p2 := recover(); p2 != nil {
			s.log.Error("deferring after a delivery panic panicked too; the recipients are deferred without outcome records",
				"queue", r.key.String(), "panic", fmt.Sprint(p2))
			for _, l := range leases {
				if l != nil {
					s.deferBare(r, l, reg)
				}
			}
		}
	}()
	if w.sess != nil {
		w.sess.markBroken()
		s.endSession(w)
	}
	reg = s.opts.Registry()
	for _, l := range leases {
		if l == nil {
			continue
		}
		for _, entry := range l.Messages {
			if len(entry.Recipients) == 0 {
				continue
			}
			s.reportAll(w, l, entry, queue.Deferred, panicReply, s.msgPolicy(reg, r, entry.Recipients[0].Pool, l.Key.Domain))
		}
		l.Release()
	}
}

// deferBare defers, by the retry schedule and with panicReply, every
// recipient of l still without an outcome, straight in the spool: no
// outcome hook, log line or accounting record, since those are what
// panicked. Should even that panic, the recipients are released.
func (s *Scheduler) deferBare(r *runner, l *queue.Lease, reg *vmta.Registry) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("deferring after a delivery panic failed; the recipients are released", "queue", r.key.String(), "panic", fmt.Sprint(p))
		}
		l.Release()
	}()
	if reg == nil {
		reg = s.opts.Registry()
	}
	for _, entry := range l.Messages {
		if len(entry.Recipients) == 0 {
			continue
		}
		pol := s.msgPolicy(reg, r, entry.Recipients[0].Pool, l.Key.Domain)
		outs := make([]queue.Outcome, 0, len(entry.Recipients))
		for _, rc := range entry.Recipients {
			if l.Live(entry.ID, rc.N) {
				outs = append(outs, queue.Outcome{ID: entry.ID, N: rc.N, Kind: queue.Deferred, Reply: panicReply,
					Until: s.nextAttempt(entry, rc, pol)})
			}
		}
		if err := l.Report(outs...); err != nil {
			s.log.Error("recording outcomes failed", "id", entry.ID.String(), "err", err)
		}
	}
}
