// Package smtptest runs an SMTP sink for tests: a go-smtp server on loopback
// that accepts mail, records what arrives and answers from scripts.
//
// For every connection the sink records the remote address, the EHLO name,
// the TLS version negotiated by STARTTLS and the AUTH user; for every message
// the envelope, the body and the connection it came on. Replies can be
// scripted per stage (greeting, MAIL, each recipient's RCPT, end of DATA),
// where each command consumes the next reply of its script and the last reply
// repeats, so "451 twice then 250" is ScriptRcpt(addr, R(451), R(451), R(250)).
// The sink also counts connections and their peak concurrency.
//
// Tests wait for results with WaitMessages, WaitActive and WaitFor, which
// block on a notification channel with a deadline, never by sleeping. Nothing
// here is global; each sink stops when its test ends.
package smtptest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Options configure a sink. The zero value is a plain sink on 127.0.0.1 at
// a random port that accepts everything.
type Options struct {
	// Addr is the TCP address to listen on: "127.0.0.1:0" (the default) for
	// a random port, "127.0.0.1:2525" or "127.0.0.5:2525" for a fixed one
	// (all of 127.0.0.0/8 is loopback on Linux, so sinks on 127.0.0.N can
	// share a port, as MX hosts on port 25 would).
	Addr string
	// Hostname is the name in the greeting; default "sink.test".
	Hostname string
	// TLS, when set, makes the sink offer STARTTLS with this configuration
	// (see SelfSigned).
	TLS *tls.Config
	// Users, when set, makes the sink offer AUTH PLAIN (also without TLS)
	// for these user names and passwords, and require it before MAIL.
	Users map[string]string
	// DropAfterData makes the sink read each message's data in full and
	// then close the connection without replying. The message is recorded
	// among Attempts with Code 0, not among Messages.
	DropAfterData bool
	// MaxMessageBytes, when positive, is announced in EHLO (SIZE) and
	// enforced by go-smtp.
	MaxMessageBytes int64
	// MaxRecipients, when positive, is the most recipients go-smtp accepts
	// in one transaction (452 beyond).
	MaxRecipients int
	// Reply, when set, is asked first for every scripted stage; a non-nil
	// result is the reply, and nil falls back to the scripts. It runs on the
	// connection's goroutine and may call the Sink's methods.
	Reply func(ev Event) *Reply
}

// Reply is a scripted reply. The zero Reply means "proceed as usual" (250,
// or the greeting), so is any 2xx code.
type Reply struct {
	// Code is the SMTP reply code, e.g. 250, 421, 451, 550.
	Code int
	// Enhanced is the RFC 3463 status code; zero derives X.0.0 from Code.
	Enhanced smtp.EnhancedCode
	// Message is the reply text; empty means "scripted reply".
	Message string
	// Drop closes the connection at this point without replying.
	Drop bool
}

// R returns a Reply with the given code and optional text.
func R(code int, message ...string) Reply {
	return Reply{Code: code, Message: strings.Join(message, " ")}
}

// Drop is the Reply that closes the connection without replying.
var Drop = Reply{Drop: true}

func (r Reply) accepts() bool { return !r.Drop && (r.Code == 0 || r.Code/100 == 2) }

func (r Reply) err() *smtp.SMTPError {
	msg := r.Message
	if msg == "" {
		msg = "scripted reply"
	}
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: r.Enhanced, Message: msg}
}

// Stage is the point of an SMTP session at which a reply is given.
type Stage int

// The stages that can be scripted.
const (
	// StageGreeting is the connection's opening: a 4xx or 5xx reply is sent
	// instead of the 220 greeting and the connection is closed.
	StageGreeting Stage = iota + 1
	// StageMail is the reply to MAIL FROM.
	StageMail
	// StageRcpt is the reply to RCPT TO.
	StageRcpt
	// StageData is the reply at the end of DATA.
	StageData
)

// String returns the stage's name.
func (s Stage) String() string {
	switch s {
	case StageGreeting:
		return "greeting"
	case StageMail:
		return "MAIL"
	case StageRcpt:
		return "RCPT"
	case StageData:
		return "DATA"
	}
	return "Stage(" + strconv.Itoa(int(s)) + ")"
}

