package delivery

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// The tests in this file play hostile or broken servers against the
// client over real loopback sockets: replies that never end, lines that
// never end, servers that trickle. Each must end with an error soon, with
// the connection closed and little memory spent, however much the server
// is willing to send. None of them sleeps for a result: the servers
// report what they saw on channels, and waits are bounded by deadlines.

// floodBudget is how much a flooding server is willing to send: far more
// than any bounded client reads, so that a client without bounds would
// take tens of megabytes (and fail the memory check) before the server
// gave up.
const floodBudget = 64 << 20

// closeWait bounds how long a hostile server waits for the client to read
// or close. A client that breaches a bound closes at once; this only
// keeps a broken client from hanging the test.
const closeWait = 5 * time.Second

// allocBound is the most the client may allocate while it fends off a
// hostile server: the reader's buffer is about a kilobyte and a reply
// at most 16 KiB, so even with the dial and the connection's buffers the
// whole attempt stays well below it.
const allocBound = 1 << 20

// flood writes chunk again and again until the client closes the
// connection, and returns how much it wrote. A client that keeps reading
// until floodBudget, or that neither reads nor closes, is an error.
func flood(s *serverConn, chunk []byte) (int64, error) {
	var n int64
	for n < floodBudget {
		s.c.SetWriteDeadline(time.Now().Add(closeWait))
		k, err := s.c.Write(chunk)
		n += int64(k)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return n, fmt.Errorf("the client neither read nor closed for %s, after %d bytes", closeWait, n)
		}
		if err != nil {
			return n, nil // the client hung up
		}
	}
	return n, fmt.Errorf("the client read all %d bytes without giving up", n)
}

// sendThenAwaitClose writes b (the client may hang up halfway) and waits
// for the client to close the connection.
func sendThenAwaitClose(s *serverConn, b []byte) (int64, error) {
	s.c.SetWriteDeadline(time.Now().Add(closeWait))
	n, err := s.c.Write(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return int64(n), fmt.Errorf("the client neither read nor closed for %s, after %d bytes", closeWait, n)
	}
	return int64(n), awaitClose(s)
}

// awaitClose waits until the client closes the connection, reading and
// dropping whatever it still sends.
func awaitClose(s *serverConn) error {
	s.c.SetReadDeadline(time.Now().Add(closeWait))
	_, err := io.Copy(io.Discard, s.br)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("the client did not close the connection within %s", closeWait)
	}
	return nil // EOF or a reset: closed
}

// openTo opens an outConn to sc with the default policy changed by tweak.
func openTo(sc *scripted, tweak func(*config.DomainSettings)) (*outConn, error) {
	pol := config.DefaultDomainSettings()
	pol.UseStartTLS.Value = false
	// Long enough that a test ending by a deadline, not by a bound, shows.
	pol.SMTPGreetingTimeout.Value = 30 * time.Second
	pol.DataSendTimeout.Value = 30 * time.Second
	if tweak != nil {
		tweak(&pol)
	}
	ap := netip.MustParseAddrPort(sc.ln.Addr().String())
	return open(context.Background(), target{host: "mx.test", ip: ap.Addr(), port: int(ap.Port())},
		connOptions{ehlo: "tern.test", pol: &pol, dial: netDial})
}

// allocatedBy returns how many bytes the process allocated while f ran,
// garbage included: what an unbounded reader would have held.
func allocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// checkBreach checks a failed read: a *badReplyError naming the bound,
// not a deadline, and little memory spent.
func checkBreach(t *testing.T, err error, want string, alloc uint64, elapsed time.Duration) {
	t.Helper()
	var bad *badReplyError
	if !errors.As(err, &bad) || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want a bad reply that %s", err, want)
	}
	if alloc > allocBound {
		t.Errorf("the client allocated %d bytes, want at most %d", alloc, allocBound)
	}
	// The deadline is 30s: ending this early means a bound stopped it.
	if elapsed > 10*time.Second {
		t.Errorf("took %s", elapsed)
	}
}

// multiline is n continuation lines of reply code with text of size
// bytes each.
func multiline(code string, n, size int) []byte {
	line := code + "-" + strings.Repeat("x", size) + "\r\n"
	return []byte(strings.Repeat(line, n))
}

