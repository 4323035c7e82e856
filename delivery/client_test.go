package delivery

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// scripted is a raw SMTP server on 127.0.0.1 that runs one test's script
// for its one connection and reports the script's error, if any, on done.
type scripted struct {
	ln   net.Listener
	done chan error
}

// serverConn is the server side of a scripted session.
type serverConn struct {
	c  net.Conn
	br *bufio.Reader
}

// line reads one command line without its CRLF.
func (s *serverConn) line() (string, error) {
	s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	l, err := s.br.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err
}

// expect reads a line that must start with prefix.
func (s *serverConn) expect(prefix string) (string, error) {
	l, err := s.line()
	if err != nil {
		return l, fmt.Errorf("waiting for %q: %w", prefix, err)
	}
	if !strings.HasPrefix(l, prefix) {
		return l, fmt.Errorf("got %q, want %q…", l, prefix)
	}
	return l, nil
}

// expectSeq reads one line per prefix, in order.
func (s *serverConn) expectSeq(prefixes ...string) error {
	for _, p := range prefixes {
		if _, err := s.expect(p); err != nil {
			return err
		}
	}
	return nil
}

func (s *serverConn) say(lines ...string) {
	s.c.Write([]byte(strings.Join(lines, "\r\n") + "\r\n"))
}

// data reads a message up to the final dot, as sent (still dot-stuffed).
func (s *serverConn) data() (string, error) {
	var b strings.Builder
	for {
		s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		l, err := s.br.ReadString('\n')
		if err != nil {
			return b.String(), err
		}
		if l == ".\r\n" {
			return b.String(), nil
		}
		b.WriteString(l)
	}
}

func startScripted(t *testing.T, script func(s *serverConn) error) *scripted {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sc := &scripted{ln: ln, done: make(chan error, 1)}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sc.done <- err
			return
		}
		defer c.Close()
		sc.done <- script(&serverConn{c: c, br: bufio.NewReader(c)})
	}()
	t.Cleanup(func() { ln.Close() })
	return sc
}

// wait returns the script's verdict.
func (sc *scripted) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-sc.done:
		if err != nil {
			t.Fatalf("server script: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server script did not finish")
	}
}

// dialScripted opens an outConn to sc with the default policy.
func dialScripted(t testing.TB, sc *scripted) *outConn {
	t.Helper()
	pol := config.DefaultDomainSettings()
	pol.UseStartTLS.Value = false
	ap := netip.MustParseAddrPort(sc.ln.Addr().String())
	oc, err := open(context.Background(), target{host: "mx.test", ip: ap.Addr(), port: int(ap.Port())},
		connOptions{ehlo: "tern.test", pol: &pol, dial: netDial})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return oc
}

// greet is the start of every script: greeting and EHLO with caps.
func greet(s *serverConn, caps ...string) error {
	s.say("220 mx.test ESMTP")
	if _, err := s.expect("EHLO tern.test"); err != nil {
		return err
	}
	lines := []string{"250-mx.test"}
	for _, c := range caps {
		lines = append(lines, "250-"+c)
	}
	lines[len(lines)-1] = "250 " + strings.TrimPrefix(lines[len(lines)-1], "250-")
	s.say(lines...)
	return nil
}

func rcpts(addrs ...string) []queue.RecipientState {
	out := make([]queue.RecipientState, len(addrs))
	for i, a := range addrs {
		out[i] = queue.RecipientState{Recipient: queue.Recipient{Address: a}, N: i}
	}
	return out
}

