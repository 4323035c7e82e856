package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
	"github.com/ternmta/tern/vmta"
)

// The tests in this file drive the scheduler through its transport seam:
// a simulated network of providers and hosts instead of sockets, and the
// queue's fake clock instead of time, so that connection windows, host
// probes and reply rules are tested deterministically and fast.

// fakeHost is one simulated MX host address.
type fakeHost struct {
	name     string
	provider string // hosts of one provider share its connection cap
	// cap is the most sessions the provider takes from one source
	// address; beyond it the banner is 421. 0: no cap.
	cap int
	// dead hosts refuse TCP; black holes accept it and never greet.
	dead, blackHole bool
	// rcpt answers RCPT for a recipient; nil accepts everyone.
	rcpt func(addr string) (int, string)
	// perConn is how many transactions a session takes before the next
	// MAIL gets 421; 0 no limit.
	perConn int
	// delay is how long a transaction takes, on the world's clock.
	delay time.Duration
	// closeAfter: after this many transactions the server closes the
	// connection, which the next transaction finds at MAIL; 0 never.
	closeAfter int
}

// fakeNet is the simulated network: what every host does, and what the
// scheduler did to them.
type fakeNet struct {
	clock  *queuetest.Clock
	mu     sync.Mutex
	hosts  map[netip.Addr]*fakeHost
	dials  map[netip.Addr]int      // dials per host address
	live   map[string]int          // sessions open per "source provider"
	peak   map[string]int          // the most at once
	held   map[netip.Addr]int      // connections held open by black holes
	hpeak  map[netip.Addr]int      // the most held at once
	per    map[string]int          // 421s for too many transactions, per provider
	closed map[string]int          // connections found closed at MAIL, per provider
	refus  map[string]int          // 421 banners per provider
	got    map[string]int          // deliveries per recipient
	conns  map[string]map[int]bool // sessions that carried each provider's domains
	doms   map[int]map[string]bool // domains carried per session
	sess   int                     // sessions ever opened
	hole   chan struct{}           // closed to release black holes
	mails  map[netip.Addr][]string // MAIL commands per host, for order checks
	// srcReply, when set, answers every RCPT by the session's source
	// address (code 0: as the host would).
	srcReply func(src netip.Addr) (int, string)
}

func newFakeNet() *fakeNet {
	return &fakeNet{hosts: map[netip.Addr]*fakeHost{}, dials: map[netip.Addr]int{}, live: map[string]int{},
		peak: map[string]int{}, held: map[netip.Addr]int{}, hpeak: map[netip.Addr]int{}, per: map[string]int{}, closed: map[string]int{}, refus: map[string]int{}, got: map[string]int{},
		conns: map[string]map[int]bool{}, doms: map[int]map[string]bool{}, hole: make(chan struct{}),
		mails: map[netip.Addr][]string{}}
}

func (n *fakeNet) stat(f func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f()
}

func (n *fakeNet) open(ctx context.Context, t target, o connOptions) (session, error) {
	n.mu.Lock()
	h := n.hosts[t.ip]
	n.dials[t.ip]++
	n.mu.Unlock()
	what := fmt.Sprintf("connect to %s (%s) from %s", t.host, t.addr(), sourceName(o.source))
	if h == nil || h.dead {
		return nil, &openError{stage: stageConnect, what: what, err: errors.New("connection refused")}
	}
	if h.blackHole {
		n.stat(func() {
			n.held[t.ip]++
			n.hpeak[t.ip] = max(n.hpeak[t.ip], n.held[t.ip])
		})
		defer n.stat(func() { n.held[t.ip]-- })
		select {
		case <-ctx.Done():
		case <-n.hole:
		}
		return nil, &openError{stage: stageGreeting, what: "greeting from " + t.host, err: errors.New("i/o timeout")}
	}
	key := o.source.String() + " " + h.provider
	n.mu.Lock()
	defer n.mu.Unlock()
	if h.cap > 0 && n.live[key] >= h.cap {
		n.refus[h.provider]++
		return nil, &openError{stage: stageGreeting, what: "greeting from " + t.host,
			err: &reply{421, "4.7.0 Too many connections from " + o.source.String()}}
	}
	n.live[key]++
	n.peak[key] = max(n.peak[key], n.live[key])
	n.sess++
	return &fakeSession{n: n, h: h, t: t, src: o.source, key: key, id: n.sess}, nil
}

// fakeSession is one simulated SMTP session.
type fakeSession struct {
	n      *fakeNet
	h      *fakeHost
	t      target
	src    netip.Addr
	key    string
	id     int
	txns   int
	broken bool
	closed bool
}

