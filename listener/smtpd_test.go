package listener_test

// Protocol tests of the inbound SMTP engine (smtpd.go), end to end over
// real loopback sockets with raw SMTP, so that the exact bytes on the wire
// and the exact replies are what is checked:
//
//   - command sequence: MAIL before EHLO, RCPT before MAIL, DATA without a
//     transaction or without an accepted recipient, nested MAIL, RSET;
//   - command syntax: MAIL/RCPT parameters (unknown ones, NOTIFY, ORCPT,
//     ENVID as xtext, RET), quoted local parts, source routes, unknown
//     commands, EHLO without a name, overlong command lines, the limit on
//     bad commands;
//   - DATA: dot-stuffing, the SMTP smuggling defence (only CRLF.CRLF ends a
//     message), lines longer than the engine's 16 KB read buffer, messages
//     far larger than it spooled byte for byte (by DATA and BDAT);
//   - PIPELINING across two transactions in one write;
//   - STARTTLS: input pipelined after it is discarded (command injection),
//     the session starts over under TLS, no second STARTTLS;
//   - BDAT: out of sequence (the chunk is still skipped), over the size
//     limit, BDAT 0 LAST, DATA during BDAT, a malformed size;
//   - AUTH: cancel, bad base64, inside a transaction, twice;
//   - QUIT, HELO, and the command timeout.
//
// Replies are checked for their code and, where one is sent, their enhanced
// status code; accepted messages are read back from the spool.

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/queue"
)

// engineSession dials addr, reads the greeting and says EHLO.
func engineSession(t *testing.T, addr string) *rawConn {
	t.Helper()
	r := dialRaw(t, "", addr)
	r.mustReply(220)
	r.mustCmd(250, "EHLO client.example")
	return r
}

// write sends s as it is, in one write.
func (r *rawConn) write(s string) {
	r.t.Helper()
	r.conn.SetWriteDeadline(time.Now().Add(clientTimeout))
	if _, err := io.WriteString(r.conn, s); err != nil {
		r.t.Fatalf("write %.60q: %v", s, err)
	}
}

// want reads one reply and fails the test unless it is code with the
// enhanced status code enh ("" does not check it). It returns the text
// after the enhanced code.
func (r *rawConn) want(code int, enh string) string {
	r.t.Helper()
	msg := r.mustReply(code)
	if enh == "" {
		return msg
	}
	rest, ok := strings.CutPrefix(msg, enh+" ")
	if !ok {
		r.t.Fatalf("reply %d %q, want enhanced code %s", code, msg, enh)
	}
	return rest
}

// wantCmd sends the command line and checks its reply as want does.
func (r *rawConn) wantCmd(code int, enh, line string) string {
	r.t.Helper()
	r.conn.SetWriteDeadline(time.Now().Add(clientTimeout))
	if err := r.text.PrintfLine("%s", line); err != nil {
		r.t.Fatalf("send %q: %v", line, err)
	}
	got, msg, err := r.reply()
	if err != nil {
		r.t.Fatalf("reply to %q: %v", line, err)
	}
	if got != code {
		r.t.Fatalf("%.80q: want %d %s, got %d %s", line, code, enh, got, msg)
	}
	if enh != "" && !strings.HasPrefix(msg, enh+" ") {
		r.t.Fatalf("%.80q: want %d %s, got %d %s", line, code, enh, got, msg)
	}
	return strings.TrimPrefix(msg, enh+" ")
}

// engineAcceptedRE is the text of the 250 to a message, with or without
// its enhanced code (want and wantCmd return it without).
var engineAcceptedRE = regexp.MustCompile(`^(?:2\.0\.0 )?OK ([0-9a-f]{16})$`)

// acceptedID returns the queue id of a "250 2.0.0 OK <id>" reply's text.
func acceptedID(t *testing.T, msg string) queue.ID {
	t.Helper()
	m := engineAcceptedRE.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("250 reply %q does not carry a queue id", msg)
	}
	id, err := queue.ParseID(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// wantSpooledCount fails the test unless the spool holds n messages.
func wantSpooledCount(t *testing.T, ts *testServer, n int) {
	t.Helper()
	if got := ts.Queue.Totals().Messages; got != n {
		t.Fatalf("spool holds %d messages, want %d", got, n)
	}
}

// upgradeTLS runs the TLS handshake over r's connection (after a 220 to
// STARTTLS) and returns a raw client on the TLS connection.
func upgradeTLS(t *testing.T, r *rawConn) *rawConn {
	t.Helper()
	if n := r.text.R.Buffered(); n != 0 {
		t.Fatalf("the server said %d more bytes in the clear after its 220 to STARTTLS", n)
	}
	tc := tls.Client(r.conn, clientTLS(t))
	tc.SetDeadline(time.Now().Add(clientTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake after STARTTLS: %v", err)
	}
	tc.SetDeadline(time.Time{})
	return &rawConn{t: t, conn: tc, text: textproto.NewConn(tc)}
}

// plainAuth is an AUTH PLAIN command with the initial response.
func plainAuth(user, pass string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass))
}

// authConf: 127.0.0.1 relays without AUTH and may AUTH in the clear, so a
// transaction can be open when AUTH comes.
const authConf = `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
    allow-unencrypted-plain-auth yes
</source>
<smtp-user demo>
    password-hash {{.PasswordHash "demo-secret"}}
</smtp-user>
`

