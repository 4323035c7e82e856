package listener_test

// End-to-end tests of the listener: real sockets, the go-smtp client (and a
// raw line client where the exact exchange matters), swaks, and the real
// queue read back after each accepted message. Every refusal is checked
// for its exact reply code and enhanced status code (DESIGN.md §4).

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/ternmta/tern/queue"
)

// Enhanced status codes the tests expect.
var (
	ec571  = smtp.EnhancedCode{5, 7, 1}
	ec570  = smtp.EnhancedCode{5, 7, 0}
	ec578  = smtp.EnhancedCode{5, 7, 8}
	ec5711 = smtp.EnhancedCode{5, 7, 11}
	ec534  = smtp.EnhancedCode{5, 3, 4}
	ec453  = smtp.EnhancedCode{4, 5, 3}
	ec430  = smtp.EnhancedCode{4, 3, 0}
	ec431  = smtp.EnhancedCode{4, 3, 1}
	ec470  = smtp.EnhancedCode{4, 7, 0}
	ec574  = smtp.EnhancedCode{5, 7, 4}
)

// submissionConf is a PowerMTA-style setup: port 2525 for programs trusted
// by IP, 587 for submission with AUTH after STARTTLS, 465 the same with
// implicit TLS. demo has a bcrypt hash, legacy a plaintext password (the
// only kind CRAM-MD5 can use), special switches to its own source.
const submissionConf = `
smtp-server-tls-certificate {{.CertFile}} {{.KeyFile}}
smtp-listener 127.0.0.1:{{.Port2525}}
smtp-listener 127.0.0.1:{{.Port587}} source=submission
smtp-listener 127.0.0.1:{{.Port465}} source=submission tls=yes

<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.example
</virtual-mta>
<virtual-mta mta2>
    smtp-source-host 127.0.0.3 mta2.example
</virtual-mta>

<source 0/0>
    always-allow-relaying no
</source>
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<source submission>
    require-auth yes
    always-allow-relaying no
</source>
<source {auth}>
    always-allow-relaying yes
</source>
<source special>
    always-allow-relaying yes
    default-virtual-mta mta2
</source>

<smtp-user demo>
    password-hash {{.PasswordHash "demo-secret"}}
</smtp-user>
<smtp-user legacy>
    password legacy-secret
</smtp-user>
<smtp-user special>
    password-hash {{.PasswordHash "special-secret"}}
    source special
</smtp-user>
`

// relayConf: 127.0.0.1 relays without AUTH; 127.0.0.9 matches only 0/0.
const relayConf = `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
`

func rcptVMTAs(m spooledMessage) []string {
	var out []string
	for _, r := range m.Recipients {
		s := r.Address + " " + r.VMTA
		if r.Pool != "" {
			s += " pool=" + r.Pool
		}
		out = append(out, s)
	}
	return out
}

func TestTrustedIPRelaysWithoutAuth(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	c := dial(t, ts.Addr("2525"))
	id := mustSend(t, c, "a@b.example", []string{"x@example.com", "y@Example.ORG"}, message())
	m := ts.spooled(t, id)
	if m.Envelope.Sender != "a@b.example" || m.Envelope.SourceIP != loopbackIP("127.0.0.1") || m.Envelope.AuthUser != "" {
		t.Errorf("envelope = %+v", m.Envelope)
	}
	if got, want := rcptVMTAs(m), []string{"x@example.com {default}", "y@Example.ORG {default}"}; !slices.Equal(got, want) {
		t.Errorf("recipients = %q, want %q", got, want)
	}
	if m.Recipients[1].Domain != "example.org" {
		t.Errorf("domain of y@Example.ORG = %q, want example.org", m.Recipients[1].Domain)
	}
	if all := allSpooled(t, ts.Queue); len(all) != 1 || all[0].ID != id {
		t.Errorf("spool holds %d messages, want only %s", len(all), id)
	}
}

func TestRelayDeniedForUntrustedIP(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	c := dialFrom(t, "127.0.0.9", ts.Addr("2525"))
	_, err := send(c, "a@b.example", []string{"x@example.com"}, message())
	se := wantRefusal(t, err, stageRcpt, 550, ec571)
	if !strings.Contains(se.Message, "Relaying denied") {
		t.Errorf("reply text %q does not say relaying is denied", se.Message)
	}
	if tot := ts.Queue.Totals(); tot.Messages != 0 {
		t.Errorf("spool holds %d messages after a denied relay", tot.Messages)
	}
	// The trusted address on the same listener still relays.
	mustSend(t, dial(t, ts.Addr("2525")), "a@b.example", []string{"x@example.com"}, message())
}

func TestAuthPlainOverStartTLSOnSubmissionPort(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)

	// In the clear: STARTTLS offered, AUTH not.
	c := dial(t, ts.Addr("587"))
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Error("STARTTLS not advertised on the plaintext 587 session")
	}
	if ok, mechs := c.Extension("AUTH"); ok {
		t.Errorf("AUTH %s advertised before STARTTLS", mechs)
	}

	c = dialStartTLS(t, ts.Addr("587"), nil)
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised again inside TLS")
	}
	if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(" "+mechs+" ", " PLAIN ") || !strings.Contains(" "+mechs+" ", " LOGIN ") {
		t.Errorf("AUTH after STARTTLS = %v %q, want PLAIN and LOGIN", ok, mechs)
	}
	if err := c.Auth(sasl.NewPlainClient("", "demo", "demo-secret")); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	id := mustSend(t, c, "a@b.example", []string{"x@example.com"}, message())
	m := ts.spooled(t, id)
	if m.Envelope.AuthUser != "demo" {
		t.Errorf("AuthUser = %q, want demo", m.Envelope.AuthUser)
	}
	if rcv := m.Values("Received"); len(rcv) != 1 || !strings.Contains(rcv[0], "with ESMTPSA;") {
		t.Errorf("Received = %q, want one saying ESMTPSA (TLS and AUTH)", rcv)
	}
}

func TestSubmissionRequiresAuthBeforeMail(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	c := dialStartTLS(t, ts.Addr("587"), nil)
	_, err := send(c, "a@b.example", []string{"x@example.com"}, message())
	wantRefusal(t, err, stageMail, 530, ec570)
	// The submission listener's source overrides 127.0.0.1's relaying.
	if tot := ts.Queue.Totals(); tot.Messages != 0 {
		t.Errorf("spool holds %d messages", tot.Messages)
	}
}

