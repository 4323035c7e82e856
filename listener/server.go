package listener

import (
	"bytes"
	"context"
	"crypto/fips140"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// Spooler is what the listener needs of the queue: Put returns only once
// the message is durable. *queue.Queue implements it.
type Spooler interface {
	Put(ctx context.Context, m queue.Message) (queue.ID, error)
}

// Options configure a Server. Spool is required.
type Options struct {
	Spool Spooler
	// Logger receives one line per accepted message and per refusal;
	// nil means slog.Default().
	Logger *slog.Logger
	// FreeSpace reports the bytes free where the spool lives; below the
	// config's min-free-space new mail gets 452 4.3.1. Nil skips the check.
	FreeSpace func() (uint64, error)
	// MaxConnections, when positive, caps the inbound connections below
	// total-max-smtp-in: the daemon's file-descriptor share for them.
	MaxConnections int
	// Now is the clock for Received headers; nil means time.Now.
	Now func() time.Time
	// CommandTimeout bounds the wait for each command line and for each
	// chunk of DATA; WriteTimeout bounds each reply. Zero means 5 minutes
	// and 1 minute (RFC 5321 §4.5.3.2 suggests 5 minutes for commands).
	CommandTimeout time.Duration
	WriteTimeout   time.Duration
	// MailTimeout bounds the time from connect until the session starts a
	// transaction it can complete (an accepted MAIL from a session that
	// may relay); past it the client gets 421 and is disconnected,
	// however busy it keeps the connection. Zero means 30 seconds.
	MailTimeout time.Duration
	// ReservedAuthTimeout bounds the time from connect until AUTH for an
	// untrusted client admitted on a reserved slot (docs/operations.md, Limits and abuse);
	// zero means 10 seconds.
	ReservedAuthTimeout time.Duration
	// OnAccepted, if set, is called for every message answered 250, after
	// it is spooled (the feed for "r" accounting records). The message's
	// Body must not be kept.
	OnAccepted func(id queue.ID, m *queue.Message)
}

// Server runs every smtp-listener of a configuration.
type Server struct {
	opts Options
	log  *slog.Logger
	snap atomic.Pointer[snapshot]

	mu        sync.Mutex
	listeners map[string]*running

	// inbound counts open client connections over all listeners, for
	// total-max-smtp-in.
	inbound atomic.Int64
	// adm counts the untrusted connections (per client and against the
	// reserve); mem the memory messages being received hold.
	adm admission
	mem memBudget
	// refusals limits the log lines of connections refused at accept
	// (logRefusal).
	refusals struct {
		sync.Mutex
		last    time.Time
		skipped int
	}
	closing atomic.Bool
	// bufs are message buffers reused across DATA commands: a message is
	// read, rewritten and spooled (Put copies it), then the buffers are
	// free again.
	bufs     sync.Pool
	failures *failureLimiter
	// rw holds the buffered reader and writer of ended sessions (*rwBufs):
	// 20 KB a connection is worth reusing when clients connect for each
	// message.
	rw sync.Pool

	// conns are the open client connections, so that Shutdown can hang
	// up idle ones and cut those left at its deadline.
	connMu sync.Mutex
	conns  map[*countedConn]struct{}
	// sessions counts the goroutines serving connections; Shutdown waits
	// for them.
	sessions sync.WaitGroup
}

// snapshot is the configuration a session works with, taken when the
// session starts so one transaction never sees two configurations.
type snapshot struct {
	cfg *config.Config
	reg *vmta.Registry
	tls *tls.Config
	// maxSize is the largest max-message-size of any source, advertised in
	// SIZE (0: no limit); each session enforces its own source's limit.
	maxSize int64
	// cramMD5 is offered only when some user has a plaintext password: the
	// mechanism needs the secret itself, which a bcrypt hash cannot give.
	cramMD5 bool
	// limits are the inbound limits in force (defaults applied).
	limits config.InboundLimits
}

// running is one open listener. cur is its current smtp-listener line: a
// reload that changes only what sessions read (source=) swaps it and keeps
// the socket; baked says what the socket was opened for, and a change
// there reopens the listener.
type running struct {
	cur    atomic.Pointer[config.Listener]
	baked  string
	ln     net.Listener
	tlsCfg *tls.Config
	done   chan struct{}
}

// bakedInto describes what a listener's socket is opened for: implicit
// TLS or not. Everything else a client sees (banner, STARTTLS, AUTH,
// SIZE) comes from the configuration when it connects, and the
// certificate is looked up per handshake, so a reload changes them
// without reopening the socket.
func bakedInto(l *config.Listener, _ *snapshot) string {
	return fmt.Sprintf("implicit-tls=%v", l.TLS)
}

// inboundTLS is the TLS configuration of STARTTLS and tls=yes listeners:
// the certificate, and the versions smtp-server-tls-allow-tlsv1 to -tlsv1.3
// allow (by default TLS 1.2 and 1.3). Go's TLS stack still serves TLS 1.0
// and 1.1 when MinVersion asks for them explicitly (only its default
// minimum is 1.2), so no GODEBUG setting is needed for them.
func inboundTLS(cfg *config.Config) *tls.Config {
	lo, hi, ok := cfg.InboundTLSVersions()
	if !ok {
		// Load refuses a file that allows no version; a Config built
		// otherwise gets the defaults.
		lo, hi = tls.VersionTLS12, tls.VersionTLS13
	}
	return &tls.Config{Certificates: []tls.Certificate{*cfg.TLSCertificate}, MinVersion: lo, MaxVersion: hi}
}

// unavailableTLS says which of the TLS versions from lo up this build
// cannot serve: in Go's FIPS 140 mode (GODEBUG=fips140=on) crypto/tls
// speaks only TLS 1.2 and 1.3, so a configuration that allows 1.0 or 1.1
// gets a warning rather than silent refusals. "" when every version is
// available.
func unavailableTLS(lo uint16, fips bool) string {
	if !fips || lo >= tls.VersionTLS12 {
		return ""
	}
	v := "TLS 1.0 and 1.1 are"
	if lo == tls.VersionTLS11 {
		v = "TLS 1.1 is"
	}
	return v + " allowed by smtp-server-tls-allow-tlsv1.x but not available in this build: Go's FIPS 140 mode speaks only TLS 1.2 and 1.3"
}

// New returns a Server with no listener open; Apply opens them.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CommandTimeout == 0 {
		opts.CommandTimeout = 5 * time.Minute
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = time.Minute
	}
	if opts.MailTimeout == 0 {
		opts.MailTimeout = 30 * time.Second
	}
	if opts.ReservedAuthTimeout == 0 {
		opts.ReservedAuthTimeout = 10 * time.Second
	}
	return &Server{
		opts:      opts,
		log:       opts.Logger,
		listeners: map[string]*running{},
		failures:  newFailureLimiter(opts.Now),
		conns:     map[*countedConn]struct{}{},
	}
}

