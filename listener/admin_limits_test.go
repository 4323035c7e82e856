package listener

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// The tests of the admin port's limits (AdminLimits, connLimiter, admit).
// Their timeouts are either long enough never to fire during a test (a
// minute) or the thing under test; every wait on the server is a deadline
// on a condition.

// atOnce bounds the wait for what the server does without waiting (close
// a connection beyond a cap, or after a 403): generous for a loaded
// machine, and well short of any timeout that would close it otherwise.
const atOnce = 5 * time.Second

// limitsOf sets the admin limits of a test server.
func limitsOf(l AdminLimits) func(*AdminOptions) {
	return func(o *AdminOptions) { o.Limits = l }
}

// patient are limits that do not fire during a test, with small caps.
func patient(maxConns, perClient int) AdminLimits {
	return AdminLimits{MaxConns: maxConns, MaxConnsPerClient: perClient,
		ReadHeaderTimeout: time.Minute, ReadTimeout: time.Minute, WriteTimeout: time.Minute, IdleTimeout: time.Minute}
}

// waitUntil polls cond until it holds, failing the test after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// dialFrom opens a TCP connection to the admin API from ip and sends
// nothing.
func (e *adminEnv) dialFrom(t *testing.T, ip string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", e.a.Addr().String())
	if err != nil {
		t.Fatalf("dialing from %s: %v", ip, err)
	}
	return c
}

// closedWithin reports whether the server closes c within d: a read gets
// EOF or a reset, without data. A timeout means c is still open.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(make([]byte, 1))
	switch {
	case n > 0:
		t.Fatalf("the server sent data on a connection expected to be closed")
	case errors.Is(err, os.ErrDeadlineExceeded):
		return false
	case err == nil:
		t.Fatal("a read of 0 bytes without an error")
	}
	return true // io.EOF, or a reset
}

// openFDs counts the file descriptors of this process.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(ents)
}

// statusFrom asks for GET /api/status from ip on a connection of its own
// and returns the status code.
func (e *adminEnv) statusFrom(t *testing.T, ip string) int {
	t.Helper()
	client := fromIP(ip)
	defer client.CloseIdleConnections()
	return e.do(t, client, "GET", "/api/status", "", "", nil)
}

// TestAdminFlood floods the admin port with idle connections, from an
// address without access and from one with access, as in issue #14: the
// server must keep no more of them than the per-client cap, so that its
// file descriptors stay available, and an admitted client must still be
// served throughout.
func TestAdminFlood(t *testing.T) {
	const maxConns, perClient, flood = 32, 8, 2000
	if n := openFDs(t); n+2*flood+200 > fdLimit(t) {
		t.Skipf("%d descriptors open, the limit is %d: too few for the flood", n, fdLimit(t))
	}
	var logs lockedBuffer
	e := startAdminTest(t, config.AccessAdmin, "", limitsOf(patient(maxConns, perClient)),
		func(o *AdminOptions) { o.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	if code := e.statusFrom(t, "127.0.0.1"); code != 200 {
		t.Fatalf("GET /api/status before the flood: %d", code)
	}
	defer func() {
		// Refusals are logged a line per refusalLogInterval, not one each:
		// the subtests take less than that, and the first refusal of each
		// flood may fall in a new interval.
		if n := strings.Count(logs.String(), "admin API connections refused"); n < 1 || n > 2 {
			t.Errorf("%d log lines about refused connections for two floods, want 1 or 2:\n%s", n, logs.String())
		}
	}()
	for _, from := range []string{"127.0.0.9", "127.0.0.2"} { // no access, monitor
		t.Run(from, func(t *testing.T) {
			// The connections of the status request and of the last
			// subtest must be gone from the count of descriptors.
			waitUntil(t, 10*time.Second, "no admin connection open", func() bool {
				total, _ := e.a.ln.counts()
				return total == 0
			})
			base := openFDs(t)
			conns := make([]net.Conn, 0, flood)
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for range flood {
				conns = append(conns, e.dialFrom(t, from))
			}
			// The listener accepts in order: once this request is answered,
			// every connection of the flood has been accepted.
			if code := e.statusFrom(t, "127.0.0.1"); code != 200 {
				t.Fatalf("GET /api/status from an admitted client during the flood: %d", code)
			}
			// Our side of the flood holds flood descriptors; the server's
			// side may hold at most perClient more (and a few for pebble's
			// files and the status request, which its client has closed).
			if held := openFDs(t) - base - flood; held > perClient+4 {
				t.Errorf("the server holds %d descriptors for %d connections from %s; want at most %d", held, flood, from, perClient)
			}
			if total, _ := e.a.ln.counts(); total > maxConns {
				t.Errorf("%d admin connections open, above the cap of %d", total, maxConns)
			}
			if !closedWithin(t, conns[flood-1], atOnce) {
				t.Error("a connection beyond the cap was not closed at once")
			}
			if closedWithin(t, conns[0], 100*time.Millisecond) {
				t.Error("a connection within the cap was closed")
			}
		})
	}
}

// lockedBuffer is a bytes.Buffer for a logger that several goroutines
// write to.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fdLimit is the soft limit on this process's file descriptors.
func fdLimit(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		t.Skipf("cannot read the descriptor limit: %v", err)
	}
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(strings.TrimPrefix(line, "Max open files")); len(f) >= 1 && strings.HasPrefix(line, "Max open files") {
			var n int
			if _, err := fmt.Sscan(f[0], &n); err == nil {
				return n
			}
		}
	}
	t.Skip("no descriptor limit in /proc/self/limits")
	return 0
}