func (s *fakeSession) sendTxn(t *txn, _ func() *txn) []result {
	if s.h.delay > 0 {
		sleep(context.Background(), s.n.clock, s.h.delay)
	}
	s.txns++
	res := make([]result, len(t.rcpts))
	if s.h.closeAfter > 0 && s.txns > s.h.closeAfter {
		s.broken = true
		s.n.stat(func() { s.n.closed[s.h.provider]++ })
		for i, rc := range t.rcpts {
			res[i] = result{rcpt: rc, code: 0, text: "connection failed: EOF", atMail: true}
		}
		return res
	}
	if s.h.perConn > 0 && s.txns > s.h.perConn {
		s.broken = true
		s.n.stat(func() { s.n.per[s.h.provider]++ })
		for i, rc := range t.rcpts {
			res[i] = result{rcpt: rc, code: 421, text: "421 4.7.0 Too many messages on this connection", atMail: true}
		}
		return res
	}
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	s.n.mails[s.t.ip] = append(s.n.mails[s.t.ip], t.env.Sender)
	for i, rc := range t.rcpts {
		res[i].rcpt = rc
		code, text := 250, "250 2.0.0 OK"
		if s.n.srcReply != nil {
			if c, m := s.n.srcReply(s.src); c != 0 {
				code, text = c, fmt.Sprintf("%d %s", c, m)
			}
		}
		if s.h.rcpt != nil && code == 250 {
			if c, m := s.h.rcpt(rc.Address); c != 0 {
				code, text = c, fmt.Sprintf("%d %s", c, m)
			}
		}
		res[i].code, res[i].text, res[i].atRcpt = code, text, code/100 != 2
		if code/100 == 2 {
			s.n.got[rc.Address]++
			d := rc.Domain
			if s.n.conns[s.h.provider] == nil {
				s.n.conns[s.h.provider] = map[int]bool{}
			}
			s.n.conns[s.h.provider][s.id] = true
			if s.n.doms[s.id] == nil {
				s.n.doms[s.id] = map[string]bool{}
			}
			s.n.doms[s.id][d] = true
		}
	}
	return res
}

func (s *fakeSession) state() sessionState {
	return sessionState{target: s.t, source: s.src, txns: s.txns, broken: s.broken,
		stale: s.broken && s.txns > 1}
}

func (s *fakeSession) markBroken() { s.broken = true }

func (s *fakeSession) close() {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.n.live[s.key]--
	}
}

// fakeResolver answers from maps, and counts the names asked about.
type fakeResolver struct {
	mx    map[string][]*net.MX
	addr  map[string][]netip.Addr
	mu    sync.Mutex
	asked map[string]int
}

func (r *fakeResolver) ask(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.asked == nil {
		r.asked = map[string]int{}
	}
	r.asked[name]++
}

// lookups returns how many lookups (MX or address) named name.
func (r *fakeResolver) lookups(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.asked[name]
}

func (r *fakeResolver) LookupMX(_ context.Context, domain string) ([]*net.MX, error) {
	r.ask(domain)
	if mx, ok := r.mx[domain]; ok {
		return mx, nil
	}
	if _, ok := r.addr[domain]; ok {
		return nil, nil
	}
	return nil, &DNSError{Name: domain, NotFound: true}
}

func (r *fakeResolver) LookupAddr(_ context.Context, host string) ([]netip.Addr, error) {
	r.ask(host)
	if a, ok := r.addr[host]; ok {
		return a, nil
	}
	return nil, &DNSError{Name: host, NotFound: true}
}

// world is a scheduler over the fake network with a fake clock.
type world struct {
	t     *testing.T
	clock *queuetest.Clock
	q     *queue.Queue
	s     *Scheduler
	net   *fakeNet
	res   *fakeResolver
	reg   atomic.Pointer[vmta.Registry]
	fs    vfs.FS
	evs   atomic.Int64 // outcomes reported
	bnc   atomic.Int64 // bounces
	dly   atomic.Int64 // recipients given delay reports
	// events are the outcomes reported, in order.
	evMu   sync.Mutex
	events []Event
}

func (w *world) outcome(ev Event) {
	w.evs.Add(1)
	w.evMu.Lock()
	w.events = append(w.events, ev)
	w.evMu.Unlock()
}

// outcomes returns the outcomes reported so far.
func (w *world) outcomes() []Event {
	w.evMu.Lock()
	defer w.evMu.Unlock()
	return append([]Event(nil), w.events...)
}