func TestAuthSwitchesSessionToUsersSource(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	for _, tc := range []struct{ user, pass, vmta string }{
		{"demo", "demo-secret", "{default}"}, // {auth}: no default-virtual-mta
		{"special", "special-secret", "mta2"},
	} {
		c := dialStartTLS(t, ts.Addr("587"), nil)
		if err := c.Auth(sasl.NewPlainClient("", tc.user, tc.pass)); err != nil {
			t.Fatalf("AUTH %s: %v", tc.user, err)
		}
		m := ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com"}, message()))
		if m.Envelope.AuthUser != tc.user || m.Recipients[0].VMTA != tc.vmta {
			t.Errorf("user %s: AuthUser %q, VMTA %q; want VMTA %q", tc.user, m.Envelope.AuthUser, m.Recipients[0].VMTA, tc.vmta)
		}
	}
}

func TestAuthFailureIs535WhateverTheReason(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	var texts []string
	for _, tc := range []struct{ user, pass string }{
		{"demo", "wrong"},
		{"nosuchuser", "demo-secret"},
		{"legacy", "wrong"},
	} {
		c := dialStartTLS(t, ts.Addr("587"), nil)
		err := c.Auth(sasl.NewPlainClient("", tc.user, tc.pass))
		se := wantRefusal(t, err, "", 535, ec578)
		texts = append(texts, se.Message)
	}
	// Nothing tells an existing user from an unknown one.
	if texts[0] != texts[1] || texts[1] != texts[2] {
		t.Errorf("AUTH failure texts differ: %q", texts)
	}
}

func TestAuthLoginMechanism(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	c := dialStartTLS(t, ts.Addr("587"), nil)
	if err := c.Auth(sasl.NewLoginClient("demo", "demo-secret")); err != nil {
		t.Fatalf("AUTH LOGIN: %v", err)
	}
	m := ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com"}, message()))
	if m.Envelope.AuthUser != "demo" {
		t.Errorf("AuthUser = %q", m.Envelope.AuthUser)
	}

	c = dialStartTLS(t, ts.Addr("587"), nil)
	wantRefusal(t, c.Auth(sasl.NewLoginClient("demo", "wrong")), "", 535, ec578)
}

// TestAuthLoginWithoutInitialResponse runs LOGIN as most clients do: the
// server asks for the user name, then the password.
func TestAuthLoginWithoutInitialResponse(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    allow-unencrypted-plain-auth yes
</source>
<smtp-user demo>
    password-hash {{.PasswordHash "demo-secret"}}
</smtp-user>
`)
	r := dialRaw(t, "", ts.Addr("2525"))
	r.mustReply(220)
	r.mustCmd(250, "EHLO client.example")
	b64 := base64.StdEncoding.EncodeToString
	if msg := r.mustCmd(334, "AUTH LOGIN"); msg != b64([]byte("Username:")) {
		t.Errorf("first LOGIN challenge %q, want base64 of Username:", msg)
	}
	if msg := r.mustCmd(334, "%s", b64([]byte("demo"))); msg != b64([]byte("Password:")) {
		t.Errorf("second LOGIN challenge %q, want base64 of Password:", msg)
	}
	r.mustCmd(235, "%s", b64([]byte("demo-secret")))
}

// cramMD5Client is the client side of CRAM-MD5 (RFC 2195), which go-sasl
// does not have.
type cramMD5Client struct{ user, secret string }

func (c cramMD5Client) Start() (string, []byte, error) { return "CRAM-MD5", nil, nil }

func (c cramMD5Client) Next(challenge []byte) ([]byte, error) {
	mac := hmac.New(md5.New, []byte(c.secret))
	mac.Write(challenge)
	return []byte(c.user + " " + hex.EncodeToString(mac.Sum(nil))), nil
}

func TestAuthCRAMMD5WithPlaintextPassword(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	c := dialStartTLS(t, ts.Addr("587"), nil)
	if _, mechs := c.Extension("AUTH"); !strings.Contains(mechs, "CRAM-MD5") {
		t.Errorf("AUTH %q: CRAM-MD5 not offered although legacy has a plaintext password", mechs)
	}
	if err := c.Auth(cramMD5Client{"legacy", "legacy-secret"}); err != nil {
		t.Fatalf("AUTH CRAM-MD5: %v", err)
	}
	m := ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com"}, message()))
	if m.Envelope.AuthUser != "legacy" {
		t.Errorf("AuthUser = %q", m.Envelope.AuthUser)
	}

	// A wrong secret, and a user with only a bcrypt hash (the right
	// password cannot help: the server has no secret to key the HMAC).
	for _, cc := range []cramMD5Client{{"legacy", "wrong"}, {"demo", "demo-secret"}} {
		c := dialStartTLS(t, ts.Addr("587"), nil)
		wantRefusal(t, c.Auth(cc), "", 535, ec578)
	}
}

func TestAuthCRAMMD5NotOfferedWithOnlyHashedPasswords(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-server-tls-certificate {{.CertFile}} {{.KeyFile}}
smtp-listener 127.0.0.1:{{.Port587}}
<smtp-user demo>
    password-hash {{.PasswordHash "demo-secret"}}
</smtp-user>
`)
	c := dialStartTLS(t, ts.Addr("587"), nil)
	if ok, mechs := c.Extension("AUTH"); !ok || strings.Contains(mechs, "CRAM-MD5") {
		t.Errorf("AUTH = %v %q, want PLAIN LOGIN without CRAM-MD5", ok, mechs)
	}
	wantRefusal(t, c.Auth(cramMD5Client{"demo", "demo-secret"}), "", 504, ec574)
}