// smallConf: 127.0.0.1 relays messages of up to 10K.
const smallConf = `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
    max-message-size 10K
</source>
`

// rawMessage is the DATA of a message with the given body lines (each
// without its CRLF), terminator included.
func rawMessage(body ...string) string {
	return "From: <a@b.example>\r\nTo: <x@example.com>\r\nSubject: raw\r\n\r\n" + strings.Join(body, "\r\n") + "\r\n.\r\n"
}

// bodyOf returns the spooled message's body (after the header).
func bodyOf(t *testing.T, m spooledMessage) string {
	t.Helper()
	_, body, ok := strings.Cut(string(m.Body), "\r\n\r\n")
	if !ok {
		t.Fatalf("spooled message has no header/body separator:\n%s", m.Body)
	}
	return body
}

func TestEngineCommandsOutOfSequence(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)

	t.Run("MAIL before EHLO", func(t *testing.T) {
		r := dialRaw(t, "", ts.Addr("2525"))
		r.mustReply(220)
		r.wantCmd(503, "5.5.1", "MAIL FROM:<a@b.example>")
		r.wantCmd(503, "5.5.1", "RCPT TO:<x@example.com>")
		r.wantCmd(503, "5.5.1", "DATA")
		// HELO is enough to start.
		r.mustCmd(250, "HELO client.example")
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
	})
	t.Run("RCPT before MAIL", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(503, "5.5.1", "RCPT TO:<x@example.com>")
	})
	t.Run("DATA before MAIL", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(503, "5.5.1", "DATA")
		// Nothing was taken as message content.
		r.wantCmd(250, "2.0.0", "NOOP")
	})
	t.Run("DATA after MAIL without RCPT", func(t *testing.T) {
		// Out of sequence (503), unlike DATA after only refused RCPTs
		// (554, below), as Postfix answers.
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(503, "5.5.1", "DATA")
		r.wantCmd(250, "2.0.0", "NOOP")
	})
	t.Run("DATA when every RCPT was refused", func(t *testing.T) {
		r := dialRaw(t, "127.0.0.9", ts.Addr("2525")) // may not relay
		r.mustReply(220)
		r.mustCmd(250, "EHLO client.example")
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(550, "5.7.1", "RCPT TO:<x@example.com>")
		r.wantCmd(550, "5.7.1", "RCPT TO:<y@example.com>")
		r.wantCmd(554, "5.5.1", "DATA")
		// The refused DATA read no message: the next line is a command.
		r.wantCmd(250, "2.0.0", "NOOP")
	})
	t.Run("nested MAIL", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(503, "5.5.1", "MAIL FROM:<other@b.example>")
		// The first transaction is still open, with its sender.
		r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
		r.mustCmd(354, "DATA")
		id := acceptedID(t, r.wantCmd(250, "2.0.0", strings.TrimSuffix(rawMessage("nested"), "\r\n")))
		if m := ts.spooled(t, id); m.Envelope.Sender != "a@b.example" {
			t.Errorf("sender %q, want the first MAIL's a@b.example", m.Envelope.Sender)
		}
	})
	t.Run("RSET then a transaction", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(250, "2.1.0", "MAIL FROM:<old@b.example>")
		r.wantCmd(250, "2.1.5", "RCPT TO:<old@example.com>")
		r.wantCmd(250, "2.0.0", "RSET")
		// The reset transaction is gone: no recipient, no sender.
		r.wantCmd(503, "5.5.1", "RCPT TO:<x@example.com>")
		r.wantCmd(250, "2.1.0", "MAIL FROM:<new@b.example>")
		r.wantCmd(250, "2.1.5", "RCPT TO:<new@example.com>")
		r.mustCmd(354, "DATA")
		id := acceptedID(t, r.wantCmd(250, "2.0.0", strings.TrimSuffix(rawMessage("after RSET"), "\r\n")))
		m := ts.spooled(t, id)
		if m.Envelope.Sender != "new@b.example" || len(m.Recipients) != 1 || m.Recipients[0].Address != "new@example.com" {
			t.Errorf("spooled %q → %+v, want only the transaction after RSET", m.Envelope.Sender, m.Recipients)
		}
	})
}