// newWorld builds a scheduler for conf (appended to two VMTAs on
// 127.0.0.2 and 127.0.0.3) over a fake network; start it with run.
func newWorld(t *testing.T, conf string) *world {
	t.Helper()
	w := &world{t: t, clock: queuetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), net: newFakeNet(),
		res: &fakeResolver{mx: map[string][]*net.MX{}, addr: map[string][]netip.Addr{}}}
	w.reg.Store(worldRegistry(t, conf))
	w.net.clock = w.clock
	w.fs = vfs.NewMem()
	w.start()
	t.Cleanup(func() {
		close(w.net.hole)
		w.stop()
	})
	return w
}

// worldRegistry builds the registry of conf appended to the world's two
// VMTAs.
func worldRegistry(t *testing.T, conf string) *vmta.Registry {
	t.Helper()
	cfg, err := config.Parse("t.conf", []byte(`smtp-listener 127.0.0.1:1
host-name tern.test
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.tern.test
</virtual-mta>
<virtual-mta mta2>
    smtp-source-host 127.0.0.3 mta2.tern.test
</virtual-mta>
`+conf), config.Options{Hostname: "tern.test"})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := vmta.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// reload makes conf (appended to the two VMTAs) the running configuration
// and starts the scheduler again, as tern serve's reload does.
func (w *world) reload(conf string) {
	w.t.Helper()
	w.reg.Store(worldRegistry(w.t, conf))
	w.s.Start()
}

// start opens the queue in the world's file system and starts a new
// scheduler on it (not Start: run does that).
func (w *world) start() {
	var sched atomic.Pointer[Scheduler]
	q, err := queue.Open(queue.Options{FS: w.fs, Dir: "spool", Clock: w.clock,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnReady: func(k queue.Key) {
			if s := sched.Load(); s != nil {
				s.Notify(k)
			}
		}})
	if err != nil {
		w.t.Fatal(err)
	}
	w.q = q
	w.s = New(Options{Queue: w.q, Registry: w.reg.Load, Resolver: w.res, Clock: w.clock,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Jitter:    func() float64 { return 0.5 },
		OnOutcome: w.outcome,
		OnBounce:  func(queue.Envelope, []Event, []byte) { w.bnc.Add(1) },
		OnDelay:   func(_ queue.Envelope, d []Event, _ []byte) { w.dly.Add(int64(len(d))) },
		transport: w.net})
	sched.Store(w.s)
}

// stop stops the scheduler and closes the queue.
func (w *world) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.s.Stop(ctx); err != nil {
		w.t.Errorf("stopping the scheduler: %v", err)
	}
	if err := w.q.Close(); err != nil {
		w.t.Errorf("closing the queue: %v", err)
	}
}

// restart stops the scheduler and the queue and starts them again on the
// same spool, as a restart of the daemon would.
func (w *world) restart() {
	w.stop()
	w.start()
	w.run()
}

// provider adds a provider of n domains (name0.test …) served by the
// given hosts on 127.1.P.H.
func (w *world) provider(name string, domains int, hosts ...*fakeHost) []string {
	var mxs []*net.MX
	for i, h := range hosts {
		n := len(w.net.hosts)
		ip := netip.AddrFrom4([4]byte{127, 1, byte(n/250 + 1), byte(n%250 + 1)})
		h.provider = name
		if h.name == "" {
			h.name = fmt.Sprintf("mx%d.%s.example", i+1, name)
		}
		w.net.hosts[ip] = h
		w.res.addr[h.name] = []netip.Addr{ip}
		mxs = append(mxs, &net.MX{Host: h.name + ".", Pref: uint16(10 * (i + 1))})
	}
	var out []string
	for i := range domains {
		d := fmt.Sprintf("%s%d.test", name, i)
		w.res.mx[d] = mxs
		out = append(out, d)
	}
	return out
}

func (w *world) put(vmtaName string, rcpts ...string) {
	w.t.Helper()
	if _, err := w.q.Put(context.Background(), queuetest.Message(vmtaName, rcpts...)); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) run() { w.s.Start() }

// waitFor polls cond (real time) until it holds.
func (w *world) waitFor(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out waiting for %s (queue %+v)", what, w.q.Totals())
		}
		<-tick.C
	}
}

// settle waits until no recipient is leased: every worker is idle or gone.
func (w *world) settle() {
	w.t.Helper()
	w.waitFor("no recipient leased", func() bool { return w.q.Totals().Leased == 0 })
}