// TestAdminConnCaps checks the total cap and the per-client cap, and that
// a closed connection makes room again.
func TestAdminConnCaps(t *testing.T) {
	e := startAdminTest(t, config.AccessAdmin, "", limitsOf(patient(3, 2)))
	hold := func(ip string, wantTotal int) net.Conn {
		t.Helper()
		c := e.dialFrom(t, ip)
		t.Cleanup(func() { c.Close() })
		waitUntil(t, 10*time.Second, fmt.Sprintf("%d connections counted", wantTotal), func() bool {
			total, _ := e.a.ln.counts()
			return total == wantTotal
		})
		return c
	}
	one := hold("127.0.0.1", 1)
	hold("127.0.0.1", 2)
	// The per-client cap: a third connection from 127.0.0.1 is closed.
	if c := e.dialFrom(t, "127.0.0.1"); !closedWithin(t, c, atOnce) {
		t.Error("a connection beyond the per-client cap stayed open")
	}
	hold("127.0.0.2", 3)
	// The total cap: 127.0.0.2 is within its own, but the port is full.
	if c := e.dialFrom(t, "127.0.0.2"); !closedWithin(t, c, atOnce) {
		t.Error("a connection beyond the total cap stayed open")
	}
	one.Close()
	waitUntil(t, 10*time.Second, "the closed connection uncounted", func() bool {
		total, _ := e.a.ln.counts()
		return total == 2
	})
	if code := e.statusFrom(t, "127.0.0.2"); code != 200 {
		t.Errorf("GET /api/status once a connection was closed: %d", code)
	}
}

// TestAdminStrangersShareOneAllowance checks that the addresses without
// access together get one client's allowance, leaving the rest to the
// addresses with access.
func TestAdminStrangersShareOneAllowance(t *testing.T) {
	e := startAdminTest(t, config.AccessAdmin, "", limitsOf(patient(8, 2)))
	for i, ip := range []string{"127.0.0.9", "127.0.0.10"} {
		c := e.dialFrom(t, ip)
		defer c.Close()
		waitUntil(t, 10*time.Second, "the stranger's connection counted", func() bool {
			_, n := e.a.ln.counts()
			return n == i+1
		})
	}
	if c := e.dialFrom(t, "127.0.0.11"); !closedWithin(t, c, atOnce) {
		t.Error("a third stranger's connection stayed open; strangers share one allowance of 2")
	}
	if code := e.statusFrom(t, "127.0.0.1"); code != 200 {
		t.Errorf("GET /api/status with the strangers' allowance used up: %d", code)
	}
	// A reload that gives an address access counts it as a client of its
	// own from its next connection.
	cfg := *e.a.cfg.Load()
	cfg.HTTPAccess = append([]*config.HTTPAccess{{Prefix: netip.MustParsePrefix("127.0.0.11/32"), Level: config.AccessMonitor}}, cfg.HTTPAccess...)
	e.a.SetConfig(&cfg)
	if code := e.statusFrom(t, "127.0.0.11"); code != 200 {
		t.Errorf("GET /api/status from an address given access by a reload: %d", code)
	}
}

