package listener

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/ternmta/tern/config"
)

// This file is Tern's inbound SMTP protocol engine: it reads commands,
// checks their sequence and syntax, and hands the transaction to the
// session (session.go), which owns every policy decision.
//
// It replaced go-smtp's server, which the project used first, because
// the inbound path was where the benchmark spent its CPU: go-smtp reads
// DATA a byte at a time through a line-length filter and formats every
// reply with fmt, and those two cost about a fifth of Tern's CPU under
// load. Here DATA is read a line at a time out of a large buffer, and
// replies are queued and written when the client has nothing more in
// flight, so a pipelining client gets all its replies in one write
// (RFC 2920 §3.2 lets the server group them). go-smtp's types
// (SMTPError, MailOptions, RcptOptions) are still the vocabulary the
// session speaks.

const (
	// readBufSize holds a whole typical message, so a 4 KB DATA takes
	// one read.
	readBufSize = 16 << 10
	// maxCommandLine bounds a command line (RFC 5321 §4.5.3.1.4 says 512
	// octets; extensions make it longer, so a generous bound).
	maxCommandLine = 4096
	// maxAuthLine bounds a line of a SASL exchange (RFC 4954 §4).
	maxAuthLine = 12288
	// maxBadCommands is how many refused or malformed commands a client
	// may send without getting a message accepted before it is
	// disconnected, as Postfix's smtpd_hard_error_limit.
	maxBadCommands = 20
	// maxIdleCommands is how many commands that move no mail (NOOP, RSET,
	// VRFY, HELP, EHLO, unknown ones) a client may send without getting a
	// message accepted: the next is answered 421 and the connection
	// closed. A client that keeps a connection open between messages
	// sends a RSET or a NOOP or two for each, which this leaves room for;
	// one that only keeps the connection busy is let go.
	maxIdleCommands = 20
	// copySlack is what session.Data's copy of a message takes beyond the
	// message itself: the Received header and header rewrites, roughly.
	copySlack = 1 << 10
)

var errLineTooLong = errors.New("line too long")

// inConn is one inbound client connection.
type inConn struct {
	s    *Server
	r    *running
	snap *snapshot // taken at connect: banner, TLS and SIZE
	cc   *countedConn
	conn net.Conn // cc, or the TLS connection over it
	tls  bool
	br   *bufio.Reader
	bw   *bufio.Writer

	helo string
	ehlo bool
	ss   *session // nil until EHLO/HELO, and again after STARTTLS
	// bad counts refused commands since the last accepted message.
	bad int
	// rcptTried is set once the transaction has seen a RCPT, accepted or
	// not: DATA without any is out of sequence, DATA after only refused
	// ones has no valid recipient.
	rcptTried bool

	// bdat collects the chunks of a BDAT transfer; nil when none is
	// under way.
	bdat *bytes.Buffer
	// quit is set once the connection is to be closed after the replies
	// queued so far; quitCmd when the client asked for it (QUIT), so that
	// it is not hung up on while sending.
	quit, quitCmd bool

	// mailBy is when the session must have started a transaction it can
	// complete (Options.MailTimeout after connect); authBy, for a client
	// lent a reserved slot, when it must have authenticated. Each is zero
	// once met. phaseEnd is the earlier of those set: no read waits past
	// it, so trickling bytes does not keep a session alive.
	mailBy, authBy, phaseEnd time.Time
	// idle counts commands that moved no mail since the last accepted
	// message (maxIdleCommands).
	idle int
	// mem is what the message being received holds of the server's
	// memory budget (max-inbound-buffer), charged for cover bytes of
	// buffer (charge); both zero between messages.
	mem, cover int64
}

// deadlineConn sets a fresh deadline before every read and write, so a
// timeout bounds each wait for the client rather than the whole session;
// a read never waits past *end, the session's phase deadline, when set.
type deadlineConn struct {
	net.Conn
	read, write time.Duration
	end         *time.Time
}

func (d *deadlineConn) Read(p []byte) (int, error) {
	t := time.Now().Add(d.read)
	if e := *d.end; !e.IsZero() && e.Before(t) {
		t = e
	}
	d.Conn.SetReadDeadline(t)
	return d.Conn.Read(p)
}

func (d *deadlineConn) Write(p []byte) (int, error) {
	d.Conn.SetWriteDeadline(time.Now().Add(d.write))
	return d.Conn.Write(p)
}

