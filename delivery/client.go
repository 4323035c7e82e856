package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// outConn is one outbound SMTP connection, from a VMTA source address to
// one destination address.
type outConn struct {
	c        *smtp.Client
	raw      net.Conn
	target   target
	source   netip.Addr
	ehlo     string
	tls      uint16 // negotiated TLS version; 0 in plaintext
	txns     int    // transactions sent on this connection
	errs     int    // recipient errors on this connection
	lastUsed time.Time
	txnStart time.Time // when the current transaction began, for Event.Duration
	broken   bool
	// stale is set when a reused connection failed at MAIL: the server
	// had closed it while it sat idle, and nothing of the transaction
	// reached the server.
	stale bool
}

// Dialer opens TCP connections; tests and the daemon use net.Dialer.
type Dialer func(ctx context.Context, local netip.Addr, remote string, timeout time.Duration) (net.Conn, error)

// netDial dials remote from the local address (the zero Addr lets the
// system choose): how a VMTA's source IP is bound.
func netDial(ctx context.Context, local netip.Addr, remote string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	return d.DialContext(ctx, "tcp", remote)
}

// replyError is a negative reply at connection level (greeting, EHLO,
// STARTTLS, AUTH): the connection is unusable and the next host is tried.
type replyError struct {
	stage string
	err   error
}

func (e *replyError) Error() string { return e.stage + ": " + e.err.Error() }
func (e *replyError) Unwrap() error { return e.err }

// connOptions are what a connection needs from the VMTA and the policy.
type connOptions struct {
	source  netip.Addr
	ehlo    string
	pol     *config.DomainSettings
	dial    Dialer
	wantTLS bool // try STARTTLS when offered
}

// open connects to t and runs the prelude: greeting, EHLO, STARTTLS as the
// policy says, AUTH for a smart host. go-smtp's client cannot send STARTTLS
// after an EHLO with our own name, so the plaintext prelude is written here
// and the client takes over once TLS (if any) is up.
func open(ctx context.Context, t target, o connOptions) (*outConn, error) {
	pol := o.pol
	raw, err := o.dial(ctx, o.source, t.addr(), pol.ConnectTimeout.Value)
	if err != nil {
		return nil, fmt.Errorf("connect to %s (%s) from %s: %w", t.host, t.addr(), sourceName(o.source), err)
	}
	oc := &outConn{raw: raw, target: t, source: o.source, ehlo: o.ehlo}
	fail := func(err error) (*outConn, error) {
		raw.Close()
		return nil, err
	}
	raw.SetDeadline(time.Now().Add(pol.SMTPGreetingTimeout.Value))
	tp := textproto.NewConn(raw)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return fail(&replyError{"greeting from " + t.host, err})
	}
	conn := raw
	// What go-smtp's client reads first: the greeting we already consumed,
	// and, when we already said EHLO and stay in plaintext, that EHLO's
	// reply, so the client does not send a second EHLO (some servers
	// refuse it with 503).
	replay := []byte("220 ready\r\n")
	swallow := 0
	if o.wantTLS {
		if err := tp.PrintfLine("EHLO %s", o.ehlo); err != nil {
			return fail(err)
		}
		_, caps, err := tp.ReadResponse(250)
		if err != nil {
			return fail(&replyError{"EHLO", err})
		}
		offered := false
		for _, line := range strings.Split(caps, "\n") {
			if strings.EqualFold(strings.TrimSpace(line), "STARTTLS") {
				offered = true
			}
		}
		switch {
		case offered:
			if err := tp.PrintfLine("STARTTLS"); err != nil {
				return fail(err)
			}
			if _, _, err := tp.ReadResponse(220); err != nil {
				return fail(&tlsError{fmt.Errorf("STARTTLS refused by %s: %w", t.host, err)})
			}
			tc := tls.Client(raw, &tls.Config{
				ServerName: t.host,
				// Opportunistic TLS (RFC 7435) encrypts without
				// authenticating unless tls-verify-certificate says so.
				InsecureSkipVerify: !pol.TLSVerifyCertificate.Value,
				MinVersion:         tls.VersionTLS12,
			})
			if err := tc.HandshakeContext(ctx); err != nil {
				return fail(&tlsError{fmt.Errorf("TLS handshake with %s failed: %w", t.host, err)})
			}
			oc.tls = tc.ConnectionState().Version
			conn = tc
		case pol.RequireStartTLS.Value:
			return fail(&tlsError{fmt.Errorf("%s does not offer STARTTLS and require-starttls is set", t.host)})
		default:
			replay = append(replay, replyLines(250, caps)...)
			swallow = 1
		}
	}
	raw.SetDeadline(time.Time{})
	// The greeting was read above; go-smtp's client expects one, so it
	// reads a stand-in first.
	oc.c = smtp.NewClient(&greeted{Conn: conn, pending: replay, swallow: swallow})
	oc.c.CommandTimeout = pol.SMTPGreetingTimeout.Value
	oc.c.SubmissionTimeout = pol.DataSendTimeout.Value
	if err := oc.c.Hello(o.ehlo); err != nil {
		return fail(&replyError{"EHLO", err})
	}
	if pol.AuthUsername.Set {
		if oc.tls == 0 && !pol.UseUnencryptedPlainAuth.Value {
			// Not a tlsError: retrying this host in plaintext cannot help.
			return fail(fmt.Errorf("AUTH to %s needs TLS (set use-unencrypted-plain-auth to allow it in the clear)", t.host))
		}
		if err := oc.c.Auth(sasl.NewPlainClient("", pol.AuthUsername.Value, pol.AuthPassword.Value)); err != nil {
			return fail(&replyError{"AUTH", err})
		}
	}
	oc.lastUsed = time.Now()
	return oc, nil
}