func TestProviderSharesConnectionsAcrossDomains(t *testing.T) {
	w := newWorld(t, `
<domain *>
    max-smtp-out 3
</domain>
`)
	doms := w.provider("big", 40, &fakeHost{}, &fakeHost{})
	for i := range 400 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[i%len(doms)]))
	}
	w.run()
	w.waitFor("every delivery", func() bool { return w.q.Totals().Recipients == 0 })
	w.net.stat(func() {
		if p := w.net.peak["127.0.0.2 big"]; p > 3 {
			t.Errorf("%d sessions at once to the provider, want at most max-smtp-out 3 for all its 40 domains", p)
		}
		if n := len(w.net.got); n != 400 {
			t.Errorf("%d recipients delivered, want 400", n)
		}
		many := 0
		for _, d := range w.net.doms {
			if len(d) > 1 {
				many++
			}
		}
		if many == 0 {
			t.Errorf("no session carried mail for more than one domain of the provider")
		}
	})
}

// ip returns the address of the i-th host of the world (in the order
// provider added them).
func (w *world) hostIP(name string) netip.Addr {
	for ip, h := range w.net.hosts {
		if h.name == name {
			return ip
		}
	}
	w.t.Fatalf("no host %s", name)
	return netip.Addr{}
}

// A provider that takes 5 connections per client IP, each transaction
// taking a second: the window grows while deliveries succeed, finds the
// cap with one refusal, and stays under it; every message arrives, none
// deferred for the refusal.
func TestWindowLearnsAProvidersConnectionCap(t *testing.T) {
	w := newWorld(t, `
<domain *>
    max-smtp-out 20
    retry-after 1m
</domain>
`)
	doms := w.provider("capped", 20, &fakeHost{cap: 5, delay: time.Second}, &fakeHost{cap: 5, delay: time.Second})
	const n = 400
	for i := range n {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[i%len(doms)]))
	}
	w.run()
	w.drive("every delivery", time.Second, func() bool { return w.q.Totals().Recipients == 0 })
	w.net.stat(func() {
		refused, sessions := w.net.refus["capped"], w.net.sess
		t.Logf("%d sessions, %d refused at the banner, peak %d", sessions, refused, w.net.peak["127.0.0.2 capped"])
		if refused < 1 || refused > 2 {
			t.Errorf("%d refusals at the banner; the window should grow to the cap of 5 and find it with one or two", refused)
		}
		if p := w.net.peak["127.0.0.2 capped"]; p != 5 {
			t.Errorf("peak of %d sessions, want the cap, 5", p)
		}
		if len(w.net.got) != n {
			t.Errorf("%d recipients delivered, want %d", len(w.net.got), n)
		}
	})
	if ev := w.evs.Load(); ev != n {
		t.Errorf("%d outcomes for %d recipients: some were deferred", ev, n)
	}
}

// drive advances the world's clock by step until cond holds, letting the
// scheduler's goroutines run between steps.
func (w *world) drive(what string, step time.Duration, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out driving the clock until %s (queue %+v)", what, w.q.Totals())
		}
		// Wait until the workers are blocked on the clock (or done),
		// then move it.
		w.quiesce()
		w.clock.Advance(step)
	}
}

// quiesce waits until the number of pending clock timers stops changing
// for a moment: the scheduler's goroutines have reached their waits.
func (w *world) quiesce() {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	last, same := -1, 0
	for same < 3 {
		<-tick.C
		if p := w.clock.Pending(); p == last {
			same++
		} else {
			last, same = p, 0
		}
	}
}

// A dead MX is dialed host-down-after times, then once per retry
// interval (the probe), not once per recipient.
func TestDeadHostIsProbedNotDialedPerRecipient(t *testing.T) {
	w := newWorld(t, `
<domain *>
    retry-after 1m
</domain>
`)
	doms := w.provider("dead", 1, &fakeHost{dead: true})
	for i := range 200 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[0]))
	}
	w.run()
	w.waitFor("every recipient deferred", func() bool { return w.q.Totals().Deferred == 200 })
	ip := w.hostIP("mx1.dead.example")
	dials := func() (n int) {
		w.net.stat(func() { n = w.net.dials[ip] })
		return n
	}
	if d := dials(); d != 2 {
		t.Errorf("%d dials to the dead host for 200 recipients, want host-down-after 2", d)
	}
	for round := 1; round <= 3; round++ {
		w.clock.Advance(70 * time.Second)
		w.waitFor("the retry deferred", func() bool {
			st := w.q.Totals()
			return st.Leased == 0 && st.Ready == 0 && st.Deferred == 200
		})
		if d := dials(); d != 2+round {
			t.Errorf("after retry %d: %d dials, want %d (one probe per retry interval)", round, d, 2+round)
		}
	}
}