// serveConn runs one client connection to its end. c is counted and
// tracked already (gate.Accept).
func (s *Server) serveConn(r *running, cc *countedConn) {
	defer s.sessions.Done()
	c := &inConn{s: s, r: r, snap: s.snap.Load(), cc: cc, conn: cc}
	defer func() {
		if c.ss != nil {
			c.ss.Logout()
		}
		if c.quit && !c.quitCmd && c.br != nil {
			c.linger()
		}
		c.conn.Close() // under TLS, with its close_notify alert
		cc.Close()
		c.releaseIO()
		// Whatever ended the session (a panic included), the message it
		// was receiving gives its memory back.
		c.releaseMem()
	}()
	now := time.Now()
	c.mailBy = now.Add(s.opts.MailTimeout)
	if cc.lent {
		c.authBy = now.Add(s.opts.ReservedAuthTimeout)
	}
	c.setPhase()
	if r.cur.Load().TLS {
		tc := tls.Server(cc, r.tlsCfg)
		tc.SetDeadline(c.deadline(s.opts.CommandTimeout))
		if err := tc.Handshake(); err != nil {
			s.log.Info("smtp tls handshake failed", "client", remoteIP(cc).String(), "err", err)
			return
		}
		tc.SetDeadline(time.Time{})
		c.conn, c.tls = tc, true
	}
	c.setIO()
	c.reply(220, "", c.snap.cfg.HostName.Value+" ESMTP Tern")
	c.loop()
}

// Lingering bounds what is read and dropped after a refusal that ends the
// session while the client is still sending.
const (
	lingerTime  = time.Second
	lingerBytes = 1 << 20
)

// linger ends a session that is hung up on while the client still sends
// (an overlong line, too many errors, a malformed BDAT): closing with
// unread input makes the kernel answer with a reset, which can destroy
// the last reply before the client reads it. So the write side is shut
// first, then input is dropped for a moment, as net/http does.
func (c *inConn) linger() {
	type closeWriter interface{ CloseWrite() error }
	var cw closeWriter
	switch conn := c.conn.(type) {
	case *tls.Conn:
		cw = conn // close_notify, then the same
	case *countedConn:
		cw, _ = conn.Conn.(closeWriter)
	}
	if cw == nil || cw.CloseWrite() != nil {
		return
	}
	c.conn.SetReadDeadline(time.Now().Add(lingerTime))
	io.CopyN(io.Discard, c.conn, lingerBytes)
}

// rwBufs are a connection's buffered reader and writer, pooled.
type rwBufs struct {
	r *bufio.Reader
	w *bufio.Writer
}

// setPhase recomputes phaseEnd after mailBy or authBy changed.
func (c *inConn) setPhase() {
	c.phaseEnd = c.mailBy
	if !c.authBy.IsZero() && (c.phaseEnd.IsZero() || c.authBy.Before(c.phaseEnd)) {
		c.phaseEnd = c.authBy
	}
}

// deadline is the time a wait of d from now must end: d, or sooner when
// the phase deadline comes first.
func (c *inConn) deadline(d time.Duration) time.Time {
	t := time.Now().Add(d)
	if !c.phaseEnd.IsZero() && c.phaseEnd.Before(t) {
		t = c.phaseEnd
	}
	return t
}

// phaseOver reports whether the phase deadline has passed.
func (c *inConn) phaseOver() bool {
	return !c.phaseEnd.IsZero() && !time.Now().Before(c.phaseEnd)
}

// endPhase answers a session whose phase deadline has passed and ends
// it: a client lent a reserved slot that has not authenticated is told
// the server is busy, any other that it took too long.
func (c *inConn) endPhase() {
	host := c.snap.cfg.HostName.Value
	if !c.authBy.IsZero() && !time.Now().Before(c.authBy) {
		c.reply(421, "4.7.0", host+" busy: authenticate at once or try again later, closing connection")
	} else {
		c.reply(421, "4.4.2", host+" timeout exceeded, closing connection")
	}
	c.quit = true
}

func (c *inConn) setIO() {
	dc := &deadlineConn{Conn: c.conn, read: c.s.opts.CommandTimeout, write: c.s.opts.WriteTimeout, end: &c.phaseEnd}
	if c.br == nil {
		if b, ok := c.s.rw.Get().(*rwBufs); ok {
			c.br, c.bw = b.r, b.w
		} else {
			c.br = bufio.NewReaderSize(nil, readBufSize)
			c.bw = bufio.NewWriterSize(nil, 4096)
		}
	}
	c.br.Reset(dc)
	c.bw.Reset(dc)
}

// releaseIO gives the buffers back once the connection is done with them.
func (c *inConn) releaseIO() {
	if c.br == nil {
		return
	}
	c.br.Reset(nil)
	c.bw.Reset(nil)
	c.s.rw.Put(&rwBufs{c.br, c.bw})
	c.br, c.bw = nil, nil
}