// listenerKey identifies a listener socket: a reload keeps the socket of an
// address it still has, so its clients are not cut off.
func listenerKey(l *config.Listener) string {
	return l.Network + "|" + l.Addr
}

// Apply makes cfg and reg the configuration of new sessions, opens the
// listeners cfg has and closes those it no longer has. If a listener cannot
// be opened, Apply closes the ones it opened in this call and returns the
// error; listeners that were already open stay as they were.
func (s *Server) Apply(cfg *config.Config, reg *vmta.Registry) error {
	if s.closing.Load() {
		return errors.New("listener: server is shut down")
	}
	snap := &snapshot{cfg: cfg, reg: reg, limits: cfg.Inbound()}
	if m := s.opts.MaxConnections; m > 0 && m < snap.limits.Total {
		// The daemon's file descriptor budget is lower than
		// total-max-smtp-in: the budget wins, and the reserve shrinks
		// with it.
		snap.limits.Total = m
		snap.limits.Reserved = min(snap.limits.Reserved, m/10)
	}
	if cfg.TLSCertificate != nil {
		snap.tls = inboundTLS(cfg)
		if lo, _, ok := cfg.InboundTLSVersions(); ok {
			if msg := unavailableTLS(lo, fips140.Enabled()); msg != "" {
				s.log.Warn(msg)
			}
		}
	}
	// The largest limit any session can have (a block that does not set
	// it holds the default); unlimited anywhere means no server-wide cap,
	// which go-smtp spells 0.
	snap.maxSize = int64(config.DefaultSourceSettings().MaxMessageSize.Value)
	if len(cfg.Sources) > 0 {
		snap.maxSize = 0
	}
	for _, src := range cfg.Sources {
		snap.maxSize = max(snap.maxSize, int64(src.Settings.MaxMessageSize.Value))
	}
	if snap.maxSize == int64(config.Unlimited) {
		snap.maxSize = 0
	}
	for _, u := range cfg.Users {
		if u.Password.Set {
			snap.cramMD5 = true
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	// Again under the lock: Shutdown sets closing before it takes the
	// lock to collect the listeners, so a listener opened here after that
	// would never be closed.
	if s.closing.Load() {
		return errors.New("listener: server is shut down")
	}
	want := map[string]*config.Listener{}
	for _, l := range cfg.Listeners {
		want[listenerKey(l)] = l
	}
	var opened, reopened []*running
	undo := func() {
		for _, o := range opened {
			o.ln.Close()
			delete(s.listeners, listenerKey(o.cur.Load()))
		}
	}
	for key, l := range want {
		r, ok := s.listeners[key]
		if ok && r.baked == bakedInto(l, snap) {
			continue
		}
		if ok {
			// Built differently (implicit TLS, STARTTLS, SIZE, banner):
			// the socket is replaced. Sessions in progress go on.
			r.ln.Close()
			delete(s.listeners, key)
		}
		nr, err := s.open(l, snap)
		if err != nil {
			undo()
			if ok {
				// Put the old listener back as it was.
				if back, err2 := s.open(r.cur.Load(), s.snap.Load()); err2 == nil {
					s.listeners[key] = back
					reopened = append(reopened, back)
				}
			}
			for _, b := range reopened {
				go b.serve(s)
			}
			return err
		}
		s.listeners[key] = nr
		opened = append(opened, nr)
	}
	s.snap.Store(snap)
	for key, r := range s.listeners {
		l, ok := want[key]
		if !ok {
			r.ln.Close()
			delete(s.listeners, key)
			s.log.Info("smtp listener closed", "addr", r.cur.Load().Addr)
			continue
		}
		if old := r.cur.Swap(l); old.Source != l.Source {
			s.log.Info("smtp listener updated", "addr", l.Addr, "source", l.Source)
		}
	}
	for _, r := range opened {
		go r.serve(s)
		l := r.cur.Load()
		s.log.Info("smtp listener open", "addr", r.ln.Addr().String(), "source", l.Source, "implicit_tls", l.TLS)
	}
	return nil
}

func (s *Server) open(l *config.Listener, snap *snapshot) (*running, error) {
	raw, err := net.Listen(l.Network, l.Addr)
	if err != nil {
		return nil, fmt.Errorf("smtp-listener %s (%s): %w", l.Addr, l.Pos, err)
	}
	r := &running{baked: bakedInto(l, snap), done: make(chan struct{})}
	r.cur.Store(l)
	// The certificate is looked up per handshake, so a reload that renews
	// it applies to the next client without reopening the socket.
	// So are the TLS versions: the handshake negotiates with the
	// configuration returned here, its MinVersion and MaxVersion included
	// (this one's MinVersion plays no part).
	r.tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if cur := s.snap.Load(); cur != nil && cur.tls != nil {
			return cur.tls, nil
		}
		return nil, errors.New("no tls-certificate configured")
	}}
	r.ln = &gate{Listener: raw, s: s, r: r}
	return r, nil
}

