package delivery

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// outConn is one outbound SMTP session, from a VMTA source address to one
// destination address. The client is Tern's own rather than go-smtp's:
// go-smtp's client cannot STARTTLS after an EHLO with our own name, and it
// does not pipeline (RFC 2920), which halves the round trips of every
// transaction. Replies are read by replyReader, which bounds what a
// server can make Tern hold.
type outConn struct {
	raw      net.Conn // the TCP connection
	conn     net.Conn // raw, or the TLS connection over it
	r        *replyReader
	w        *bufio.Writer
	ext      map[string]string // EHLO keywords (upper case) and their parameters
	target   target
	source   netip.Addr
	ehlo     string
	tls      uint16 // negotiated TLS version; 0 in plaintext
	txns     int    // transactions sent on this connection
	errs     int    // recipient errors on this connection
	lastUsed time.Time
	// idleBefore is how long the session sat idle before the current
	// transaction: a reused session found closed after a moment's idling
	// was closed by a server that takes so many transactions, not by its
	// idle timeout.
	idleBefore time.Duration
	txnStart   time.Time     // when the current transaction began
	txnDur     time.Duration // how long the last transaction took, for Event.Duration
	broken     bool
	// stale is set when a reused connection failed at MAIL: the server
	// had closed it while it sat idle, and nothing of the transaction
	// reached the server.
	stale bool
	// cmdTimeout bounds each command's reply; dataTimeout the message
	// transfer and its final reply.
	cmdTimeout, dataTimeout time.Duration
	// ahead is the transaction whose MAIL, RCPT and DATA went out behind
	// the previous message's body, in the same write (RFC 2920 §3.1 lets
	// message content start a group); its own send reads their replies.
	ahead *txn
}

// txn is one message's transaction: its envelope, the recipients it goes
// to and the message.
type txn struct {
	id    queue.ID // the queued message; zero outside the scheduler
	env   queue.Envelope
	rcpts []queue.RecipientState
	body  []byte
}

// reply is a negative SMTP reply: the code and the text as the server
// wrote it (lines joined by newlines), enhanced status code included.
type reply struct {
	code int
	text string
}

func (r *reply) Error() string { return fmt.Sprintf("%d %s", r.code, r.text) }

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

// connOptions are what a connection needs from the VMTA and the policy.
type connOptions struct {
	source  netip.Addr
	ehlo    string
	pol     *config.DomainSettings
	dial    Dialer
	wantTLS bool // try STARTTLS when offered
	// sessions, when set, keeps the TLS sessions of the source address
	// so that a new connection to the same host resumes one
	// (reuse-ssl-session); nil makes every handshake a full one.
	sessions tls.ClientSessionCache
}