func TestEngineCommandSyntax(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			setup      []string // commands answered 250 first
			line       string
			code       int
			enh, reply string
		}{
			{nil, "MAIL <a@b.example>", 501, "5.5.4", "Syntax: MAIL FROM:<address>"},
			{nil, "MAIL TO:<a@b.example>", 501, "5.5.4", ""},
			{nil, "MAIL FROM:<a@b.example", 501, "5.1.7", ""},
			{nil, "MAIL FROM:<a@b.example> FOO=bar", 555, "5.5.4", "Unsupported MAIL parameter FOO"},
			{nil, "MAIL FROM:<a@b.example> SIZE=big", 501, "5.5.4", ""},
			{nil, "MAIL FROM:<a@b.example> RET=ALL", 501, "5.5.4", ""},
			{nil, "MAIL FROM:<a@b.example> ENVID=a+2", 501, "5.5.4", ""},
			{nil, "MAIL FROM:<a@b.example> BODY=BINARYMIME", 501, "5.5.4", ""},
			{[]string{"MAIL FROM:<a@b.example>"}, "RCPT <x@example.com>", 501, "5.5.4", ""},
			{[]string{"MAIL FROM:<a@b.example>"}, "RCPT TO:<>", 501, "5.1.3", ""},
			{[]string{"MAIL FROM:<a@b.example>"}, "RCPT TO:<x@example.com> FOO=bar", 555, "5.5.4", "Unsupported RCPT parameter FOO"},
			{[]string{"MAIL FROM:<a@b.example>"}, "RCPT TO:<x@example.com> NOTIFY=NEVER,SUCCESS", 501, "5.5.4", "Bad NOTIFY parameter"},
			{[]string{"MAIL FROM:<a@b.example>"}, "RCPT TO:<x@example.com> NOTIFY=FAILURE,FAILURE", 501, "5.5.4", ""},
			{[]string{"MAIL FROM:<a@b.example>"}, "RCPT TO:<x@example.com> NOTIFY=SOMETIMES", 501, "5.5.4", ""},
			{[]string{"MAIL FROM:<a@b.example>"}, "RCPT TO:<x@example.com> ORCPT=x@example.com", 501, "5.5.4", "Bad ORCPT parameter"},
			{[]string{"MAIL FROM:<a@b.example>"}, "RCPT TO:<x@example.com> ORCPT=x-unknown;x@example.com", 501, "5.5.4", ""},
			{[]string{"MAIL FROM:<a@b.example>"}, "RCPT TO:<x@example.com> ORCPT=rfc822;x+zz@example.com", 501, "5.5.4", ""},
			{nil, "FROB now", 500, "5.5.2", "Command not recognized"},
			{nil, "EXPN staff", 502, "5.5.1", ""},
			{nil, "EHLO", 501, "5.5.4", ""},
			{nil, "HELO", 501, "5.5.4", ""},
			{nil, "STARTTLS", 502, "5.5.1", ""}, // no certificate in relayConf
		} {
			r := engineSession(t, ts.Addr("2525"))
			for _, s := range tc.setup {
				r.mustCmd(250, "%s", s)
			}
			msg := r.wantCmd(tc.code, tc.enh, tc.line)
			if tc.reply != "" && msg != tc.reply {
				t.Errorf("%q: reply text %q, want %q", tc.line, msg, tc.reply)
			}
			// A refused command leaves the session usable.
			r.wantCmd(250, "2.0.0", "NOOP")
		}
		wantSpooledCount(t, ts, 0)
	})

	t.Run("DSN parameters are spooled", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example> RET=FULL ENVID=id+2Bone+3Dtwo")
		r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;orig+2Bx@example.com")
		r.wantCmd(250, "2.1.5", "RCPT TO:<y@example.com> NOTIFY=NEVER")
		r.mustCmd(354, "DATA")
		m := ts.spooled(t, acceptedID(t, r.wantCmd(250, "2.0.0", strings.TrimSuffix(rawMessage("dsn"), "\r\n"))))
		if m.Envelope.EnvID != "id+one=two" {
			t.Errorf("EnvID %q, want the xtext decoded: id+one=two", m.Envelope.EnvID)
		}
		if m.Envelope.DSNRet != queue.RetFull {
			t.Errorf("DSNRet %v, want RetFull", m.Envelope.DSNRet)
		}
		if len(m.Recipients) != 2 {
			t.Fatalf("%d recipients, want 2", len(m.Recipients))
		}
		if rc := m.Recipients[0]; rc.ORcpt != "orig+x@example.com" || rc.Notify != queue.NotifySuccess|queue.NotifyDelay {
			t.Errorf("first recipient ORCPT %q NOTIFY %v", rc.ORcpt, rc.Notify)
		}
		if rc := m.Recipients[1]; rc.Notify != queue.NotifyNever {
			t.Errorf("second recipient NOTIFY %v, want NEVER", rc.Notify)
		}
	})

	t.Run("lower-case commands and parameters", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(250, "2.1.0", "mail from:<a@b.example> ret=hdrs body=8bitmime")
		r.wantCmd(250, "2.1.5", "rcpt to:<x@example.com> notify=failure")
		r.mustCmd(354, "data")
		m := ts.spooled(t, acceptedID(t, r.wantCmd(250, "2.0.0", strings.TrimSuffix(rawMessage("lower"), "\r\n"))))
		if m.Envelope.DSNRet != queue.RetHeaders || m.Recipients[0].Notify != queue.NotifyFailure {
			t.Errorf("RET %v NOTIFY %v", m.Envelope.DSNRet, m.Recipients[0].Notify)
		}
	})

	t.Run("paths", func(t *testing.T) {
		for _, tc := range []struct{ from, to, wantFrom, wantTo string }{
			{`<"john doe"@example.com>`, `<"jane > doe"@example.com>`, `"john doe"@example.com`, `"jane > doe"@example.com`},
			{`<@relay.example:s@b.example>`, `<@one.example,@two.example:x@example.com>`, "s@b.example", "x@example.com"},
			{`<>`, ` <x@example.com>`, "", "x@example.com"},
		} {
			r := engineSession(t, ts.Addr("2525"))
			r.wantCmd(250, "2.1.0", "MAIL FROM:"+tc.from)
			r.wantCmd(250, "2.1.5", "RCPT TO:"+tc.to)
			r.mustCmd(354, "DATA")
			m := ts.spooled(t, acceptedID(t, r.wantCmd(250, "2.0.0", strings.TrimSuffix(rawMessage("path"), "\r\n"))))
			if m.Envelope.Sender != tc.wantFrom || len(m.Recipients) != 1 || m.Recipients[0].Address != tc.wantTo {
				t.Errorf("MAIL FROM:%s RCPT TO:%s spooled as %q → %+v, want %q → %q",
					tc.from, tc.to, m.Envelope.Sender, m.Recipients, tc.wantFrom, tc.wantTo)
			}
			if tc.wantTo == "x@example.com" && m.Recipients[0].Domain != "example.com" {
				t.Errorf("domain %q", m.Recipients[0].Domain)
			}
		}
	})
}