// loop reads and runs commands until the client quits or the connection
// fails. A panic in a handler ends this connection with a 421, never the
// daemon.
func (c *inConn) loop() {
	defer func() {
		if p := recover(); p != nil {
			c.s.log.Error("smtp session panic", "client", remoteIP(c.cc).String(), "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			c.reply(421, "4.3.0", "Internal error, closing connection")
			c.bw.Flush()
		}
	}()
	for !c.quit {
		line, err := c.readLine(maxCommandLine)
		if err != nil {
			c.readFailed(err)
			return
		}
		// Commands already buffered need no read: the deadline is
		// checked here too.
		if c.phaseOver() {
			c.endPhase()
			break
		}
		c.command(line)
	}
	c.bw.Flush()
}

// readFailed answers a failed command read if the connection still
// works: a timeout or an overlong line gets a 421 before the hang-up.
func (c *inConn) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, errLineTooLong):
		c.reply(500, "5.5.2", "Line too long, closing connection")
		c.quit = true // the rest of the line is unread: linger
	case errors.As(err, &ne) && ne.Timeout() && c.phaseOver():
		c.endPhase()
	case errors.As(err, &ne) && ne.Timeout():
		c.reply(421, "4.4.2", c.snap.cfg.HostName.Value+" timeout exceeded, closing connection")
	}
	c.bw.Flush()
}