// rawRequest sends req on c and reads the answer.
func rawRequest(t *testing.T, c net.Conn, br *bufio.Reader, req string) *http.Response {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("sending %q: %v", req, err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", req, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestAdminRefusalCloses checks that a 403 closes the connection, whether
// the address has no access, too low a level, or the key is wrong.
func TestAdminRefusalCloses(t *testing.T) {
	e := startAdminTest(t, config.AccessOperator, "s3cret", limitsOf(patient(16, 8)))
	for _, c := range []struct{ from, req string }{
		{"127.0.0.9", "GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n"},
		{"127.0.0.9", "GET /no/such/path HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"127.0.0.9", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"127.0.0.9", "POST /api/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n{\"queue\":\"a/b\"}\n"},
		{"127.0.0.2", "POST /api/pause?queue=a/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 0\r\n\r\n"},
		{"127.0.0.1", "GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n"},
		{"127.0.0.1", "GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n"},
	} {
		conn := e.dialFrom(t, c.from)
		resp := rawRequest(t, conn, bufio.NewReader(conn), c.req)
		what := c.from + " " + strings.SplitN(c.req, "\r\n", 2)[0]
		if resp.StatusCode != 403 || !resp.Close {
			t.Errorf("%s: %s, Connection %q; want 403 and close", what, resp.Status, resp.Header.Get("Connection"))
		}
		if !closedWithin(t, conn, atOnce) {
			t.Errorf("%s: the connection stayed open after the 403", what)
		}
		conn.Close()
	}
	// An admitted request keeps its connection for the next one.
	conn := e.dialFrom(t, "127.0.0.1")
	defer conn.Close()
	br := bufio.NewReader(conn)
	for i := range 2 {
		if resp := rawRequest(t, conn, br, "GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n"); resp.StatusCode != 200 || resp.Close {
			t.Errorf("admitted request %d: %s, close %v", i, resp.Status, resp.Close)
		}
	}
}

// TestAdminSlowClients checks the timeouts: a connection that sends
// nothing, a header sent a byte at a time (slowloris), a body sent a
// byte at a time, and a kept-alive connection left idle are all cut.
func TestAdminSlowClients(t *testing.T) {
	const short = 500 * time.Millisecond
	// The bound on how late a cut may come: generous for a loaded
	// machine, and still well short of the old 10 s header timeout.
	const late = 8 * time.Second
	lim := AdminLimits{ReadHeaderTimeout: short, ReadTimeout: 2 * short, IdleTimeout: short, WriteTimeout: time.Minute}
	e := startAdminTest(t, config.AccessAdmin, "", limitsOf(lim))

	// trickle writes prefix, then one byte of fill every 20 ms until the
	// connection fails or stop is closed.
	trickle := func(c net.Conn, prefix string, stop <-chan struct{}) {
		if _, err := io.WriteString(c, prefix); err != nil {
			return
		}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Write([]byte("a")); err != nil {
					return
				}
			}
		}
	}
	cut := func(t *testing.T, what string, c net.Conn, min time.Duration, start time.Time) {
		t.Helper()
		if !closedWithin(t, c, late) {
			t.Errorf("%s: still open after %v", what, late)
			return
		}
		if took := time.Since(start); took < min {
			t.Errorf("%s: cut after %v, before the %v timeout", what, took, min)
		}
	}

	t.Run("silent", func(t *testing.T) {
		start := time.Now()
		c := e.dialFrom(t, "127.0.0.1")
		defer c.Close()
		cut(t, "a connection that sends nothing", c, short, start)
	})
	t.Run("header", func(t *testing.T) {
		start := time.Now()
		c := e.dialFrom(t, "127.0.0.1")
		defer c.Close()
		stop := make(chan struct{})
		defer close(stop)
		go trickle(c, "GET /api/status HTTP/1.1\r\nHost: x\r\nX-Slow: ", stop)
		cut(t, "a header sent a byte at a time", c, short, start)
	})
	t.Run("body", func(t *testing.T) {
		start := time.Now()
		c := e.dialFrom(t, "127.0.0.1")
		defer c.Close()
		stop := make(chan struct{})
		defer close(stop)
		go trickle(c, "POST /api/pause HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n", stop)
		// The server answers 408 and closes. The answer may be lost to
		// the reset that closing with unread bytes causes; what matters is
		// that the connection ends.
		c.SetReadDeadline(time.Now().Add(late))
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
				t.Errorf("a body sent a byte at a time: %s, close %v; want 408 and close", resp.Status, resp.Close)
			}
			resp.Body.Close()
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a body sent a byte at a time: no answer and not closed after %v", late)
		}
		cut(t, "a body sent a byte at a time", c, 2*short, start)
	})
	t.Run("idle", func(t *testing.T) {
		c := e.dialFrom(t, "127.0.0.1")
		defer c.Close()
		if resp := rawRequest(t, c, bufio.NewReader(c), "GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n"); resp.StatusCode != 200 {
			t.Fatalf("GET /api/status: %s", resp.Status)
		}
		// The server's idle clock started before ours: no lower bound.
		cut(t, "a kept-alive connection left idle", c, 0, time.Now())
	})
}