// tlsError is a failed TLS requirement or handshake.
type tlsError struct{ err error }

func (e *tlsError) Error() string { return e.err.Error() }

// greeted replays what the prelude already read (the greeting, maybe an
// EHLO reply) before the connection's own bytes, and swallows the writes
// that replayed replies answer.
type greeted struct {
	net.Conn
	pending []byte
	swallow int
}

func (g *greeted) Write(p []byte) (int, error) {
	if g.swallow > 0 {
		g.swallow--
		return len(p), nil
	}
	return g.Conn.Write(p)
}

// replyLines formats a reply as it came on the wire: code-text lines, the
// last with a space.
func replyLines(code int, msg string) []byte {
	lines := strings.Split(msg, "\n")
	var b []byte
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		b = fmt.Appendf(b, "%d%s%s\r\n", code, sep, l)
	}
	return b
}

func (g *greeted) Read(p []byte) (int, error) {
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

func sourceName(ip netip.Addr) string {
	if !ip.IsValid() {
		return "the default address"
	}
	return ip.String()
}

// result is the fate of one recipient in one transaction.
type result struct {
	rcpt   queue.RecipientState
	code   int    // SMTP reply code; 0 when the connection failed
	text   string // the reply as the remote server gave it, or a diagnostic
	atRcpt bool   // the reply answered RCPT (bounce-rcpt applies only there)
}

// send runs one transaction: MAIL, a RCPT per recipient, DATA. Recipients
// refused at RCPT keep that reply; the others get the DATA reply. A broken
// connection leaves code 0 (deferred): nothing counts as delivered without
// a 250.
func (oc *outConn) send(env queue.Envelope, rcpts []queue.RecipientState, body []byte) []result {
	oc.txns++
	oc.lastUsed = time.Now()
	oc.txnStart = oc.lastUsed
	res := make([]result, len(rcpts))
	for i, r := range rcpts {
		res[i].rcpt = r
	}
	setAll := func(err error) []result {
		for i := range res {
			if res[i].code == 0 || res[i].code/100 == 2 {
				res[i].code, res[i].text = replyOf(err)
			}
		}
		return res
	}
	mopts := &smtp.MailOptions{Size: int64(len(body))}
	dsn, _ := oc.c.Extension("DSN")
	if dsn {
		mopts.EnvelopeID = env.EnvID
		switch env.DSNRet {
		case queue.RetFull:
			mopts.Return = smtp.DSNReturnFull
		case queue.RetHeaders:
			mopts.Return = smtp.DSNReturnHeaders
		}
	}
	if err := oc.c.Mail(env.Sender, mopts); err != nil {
		oc.stale = oc.noteBroken(err) && oc.txns > 1
		return setAll(err)
	}
	accepted := 0
	for i, r := range rcpts {
		var ropts *smtp.RcptOptions
		if dsn && (r.Notify != 0 || r.ORcpt != "") {
			ropts = &smtp.RcptOptions{Notify: notifyOf(r.Notify)}
			if r.ORcpt != "" {
				ropts.OriginalRecipientType, ropts.OriginalRecipient = smtp.DSNAddressTypeRFC822, r.ORcpt
			}
		}
		if err := oc.c.Rcpt(r.Address, ropts); err != nil {
			res[i].code, res[i].text = replyOf(err)
			res[i].atRcpt = true
			oc.errs++
			if oc.noteBroken(err) {
				return setAll(err)
			}
			continue
		}
		res[i].code = 250
		accepted++
	}
	if accepted == 0 {
		if err := oc.c.Reset(); err != nil {
			oc.noteBroken(err)
		}
		return res
	}
	w, err := oc.c.Data()
	if err != nil {
		oc.noteBroken(err)
		return setAll(err)
	}
	if _, err := io.Copy(w, bytes.NewReader(body)); err != nil {
		oc.broken = true
		return setAll(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		oc.noteBroken(err)
		return setAll(err)
	}
	for i := range res {
		if res[i].code/100 == 2 {
			res[i].code, res[i].text = 250, "250 "+resp.StatusText
		}
	}
	return res
}

// noteBroken marks the connection unusable after an error that is not an
// SMTP reply (I/O, timeout) or that closes the session (421).
func (oc *outConn) noteBroken(err error) bool {
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code == 421 {
		oc.broken = true
	}
	return oc.broken
}

// replyOf turns an error into a reply code and text; 0 for a connection
// failure, which defers.
func replyOf(err error) (int, string) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se.EnhancedCode != smtp.NoEnhancedCode && se.EnhancedCode != (smtp.EnhancedCode{}) {
			return se.Code, fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
		}
		return se.Code, fmt.Sprintf("%d %s", se.Code, se.Message)
	}
	return 0, "connection failed: " + err.Error()
}

func notifyOf(n queue.Notify) []smtp.DSNNotify {
	if n&queue.NotifyNever != 0 {
		return []smtp.DSNNotify{smtp.DSNNotifyNever}
	}
	var out []smtp.DSNNotify
	if n&queue.NotifySuccess != 0 {
		out = append(out, smtp.DSNNotifySuccess)
	}
	if n&queue.NotifyFailure != 0 {
		out = append(out, smtp.DSNNotifyFailure)
	}
	if n&queue.NotifyDelay != 0 {
		out = append(out, smtp.DSNNotifyDelayed)
	}
	return out
}

// close ends the session politely when it still works.
func (oc *outConn) close() {
	if !oc.broken {
		oc.raw.SetDeadline(time.Now().Add(10 * time.Second))
		oc.c.Quit()
	}
	oc.c.Close()
}
