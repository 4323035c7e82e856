package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
}

// fakeNet is the simulated network: what every host does, and what the
// scheduler did to them.
type fakeNet struct {
	mu    sync.Mutex
	hosts map[netip.Addr]*fakeHost
	dials map[netip.Addr]int        // dials per host address
	live  map[string]int            // sessions open per "source provider"
	peak  map[string]int            // the most at once
	held  map[netip.Addr]int        // connections held open by black holes
	refus map[string]int            // 421 banners per provider
	got   map[string]int            // deliveries per recipient
	conns map[string]map[int]bool   // sessions that carried each provider's domains
	doms  map[int]map[string]bool   // domains carried per session
	sess  int                       // sessions ever opened
	hole  chan struct{}             // closed to release black holes
	mails map[netip.Addr][]string   // MAIL commands per host, for order checks
	vmtas map[string]map[string]int // deliveries per VMTA source and provider
}

func newFakeNet() *fakeNet {
	return &fakeNet{hosts: map[netip.Addr]*fakeHost{}, dials: map[netip.Addr]int{}, live: map[string]int{},
		peak: map[string]int{}, held: map[netip.Addr]int{}, refus: map[string]int{}, got: map[string]int{},
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
		n.stat(func() { n.held[t.ip]++ })
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
	s.txns++
	res := make([]result, len(t.rcpts))
	if s.h.perConn > 0 && s.txns > s.h.perConn {
		s.broken = true
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
		if s.h.rcpt != nil {
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

// fakeResolver answers from maps.
type fakeResolver struct {
	mx   map[string][]*net.MX
	addr map[string][]netip.Addr
}

func (r *fakeResolver) LookupMX(_ context.Context, domain string) ([]*net.MX, error) {
	if mx, ok := r.mx[domain]; ok {
		return mx, nil
	}
	if _, ok := r.addr[domain]; ok {
		return nil, nil
	}
	return nil, &DNSError{Name: domain, NotFound: true}
}

func (r *fakeResolver) LookupAddr(_ context.Context, host string) ([]netip.Addr, error) {
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
	evs   atomic.Int64 // outcomes reported
	bnc   atomic.Int64 // bounces
}

// newWorld builds a scheduler for conf (appended to two VMTAs on
// 127.0.0.2 and 127.0.0.3) over a fake network; start it with run.
func newWorld(t *testing.T, conf string) *world {
	t.Helper()
	w := &world{t: t, clock: queuetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), net: newFakeNet(),
		res: &fakeResolver{mx: map[string][]*net.MX{}, addr: map[string][]netip.Addr{}}}
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
	w.reg.Store(reg)
	var sched atomic.Pointer[Scheduler]
	w.q = queuetest.Open(t, queue.Options{Clock: w.clock, OnReady: func(k queue.Key) {
		if s := sched.Load(); s != nil {
			s.Notify(k)
		}
	}})
	w.s = New(Options{Queue: w.q, Registry: w.reg.Load, Resolver: w.res, Clock: w.clock,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Jitter:    func() float64 { return 0.5 },
		OnOutcome: func(ev Event) { w.evs.Add(1) },
		OnBounce:  func(queue.Envelope, []Event, []byte) { w.bnc.Add(1) },
		transport: w.net})
	sched.Store(w.s)
	t.Cleanup(func() {
		close(w.net.hole)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.s.Stop(ctx); err != nil {
			t.Errorf("stopping the scheduler: %v", err)
		}
	})
	return w
}

// provider adds a provider of n domains (name0.test …) served by the
// given hosts on 127.1.P.H.
func (w *world) provider(name string, domains int, hosts ...*fakeHost) []string {
	var mxs []*net.MX
	for i, h := range hosts {
		ip := netip.AddrFrom4([4]byte{127, 1, byte(len(w.net.hosts)/16 + 1), byte(len(w.net.hosts)%16 + i + 1)})
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
	for !cond() {
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out waiting for %s (queue %+v)", what, w.q.Totals())
		}
		time.Sleep(2 * time.Millisecond)
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