// open connects to t and runs the prelude: greeting, EHLO, STARTTLS as the
// policy says (and EHLO again over TLS), AUTH for a smart host. The
// session is then ready for send.
func open(ctx context.Context, t target, o connOptions) (*outConn, error) {
	pol := o.pol
	raw, err := o.dial(ctx, o.source, t.addr(), pol.ConnectTimeout.Value)
	if err != nil {
		return nil, &openError{stage: stageConnect, what: fmt.Sprintf("connect to %s (%s) from %s", t.host, t.addr(), sourceName(o.source)), err: err}
	}
	oc := &outConn{raw: raw, conn: raw, target: t, source: o.source, ehlo: o.ehlo,
		cmdTimeout: pol.SMTPGreetingTimeout.Value, dataTimeout: pol.DataSendTimeout.Value}
	oc.attach(raw)
	fail := func(err error) (*outConn, error) {
		raw.Close()
		return nil, err
	}
	if _, _, err := oc.cmd(220, ""); err != nil {
		return fail(&openError{stageGreeting, "greeting from " + t.host, err})
	}
	if err := oc.hello(); err != nil {
		return fail(&openError{stageHello, "EHLO", err})
	}
	if o.wantTLS {
		_, offered := oc.ext["STARTTLS"]
		switch {
		case offered:
			if _, _, err := oc.cmd(220, "STARTTLS"); err != nil {
				return fail(&openError{stageTLS, "", &tlsError{fmt.Errorf("STARTTLS refused by %s: %w", t.host, err)}})
			}
			tc := tls.Client(raw, &tls.Config{
				ServerName: t.host,
				// Opportunistic TLS (RFC 7435) encrypts without
				// authenticating unless tls-verify-certificate says so.
				InsecureSkipVerify: !pol.TLSVerifyCertificate.Value,
				MinVersion:         tls.VersionTLS12,
				// Keyed by ServerName; a session made without
				// verification is never resumed by a connection that
				// verifies (crypto/tls checks).
				ClientSessionCache: o.sessions,
			})
			raw.SetDeadline(time.Now().Add(oc.cmdTimeout))
			if err := tc.HandshakeContext(ctx); err != nil {
				return fail(&openError{stageTLS, "", &tlsError{fmt.Errorf("TLS handshake with %s failed: %w", t.host, err)}})
			}
			oc.tls = tc.ConnectionState().Version
			oc.attach(tc)
			// RFC 3207: forget what the server said before TLS.
			if err := oc.hello(); err != nil {
				return fail(&openError{stageHello, "EHLO", err})
			}
		case pol.RequireStartTLS.Value:
			return fail(&openError{stageTLS, "", &tlsError{fmt.Errorf("%s does not offer STARTTLS and require-starttls is set", t.host)}})
		}
	}
	if pol.AuthUsername.Set {
		if oc.tls == 0 && !pol.UseUnencryptedPlainAuth.Value {
			// Not a tlsError: retrying this host in plaintext cannot help.
			return fail(&openError{stageAuth, "", fmt.Errorf("AUTH to %s needs TLS (set use-unencrypted-plain-auth to allow it in the clear)", t.host)})
		}
		if err := oc.auth(sasl.NewPlainClient("", pol.AuthUsername.Value, pol.AuthPassword.Value)); err != nil {
			return fail(&openError{stageAuth, "AUTH", err})
		}
	}
	raw.SetDeadline(time.Time{})
	oc.lastUsed = time.Now()
	return oc, nil
}

// attach makes c the connection commands go over (after STARTTLS, the TLS
// connection).
func (oc *outConn) attach(c net.Conn) {
	oc.conn = c
	oc.r = newReplyReader(c, oc.target.host)
	oc.w = bufio.NewWriterSize(c, 32<<10)
}

// cmd sends one command (none when line is empty) and reads its reply,
// which must have code expect: anything else is a *reply error.
func (oc *outConn) cmd(expect int, line string) (int, string, error) {
	if line != "" {
		oc.w.WriteString(line)
		oc.w.WriteString("\r\n")
		if err := oc.flushWithin(oc.cmdTimeout); err != nil {
			return 0, "", err
		}
	}
	return oc.read(expect)
}

// flushWithin sends what is buffered within d; a failure breaks the
// connection.
func (oc *outConn) flushWithin(d time.Duration) error {
	oc.raw.SetWriteDeadline(time.Now().Add(d))
	if err := oc.w.Flush(); err != nil {
		oc.broken = true
		return err
	}
	return nil
}

// read reads one reply within the command timeout (each reply of a
// pipelined group gets its own), which must have code expect.
func (oc *outConn) read(expect int) (int, string, error) {
	return oc.readWithin(expect, oc.cmdTimeout)
}

// readWithin reads one reply within d, which must have code expect.
//
// The deadline is set once for the whole reply, not renewed per read: a
// server trickling a byte every few seconds cannot stretch a reply past
// d. A failure to read a reply (I/O, the deadline, a malformed reply, one
// past the bounds of replyReader) drops the connection at once: the
// replies can no longer be matched to the commands, and a hostile stream
// must not be read any further, whatever the caller does next.
func (oc *outConn) readWithin(expect int, d time.Duration) (int, string, error) {
	oc.raw.SetReadDeadline(time.Now().Add(d))
	code, msg, err := oc.r.read()
	if err != nil {
		oc.drop()
		return 0, "", err
	}
	if code != expect {
		return code, msg, &reply{code, msg}
	}
	return code, msg, nil
}