func TestAuthNotOfferedInTheClearUnlessAllowed(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-server-tls-certificate {{.CertFile}} {{.KeyFile}}
smtp-listener 127.0.0.1:{{.Port587}}
smtp-listener 127.0.0.1:{{.Port2525}} source=clear
<source clear>
    allow-unencrypted-plain-auth yes
</source>
<source {auth}>
    always-allow-relaying yes
</source>
<smtp-user demo>
    password-hash {{.PasswordHash "demo-secret"}}
</smtp-user>
`)
	c := dial(t, ts.Addr("587"))
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if ok, mechs := c.Extension("AUTH"); ok {
		t.Errorf("AUTH %q advertised in the clear", mechs)
	}
	// Tried anyway, with the right password: refused, nothing checked.
	wantRefusal(t, c.Auth(sasl.NewPlainClient("", "demo", "demo-secret")), "", 538, ec5711)
	c = dial(t, ts.Addr("587"))
	wantRefusal(t, c.Auth(sasl.NewLoginClient("demo", "demo-secret")), "", 538, ec5711)

	// allow-unencrypted-plain-auth yes: offered and working in the clear.
	c = dial(t, ts.Addr("2525"))
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(mechs, "PLAIN") {
		t.Errorf("AUTH = %v %q on a source allowing it in the clear", ok, mechs)
	}
	if err := c.Auth(sasl.NewPlainClient("", "demo", "demo-secret")); err != nil {
		t.Fatalf("AUTH PLAIN in the clear: %v", err)
	}
	m := ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com"}, message()))
	if rcv := m.Values("Received"); len(rcv) != 1 || !strings.Contains(rcv[0], "with ESMTPA;") {
		t.Errorf("Received = %q, want ESMTPA", rcv)
	}
}

func TestAuthFailureRateExceededClosesConnection(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    allow-unencrypted-plain-auth yes
    smtp-max-auth-failure-rate 2/h
</source>
<smtp-user demo>
    password-hash {{.PasswordHash "demo-secret"}}
</smtp-user>
`)
	plain := func(user, pass string) string {
		return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass))
	}
	session := func() *rawConn {
		r := dialRaw(t, "", ts.Addr("2525"))
		r.mustReply(220)
		r.mustCmd(250, "EHLO client.example")
		return r
	}

	// Two failures are within 2/h.
	r := session()
	for range 2 {
		if msg := r.mustCmd(535, "%s", plain("demo", "wrong")); !strings.HasPrefix(msg, "5.7.8 ") {
			t.Fatalf("AUTH failure reply %q, want 5.7.8", msg)
		}
	}
	// The third, on another connection, is one too many.
	r2 := session()
	if msg := r2.mustCmd(421, "%s", plain("demo", "wrong")); !strings.HasPrefix(msg, "4.7.0 ") {
		t.Fatalf("reply %q, want 421 4.7.0", msg)
	}
	r2.waitClosed()
	// The first connection is blocked as well now, even with the right
	// password, and closed.
	if msg := r.mustCmd(421, "%s", plain("demo", "demo-secret")); !strings.HasPrefix(msg, "4.7.0 ") {
		t.Fatalf("reply %q, want 421 4.7.0", msg)
	}
	r.waitClosed()
	// So is a new one.
	r3 := session()
	if msg := r3.mustCmd(421, "%s", plain("demo", "demo-secret")); !strings.HasPrefix(msg, "4.7.0 ") {
		t.Fatalf("reply %q, want 421 4.7.0", msg)
	}
	r3.waitClosed()
}

func TestRequireStartTLSRefusesMailAndAuthInTheClear(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-server-tls-certificate {{.CertFile}} {{.KeyFile}}
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
    require-starttls yes
    allow-unencrypted-plain-auth yes
</source>
<smtp-user demo>
    password-hash {{.PasswordHash "demo-secret"}}
</smtp-user>
`)
	c := dial(t, ts.Addr("2525"))
	_, err := send(c, "a@b.example", []string{"x@example.com"}, message())
	wantRefusal(t, err, stageMail, 530, ec570)
	wantRefusal(t, c.Auth(sasl.NewPlainClient("", "demo", "demo-secret")), "", 530, ec570)

	c = dialStartTLS(t, ts.Addr("2525"), nil)
	mustSend(t, c, "a@b.example", []string{"x@example.com"}, message())
}

func TestServiceRefusedAtConnectWith554(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<source 127.0.0.9>
    smtp-service no
</source>
`)
	c := dialFrom(t, "127.0.0.9", ts.Addr("2525"))
	se := wantRefusal(t, c.Hello("client.example"), "", 554, ec571)
	if !strings.Contains(se.Message, "127.0.0.9") {
		t.Errorf("greeting %q does not name the client", se.Message)
	}
	r := dialRaw(t, "127.0.0.9", ts.Addr("2525"))
	r.mustReply(554)
	r.waitClosed()
	// Others are served.
	mustSend(t, dial(t, ts.Addr("2525")), "a@b.example", []string{"x@example.com"}, message())
}

func TestTotalMaxSMTPInRefusesAtConnectWith421(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
total-max-smtp-in 2
smtp-listener 127.0.0.1:{{.Port2525}}
smtp-listener 127.0.0.1:{{.Port587}}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
`)
	// The cap is over all listeners.
	a := dial(t, ts.Addr("2525"))
	b := dial(t, ts.Addr("587"))
	for _, c := range []*smtp.Client{a, b} {
		if err := c.Hello("client.example"); err != nil {
			t.Fatal(err)
		}
	}
	wantRefusal(t, dial(t, ts.Addr("2525")).Hello("client.example"), "", 421, ec470)
	wantRefusal(t, dial(t, ts.Addr("587")).Hello("client.example"), "", 421, ec470)

	// A slot comes back when a client leaves.
	if err := a.Quit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, clientTimeout, "a free connection slot after QUIT", func() bool {
		c := dial(t, ts.Addr("2525"))
		defer c.Close()
		return c.Hello("client.example") == nil
	})
	mustSend(t, b, "a@b.example", []string{"x@example.com"}, message())
}

func TestTooManyRecipientsIs452(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
    max-rcpt-per-message 2
</source>
`)
	c := dial(t, ts.Addr("2525"))
	_, err := send(c, "a@b.example", []string{"x@example.com", "y@example.com", "z@example.com"}, message())
	wantRefusal(t, err, stageRcpt, 452, ec453)
	if !strings.Contains(err.Error(), "z@example.com") {
		t.Errorf("refused at %v, want the third recipient", err)
	}
	// Two are fine, on the same connection.
	m := ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com", "y@example.com"}, message()))
	if len(m.Recipients) != 2 {
		t.Errorf("%d recipients spooled, want 2", len(m.Recipients))
	}
}

// sizeConf: 127.0.0.1 may send 10K, 10/8 1M; the server's SIZE is the
// largest.
const sizeConf = `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
    max-message-size 10K
</source>
<source 10/8>
    max-message-size 1M
</source>
`