// Event describes the command that Options.Reply is asked to answer.
type Event struct {
	// Stage is where the session stands.
	Stage Stage
	// Conn is the connection as recorded so far.
	Conn Conn
	// From is the envelope sender (MAIL, RCPT and DATA stages).
	From string
	// Rcpt is the recipient being given (RCPT stage).
	Rcpt string
	// Rcpts are the recipients accepted so far (RCPT and DATA stages).
	Rcpts []string
	// Data is the message (DATA stage).
	Data []byte
}

// Conn is what the sink recorded about one connection.
type Conn struct {
	// ID numbers connections from 1 in the order they were accepted.
	ID int
	// Remote is the client's address and port.
	Remote netip.AddrPort
	// Local is the sink's address the client connected to.
	Local netip.AddrPort
	// EHLO is the name given in the last EHLO or HELO ("" if none).
	EHLO string
	// EHLOs are the names given in each EHLO or HELO that opened a session,
	// in order: a client that uses STARTTLS greets twice (go-smtp's client
	// says "localhost" before STARTTLS). go-smtp opens no new session for
	// a repeated EHLO without STARTTLS, so that one is not recorded.
	EHLOs []string
	// TLSVersion is the TLS version negotiated by STARTTLS
	// (tls.VersionTLS12, tls.VersionTLS13), 0 without TLS.
	TLSVersion uint16
	// TLSServerName is the SNI name the client sent, if any.
	TLSServerName string
	// TLSResumed is true when the client resumed an earlier TLS session
	// (tls.ConnectionState.DidResume) rather than making a full handshake.
	TLSResumed bool
	// AuthUser is the user name that authenticated, if any.
	AuthUser string
	// Refused is true when a greeting script turned the connection away.
	Refused bool
	// Opened and Closed are when the sink accepted and closed the
	// connection; Closed is zero while it is open.
	Opened, Closed time.Time
}

// Message is a message whose data the sink received in full.
type Message struct {
	// ConnID is the ID of the connection it came on (see Conn).
	ConnID int
	// Remote is the client's IP address.
	Remote netip.Addr
	// EHLO is the name the client gave in its last EHLO or HELO.
	EHLO string
	// TLSVersion is the TLS version of the connection, 0 without TLS.
	TLSVersion uint16
	// From is the envelope sender ("" for the null sender).
	From string
	// Rcpts are the accepted recipients, in the order given.
	Rcpts []string
	// Data is the message as received (headers and body, CRLF line ends,
	// dot-unstuffed).
	Data []byte
	// Code is the reply given at the end of DATA: 250, the scripted code,
	// or 0 when the connection was dropped.
	Code int
	// Received is when the data ended.
	Received time.Time
}

// script is a sequence of replies: each use consumes one, the last repeats.
type script struct {
	replies []Reply
	used    int
}

func newScript(replies []Reply) *script {
	if len(replies) == 0 {
		return nil
	}
	return &script{replies: slices.Clone(replies)}
}

func (sc *script) next() *Reply {
	if sc == nil {
		return nil
	}
	r := sc.replies[min(sc.used, len(sc.replies)-1)]
	sc.used++
	return &r
}

// Sink is a running SMTP sink. Its methods are safe for concurrent use.
type Sink struct {
	opts Options
	t    testing.TB
	srv  *smtp.Server
	ln   net.Listener
	addr netip.AddrPort

	done      chan struct{} // closed by Close
	closeOnce sync.Once
	served    chan struct{} // closed when Serve returns
	refusers  sync.WaitGroup

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every recorded change
	conns    []Conn        // conns[i].ID == i+1
	active   int
	peak     int
	attempts []Message
	greeting *script
	mail     *script
	data     *script
	rcpt     map[string]*script
	hold     chan struct{} // non-nil while held
	stopped  bool          // no more logging to t
}