// drop marks the connection broken and closes the socket beneath it (and
// beneath TLS, so that no alert is written to a server that may not be
// reading). close later closes it again, harmlessly.
func (oc *outConn) drop() {
	oc.broken = true
	oc.raw.Close()
}

// Bounds on one reply from a remote server. RFC 5321 §4.5.3.1.5 limits a
// reply line to 512 octets, code and CRLF included; real servers write
// longer ones (verbose refusals, long EHLO keywords), so the line bound is
// twice that. The longest legitimate replies are answers to EHLO, one line
// per extension: a few dozen lines at most. A server past any bound is
// broken or hostile.
const (
	// maxReplyText is the most text a reply line may carry after its
	// code and separator ("250-"), the CRLF not counted.
	maxReplyText = 1000
	// maxReplyLine is the longest reply line in bytes: code, separator,
	// text and CRLF.
	maxReplyLine = 4 + maxReplyText + 2
	// maxReplyLines is the most lines one reply may have.
	maxReplyLines = 100
	// maxReplyBytes is the most bytes one reply may have, every line
	// counted whole (code, separator, text, line end).
	maxReplyBytes = 16 << 10
)

// replyReader reads SMTP replies (RFC 5321 §4.2) within the bounds above.
//
// It stands where net/textproto's ReadResponse stood, which bounds
// nothing: it reads a line for as long as no LF comes and appends
// continuation lines for as long as the server sends them, so an MX
// streaming an endless "250-" reply, or a banner without CRLF, grew Tern's
// heap by gigabytes. ReadResponse also accepts what a client should not:
// it folds lines with another code, or none, into a multiline reply.
//
// The buffer holds exactly one longest line, so bufio.Reader.ReadSlice
// reports a longer one (ErrBufferFull) having read no more than the bound,
// and a line costs no allocation until its text is kept. At most
// maxReplyBytes (plus one line) are read per reply.
type replyReader struct {
	br   *bufio.Reader
	host string // the server's name, for errors
}

func newReplyReader(r io.Reader, host string) *replyReader {
	return &replyReader{br: bufio.NewReaderSize(r, maxReplyLine), host: host}
}

// badReplyError is a reply that breaks SMTP's grammar or replyReader's
// bounds. It is not a *reply: the server said nothing Tern can act on, so
// replyOf makes it a connection failure (code 0, deferred), never a
// bounce.
type badReplyError struct {
	host string
	what string // "exceeds 1000 bytes per line"
}

func (e *badReplyError) Error() string { return "reply from " + e.host + " " + e.what }