// An endless multiline greeting of long lines: the client gives up at the
// reply's byte bound, closes, and reads as a host failure, not a refusal.
func TestClientBoundsEndlessGreeting(t *testing.T) {
	chunk := multiline("220", 64, 900)
	var wrote int64
	sc := startScripted(t, func(s *serverConn) (err error) {
		wrote, err = flood(s, chunk)
		return err
	})
	var err error
	start := time.Now()
	alloc := allocatedBy(func() { _, err = openTo(sc, nil) })
	elapsed := time.Since(start)
	sc.wait(t)
	checkBreach(t, err, "exceeds 16384 bytes", alloc, elapsed)
	var oe *openError
	if !errors.As(err, &oe) || oe.stage != stageGreeting || !judgeOpen(err, false).hostFailure {
		t.Errorf("error %v: want a greeting failure counted against the host", err)
	}
	t.Logf("server wrote %d bytes before the client hung up; the client allocated %d", wrote, alloc)
}

// A banner without CRLF, streamed: the client reads one line's worth.
func TestClientBoundsBannerWithoutLineEnd(t *testing.T) {
	chunk := bytes.Repeat([]byte("220 "), 16<<10)
	var wrote int64
	sc := startScripted(t, func(s *serverConn) (err error) {
		wrote, err = flood(s, chunk)
		return err
	})
	var err error
	start := time.Now()
	alloc := allocatedBy(func() { _, err = openTo(sc, nil) })
	elapsed := time.Since(start)
	sc.wait(t)
	checkBreach(t, err, "exceeds 1000 bytes per line", alloc, elapsed)
	t.Logf("server wrote %d bytes before the client hung up; the client allocated %d", wrote, alloc)
}

// An endless multiline reply to EHLO of short lines: the line count ends
// it.
func TestClientBoundsEndlessEHLO(t *testing.T) {
	chunk := multiline("250", 4096, 8)
	var wrote int64
	sc := startScripted(t, func(s *serverConn) (err error) {
		s.say("220 mx.test ESMTP")
		if _, err := s.expect("EHLO tern.test"); err != nil {
			return err
		}
		wrote, err = flood(s, chunk)
		return err
	})
	var err error
	start := time.Now()
	alloc := allocatedBy(func() { _, err = openTo(sc, nil) })
	elapsed := time.Since(start)
	sc.wait(t)
	checkBreach(t, err, "exceeds 100 lines", alloc, elapsed)
	var oe *openError
	if !errors.As(err, &oe) || oe.stage != stageHello || oe.reply() != nil {
		t.Errorf("error %v: want an EHLO failure without a reply", err)
	}
	t.Logf("server wrote %d bytes before the client hung up; the client allocated %d", wrote, alloc)
}

// A single reply line of a megabyte, to EHLO.
func TestClientBoundsMegabyteLine(t *testing.T) {
	line := []byte("250 " + strings.Repeat("x", 1<<20) + "\r\n")
	sc := startScripted(t, func(s *serverConn) error {
		s.say("220 mx.test ESMTP")
		if _, err := s.expect("EHLO tern.test"); err != nil {
			return err
		}
		_, err := sendThenAwaitClose(s, line)
		return err
	})
	var err error
	start := time.Now()
	alloc := allocatedBy(func() { _, err = openTo(sc, nil) })
	elapsed := time.Since(start)
	sc.wait(t)
	checkBreach(t, err, "reply from mx.test exceeds 1000 bytes per line", alloc, elapsed)
}

// An endless multiline reply to the message, after DATA: every recipient
// is deferred (code 0), none bounced, and the connection is closed by the
// read itself, before the session is closed.
func TestClientBoundsEndlessReplyAfterData(t *testing.T) {
	chunk := multiline("250", 4096, 8)
	var wrote int64
	sc := startScripted(t, func(s *serverConn) (err error) {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		if err := s.expectSeq("MAIL", "RCPT", "RCPT", "DATA"); err != nil {
			return err
		}
		s.say("250 ok", "250 ok", "550 5.1.1 unknown", "354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		wrote, err = flood(s, chunk)
		return err
	})
	oc, err := openTo(sc, nil)
	if err != nil {
		t.Fatal(err)
	}
	var res []result
	start := time.Now()
	alloc := allocatedBy(func() {
		res = oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("a@x.test", "b@x.test"), []byte("x\r\n"))
	})
	elapsed := time.Since(start)
	sc.wait(t) // returns only once the client hung up
	if res[0].code != 0 || !strings.HasPrefix(res[0].text, "connection failed: reply from mx.test exceeds 100 lines") {
		t.Errorf("accepted recipient: %+v, want a connection failure naming the bound", res[0])
	}
	if res[1].code != 550 {
		t.Errorf("refused recipient: %+v, want its RCPT reply", res[1])
	}
	if !oc.broken {
		t.Error("connection not marked broken")
	}
	if alloc > allocBound || elapsed > 10*time.Second {
		t.Errorf("allocated %d bytes in %s", alloc, elapsed)
	}
	oc.close()
	t.Logf("server wrote %d bytes before the client hung up; the client allocated %d", wrote, alloc)
}