func TestMessageTooLargeAtMailIs552(t *testing.T) {
	t.Parallel()
	ts := startServer(t, sizeConf)
	c := dial(t, ts.Addr("2525"))
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if _, size := c.Extension("SIZE"); size != "1048576" {
		t.Errorf("SIZE %q, want the largest source limit 1048576", size)
	}
	for _, size := range []int64{
		10*1024 + 1, // over this source's limit, under the server's
		2 << 20,     // over every limit
	} {
		_, err := sendWith(c, "a@b.example", &smtp.MailOptions{Size: size}, []string{"x@example.com"}, nil, message())
		wantRefusal(t, err, stageMail, 552, ec534)
	}
	// SIZE at the limit is fine.
	if _, err := sendWith(c, "a@b.example", &smtp.MailOptions{Size: 10 * 1024}, []string{"x@example.com"}, nil, message()); err != nil {
		t.Fatalf("SIZE=10240: %v", err)
	}
}

func TestMessageTooLargeInDataIs552(t *testing.T) {
	t.Parallel()
	t.Run("source limit below the server's", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, sizeConf)
		c := dial(t, ts.Addr("2525"))
		_, err := send(c, "a@b.example", []string{"x@example.com"}, messageOfSize(10*1024+1))
		wantRefusal(t, err, stageDataEnd, 552, ec534)
		if tot := ts.Queue.Totals(); tot.Messages != 0 {
			t.Errorf("spool holds %d messages", tot.Messages)
		}
		// The same connection goes on, and a message of exactly the
		// limit is accepted (with its Received header it is larger).
		mustSend(t, c, "a@b.example", []string{"x@example.com"}, messageOfSize(10*1024))
	})
	t.Run("one limit for all", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
    max-message-size 10K
</source>
`)
		c := dial(t, ts.Addr("2525"))
		_, err := send(c, "a@b.example", []string{"x@example.com"}, messageOfSize(64*1024))
		wantRefusal(t, err, stageDataEnd, 552, ec534)
		// The limit itself is allowed, one byte more is not.
		mustSend(t, c, "a@b.example", []string{"x@example.com"}, messageOfSize(10*1024))
		_, err = send(c, "a@b.example", []string{"x@example.com"}, messageOfSize(10*1024+1))
		wantRefusal(t, err, stageDataEnd, 552, ec534)
	})
}

func TestSpoolErrorIs451(t *testing.T) {
	t.Parallel()
	spool := &failingSpool{Err: errors.New("disk on fire")}
	ts := startServerWith(t, relayConf, serverOpts{Spool: spool})
	c := dial(t, ts.Addr("2525"))
	_, err := send(c, "a@b.example", []string{"x@example.com"}, message())
	wantRefusal(t, err, stageDataEnd, 451, ec430)
	if n := spool.Calls(); n != 1 {
		t.Errorf("Put called %d times, want 1", n)
	}
	if strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("the reply leaks the spool's error: %v", err)
	}
	// The session survives for a retry.
	if err := c.Noop(); err != nil {
		t.Errorf("NOOP after 451: %v", err)
	}
}

func TestLowDiskSpaceIs452(t *testing.T) {
	t.Parallel()
	var free atomic.Uint64
	free.Store(5 << 20)
	ts := startServerWith(t, `
<spool {{.Dir}}/spool>
    min-free-space 10M
</spool>
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
`, serverOpts{FreeSpace: func() (uint64, error) { return free.Load(), nil }})
	c := dial(t, ts.Addr("2525"))
	_, err := send(c, "a@b.example", []string{"x@example.com"}, message())
	wantRefusal(t, err, "", 452, ec431)
	if tot := ts.Queue.Totals(); tot.Messages != 0 {
		t.Errorf("spool holds %d messages while the disk is full", tot.Messages)
	}
	free.Store(11 << 20)
	mustSend(t, c, "a@b.example", []string{"x@example.com"}, message())
}

// vmtaConf has two VMTAs and a pool. 127.0.0.1 may pick with X-Virtual-MTA
// and defaults to mta1; 127.0.0.9 may not pick and defaults to the pool;
// 127.0.0.10 routes by sender with a pattern list.
const vmtaConf = `
smtp-listener 127.0.0.1:{{.Port2525}}
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.example
</virtual-mta>
<virtual-mta mta2>
    smtp-source-host 127.0.0.3 mta2.example
</virtual-mta>
<virtual-mta-pool outbound>
    virtual-mta mta1
    virtual-mta mta2
</virtual-mta-pool>
<pattern-list by-sender>
    mail-from /@news\.example$/ virtual-mta=mta2
    mail-from /@bulk\.example$/ virtual-mta=outbound
</pattern-list>
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-virtual-mta yes
    default-virtual-mta mta1
</source>
<source 127.0.0.9>
    always-allow-relaying yes
    default-virtual-mta outbound
</source>
<source 127.0.0.10>
    always-allow-relaying yes
    pattern-list by-sender
    default-virtual-mta mta1
</source>
`

func TestXVirtualMTASelectsVMTAAndIsStripped(t *testing.T) {
	t.Parallel()
	ts := startServer(t, vmtaConf)
	c := dial(t, ts.Addr("2525"))
	m := ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com", "y@example.net"}, message("X-Virtual-MTA: mta2")))
	if got, want := rcptVMTAs(m), []string{"x@example.com mta2", "y@example.net mta2"}; !slices.Equal(got, want) {
		t.Errorf("recipients %q, want %q", got, want)
	}
	if v := m.Values("X-Virtual-MTA"); len(v) != 0 {
		t.Errorf("X-Virtual-MTA left in the spooled message: %q", v)
	}
	if !strings.Contains(string(m.Body), "Hello from the listener tests.") {
		t.Errorf("body lost:\n%s", m.Body)
	}
}

func TestXVirtualMTANamingAPoolPicksMembersRoundRobin(t *testing.T) {
	t.Parallel()
	ts := startServer(t, vmtaConf)
	c := dial(t, ts.Addr("2525"))
	seen := map[string]bool{}
	for range 4 {
		m := ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com"}, message("X-Virtual-MTA: outbound")))
		r := m.Recipients[0]
		if r.Pool != "outbound" || (r.VMTA != "mta1" && r.VMTA != "mta2") {
			t.Fatalf("recipient went to VMTA %q pool %q, want a member of pool outbound", r.VMTA, r.Pool)
		}
		if len(m.Values("X-Virtual-MTA")) != 0 {
			t.Error("X-Virtual-MTA left in the spooled message")
		}
		seen[r.VMTA] = true
	}
	if !seen["mta1"] || !seen["mta2"] {
		t.Errorf("4 messages through pool outbound used only %v", seen)
	}
}

func TestUnknownXVirtualMTAIsRefusedNamingIt(t *testing.T) {
	t.Parallel()
	ts := startServer(t, vmtaConf)
	c := dial(t, ts.Addr("2525"))
	_, err := send(c, "a@b.example", []string{"x@example.com"}, message("X-Virtual-MTA: nosuch-mta"))
	se := wantRefusal(t, err, stageDataEnd, 550, ec571)
	if !strings.Contains(se.Message, `"nosuch-mta"`) {
		t.Errorf("reply %q does not name the unknown VMTA", se.Message)
	}
	if tot := ts.Queue.Totals(); tot.Messages != 0 {
		t.Errorf("spool holds %d messages: an unknown VMTA must not fall back", tot.Messages)
	}
}

func TestWithoutXVirtualMTASourceDefaultApplies(t *testing.T) {
	t.Parallel()
	ts := startServer(t, vmtaConf)
	m := ts.spooled(t, mustSend(t, dial(t, ts.Addr("2525")), "a@b.example", []string{"x@example.com"}, message()))
	if got := rcptVMTAs(m); !slices.Equal(got, []string{"x@example.com mta1"}) {
		t.Errorf("recipients %q, want mta1 (127.0.0.1's default-virtual-mta)", got)
	}

	// A source that does not process the header: it is ignored (its
	// pool default applies) and still removed.
	c := dialFrom(t, "127.0.0.9", ts.Addr("2525"))
	m = ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com"}, message("X-Virtual-MTA: mta2", "X-Virtual-MTA: nosuch")))
	if r := m.Recipients[0]; r.Pool != "outbound" {
		t.Errorf("recipient went to VMTA %q pool %q, want pool outbound (127.0.0.9's default)", r.VMTA, r.Pool)
	}
	if v := m.Values("X-Virtual-MTA"); len(v) != 0 {
		t.Errorf("X-Virtual-MTA left in the spooled message: %q", v)
	}
}

func TestPatternListRoutesBySender(t *testing.T) {
	t.Parallel()
	ts := startServer(t, vmtaConf)
	c := dialFrom(t, "127.0.0.10", ts.Addr("2525"))
	for _, tc := range []struct{ from, vmta, pool string }{
		{"letters@news.example", "mta2", ""},
		{"a@b.example", "mta1", ""}, // no match: the source's default
	} {
		m := ts.spooled(t, mustSend(t, c, tc.from, []string{"x@example.com"}, message()))
		if r := m.Recipients[0]; r.VMTA != tc.vmta || r.Pool != tc.pool {
			t.Errorf("from %s: VMTA %q pool %q, want %q %q", tc.from, r.VMTA, r.Pool, tc.vmta, tc.pool)
		}
	}
	m := ts.spooled(t, mustSend(t, c, "x@bulk.example", []string{"x@example.com"}, message()))
	if r := m.Recipients[0]; r.Pool != "outbound" {
		t.Errorf("from x@bulk.example: VMTA %q pool %q, want pool outbound", r.VMTA, r.Pool)
	}
}

// headerConf: 127.0.0.1 takes X-Job and strips two headers; 127.0.0.9
// does neither and hides the client in Received; 127.0.0.10 adds no
// Received header.
const headerConf = `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-job yes
    remove-header X-Internal-Id
    remove-header X-Mailer
</source>
<source 127.0.0.9>
    always-allow-relaying yes
    hide-message-source yes
</source>
<source 127.0.0.10>
    always-allow-relaying yes
    add-received-header no
</source>
`

func TestXJobIsTakenAndRemoved(t *testing.T) {
	t.Parallel()
	ts := startServer(t, headerConf)
	m := ts.spooled(t, mustSend(t, dial(t, ts.Addr("2525")), "a@b.example", []string{"x@example.com"}, message("X-Job: spring-sale")))
	if m.Envelope.JobID != "spring-sale" {
		t.Errorf("JobID = %q, want spring-sale", m.Envelope.JobID)
	}
	if v := m.Values("X-Job"); len(v) != 0 {
		t.Errorf("X-Job left in the message: %q", v)
	}
	if n := ts.Queue.Keys(queue.Selector{JobID: "spring-sale"}); len(n) != 1 {
		t.Errorf("queue keys of job spring-sale: %v", n)
	}

	// Without process-x-job the header is mail like any other.
	m = ts.spooled(t, mustSend(t, dialFrom(t, "127.0.0.9", ts.Addr("2525")), "a@b.example", []string{"x@example.com"}, message("X-Job: spring-sale")))
	if m.Envelope.JobID != "" || !slices.Equal(m.Values("X-Job"), []string{"spring-sale"}) {
		t.Errorf("without process-x-job: JobID %q, X-Job %q", m.Envelope.JobID, m.Values("X-Job"))
	}
}

func TestRemoveHeaderStripsEveryListedHeader(t *testing.T) {
	t.Parallel()
	ts := startServer(t, headerConf)
	m := ts.spooled(t, mustSend(t, dial(t, ts.Addr("2525")), "a@b.example", []string{"x@example.com"},
		message("X-Internal-Id: 1", "x-mailer: Mailer 1.0", "X-Internal-Id: 2", "X-Kept: yes")))
	for _, h := range []string{"X-Internal-Id", "X-Mailer"} {
		if v := m.Values(h); len(v) != 0 {
			t.Errorf("%s left in the message: %q", h, v)
		}
	}
	if !slices.Equal(m.Values("X-Kept"), []string{"yes"}) || len(m.Values("Subject")) != 1 {
		t.Errorf("other headers lost: %q", m.FieldNames())
	}
}

func TestReceivedHeaderIsAddedOnTop(t *testing.T) {
	t.Parallel()
	now := time.Date(2024, 5, 6, 7, 8, 9, 0, time.FixedZone("", 2*3600))
	ts := startServerWith(t, headerConf, serverOpts{Now: func() time.Time { return now }})
	c := dial(t, ts.Addr("2525"))
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	m := ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com"}, message("Received: from earlier.example by b.example; Mon, 6 May 2024 07:00:00 +0200")))
	if names := m.FieldNames(); len(names) == 0 || names[0] != "Received" {
		t.Fatalf("header fields %q: want Received first", names)
	}
	rcv := m.Values("Received")
	if len(rcv) != 2 {
		t.Fatalf("Received fields %q, want this hop's and the earlier one", rcv)
	}
	got := strings.Join(strings.Fields(rcv[0]), " ")
	want := "from client.example ([127.0.0.1]) by tern.test (Tern) with ESMTP; Mon, 06 May 2024 07:08:09 +0200"
	if got != want {
		t.Errorf("Received:\n got %s\nwant %s", got, want)
	}
	if !strings.Contains(rcv[1], "earlier.example") {
		t.Errorf("the earlier Received is no longer second: %q", rcv)
	}
}

func TestHideMessageSourceLeavesClientIPOutOfReceived(t *testing.T) {
	t.Parallel()
	ts := startServer(t, headerConf)
	c := dialFrom(t, "127.0.0.9", ts.Addr("2525"))
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	m := ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com"}, message()))
	rcv := m.Values("Received")
	if len(rcv) != 1 || !strings.HasPrefix(rcv[0], "by tern.test") {
		t.Fatalf("Received %q, want one starting with 'by tern.test'", rcv)
	}
	if strings.Contains(rcv[0], "127.0.0.9") || strings.Contains(rcv[0], "client.example") {
		t.Errorf("Received %q shows the hidden client", rcv[0])
	}
	// The envelope still records it, for the operator.
	if m.Envelope.SourceIP != netip.MustParseAddr("127.0.0.9") {
		t.Errorf("SourceIP = %v", m.Envelope.SourceIP)
	}

	// add-received-header no.
	m = ts.spooled(t, mustSend(t, dialFrom(t, "127.0.0.10", ts.Addr("2525")), "a@b.example", []string{"x@example.com"}, message()))
	if rcv := m.Values("Received"); len(rcv) != 0 {
		t.Errorf("Received %q added with add-received-header no", rcv)
	}
}

func TestEHLOAdvertisesExtensions(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	c := dial(t, ts.Addr("2525"))
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "SIZE", "DSN", "CHUNKING", "STARTTLS"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("EHLO does not advertise %s", ext)
		}
	}
	if _, size := c.Extension("SIZE"); size != strconv.Itoa(50<<20) {
		t.Errorf("SIZE %q, want the default 50M", size)
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised before STARTTLS")
	}

	c = dialStartTLS(t, ts.Addr("2525"), nil)
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN CRAM-MD5" {
		t.Errorf("AUTH after STARTTLS = %v %q, want PLAIN LOGIN CRAM-MD5", ok, mechs)
	}

	// Without a certificate there is no STARTTLS.
	ts2 := startServer(t, relayConf)
	c = dial(t, ts2.Addr("2525"))
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised without a certificate")
	}
}

func TestImplicitTLSListener(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	c := dialTLS(t, ts.Addr("465"), nil)
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised on an implicit-TLS listener")
	}
	if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(mechs, "PLAIN") {
		t.Errorf("AUTH = %v %q on the TLS listener", ok, mechs)
	}
	// The listener's source (submission) applies: AUTH first.
	_, err := send(c, "a@b.example", []string{"x@example.com"}, message())
	wantRefusal(t, err, stageMail, 530, ec570)
	if err := c.Auth(sasl.NewPlainClient("", "demo", "demo-secret")); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	m := ts.spooled(t, mustSend(t, c, "a@b.example", []string{"x@example.com"}, message()))
	if rcv := m.Values("Received"); len(rcv) != 1 || !strings.Contains(rcv[0], "with ESMTPSA;") {
		t.Errorf("Received = %q", rcv)
	}
}

func TestTLSBelow12FailsTheHandshake(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	old := clientTLS(t)
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11

	// Implicit TLS.
	conn, err := tls.Dial("tcp", ts.Addr("465"), old)
	if err == nil {
		conn.Close()
		t.Fatal("TLS 1.1 handshake with the implicit-TLS listener succeeded")
	}
	if !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("handshake error %v, want a protocol version alert", err)
	}

	// STARTTLS: the handshake runs with the next command.
	c, err := smtp.NewClientStartTLS(dialConn(t, "", ts.Addr("587")), old)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example"); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("EHLO after a TLS 1.1 STARTTLS: %v, want a protocol version alert", err)
	}

	// TLS 1.2 is fine on both.
	tls12 := clientTLS(t)
	tls12.MaxVersion = tls.VersionTLS12
	if err := dialTLS(t, ts.Addr("465"), tls12).Hello("client.example"); err != nil {
		t.Errorf("TLS 1.2 implicit: %v", err)
	}
	dialStartTLS(t, ts.Addr("587"), tls12)
}

var rawAcceptedRE = regexp.MustCompile(`^2\.0\.0 OK ([0-9a-f]{16})$`)

func TestAcceptedReplyCarriesSpooledQueueID(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	r := dialRaw(t, "", ts.Addr("2525"))
	r.mustReply(220)
	r.mustCmd(250, "EHLO client.example")
	r.mustCmd(250, "MAIL FROM:<a@b.example>")
	r.mustCmd(250, "RCPT TO:<x@example.com>")
	r.mustCmd(354, "DATA")
	msg := r.mustCmd(250, "%s", strings.TrimSuffix(message(), "\r\n")+"\r\n.")
	mm := rawAcceptedRE.FindStringSubmatch(msg)
	if mm == nil {
		t.Fatalf("250 reply %q, want 2.0.0 OK <16 hex digits>", msg)
	}
	id, err := queue.ParseID(mm[1])
	if err != nil {
		t.Fatal(err)
	}
	if ts.spooled(t, id).Recipients[0].Address != "x@example.com" {
		t.Error("wrong message under the replied id")
	}
	r.mustCmd(221, "QUIT")
	r.waitClosed()
}

func TestPipelinedTransaction(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	r := dialRaw(t, "", ts.Addr("2525"))
	r.mustReply(220)
	r.mustCmd(250, "EHLO client.example")
	// One write for the whole envelope, as PIPELINING allows.
	if _, err := fmt.Fprintf(r.conn, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<y@example.com>\r\nDATA\r\n"); err != nil {
		t.Fatal(err)
	}
	for _, code := range []int{250, 250, 250, 354} {
		r.mustReply(code)
	}
	msg := r.mustCmd(250, "%s", strings.TrimSuffix(message(), "\r\n")+"\r\n.")
	id, _ := queue.ParseID(rawAcceptedRE.FindStringSubmatch(msg)[1])
	if n := len(ts.spooled(t, id).Recipients); n != 2 {
		t.Errorf("%d recipients, want 2", n)
	}
}

func TestChunkingBDAT(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	r := dialRaw(t, "", ts.Addr("2525"))
	r.mustReply(220)
	r.mustCmd(250, "EHLO client.example")
	r.mustCmd(250, "MAIL FROM:<a@b.example>")
	r.mustCmd(250, "RCPT TO:<x@example.com>")
	body := message("X-Virtual-MTA: stripped-anyway")
	half := len(body) / 2
	fmt.Fprintf(r.conn, "BDAT %d\r\n%s", half, body[:half])
	r.mustReply(250)
	fmt.Fprintf(r.conn, "BDAT %d LAST\r\n%s", len(body)-half, body[half:])
	msg := r.mustReply(250)
	mm := rawAcceptedRE.FindStringSubmatch(msg)
	if mm == nil {
		t.Fatalf("BDAT LAST reply %q", msg)
	}
	id, _ := queue.ParseID(mm[1])
	m := ts.spooled(t, id)
	if len(m.Values("X-Virtual-MTA")) != 0 || !strings.HasSuffix(string(m.Body), "\r\n\r\nHello from the listener tests.\r\n") {
		t.Errorf("spooled BDAT message:\n%s", m.Body)
	}
}

func TestDSNParametersAreSpooled(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	c := dial(t, ts.Addr("2525"))
	id, err := sendWith(c, "a@b.example",
		&smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "env-42"},
		[]string{"x@example.com"},
		&smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed},
			OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "orig@example.com"},
		message())
	if err != nil {
		t.Fatal(err)
	}
	m := ts.spooled(t, id)
	if m.Envelope.EnvID != "env-42" || m.Envelope.DSNRet != queue.RetHeaders {
		t.Errorf("envelope ENVID %q RET %v", m.Envelope.EnvID, m.Envelope.DSNRet)
	}
	r := m.Recipients[0]
	if r.ORcpt != "orig@example.com" || r.Notify != queue.NotifyFailure|queue.NotifyDelay {
		t.Errorf("recipient ORCPT %q NOTIFY %v", r.ORcpt, r.Notify)
	}
}

func TestSMTPUTF8AddressesAreAccepted(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	c := dial(t, ts.Addr("2525"))
	id, err := sendWith(c, "José@b.example", &smtp.MailOptions{UTF8: true}, []string{"用户@例子.example"}, nil,
		message("Subject: =?utf-8?q?caf=C3=A9?="))
	if err != nil {
		t.Fatal(err)
	}
	m := ts.spooled(t, id)
	if m.Envelope.Sender != "José@b.example" || m.Recipients[0].Address != "用户@例子.example" {
		t.Errorf("envelope %q → %q", m.Envelope.Sender, m.Recipients[0].Address)
	}
}

// swaks tests: an independent client checks the same behaviour.

var swaksQueuedRE = regexp.MustCompile(`250 2\.0\.0 OK ([0-9a-f]{16})`)

// swaksQueueID returns the queue id of swaks' transcript, failing the test
// if there is none.
func swaksQueueID(t *testing.T, out string) queue.ID {
	t.Helper()
	m := swaksQueuedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no 250 2.0.0 OK <id> in swaks output:\n%s", out)
	}
	id, err := queue.ParseID(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func swaksArgs(addr string, more ...string) []string {
	return append([]string{"--server", addr, "--helo", "swaks.example", "--from", "a@b.example", "--to", "x@example.com"}, more...)
}

func TestSwaksAuthPlainOverStartTLS(t *testing.T) {
	t.Parallel()
	swaksPath(t)
	ts := startServer(t, submissionConf)
	out, code := runSwaks(t, swaksArgs(ts.Addr("587"), "--tls", "--auth", "PLAIN", "--auth-user", "demo", "--auth-password", "demo-secret")...)
	if code != 0 {
		if strings.Contains(out, "TLS") && strings.Contains(out, "not available") {
			t.Fatalf("swaks has no TLS support: install libnet-ssleay-perl (.ci/run does)\n%s", out)
		}
		t.Fatalf("swaks exit code %d, want 0\n%s", code, out)
	}
	for _, want := range []string{"STARTTLS", "AUTH PLAIN", "235 2.7.0"} {
		if !strings.Contains(out, want) {
			t.Errorf("swaks output lacks %q:\n%s", want, out)
		}
	}
	m := ts.spooled(t, swaksQueueID(t, out))
	if m.Envelope.AuthUser != "demo" || m.Envelope.Sender != "a@b.example" || m.Recipients[0].Address != "x@example.com" {
		t.Errorf("spooled envelope %+v, recipients %q", m.Envelope, rcptVMTAs(m))
	}
	if rcv := m.Values("Received"); len(rcv) != 1 || !strings.Contains(rcv[0], "from swaks.example ([127.0.0.1])") || !strings.Contains(rcv[0], "ESMTPSA") {
		t.Errorf("Received = %q", rcv)
	}
}

func TestSwaksAuthWrongPasswordFails(t *testing.T) {
	t.Parallel()
	swaksPath(t)
	ts := startServer(t, submissionConf)
	out, code := runSwaks(t, swaksArgs(ts.Addr("587"), "--tls", "--auth", "PLAIN", "--auth-user", "demo", "--auth-password", "wrong")...)
	if code != 28 || !strings.Contains(out, "535 5.7.8") {
		t.Errorf("swaks exit code %d, want 28 (AUTH error) with 535 5.7.8\n%s", code, out)
	}
}

func TestSwaksAuthLoginAndCRAMMD5(t *testing.T) {
	t.Parallel()
	swaksPath(t)
	ts := startServer(t, submissionConf)
	for _, tc := range []struct{ mech, user, pass string }{
		{"LOGIN", "demo", "demo-secret"},
		{"CRAM-MD5", "legacy", "legacy-secret"},
	} {
		out, code := runSwaks(t, swaksArgs(ts.Addr("587"), "--tls", "--auth", tc.mech, "--auth-user", tc.user, "--auth-password", tc.pass)...)
		if code != 0 {
			t.Errorf("AUTH %s: swaks exit code %d\n%s", tc.mech, code, out)
			continue
		}
		if m := ts.spooled(t, swaksQueueID(t, out)); m.Envelope.AuthUser != tc.user {
			t.Errorf("AUTH %s: AuthUser %q", tc.mech, m.Envelope.AuthUser)
		}
	}
}

func TestSwaksImplicitTLS(t *testing.T) {
	t.Parallel()
	swaksPath(t)
	ts := startServer(t, submissionConf)
	out, code := runSwaks(t, swaksArgs(ts.Addr("465"), "--tls-on-connect", "--auth", "PLAIN", "--auth-user", "demo", "--auth-password", "demo-secret")...)
	if code != 0 {
		t.Fatalf("swaks exit code %d\n%s", code, out)
	}
	ts.spooled(t, swaksQueueID(t, out))
}

func TestSwaksTrustedIPRelays(t *testing.T) {
	t.Parallel()
	swaksPath(t)
	ts := startServer(t, relayConf)
	out, code := runSwaks(t, swaksArgs(ts.Addr("2525"), "--header", "X-Virtual-MTA: {default}")...)
	if code != 0 {
		t.Fatalf("swaks exit code %d, want 0\n%s", code, out)
	}
	m := ts.spooled(t, swaksQueueID(t, out))
	if m.Envelope.AuthUser != "" || m.Envelope.SourceIP != loopbackIP("127.0.0.1") {
		t.Errorf("envelope %+v", m.Envelope)
	}
	if len(m.Values("X-Virtual-MTA")) != 0 {
		t.Error("X-Virtual-MTA left in the message")
	}
}

func TestSwaksRelayDeniedForUntrustedIP(t *testing.T) {
	t.Parallel()
	swaksPath(t)
	ts := startServer(t, relayConf)
	out, code := runSwaks(t, swaksArgs(ts.Addr("2525"), "--local-interface", "127.0.0.9")...)
	if code != 24 || !strings.Contains(out, "550 5.7.1") {
		t.Errorf("swaks exit code %d, want 24 (no RCPT accepted) with 550 5.7.1\n%s", code, out)
	}
	if tot := ts.Queue.Totals(); tot.Messages != 0 {
		t.Errorf("spool holds %d messages", tot.Messages)
	}
}

// TestAddrsListsOpenListeners checks Addrs against the configured ports.
func TestAddrsListsOpenListeners(t *testing.T) {
	t.Parallel()
	ts := startServer(t, submissionConf)
	var got []string
	for _, a := range ts.Server.Addrs() {
		got = append(got, a.String())
	}
	slices.Sort(got)
	want := []string{ts.Addr("2525"), ts.Addr("465"), ts.Addr("587")}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Addrs = %q, want %q", got, want)
	}
}

func TestReloadAppliesToNewSessionsAndOpensAndClosesListeners(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-listener 127.0.0.1:{{.Port2525}}
smtp-listener 127.0.0.1:{{.Port "old"}}
`)
	before := dial(t, ts.Addr("2525"))
	if err := before.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	ts.Apply(t, `
smtp-listener 127.0.0.1:{{.Port2525}}
smtp-listener 127.0.0.1:{{.Port "new"}}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
`)
	// The kept listener serves new sessions with the new policy.
	mustSend(t, dial(t, ts.Addr("2525")), "a@b.example", []string{"x@example.com"}, message())
	mustSend(t, dial(t, ts.Addr("new")), "a@b.example", []string{"x@example.com"}, message())
	// A session that began before the reload keeps its configuration.
	_, err := send(before, "a@b.example", []string{"x@example.com"}, message())
	wantRefusal(t, err, stageRcpt, 550, ec571)

	var got []string
	for _, a := range ts.Server.Addrs() {
		got = append(got, a.String())
	}
	slices.Sort(got)
	want := []string{ts.Addr("2525"), ts.Addr("new")}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Addrs after reload = %q, want %q", got, want)
	}
	if c, err := net.DialTimeout("tcp", ts.Addr("old"), clientTimeout); err == nil {
		c.Close()
		t.Errorf("the removed listener %s still accepts", ts.Addr("old"))
	}
}