// A black hole (accepts TCP, never greets) holds at most initial-smtp-out
// connections from a source, however many recipients wait for it.
func TestBlackHoleHoldsAFewConnections(t *testing.T) {
	w := newWorld(t, `
<domain *>
    max-smtp-out 20
    initial-smtp-out 2
</domain>
`)
	doms := w.provider("hole", 10, &fakeHost{blackHole: true})
	for i := range 300 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[i%10]))
	}
	w.run()
	ip := w.hostIP("mx1.hole.example")
	w.waitFor("connections to the black hole", func() bool {
		n := 0
		w.net.stat(func() { n = w.net.held[ip] })
		return n == 2
	})
	// Give the scheduler every chance to open more: let its workers run.
	w.waitFor("the other workers to wait", func() bool { return w.q.Totals().Leased > 0 })
	w.net.stat(func() {
		if p := w.net.hpeak[ip]; p > 2 {
			t.Errorf("%d connections held by the black hole at once, want at most initial-smtp-out 2", p)
		}
	})
}

// A dead primary MX is skipped for the secondary once it is down.
func TestDeadPrimaryFallsBackToSecondary(t *testing.T) {
	w := newWorld(t, `
<domain *>
    retry-after 1m
</domain>
`)
	doms := w.provider("half", 5, &fakeHost{dead: true}, &fakeHost{})
	for i := range 200 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[i%5]))
	}
	w.run()
	w.waitFor("every delivery", func() bool { return w.q.Totals().Recipients == 0 })
	primary := w.hostIP("mx1.half.example")
	w.net.stat(func() {
		if d := w.net.dials[primary]; d > 2 {
			t.Errorf("%d dials to the dead primary, want at most host-down-after 2", d)
		}
		if len(w.net.got) != 200 {
			t.Errorf("%d delivered, want 200", len(w.net.got))
		}
	})
}

// A provider that refuses a connection's 11th transaction with 421: the
// refused message goes out on a new connection (not deferred), and later
// connections stop at 10.
func TestTransactionsPerConnectionLearned(t *testing.T) {
	w := newWorld(t, `
<domain *>
    max-smtp-out 1
</domain>
`)
	doms := w.provider("per", 1, &fakeHost{perConn: 10})
	for i := range 200 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[0]))
	}
	w.run()
	w.waitFor("every delivery", func() bool { return w.q.Totals().Recipients == 0 })
	w.net.stat(func() {
		if p := w.net.per["per"]; p != 1 {
			t.Errorf("%d transactions refused for too many per connection, want 1 (then learned)", p)
		}
		if len(w.net.got) != 200 {
			t.Errorf("%d delivered, want 200", len(w.net.got))
		}
	})
	if n := w.evs.Load(); n != 200 {
		t.Errorf("%d outcomes for 200 recipients: the refused transaction was deferred instead of resent", n)
	}
}

func TestRetryJitter(t *testing.T) {
	w := newWorld(t, "")
	entry := queue.Entry{Envelope: queue.Envelope{Received: w.clock.Now()}}
	pol := config.DefaultDomainSettings()
	pol.RetryAfter.Value = []time.Duration{10 * time.Minute}
	for _, j := range []float64{0, 0.5, 0.999} {
		w.s.opts.Jitter = func() float64 { return j }
		got := w.s.nextAttempt(entry, queue.RecipientState{}, &pol).Sub(w.clock.Now())
		if got < 10*time.Minute || got >= 11*time.Minute {
			t.Errorf("jitter %v: retry after %s, want within [10m, 11m)", j, got)
		}
	}
}