// readLine returns the next command line without its line ending. Queued
// replies are written first when no complete line is buffered: the
// client is then waiting for them.
func (c *inConn) readLine(limit int) (string, error) {
	if !c.lineBuffered() {
		if err := c.bw.Flush(); err != nil {
			return "", err
		}
	}
	line, err := c.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || (err == nil && len(line) > limit) {
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	return string(line), nil
}

func (c *inConn) lineBuffered() bool {
	n := c.br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := c.br.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// reply queues one reply line; enh is the enhanced status code, or ""
// for none (the greeting, 354, 334).
func (c *inConn) reply(code int, enh, text string) {
	c.replyLine(code, ' ', enh, text)
}

func (c *inConn) replyLine(code int, sep byte, enh, text string) {
	var b [3]byte
	c.bw.Write(strconv.AppendInt(b[:0], int64(code), 10))
	c.bw.WriteByte(sep)
	if enh != "" {
		c.bw.WriteString(enh)
		c.bw.WriteByte(' ')
	}
	c.bw.WriteString(text)
	c.bw.WriteString("\r\n")
}

// replyErr queues the reply an error from the session stands for. An
// error that is not an SMTP reply is a fault on Tern's side: a
// temporary failure, so the client keeps its message.
func (c *inConn) replyErr(err error) {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		c.s.log.Error("smtp session error", "client", remoteIP(c.cc).String(), "err", err)
		se = errInternal
	}
	if se.Code >= 500 {
		c.protocolError(se.Code, enhanced(se), se.Message)
		return
	}
	c.reply(se.Code, enhanced(se), se.Message)
}

// enhanced formats an SMTPError's enhanced code; one that is not set
// takes the class of the reply code, as RFC 2034 wants one on every
// reply once ENHANCEDSTATUSCODES is advertised.
func enhanced(se *smtp.SMTPError) string {
	ec := se.EnhancedCode
	switch ec {
	case smtp.NoEnhancedCode:
		return ""
	case smtp.EnhancedCodeNotSet:
		ec = smtp.EnhancedCode{se.Code / 100, 0, 0}
	}
	return fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
}

// protocolError queues a permanent refusal (a malformed or
// out-of-sequence command, or one policy refused) and disconnects a
// client that keeps getting them without getting mail through.
func (c *inConn) protocolError(code int, enh, text string) {
	c.reply(code, enh, text)
	c.bad++
	if c.bad >= maxBadCommands {
		c.reply(421, "4.7.0", "Too many errors, closing connection")
		c.quit = true
	}
}

func (c *inConn) command(line string) {
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	arg = strings.TrimSpace(arg)
	switch verb {
	case "MAIL", "RCPT", "DATA", "BDAT", "QUIT", "AUTH", "STARTTLS":
	case "EHLO", "HELO":
		// The first of a session (before and after STARTTLS) is free.
		if c.ss == nil {
			break
		}
		fallthrough
	default:
		// A command that moves no mail: counted, and past the budget
		// answered with 421 instead.
		if c.idle >= maxIdleCommands {
			c.reply(421, "4.7.0", "Too many commands without mail, closing connection")
			c.quit = true
			return
		}
		c.idle++
	}
	switch verb {
	case "EHLO", "HELO":
		c.hello(verb == "EHLO", arg)
	case "MAIL":
		c.mail(arg)
	case "RCPT":
		c.rcpt(arg)
	case "DATA":
		c.data(arg)
	case "BDAT":
		c.chunk(arg)
	case "RSET":
		c.reset()
		c.reply(250, "2.0.0", "OK")
	case "NOOP":
		c.reply(250, "2.0.0", "OK")
	case "QUIT":
		c.reply(221, "2.0.0", c.snap.cfg.HostName.Value+" closing connection")
		c.quit, c.quitCmd = true, true
	case "VRFY":
		c.reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
	case "AUTH":
		c.auth(arg)
	case "STARTTLS":
		c.startTLS(arg)
	case "HELP":
		c.reply(214, "2.0.0", "See RFC 5321")
	case "EXPN", "TURN", "ETRN", "SEND", "SOML", "SAML":
		c.protocolError(502, "5.5.1", verb+" not implemented")
	case "":
		c.protocolError(500, "5.5.2", "Empty command")
	default:
		c.protocolError(500, "5.5.2", "Command not recognized")
	}
	if c.ss != nil && c.ss.hungUp {
		c.quit = true
	}
}

// reset ends the transaction in progress, if any, and gives back the
// memory its message held.
func (c *inConn) reset() {
	c.rcptTried = false
	if c.bdat != nil {
		c.s.putBuf(c.bdat)
		c.bdat = nil
	}
	c.releaseMem()
	if c.ss != nil {
		c.ss.Reset()
	}
}

// initialMem is the part of a buffer a message is charged for as it
// starts: a first buffer's worth, enough for most messages.
const initialMem = readBufSize

// charge is what a message covering n bytes of buffer holds of the
// memory budget: the buffer, and the copy session.Data makes of the
// message to rewrite its header. The copy is charged from the start,
// so that a message once read never waits for room to be spooled.
func charge(n int64) int64 { return 2*n + copySlack }

// chargeFor raises the message's charge to cover n bytes of buffer;
// false, with nothing changed, when the budget has no room.
func (c *inConn) chargeFor(n int64) bool {
	if n > math.MaxInt64/4 {
		// A BDAT size no buffer could hold (with max-message-size
		// unlimited): its charge would overflow.
		return false
	}
	more := charge(n) - c.mem
	if !c.s.mem.take(more, c.mem, c.snap.limits.Buffer) {
		return false
	}
	c.mem += more
	c.cover = n
	return true
}

// releaseMem gives back what the message being received held.
func (c *inConn) releaseMem() {
	if c.mem != 0 {
		c.s.mem.give(c.mem)
		c.mem, c.cover = 0, 0
	}
}

// room makes buf, the message being received, able to take n more bytes
// within what the message is charged for; false, with nothing changed,
// when the budget has no room for its growth.
//
// A buffer reused from the pool may be larger than the message has
// needed so far: the message is charged for its spare capacity as it
// grows into it, doubling, so a small message in a big buffer is not
// charged the big buffer's worth.
func (c *inConn) room(buf *bytes.Buffer, n int) bool {
	need := int64(buf.Len()) + int64(n)
	if need <= c.cover && n <= buf.Available() {
		return true // the common case: nothing to charge, no growth
	}
	if n <= buf.Available() {
		return c.chargeFor(min(max(need, 2*c.cover), int64(buf.Cap())))
	}
	// The buffer must grow: bytes.Buffer allocates at least twice its
	// capacity, or what is needed when more.
	if !c.chargeFor(max(2*int64(buf.Cap()), need)) {
		return false
	}
	buf.Grow(n)
	// The allocator rounds up to its size classes: charge what it gave.
	if got := int64(buf.Cap()); got > c.cover {
		c.s.mem.force(charge(got) - c.mem)
		c.mem, c.cover = charge(got), got
	}
	return true
}

// dropBody lets go of a message that is refused while it is still being
// read (too big, no room): its memory is given back at once rather than
// held until the client ends the message.
func (c *inConn) dropBody(buf *bytes.Buffer) {
	*buf = bytes.Buffer{}
	c.releaseMem()
}

func (c *inConn) hello(ehlo bool, arg string) {
	name, _, _ := strings.Cut(arg, " ")
	if name == "" {
		c.protocolError(501, "5.5.4", "Syntax: EHLO hostname")
		return
	}
	if hasControl(name) {
		// It goes into the Received header and the logs.
		c.protocolError(501, "5.5.4", "Bad EHLO/HELO name")
		return
	}
	c.helo, c.ehlo = name, ehlo
	if c.ss == nil {
		c.ss = newSession(c)
	} else {
		// RFC 5321 §4.1.4: a later EHLO resets as RSET does.
		c.reset()
		c.ss.helo = name
	}
	host := c.snap.cfg.HostName.Value
	if !ehlo {
		c.reply(250, "", host+" Hello "+name)
		return
	}
	c.replyLine(250, '-', "", host+" Hello "+name)
	caps := []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"}
	if c.snap.tls != nil && !c.tls {
		caps = append(caps, "STARTTLS")
	}
	if mechs := c.ss.AuthMechanisms(); len(mechs) > 0 {
		caps = append(caps, "AUTH "+strings.Join(mechs, " "))
	}
	caps = append(caps, "SMTPUTF8", "DSN")
	size := "SIZE"
	if c.snap.maxSize > 0 {
		size += " " + strconv.FormatInt(c.snap.maxSize, 10)
	}
	caps = append(caps, size)
	for i, cp := range caps {
		sep := byte('-')
		if i == len(caps)-1 {
			sep = ' '
		}
		c.replyLine(250, sep, "", cp)
	}
}

func (c *inConn) mail(arg string) {
	switch {
	case c.ss == nil:
		c.protocolError(503, "5.5.1", "Send EHLO or HELO first")
		return
	case c.ss.hasFrom:
		c.protocolError(503, "5.5.1", "Nested MAIL command")
		return
	}
	rest, ok := cutPrefixFold(arg, "FROM:")
	if !ok {
		c.protocolError(501, "5.5.4", "Syntax: MAIL FROM:<address>")
		return
	}
	from, params, err := parsePath(rest)
	if err != nil {
		c.protocolError(501, "5.1.7", "Bad sender address syntax")
		return
	}
	opts := &smtp.MailOptions{}
	for _, p := range strings.Fields(params) {
		key, value, _ := strings.Cut(p, "=")
		switch strings.ToUpper(key) {
		case "SIZE":
			n, err := strconv.ParseUint(value, 10, 63)
			if err != nil {
				c.protocolError(501, "5.5.4", "Bad SIZE parameter")
				return
			}
			opts.Size = int64(n)
		case "BODY":
			switch b := smtp.BodyType(strings.ToUpper(value)); b {
			case smtp.Body7Bit, smtp.Body8BitMIME:
				opts.Body = b
			default:
				c.protocolError(501, "5.5.4", "Unsupported BODY value")
				return
			}
		case "SMTPUTF8":
			opts.UTF8 = true
		case "RET":
			switch r := smtp.DSNReturn(strings.ToUpper(value)); r {
			case smtp.DSNReturnFull, smtp.DSNReturnHeaders:
				opts.Return = r
			default:
				c.protocolError(501, "5.5.4", "Bad RET parameter")
				return
			}
		case "ENVID":
			v, err := decodeXtext(value)
			if err != nil || v == "" || len(v) > 100 || !printableASCII(v) {
				c.protocolError(501, "5.5.4", "Bad ENVID parameter")
				return
			}
			opts.EnvelopeID = v
		case "AUTH":
			// RFC 4954 §5: the submitter's identity, for trusted relays;
			// accepted and not used.
		default:
			c.protocolError(555, "5.5.4", "Unsupported MAIL parameter "+strings.ToUpper(key))
			return
		}
	}
	if err := c.ss.Mail(from, opts); err != nil {
		c.replyErr(err)
		return
	}
	c.rcptTried = false
	// A transaction that can deliver ends the wait for one; a session
	// that may not relay is no nearer to delivering with a sender.
	if !c.mailBy.IsZero() && c.ss.mayRelay() {
		c.mailBy = time.Time{}
		c.setPhase()
	}
	c.reply(250, "2.1.0", "Sender OK")
}

func (c *inConn) rcpt(arg string) {
	if c.ss == nil || !c.ss.hasFrom {
		c.protocolError(503, "5.5.1", "Need MAIL command")
		return
	}
	if c.bdat != nil {
		// RFC 3030 §2: the envelope is complete once BDAT begins.
		c.protocolError(503, "5.5.1", "RCPT not allowed during BDAT")
		return
	}
	c.rcptTried = true
	rest, ok := cutPrefixFold(arg, "TO:")
	if !ok {
		c.protocolError(501, "5.5.4", "Syntax: RCPT TO:<address>")
		return
	}
	to, params, err := parsePath(rest)
	if err != nil || to == "" {
		c.protocolError(501, "5.1.3", "Bad recipient address syntax")
		return
	}
	opts := &smtp.RcptOptions{}
	for _, p := range strings.Fields(params) {
		key, value, _ := strings.Cut(p, "=")
		switch strings.ToUpper(key) {
		case "NOTIFY":
			n, ok := parseNotify(value)
			if !ok {
				c.protocolError(501, "5.5.4", "Bad NOTIFY parameter")
				return
			}
			opts.Notify = n
		case "ORCPT":
			typ, addr, ok := strings.Cut(value, ";")
			var err error
			switch t := smtp.DSNAddressType(strings.ToUpper(typ)); {
			case !ok || addr == "":
				err = errors.New("no address")
			case t == smtp.DSNAddressTypeRFC822:
				addr, err = decodeXtext(addr)
				opts.OriginalRecipientType = t
			case t == smtp.DSNAddressTypeUTF8:
				addr, err = decodeUTF8Xtext(addr)
				opts.OriginalRecipientType = t
			default:
				err = errors.New("unknown address type")
			}
			// It goes into bounce reports: 8-bit only as UTF-8, and only
			// in a transaction that asked for SMTPUTF8, as addresses.
			if err != nil || addr == "" || checkEncoding(addr, c.ss.mailOpts.UTF8) != nil {
				c.protocolError(501, "5.5.4", "Bad ORCPT parameter")
				return
			}
			opts.OriginalRecipient = addr
		default:
			c.protocolError(555, "5.5.4", "Unsupported RCPT parameter "+strings.ToUpper(key))
			return
		}
	}
	if err := c.ss.Rcpt(to, opts); err != nil {
		c.replyErr(err)
		return
	}
	c.reply(250, "2.1.5", "Recipient OK")
}

// readyForData checks that a transaction can take its message.
func (c *inConn) readyForData() bool {
	switch {
	case c.ss == nil || !c.ss.hasFrom:
		c.protocolError(503, "5.5.1", "Need MAIL command")
	case !c.rcptTried:
		c.protocolError(503, "5.5.1", "Need RCPT command")
	case len(c.ss.rcpts) == 0:
		c.protocolError(554, "5.5.1", "No valid recipients")
	default:
		return true
	}
	return false
}

func (c *inConn) data(arg string) {
	if arg != "" {
		c.protocolError(501, "5.5.4", "Syntax: DATA")
		return
	}
	if c.bdat != nil {
		c.protocolError(503, "5.5.1", "DATA not allowed during BDAT")
		return
	}
	if !c.readyForData() {
		return
	}
	if !c.chargeFor(initialMem) {
		// Refused before 354, so the client sends nothing it would have
		// to send again.
		c.replyErr(c.ss.refuse(errNoMemory, "data", "buffered", c.s.mem.used.Load()))
		return
	}
	c.reply(354, "", "End data with <CR><LF>.<CR><LF>")
	if err := c.bw.Flush(); err != nil {
		c.quit = true
		return
	}
	buf := c.s.getBuf()
	defer c.s.putBuf(buf)
	res, err := c.readData(buf, c.ss.policy.MaxMessageSize)
	if err != nil {
		// The connection broke or timed out mid-message: nothing was
		// acknowledged, and the session ends.
		c.ss.log.Info("smtp data aborted", "err", err, "from", c.ss.from)
		c.reset()
		c.readFailed(err)
		c.quit = true
		return
	}
	c.finish(buf, res)
}

// readResult is how reading a message ended.
type readResult uint8

const (
	readOK     readResult = iota
	readTooBig            // past the source's max-message-size
	readNoRoom            // the memory budget had no room for it
)

// finish hands a complete message to the session, replies with its
// outcome and ends the transaction.
func (c *inConn) finish(buf *bytes.Buffer, res readResult) {
	var err error
	switch {
	case res == readTooBig:
		err = c.ss.refuse(errTooBig, "data", "limit", int64(c.ss.policy.MaxMessageSize))
	case res == readNoRoom:
		err = c.ss.refuse(errNoMemory, "data", "buffered", c.s.mem.used.Load())
	default:
		err = c.ss.Data(buf.Bytes())
	}
	// Data's reply is an SMTPError even for the 250.
	if se, ok := err.(*smtp.SMTPError); ok && se.Code == 250 {
		c.bad, c.idle = 0, 0
	}
	if err != nil {
		c.replyErr(err)
	}
	c.reset()
}

// readData reads a message in the DATA format into buf, undoing dot
// stuffing, up to the terminating line. Only CRLF.CRLF ends it: a dot
// after a bare LF is content (SMTP smuggling relies on servers that
// disagree on this). Past limit bytes, or when the memory budget has no
// room for more, the message is dropped and the rest read and discarded.
func (c *inConn) readData(buf *bytes.Buffer, limit config.Size) (res readResult, err error) {
	afterCRLF := true
	// pieceCR: the previous piece of an overlong line ended in CR, so a
	// piece that is only LF completes a CRLF.
	pieceCR := false
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return res, err
		}
		whole := err == nil
		if afterCRLF && len(line) > 0 && line[0] == '.' {
			if whole && len(line) == 3 && line[1] == '\r' {
				return res, nil
			}
			line = line[1:]
		}
		afterCRLF = whole && (len(line) >= 2 && line[len(line)-2] == '\r' || len(line) == 1 && pieceCR)
		pieceCR = !whole && len(line) > 0 && line[len(line)-1] == '\r'
		if res != readOK {
			continue
		}
		switch {
		case limit != config.Unlimited && int64(buf.Len()+len(line)) > int64(limit):
			res = readTooBig
		case !c.room(buf, len(line)):
			res = readNoRoom
		default:
			buf.Write(line)
			continue
		}
		c.dropBody(buf)
	}
}

