package delivery_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/delivery"
	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
	"github.com/ternmta/tern/vmta"
)

// The end-to-end tests run over real loopback sockets. Linux routes all of
// 127.0.0.0/8 to lo, so the VMTAs send from 127.0.0.2 and 127.0.0.3, and
// "MX hosts" are sinks on 127.0.0.5, 127.0.0.6… sharing one port, which the
// <domain *> block's default-smtp-port names, as port 25 would be shared on
// the Internet. DNS comes from a dnstest server only.

const (
	// Source addresses (never listened on, so that an outgoing connection's
	// ephemeral port cannot collide with a sink).
	ip1   = "127.0.0.2" // mta1
	ip2   = "127.0.0.3" // mta2
	ip3   = "127.0.0.4" // a VMTA some tests add
	ipRR1 = "127.0.0.8" // a VMTA with two source addresses
	ipRR2 = "127.0.0.9"
	// Sinks: mx1 on a random port, the others on mx1's port (a port the
	// kernel gave mx1, so nothing else in the suite binds them there).
	mx1 = "127.0.0.5"
	mx2 = "127.0.0.6"
	mx3 = "127.0.0.7"
	mx4 = "127.0.0.10"
	// Sinks on their own random port, never on a fixed one.
	rnd1 = "127.0.0.20"
	rnd2 = "127.0.0.21"
)

// wait is the deadline for anything that should happen "soon". It is
// generous: the suite must pass on a loaded 2-core machine under -race.
const wait = 20 * time.Second

// baseConfig is the configuration every test starts from: two VMTAs with
// their own source address and name (mta2's host-name overrides its
// smtp-source-host name), and a <domain *> that points MX hosts at the
// sinks' port and keeps retries out of the way (10m) unless a test's own
// <domain> block says otherwise. extra is appended (more VMTAs, <domain>
// blocks).
func baseConfig(port int, extra string) string {
	return fmt.Sprintf(`host-name tern.test
smtp-listener 127.0.0.1:1
<virtual-mta mta1>
    smtp-source-host %s mta1.tern.test
</virtual-mta>
<virtual-mta mta2>
    smtp-source-host %s mta2-source.tern.test
    host-name mta2.tern.test
</virtual-mta>
<domain *>
    default-smtp-port %d
    retry-after 10m
</domain>
%s`, ip1, ip2, port, extra)
}

// startSink starts a sink on ip:port (port 0: a random one).
func startSink(t *testing.T, ip string, port int, opts smtptest.Options) *smtptest.Sink {
	t.Helper()
	opts.Addr = net.JoinHostPort(ip, strconv.Itoa(port))
	return smtptest.Start(t, opts)
}

// harness is one scheduler delivering from one queue.
type harness struct {
	t     *testing.T
	q     *queue.Queue
	sched *delivery.Scheduler
	dns   *dnstest.Server
	reg   atomic.Pointer[vmta.Registry]
	// running is the scheduler the queue's OnReady notifies, set by run:
	// mail queued before is found by Start, all at once.
	running atomic.Pointer[delivery.Scheduler]
	logs    *logStore
	start   time.Time // when Start was called
}

// newHarness opens a queue in a temporary directory, builds the registry
// from src and a scheduler resolving through a dnstest server serving
// zones. The scheduler is not started: tests queue mail first when they
// want it all present at once (the queue does not notify it before run),
// then call run.
func newHarness(t *testing.T, src string, zones dnstest.Zones, opts ...func(*delivery.Options)) *harness {
	t.Helper()
	h := &harness{t: t, logs: &logStore{}}
	h.setConfig(src)
	h.dns = dnstest.Start(t, zones)

	q, err := queue.Open(queue.Options{
		Dir:    t.TempDir(),
		Logger: slog.New(slog.DiscardHandler),
		OnReady: func(k queue.Key) {
			if s := h.running.Load(); s != nil {
				s.Notify(k)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	h.q = q
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("closing the queue: %v", err)
		}
	})

	res, err := delivery.NewDNSResolver([]string{h.dns.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	o := delivery.Options{
		Queue:    q,
		Registry: h.reg.Load,
		Resolver: res,
		Logger:   slog.New(&logHandler{store: h.logs}),
	}
	for _, f := range opts {
		f(&o)
	}
	h.sched = delivery.New(o)
	// Cleanups run last-in first-out: the scheduler stops before the
	// queue closes, and both before the sinks (started earlier) close.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := h.sched.Stop(ctx); err != nil {
			t.Errorf("stopping the scheduler: %v", err)
		}
		if t.Failed() {
			t.Logf("scheduler log:\n%s", h.logs.dump())
		}
	})
	return h
}

// setConfig parses src and makes it the scheduler's registry.
func (h *harness) setConfig(src string) {
	h.t.Helper()
	cfg, err := config.Parse("t.conf", []byte(src), config.Options{Hostname: "tern.test"})
	if err != nil {
		h.t.Fatalf("config: %v\n%s", err, src)
	}
	reg, err := vmta.Build(cfg)
	if err != nil {
		h.t.Fatalf("vmta.Build: %v", err)
	}
	h.reg.Store(reg)
}

func (h *harness) run() {
	h.start = time.Now()
	h.running.Store(h.sched)
	h.sched.Start()
}

