package main

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/textproto"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// ilConn is a line-level SMTP client for TestInboundLimitsThroughServe.
type ilConn struct {
	t    *testing.T
	conn net.Conn
	text *textproto.Conn
}

// ilDial connects from localIP and returns the client with the code and
// text of the greeting.
func ilDial(t *testing.T, localIP, addr string) (*ilConn, int, string) {
	t.Helper()
	d := net.Dialer{Timeout: deliverTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, localIP, err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &ilConn{t: t, conn: conn, text: textproto.NewConn(conn)}
	code, msg := c.reply()
	return c, code, msg
}

// reply reads one reply, failing the test if there is none.
func (c *ilConn) reply() (int, string) {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(deliverTimeout))
	code, msg, err := c.text.ReadResponse(0)
	if err != nil {
		if te, ok := err.(*textproto.Error); ok {
			return te.Code, te.Msg
		}
		c.t.Fatalf("reading a reply: %v", err)
	}
	return code, msg
}

// send writes s as it is.
func (c *ilConn) send(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(deliverTimeout))
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// cmd sends a command line and fails the test unless the reply is code.
func (c *ilConn) cmd(code int, line string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	got, msg := c.reply()
	if got != code {
		c.t.Fatalf("%.60q: want %d, got %d %s", line, code, got, msg)
	}
	return msg
}

// raceBuild reports whether this test binary, which is also the tern
// being tested, was built with the race detector: its shadow memory
// makes resident sizes say little about the heap.
func raceBuild() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// TestInboundLimitsThroughServe runs two attacks of issue #14 against
// tern serve itself: 60 silent connections from one address that may
// not relay (finding 3), and 16 authenticated sessions that each push
// 8 MiB of BDAT chunks and never send LAST (finding 4). The address gets
// 20 connections and 421 for the rest; the chunks past
// max-inbound-buffer get 452 4.3.1 and the daemon's peak resident memory
// grows by far less than the 128 MiB sent (checked when not built with
// the race detector); a trusted client's mail reaches the sink
// throughout.
func TestInboundLimitsThroughServe(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	conf := `
total-max-smtp-in 100
max-inbound-buffer 32M
<source 0/0>
    allow-unencrypted-plain-auth yes
</source>
<smtp-user demo>
    password demo-secret
</smtp-user>
` + baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "")
	p := startTern(t, writeConf(t, dir, conf))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	held, refused := 0, 0
	for range 60 {
		c, code, msg := ilDial(t, "127.0.0.9", addr)
		switch {
		case code == 220:
			held++
		case code == 421 && strings.Contains(msg, "too many connections from your address"):
			refused++
			c.conn.Close()
		default:
			t.Fatalf("connection from 127.0.0.9: %d %s", code, msg)
		}
	}
	if held != 20 || refused != 40 {
		t.Fatalf("one address: %d let in, %d refused; want 20 and 40", held, refused)
	}
	mustInject(t, addr, "a@dest.test", "during-the-flood")

	before := rssKB(t, p.cmd.Process.Pid)
	const sessions, chunk = 16, 4 << 20
	bdat := fmt.Sprintf("BDAT %d\r\n%s", chunk, strings.Repeat("x", chunk))
	auth := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00demo\x00demo-secret"))
	full := 0
	for i := range sessions {
		c, code, msg := ilDial(t, "127.0.0.10", addr)
		if code != 220 {
			t.Fatalf("authenticating session %d: %d %s", i, code, msg)
		}
		c.cmd(250, "EHLO big.example")
		c.cmd(235, auth)
		c.cmd(250, "MAIL FROM:<big@client.test>")
		c.cmd(250, fmt.Sprintf("RCPT TO:<big%d@dest.test>", i))
		for range 2 {
			c.send(bdat)
			code, msg := c.reply()
			if code == 452 && strings.HasPrefix(msg, "4.3.1 ") {
				full++
				break
			}
			if code != 250 {
				t.Fatalf("session %d: a chunk got %d %s", i, code, msg)
			}
		}
	}
	if full == 0 {
		t.Fatalf("%d sessions sent %d MiB each and none was refused with max-inbound-buffer 32M", sessions, 2*chunk>>20)
	}
	after := rssKB(t, p.cmd.Process.Pid)
	t.Logf("%d of %d sessions refused; peak RSS %d kB before, %d kB after", full, sessions, before, after)
	if !raceBuild() && after-before > 64<<10 {
		t.Errorf("peak resident memory grew by %d kB, want under 64 MiB (max-inbound-buffer is 32M)", after-before)
	}
	mustInject(t, addr, "b@dest.test", "during-the-big-sessions")
	got := byMarker(t, sink.WaitMessages(t, 2, deliverTimeout))
	for _, m := range []string{"during-the-flood", "during-the-big-sessions"} {
		if _, ok := got[m]; !ok {
			t.Errorf("%s was not delivered", m)
		}
	}
}