// read reads one reply: its code and its text, the lines' text (after the
// code and separator, enhanced status code included) joined by newlines.
// Errors are the connection's (io.EOF, a timeout) or a *badReplyError.
func (rr *replyReader) read() (code int, text string, err error) {
	var b strings.Builder
	size := 0
	for n := 1; ; n++ {
		if n > maxReplyLines {
			return 0, "", rr.bad(fmt.Sprintf("exceeds %d lines", maxReplyLines))
		}
		line, err := rr.br.ReadSlice('\n')
		switch {
		case err == bufio.ErrBufferFull:
			return 0, "", rr.bad(fmt.Sprintf("exceeds %d bytes per line", maxReplyText))
		case err == io.EOF && (n > 1 || len(line) > 0):
			return 0, "", io.ErrUnexpectedEOF // hung up within a reply
		case err != nil:
			return 0, "", err
		}
		if size += len(line); size > maxReplyBytes {
			return 0, "", rr.bad(fmt.Sprintf("exceeds %d bytes", maxReplyBytes))
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		c, last, lineText, ok := parseReplyLine(line)
		switch {
		case !ok:
			return 0, "", rr.bad(fmt.Sprintf("is not an SMTP reply: %q", clip(line)))
		case len(lineText) > maxReplyText:
			// A line ended by a bare LF fits the buffer with a byte more.
			return 0, "", rr.bad(fmt.Sprintf("exceeds %d bytes per line", maxReplyText))
		case n == 1:
			code = c
		case c != code:
			return 0, "", rr.bad(fmt.Sprintf("mixes codes %d and %d", code, c))
		default:
			b.WriteByte('\n')
		}
		b.Write(lineText)
		if last {
			return code, b.String(), nil
		}
	}
}

func (rr *replyReader) bad(what string) error { return &badReplyError{host: rr.host, what: what} }

// parseReplyLine splits a reply line, without its line end, into its code,
// whether it is the reply's last line, and its text. A line is a code
// (RFC 5321 §4.2: a first digit 2 to 5) followed by "-" and more lines,
// or by a space or nothing on the last line ("250" alone is allowed, if
// rarely seen).
func parseReplyLine(line []byte) (code int, last bool, text []byte, ok bool) {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) {
		return 0, false, nil, false
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if len(line) == 3 {
		return code, true, nil, true
	}
	switch line[3] {
	case ' ':
		return code, true, line[4:], true
	case '-':
		return code, false, line[4:], true
	}
	return 0, false, nil, false
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// clip shortens a line quoted in an error: the error ends up in logs and
// accounting records, which the server must not fill.
func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// hello sends EHLO (HELO if the server refuses it) and records the
// extensions the server offers.
func (oc *outConn) hello() error {
	_, msg, err := oc.cmd(250, "EHLO "+oc.ehlo)
	var r *reply
	if errors.As(err, &r) && r.code >= 500 {
		oc.ext = map[string]string{}
		_, _, err = oc.cmd(250, "HELO "+oc.ehlo)
		return err
	}
	if err != nil {
		return err
	}
	oc.ext = map[string]string{}
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] { // the first line is the greeting
		kw, params, _ := strings.Cut(strings.TrimSpace(l), " ")
		oc.ext[strings.ToUpper(kw)] = params
	}
	return nil
}

// auth authenticates with the SASL client c.
func (oc *outConn) auth(c sasl.Client) error {
	mech, ir, err := c.Start()
	if err != nil {
		return err
	}
	line := "AUTH " + mech
	if ir != nil {
		line += " " + encodeSASL(ir)
	}
	for {
		code, msg, err := oc.cmd(235, line)
		if err == nil {
			return nil
		}
		if code != 334 {
			return err
		}
		challenge, derr := base64.StdEncoding.DecodeString(msg)
		if derr != nil {
			oc.cmd(0, "*")
			return fmt.Errorf("AUTH: malformed challenge %q", msg)
		}
		resp, nerr := c.Next(challenge)
		if nerr != nil {
			oc.cmd(0, "*")
			return nerr
		}
		line = encodeSASL(resp)
	}
}

// encodeSASL is a SASL response as sent in AUTH: base64, "=" for empty.
func encodeSASL(b []byte) string {
	if len(b) == 0 {
		return "="
	}
	return base64.StdEncoding.EncodeToString(b)
}

// tlsError is a failed TLS requirement or handshake.
type tlsError struct{ err error }

func (e *tlsError) Error() string { return e.err.Error() }

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
	atMail bool   // the reply answered MAIL: nothing of the transaction was accepted
}

// send runs one transaction: MAIL, a RCPT per recipient, DATA. When the
// server offers PIPELINING (RFC 2920) the commands up to DATA go out in one
// write and their replies are read together. Recipients refused at RCPT
// keep that reply; the others get the DATA reply. A broken connection
// leaves code 0 (deferred): nothing counts as delivered without a 250.
// After a failed transaction the connection is RSET for the next one.
func (oc *outConn) send(env queue.Envelope, rcpts []queue.RecipientState, body []byte) []result {
	return oc.sendTxn(&txn{env: env, rcpts: rcpts, body: body}, nil)
}

