package delivery

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

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
	// Clock is the source of time for retries, expiry, rates, idle
	// connections and host probes; nil means queue.SystemClock. Tests pass
	// the queue's queuetest.Clock.
	Clock  queue.Clock
	Logger *slog.Logger
	// OnOutcome, if set, is called once for every recipient outcome the
	// scheduler reports to the queue, in the worker that reported it: the
	// feed for accounting records and bounce messages. It must not block
	// for long.
	OnOutcome func(Event)
	// Journal, if set, is called once for every recipient outcome the
	// scheduler reports to the queue, just before OnOutcome, in the worker
	// that reported it. What it returns goes to the queue with the
	// outcome (queue.Outcome.Journal), committed in the same batch: the
	// outcome's accounting record, durable exactly when the outcome is.
	// Nil or empty means no entry. It must not block for long.
	Journal func(Event) []byte
	// OnBounce, if set, is called once per message and lease with the
	// recipients that bounced, before their outcomes are recorded (so the
	// body is still in the spool): the hook that writes one bounce report
	// (DSN) per message rather than one per recipient.
	OnBounce func(env queue.Envelope, bounced []Event, body []byte)
	// OnDelay, if set, is called once per message and lease with the
	// deferred recipients that asked for delay reports (NOTIFY=DELAY) and
	// have now waited notify-of-delay since the message arrived: each
	// recipient once, at its first deferral past that point. It is the
	// hook for delay reports (DSN action "delayed").
	OnDelay func(env queue.Envelope, delayed []Event, body []byte)
	// MaxConnections, when positive, caps the outbound connections below
	// total-max-smtp-out: the share of the process's file descriptors
	// the daemon gives delivery, so that outbound connections cannot
	// starve the listeners or the spool of them.
	MaxConnections int
	// Jitter returns a number in [0, 1) that spreads retries: a deferred
	// recipient is due again after its retry interval plus up to a tenth
	// of it, so that mail deferred together (an outage, a restart) does
	// not come due at the same instant. nil means math/rand; tests may
	// pass a constant.
	Jitter func() float64

	// transport replaces the SMTP client (the scheduler's own tests).
	transport transport
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
	// RetryUntil is, for Deferred, when the message expires (bounce-after).
	RetryUntil time.Time
	// The connection, when one was open; zero values otherwise.
	SourceIP   netip.Addr
	RemoteHost string
	RemoteIP   netip.Addr
	TLSVersion uint16
	// Size is the message size as sent.
	Size int
	// Message is the message as sent when a transaction was attempted
	// (nil otherwise): the accounting record's header_ fields read its
	// header section.
	Message []byte
	// Duration is how long the transaction took, from MAIL FROM to the
	// final reply, when one was attempted.
	Duration time.Duration
	// Discarded: a Delivered outcome of a queue whose policy says type
	// discard. Nothing was looked up or sent; Reply is discardReply.
	Discarded bool
}

// Scheduler runs the delivery of every queue.
type Scheduler struct {
	opts  Options
	log   *slog.Logger
	clock queue.Clock
	tr    transport
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	// routing bounds the lookups routing new domains (maxRouting).
	routing chan struct{}

	mu sync.Mutex
	// keys holds each queue key's route to its provider and recent
	// outcomes; runners the runner of each (VMTA, provider).
	keys    map[queue.Key]*keyInfo
	runners map[provKey]*runner
	total   int            // open connections, for total-max-smtp-out
	perVMTA map[string]int // open connections per VMTA, for its max-smtp-out
	// perPool counts connection workers by the pool of the mail they
	// carry, for the pool's max-smtp-out.
	perPool map[string]int
	// waiting are runners that wanted a connection while a VMTA-wide or
	// global cap was full; freed slots go to the highest queue-priority.
	waiting map[*runner]bool
	// idlers are the workers keeping an idle connection open; a queue
	// held back by a cap closes one of them to get its slot.
	idlers   map[*idler]bool
	vmtaRate map[string]*limiter
	poolRate map[string]*limiter
	sources  map[string]*atomic.Uint64 // round robin over a VMTA's source hosts
	hosts    map[hostKey]*hostState
	sites    map[siteKey]*window
	// shapes are the traffic-shaping states in force; thresh the recent
	// matches of threshold rules.
	// tlsSessions are the TLS session caches per source address
	// (reuse-ssl-session).
	tlsSessions map[netip.Addr]tls.ClientSessionCache
	shapes      map[shapeKey]*Shaping
	thresh      map[threshKey][]time.Time
	rerouteTurn uint64 // round robin over a reroute pool's members
	// discarding are the keys a discarder is emptying (type discard);
	// discardSlots bounds how many work at once (maxDiscarding).
	discarding   map[queue.Key]*discarder
	discardSlots chan struct{}
}

