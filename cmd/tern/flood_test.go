package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// TestFloodsLeaveMailFlowing: the floods of issue #14 against tern serve,
// both at once. 20,000 connections to the admin port from an address with
// no access, each kept open for as long as the server keeps it; 2,000 to
// SMTP from one untrusted address, likewise. Meanwhile a trusted client and
// an authenticated one still get their 220 and their mail is delivered
// (SMTP in and out work), and an admitted admin client gets its status.
// Before the limits, the admin flood took every file descriptor of the
// process and the SMTP flood every inbound slot.
func TestFloodsLeaveMailFlowing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort, adminPort := freePort(t), freePort(t)
	conf := fmt.Sprintf(`
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 admin
<source 0/0>
    allow-unencrypted-plain-auth yes
</source>
<smtp-user demo>
    password demo-secret
</smtp-user>
`, adminPort) + baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "")
	startTern(t, writeConf(t, dir, conf))
	smtpAddr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	adminAddr := fmt.Sprintf("127.0.0.1:%d", adminPort)

	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	flood := func(addr, from string, n int, smtp bool) (kept []net.Conn) {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		for range n {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatalf("dial %s from %s: %v", addr, from, err)
			}
			if maybeKept(c, smtp) {
				held = append(held, c)
				kept = append(kept, c)
				continue
			}
			c.Close()
		}
		return kept
	}
	admins := stillOpen(flood(adminAddr, "127.0.0.9", 20000, false))
	smtps := len(flood(smtpAddr, "127.0.0.9", 2000, true))
	t.Logf("the server kept %d admin and %d SMTP connections of the floods (%d held here)", admins, smtps, len(held))
	if admins > 64 || smtps > 20 {
		t.Errorf("kept %d admin connections (cap 64) and %d SMTP connections from one address (cap 20)", admins, smtps)
	}

	// A trusted client.
	mustInject(t, smtpAddr, "trusted@dest.test", "trusted-during-the-floods")
	// An authenticated client, from another address.
	c, code, msg := ilDial(t, "127.0.0.10", smtpAddr)
	if code != 220 {
		t.Fatalf("authenticated client's greeting: %d %s", code, msg)
	}
	c.cmd(250, "EHLO app.example")
	c.cmd(235, "AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00demo\x00demo-secret")))
	c.cmd(250, "MAIL FROM:<app@client.test>")
	c.cmd(250, "RCPT TO:<authed@dest.test>")
	c.cmd(354, "DATA")
	c.cmd(250, "Subject: x\r\nX-Test-Marker: authed-during-the-floods\r\n\r\nhi\r\n.")
	got := byMarker(t, sink.WaitMessages(t, 2, deliverTimeout))
	for _, m := range []string{"trusted-during-the-floods", "authed-during-the-floods"} {
		if _, ok := got[m]; !ok {
			t.Errorf("%s was not delivered", m)
		}
	}
	var st statusAnswer
	if code := adminCall(t, "GET", fmt.Sprintf("http://%s/api/status", adminAddr), "", &st); code != 200 {
		t.Errorf("admin status during the floods: %d", code)
	}
	if fd := st.FileDescriptors; fd == nil || fd.Open > fd.Limit/2 {
		t.Errorf("file descriptors during the floods: %+v", fd)
	}
}

// maybeKept reports whether the server may have kept c. SMTP greets a
// connection it keeps with 220 and one over its caps with 421, so that is
// read to the end. The admin API says nothing to a connection it keeps and
// closes one over its caps at once: a connection closed within a short
// wait is not kept, and the silent ones are counted again by stillOpen,
// which waits long enough for a loaded machine.
func maybeKept(c net.Conn, smtp bool) bool {
	wait := 20 * time.Millisecond
	if smtp {
		wait = 10 * time.Second
	}
	c.SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, 3)
	n, err := io.ReadFull(c, b)
	if n == 3 {
		return string(b) == "220"
	}
	var ne net.Error
	return !smtp && errors.As(err, &ne) && ne.Timeout() && n == 0
}

// stillOpen counts the connections the server has not closed within a
// second of the last one being checked: the admin connections it keeps.
func stillOpen(conns []net.Conn) int {
	deadline := time.Now().Add(time.Second)
	open := 0
	b := make([]byte, 1)
	for _, c := range conns {
		c.SetReadDeadline(deadline)
		_, err := c.Read(b)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			open++
		}
	}
	return open
}
