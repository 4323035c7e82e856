package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// Options configure a Scheduler. Queue, Registry and Resolver are required.
type Options struct {
	Queue *queue.Queue
	// Registry returns the current configuration snapshot; it is asked
	// again for every connection and transaction, so a reload applies to
	// new connections without a restart.
	Registry func() *vmta.Registry
	Resolver Resolver
	// Dial opens TCP connections from a source address; nil means
	// net.Dialer with LocalAddr.
	Dial Dialer
	// Now is the clock for expiry and retry times; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
	// OnOutcome, if set, is called once for every recipient outcome the
	// scheduler reports to the queue, in the worker that reported it: the
	// feed for accounting records and bounce messages. It must not block
	// for long.
	OnOutcome func(Event)
	// OnBounce, if set, is called once per message and lease with the
	// recipients that bounced, before their outcomes are recorded (so the
	// body is still in the spool): the hook that writes one bounce report
	// (DSN) per message rather than one per recipient.
	OnBounce func(env queue.Envelope, bounced []Event, body []byte)
}

// Event is one recipient's outcome with what accounting and bounce reports
// need to know about it.
type Event struct {
	Time      time.Time
	ID        queue.ID
	Envelope  queue.Envelope
	Recipient queue.RecipientState
	Kind      queue.Kind // Delivered, Deferred or Bounced
	// Reply is the remote reply, or Tern's own diagnostic when no server
	// answered (e.g. "5.1.10 domain … accepts no mail (null MX)").
	Reply       string
	NextAttempt time.Time // for Deferred
	// The connection, when one was open; zero values otherwise.
	SourceIP   netip.Addr
	RemoteHost string
	RemoteIP   netip.Addr
	TLSVersion uint16
	// Size is the message size as sent.
	Size int
	// Duration is how long the transaction took, from MAIL FROM to the
	// final reply, when one was attempted.
	Duration time.Duration
}

// Scheduler runs the delivery of every queue key.
type Scheduler struct {
	opts Options
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu      sync.Mutex
	runners map[queue.Key]*runner
	total   int            // open connections, for total-max-smtp-out
	perVMTA map[string]int // open connections per VMTA, for its max-smtp-out
	// perPool counts connection workers by the pool of the mail they
	// carry, for the pool's max-smtp-out.
	perPool map[string]int
	// waiting are runners that wanted a connection while a VMTA-wide or
	// global cap was full; freed slots go to the highest queue-priority.
	waiting map[*runner]bool
	// idlers are the workers keeping an idle connection open; a queue
	// held back by a VMTA-wide or global cap closes one of them to get
	// its slot.
	idlers   map[*idler]bool
	vmtaRate map[string]*limiter
	poolRate map[string]*limiter
	sources  map[string]*atomic.Uint64 // round robin over a VMTA's source hosts
}

// runner is the state of one queue key.
type runner struct {
	key     queue.Key
	workers int    // connection workers running (guarded by Scheduler.mu)
	pool    string // the pool of the last leased mail, for the queue's policy
	orphan  bool   // its VMTA is not configured; logged once
	// idle counts workers keeping a connection open while they wait for
	// mail (guarded by Scheduler.mu): new mail goes to them, over the
	// connection they have, rather than to a new worker and connection.
	idle int
	// holdUntil stops new workers after the queue failed to lease (a spool
	// that cannot be written): without it a worker would start, fail and
	// be replaced in a tight loop.
	holdUntil time.Time
	mode      modeState
	// skipHost is an MX host a skip-mx rule sent away from, tried last
	// until skipUntil.
	skipHost  string
	skipUntil time.Time
	conn      limiter
	msg       limiter
	act       activity // recent outcomes, for the admin API's queue views
	// poolBlocked is the pool whose max-smtp-out stopped the queue's last
	// worker (guarded by Scheduler.mu): no worker starts until that pool
	// has a free slot.
	poolBlocked string
}

// idler is a worker waiting for mail with its connection open.
type idler struct {
	vmta  string
	pool  string             // the pool it is counted under, "" for none
	close context.CancelFunc // ends its wait: the worker leaves
}

// limiter is a token bucket that follows the configured rate across
// reloads.
type limiter struct {
	mu   sync.Mutex
	rate config.Rate
	l    *rate.Limiter
}