// A provider's rate-limit replies trigger its rule at the threshold; the
// suspension stops every connection to it, survives a restart, and ends
// after for=, when the mail goes out.
func TestShapingSuspendSurvivesRestart(t *testing.T) {
	w := newWorld(t, `
<smtp-pattern-list limits>
    reply /^421 4\.7\.28/ suspend for=10m threshold=3/1m
</smtp-pattern-list>
<domain *>
    retry-after 1m
    smtp-pattern-list limits
</domain>
`)
	var limited atomic.Bool
	limited.Store(true)
	doms := w.provider("rl", 5, &fakeHost{rcpt: func(string) (int, string) {
		if limited.Load() {
			return 421, "4.7.28 Our system has detected an unusual rate of unsolicited mail"
		}
		return 0, ""
	}})
	for i := range 50 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[i%5]))
	}
	w.run()
	w.waitFor("the suspension", func() bool { return len(w.s.ShapingStates()) == 1 })
	st := w.s.ShapingStates()[0]
	if st.Action != ShapeSuspend || st.Provider != "mx1.rl.example" || st.VMTA != "mta1" ||
		!st.Until.Equal(st.Since.Add(10*time.Minute)) || !strings.Contains(st.Reply, "4.7.28") {
		t.Fatalf("state %+v, want a 10m suspension of mx1.rl.example/mta1 after the 4.7.28 reply", st)
	}
	w.settle()
	sessions := func() (n int) {
		w.net.stat(func() { n = w.net.sess })
		return n
	}
	before := sessions()
	// Retries come due within the suspension: nothing goes out.
	w.clock.Advance(2 * time.Minute)
	w.settle()
	if n := sessions(); n != before {
		t.Errorf("%d sessions opened during the suspension", n-before)
	}

	w.restart()
	if got := w.s.ShapingStates(); len(got) != 1 || got[0].Action != ShapeSuspend || !got[0].Until.Equal(st.Until) {
		t.Fatalf("after a restart: %+v, want the suspension until %s", got, st.Until)
	}
	w.clock.Advance(2 * time.Minute)
	w.settle()
	if n := sessions(); n != before {
		t.Errorf("%d sessions opened during the suspension after the restart", n-before)
	}

	limited.Store(false)
	w.clock.Set(st.Until.Add(time.Second))
	w.waitFor("the suspension to end", func() bool { return len(w.s.ShapingStates()) == 0 })
	w.drive("every delivery", time.Minute, func() bool { return w.q.Totals().Recipients == 0 })
	w.net.stat(func() {
		if len(w.net.got) != 50 {
			t.Errorf("%d delivered after the suspension, want 50", len(w.net.got))
		}
	})
	if states, _ := w.q.States("shape/"); len(states) != 0 {
		t.Errorf("the spool still holds %d shaping states", len(states))
	}
}

// disable-source-ip stops one address for the provider: the other
// address of the VMTA carries the mail.
func TestShapingDisableSourceIP(t *testing.T) {
	w := newWorld(t, `
<virtual-mta two>
    smtp-source-host 127.0.0.4 a.tern.test
    smtp-source-host 127.0.0.5 b.tern.test
</virtual-mta>
<smtp-pattern-list blocks>
    reply /550 5\.7\.1 .*blocked/ disable-source-ip for=1h
</smtp-pattern-list>
<domain *>
    smtp-pattern-list blocks
    max-smtp-out 1
</domain>
`)
	doms := w.provider("bl", 1, &fakeHost{})
	blocked := netip.MustParseAddr("127.0.0.4")
	var mu sync.Mutex
	var srcs []netip.Addr
	w.net.srcReply = func(src netip.Addr) (int, string) {
		mu.Lock()
		srcs = append(srcs, src)
		mu.Unlock()
		if src == blocked {
			return 550, "5.7.1 Service unavailable; client host blocked using a list"
		}
		return 0, ""
	}
	for i := range 20 {
		w.put("two", fmt.Sprintf("u%d@%s", i, doms[0]))
	}
	w.run()
	w.waitFor("the 19 others delivered", func() bool { return len(w.s.ShapingStates()) == 1 && w.q.Totals().Recipients == 0 })
	st := w.s.ShapingStates()[0]
	if st.Action != ShapeDisableSource || st.Source != blocked {
		t.Fatalf("state %+v, want %s disabled", st, blocked)
	}
	w.net.stat(func() {
		if len(w.net.got) != 19 {
			t.Errorf("%d delivered, want 19 (the first bounced at the block)", len(w.net.got))
		}
	})
	mu.Lock()
	n := 0
	for _, s := range srcs {
		if s == blocked {
			n++
		}
	}
	mu.Unlock()
	if n != 1 {
		t.Errorf("%d transactions from the blocked address, want 1", n)
	}
}