// Start starts a sink with opts and stops it when t ends.
func Start(t testing.TB, opts Options) *Sink {
	t.Helper()
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Hostname == "" {
		opts.Hostname = "sink.test"
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		t.Fatalf("smtptest: %v", err)
	}
	s := &Sink{
		opts:    opts,
		t:       t,
		ln:      ln,
		addr:    ln.Addr().(*net.TCPAddr).AddrPort(),
		done:    make(chan struct{}),
		served:  make(chan struct{}),
		changed: make(chan struct{}),
		rcpt:    make(map[string]*script),
	}
	s.srv = smtp.NewServer(backend{s})
	s.srv.Domain = opts.Hostname
	s.srv.TLSConfig = opts.TLS
	s.srv.AllowInsecureAuth = true
	s.srv.MaxMessageBytes = opts.MaxMessageBytes
	s.srv.MaxRecipients = opts.MaxRecipients
	s.srv.ReadTimeout = time.Minute
	s.srv.WriteTimeout = time.Minute
	s.srv.ErrorLog = logger{s}
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(&listener{Listener: ln, s: s})
	}()
	t.Cleanup(func() {
		s.Close()
		s.mu.Lock()
		s.stopped = true
		s.mu.Unlock()
	})
	return s
}

// Close stops the sink: it stops listening, so that new connections are
// refused, and closes the open ones. Records stay readable. Close is called
// when the test ends; calling it earlier simulates a server going down.
func (s *Sink) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		_ = s.srv.Close()
		// go-smtp's Close only closes the listeners Serve has registered:
		// a Close right after Start could run first and leave Serve
		// accepting for ever.
		_ = s.ln.Close()
		<-s.served
		s.refusers.Wait()
	})
}

// Addr returns the address the sink listens on, e.g. "127.0.0.1:34567".
func (s *Sink) Addr() string { return s.addr.String() }

// AddrPort returns the address the sink listens on.
func (s *Sink) AddrPort() netip.AddrPort { return s.addr }

// Port returns the port the sink listens on.
func (s *Sink) Port() int { return int(s.addr.Port()) }

// ScriptGreeting sets the replies given to new connections, one per
// connection: a 4xx or 5xx reply (e.g. R(421)) is sent instead of the
// greeting and the connection closed; Drop closes it at once; R(220) or
// Reply{} greets as usual. No replies clears the script.
func (s *Sink) ScriptGreeting(replies ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.greeting = newScript(replies)
}

// ScriptMail sets the replies to MAIL FROM, one per command. No replies
// clears the script.
func (s *Sink) ScriptMail(replies ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mail = newScript(replies)
}

// ScriptRcpt sets the replies to RCPT TO for addr (compared without regard
// to case), one per command naming it. No replies clears the script.
func (s *Sink) ScriptRcpt(addr string, replies ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sc := newScript(replies); sc != nil {
		s.rcpt[strings.ToLower(addr)] = sc
	} else {
		delete(s.rcpt, strings.ToLower(addr))
	}
}

// ScriptData sets the replies at the end of DATA, one per message. No
// replies clears the script.
func (s *Sink) ScriptData(replies ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data = newScript(replies)
}

// Hold makes new sessions wait at EHLO (or HELO) until release is called,
// so that a test can see how many connections a client opens at once
// (ActiveConns, WaitActive). The connection is counted and open while it
// waits; the EHLO reply comes on release. release may be called more than
// once; Close also ends the wait.
func (s *Sink) Hold() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hold == nil {
		s.hold = make(chan struct{})
	}
	h := s.hold
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.hold == h {
			close(h)
			s.hold = nil
		}
	}
}

// Messages returns the messages the sink accepted (2xx at the end of DATA),
// in the order received.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.messages()
}

func (s *Sink) messages() []Message {
	var out []Message
	for _, m := range s.attempts {
		if m.Code/100 == 2 {
			out = append(out, cloneMessage(m))
		}
	}
	return out
}

// Attempts returns every message whose data the sink received in full,
// whatever it replied (see Message.Code), in the order received.
func (s *Sink) Attempts() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.attempts))
	for i, m := range s.attempts {
		out[i] = cloneMessage(m)
	}
	return out
}

func cloneMessage(m Message) Message {
	m.Rcpts = slices.Clone(m.Rcpts)
	m.Data = slices.Clone(m.Data)
	return m
}

// Connections returns the connections the sink accepted, in order.
func (s *Sink) Connections() []Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Conn, len(s.conns))
	for i, c := range s.conns {
		out[i] = c.clone()
	}
	return out
}