// sendTxn is send for t. When the server pipelines and next gives the
// transaction that will follow t on this connection, its commands go out
// in the same write as t's message: one round trip per message instead of
// two. next is asked only once t's message is about to be sent; whatever
// it returns must be the next sendTxn on this connection, unless the
// connection breaks (then nothing of it was acknowledged).
//
// Recipients the server cannot take for want of SMTPUTF8 (see
// addressesFor) get a 553 of Tern's own, as if refused at RCPT, and their
// RCPT is not sent; when no recipient is left, the transaction is not
// started at all: no MAIL, so nothing to RSET, and the connection stays
// ready for the next one.
func (oc *outConn) sendTxn(t *txn, next func() *txn) []result {
	env, rcpts, body := t.env, t.rcpts, t.body
	sent := false // t's commands are already on the wire
	if oc.ahead != nil {
		if oc.ahead != t {
			// A caller bug: the replies waiting are not this message's.
			oc.broken = true
			oc.ahead = nil
			return errorResults(rcpts, errors.New("pipelined transaction out of order"))
		}
		oc.ahead, sent = nil, true
	}
	oc.txnStart = time.Now()
	defer func() { oc.txnDur = time.Since(oc.txnStart) }()
	res := make([]result, len(rcpts))
	for i, r := range rcpts {
		res[i].rcpt = r
	}
	ad := oc.addressesFor(env, rcpts)
	// live are the recipients whose RCPT goes out, in order: the replies
	// to read are MAIL's, one per live recipient, and DATA's.
	live := make([]int, 0, len(rcpts))
	for i := range rcpts {
		if why := ad.refusal(i); why != "" {
			res[i].code, res[i].text, res[i].atRcpt = 553, why, true
			continue
		}
		live = append(live, i)
	}
	if len(live) == 0 {
		if sent {
			// Cannot happen: such a transaction is never written ahead
			// (see below). Were it, its replies would be read by the
			// next transaction.
			oc.broken = true
		}
		return res
	}
	oc.txns++
	oc.idleBefore = oc.txnStart.Sub(oc.lastUsed)
	oc.lastUsed = oc.txnStart
	setAll := func(err error) []result {
		for i := range res {
			if res[i].code == 0 || res[i].code/100 == 2 {
				res[i].code, res[i].text = replyOf(err)
			}
		}
		return res
	}
	_, dsn := oc.ext["DSN"]
	_, pipelining := oc.ext["PIPELINING"]

	if !sent {
		oc.writeEnvelope(ad, rcpts, body, dsn, pipelining)
		if err := oc.flushWithin(oc.cmdTimeout); err != nil {
			oc.stale = oc.txns > 1
			return setAll(err)
		}
	}
	if _, _, err := oc.read(250); err != nil {
		oc.stale = oc.noteBroken(err) && oc.txns > 1
		if pipelining && !oc.broken {
			oc.drain(len(live) + 1)
		}
		oc.reset()
		setAll(err)
		for _, i := range live {
			res[i].atMail = true
		}
		return res
	}
	accepted := 0
	for _, i := range live {
		if !pipelining {
			oc.writeRcpt(ad.rcpt(i, rcpts), rcpts[i], dsn)
			if err := oc.flushWithin(oc.cmdTimeout); err != nil {
				return setAll(err)
			}
		}
		if _, _, err := oc.read(250); err != nil {
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
	if !pipelining {
		if accepted == 0 {
			oc.reset()
			return res
		}
		oc.w.WriteString("DATA\r\n")
		if err := oc.flushWithin(oc.cmdTimeout); err != nil {
			return setAll(err)
		}
	}
	if _, _, err := oc.read(354); err != nil {
		if oc.noteBroken(err) {
			return setAll(err)
		}
		// Servers keep the transaction after refusing DATA: without RSET
		// the next MAIL would be refused as nested.
		oc.reset()
		if accepted == 0 {
			return res // every RCPT refused: the DATA refusal says nothing new
		}
		return setAll(err)
	}
	if accepted == 0 {
		// A server that took DATA with no recipient gets an empty
		// message, which it cannot deliver to anyone.
		oc.w.WriteString(".\r\n")
		if oc.flushWithin(oc.dataTimeout) == nil {
			if _, _, err := oc.readWithin(250, oc.dataTimeout); err != nil {
				oc.noteBroken(err)
			}
		}
		return res
	}
	writeDotted(oc.w, body)
	if pipelining && next != nil {
		// A transaction with no recipient to send is not written ahead:
		// its sendTxn will have no reply to read.
		if n := next(); n != nil {
			if nad := oc.addressesFor(n.env, n.rcpts); nad.any(len(n.rcpts)) {
				oc.writeEnvelope(nad, n.rcpts, n.body, dsn, true)
				oc.ahead = n
			}
		}
	}
	if err := oc.flushWithin(oc.dataTimeout); err != nil {
		oc.ahead = nil
		return setAll(err)
	}
	_, msg, err := oc.readWithin(250, oc.dataTimeout)
	if err != nil {
		if oc.noteBroken(err) {
			oc.ahead = nil
		}
		return setAll(err)
	}
	for i := range res {
		if res[i].code/100 == 2 {
			res[i].code, res[i].text = 250, "250 "+msg
		}
	}
	return res
}

// writeEnvelope buffers MAIL, and with pipelining the RCPTs (of the
// recipients ad does not refuse) and DATA.
func (oc *outConn) writeEnvelope(ad addresses, rcpts []queue.RecipientState, body []byte, dsn, pipelining bool) {
	oc.writeMail(ad, body, dsn)
	if pipelining {
		for i := range rcpts {
			if ad.refusal(i) == "" {
				oc.writeRcpt(ad.rcpt(i, rcpts), rcpts[i], dsn)
			}
		}
		oc.w.WriteString("DATA\r\n")
	}
}

// errorResults gives every recipient the reply err stands for.
func errorResults(rcpts []queue.RecipientState, err error) []result {
	res := make([]result, len(rcpts))
	for i, r := range rcpts {
		res[i].rcpt = r
		res[i].code, res[i].text = replyOf(err)
	}
	return res
}

// addresses is how one transaction's addresses go to this server.
type addresses struct {
	env    queue.Envelope // its DSN parameters are sent as they are
	sender string         // for MAIL FROM
	// utf8: MAIL carries SMTPUTF8 (RFC 6531 §3.4).
	utf8 bool
	// as holds the address to send for each recipient whose RCPT
	// differs from its stored address; nil when none does.
	as []string
	// refused holds Tern's own 553 for each recipient the server cannot
	// take ("" for the others); nil when there is none.
	refused []string
}

// addressesFor decides how env and rcpts go to this server (RFC 6531).
// With SMTPUTF8 offered they go as they are, and MAIL says SMTPUTF8 when
// any is not ASCII. Without it, only ASCII can go:
//   - a non-ASCII domain goes as its A-labels, which name the same
//     mailbox (RFC 5890); the stored address is unchanged;
//   - a non-ASCII local part has no ASCII form: its recipient is refused
//     with 553 5.6.7 (it bounces) and its RCPT not sent, while the other
//     recipients go on; a sender's refuses every recipient, and nothing
//     is sent;
//   - a non-ASCII domain that is not a valid IDN is refused likewise,
//     with 5.1.2 for a recipient and 5.1.7 for the sender.
//
// It depends on nothing but its arguments and the server's extensions, so
// that a transaction written ahead (behind the previous message) and its
// own sendTxn agree on which replies are coming.
func (oc *outConn) addressesFor(env queue.Envelope, rcpts []queue.RecipientState) addresses {
	ad := addresses{env: env, sender: env.Sender}
	if addressesASCII(env.Sender, rcpts) {
		return ad
	}
	if _, ok := oc.ext["SMTPUTF8"]; ok {
		ad.utf8 = true
		return ad
	}
	const noUTF8 = " (the server does not support SMTPUTF8)"
	refuseAll := func(why string) addresses {
		ad.refused = make([]string, len(rcpts))
		for i := range ad.refused {
			ad.refused[i] = why
		}
		return ad
	}
	sender, utf8Local, err := asciiAddress(env.Sender)
	switch {
	case utf8Local:
		return refuseAll("553 5.6.7 sender <" + env.Sender + "> has a non-ASCII local part" + noUTF8)
	case err != nil:
		return refuseAll("553 5.1.7 sender <" + env.Sender + ">: " + err.Error() + noUTF8)
	}
	ad.sender = sender
	for i, r := range rcpts {
		a, utf8Local, err := asciiAddress(r.Address)
		var why string
		switch {
		case utf8Local:
			why = "553 5.6.7 recipient <" + r.Address + "> has a non-ASCII local part" + noUTF8
		case err != nil:
			why = "553 5.1.2 recipient <" + r.Address + ">: " + err.Error() + noUTF8
		case a != r.Address:
			if ad.as == nil {
				ad.as = make([]string, len(rcpts))
			}
			ad.as[i] = a
		}
		if why != "" {
			if ad.refused == nil {
				ad.refused = make([]string, len(rcpts))
			}
			ad.refused[i] = why
		}
	}
	return ad
}

// refusal is Tern's own reply for recipient i, "" when its RCPT goes out.
func (ad addresses) refusal(i int) string {
	if ad.refused == nil {
		return ""
	}
	return ad.refused[i]
}

// rcpt is the address to send for recipient i of rcpts.
func (ad addresses) rcpt(i int, rcpts []queue.RecipientState) string {
	if ad.as != nil && ad.as[i] != "" {
		return ad.as[i]
	}
	return rcpts[i].Address
}

// any reports whether any of n recipients goes out.
func (ad addresses) any(n int) bool {
	for i := 0; i < n; i++ {
		if ad.refusal(i) == "" {
			return true
		}
	}
	return false
}

// asciiAddress is addr with its domain as A-labels. utf8Local reports a
// local part that is not ASCII, of which no ASCII form exists; err a
// domain that is not a valid IDN. The domain follows the last "@": a
// quoted local part may hold one.
func asciiAddress(addr string) (out string, utf8Local bool, err error) {
	at := strings.LastIndexByte(addr, '@')
	local, domain := addr, ""
	if at >= 0 {
		local, domain = addr[:at], addr[at+1:]
	}
	if !isASCII([]byte(local)) {
		return "", true, nil
	}
	if at < 0 || isASCII([]byte(domain)) {
		return addr, false, nil
	}
	a, err := asciiDomain(domain)
	if err != nil {
		return "", false, fmt.Errorf("domain %s is not a valid internationalised domain name (%v)", domain, err)
	}
	return local + "@" + a, false, nil
}

// writeMail buffers the MAIL command with the parameters the server
// supports.
func (oc *outConn) writeMail(ad addresses, body []byte, dsn bool) {
	w, env := oc.w, ad.env
	w.WriteString("MAIL FROM:<")
	w.WriteString(ad.sender)
	w.WriteString(">")
	if _, ok := oc.ext["SIZE"]; ok {
		w.WriteString(" SIZE=")
		w.WriteString(strconv.Itoa(len(body)))
	}
	if _, ok := oc.ext["8BITMIME"]; ok && !isASCII(body) {
		w.WriteString(" BODY=8BITMIME")
	}
	if ad.utf8 {
		w.WriteString(" SMTPUTF8")
	}
	if dsn {
		switch env.DSNRet {
		case queue.RetFull:
			w.WriteString(" RET=FULL")
		case queue.RetHeaders:
			w.WriteString(" RET=HDRS")
		}
		if env.EnvID != "" {
			w.WriteString(" ENVID=")
			w.WriteString(xtext(env.EnvID))
		}
	}
	w.WriteString("\r\n")
}

// writeRcpt buffers one RCPT command for r, to addr (r's address, or its
// A-label form), with DSN parameters when supported.
func (oc *outConn) writeRcpt(addr string, r queue.RecipientState, dsn bool) {
	w := oc.w
	w.WriteString("RCPT TO:<")
	w.WriteString(addr)
	w.WriteString(">")
	if dsn {
		if n := notifyOf(r.Notify); n != "" {
			w.WriteString(" NOTIFY=")
			w.WriteString(n)
		}
		if r.ORcpt != "" {
			w.WriteString(" ORCPT=rfc822;")
			w.WriteString(xtext(r.ORcpt))
		}
	}
	w.WriteString("\r\n")
}

// drain reads n pipelined replies whose commands lost their meaning (after
// MAIL was refused), so the next transaction reads its own replies. If
// the server took the DATA, an empty message ends it.
func (oc *outConn) drain(n int) {
	for i := 0; i < n; i++ {
		code, _, err := oc.read(250)
		if err != nil && code == 0 {
			oc.broken = true
			return
		}
		if i == n-1 && code == 354 {
			oc.w.WriteString(".\r\n")
			if oc.flushWithin(oc.dataTimeout) == nil {
				oc.readWithin(250, oc.dataTimeout)
			}
		}
	}
}

// reset sends RSET after a failed transaction, so the next MAIL starts
// clean; a failure here only marks the connection broken.
func (oc *outConn) reset() {
	if oc.broken {
		return
	}
	if _, _, err := oc.cmd(250, "RSET"); err != nil {
		oc.noteBroken(err)
	}
}

// writeDotted buffers body with dot-stuffing (RFC 5321 4.5.2), lines ended
// by CRLF whatever the spool holds, and the final dot.
func writeDotted(w *bufio.Writer, body []byte) {
	for len(body) > 0 {
		if body[0] == '.' {
			w.WriteByte('.')
		}
		i := bytes.IndexByte(body, '\n')
		if i < 0 {
			w.Write(body)
			w.WriteString("\r\n")
			break
		}
		line := body[:i]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		w.Write(line)
		w.WriteString("\r\n")
		body = body[i+1:]
	}
	w.WriteString(".\r\n")
}

// isASCII reports whether b has no byte over 0x7f. It tests eight bytes
// at a time: it runs over every message body sent to a server offering
// 8BITMIME.
func isASCII(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b)&0x8080808080808080 != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

func addressesASCII(sender string, rcpts []queue.RecipientState) bool {
	if !isASCII([]byte(sender)) {
		return false
	}
	for _, r := range rcpts {
		if !isASCII([]byte(r.Address)) {
			return false
		}
	}
	return true
}

// xtext encodes s for ENVID and ORCPT (RFC 3461 4): "+", "=", controls,
// spaces and non-ASCII bytes become +XX.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// noteBroken marks the connection unusable after an error that is not an
// SMTP reply (I/O, timeout, a malformed reply) or that closes the session
// (421).
func (oc *outConn) noteBroken(err error) bool {
	var r *reply
	if !errors.As(err, &r) || r.code == 421 {
		oc.broken = true
	}
	return oc.broken
}

// replyOf turns an error into a reply code and text; 0 for a connection
// failure, which defers.
func replyOf(err error) (int, string) {
	var r *reply
	if errors.As(err, &r) {
		return r.code, r.Error()
	}
	return 0, "connection failed: " + err.Error()
}

// notifyOf is the NOTIFY parameter of a recipient's DSN request, "" when
// it made none.
func notifyOf(n queue.Notify) string {
	if n&queue.NotifyNever != 0 {
		return "NEVER"
	}
	var out []string
	if n&queue.NotifySuccess != 0 {
		out = append(out, "SUCCESS")
	}
	if n&queue.NotifyFailure != 0 {
		out = append(out, "FAILURE")
	}
	if n&queue.NotifyDelay != 0 {
		out = append(out, "DELAY")
	}
	return strings.Join(out, ",")
}

// quitTimeout bounds the goodbye: a slow QUIT must not hold a connection
// slot.
const quitTimeout = 10 * time.Second

// close ends the session politely when it still works.
func (oc *outConn) close() {
	// With a transaction pipelined ahead the server is reading a message:
	// a QUIT would be content, and its reply would never come.
	if !oc.broken && oc.ahead == nil {
		oc.w.WriteString("QUIT\r\n")
		if oc.flushWithin(quitTimeout) == nil {
			oc.readWithin(221, quitTimeout)
		}
	}
	oc.conn.Close()
}