// With PIPELINING, MAIL, every RCPT and DATA arrive before the server has
// answered anything; a refused recipient keeps its reply and the others
// are delivered; the body is dot-stuffed with CRLF line ends.
func TestClientPipelines(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING", "SIZE 1000000", "DSN"); err != nil {
			return err
		}
		// Nothing is answered until DATA has arrived: a client waiting for
		// MAIL's reply would stall here and fail the test.
		mail, err := s.expect("MAIL FROM:<s@example.org> SIZE=")
		if err != nil {
			return err
		}
		if !strings.Contains(mail, " RET=HDRS") || !strings.Contains(mail, " ENVID=a+2Bb+3Dc") {
			return fmt.Errorf("MAIL %q lacks RET=HDRS ENVID=a+2Bb+3Dc", mail)
		}
		r1, err := s.expect("RCPT TO:<a@x.test>")
		if err != nil {
			return err
		}
		if !strings.HasSuffix(r1, " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+2Bx@x.test") {
			return fmt.Errorf("RCPT %q lacks its DSN parameters", r1)
		}
		if _, err := s.expect("RCPT TO:<b@x.test>"); err != nil {
			return err
		}
		if _, err := s.expect("DATA"); err != nil {
			return err
		}
		s.say("250 2.1.0 ok", "250 2.1.5 ok", "550 5.1.1 no such user b", "354 go on")
		body, err := s.data()
		if err != nil {
			return err
		}
		if want := "Subject: t\r\n\r\n..dot line\r\nbare lf\r\n"; body != want {
			return fmt.Errorf("body %q, want %q", body, want)
		}
		s.say("250 2.0.0 queued as X1")
		if _, err := s.expect("QUIT"); err != nil {
			return err
		}
		s.say("221 bye")
		return nil
	})
	oc := dialScripted(t, sc)
	env := queue.Envelope{Sender: "s@example.org", EnvID: "a+b=c", DSNRet: queue.RetHeaders}
	rs := rcpts("a@x.test", "b@x.test")
	rs[0].Notify, rs[0].ORcpt = queue.NotifySuccess|queue.NotifyFailure, "A+x@x.test"
	res := oc.send(env, rs, []byte("Subject: t\r\n\r\n.dot line\nbare lf"))
	if res[0].code != 250 || res[0].text != "250 2.0.0 queued as X1" {
		t.Errorf("a@x.test: %d %q", res[0].code, res[0].text)
	}
	if res[1].code != 550 || res[1].text != "550 5.1.1 no such user b" || !res[1].atRcpt {
		t.Errorf("b@x.test: %+v", res[1])
	}
	oc.close()
	sc.wait(t)
}

// Without PIPELINING each command waits for the previous reply.
func TestClientWithoutPipelining(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "SIZE"); err != nil {
			return err
		}
		for _, cmd := range []string{"MAIL FROM:<s@example.org>", "RCPT TO:<a@x.test>", "DATA"} {
			if _, err := s.expect(cmd); err != nil {
				return err
			}
			if n := s.br.Buffered(); n > 0 {
				return fmt.Errorf("%d bytes came after %q before its reply", n, cmd)
			}
			if cmd == "DATA" {
				s.say("354 go on")
			} else {
				s.say("250 ok")
			}
		}
		if _, err := s.data(); err != nil {
			return err
		}
		s.say("250 2.0.0 ok")
		return nil
	})
	oc := dialScripted(t, sc)
	res := oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("a@x.test"), []byte("Subject: t\r\n\r\nhi\r\n"))
	if res[0].code != 250 {
		t.Errorf("result %+v", res[0])
	}
	sc.wait(t)
}

// A refused MAIL in a pipelined transaction: every recipient gets MAIL's
// reply, the replies of the pipelined commands are consumed, and the next
// transaction on the same connection reads its own replies.
func TestClientPipelinedMailRefused(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		for _, cmd := range []string{"MAIL FROM:<bad@example.org>", "RCPT TO:<a@x.test>", "RCPT TO:<b@x.test>", "DATA"} {
			if _, err := s.expect(cmd); err != nil {
				return err
			}
		}
		s.say("553 5.1.8 sender refused", "503 5.5.1 no MAIL", "503 5.5.1 no MAIL", "503 5.5.1 no valid recipients")
		if _, err := s.expect("RSET"); err != nil {
			return err
		}
		s.say("250 2.0.0 reset")
		for _, cmd := range []string{"MAIL FROM:<good@example.org>", "RCPT TO:<c@x.test>", "DATA"} {
			if _, err := s.expect(cmd); err != nil {
				return err
			}
		}
		s.say("250 ok", "250 ok", "354 go on")
		if _, err := s.data(); err != nil {
			return err
		}
		s.say("250 2.0.0 ok")
		return nil
	})
	oc := dialScripted(t, sc)
	res := oc.send(queue.Envelope{Sender: "bad@example.org"}, rcpts("a@x.test", "b@x.test"), []byte("x\r\n"))
	for _, r := range res {
		if r.code != 553 || r.text != "553 5.1.8 sender refused" {
			t.Errorf("%s: %d %q, want MAIL's 553", r.rcpt.Address, r.code, r.text)
		}
	}
	if oc.broken || oc.stale {
		t.Fatalf("connection broken %v stale %v after a refused MAIL", oc.broken, oc.stale)
	}
	res = oc.send(queue.Envelope{Sender: "good@example.org"}, rcpts("c@x.test"), []byte("x\r\n"))
	if res[0].code != 250 {
		t.Errorf("second transaction: %+v", res[0])
	}
	sc.wait(t)
}