// wait blocks until the rate allows one more event. Burst 1 spreads events
// evenly over the interval, as a remote site counting per minute expects.
func (l *limiter) wait(ctx context.Context, r config.Rate) error {
	l.mu.Lock()
	if l.l == nil || l.rate != r {
		lim := rate.Inf
		if !r.Unlimited() {
			lim = rate.Limit(r.PerSecond())
		}
		l.l, l.rate = rate.NewLimiter(lim, 1), r
	}
	rl := l.l
	l.mu.Unlock()
	return rl.Wait(ctx)
}

// leaseRetry is how long a queue whose lease failed waits before trying
// again.
const leaseRetry = 5 * time.Second

// New returns a Scheduler; Start begins delivering.
func New(opts Options) *Scheduler {
	if opts.Dial == nil {
		opts.Dial = netDial
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Scheduler{
		opts: opts, log: opts.Logger, ctx: ctx, stop: cancel,
		runners: map[queue.Key]*runner{}, perVMTA: map[string]int{}, perPool: map[string]int{}, waiting: map[*runner]bool{}, idlers: map[*idler]bool{},
		vmtaRate: map[string]*limiter{}, poolRate: map[string]*limiter{}, sources: map[string]*atomic.Uint64{},
	}
}

// Start begins delivering what the queue already holds (the spool recovered
// at open); Notify then brings in keys as they become ready.
func (s *Scheduler) Start() {
	for _, st := range s.opts.Queue.Keys(queue.Selector{}) {
		if st.Ready > 0 && !st.Paused {
			s.Notify(st.Key)
		}
	}
}

// Notify tells the scheduler that key has due recipients. It is the queue's
// OnReady hook; it never blocks.
func (s *Scheduler) Notify(key queue.Key) {
	s.kick(s.runnerFor(key))
}

// runnerFor returns the runner of key, made on first use.
func (s *Scheduler) runnerFor(key queue.Key) *runner {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runners[key]
	if r == nil {
		r = &runner{key: key}
		s.runners[key] = r
	}
	return r
}

// Stop stops starting transactions, lets those in flight finish until ctx
// is done, and closes the connections.
func (s *Scheduler) Stop(ctx context.Context) error {
	s.stop()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// policy is the queue's effective policy, through the pool of its latest
// mail.
func (s *Scheduler) policy(reg *vmta.Registry, r *runner, pool string) *config.DomainSettings {
	return s.withMode(r, &reg.Policy(r.key.VMTA, pool, r.key.Domain).Settings)
}

// kick starts one more connection worker for r if every cap allows it.
func (s *Scheduler) kick(r *runner) {
	if s.ctx.Err() != nil {
		return
	}
	reg := s.opts.Registry()
	s.mu.Lock()
	v, ok := reg.VMTA(r.key.VMTA)
	if !ok {
		// Mail for a VMTA a reload removed waits, never bounces: it is
		// delivered when the VMTA comes back, or deleted by an operator.
		if !r.orphan {
			r.orphan = true
			s.log.Warn("queue has no configured virtual MTA; its mail waits", "queue", r.key.String())
		}
		s.mu.Unlock()
		return
	}
	r.orphan = false
	if s.opts.Now().Before(r.holdUntil) || r.idle > 0 {
		s.mu.Unlock()
		return
	}
	pol := s.policy(reg, r, r.pool)
	if r.workers >= pol.MaxSMTPOut.Value {
		s.mu.Unlock()
		return
	}
	capped := s.total >= reg.Config().TotalMaxSMTPOut.Value ||
		(v.MaxSMTPOut > 0 && s.perVMTA[v.Name] >= v.MaxSMTPOut)
	if capped {
		s.waiting[r] = true
		// A connection idling for another queue must not hold the slot
		// until its connection-idle-timeout: it closes, and its release
		// hands the slot to the waiting queues.
		vmtaFull := v.MaxSMTPOut > 0 && s.perVMTA[v.Name] >= v.MaxSMTPOut
		s.closeIdlerLocked(func(id *idler) bool { return !vmtaFull || id.vmta == v.Name })
		s.mu.Unlock()
		return
	}
	if pb := r.poolBlocked; pb != "" {
		if p, ok := reg.Pool(pb); ok && p.MaxSMTPOut > 0 && s.perPool[pb] >= p.MaxSMTPOut {
			s.waiting[r] = true
			s.closeIdlerLocked(func(id *idler) bool { return id.pool == pb })
			s.mu.Unlock()
			return
		}
		r.poolBlocked = ""
	}
	delete(s.waiting, r)
	r.workers++
	s.total++
	s.perVMTA[v.Name]++
	s.mu.Unlock()
	s.wg.Add(1)
	go s.work(r, v.Name)
}

// release gives back a worker's slot and hands it on: to this queue if it
// still has due mail (a worker leaving must not strand mail that arrived
// while it held the last slot), and to the waiting queues by priority.
func (s *Scheduler) release(r *runner, vmtaName string) {
	s.mu.Lock()
	r.workers--
	s.total--
	s.perVMTA[vmtaName]--
	waiting := make([]*runner, 0, len(s.waiting))
	for w := range s.waiting {
		waiting = append(waiting, w)
	}
	s.mu.Unlock()
	if st := s.opts.Queue.Stats(r.key); st.Ready > 0 && !st.Paused {
		s.kick(r)
	}
	if len(waiting) == 0 {
		return
	}
	reg := s.opts.Registry()
	// A runner's pool is written by its workers under s.mu.
	prio := make(map[*runner]int, len(waiting))
	s.mu.Lock()
	for _, w := range waiting {
		prio[w] = s.policy(reg, w, w.pool).QueuePriority.Value
	}
	s.mu.Unlock()
	sort.Slice(waiting, func(i, j int) bool { return prio[waiting[i]] > prio[waiting[j]] })
	for _, w := range waiting {
		s.kick(w)
	}
}

// work is one connection worker: it leases due recipients of its queue and
// sends them over one connection, reused up to max-msg-per-connection, and
// leaves when the queue has been idle for connection-idle-timeout.
func (s *Scheduler) work(r *runner, vmtaName string) {
	defer s.wg.Done()
	defer s.release(r, vmtaName)
	// poolSlot is the pool this worker is counted under: that of the mail
	// it carries now. It is given back after the connection closes and
	// before release hands slots on.
	poolSlot := ""
	defer func() { s.movePoolSlot(poolSlot, "") }()
	var oc *outConn
	// carry is a lease taken while the previous one's last message was
	// being sent, and ahead its first message when that went out behind
	// it (deliver's next).
	var carry *queue.Lease
	var ahead *txn
	defer func() {
		if carry != nil {
			carry.Release()
		}
		if oc != nil {
			oc.close()
		}
	}()
	q := s.opts.Queue
	for s.ctx.Err() == nil {
		reg := s.opts.Registry()
		v, ok := reg.VMTA(r.key.VMTA)
		if !ok {
			return
		}
		s.mu.Lock()
		pool := r.pool // written by the runner's other workers
		held := s.opts.Now().Before(r.holdUntil)
		s.mu.Unlock()
		if held {
			return // a defer-queue rule or a failing spool: kicked again when the hold ends
		}
		pol := s.policy(reg, r, pool)
		lease, err := carry, error(nil)
		carry = nil
		if lease == nil {
			lease, err = q.Lease(s.ctx, r.key, pol.MaxRcptPerTransaction.Value)
		}
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				s.log.Error("lease failed; the queue waits before trying again", "queue", r.key.String(), "err", err, "wait", leaseRetry.String())
				s.mu.Lock()
				r.holdUntil = s.opts.Now().Add(leaseRetry)
				s.mu.Unlock()
				time.AfterFunc(leaseRetry, func() { s.kick(r) })
			}
			return
		}
		if lease == nil {
			if oc == nil {
				return
			}
			s.mu.Lock()
			waiters := len(s.waiting) > 0
			s.mu.Unlock()
			if waiters {
				// A queue held back by a cap gets this slot now rather
				// than after connection-idle-timeout.
				return
			}
			// Keep the connection for a while in case more mail comes.
			ctx, cancel := context.WithTimeout(s.ctx, pol.ConnectionIdleTimeout.Value)
			id := &idler{vmta: vmtaName, pool: poolSlot, close: cancel}
			s.mu.Lock()
			r.idle++
			s.idlers[id] = true
			s.mu.Unlock()
			err := q.Wait(ctx, r.key)
			s.mu.Lock()
			r.idle--
			delete(s.idlers, id)
			s.mu.Unlock()
			cancel()
			if err != nil {
				return
			}
			continue
		}
		if n := len(lease.Messages); n > 0 && len(lease.Messages[0].Recipients) > 0 {
			p := lease.Messages[0].Recipients[0].Pool
			s.mu.Lock()
			r.pool = p
			s.mu.Unlock()
			if p != poolSlot {
				if !s.takePoolSlot(reg, r, poolSlot, p) {
					// The pool is at its max-smtp-out: the mail waits for
					// one of its connections to end.
					lease.Release()
					return
				}
				poolSlot = p
			}
		}
		if leaseSize(lease) >= pol.MaxRcptPerTransaction.Value {
			s.kick(r) // a full lease: likely more due, open another connection
		}
		oc, carry, ahead = s.deliver(reg, v, r, lease, oc, ahead)
		lease.Release()
	}
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
func (s *Scheduler) contain(r *runner, p any, oc *outConn, leases ...*queue.Lease) {
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
	if oc != nil {
		oc.close()
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
			s.reportAll(r, l, entry, queue.Deferred, panicReply, s.policy(reg, r, entry.Recipients[0].Pool))
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
		pol := s.policy(reg, r, entry.Recipients[0].Pool)
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

func leaseSize(l *queue.Lease) int {
	n := 0
	for _, m := range l.Messages {
		n += len(m.Recipients)
	}
	return n
}

// deliver sends every message of the lease, one transaction each, over oc
// (opened or replaced as needed), and reports each recipient's outcome.
// ahead is the lease's first message when it already went out behind the
// previous lease's last one. It returns the connection to keep (or nil),
// and the next lease with its first message's transaction when deliver
// took that lease to pipeline the message behind its own last one.
func (s *Scheduler) deliver(reg *vmta.Registry, v *vmta.VMTA, r *runner, lease *queue.Lease, oc *outConn, ahead *txn) (keepConn *outConn, nextLease *queue.Lease, nextAhead *txn) {
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
			s.contain(r, p, oc, lease, carry)
			keepConn, nextLease, nextAhead = nil, nil, nil
		}
	}()
	for i, entry := range lease.Messages {
		pol := s.policy(reg, r, entry.Recipients[0].Pool)
		now := s.opts.Now()
		pre := ahead
		ahead = nil
		if pre != nil && pre.id != entry.ID {
			// Not the message whose commands went out (cannot happen:
			// a carried lease is delivered next): the connection's
			// replies belong to another transaction.
			if oc != nil && oc.ahead == pre {
				oc.broken = true
			}
			pre = nil
		}
		if age := now.Sub(entry.Envelope.Received); pre == nil && age >= pol.BounceAfter.Value {
			s.reportAll(r, lease, entry, queue.Bounced,
				fmt.Sprintf("5.4.7 message expired after %s in the queue (bounce-after %s)",
					config.FormatDuration(age.Truncate(time.Second)), config.FormatDuration(pol.BounceAfter.Value)), nil)
			continue
		}
		if oc != nil && (oc.broken || (pol.MaxMsgPerConnection.Value > 0 && oc.txns >= pol.MaxMsgPerConnection.Value) ||
			(pol.MaxErrorsPerConnection.Value > 0 && oc.errs >= pol.MaxErrorsPerConnection.Value)) {
			oc.close()
			oc = nil
		}
		if connErr != nil && oc != nil {
			oc.close()
			oc = nil
		}
		if oc == nil {
			err := connErr
			if err == nil {
				oc, err = s.connect(r, v, pol)
			}
			if err != nil {
				connErr = err
				var perm *permanentError
				if errors.As(err, &perm) {
					s.reportAll(r, lease, entry, queue.Bounced, perm.Error(), nil)
				} else {
					s.reportAll(r, lease, entry, queue.Deferred, err.Error(), pol)
				}
				continue
			}
		}
		t := pre
		if t == nil {
			var stop bool
			if t, stop = s.prepare(reg, v, r, lease, entry, pol, true); stop {
				return oc, carry, nil
			}
			if t == nil {
				continue
			}
		}
		// next offers the following entry to go out behind this message
		// when nothing has to happen between the two: no rate to wait
		// for, no reason to change connections, nothing expired.
		next := func() *txn {
			if connErr != nil || oc.broken {
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
					nl, err := s.opts.Queue.Lease(s.ctx, r.key, pol.MaxRcptPerTransaction.Value)
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
			npol := s.policy(reg, r, ne.Recipients[0].Pool)
			if (npol.MaxMsgPerConnection.Value > 0 && oc.txns >= npol.MaxMsgPerConnection.Value) ||
				(npol.MaxErrorsPerConnection.Value > 0 && oc.errs >= npol.MaxErrorsPerConnection.Value) ||
				s.opts.Now().Sub(ne.Envelope.Received) >= npol.BounceAfter.Value {
				return nil
			}
			ahead, _ = s.prepare(reg, v, r, from, ne, npol, false)
			return ahead
		}
		results := oc.sendTxn(t, next)
		body, live := t.body, t.rcpts
		if oc.stale {
			// The server closed the connection while it sat idle (a
			// restart, its idle timeout): nothing of this transaction
			// reached it, so it goes out on a new connection instead of
			// being deferred.
			s.log.Info("reused connection was closed by the server; reconnecting", "queue", r.key.String(), "host", oc.target.host)
			oc.close()
			oc = nil
			fresh, err := s.connect(r, v, pol)
			if err != nil {
				// Deferred for the reason that counts now: the server is
				// gone, not the closed connection.
				for i := range results {
					results[i].code, results[i].text = 0, err.Error()
				}
			} else {
				oc = fresh
				results = oc.send(entry.Envelope, live, body)
			}
		}
		outs := make([]queue.Outcome, 0, len(results))
		var bounced []Event
		for _, res := range results {
			out := queue.Outcome{ID: entry.ID, N: res.rcpt.N, Reply: res.text}
			var act *config.ReplyActions
			if res.code/100 != 2 {
				act = s.matchReply(reg, r, pol, res.text)
				pol = s.policy(reg, r, entry.Recipients[0].Pool) // the mode may have changed
			}
			switch {
			case res.code/100 == 2:
				out.Kind = queue.Delivered
				if pol.BackoffToNormalAfterDelivery.Value && r.mode.on.Load() {
					s.setMode(r, false, "delivered")
				}
			case res.code/100 == 5:
				out.Kind = queue.Bounced
			case act != nil && act.BounceRcpt && res.atRcpt:
				out.Kind = queue.Bounced
			case act != nil && act.SkipMX:
				// Keep the mail, due again at once, and send this queue to
				// its other MX hosts for a while.
				out.Kind, out.Until = queue.Deferred, s.opts.Now()
				if oc != nil {
					s.mu.Lock()
					r.skipHost, r.skipUntil = oc.target.host, s.opts.Now().Add(pol.RetryAfter.Value[0])
					s.mu.Unlock()
					oc.broken = true
				}
			default:
				out.Kind, out.Until = queue.Deferred, s.nextAttempt(entry, res.rcpt, pol)
				if act != nil && act.DeferQueue {
					// Stop the queue until its next retry: the rest of
					// this lease waits too, without another attempt.
					connErr = fmt.Errorf("queue deferred by smtp-pattern-list after: %s", res.text)
					s.mu.Lock()
					r.holdUntil = out.Until
					s.mu.Unlock()
					time.AfterFunc(out.Until.Sub(s.opts.Now()), func() { s.kick(r) })
					if oc != nil {
						oc.broken = true
					}
				}
			}
			outs = append(outs, out)
			ev := s.record(r, entry, res.rcpt, oc, out, len(body))
			if out.Kind == queue.Bounced {
				bounced = append(bounced, ev)
			}
		}
		s.bounce(entry, bounced, func() ([]byte, error) { return body, nil })
		if err := lease.Report(outs...); err != nil {
			s.log.Error("recording outcomes failed", "id", entry.ID.String(), "err", err)
		}
	}
	return oc, carry, ahead
}

// prepare gets entry ready to send: it waits for the message rates (each
// recipient counts; stop reports a shutdown during the wait), reads the
// body and keeps the recipients still live. A nil txn means there is
// nothing to send now. Without wait it gives nil rather than wait for a
// rate, for a message that would go out behind another.
func (s *Scheduler) prepare(reg *vmta.Registry, v *vmta.VMTA, r *runner, lease *queue.Lease, entry queue.Entry, pol *config.DomainSettings, wait bool) (t *txn, stop bool) {
	p, hasPool := reg.Pool(entry.Recipients[0].Pool)
	poolRated := hasPool && !p.MaxSMTPMsgRate.Unlimited()
	if !wait && (!pol.MaxMsgRate.Value.Unlimited() || !v.MaxSMTPMsgRate.Unlimited() || poolRated) {
		return nil, false
	}
	if wait {
		// Rates count recipients attempted, so wait once the connection
		// is up.
		for range entry.Recipients {
			if err := r.msg.wait(s.ctx, pol.MaxMsgRate.Value); err != nil {
				return nil, true
			}
			if err := limiterFor(s, s.vmtaRate, v.Name).wait(s.ctx, v.MaxSMTPMsgRate); err != nil {
				return nil, true
			}
			if poolRated {
				if err := limiterFor(s, s.poolRate, p.Name).wait(s.ctx, p.MaxSMTPMsgRate); err != nil {
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
func (s *Scheduler) reportAll(r *runner, lease *queue.Lease, entry queue.Entry, kind queue.Kind, reply string, pol *config.DomainSettings) {
	outs := make([]queue.Outcome, 0, len(entry.Recipients))
	var bounced []Event
	for _, rc := range entry.Recipients {
		if !lease.Live(entry.ID, rc.N) {
			continue
		}
		out := queue.Outcome{ID: entry.ID, N: rc.N, Kind: kind, Reply: reply}
		if kind == queue.Deferred {
			out.Until = s.nextAttempt(entry, rc, pol)
		}
		outs = append(outs, out)
		if ev := s.record(r, entry, rc, nil, out, 0); kind == queue.Bounced {
			bounced = append(bounced, ev)
		}
	}
	s.bounce(entry, bounced, func() ([]byte, error) { return lease.Body(entry.ID) })
	if err := lease.Report(outs...); err != nil {
		s.log.Error("recording outcomes failed", "id", entry.ID.String(), "err", err)
	}
}

// nextAttempt applies retry-after: the interval for this recipient's
// attempt number, the last one repeating, and never past the message's
// expiry, so an expired message bounces on time.
func (s *Scheduler) nextAttempt(entry queue.Entry, rc queue.RecipientState, pol *config.DomainSettings) time.Time {
	sched := pol.RetryAfter.Value
	i := min(rc.Attempts, len(sched)-1)
	next := s.opts.Now().Add(sched[i])
	if expiry := entry.Envelope.Received.Add(pol.BounceAfter.Value); next.After(expiry) {
		next = expiry
	}
	return next
}

// connect opens a connection for the queue: resolve the destinations, then
// try them in order from the VMTA's next source address.
func (s *Scheduler) connect(r *runner, v *vmta.VMTA, pol *config.DomainSettings) (*outConn, error) {
	targets, err := destinations(s.ctx, s.opts.Resolver, r.key.Domain, pol)
	if err != nil {
		return nil, err
	}
	if err := r.conn.wait(s.ctx, pol.MaxConnectRate.Value); err != nil {
		return nil, err
	}
	s.mu.Lock()
	skip, until := r.skipHost, r.skipUntil
	s.mu.Unlock()
	if skip != "" && s.opts.Now().Before(until) {
		kept := make([]target, 0, len(targets))
		var last []target
		for _, t := range targets {
			if t.host == skip {
				last = append(last, t)
			} else {
				kept = append(kept, t)
			}
		}
		targets = append(kept, last...)
	}
	src := s.nextSource(v)
	var lastErr error
	for _, t := range targets {
		o := connOptions{source: src.IP, ehlo: src.HostName, pol: pol, dial: s.opts.Dial,
			wantTLS: pol.UseStartTLS.Value || pol.RequireStartTLS.Value}
		oc, err := open(s.ctx, t, o)
		var te *tlsError
		if err != nil && errors.As(err, &te) && !pol.RequireStartTLS.Value {
			// Opportunistic TLS failed: the same host in plaintext.
			s.log.Info("STARTTLS failed; retrying in plaintext", "queue", r.key.String(), "host", t.host, "err", err)
			o.wantTLS = false
			oc, err = open(s.ctx, t, o)
		}
		if err == nil {
			return oc, nil
		}
		s.log.Info("connection failed; trying the next host", "queue", r.key.String(), "host", t.host, "ip", t.ip.String(), "source", sourceName(src.IP), "err", err)
		var re *replyError
		if errors.As(err, &re) {
			s.matchReply(s.opts.Registry(), r, pol, re.err.Error())
		}
		lastErr = err
	}
	return nil, lastErr
}

// nextSource rotates over the VMTA's source addresses.
func (s *Scheduler) nextSource(v *vmta.VMTA) vmta.SourceHost {
	s.mu.Lock()
	c := s.sources[v.Name]
	if c == nil {
		c = new(atomic.Uint64)
		s.sources[v.Name] = c
	}
	s.mu.Unlock()
	return v.SourceHosts[int(c.Add(1)-1)%len(v.SourceHosts)]
}

// limiterFor returns the rate limiter of name in m (a VMTA's or a pool's),
// made on first use.
func limiterFor(s *Scheduler, m map[string]*limiter, name string) *limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := m[name]
	if l == nil {
		l = &limiter{}
		m[name] = l
	}
	return l
}

// takePoolSlot moves a worker of r from pool from to pool to, unless to is
// at its max-smtp-out: then r waits (poolBlocked) and false is returned,
// with the worker still counted under from (its caller leaves and gives
// that back).
func (s *Scheduler) takePoolSlot(reg *vmta.Registry, r *runner, from, to string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := reg.Pool(to); ok && p.MaxSMTPOut > 0 && s.perPool[to] >= p.MaxSMTPOut {
		r.poolBlocked = to
		s.waiting[r] = true
		s.closeIdlerLocked(func(id *idler) bool { return id.pool == to })
		return false
	}
	s.movePoolSlotLocked(from, to)
	return true
}

// closeIdlerLocked ends the wait of one idle worker that match accepts,
// so that its slot goes to a queue held back by a cap; s.mu must be held.
func (s *Scheduler) closeIdlerLocked(match func(*idler) bool) {
	for id := range s.idlers {
		if match(id) {
			delete(s.idlers, id)
			id.close()
			return
		}
	}
}

// movePoolSlot moves one worker's count from pool from to pool to ("" is
// no pool).
func (s *Scheduler) movePoolSlot(from, to string) {
	s.mu.Lock()
	s.movePoolSlotLocked(from, to)
	s.mu.Unlock()
}

func (s *Scheduler) movePoolSlotLocked(from, to string) {
	if from != "" {
		if s.perPool[from]--; s.perPool[from] <= 0 {
			delete(s.perPool, from)
		}
	}
	if to != "" {
		s.perPool[to]++
	}
}

// record writes the one line per recipient attempt operators grep for and
// hands the outcome to OnOutcome.
func (s *Scheduler) record(r *runner, entry queue.Entry, rc queue.RecipientState, oc *outConn, out queue.Outcome, size int) Event {
	ev := Event{Time: s.opts.Now(), ID: entry.ID, Envelope: entry.Envelope, Recipient: rc,
		Kind: out.Kind, Reply: out.Reply, NextAttempt: out.Until, Size: size}
	if oc != nil {
		ev.SourceIP, ev.RemoteHost, ev.RemoteIP, ev.TLSVersion = oc.source, oc.target.host, oc.target.ip, oc.tls
		ev.Duration = oc.txnDur
	}
	r.act.add(&ev)
	if s.opts.OnOutcome != nil {
		s.opts.OnOutcome(ev)
	}
	// A delivery is a debug line (the accounting file's d record holds
	// it); a deferral or a bounce is what an operator looks for, at info.
	level := slog.LevelInfo
	if out.Kind == queue.Delivered {
		level = slog.LevelDebug
	}
	if !s.log.Enabled(context.Background(), level) {
		return ev
	}
	attrs := []any{"id", entry.ID.String(), "rcpt", rc.Address, "vmta", rc.VMTA, "outcome", out.Kind.String(), "reply", out.Reply}
	if oc != nil {
		tlsv := "none"
		if oc.tls != 0 {
			tlsv = tlsName(oc.tls)
		}
		attrs = append(attrs, "source", sourceName(oc.source), "host", oc.target.host, "ip", oc.target.ip.String(), "tls", tlsv)
	}
	if out.Kind == queue.Deferred {
		attrs = append(attrs, "next_attempt", out.Until.Format(time.RFC3339))
	}
	s.log.Log(context.Background(), level, "delivery attempt", attrs...)
	return ev
}

// bounce hands the bounced recipients of one message to OnBounce.
func (s *Scheduler) bounce(entry queue.Entry, bounced []Event, body func() ([]byte, error)) {
	if len(bounced) == 0 || s.opts.OnBounce == nil {
		return
	}
	b, err := body()
	if err != nil {
		s.log.Error("reading a bounced message for its report failed", "id", entry.ID.String(), "err", err)
	}
	s.opts.OnBounce(entry.Envelope, bounced, b)
}

func tlsName(v uint16) string {
	switch v {
	case 0x0303:
		return "TLS1.2"
	case 0x0304:
		return "TLS1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}
