package world

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
)

// World is a running simulated Internet: its DNS server and a listener per
// MX host. Its methods are safe for concurrent use.
type World struct {
	spec      Spec
	lay       *layout
	port      int
	dns       *dnstest.Server
	providers []*provider
	hosts     []*host
	listeners []net.Listener

	done      chan struct{} // closed by Close
	closeOnce sync.Once
	wg        sync.WaitGroup // accept loops and connections

	connMu sync.Mutex
	conns  map[net.Conn]struct{}

	untracked atomic.Int64
	overflow  atomic.Int64

	changeMu sync.Mutex
	changed  chan struct{} // closed at the next change; nil if nobody waits
}

// Start starts a world: its DNS server and its hosts, all listening when
// it returns. The caller stops it with Close.
func Start(spec Spec) (*World, error) {
	lay, err := spec.expand()
	if err != nil {
		return nil, err
	}
	// The world keeps its own copy: the caller may reuse its spec.
	spec.Providers = slices.Clone(spec.Providers)
	for i := range spec.Providers {
		spec.Providers[i].Names = slices.Clone(spec.Providers[i].Names)
		spec.Providers[i].Hosts = slices.Clone(spec.Providers[i].Hosts)
	}
	w := &World{spec: spec, lay: lay, done: make(chan struct{}), conns: make(map[net.Conn]struct{})}
	for i, p := range spec.Providers {
		w.providers = append(w.providers, newProvider(p, i))
	}
	for i, info := range lay.hosts {
		h := &host{info: info, prov: w.providers[lay.hostProv[i]], group: lay.hostGroup[i]}
		h.reset()
		w.hosts = append(w.hosts, h)
	}
	if err := w.listen(); err != nil {
		return nil, err
	}
	if w.dns, err = dnstest.New(spec.DNSAddr, w.zones()); err != nil {
		w.closeListeners()
		return nil, fmt.Errorf("world: DNS: %w", err)
	}
	for i, ln := range w.listeners {
		w.wg.Add(1)
		go w.accept(w.hosts[i], ln)
	}
	return w, nil
}

// StartT starts a world for a test and closes it when the test ends; a
// failure to start fails the test.
func StartT(t testing.TB, spec Spec) *World {
	t.Helper()
	w, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w
}

// listen opens a listener per host on the common port: spec.Port, or
// random ports until one is free on every host address.
func (w *World) listen() error {
	if len(w.hosts) == 0 {
		w.port = w.spec.Port
		return nil
	}
	if w.spec.Port != 0 {
		if err := w.listenOn(w.spec.Port); err != nil {
			return fmt.Errorf("world: listen on port %d: %w", w.spec.Port, err)
		}
		w.port = w.spec.Port
		return nil
	}
	var err error
	for range 50 {
		port := 20000 + rand.IntN(30000)
		if err = w.listenOn(port); err == nil {
			w.port = port
			return nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return fmt.Errorf("world: no port free on all %d host addresses: %w", len(w.hosts), err)
}

// listenOn listens on port on every host's address, or on none.
func (w *World) listenOn(port int) error {
	for _, h := range w.hosts {
		ln, err := net.Listen("tcp4", net.JoinHostPort(h.info.IP, strconv.Itoa(port)))
		if err != nil {
			w.closeListeners()
			return err
		}
		w.listeners = append(w.listeners, ln)
	}
	return nil
}

func (w *World) closeListeners() {
	for _, ln := range w.listeners {
		ln.Close()
	}
	w.listeners = nil
}

// zones is the DNS of the world: MX for its domains, A for its hosts.
func (w *World) zones() dnstest.Zones {
	z := make(dnstest.Zones, len(w.lay.domains)+len(w.lay.hosts))
	for _, d := range w.lay.domains {
		if d.Nonexistent {
			continue
		}
		var mx []dnstest.MX
		for _, m := range d.MX {
			mx = append(mx, dnstest.MX{Pref: m.Pref, Host: m.Host})
		}
		z[d.Name] = dnstest.Records{MX: mx}
	}
	for _, h := range w.lay.hosts {
		z[h.Name] = dnstest.Records{A: []string{h.IP}}
	}
	return z
}

// Close stops the world: the listeners, every open connection (black
// holes' included) and the DNS server. Counters stay readable. Calling it
// again does nothing.
func (w *World) Close() {
	w.closeOnce.Do(func() {
		close(w.done)
		w.closeListeners()
		w.connMu.Lock()
		for c := range w.conns {
			c.Close()
		}
		w.connMu.Unlock()
		w.wg.Wait()
		if w.dns != nil {
			w.dns.Stop()
		}
	})
}

// Port is the port every host listens on.
func (w *World) Port() int { return w.port }

// DNSAddr is the DNS server's address, "IP:PORT", for UDP and TCP.
func (w *World) DNSAddr() string { return w.dns.Addr() }

// DNS is the world's DNS server, to count queries or change records.
func (w *World) DNS() *dnstest.Server { return w.dns }

// Spec returns the spec the world was started from.
func (w *World) Spec() Spec {
	s := w.spec
	s.Providers = slices.Clone(s.Providers)
	return s
}

// Domains lists every domain, provider by provider in the spec's order.
func (w *World) Domains() []Domain { return slices.Clone(w.lay.domains) }

// Hosts lists every MX host.
func (w *World) Hosts() []HostInfo { return slices.Clone(w.lay.hosts) }

// ProviderOf names the provider of domain ("" if the world has no such
// domain).
func (w *World) ProviderOf(domain string) string {
	if i, ok := w.lay.domainProv[lower(domain)]; ok {
		return w.spec.Providers[i].Name
	}
	return ""
}

// Load is NewLoad for this world's spec.
func (w *World) Load(n int) []Message {
	return generate(&w.spec, w.lay, n)
}

// Snapshot copies the counters.
func (w *World) Snapshot() Snapshot {
	s := Snapshot{Taken: time.Now(), DSN: DSNStats{Recipients: make(map[string]int64)}}
	for _, p := range w.providers {
		p.mu.Lock()
		s.Providers = append(s.Providers, p.stats())
		if p.spec.Sender {
			s.DSN.Reports += p.dsn.Reports
			s.DSN.Unparsed += p.dsn.Unparsed
			s.DSN.OtherActions += p.dsn.OtherActions
			for a, n := range p.dsn.Recipients {
				s.DSN.Recipients[a] += n
			}
		}
		p.mu.Unlock()
	}
	for _, h := range w.hosts {
		if h.info.Kind == Normal {
			continue
		}
		h.prov.mu.Lock()
		s.Hosts = append(s.Hosts, h.stats())
		h.prov.mu.Unlock()
	}
	s.Untracked = w.untracked.Load()
	s.Overflow = w.overflow.Load()
	return s
}

// Reset clears every counter, the deliveries remembered for duplicates,
// the greylist and the rate-limit draws, as between two benchmark passes.
// Connections open now stay counted as open.
func (w *World) Reset() {
	for _, p := range w.providers {
		p.mu.Lock()
		p.reset()
		p.mu.Unlock()
	}
	for _, h := range w.hosts {
		h.prov.mu.Lock()
		h.reset()
		h.prov.mu.Unlock()
	}
	w.untracked.Store(0)
	w.overflow.Store(0)
	w.notify()
}

// WaitFor waits until cond holds for a snapshot, checking after every
// change of the counters, and returns that snapshot; or, when ctx ends
// first, the last snapshot and ctx's error.
func (w *World) WaitFor(ctx context.Context, cond func(*Snapshot) bool) (Snapshot, error) {
	for {
		w.changeMu.Lock()
		if w.changed == nil {
			w.changed = make(chan struct{})
		}
		ch := w.changed
		w.changeMu.Unlock()
		s := w.Snapshot()
		if cond(&s) {
			return s, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return s, ctx.Err()
		}
	}
}

// notify wakes the waiters of WaitFor.
func (w *World) notify() {
	w.changeMu.Lock()
	if w.changed != nil {
		close(w.changed)
		w.changed = nil
	}
	w.changeMu.Unlock()
}

// accept serves one host's listener until Close.
func (w *World) accept(h *host, ln net.Listener) {
	defer w.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-w.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors (EMFILE) or another passing error:
			// wait a little for it to pass.
			if !w.sleep(10 * time.Millisecond) {
				return
			}
			continue
		}
		if !w.track(c) {
			continue
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			defer w.untrack(c)
			switch h.info.Kind {
			case Dead:
				w.reset(h, c)
			case BlackHole:
				w.hold(h, c)
			default:
				w.serveSMTP(h, c)
			}
		}()
	}
}