// Every RCPT refused with PIPELINING: the DATA refusal adds nothing, each
// recipient keeps its RCPT reply, and the connection stays usable (RSET).
func TestClientPipelinedAllRcptsRefused(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		if err := s.expectSeq("MAIL", "RCPT", "DATA"); err != nil {
			return err
		}
		s.say("250 ok", "450 4.2.1 mailbox busy", "554 5.5.1 no valid recipients")
		if _, err := s.expect("RSET"); err != nil {
			return err
		}
		s.say("250 reset")
		return nil
	})
	oc := dialScripted(t, sc)
	res := oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("a@x.test"), []byte("x\r\n"))
	if res[0].code != 450 || !res[0].atRcpt || oc.broken {
		t.Errorf("result %+v, broken %v", res[0], oc.broken)
	}
	sc.wait(t)
}

// A 421 at any step breaks the connection and defers with the reply; a
// server that hangs up is a connection failure (code 0), also on reuse.
func TestClient421AndHangup(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		if err := s.expectSeq("MAIL", "RCPT", "DATA"); err != nil {
			return err
		}
		s.say("421 4.7.0 too many connections")
		return nil
	})
	oc := dialScripted(t, sc)
	res := oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("a@x.test"), []byte("x\r\n"))
	if res[0].code != 421 || !oc.broken {
		t.Errorf("result %+v broken %v, want 421 and broken", res[0], oc.broken)
	}
	sc.wait(t)

	sc = startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		_, err := s.expect("MAIL")
		return err // and hang up
	})
	oc = dialScripted(t, sc)
	oc.txns = 1 // a reused connection
	res = oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("a@x.test"), []byte("x\r\n"))
	sc.wait(t)
	if res[0].code != 0 || !oc.broken || !oc.stale {
		t.Errorf("result %+v broken %v stale %v, want a stale connection failure", res[0], oc.broken, oc.stale)
	}
}

// EHLO refused falls back to HELO, without extensions.
func TestClientHeloFallback(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		s.say("220 old.test")
		if _, err := s.expect("EHLO tern.test"); err != nil {
			return err
		}
		s.say("502 5.5.2 what")
		if _, err := s.expect("HELO tern.test"); err != nil {
			return err
		}
		s.say("250 old.test")
		if _, err := s.expect("MAIL FROM:<s@example.org>"); err != nil {
			return err
		}
		if s.br.Buffered() > 0 {
			return fmt.Errorf("pipelined to a HELO server")
		}
		s.say("250 ok")
		if _, err := s.expect("RCPT"); err != nil {
			return err
		}
		s.say("250 ok")
		if _, err := s.expect("DATA"); err != nil {
			return err
		}
		s.say("354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		s.say("250 ok")
		return nil
	})
	oc := dialScripted(t, sc)
	if res := oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("a@x.test"), []byte("x\r\n")); res[0].code != 250 {
		t.Errorf("result %+v", res[0])
	}
	sc.wait(t)
}

// DATA refused after an accepted RCPT: the recipients get DATA's reply
// and the connection is RSET, so the next transaction is not refused as
// a nested MAIL.
func TestClientDataRefusedResets(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		if err := s.expectSeq("MAIL", "RCPT", "DATA"); err != nil {
			return err
		}
		s.say("250 ok", "250 ok", "451 4.3.0 try DATA later")
		if _, err := s.expect("RSET"); err != nil {
			return err
		}
		s.say("250 reset")
		if err := s.expectSeq("MAIL", "RCPT", "DATA"); err != nil {
			return err
		}
		s.say("250 ok", "250 ok", "354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		s.say("250 2.0.0 ok")
		return nil
	})
	oc := dialScripted(t, sc)
	res := oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("a@x.test"), []byte("x\r\n"))
	if res[0].code != 451 || res[0].text != "451 4.3.0 try DATA later" || oc.broken {
		t.Fatalf("first transaction: %+v, broken %v", res[0], oc.broken)
	}
	if res = oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("b@x.test"), []byte("x\r\n")); res[0].code != 250 {
		t.Errorf("second transaction: %+v", res[0])
	}
	sc.wait(t)
}

// envelopeOf reads MAIL, RCPT and DATA of one transaction and checks the
// sender.
func envelopeOf(s *serverConn, sender string) error {
	return s.expectSeq("MAIL FROM:<"+sender+">", "RCPT TO:", "DATA")
}

// messageThenNextEnvelope is the server's side up to the point where a
// pipelining client has sent a@example.org's message and, behind it,
// b@example.org's MAIL, RCPT and DATA, none of them answered yet.
func messageThenNextEnvelope(s *serverConn) error {
	if err := greet(s, "PIPELINING"); err != nil {
		return err
	}
	if err := envelopeOf(s, "a@example.org"); err != nil {
		return err
	}
	s.say("250 ok", "250 ok", "354 go")
	if _, err := s.data(); err != nil {
		return err
	}
	return envelopeOf(s, "b@example.org")
}