// A recipient that asked for NOTIFY=DELAY gets one delay report, at its
// first deferral after notify-of-delay; one that did not gets none.
func TestDelayReportOnce(t *testing.T) {
	w := newWorld(t, `
<domain *>
    retry-after 1m
    notify-of-delay 5m
</domain>
`)
	doms := w.provider("slow", 1, &fakeHost{rcpt: func(string) (int, string) { return 451, "4.7.1 try later" }})
	m := queuetest.Message("mta1", "asked@"+doms[0], "silent@"+doms[0])
	m.Recipients[0].Notify = queue.NotifyDelay | queue.NotifyFailure
	if _, err := w.q.Put(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	w.run()
	attempts := 0
	for range 12 {
		w.waitFor("the deferral", func() bool { st := w.q.Totals(); return st.Deferred == 2 && st.Leased == 0 })
		attempts++
		w.clock.Advance(70 * time.Second)
	}
	if n := w.dly.Load(); n != 1 {
		t.Errorf("%d delay reports over %d attempts (~14 minutes), want 1 (for the recipient that asked)", n, attempts)
	}
}

// The provider view shows a rollup's domains, its window and its state;
// the sweep forgets the domains once their mail is gone.
func TestProvidersViewAndSweep(t *testing.T) {
	w := newWorld(t, `
<domain *>
    retry-after 1m
</domain>
`)
	doms := w.provider("view", 3, &fakeHost{})
	for i := range 30 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[i%3]))
	}
	w.run()
	w.waitFor("every delivery", func() bool { return w.q.Totals().Recipients == 0 })
	var pv *ProviderView
	for _, p := range w.s.Providers() {
		if p.Provider == "mx1.view.example" && p.VMTA == "mta1" {
			pv = &p
		}
	}
	if pv == nil {
		t.Fatalf("no provider view for mx1.view.example/mta1 in %+v", w.s.Providers())
	}
	if strings.Join(pv.Domains, ",") != strings.Join(doms, ",") {
		t.Errorf("domains %v, want %v", pv.Domains, doms)
	}
	if len(pv.Windows) != 1 || pv.Windows[0].Source != netip.MustParseAddr("127.0.0.2") || pv.Windows[0].Limit < 2 {
		t.Errorf("windows %+v, want one from 127.0.0.2 of at least 2", pv.Windows)
	}
	if got := w.s.ProviderOf(queue.Key{VMTA: "mta1", Domain: doms[1]}); got != "mx1.view.example" {
		t.Errorf("ProviderOf = %q", got)
	}
	// The idle connection closes first (connection-idle-timeout 30s), then
	// the sweep finds nothing to keep.
	w.clock.Advance(time.Minute)
	w.waitFor("the idle connection to close", func() bool { return w.s.Connections() == 0 })
	w.clock.Advance(sweepInterval)
	w.waitFor("the sweep", func() bool { return len(w.s.Providers()) == 0 })
}

// matchFamily gives an IPv6 host an IPv6 source and the other way round.
func TestMatchFamily(t *testing.T) {
	v4 := vmta.SourceHost{IP: netip.MustParseAddr("192.0.2.1"), HostName: "a"}
	v6 := vmta.SourceHost{IP: netip.MustParseAddr("2001:db8::1"), HostName: "b"}
	both := &vmta.VMTA{Name: "both", SourceHosts: []vmta.SourceHost{v4, v6}}
	only4 := &vmta.VMTA{Name: "only4", SourceHosts: []vmta.SourceHost{v4}}
	t4 := target{host: "mx4", ip: netip.MustParseAddr("198.51.100.1"), port: 25}
	t6 := target{host: "mx6", ip: netip.MustParseAddr("2001:db8::25"), port: 25}
	if got, src, err := matchFamily([]target{t6, t4}, v4, both); err != nil || src != v4 || len(got) != 1 || got[0] != t4 {
		t.Errorf("v4 source, mixed hosts: %v from %v (%v), want mx4 from %v", got, src, err, v4)
	}
	if got, src, err := matchFamily([]target{t6}, v4, both); err != nil || src != v6 || len(got) != 1 {
		t.Errorf("v4 source, IPv6-only host: %v from %v (%v), want the VMTA's IPv6 source", got, src, err)
	}
	if _, _, err := matchFamily([]target{t6}, v4, only4); err == nil || !strings.Contains(err.Error(), "only IPv4") {
		t.Errorf("no IPv6 source: %v, want an error saying so", err)
	}
	if got, _, err := matchFamily([]target{t6, t4}, vmta.SourceHost{}, both); err != nil || len(got) != 2 {
		t.Errorf("no source address (the system's choice) keeps every host: %v %v", got, err)
	}
}

// reroute= sends a provider queue's mail through another VMTA for the
// rule's time: from that VMTA's address.
func TestShapingReroute(t *testing.T) {
	w := newWorld(t, `
<smtp-pattern-list rr>
    reply /^421 4\.7\.0 .*reputation/ reroute=mta2 for=30m
</smtp-pattern-list>
<domain *>
    smtp-pattern-list rr
    retry-after 1m
</domain>
`)
	doms := w.provider("rep", 1, &fakeHost{})
	from := map[netip.Addr]int{}
	var mu sync.Mutex
	w.net.srcReply = func(src netip.Addr) (int, string) {
		mu.Lock()
		from[src]++
		mu.Unlock()
		if src == netip.MustParseAddr("127.0.0.2") {
			return 421, "4.7.0 poor reputation from this address"
		}
		return 0, ""
	}
	for i := range 10 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[0]))
	}
	w.run()
	w.waitFor("the reroute", func() bool { return len(w.s.ShapingStates()) == 1 })
	if st := w.s.ShapingStates()[0]; st.Action != ShapeReroute || st.Reroute != "mta2" {
		t.Fatalf("state %+v, want a reroute to mta2", st)
	}
	w.drive("every delivery", time.Minute, func() bool { return w.q.Totals().Recipients == 0 })
	mu.Lock()
	defer mu.Unlock()
	// The provider's window lets mta1 start two connections at once, so a
	// second transaction may have gone out from 127.0.0.2 before the first
	// reply rerouted the queue; none after.
	if n := from[netip.MustParseAddr("127.0.0.2")]; n < 1 || n > 2 || from[netip.MustParseAddr("127.0.0.3")] != 10 {
		t.Errorf("transactions by source %v, want 1 or 2 from mta1's 127.0.0.2 (before the reroute) and 10 from mta2's 127.0.0.3", from)
	}
}