func TestAcceptedMessageIsInSpoolAfterReopen(t *testing.T) {
	t.Parallel()
	ts := startServer(t, vmtaConf)
	id := mustSend(t, dial(t, ts.Addr("2525")), "a@b.example", []string{"x@example.com"}, message("X-Virtual-MTA: mta2"))
	ts.Stop()
	q := openSpool(t, ts.SpoolDir)
	m := readSpooled(t, q, id)
	if got := rcptVMTAs(m); !slices.Equal(got, []string{"x@example.com mta2"}) {
		t.Errorf("after reopening: recipients %q", got)
	}
	if all := allSpooled(t, q); len(all) != 1 {
		t.Errorf("after reopening: %d messages, want 1", len(all))
	}
}

func TestNullSenderIsAccepted(t *testing.T) {
	t.Parallel()
	ts := startServer(t, relayConf)
	m := ts.spooled(t, mustSend(t, dial(t, ts.Addr("2525")), "", []string{"x@example.com"}, message()))
	if m.Envelope.Sender != "" {
		t.Errorf("Sender = %q, want the null sender", m.Envelope.Sender)
	}
}

// log-commands logs the commands and replies of the sessions of its source
// (a refused RCPT with its reply, DATA with the queue id), and nothing for
// other sources; AUTH shows the user name, never the password.
func TestLogCommands(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-server-tls-certificate {{.CertFile}} {{.KeyFile}}
smtp-listener 127.0.0.1:{{.Port2525}}
<smtp-user demo>
    password-hash {{.PasswordHash "demo-secret"}}
</smtp-user>
<source 127.0.0.1>
    always-allow-relaying yes
    log-commands yes
</source>
<source 127.0.0.9>
    always-allow-relaying yes
</source>`)
	c := dialStartTLS(t, ts.Addr("2525"), nil)
	if err := c.Auth(sasl.NewPlainClient("", "demo", "demo-secret")); err != nil {
		t.Fatal(err)
	}
	id := mustSend(t, c, "a@b.example", []string{"x@example.com"}, message())
	if err := c.Mail("a@b.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("x@bad..example", nil); err == nil {
		t.Fatal("a bad RCPT was accepted")
	}
	mustSend(t, dialFrom(t, "127.0.0.9", ts.Addr("2525")), "quiet@b.example", []string{"y@example.com"}, message())
	c.Quit()

	logs := ts.Logs()
	for _, want := range []string{
		`command="AUTH as \"demo\"" reply="235 2.7.0 Authentication succeeded"`,
		`command="MAIL FROM:<a@b.example>" reply="250 2.1.0 Sender OK"`,
		`command="RCPT TO:<x@example.com>" reply="250 2.1.5 Recipient OK"`,
		`command=DATA reply="250 2.0.0 OK ` + id.String() + `"`,
		`command="RCPT TO:<x@bad..example>" reply="5`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if strings.Contains(logs, "demo-secret") {
		t.Error("the password is in the log")
	}
	if strings.Contains(logs, "quiet@b.example>\" reply") {
		t.Error("a source without log-commands was logged")
	}
	if t.Failed() {
		t.Logf("log:\n%s", logs)
	}
}