func TestEngineOverlongCommandLineCloses(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	r := engineSession(t, ts.Addr("2525"))
	// 4096 bytes with the CRLF is the longest line taken.
	r.wantCmd(250, "2.0.0", "NOOP "+strings.Repeat("x", 4096-len("NOOP ")-2))
	// One more byte is too long: refused, and the connection closed.
	r.write("NOOP " + strings.Repeat("x", 4096-len("NOOP ")-1) + "\r\n")
	r.want(500, "5.5.2")
	r.waitClosed()

	// Well beyond the limit (but within the read buffer) likewise.
	r = engineSession(t, ts.Addr("2525"))
	r.write("MAIL FROM:<" + strings.Repeat("a", 6000) + "@b.example>\r\n")
	r.want(500, "5.5.2")
	r.waitClosed()
}

// A client still sending when it is hung up on gets the last reply and
// an orderly end, not a reset that could destroy the reply unread: the
// server shuts its side first and drops the rest of the input.
func TestEngineHangUpOnSendingClientKeepsTheReply(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	for range 3 {
		r := engineSession(t, ts.Addr("2525"))
		sent := make(chan error, 1)
		go func() {
			// Far more than the server reads before it refuses the line.
			_, err := io.WriteString(r.conn, "NOOP "+strings.Repeat("x", 300<<10))
			sent <- err
		}()
		r.want(500, "5.5.2")
		r.conn.SetReadDeadline(time.Now().Add(clientTimeout))
		if _, err := r.text.ReadLine(); !errors.Is(err, io.EOF) {
			t.Fatalf("after the refusal: %v, want an orderly close (EOF)", err)
		}
		if err := <-sent; err != nil {
			t.Errorf("the client's write failed: %v", err)
		}
	}
}

// Once BDAT has begun, the envelope is complete (RFC 3030 §2): a RCPT is
// refused and the message keeps the recipients it had.
func TestEngineRcptDuringBDATRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	r := engineSession(t, ts.Addr("2525"))
	r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
	r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
	msg := rawMessage("chunked")
	msg = strings.TrimSuffix(msg, ".\r\n")
	r.write(fmt.Sprintf("BDAT %d\r\n%s", 10, msg[:10]))
	r.want(250, "2.0.0")
	r.wantCmd(503, "5.5.1", "RCPT TO:<y@example.com>")
	r.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(msg)-10, msg[10:]))
	m := ts.spooled(t, acceptedID(t, r.want(250, "2.0.0")))
	if len(m.Recipients) != 1 || m.Recipients[0].Address != "x@example.com" {
		t.Errorf("recipients %+v, want only x@example.com", m.Recipients)
	}
}

// Control characters never get into the envelope, the Received header or
// the logs, with or without angle brackets.
func TestEngineControlCharactersRefused(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	r := dialRaw(t, "", ts.Addr("2525"))
	r.mustReply(220)
	r.wantCmd(501, "5.5.4", "EHLO bad\x00name")
	r.wantCmd(501, "5.5.4", "HELO bad\x01name")
	r.wantCmd(250, "", "EHLO good.example")
	r.wantCmd(501, "5.1.7", "MAIL FROM:a\x00b@b.example")
	r.wantCmd(501, "5.1.7", "MAIL FROM:<a\x7fb@b.example>")
	r.wantCmd(250, "2.1.0", "MAIL FROM:a@b.example")
	r.wantCmd(501, "5.1.3", "RCPT TO:x\x0by@example.com")
	r.wantCmd(250, "2.1.5", "RCPT TO:x@example.com")
}

func TestEngineTooManyBadCommandsCloses(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	r := engineSession(t, ts.Addr("2525"))
	for i := 1; i < 20; i++ {
		r.wantCmd(500, "5.5.2", fmt.Sprintf("BOGUS %d", i))
	}
	// The 20th gets its reply, then 421, then the connection closes.
	r.wantCmd(500, "5.5.2", "BOGUS 20")
	r.want(421, "4.7.0")
	r.waitClosed()

	// Another connection starts from zero.
	r = engineSession(t, ts.Addr("2525"))
	for i := 1; i < 20; i++ {
		r.wantCmd(500, "5.5.2", "BOGUS")
	}
	r.wantCmd(250, "2.0.0", "NOOP")
}

// Refusals by policy count toward the limit like malformed commands; an
// accepted message starts the count again, so a bulk sender whose list
// holds bad addresses is not cut off while its mail goes through.
func TestEngineRefusalsCountUntilMailIsAccepted(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	r := dialRaw(t, "127.0.0.9", ts.Addr("2525")) // may not relay
	r.mustReply(220)
	r.mustCmd(250, "EHLO client.example")
	r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
	for i := 1; i < 20; i++ {
		r.wantCmd(550, "5.7.1", fmt.Sprintf("RCPT TO:<x%d@example.com>", i))
	}
	r.wantCmd(550, "5.7.1", "RCPT TO:<x20@example.com>")
	r.want(421, "4.7.0")
	r.waitClosed()

	r = engineSession(t, ts.Addr("2525"))
	r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
	for i := 1; i < 20; i++ {
		r.wantCmd(501, "5.1.3", fmt.Sprintf("RCPT TO:<bad%d>", i))
	}
	// 19 refusals: the message still goes through, and clears them.
	r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
	r.mustCmd(354, "DATA")
	r.write(rawMessage("counted"))
	r.want(250, "2.0.0")
	for i := 1; i < 20; i++ {
		r.wantCmd(500, "5.5.2", "BOGUS")
	}
	r.wantCmd(250, "2.0.0", "NOOP")
}

