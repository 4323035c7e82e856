package listener

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/ternmta/tern/config"
)

// AdminLimits bound what clients can take from the admin port: file
// descriptors, goroutines and time. A zero field means its default, so the
// zero value is the safe configuration; docs/operations.md (Limits and abuse) says what a
// client sees when it reaches each limit.
type AdminLimits struct {
	// MaxConns bounds the admin connections open at once (default 64).
	// A connection beyond it is closed as soon as it is accepted, so a
	// flood cannot take the file descriptors that SMTP and delivery need.
	MaxConns int
	// MaxConnsPerClient bounds the connections open at once from one
	// client: one IPv4 address or one IPv6 /64 (default 16, and never more
	// than MaxConns). Clients to which http-access gives no access all
	// share a single such allowance, so that strangers together cannot
	// crowd out the addresses that have access.
	MaxConnsPerClient int
	// ReadHeaderTimeout bounds the wait for a request's header: from the
	// accept for the first request of a connection, from its first bytes
	// for a later one (default 5 s).
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, header and body
	// (default 30 s).
	ReadTimeout time.Duration
	// WriteTimeout bounds writing an answer, counted from when the
	// handler starts writing it, so that a request whose work takes long
	// (a CPU profile of several minutes, a large delete) is not cut off
	// (default 30 s).
	WriteTimeout time.Duration
	// IdleTimeout bounds how long a kept-alive connection may wait for
	// its next request (default 30 s).
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's header (default 16 KiB; net/http
	// allows 4 KiB more before it answers 431).
	MaxHeaderBytes int
}

// DefaultAdminMaxConns is the default of AdminLimits.MaxConns, exported
// for the daemon's file-descriptor budget: the admin port holds at most
// this many descriptors for connections (and one more for the instant
// between accepting a connection beyond the cap and closing it).
const DefaultAdminMaxConns = 64

// The other defaults of AdminLimits.
const (
	defaultAdminMaxConnsPerClient = 16
	defaultAdminReadHeaderTimeout = 5 * time.Second
	defaultAdminReadTimeout       = 30 * time.Second
	defaultAdminWriteTimeout      = 30 * time.Second
	defaultAdminIdleTimeout       = 30 * time.Second
	defaultAdminMaxHeaderBytes    = 16 << 10
)

// withDefaults is l with every zero (or negative) field set to its
// default. A negative value is not a way to turn a limit off: the admin
// port has no unbounded mode.
func (l AdminLimits) withDefaults() AdminLimits {
	orInt := func(v, d int) int {
		if v <= 0 {
			return d
		}
		return v
	}
	orDur := func(v, d time.Duration) time.Duration {
		if v <= 0 {
			return d
		}
		return v
	}
	l.MaxConns = orInt(l.MaxConns, DefaultAdminMaxConns)
	l.MaxConnsPerClient = min(orInt(l.MaxConnsPerClient, defaultAdminMaxConnsPerClient), l.MaxConns)
	l.ReadHeaderTimeout = orDur(l.ReadHeaderTimeout, defaultAdminReadHeaderTimeout)
	l.ReadTimeout = orDur(l.ReadTimeout, defaultAdminReadTimeout)
	l.WriteTimeout = orDur(l.WriteTimeout, defaultAdminWriteTimeout)
	l.IdleTimeout = orDur(l.IdleTimeout, defaultAdminIdleTimeout)
	l.MaxHeaderBytes = orInt(l.MaxHeaderBytes, defaultAdminMaxHeaderBytes)
	return l
}

// refusalLogInterval is the least time between two log lines about
// connections refused at accept: in a flood there is one refusal per
// connection, and a line each would turn the flood into one on the log.
const refusalLogInterval = 10 * time.Second

// clientKey is the client that the per-client cap counts ip against: the
// address itself for IPv4, its /64 for IPv6, since a single host is
// commonly given a whole /64 and could otherwise open a cap's worth of
// connections from each of its addresses.
func clientKey(ip netip.Addr) netip.Prefix {
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

// connLimiter is a net.Listener that counts the connections it has
// handed out and closes, as soon as it accepts them, those beyond its
// caps. A refused connection is closed without a byte read or written:
// answering before reading the request is unreliable (the client may be
// sending when the close resets the connection), and anything slower
// would hold the descriptor the cap is there to save.
type connLimiter struct {
	net.Listener
	max, perClient int
	// hasAccess reports whether http-access, as it is now, gives ip any
	// level above none.
	hasAccess func(ip netip.Addr) bool
	logger    *slog.Logger

	mu       sync.Mutex
	open     int
	byClient map[netip.Prefix]int
	// refused counts the refusals not logged yet; lastLog is when the
	// last line about them was written.
	refused int
	lastLog time.Time
}

// newConnLimiter wraps ln with the caps of lim.
func newConnLimiter(ln net.Listener, lim AdminLimits, hasAccess func(netip.Addr) bool, logger *slog.Logger) *connLimiter {
	return &connLimiter{Listener: ln, max: lim.MaxConns, perClient: lim.MaxConnsPerClient,
		hasAccess: hasAccess, logger: logger, byClient: map[netip.Prefix]int{}}
}

// Accept returns the next connection within the caps; it closes the
// others itself and goes on accepting, so http.Server never sees them.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := adminPeerIP(c.RemoteAddr())
		// Every address without access shares the zero Prefix as its
		// key; clientKey gives a real address a valid one.
		var key netip.Prefix
		if ip.IsValid() && l.hasAccess(ip) {
			key = clientKey(ip)
		}
		if reason := l.take(key); reason != "" {
			c.Close()
			l.logRefusal(ip, reason)
			continue
		}
		return &limitedConn{Conn: c, release: func() { l.release(key) }}, nil
	}
}