// chunk is BDAT (RFC 3030): the chunk follows the command at once, so it
// is read (or skipped) whatever the reply.
func (c *inConn) chunk(arg string) {
	f := strings.Fields(arg)
	var size uint64
	var err error
	if len(f) > 0 {
		size, err = strconv.ParseUint(f[0], 10, 63)
	}
	last := len(f) == 2 && strings.EqualFold(f[1], "LAST")
	if len(f) == 0 || err != nil || (len(f) == 2 && !last) || len(f) > 2 {
		// Without a size the chunk cannot be skipped: the stream is lost.
		c.reply(501, "5.5.4", "Syntax: BDAT size [LAST], closing connection")
		c.quit = true
		return
	}
	if c.bdat == nil && !c.readyForData() {
		c.skip(int64(size))
		return
	}
	if c.bdat == nil {
		c.bdat = c.s.getBuf()
		if !c.chargeFor(initialMem) {
			c.skip(int64(size))
			c.replyErr(c.ss.refuse(errNoMemory, "bdat", "buffered", c.s.mem.used.Load()))
			c.reset()
			return
		}
	}
	limit := c.ss.policy.MaxMessageSize
	// Compared this way round: the total of a huge size and what came
	// before could overflow an int64.
	if limit != config.Unlimited && int64(size) > int64(limit)-int64(c.bdat.Len()) {
		c.skip(int64(size))
		c.replyErr(c.ss.refuse(errTooBig, "bdat", "limit", int64(limit)))
		c.reset()
		return
	}
	// The chunk's size is known: its room is taken before it is read,
	// and a chunk that would exceed the budget is refused whole.
	if !c.room(c.bdat, int(size)) {
		c.skip(int64(size))
		c.replyErr(c.ss.refuse(errNoMemory, "bdat", "buffered", c.s.mem.used.Load(), "chunk", size))
		c.reset()
		return
	}
	// Read straight into the room made for it; Write then finds the
	// bytes in place.
	p := c.bdat.AvailableBuffer()[:size]
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.ss.log.Info("smtp bdat aborted", "err", err, "from", c.ss.from)
		c.reset()
		c.readFailed(err) // a timeout gets its 421, as in DATA
		c.quit = true
		return
	}
	c.bdat.Write(p)
	if !last {
		c.reply(250, "2.0.0", strconv.FormatUint(size, 10)+" octets received")
		return
	}
	buf := c.bdat
	c.bdat = nil
	defer c.s.putBuf(buf)
	c.finish(buf, readOK)
}