// A finite reply of 10,000 short lines, to MAIL in a pipelined
// transaction: the line bound ends it, and nothing else is read.
func TestClientBoundsTenThousandLines(t *testing.T) {
	reply := append(multiline("250", 9999, 2), "250 ok\r\n"...)
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		if err := s.expectSeq("MAIL", "RCPT", "DATA"); err != nil {
			return err
		}
		_, err := sendThenAwaitClose(s, reply)
		return err
	})
	oc, err := openTo(sc, nil)
	if err != nil {
		t.Fatal(err)
	}
	var res []result
	alloc := allocatedBy(func() {
		res = oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("a@x.test"), []byte("x\r\n"))
	})
	sc.wait(t)
	if res[0].code != 0 || !res[0].atMail || !strings.Contains(res[0].text, "exceeds 100 lines") || !oc.broken {
		t.Errorf("result %+v, broken %v: want a connection failure at MAIL", res[0], oc.broken)
	}
	if alloc > allocBound {
		t.Errorf("allocated %d bytes", alloc)
	}
	oc.close()
}

// trickle writes b a byte at a time, one every interval, until the client
// closes the connection or b runs out.
func trickle(s *serverConn, b []byte, interval time.Duration) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := range b {
		<-tick.C
		s.c.SetWriteDeadline(time.Now().Add(closeWait))
		if _, err := s.c.Write(b[i : i+1]); err != nil {
			return nil // the client hung up
		}
	}
	return errors.New("the client kept reading a trickle past its deadline")
}

// A server trickling its greeting a byte every 50ms cannot keep the read
// going past smtp-greeting-timeout: the deadline is the reply's, not
// renewed by each byte. The trickle would last a minute.
func TestClientBoundsTrickledGreeting(t *testing.T) {
	slow := []byte("220-" + strings.Repeat("x", 1200))
	sc := startScripted(t, func(s *serverConn) error {
		return trickle(s, slow, 50*time.Millisecond)
	})
	start := time.Now()
	_, err := openTo(sc, func(p *config.DomainSettings) { p.SMTPGreetingTimeout.Value = time.Second })
	elapsed := time.Since(start)
	sc.wait(t)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("error %v, want a timeout", err)
	}
	if elapsed > 10*time.Second {
		t.Errorf("the greeting read lasted %s with a 1s timeout", elapsed)
	}
}

// The same after DATA: the reply to the message is bounded by
// data-send-timeout (1s here), not by the command timeout (30s), and not
// renewed by the trickle of complete lines.
func TestClientBoundsTrickledDataReply(t *testing.T) {
	slow := []byte(strings.Repeat("250-ok\r\n", 90))
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		if err := s.expectSeq("MAIL", "RCPT", "DATA"); err != nil {
			return err
		}
		s.say("250 ok", "250 ok", "354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		return trickle(s, slow, 50*time.Millisecond)
	})
	oc, err := openTo(sc, func(p *config.DomainSettings) { p.DataSendTimeout.Value = time.Second })
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res := oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("a@x.test"), []byte("x\r\n"))
	elapsed := time.Since(start)
	sc.wait(t)
	if res[0].code != 0 || !strings.Contains(res[0].text, "timeout") || !oc.broken {
		t.Errorf("result %+v, broken %v: want a timeout", res[0], oc.broken)
	}
	if elapsed > 10*time.Second {
		t.Errorf("the reply read lasted %s with a 1s data-send-timeout", elapsed)
	}
	oc.close()
}

// A multiline reply whose lines change code is malformed: a connection
// failure (deferred, host not refused), not the 5xx of its last line.
func TestClientMixedCodesAtEHLO(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		s.say("220 mx.test ESMTP")
		if _, err := s.expect("EHLO tern.test"); err != nil {
			return err
		}
		s.say("250-mx.test", "550 5.7.1 go away")
		return awaitClose(s)
	})
	_, err := openTo(sc, nil)
	sc.wait(t)
	var bad *badReplyError
	if !errors.As(err, &bad) || !strings.Contains(err.Error(), "mixes codes 250 and 550") {
		t.Fatalf("error %v, want mixed codes", err)
	}
	if code, _ := replyOf(err); code != 0 {
		t.Errorf("reply code %d, want 0 (deferred)", code)
	}
}