func TestEngineDataDotStuffing(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	r := engineSession(t, ts.Addr("2525"))
	r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
	r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
	r.mustCmd(354, "DATA")
	r.write(rawMessage("first", "..leading dot", "..", "...", ". space", "last"))
	m := ts.spooled(t, acceptedID(t, r.want(250, "2.0.0")))
	if got, want := bodyOf(t, m), "first\r\n.leading dot\r\n.\r\n..\r\n space\r\nlast\r\n"; got != want {
		t.Errorf("spooled body %q, want %q", got, want)
	}
	r.wantCmd(221, "2.0.0", "QUIT")
	r.waitClosed()
}

// TestEngineDataSmuggling: a dot line that is not between two CRLFs does
// not end the message (SMTP smuggling, CVE-2023-51764 and kin): what
// follows it is content, never commands of a second transaction.
func TestEngineDataSmuggling(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, sep string }{
		{"bare LF before the dot", "\n.\r\n"},
		{"bare LF after the dot", "\r\n.\n"},
		{"bare LF on both sides", "\n.\n"},
		{"bare CR before the dot", "\r.\r\n"},
		{"bare CR on both sides", "\r.\r"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := startServer(t, relayConf)
			r := engineSession(t, ts.Addr("2525"))
			r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
			r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
			r.mustCmd(354, "DATA")
			smuggled := "MAIL FROM:<evil@b.example>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled text\r\n"
			r.write("From: <a@b.example>\r\nSubject: s\r\n\r\nbefore" + tc.sep + smuggled + ".\r\nQUIT\r\n")
			id := acceptedID(t, r.want(250, "2.0.0"))
			// The next reply is QUIT's: the server saw no second
			// transaction.
			r.want(221, "2.0.0")
			r.waitClosed()
			wantSpooledCount(t, ts, 1)
			m := ts.spooled(t, id)
			body := bodyOf(t, m)
			if !strings.HasPrefix(body, "before") || !strings.HasSuffix(body, smuggled) {
				t.Errorf("spooled body %q does not hold everything up to CRLF.CRLF", body)
			}
			// A CR that does not start a CRLF is spooled as a space, so no
			// server further on can take it as a line end.
			if strings.Count(body, "\r") != strings.Count(body, "\r\n") {
				t.Errorf("spooled body %q keeps a stray CR", body)
			}
			if strings.HasPrefix(tc.sep, "\r.") && !strings.HasPrefix(body, "before .") {
				t.Errorf("spooled body %q, want the stray CR before the dot as a space", body)
			}
			if len(m.Recipients) != 1 || m.Recipients[0].Address != "x@example.com" {
				t.Errorf("recipients %+v", m.Recipients)
			}
		})
	}
}

// TestEngineDataLongLines sends body lines longer than the engine's 16 KB
// read buffer, so a line arrives in several pieces; among them one whose
// CRLF straddles the buffer's end (16383 bytes and CR fill it, LF comes
// next). The line after each must still be seen as starting a line: its
// dot-stuffing undone, and a lone dot there ends the message.
func TestEngineDataLongLines(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	for _, n := range []int{16382, 16383, 16384, 2*16384 - 1, 40000} {
		long := strings.Repeat("x", n-1) + "y"
		for _, after := range []string{"..after", ""} {
			r := engineSession(t, ts.Addr("2525"))
			r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
			r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
			r.mustCmd(354, "DATA")
			lines := []string{"start", long}
			want := "start\r\n" + long + "\r\n"
			if after != "" {
				lines = append(lines, after)
				want += after[1:] + "\r\n"
			}
			r.write(rawMessage(lines...))
			code, msg, err := r.reply()
			if err != nil {
				t.Fatalf("line of %d bytes, then %q: no reply to the end of DATA: %v", n, after, err)
			}
			if code != 250 {
				t.Fatalf("line of %d bytes, then %q: end of DATA got %d %s", n, after, code, msg)
			}
			if got := bodyOf(t, ts.spooled(t, acceptedID(t, msg))); got != want {
				t.Errorf("line of %d bytes, then %q: spooled body of %d bytes differs from the %d sent (tail %q, want %q)",
					n, after, len(got), len(want), got[max(0, len(got)-20):], want[max(0, len(want)-20):])
			}
			r.wantCmd(250, "2.0.0", "NOOP")
		}
	}
}