// testTxn is a one-recipient transaction from NAME@example.org to
// NAME@x.test.
func testTxn(name string) *txn {
	return &txn{env: queue.Envelope{Sender: name + "@example.org"}, rcpts: rcpts(name + "@x.test"), body: []byte(name + "\r\n")}
}

// The next transaction's commands go out with the previous message: the
// server reads them before it has answered the message, which a client
// waiting for that answer would never send (the script would time out).
func TestClientPipelinesNextTransactionBehindMessage(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := messageThenNextEnvelope(s); err != nil {
			return err
		}
		s.say("554 5.6.0 a refused", "250 ok", "250 ok", "354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		s.say("250 2.0.0 b queued")
		if _, err := s.expect("QUIT"); err != nil {
			return err
		}
		s.say("221 bye")
		return nil
	})
	oc := dialScripted(t, sc)
	a, b := testTxn("a"), testTxn("b")
	asked := 0
	res := oc.sendTxn(a, func() *txn { asked++; return b })
	if asked != 1 || res[0].code != 554 || oc.ahead != b || oc.broken {
		t.Fatalf("first transaction: %+v, next asked %d times, ahead %v, broken %v", res[0], asked, oc.ahead != nil, oc.broken)
	}
	// A refused message ends its transaction; the one behind it stands.
	if res = oc.sendTxn(b, nil); res[0].code != 250 || res[0].text != "250 2.0.0 b queued" || oc.ahead != nil {
		t.Fatalf("second transaction: %+v", res[0])
	}
	oc.close()
	sc.wait(t)
}

// When the connection breaks before the message's reply, neither message
// counts as sent: the first is deferred and nothing is left ahead, so the
// second goes out anew on another connection. Closing does not wait for
// a QUIT reply the server would never send.
func TestClientPipelinedNextIsDroppedWhenTheConnectionBreaks(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := messageThenNextEnvelope(s); err != nil {
			return err
		}
		return nil // hang up without a word
	})
	oc := dialScripted(t, sc)
	a, b := testTxn("a"), testTxn("b")
	res := oc.sendTxn(a, func() *txn { return b })
	sc.wait(t)
	if res[0].code != 0 || !oc.broken || oc.ahead != nil {
		t.Fatalf("after a hang-up: %+v, broken %v, ahead %v", res[0], oc.broken, oc.ahead != nil)
	}
	oc.close()
}

// A connection with a transaction ahead is closed without QUIT: the
// server is reading that transaction's message, so QUIT would be content.
func TestClientCloseWithTransactionAheadSkipsQuit(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := messageThenNextEnvelope(s); err != nil {
			return err
		}
		s.say("250 2.0.0 a queued", "250 ok", "250 ok", "354 go")
		if l, err := s.line(); err == nil {
			return fmt.Errorf("got %q after the pipelined DATA, want the connection closed", l)
		}
		return nil
	})
	oc := dialScripted(t, sc)
	a, b := testTxn("a"), testTxn("b")
	if res := oc.sendTxn(a, func() *txn { return b }); res[0].code != 250 {
		t.Fatalf("first transaction: %+v", res[0])
	}
	oc.close()
	sc.wait(t)
}

// Sending some other transaction than the one ahead is refused and breaks
// the connection, rather than read another message's replies.
func TestClientOutOfOrderTransactionBreaksTheConnection(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := messageThenNextEnvelope(s); err != nil {
			return err
		}
		s.say("250 2.0.0 a queued", "250 ok", "250 ok", "354 go")
		return nil
	})
	oc := dialScripted(t, sc)
	a, b := testTxn("a"), testTxn("b")
	oc.sendTxn(a, func() *txn { return b })
	sc.wait(t)
	c := testTxn("c")
	if res := oc.sendTxn(c, nil); res[0].code != 0 || !oc.broken {
		t.Fatalf("out-of-order transaction: %+v, broken %v", res[0], oc.broken)
	}
	oc.close()
}

// isASCII finds a byte over 0x7f wherever it is, in the eight-byte words
// or in the tail.
func TestIsASCII(t *testing.T) {
	for n := 0; n <= 20; n++ {
		b := []byte(strings.Repeat("a", n))
		if !isASCII(b) {
			t.Errorf("%d ASCII bytes: not ASCII", n)
		}
		for i := 0; i < n; i++ {
			c := append([]byte(nil), b...)
			c[i] = 0x80
			if isASCII(c) {
				t.Errorf("0x80 at %d of %d: ASCII", i, n)
			}
		}
	}
}