// serve accepts connections until the listener is closed, each served by
// its own goroutine.
func (r *running) serve(s *Server) {
	defer close(r.done)
	var backoff time.Duration
	for {
		c, err := r.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and retry
			// rather than give up the listener.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("smtp accept failed; retrying", "addr", r.cur.Load().Addr, "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			s.log.Error("smtp listener failed", "addr", r.cur.Load().Addr, "err", err)
			return
		}
		backoff = 0
		s.sessions.Add(1)
		go s.serveConn(r, c.(*countedConn))
	}
}

// isTemporary reports an accept error worth retrying (EMFILE, ENFILE,
// ECONNABORTED…), which net reports through the deprecated Temporary.
func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

// Addrs returns the addresses of the open listeners.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []net.Addr
	for _, r := range s.listeners {
		out = append(out, r.ln.Addr())
	}
	return out
}

// Shutdown stops accepting connections, lets open sessions finish until ctx
// is done, then closes what is left. Messages already answered 250 are in
// the spool; a transaction cut off here was not acknowledged, so the client
// will retry it.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	// Sessions between transactions would hold the drain until ctx ends
	// (programs keep injection connections open): hang them up now. Busy
	// ones are hung up when their transaction ends (session.Reset).
	s.connMu.Lock()
	for c := range s.conns {
		if !c.busy.Load() {
			c.hangUp()
		}
	}
	s.connMu.Unlock()
	s.mu.Lock()
	var all []*running
	for key, r := range s.listeners {
		all = append(all, r)
		delete(s.listeners, key)
	}
	s.mu.Unlock()
	for _, r := range all {
		r.ln.Close()
		<-r.done // no new session starts after this
	}
	done := make(chan struct{})
	go func() {
		s.sessions.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	// Cut what is left.
	s.connMu.Lock()
	left := make([]*countedConn, 0, len(s.conns))
	for c := range s.conns {
		left = append(left, c)
	}
	s.connMu.Unlock()
	for _, c := range left {
		c.Close()
	}
	return ctx.Err()
}

// gate refuses connections before they are greeted: when shutting down,
// over total-max-smtp-in, from a source with smtp-service no, and from
// untrusted clients over their per-address cap or their share of the
// slots (admission).
type gate struct {
	net.Listener
	s *Server
	r *running
}