// TestAdminHeaderTooLarge checks MaxHeaderBytes.
func TestAdminHeaderTooLarge(t *testing.T) {
	e := startAdminTest(t, config.AccessAdmin, "")
	req, _ := http.NewRequest("GET", e.url+"/api/status", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 64 KiB header: %s, want 431", resp.Status)
	}
}

// TestAdminBodyLimits checks that an operation's body is one JSON object
// of at most maxAdminBody bytes: trailing data, a second object or an
// oversized body are refused, and nothing is done.
func TestAdminBodyLimits(t *testing.T) {
	e := startAdminTest(t, config.AccessOperator, "", liftNothing)
	e.put(t, "", "a@one.test mta1", "b@two.test mta1")
	for _, c := range []struct{ path, body string }{
		{"/api/pause", `{"queue": "one.test/mta1"}{"queue": "*/*", "all": true}`},
		{"/api/pause", `{"queue": "one.test/mta1"} garbage`},
		{"/api/pause", `{"queue": "one.test/mta1"} []`},
		{"/api/pause", `{"queue": "one.test/mta1"}}`},
		{"/api/delete", `{"queue": "one.test/mta1"} {"job": "j"}`},
		{"/api/lift-shaping", `{"vmta": "mta1"} {"all": true}`},
	} {
		code, msg := e.errorOf(t, nil, "POST", c.path, "", c.body)
		if code != 400 || !strings.Contains(msg, "after the JSON object") {
			t.Errorf("POST %s %s: %d %q, want 400 about the data after the object", c.path, c.body, code, msg)
		}
	}
	if tot := e.q.Totals(); tot.Recipients != 2 {
		t.Errorf("refused deletes removed recipients: %+v", tot)
	}
	for _, st := range e.q.Keys(queue.Selector{}) {
		if st.Paused {
			t.Errorf("a refused pause paused %s", st.Key)
		}
	}
	// Whitespace after the object is not data: curl -d @file sends the
	// file's last newline.
	if code := e.do(t, nil, "POST", "/api/pause", "", "{\"queue\": \"one.test/mta1\"}\r\n\n ", nil); code != 200 {
		t.Errorf("a body with a newline after the object: %d, want 200", code)
	}

	big := `{"queue": "two.test/mta1", "job": "` + strings.Repeat("x", maxAdminBody) + `"}`
	req, _ := http.NewRequest("POST", e.url+"/api/pause", strings.NewReader(big))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
		t.Errorf("a body of %d bytes: %s, close %v; want 413 and close", len(big), resp.Status, resp.Close)
	}
}

// liftNothing gives the admin API a LiftShaping that lifts nothing, so
// that POST /api/lift-shaping gets as far as reading its body.
func liftNothing(o *AdminOptions) { o.LiftShaping = func(ShapingFilter) int { return 0 } }

// TestAdminProfileOutlastsTimeouts checks that a CPU profile longer than
// the read and write timeouts is served whole.
func TestAdminProfileOutlastsTimeouts(t *testing.T) {
	const secs = 2
	lim := AdminLimits{ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond}
	e := startAdminTest(t, config.AccessAdmin, "", limitsOf(lim))
	start := time.Now()
	resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", e.url, secs))
	if err != nil {
		t.Fatalf("GET /debug/pprof/profile?seconds=%d: %v", secs, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /debug/pprof/profile?seconds=%d: %s", secs, resp.Status)
	}
	// A profile is gzip-compressed protobuf: a truncated answer fails to
	// decompress to its end.
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatalf("the profile is not gzip: %v", err)
	}
	n, err := io.Copy(io.Discard, zr)
	if err != nil || n == 0 {
		t.Fatalf("reading the profile: %d bytes, %v", n, err)
	}
	if took := time.Since(start); took < secs*time.Second {
		t.Errorf("the profile took %v, less than the %d s asked for", took, secs)
	}
}

// TestAdminClientKey checks what the per-client cap counts as one client.
func TestAdminClientKey(t *testing.T) {
	for _, c := range []struct{ addr, want string }{
		{"192.0.2.1:80", "192.0.2.1/32"},
		{"[::ffff:192.0.2.1]:80", "192.0.2.1/32"}, // IPv4 on an IPv6 socket
		{"[2001:db8::1]:80", "2001:db8::/64"},
		{"[2001:db8::ffff:1]:80", "2001:db8::/64"}, // the same /64
		{"[2001:db8:0:1::1]:80", "2001:db8:0:1::/64"},
		{"[fe80::1%eth0]:80", "fe80::/64"},
	} {
		addr, err := net.ResolveTCPAddr("tcp", c.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := clientKey(adminPeerIP(addr)); got.String() != c.want || !got.IsValid() {
			t.Errorf("%s counts as %v, want %s", c.addr, got, c.want)
		}
	}
}