// put queues a message from sender@example.org to rcpts through vmtaName
// and returns its ID.
func (h *harness) put(vmtaName string, rcpts ...string) queue.ID {
	h.t.Helper()
	return h.putMsg(queuetest.Message(vmtaName, rcpts...))
}

func (h *harness) putMsg(m queue.Message) queue.ID {
	h.t.Helper()
	id, err := h.q.Put(context.Background(), m)
	if err != nil {
		h.t.Fatalf("Put: %v", err)
	}
	return id
}

// waitFor polls cond until it holds, failing the test after timeout.
func (h *harness) waitFor(what string, timeout time.Duration, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out after %s waiting for %s (queue %+v)", timeout, what, h.q.Totals())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitEmpty waits until no recipient is left in the queue: each was
// delivered or bounced (the log tells which).
func (h *harness) waitEmpty() {
	h.t.Helper()
	h.waitFor("an empty queue", wait, func() bool { return h.q.Totals().Recipients == 0 })
}

// waitOutcome waits until rcpt's n-th attempt (counting from 1) is logged
// and returns it.
func (h *harness) waitOutcome(rcpt string, n int) logEntry {
	h.t.Helper()
	var got []logEntry
	h.waitFor(fmt.Sprintf("attempt %d for %s", n, rcpt), wait, func() bool {
		got = h.logs.attempts(rcpt)
		return len(got) >= n
	})
	return got[n-1]
}

// outcomes returns the logged outcomes of rcpt's attempts, in order.
func (h *harness) outcomes(rcpt string) []string {
	var out []string
	for _, e := range h.logs.attempts(rcpt) {
		out = append(out, e.attrs["outcome"])
	}
	return out
}

// expectOutcomes checks rcpt's logged outcomes.
func (h *harness) expectOutcomes(rcpt string, want ...string) {
	h.t.Helper()
	if got := h.outcomes(rcpt); strings.Join(got, ",") != strings.Join(want, ",") {
		h.t.Errorf("%s: outcomes %v, want %v", rcpt, got, want)
	}
}

// key is the queue key of vmtaName and domain.
func key(vmtaName, domain string) queue.Key { return queue.Key{VMTA: vmtaName, Domain: domain} }

// logEntry is one captured log record: its message and attributes as
// strings.
type logEntry struct {
	time  time.Time
	level slog.Level
	msg   string
	attrs map[string]string
}

// logStore keeps the scheduler's log records so that tests can tell a
// bounce from a delivery ("delivery attempt" lines with outcome and reply).
type logStore struct {
	mu      sync.Mutex
	entries []logEntry
}

func (s *logStore) all() []logEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]logEntry(nil), s.entries...)
}

// attempts returns the "delivery attempt" records of rcpt.
func (s *logStore) attempts(rcpt string) []logEntry {
	var out []logEntry
	for _, e := range s.all() {
		if e.msg == "delivery attempt" && e.attrs["rcpt"] == rcpt {
			out = append(out, e)
		}
	}
	return out
}

// find returns the records with message msg.
func (s *logStore) find(msg string) []logEntry {
	var out []logEntry
	for _, e := range s.all() {
		if e.msg == msg {
			out = append(out, e)
		}
	}
	return out
}

func (s *logStore) dump() string {
	var b strings.Builder
	for _, e := range s.all() {
		fmt.Fprintf(&b, "%s %s %q", e.time.Format("15:04:05.000"), e.level, e.msg)
		for k, v := range e.attrs {
			fmt.Fprintf(&b, " %s=%q", k, v)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// logHandler is a slog.Handler that records into a logStore.
type logHandler struct {
	store *logStore
	attrs []slog.Attr
}

func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	e := logEntry{time: r.Time, level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		e.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		e.attrs[a.Key] = a.Value.String()
		return true
	})
	h.store.mu.Lock()
	h.store.entries = append(h.store.entries, e)
	h.store.mu.Unlock()
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHandler{store: h.store, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *logHandler) WithGroup(string) slog.Handler { return h }

// dialCounter counts the scheduler's connections on its side: a sink
// counts a connection until its own goroutine has closed it, a moment
// after the client's QUIT, so only the client side shows whether a cap was
// ever exceeded.
type dialCounter struct {
	mu                  sync.Mutex
	active, peak, total int
}

// option installs the counter as the scheduler's Dial: net.Dialer from the
// source address, as the default one.
func (d *dialCounter) option(o *delivery.Options) {
	o.Dial = func(ctx context.Context, local netip.Addr, remote string, timeout time.Duration) (net.Conn, error) {
		nd := net.Dialer{Timeout: timeout}
		if local.IsValid() {
			nd.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
		}
		c, err := nd.DialContext(ctx, "tcp", remote)
		if err != nil {
			return nil, err
		}
		d.mu.Lock()
		d.active++
		d.total++
		d.peak = max(d.peak, d.active)
		d.mu.Unlock()
		return &countedConn{Conn: c, d: d}, nil
	}
}

func (d *dialCounter) stats() (active, peak, total int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.active, d.peak, d.total
}

type countedConn struct {
	net.Conn
	d    *dialCounter
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		c.d.active--
		c.d.mu.Unlock()
	})
	return c.Conn.Close()
}