func (g *gate) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		n := g.s.inbound.Add(1)
		counted := g.s.track(c)
		snap := g.s.snap.Load()
		host := snap.cfg.HostName.Value
		ip := remoteIP(c)
		lst := g.r.cur.Load()
		var refusal string
		switch {
		case g.s.closing.Load():
			refusal = fmt.Sprintf(replyShuttingDown, host)
		case n > int64(snap.limits.Total):
			refusal = fmt.Sprintf(replyTooManyConns, host)
		default:
			pol := snap.reg.Source(ip, lst.Source)
			switch {
			case !pol.SMTPService:
				refusal = fmt.Sprintf(replyServiceDenied, host, ip)
			case pol.AlwaysAllowRelaying && !pol.RequireAuth:
				// Trusted: it may relay as it connects, so
				// total-max-smtp-in is its only cap.
			default:
				switch g.s.adm.admit(counted, ip, snap.limits) {
				case refusedPerIP:
					refusal = fmt.Sprintf(replyTooManyFromIP, host)
				case refusedFull:
					refusal = fmt.Sprintf(replyTooManyConns, host)
				}
				counted.lent = counted.slot == slotLent
			}
		}
		if refusal == "" {
			return counted, nil
		}
		g.s.logRefusal(ip, lst.Addr, refusal[:len(refusal)-2])
		go func() {
			// An implicit-TLS listener cannot speak before the handshake;
			// its client just sees the connection close.
			if !lst.TLS {
				counted.SetWriteDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(counted, refusal)
			}
			counted.Close()
		}()
	}
}

// logRefusal logs a connection refused before its greeting: the first at
// once, then at most one line per refusalLogInterval, which counts the
// refusals left out since the line before. In a flood every connection
// is refused, and a line each would turn it into a flood of the log.
func (s *Server) logRefusal(ip netip.Addr, listener, reply string) {
	r := &s.refusals
	r.Lock()
	now := time.Now()
	if !r.last.IsZero() && now.Sub(r.last) < refusalLogInterval {
		r.skipped++
		r.Unlock()
		return
	}
	skipped := r.skipped
	r.last, r.skipped = now, 0
	r.Unlock()
	args := []any{"client", ip.String(), "listener", listener, "reply", reply}
	if skipped > 0 {
		args = append(args, "refusals_not_logged", skipped)
	}
	s.log.Info("smtp connection refused", args...)
}

// maxPooledBuf is the largest buffer kept for reuse; a rare huge message
// does not pin its memory.
const maxPooledBuf = 1 << 20

func (s *Server) getBuf() *bytes.Buffer {
	if b, ok := s.bufs.Get().(*bytes.Buffer); ok {
		return b
	}
	return bytes.NewBuffer(make([]byte, 0, 16<<10))
}

func (s *Server) putBuf(b *bytes.Buffer) {
	// One let go of (dropBody) has no capacity left: not worth keeping.
	if c := b.Cap(); c >= readBufSize && c <= maxPooledBuf {
		b.Reset()
		s.bufs.Put(b)
	}
}

// Connections is the number of open inbound SMTP connections over all
// listeners.
func (s *Server) Connections() int { return int(s.inbound.Load()) }

// countedConn gives back its slot in the inbound count and leaves the
// server's set of connections when closed.
type countedConn struct {
	net.Conn
	s    *Server
	once sync.Once
	// busy is set while a transaction is open (from an accepted MAIL to
	// its end): Shutdown waits for those, and hangs up the others.
	busy atomic.Bool
	// slot and key are how admission counts the connection (guarded by
	// Server.adm.mu); lent is set once, at accept, when it was lent a
	// reserved slot, for the session to read without the lock.
	slot slotKind
	key  netip.Prefix
	lent bool
}

// authenticated tells admission the client has authenticated: it no
// longer counts as untrusted.
func (c *countedConn) authenticated() { c.s.adm.release(c) }

// hangUp ends the session after the replies queued: closing the read side
// lets the engine write them, then its next read fails and it closes the
// connection.
func (c *countedConn) hangUp() {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		cr.CloseRead()
		return
	}
	c.Conn.SetReadDeadline(time.Now())
}

// track adds c, already counted in inbound, to the open connections.
func (s *Server) track(c net.Conn) *countedConn {
	cc := &countedConn{Conn: c, s: s}
	s.connMu.Lock()
	s.conns[cc] = struct{}{}
	s.connMu.Unlock()
	return cc
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.s.inbound.Add(-1)
		c.s.adm.release(c)
		c.s.connMu.Lock()
		delete(c.s.conns, c)
		c.s.connMu.Unlock()
	})
	return c.Conn.Close()
}

func remoteIP(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