// TestEngineLargeMessageSpooledIntact sends a message far larger than the
// 4 KB the session reads its header with, by DATA and by BDAT: every body
// line must reach the spool, in order (each line is numbered, so a lost
// stretch shows).
func TestEngineLargeMessageSpooledIntact(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	var lines []string
	for i := range 2000 {
		lines = append(lines, fmt.Sprintf("line %04d of the large message, padded to about fifty bytes", i))
	}
	want := strings.Join(lines, "\r\n") + "\r\n"
	check := func(how string, id queue.ID) {
		t.Helper()
		if got := bodyOf(t, ts.spooled(t, id)); got != want {
			first := 0
			for first < min(len(got), len(want)) && got[first] == want[first] {
				first++
			}
			t.Errorf("%s: spooled body of %d bytes, sent %d; they differ from byte %d (%.60q)", how, len(got), len(want), first, got[first:])
		}
	}

	r := engineSession(t, ts.Addr("2525"))
	r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
	r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
	r.mustCmd(354, "DATA")
	r.write(rawMessage(lines...))
	check("DATA", acceptedID(t, r.want(250, "2.0.0")))

	r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
	r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
	msg := strings.TrimSuffix(rawMessage(lines...), ".\r\n")
	r.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(msg), msg))
	check("BDAT", acceptedID(t, r.want(250, "2.0.0")))
}

func TestEnginePipeliningTwoTransactions(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	r := engineSession(t, ts.Addr("2525"))
	r.write("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<y@example.com>\r\nDATA\r\n")
	r.want(250, "2.1.0")
	r.want(250, "2.1.5")
	r.want(250, "2.1.5")
	r.want(354, "")
	// The first body, the whole second transaction and QUIT in one write.
	r.write(rawMessage("first message") +
		"MAIL FROM:<c@d.example>\r\nRCPT TO:<z@example.com>\r\nDATA\r\n" +
		rawMessage("second message") +
		"QUIT\r\n")
	id1 := acceptedID(t, r.want(250, "2.0.0"))
	r.want(250, "2.1.0")
	r.want(250, "2.1.5")
	r.want(354, "")
	id2 := acceptedID(t, r.want(250, "2.0.0"))
	r.want(221, "2.0.0")
	r.waitClosed()

	if id1 == id2 {
		t.Fatalf("both messages got id %s", id1)
	}
	wantSpooledCount(t, ts, 2)
	m1, m2 := ts.spooled(t, id1), ts.spooled(t, id2)
	if m1.Envelope.Sender != "a@b.example" || len(m1.Recipients) != 2 || bodyOf(t, m1) != "first message\r\n" {
		t.Errorf("first message: %q → %+v, body %q", m1.Envelope.Sender, m1.Recipients, bodyOf(t, m1))
	}
	if m2.Envelope.Sender != "c@d.example" || len(m2.Recipients) != 1 || m2.Recipients[0].Address != "z@example.com" ||
		bodyOf(t, m2) != "second message\r\n" {
		t.Errorf("second message: %q → %+v, body %q", m2.Envelope.Sender, m2.Recipients, bodyOf(t, m2))
	}
}

func TestEngineStartTLSDiscardsPipelinedInput(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	r := engineSession(t, ts.Addr("587"))
	// The injection: NOOP rides in the same packet as STARTTLS, in the
	// clear, hoping to be taken as said under TLS.
	r.write("STARTTLS\r\nNOOP\r\n")
	r.want(220, "2.0.0")
	tr := upgradeTLS(t, r)
	// The first reply under TLS is the one to our EHLO, not a 250 to the
	// injected NOOP.
	if msg := tr.mustCmd(250, "EHLO client.example"); !strings.HasPrefix(msg, testHostname+" Hello client.example\n") {
		t.Fatalf("first reply under TLS %q, want the EHLO reply (the injected NOOP was answered?)", msg)
	}
	tr.wantCmd(250, "2.0.0", "NOOP")
	// No second STARTTLS.
	tr.wantCmd(503, "5.5.1", "STARTTLS")
	// AUTH works under TLS, once.
	tr.wantCmd(235, "2.7.0", plainAuth("demo", "demo-secret"))
	tr.wantCmd(503, "5.5.1", plainAuth("demo", "demo-secret"))
	tr.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
	tr.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
	tr.mustCmd(354, "DATA")
	m := ts.spooled(t, acceptedID(t, tr.wantCmd(250, "2.0.0", strings.TrimSuffix(rawMessage("under TLS"), "\r\n"))))
	if m.Envelope.AuthUser != "demo" {
		t.Errorf("AuthUser %q", m.Envelope.AuthUser)
	}

	// On the implicit-TLS listener STARTTLS is refused the same way.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: clientTimeout}, "tcp", ts.Addr("465"), clientTLS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ir := &rawConn{t: t, conn: conn, text: textproto.NewConn(conn)}
	ir.mustReply(220)
	ir.mustCmd(250, "EHLO client.example")
	ir.wantCmd(503, "5.5.1", "STARTTLS")
}

func TestEngineStartTLSStartsTheSessionOver(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	r := engineSession(t, ts.Addr("2525")) // 127.0.0.1 relays here
	r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
	r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
	r.wantCmd(220, "2.0.0", "STARTTLS")
	tr := upgradeTLS(t, r)
	// No EHLO under TLS yet, and the transaction from the clear is gone.
	tr.wantCmd(503, "5.5.1", "DATA")
	tr.wantCmd(503, "5.5.1", "MAIL FROM:<a@b.example>")
	tr.mustCmd(250, "EHLO client.example")
	tr.wantCmd(503, "5.5.1", "RCPT TO:<x@example.com>")
	tr.wantCmd(503, "5.5.1", "DATA")
	wantSpooledCount(t, ts, 0)
}