// Replies at the bounds are read: a hundred EHLO lines, a line of 1000
// bytes of text. AUTH's 334 challenges still reach the SASL client.
func TestClientRepliesAtTheBounds(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		s.say("220 " + strings.Repeat("g", maxReplyText))
		if _, err := s.expect("EHLO tern.test"); err != nil {
			return err
		}
		lines := []string{"250-mx.test", "250-AUTH LOGIN"}
		for i := len(lines); i < maxReplyLines-1; i++ {
			lines = append(lines, fmt.Sprintf("250-X-KEYWORD%d", i))
		}
		s.say(append(lines, "250 PIPELINING")...)
		// LOGIN sends the user name with the command, then answers the
		// "Password:" challenge.
		if _, err := s.expect("AUTH LOGIN " + base64.StdEncoding.EncodeToString([]byte("user"))); err != nil {
			return err
		}
		s.say("334 " + base64.StdEncoding.EncodeToString([]byte("Password:")))
		if _, err := s.expect(base64.StdEncoding.EncodeToString([]byte("secret"))); err != nil {
			return err
		}
		s.say("235 2.7.0 ok")
		return nil
	})
	oc, err := openTo(sc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := oc.ext["PIPELINING"]; !ok || len(oc.ext) != maxReplyLines-1 || oc.ext["AUTH"] != "LOGIN" {
		t.Errorf("extensions %v", oc.ext)
	}
	if err := oc.auth(sasl.NewLoginClient("user", "secret")); err != nil {
		t.Errorf("AUTH LOGIN: %v", err)
	}
	sc.wait(t)
	oc.close()
}

// The reply reader alone, line by line.
func TestReplyReader(t *testing.T) {
	long := strings.Repeat("x", maxReplyText)
	cases := []struct {
		in   string
		code int
		text string
		err  string // a substring of the error; "" for none
	}{
		{in: "250 ok\r\n", code: 250, text: "ok"},
		{in: "250-a\r\n250-b c\r\n250 d\r\n", code: 250, text: "a\nb c\nd"},
		{in: "550 5.1.1 no such user\r\n", code: 550, text: "5.1.1 no such user"},
		{in: "250\r\n", code: 250, text: ""},
		{in: "250-\r\n250 \r\n", code: 250, text: "\n"},
		{in: "220 bare lf\n", code: 220, text: "bare lf"},
		{in: "334 \r\n", code: 334, text: ""},
		{in: "250 " + long + "\r\n", code: 250, text: long},
		{in: "250 " + long + "x\r\n", err: "exceeds 1000 bytes per line"},
		{in: "250 " + long + "x\n", err: "exceeds 1000 bytes per line"},
		{in: "250 " + long + long, err: "exceeds 1000 bytes per line"},
		{in: strings.Repeat("250-"+long[:996]+"\r\n", 16) + "250 end\r\n", code: 250,
			text: strings.Repeat(long[:996]+"\n", 16) + "end"},
		{in: strings.Repeat("250-"+long+"\r\n", 17), err: "exceeds 16384 bytes"},
		{in: strings.Repeat("250-a\r\n", maxReplyLines-1) + "250 z\r\n", code: 250,
			text: strings.Repeat("a\n", maxReplyLines-1) + "z"},
		{in: strings.Repeat("250-a\r\n", maxReplyLines) + "250 z\r\n", err: "exceeds 100 lines"},
		{in: "hello\r\n", err: "is not an SMTP reply"},
		{in: "25 ok\r\n", err: "is not an SMTP reply"},
		{in: "250x ok\r\n", err: "is not an SMTP reply"},
		{in: "650 ok\r\n", err: "is not an SMTP reply"},
		{in: "250-a\r\n251 b\r\n", err: "mixes codes 250 and 251"},
		{in: "250-a\r\nb\r\n", err: "is not an SMTP reply"},
		{in: "", err: "EOF"},
		{in: "250-a\r\n", err: "unexpected EOF"},
		{in: "250 no line end", err: "unexpected EOF"},
	}
	for _, c := range cases {
		name := c.in
		if len(name) > 40 {
			name = name[:40]
		}
		rr := newReplyReader(strings.NewReader(c.in), "mx.test")
		code, text, err := rr.read()
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: %d %q %v, want an error with %q", name, code, text, err, c.err)
		case c.err == "" && (err != nil || code != c.code || text != c.text):
			t.Errorf("%q: %d %q %v, want %d %q", name, code, text, err, c.code, c.text)
		}
	}
	// Replies follow one another on the stream.
	rr := newReplyReader(strings.NewReader("250-a\r\n250 b\r\n354 go\r\n"), "mx.test")
	if code, text, err := rr.read(); code != 250 || text != "a\nb" || err != nil {
		t.Errorf("first reply: %d %q %v", code, text, err)
	}
	if code, text, err := rr.read(); code != 354 || text != "go" || err != nil {
		t.Errorf("second reply: %d %q %v", code, text, err)
	}
}