func (c Conn) clone() Conn {
	c.EHLOs = slices.Clone(c.EHLOs)
	return c
}

// Conns returns how many connections the sink has accepted.
func (s *Sink) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// ActiveConns returns how many connections are open now.
func (s *Sink) ActiveConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// PeakConns returns the most connections that were open at once.
func (s *Sink) PeakConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// WaitMessages waits until the sink has accepted at least n messages and
// returns them all; it fails the test if that takes longer than timeout.
func (s *Sink) WaitMessages(t testing.TB, n int, timeout time.Duration) []Message {
	t.Helper()
	var out []Message
	s.WaitFor(t, timeout, fmt.Sprintf("%d messages", n), func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		out = s.messages()
		return len(out) >= n
	})
	return out
}

// WaitActive waits until exactly n connections are open; it fails the test
// if that takes longer than timeout.
func (s *Sink) WaitActive(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	s.WaitFor(t, timeout, fmt.Sprintf("%d open connections", n), func() bool {
		return s.ActiveConns() == n
	})
}

// WaitFor waits until cond returns true, checking it now and after each
// change the sink records (a connection opened, closed or greeted, a
// message received). It fails the test, naming what, after timeout. cond
// may call the Sink's methods.
func (s *Sink) WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			s.mu.Lock()
			n, active := len(s.messages()), s.active
			s.mu.Unlock()
			t.Fatalf("smtptest: waited %v for %s; have %d messages, %d open connections", timeout, what, n, active)
		}
	}
}

// notify wakes the waiters; s.mu must be held.
func (s *Sink) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// reply returns the reply for ev: Options.Reply's, else the next of the
// script that pick selects (under s.mu), else nil.
func (s *Sink) reply(ev Event, pick func() *script) *Reply {
	if s.opts.Reply != nil {
		if r := s.opts.Reply(ev); r != nil {
			return r
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return pick().next()
}

func (s *Sink) conn(id int) Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[id-1].clone()
}

func (s *Sink) update(id int, f func(c *Conn)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.conns[id-1])
	s.notify()
}

// listener counts connections and answers the greeting scripts before
// go-smtp sees a connection.
type listener struct {
	net.Listener
	s *Sink
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := l.s.opened(nc)
		r := l.s.reply(Event{Stage: StageGreeting, Conn: l.s.conn(tc.id)},
			func() *script { return l.s.greeting })
		if r == nil || r.accepts() {
			return tc, nil
		}
		l.s.update(tc.id, func(c *Conn) { c.Refused = true })
		l.s.refusers.Add(1)
		go func() {
			defer l.s.refusers.Done()
			defer tc.Close()
			if !r.Drop {
				_ = tc.SetWriteDeadline(time.Now().Add(10 * time.Second))
				e := r.err()
				if e.EnhancedCode == smtp.EnhancedCodeNotSet {
					_, _ = fmt.Fprintf(tc, "%d %s %s\r\n", e.Code, l.s.opts.Hostname, e.Message)
				} else {
					c := e.EnhancedCode
					_, _ = fmt.Fprintf(tc, "%d %d.%d.%d %s\r\n", e.Code, c[0], c[1], c[2], e.Message)
				}
			}
		}()
	}
}

// opened records a new connection.
func (s *Sink) opened(nc net.Conn) *trackedConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := Conn{ID: len(s.conns) + 1, Opened: time.Now()}
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		c.Remote = unmap(a.AddrPort())
	}
	if a, ok := nc.LocalAddr().(*net.TCPAddr); ok {
		c.Local = unmap(a.AddrPort())
	}
	s.conns = append(s.conns, c)
	s.active++
	s.peak = max(s.peak, s.active)
	s.notify()
	return &trackedConn{Conn: nc, s: s, id: c.ID}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// trackedConn is a connection the sink counts until it is closed.
type trackedConn struct {
	net.Conn
	s    *Sink
	id   int
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.s.mu.Lock()
		defer c.s.mu.Unlock()
		c.s.active--
		c.s.conns[c.id-1].Closed = time.Now()
		c.s.notify()
	})
	return err
}