func TestEngineBDAT(t *testing.T) {
	t.Parallel()
	ts := startServer(t, smallConf)

	t.Run("before MAIL the chunk is skipped", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		// Were the chunk read as commands, QUIT would end the session.
		r.write("BDAT 6\r\nQUIT\r\n")
		r.want(503, "5.5.1")
		r.wantCmd(250, "2.0.0", "NOOP")
		// Before EHLO too.
		r = dialRaw(t, "", ts.Addr("2525"))
		r.mustReply(220)
		r.write("BDAT 6 LAST\r\nQUIT\r\n")
		r.want(503, "5.5.1")
		r.wantCmd(250, "2.0.0", "NOOP")
		wantSpooledCount(t, ts, 0)
	})

	t.Run("over the size limit", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
		big := messageOfSize(12 * 1024)
		r.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(big), big))
		r.want(552, "5.3.4")
		// The transaction is over; the next one goes through.
		r.wantCmd(503, "5.5.1", "RCPT TO:<x@example.com>")
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
		small := message()
		r.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(small), small))
		id := acceptedID(t, r.want(250, "2.0.0"))

		// Over the limit only with the second chunk.
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
		half := messageOfSize(6 * 1024)
		r.write(fmt.Sprintf("BDAT %d\r\n%s", len(half), half))
		r.want(250, "2.0.0")
		r.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(half), half))
		r.want(552, "5.3.4")
		r.wantCmd(250, "2.0.0", "NOOP")
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
		r.mustCmd(354, "DATA")
		id2 := acceptedID(t, r.wantCmd(250, "2.0.0", strings.TrimSuffix(rawMessage("after BDAT 552"), "\r\n")))

		wantSpooledCount(t, ts, 2)
		if got := bodyOf(t, ts.spooled(t, id)); got != "Hello from the listener tests.\r\n" {
			t.Errorf("BDAT message body %q", got)
		}
		if got := bodyOf(t, ts.spooled(t, id2)); got != "after BDAT 552\r\n" {
			t.Errorf("DATA message body %q", got)
		}
	})

	t.Run("a chunk size that overflows the running total", func(t *testing.T) {
		// After one byte, a chunk of 2^63-1 bytes takes the total past
		// the largest int64: it must still count as over the limit, not
		// wrap around and be read into memory as it comes.
		spooled := ts.Queue.Totals().Messages
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
		r.write("BDAT 1\r\nX")
		r.want(250, "2.0.0")
		r.write("BDAT 9223372036854775807 LAST\r\n" + messageOfSize(64*1024))
		// The chunk cannot end: the client gives up sending, and the
		// refusal is what it is told.
		if err := r.conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		r.want(552, "5.3.4")
		r.waitClosed()
		wantSpooledCount(t, ts, spooled)
	})

	t.Run("BDAT 0 LAST ends the message", func(t *testing.T) {
		ts := startServer(t, relayConf)
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
		// Binary-safe: a chunk is taken as it is, no dot-stuffing, no line
		// ends required.
		body := "From: <a@b.example>\r\nSubject: bdat\r\n\r\n..not stuffed\r\n.\r\nno final CRLF"
		r.write(fmt.Sprintf("BDAT %d\r\n%s", len(body), body))
		if msg := r.want(250, "2.0.0"); msg != fmt.Sprintf("%d octets received", len(body)) {
			t.Errorf("chunk reply %q", msg)
		}
		r.wantCmd(250, "2.0.0", "BDAT 0 LAST")
		wantSpooledCount(t, ts, 1)
		m := allSpooled(t, ts.Queue)[0]
		if got := bodyOf(t, m); got != "..not stuffed\r\n.\r\nno final CRLF" {
			t.Errorf("spooled body %q", got)
		}
	})

	t.Run("DATA during BDAT", func(t *testing.T) {
		ts := startServer(t, relayConf)
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
		first, second := "From: <a@b.example>\r\nSubject: mixed\r\n\r\none ", "two\r\n"
		r.write(fmt.Sprintf("BDAT %d\r\n%s", len(first), first))
		r.want(250, "2.0.0")
		r.wantCmd(503, "5.5.1", "DATA")
		// The transfer goes on after the refused DATA.
		r.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(second), second))
		r.want(250, "2.0.0")
		all := allSpooled(t, ts.Queue)
		if len(all) != 1 || bodyOf(t, all[0]) != "one two\r\n" {
			t.Fatalf("spooled %d messages, want one with body \"one two\\r\\n\"", len(all))
		}
	})

	t.Run("malformed size closes", func(t *testing.T) {
		for _, line := range []string{"BDAT ten", "BDAT", "BDAT 10 FIRST", "BDAT -1 LAST", "BDAT 1 LAST more"} {
			r := engineSession(t, ts.Addr("2525"))
			r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
			r.wantCmd(250, "2.1.5", "RCPT TO:<x@example.com>")
			r.wantCmd(501, "5.5.4", line)
			r.waitClosed()
		}
	})
}