// take counts a new connection of client key and returns "", or returns
// why it is refused without counting it.
func (l *connLimiter) take(key netip.Prefix) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.open >= l.max:
		return fmt.Sprintf("%d admin connections open (the most allowed)", l.open)
	case l.byClient[key] >= l.perClient && !key.IsValid():
		return fmt.Sprintf("%d connections open from addresses without access (the most allowed)", l.byClient[key])
	case l.byClient[key] >= l.perClient:
		return fmt.Sprintf("%d connections open from this client (the most allowed)", l.byClient[key])
	}
	l.open++
	l.byClient[key]++
	return ""
}

// release uncounts a connection of client key.
func (l *connLimiter) release(key netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byClient[key]--; l.byClient[key] <= 0 {
		delete(l.byClient, key)
	}
}

// logRefusal logs a refused connection, at most one line per
// refusalLogInterval; the line counts the refusals since the last one.
func (l *connLimiter) logRefusal(ip netip.Addr, reason string) {
	l.mu.Lock()
	l.refused++
	now := time.Now()
	if now.Sub(l.lastLog) < refusalLogInterval {
		l.mu.Unlock()
		return
	}
	n := l.refused
	l.refused, l.lastLog = 0, now
	l.mu.Unlock()
	l.logger.Warn("admin API connections refused", "count", n, "client", ip.String(), "reason", reason)
}

// counts returns the connections open in all and from addresses without
// access.
func (l *connLimiter) counts() (total, strangers int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.byClient[netip.Prefix{}]
}

// adminPeerIP is the IP address of a connection's remote end, IPv4 for an
// IPv4-mapped address; the zero Addr if it has none.
func adminPeerIP(addr net.Addr) netip.Addr {
	if ta, ok := addr.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// limitedConn is a connection counted by a connLimiter, uncounted when it
// is closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// Close closes the connection and, the first time, uncounts it.
func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite half-closes the connection when the underlying one can:
// net/http uses it to let the client read an answer before a close that
// could reset the connection.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// admit prepares an admitted request for its handler h: it reads the
// body whole (at most maxAdminBody, under the server's read timeout) so
// that no handler waits on a slow client, and gives h a ResponseWriter
// whose write deadline starts when h starts answering. Without that,
// http.Server's WriteTimeout would count from the end of the request
// header, and a handler whose work takes longer (a CPU profile, a delete
// of a million recipients) would find its answer cut off.
func (a *Admin) admit(w http.ResponseWriter, r *http.Request, h http.HandlerFunc) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		// What is left of the body cannot be told from a next request.
		w.Header().Set("Connection", "close")
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the request body is larger than %d KiB", maxAdminBody>>10))
			return
		}
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			writeError(w, http.StatusRequestTimeout, fmt.Sprintf("the request did not arrive within %v", a.limits.ReadTimeout))
			return
		}
		writeError(w, http.StatusBadRequest, "reading the request body: "+err.Error())
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	h(&answerWriter{ResponseWriter: w, rc: http.NewResponseController(w), timeout: a.limits.WriteTimeout}, r)
}

// answerWriter sets the connection's write deadline to timeout from the
// handler's first write.
type answerWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	started bool
}

// start sets the write deadline, once.
func (w *answerWriter) start() {
	if !w.started {
		w.started = true
		// An error means a ResponseWriter without deadlines (a test's
		// recorder); it has nothing to bound then.
		_ = w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	}
}

// WriteHeader starts the answer.
func (w *answerWriter) WriteHeader(code int) {
	w.start()
	w.ResponseWriter.WriteHeader(code)
}

// Write starts the answer if it has not started and writes p.
func (w *answerWriter) Write(p []byte) (int, error) {
	w.start()
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the server's ResponseWriter.
func (w *answerWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// anyAccess reports whether the current http-access rules give ip a level
// above none.
func (a *Admin) anyAccess(ip netip.Addr) bool {
	return addrAccess(a.cfg.Load(), ip) > config.AccessNone
}