// skip drops n bytes of input: a refused chunk.
func (c *inConn) skip(n int64) {
	if _, err := c.br.Discard(int(n)); err != nil {
		c.readFailed(err) // a timeout gets its 421, as in DATA
		c.quit = true
	}
}

func (c *inConn) auth(arg string) {
	switch {
	case c.ss == nil:
		c.protocolError(503, "5.5.1", "Send EHLO first")
		return
	case c.ss.user != nil:
		c.protocolError(503, "5.5.1", "Already authenticated")
		return
	case c.ss.hasFrom:
		c.protocolError(503, "5.5.1", "AUTH not allowed during a mail transaction")
		return
	}
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 {
		c.protocolError(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
		return
	}
	srv, err := c.ss.Auth(strings.ToUpper(f[0]))
	if err != nil {
		c.replyErr(err)
		return
	}
	var resp []byte
	if len(f) == 2 {
		if resp, err = decodeSASL(f[1]); err != nil {
			c.protocolError(501, "5.5.2", "Invalid base64 data")
			return
		}
	}
	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				// A malformed exchange is a failed attempt like a wrong
				// password; it counts toward the failure rate.
				err = c.ss.authResult("", nil, false)
			}
			c.replyErr(err)
			return
		}
		if done {
			break
		}
		c.reply(334, "", base64.StdEncoding.EncodeToString(challenge))
		line, err := c.readLine(maxAuthLine)
		if err != nil {
			c.readFailed(err)
			c.quit = true
			return
		}
		if line == "*" {
			c.reply(501, "5.0.0", "Authentication cancelled")
			return
		}
		if resp, err = decodeSASL(line); err != nil {
			c.protocolError(501, "5.5.2", "Invalid base64 data")
			return
		}
	}
	c.reply(235, "2.7.0", "Authentication succeeded")
	// A known user now: it no longer counts as an untrusted client.
	c.cc.authenticated()
	if !c.authBy.IsZero() {
		c.authBy = time.Time{}
		c.setPhase()
	}
}