func TestEngineAuthErrors(t *testing.T) {
	t.Parallel()
	ts := startServer(t, authConf)
	b64 := base64.StdEncoding.EncodeToString

	t.Run("cancel", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.mustCmd(334, "AUTH LOGIN")
		r.wantCmd(501, "5.0.0", "*")
		r.mustCmd(334, "AUTH LOGIN")
		r.mustCmd(334, "%s", b64([]byte("demo")))
		r.wantCmd(501, "5.0.0", "*")
		// Nothing of the cancelled exchanges is left over.
		r.wantCmd(235, "2.7.0", plainAuth("demo", "demo-secret"))
	})
	t.Run("bad base64", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(501, "5.5.2", "AUTH PLAIN !!not-base64!!")
		r.mustCmd(334, "AUTH LOGIN")
		r.wantCmd(501, "5.5.2", "%%%")
		r.wantCmd(235, "2.7.0", plainAuth("demo", "demo-secret"))
	})
	t.Run("long response", func(t *testing.T) {
		// RFC 4954 §4 allows SASL response lines of 12288 octets, longer
		// than a command line: this one is refused as a wrong password,
		// not as an overlong line.
		r := engineSession(t, ts.Addr("2525"))
		r.mustCmd(334, "AUTH PLAIN")
		long := b64([]byte("\x00demo\x00" + strings.Repeat("p", 9000)))
		if len(long) <= 4096 || len(long) > 12288 {
			t.Fatalf("response of %d bytes", len(long))
		}
		r.wantCmd(535, "5.7.8", long)
		r.wantCmd(235, "2.7.0", plainAuth("demo", "demo-secret"))
	})
	t.Run("syntax", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(501, "5.5.4", "AUTH")
		r.wantCmd(501, "5.5.4", "AUTH PLAIN a b")
		r.wantCmd(504, "5.7.4", "AUTH NOSUCHMECH")
		r.wantCmd(235, "2.7.0", plainAuth("demo", "demo-secret"))
	})
	t.Run("before EHLO", func(t *testing.T) {
		r := dialRaw(t, "", ts.Addr("2525"))
		r.mustReply(220)
		r.wantCmd(503, "5.5.1", plainAuth("demo", "demo-secret"))
	})
	t.Run("during a transaction", func(t *testing.T) {
		r := engineSession(t, ts.Addr("2525"))
		r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
		r.wantCmd(503, "5.5.1", plainAuth("demo", "demo-secret"))
		r.wantCmd(250, "2.0.0", "RSET")
		r.wantCmd(235, "2.7.0", plainAuth("demo", "demo-secret"))
		// Once only.
		r.wantCmd(503, "5.5.1", plainAuth("demo", "demo-secret"))
	})
}

// TestEngineAuthTwiceRefusedBeforeExchange checks that a second AUTH is
// refused at once, without a challenge.
func TestEngineAuthTwiceRefusedBeforeExchange(t *testing.T) {
	t.Parallel()
	ts := startServer(t, authConf)
	r := engineSession(t, ts.Addr("2525"))
	r.wantCmd(235, "2.7.0", plainAuth("demo", "demo-secret"))
	r.wantCmd(503, "5.5.1", "AUTH LOGIN")
	r.wantCmd(250, "2.0.0", "NOOP")
}

func TestEngineQuitAndHelo(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)

	r := dialRaw(t, "", ts.Addr("2525"))
	r.mustReply(220)
	r.conn.SetWriteDeadline(time.Now().Add(clientTimeout))
	if err := r.text.PrintfLine("HELO client.example"); err != nil {
		t.Fatal(err)
	}
	r.conn.SetReadDeadline(time.Now().Add(clientTimeout))
	line, err := r.text.ReadLine()
	if err != nil {
		t.Fatal(err)
	}
	// One line, no extensions, no enhanced code.
	if want := "250 " + testHostname + " Hello client.example"; line != want {
		t.Fatalf("HELO reply %q, want %q", line, want)
	}
	// Nothing else came: the next reply is NOOP's.
	r.wantCmd(250, "2.0.0", "NOOP")
	r.wantCmd(250, "2.1.0", "MAIL FROM:<a@b.example>")
	if msg := r.wantCmd(221, "2.0.0", "QUIT"); !strings.HasPrefix(msg, testHostname+" ") {
		t.Errorf("QUIT reply %q", msg)
	}
	r.waitClosed()
	wantSpooledCount(t, ts, 0)
}

func TestEngineIdleClientTimesOut(t *testing.T) {
	t.Parallel()
	ts := startServerWith(t, relayConf, serverOpts{CommandTimeout: 300 * time.Millisecond})

	// Idle after the greeting.
	r := dialRaw(t, "", ts.Addr("2525"))
	r.mustReply(220)
	if msg := r.want(421, "4.4.2"); !strings.Contains(msg, "timeout") {
		t.Errorf("421 text %q", msg)
	}
	r.waitClosed()

	// Idle in the middle of DATA: everything up to part of the message
	// goes in one write, so the only wait is the one that times out.
	r = dialRaw(t, "", ts.Addr("2525"))
	r.write("EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nSubject: cut\r\n\r\npartial")
	r.mustReply(220)
	r.mustReply(250)
	r.want(250, "2.1.0")
	r.want(250, "2.1.5")
	r.want(354, "")
	r.want(421, "4.4.2")
	r.waitClosed()

	// Idle in the middle of a BDAT chunk, taken or skipped.
	for _, before := range []string{"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.com>\r\n", ""} {
		r = dialRaw(t, "", ts.Addr("2525"))
		r.write("EHLO client.example\r\n" + before + "BDAT 100 LAST\r\npartial")
		r.mustReply(220)
		r.mustReply(250)
		if before != "" {
			r.want(250, "2.1.0")
			r.want(250, "2.1.5")
		} else {
			r.want(503, "5.5.1") // refused: the chunk is being skipped
		}
		r.want(421, "4.4.2")
		r.waitClosed()
	}
	wantSpooledCount(t, ts, 0)
}