// keyInfo is what the scheduler keeps per queue key.
type keyInfo struct {
	rt        route
	runner    *runner // the runner of its provider; nil until routed
	resolving bool
	act       activity // recent outcomes, for the admin API's queue views
	// discardReg is the configuration discardAll was computed with.
	discardReg *vmta.Registry
	discardAll bool
	// held is set while the key is held by max-msg-rate 0 (held.go), with
	// its expiry check armed.
	held bool
}

// leaseRetry is how long a queue whose lease failed waits before trying
// again.
const leaseRetry = 5 * time.Second

// New returns a Scheduler; Start begins delivering.
func New(opts Options) *Scheduler {
	if opts.Dial == nil {
		opts.Dial = netDial
	}
	if opts.Clock == nil {
		opts.Clock = queue.SystemClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Jitter == nil {
		opts.Jitter = rand.Float64
	}
	tr := opts.transport
	if tr == nil {
		tr = smtpTransport{dial: opts.Dial}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Scheduler{
		opts: opts, log: opts.Logger, clock: opts.Clock, tr: tr, ctx: ctx, stop: cancel,
		routing: make(chan struct{}, maxRouting),
		keys:    map[queue.Key]*keyInfo{}, runners: map[provKey]*runner{},
		perVMTA: map[string]int{}, perPool: map[string]int{}, waiting: map[*runner]bool{}, idlers: map[*idler]bool{},
		vmtaRate: map[string]*limiter{}, poolRate: map[string]*limiter{}, sources: map[string]*atomic.Uint64{},
		hosts: map[hostKey]*hostState{}, sites: map[siteKey]*window{},
		shapes: map[shapeKey]*Shaping{}, thresh: map[threshKey][]time.Time{},
		discarding: map[queue.Key]*discarder{}, discardSlots: make(chan struct{}, maxDiscarding),
		tlsSessions: map[netip.Addr]tls.ClientSessionCache{},
	}
}

// Start begins delivering what the queue already holds (the spool recovered
// at open), under the traffic-shaping states the spool kept; Notify then
// brings in keys as they become ready.
func (s *Scheduler) Start() {
	s.loadShaping()
	s.after(sweepInterval, s.sweep)
	for _, st := range s.opts.Queue.Keys(queue.Selector{}) {
		if st.Ready > 0 && !st.Paused {
			s.Notify(st.Key)
		}
	}
}

// Notify tells the scheduler that key has due recipients. It is the queue's
// OnReady hook; it never blocks. A key seen for the first time is routed
// to its provider first (an MX lookup, in the background).
func (s *Scheduler) Notify(key queue.Key) {
	if s.ctx.Err() != nil {
		return
	}
	reg := s.opts.Registry()
	if s.discard(reg, key) {
		return // type discard: no route, no runner
	}
	now := s.clock.Now()
	s.mu.Lock()
	ki := s.keyInfoLocked(key)
	r := ki.runner
	stale := r == nil || ki.rt.reg != reg || !now.Before(ki.rt.expires)
	route := stale && !ki.resolving
	if route {
		ki.resolving = true
	}
	if r != nil {
		s.pushReadyLocked(r, key)
	}
	s.mu.Unlock()
	if route {
		s.wg.Add(1)
		go s.route(key, reg)
	}
	if r != nil {
		s.kick(r)
	}
}

// keyInfoLocked returns key's info, made on first use; s.mu must be held.
func (s *Scheduler) keyInfoLocked(key queue.Key) *keyInfo {
	ki := s.keys[key]
	if ki == nil {
		ki = &keyInfo{}
		s.keys[key] = ki
	}
	return ki
}

// route finds key's provider and hands the key to that provider's runner.
func (s *Scheduler) route(key queue.Key, reg *vmta.Registry) {
	defer s.wg.Done()
	select {
	case s.routing <- struct{}{}:
	case <-s.ctx.Done():
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, routeTimeout)
	rt := providerOf(ctx, s.opts.Resolver, reg, key)
	cancel()
	<-s.routing
	if r := s.attach(key, rt, true); r != nil {
		s.kick(r)
	}
}

// attach makes rt key's route and key a member of its provider's runner,
// which it returns. ready also puts the key on the runner's ready list.
func (s *Scheduler) attach(key queue.Key, rt route, ready bool) *runner {
	rt.expires = s.clock.Now().Add(routeTTL)
	s.mu.Lock()
	defer s.mu.Unlock()
	ki := s.keyInfoLocked(key)
	ki.resolving = false
	ki.rt = rt
	pk := provKey{VMTA: key.VMTA, Provider: rt.provider}
	r := s.runners[pk]
	if r == nil {
		r = newRunner(pk)
		// A rollup's provider is named after it, so a runner's rollup
		// never changes: it is set once, here.
		r.rollup = rt.rollup
		s.runners[pk] = r
	}
	if old := ki.runner; old != nil && old != r {
		old.dropLocked(key)
		s.log.Info("domain moved to another provider", "queue", key.String(), "from", old.key.Provider, "to", r.key.Provider)
	}
	ki.runner = r
	r.members[key] = true
	if ready {
		s.pushReadyLocked(r, key)
	}
	return r
}

// runnerFor returns the runner of key's provider, routing key now (an MX
// lookup) when it has not been yet: for operator actions on a queue the
// scheduler has not worked on.
func (s *Scheduler) runnerFor(key queue.Key) *runner {
	if r := s.runnerOf(key); r != nil {
		return r
	}
	ctx, cancel := context.WithTimeout(s.ctx, routeTimeout)
	defer cancel()
	return s.attach(key, providerOf(ctx, s.opts.Resolver, s.opts.Registry(), key), false)
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

// after runs f on the scheduler's clock after d, unless the scheduler has
// stopped by then.
func (s *Scheduler) after(d time.Duration, f func()) {
	s.clock.AfterFunc(d, func() {
		if s.ctx.Err() == nil {
			f()
		}
	})
}

// record writes the one line per recipient attempt operators grep for,
// attaches the outcome's journal entry to out and hands the outcome to
// OnOutcome.
func (s *Scheduler) record(key queue.Key, entry queue.Entry, rc queue.RecipientState, st *sessionState, out *queue.Outcome, body []byte, pol *config.DomainSettings) Event {
	ev := Event{Time: s.clock.Now(), ID: entry.ID, Envelope: entry.Envelope, Recipient: rc,
		Kind: out.Kind, Reply: out.Reply, NextAttempt: out.Until, Size: len(body), Message: body}
	if out.Kind == queue.Deferred && pol != nil {
		ev.RetryUntil = entry.Envelope.Received.Add(pol.BounceAfter.Value)
	}
	if st != nil {
		ev.SourceIP, ev.RemoteHost, ev.RemoteIP, ev.TLSVersion = st.source, st.target.host, st.target.ip, st.tls
		ev.Duration = st.txnDur
	}
	s.publish(key, &ev, out, st)
	return ev
}

// publish hands the outcome ev of out to the queue's activity, the journal
// and OnOutcome, and logs it. st is the session, nil when none was open.
func (s *Scheduler) publish(key queue.Key, ev *Event, out *queue.Outcome, st *sessionState) {
	s.activityOf(key).add(ev)
	if s.opts.Journal != nil {
		out.Journal = s.opts.Journal(*ev)
	}
	if s.opts.OnOutcome != nil {
		s.opts.OnOutcome(*ev)
	}
	// A delivery is a debug line (the accounting file's d record holds
	// it); a deferral or a bounce is what an operator looks for, at info.
	level := slog.LevelInfo
	if out.Kind == queue.Delivered {
		level = slog.LevelDebug
	}
	if !s.log.Enabled(context.Background(), level) {
		return
	}
	attrs := []any{"id", ev.ID.String(), "rcpt", ev.Recipient.Address, "vmta", ev.Recipient.VMTA, "outcome", out.Kind.String(), "reply", out.Reply}
	if st != nil {
		tlsv := "none"
		if st.tls != 0 {
			tlsv = tlsName(st.tls)
		}
		attrs = append(attrs, "source", sourceName(st.source), "host", st.target.host, "ip", st.target.ip.String(), "tls", tlsv)
	}
	if out.Kind == queue.Deferred {
		attrs = append(attrs, "next_attempt", out.Until.Format(time.RFC3339))
	}
	s.log.Log(context.Background(), level, "delivery attempt", attrs...)
}

// activityOf returns the recent-outcome ring of key.
func (s *Scheduler) activityOf(key queue.Key) *activity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &s.keyInfoLocked(key).act
}

// delayReport reports whether the deferral ev of rc crosses notify-of-delay
// for a recipient that asked for delay reports: the first deferral
// recorded at or after that point (the one before came earlier, or there
// was none), so each recipient gets one report without the spool keeping
// a mark.
func delayReport(ev *Event, rc queue.RecipientState, pol *config.DomainSettings) bool {
	d := pol.NotifyOfDelay.Value
	if ev.Kind != queue.Deferred || rc.Notify&queue.NotifyDelay == 0 || rc.Notify&queue.NotifyNever != 0 || d == config.Never || d <= 0 {
		return false
	}
	recv := ev.Envelope.Received
	if ev.Time.Sub(recv) < d {
		return false
	}
	return rc.LastAttempt.IsZero() || rc.LastAttempt.Sub(recv) < d
}

// delay hands the recipients of one message that are due a delay report
// to OnDelay.
func (s *Scheduler) delay(entry queue.Entry, delayed []Event, body func() ([]byte, error)) {
	if len(delayed) == 0 || s.opts.OnDelay == nil {
		return
	}
	b, err := body()
	if err != nil {
		s.log.Error("reading a delayed message for its report failed", "id", entry.ID.String(), "err", err)
	}
	s.opts.OnDelay(entry.Envelope, delayed, b)
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