func decodeSASL(s string) ([]byte, error) {
	if s == "=" {
		return []byte{}, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

func (c *inConn) startTLS(arg string) {
	switch {
	case arg != "":
		c.protocolError(501, "5.5.4", "Syntax: STARTTLS")
		return
	case c.tls:
		c.protocolError(503, "5.5.1", "TLS already active")
		return
	case c.snap.tls == nil:
		c.protocolError(502, "5.5.1", "STARTTLS not available")
		return
	}
	// Anything the client sent after STARTTLS in the clear must not be
	// taken as sent under TLS (the STARTTLS command injection attack).
	if n := c.br.Buffered(); n > 0 {
		c.s.log.Warn("smtp input after STARTTLS discarded", "client", remoteIP(c.cc).String(), "bytes", n)
		c.br.Discard(n)
	}
	c.reply(220, "2.0.0", "Ready to start TLS")
	if err := c.bw.Flush(); err != nil {
		c.quit = true
		return
	}
	tc := tls.Server(c.conn, c.r.tlsCfg)
	tc.SetDeadline(c.deadline(c.s.opts.CommandTimeout))
	if err := tc.Handshake(); err != nil {
		c.s.log.Info("smtp tls handshake failed", "client", remoteIP(c.cc).String(), "err", err)
		c.quit = true
		return
	}
	tc.SetDeadline(time.Time{})
	// RFC 3207 §4.2: the session starts over, as if just connected.
	c.reset()
	if c.ss != nil {
		c.ss.Logout()
		c.ss = nil
	}
	c.conn, c.tls, c.helo, c.ehlo = tc, true, "", false
	c.setIO()
}

// cutPrefixFold is strings.CutPrefix ignoring ASCII case.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

// parsePath splits "<address> params" (RFC 5321 §4.1.2). A source route
// (@a,@b:) is dropped as §4.1.1.3 allows; a path without angle brackets
// is taken up to the first space, as lenient servers do.
func parsePath(s string) (addr, params string, err error) {
	s = strings.TrimLeft(s, " ")
	if !strings.HasPrefix(s, "<") {
		addr, params, _ = strings.Cut(s, " ")
		if addr == "" {
			return "", "", errors.New("empty path")
		}
		if hasControl(addr) {
			return "", "", errors.New("control character in path")
		}
		return addr, params, nil
	}
	inQuote := false
	for i := 1; i < len(s); i++ {
		switch ch := s[i]; {
		case ch == '\\' && inQuote:
			i++
		case ch == '"':
			inQuote = !inQuote
		case ch == '>' && !inQuote:
			addr = s[1:i]
			if strings.HasPrefix(addr, "@") {
				_, after, ok := strings.Cut(addr, ":")
				if !ok {
					return "", "", errors.New("bad source route")
				}
				addr = after
			}
			rest := s[i+1:]
			if rest != "" && rest[0] != ' ' {
				return "", "", errors.New("junk after path")
			}
			return addr, rest, nil
		case ch < ' ' || ch == 0x7f:
			return "", "", errors.New("control character in path")
		}
	}
	return "", "", errors.New("unterminated path")
}

// decodeXtext undoes xtext (RFC 3461 §4): "+HH" stands for one byte.
func decodeXtext(s string) (string, error) {
	if !strings.Contains(s, "+") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '+' {
			b.WriteByte(s[i])
			continue
		}
		if i+3 > len(s) {
			return "", errors.New("incomplete xtext escape")
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil || strings.ToUpper(s[i+1:i+3]) != s[i+1:i+3] {
			return "", errors.New("bad xtext escape")
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// decodeUTF8Xtext undoes utf-8-addr-xtext (RFC 6533 §3): "\x{HEX}"
// stands for one code point.
func decodeUTF8Xtext(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		if !strings.HasPrefix(s[i:], `\x{`) {
			b.WriteByte(s[i])
			i++
			continue
		}
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", errors.New("unterminated escape")
		}
		v, err := strconv.ParseUint(s[i+3:i+end], 16, 21)
		if err != nil || v > 0x10FFFF {
			return "", errors.New("bad escape")
		}
		b.WriteRune(rune(v))
		i += end + 1
	}
	return b.String(), nil
}

// hasControl reports an ASCII control character (CR, LF, NUL…) or DEL.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// parseNotify reads NOTIFY's comma list (RFC 3461 §4.1): NEVER alone, or
// any of SUCCESS, FAILURE, DELAY, each once.
func parseNotify(v string) ([]smtp.DSNNotify, bool) {
	var out []smtp.DSNNotify
	for _, f := range strings.Split(v, ",") {
		n := smtp.DSNNotify(strings.ToUpper(f))
		switch n {
		case smtp.DSNNotifyNever, smtp.DSNNotifySuccess, smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed:
		default:
			return nil, false
		}
		for _, seen := range out {
			if seen == n {
				return nil, false
			}
		}
		out = append(out, n)
	}
	if len(out) > 1 {
		for _, n := range out {
			if n == smtp.DSNNotifyNever {
				return nil, false
			}
		}
	}
	return out, true
}