// tracked returns the sink's connection under a go-smtp one.
func tracked(c *smtp.Conn) *trackedConn {
	nc := c.Conn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	return nc.(*trackedConn)
}

type backend struct{ s *Sink }

// NewSession runs at each EHLO or HELO (again after STARTTLS).
func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := b.s
	tc := tracked(c)
	s.update(tc.id, func(r *Conn) {
		r.EHLO = c.Hostname()
		r.EHLOs = append(r.EHLOs, c.Hostname())
		if st, ok := c.TLSConnectionState(); ok {
			r.TLSVersion = st.Version
			r.TLSServerName = st.ServerName
			r.TLSResumed = st.DidResume
		}
	})
	s.mu.Lock()
	h := s.hold
	s.mu.Unlock()
	if h != nil {
		select {
		case <-h:
		case <-s.done:
			return nil, errors.New("sink closed")
		}
	}
	return &session{s: s, c: c, tc: tc}, nil
}

// session is one go-smtp session, from EHLO to QUIT, STARTTLS or the end of
// the connection.
type session struct {
	s      *Sink
	c      *smtp.Conn
	tc     *trackedConn
	authed bool
	from   string
	rcpts  []string
}

var errDropped = errors.New("smtptest: connection dropped")

// answer turns a scripted reply into what a Session method returns.
func (ss *session) answer(r *Reply) error {
	switch {
	case r == nil || r.accepts():
		return nil
	case r.Drop:
		_ = ss.tc.Close()
		return errDropped
	default:
		return r.err()
	}
}

func (ss *session) event(stage Stage) Event {
	return Event{Stage: stage, Conn: ss.s.conn(ss.tc.id), From: ss.from, Rcpts: slices.Clone(ss.rcpts)}
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.s.opts.Users != nil && !ss.authed {
		return smtp.ErrAuthRequired
	}
	ev := ss.event(StageMail)
	ev.From = from
	if err := ss.answer(ss.s.reply(ev, func() *script { return ss.s.mail })); err != nil {
		return err
	}
	ss.from, ss.rcpts = from, nil
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ev := ss.event(StageRcpt)
	ev.Rcpt = to
	key := strings.ToLower(to)
	if err := ss.answer(ss.s.reply(ev, func() *script { return ss.s.rcpt[key] })); err != nil {
		return err
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ev := ss.event(StageData)
	ev.Data = data
	rep := ss.s.reply(ev, func() *script { return ss.s.data })
	if ss.s.opts.DropAfterData {
		rep = &Drop
	}
	m := Message{
		ConnID:     ev.Conn.ID,
		Remote:     ev.Conn.Remote.Addr(),
		EHLO:       ev.Conn.EHLO,
		TLSVersion: ev.Conn.TLSVersion,
		From:       ss.from,
		Rcpts:      ev.Rcpts,
		Data:       data,
		Code:       250,
		Received:   time.Now(),
	}
	switch {
	case rep == nil || rep.accepts():
	case rep.Drop:
		m.Code = 0
	default:
		m.Code = rep.Code
	}
	ss.s.mu.Lock()
	ss.s.attempts = append(ss.s.attempts, m)
	ss.s.notify()
	ss.s.mu.Unlock()
	return ss.answer(rep)
}

func (ss *session) Reset() { ss.from, ss.rcpts = "", nil }

func (ss *session) Logout() error { return nil }

// AuthMechanisms offers PLAIN when Options.Users is set.
func (ss *session) AuthMechanisms() []string {
	if ss.s.opts.Users == nil {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.s.opts.Users == nil || mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if want, ok := ss.s.opts.Users[user]; !ok || want != pass || (identity != "" && identity != user) {
			return smtp.ErrAuthFailed
		}
		ss.authed = true
		ss.s.update(ss.tc.id, func(c *Conn) { c.AuthUser = user })
		return nil
	}), nil
}

// logger sends go-smtp's error log to the test log while the test runs.
type logger struct{ s *Sink }

func (l logger) Printf(format string, v ...any) {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if !l.s.stopped {
		l.s.t.Logf("smtptest: "+format, v...)
	}
}

func (l logger) Println(v ...any) {
	l.Printf("%s", fmt.Sprintln(v...))
}