// track registers c for Close; false (c closed) when the world is closing
// or holds MaxConns connections.
func (w *World) track(c net.Conn) bool {
	w.connMu.Lock()
	defer w.connMu.Unlock()
	select {
	case <-w.done:
		c.Close()
		return false
	default:
	}
	if len(w.conns) >= w.spec.maxConns() {
		w.overflow.Add(1)
		c.Close()
		return false
	}
	w.conns[c] = struct{}{}
	return true
}

func (w *World) untrack(c net.Conn) {
	c.Close()
	w.connMu.Lock()
	delete(w.conns, c)
	w.connMu.Unlock()
}

// sleep waits d, false if the world closed meanwhile.
func (w *World) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.done:
		return false
	}
}

// clientIP is the IP of c's remote end.
func clientIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	return host
}

// reset is a dead host: count the dial and reset the connection.
func (w *World) reset(h *host, c net.Conn) {
	ip := clientIP(c)
	p := h.prov
	p.mu.Lock()
	h.dials[ip]++
	p.dials[ip]++
	p.deadDials++
	p.mu.Unlock()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
	w.notify()
}

// hold is a black hole: count the dial, then read and drop whatever the
// client sends until it closes the connection (or the world closes).
func (w *World) hold(h *host, c net.Conn) {
	ip := clientIP(c)
	p := h.prov
	p.mu.Lock()
	h.dials[ip]++
	p.dials[ip]++
	h.held++
	h.peakHeld = max(h.peakHeld, h.held)
	p.held++
	p.peakHeld = max(p.peakHeld, p.held)
	p.mu.Unlock()
	w.notify()
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	p.mu.Lock()
	h.held--
	p.held--
	p.mu.Unlock()
	w.notify()
}

// admit counts a connection from ip to a normal host and says whether the
// provider's cap lets it in.
func (w *World) admit(h *host, ip string) bool {
	p := h.prov
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.clients[ip]
	if c == nil {
		c = &clientCounters{}
		p.clients[ip] = c
	}
	c.conns++
	k := groupIP{h.group, ip}
	if p.spec.ConnCapPerIP > 0 && p.open[k] >= int64(p.spec.ConnCapPerIP) {
		c.refused++
		return false
	}
	p.open[k]++
	c.open++
	c.peak = max(c.peak, p.open[k])
	return true
}

// release ends an admitted connection.
func (w *World) release(h *host, ip string) {
	p := h.prov
	p.mu.Lock()
	k := groupIP{h.group, ip}
	if p.open[k]--; p.open[k] <= 0 {
		delete(p.open, k)
	}
	if c := p.clients[ip]; c != nil && c.open > 0 {
		c.open--
	}
	p.mu.Unlock()
	w.notify()
}