// bounce-queue bounces what the provider queue holds, without connecting.
func TestShapingBounceQueue(t *testing.T) {
	w := newWorld(t, `
<smtp-pattern-list gone>
    reply /^550 5\.1\.2 .*domain disabled/ bounce-queue for=1h
</smtp-pattern-list>
<domain *>
    smtp-pattern-list gone
    max-smtp-out 1
    max-rcpt-per-transaction 1
</domain>
`)
	doms := w.provider("gone", 2, &fakeHost{rcpt: func(string) (int, string) { return 550, "5.1.2 domain disabled" }})
	for i := range 20 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[i%2]))
	}
	w.run()
	w.waitFor("every bounce", func() bool { return w.q.Totals().Recipients == 0 })
	var txns int
	w.net.stat(func() { txns = len(w.net.mails[w.hostIP("mx1.gone.example")]) })
	if txns != 1 {
		t.Errorf("%d transactions, want 1: the rest bounced by the rule without connecting", txns)
	}
	if n := w.bnc.Load(); n != 20 {
		t.Errorf("%d bounce reports, want 20", n)
	}
}

// mx-connection-limit caps the sessions from one address to one host over
// every queue; a queue waiting for the host takes the place of a
// connection idling there for another queue. The two domains are two
// providers (their MX sets differ) on the same host address.
func TestMXConnectionLimitSharedAcrossProviders(t *testing.T) {
	w := newWorld(t, `
mx-connection-limit 1
<domain *>
    connection-idle-timeout 10m
</domain>
`)
	doms := w.provider("one", 1, &fakeHost{})
	ip := w.hostIP("mx1.one.example")
	w.res.addr["alias.one.example"] = []netip.Addr{ip}
	w.res.mx["other.test"] = []*net.MX{{Host: "mx1.one.example.", Pref: 10}, {Host: "alias.one.example.", Pref: 20}}
	w.put("mta1", "a@"+doms[0])
	w.run()
	w.waitFor("the first delivery", func() bool { return w.q.Totals().Recipients == 0 })
	// The first connection now idles for 10 minutes; other.test's mail
	// needs the host's only place.
	w.put("mta1", "b@other.test")
	w.waitFor("the second delivery", func() bool { return w.q.Totals().Recipients == 0 })
	if a, b := w.s.ProviderOf(queue.Key{VMTA: "mta1", Domain: doms[0]}), w.s.ProviderOf(queue.Key{VMTA: "mta1", Domain: "other.test"}); a == b {
		t.Fatalf("both domains routed to %q; the test needs two providers", a)
	}
	w.net.stat(func() {
		if p := w.net.peak["127.0.0.2 one"]; p != 1 {
			t.Errorf("%d sessions at once from 127.0.0.2 to the host, want mx-connection-limit 1", p)
		}
		if len(w.net.got) != 2 {
			t.Errorf("%d delivered, want 2", len(w.net.got))
		}
	})
}

// A server that closes every connection after its 5th transaction: the
// 6th message finds the connection closed at MAIL and goes out on a new
// one, and from then on connections stop at 5 by themselves.
func TestClosingServerIsLearned(t *testing.T) {
	w := newWorld(t, `
<domain *>
    max-smtp-out 1
</domain>
`)
	doms := w.provider("closer", 1, &fakeHost{closeAfter: 5})
	for i := range 50 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[0]))
	}
	w.run()
	w.waitFor("every delivery", func() bool { return w.q.Totals().Recipients == 0 })
	w.net.stat(func() {
		if n := w.net.closed["closer"]; n != 1 {
			t.Errorf("%d transactions found the connection closed, want 1 (then learned)", n)
		}
		if len(w.net.got) != 50 {
			t.Errorf("%d delivered, want 50", len(w.net.got))
		}
	})
	if n := w.evs.Load(); n != 50 {
		t.Errorf("%d outcomes for 50 recipients: the message found the connection closed was deferred", n)
	}
}
