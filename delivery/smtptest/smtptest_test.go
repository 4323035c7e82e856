package smtptest_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/ternmta/tern/delivery/smtptest"
)

const wait = 10 * time.Second

// dial connects to the sink from local ("" for any address) and returns a
// client that has not greeted yet.
func dial(t *testing.T, s *smtptest.Sink, local string) *smtp.Client {
	t.Helper()
	d := net.Dialer{Timeout: wait}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	nc, err := d.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := smtp.NewClient(nc)
	c.CommandTimeout = wait
	c.SubmissionTimeout = wait
	t.Cleanup(func() { c.Close() })
	return c
}

// send runs one transaction on c.
func send(c *smtp.Client, from string, to []string, body string) error {
	if err := c.Mail(from, nil); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return fmt.Errorf("RCPT %s: %w", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return fmt.Errorf("DATA write: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return nil
}

func code(err error) int {
	var e *smtp.SMTPError
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

const body = "Subject: hi\r\n\r\nhello\r\n.leading dot\r\n"

func TestRecordsRemoteEHLOAndMessage(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	c := dial(t, s, "127.0.0.2")
	if err := c.Hello("vmta2.example"); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "bounce@sender.example", []string{"a@dest.example", "B@dest.example"}, body); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	msgs := s.WaitMessages(t, 1, wait)
	m := msgs[0]
	if m.Remote != netip.MustParseAddr("127.0.0.2") || m.EHLO != "vmta2.example" || m.TLSVersion != 0 || m.ConnID != 1 || m.Code != 250 {
		t.Errorf("message from %v EHLO %q TLS %x conn %d code %d", m.Remote, m.EHLO, m.TLSVersion, m.ConnID, m.Code)
	}
	if m.From != "bounce@sender.example" || !slices.Equal(m.Rcpts, []string{"a@dest.example", "B@dest.example"}) {
		t.Errorf("envelope %q -> %q", m.From, m.Rcpts)
	}
	if string(m.Data) != body {
		t.Errorf("data %q, want %q", m.Data, body)
	}
	if m.Received.IsZero() {
		t.Error("Received not set")
	}
	s.WaitActive(t, 0, wait)
	conns := s.Connections()
	if len(conns) != 1 {
		t.Fatalf("%d connections, want 1", len(conns))
	}
	cn := conns[0]
	if cn.ID != 1 || cn.Remote.Addr() != netip.MustParseAddr("127.0.0.2") || cn.Local != s.AddrPort() ||
		cn.EHLO != "vmta2.example" || cn.TLSVersion != 0 || cn.Refused || cn.Closed.IsZero() {
		t.Errorf("connection %+v", cn)
	}
	if s.Conns() != 1 || s.PeakConns() != 1 {
		t.Errorf("Conns %d PeakConns %d, want 1 1", s.Conns(), s.PeakConns())
	}
}

func TestNullSenderAndHELO(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	c := dial(t, s, "")
	if err := c.Hello("old.example"); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "", []string{"x@dest.example"}, body); err != nil {
		t.Fatal(err)
	}
	m := s.WaitMessages(t, 1, wait)[0]
	if m.From != "" || m.Remote != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("from %q remote %v", m.From, m.Remote)
	}
}

func TestFixedAddressesShareAPort(t *testing.T) {
	a := smtptest.Start(t, smtptest.Options{Addr: "127.0.0.5:0"})
	b := smtptest.Start(t, smtptest.Options{Addr: fmt.Sprintf("127.0.0.6:%d", a.Port())})
	if a.Port() != b.Port() || b.Addr() != fmt.Sprintf("127.0.0.6:%d", a.Port()) {
		t.Fatalf("addresses %s %s", a.Addr(), b.Addr())
	}
	for _, s := range []*smtptest.Sink{a, b} {
		c := dial(t, s, "")
		if err := c.Hello("client.example"); err != nil {
			t.Fatal(err)
		}
		if err := send(c, "f@example.com", []string{"t@example.net"}, body); err != nil {
			t.Fatal(err)
		}
		s.WaitMessages(t, 1, wait)
	}
	if len(a.Messages()) != 1 || len(b.Messages()) != 1 {
		t.Errorf("messages %d %d, want 1 1", len(a.Messages()), len(b.Messages()))
	}
}

func TestSTARTTLS(t *testing.T) {
	serverTLS, pool := smtptest.SelfSigned(t, "mx.dest.example", "127.0.0.1")
	s := smtptest.Start(t, smtptest.Options{TLS: serverTLS, Hostname: "mx.dest.example"})
	for _, tt := range []struct {
		name       string
		maxVersion uint16
	}{{"tls12", tls.VersionTLS12}, {"tls13", tls.VersionTLS13}} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &tls.Config{ServerName: "mx.dest.example", RootCAs: pool, MaxVersion: tt.maxVersion}
			c := dialTLS(t, s, cfg)
			if err := c.Hello("after-tls.example"); err != nil {
				t.Fatal(err)
			}
			if err := send(c, "f@example.com", []string{tt.name + "@example.net"}, body); err != nil {
				t.Fatal(err)
			}
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
		})
	}
	msgs := s.WaitMessages(t, 2, wait)
	for i, want := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		if msgs[i].TLSVersion != want || msgs[i].EHLO != "after-tls.example" {
			t.Errorf("message %d: TLS %x EHLO %q, want %x after-tls.example", i, msgs[i].TLSVersion, msgs[i].EHLO, want)
		}
	}
	for _, cn := range s.Connections() {
		if cn.TLSServerName != "mx.dest.example" || cn.TLSVersion < tls.VersionTLS12 {
			t.Errorf("connection %d: SNI %q TLS %x", cn.ID, cn.TLSServerName, cn.TLSVersion)
		}
	}

	for _, cn := range s.Connections() {
		if !slices.Equal(cn.EHLOs, []string{"localhost", "after-tls.example"}) {
			t.Errorf("connection %d: EHLOs %q", cn.ID, cn.EHLOs)
		}
	}

	// Refused below TLS 1.2; verified over an IP address.
	old := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS11}
	if err := dialTLS(t, s, old).Hello("x.example"); err == nil {
		t.Error("STARTTLS with TLS 1.1 succeeded")
	}
	ip := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	if err := dialTLS(t, s, ip).Hello("x.example"); err != nil {
		t.Errorf("STARTTLS verifying 127.0.0.1: %v", err)
	}
}

// dialTLS connects to the sink and runs STARTTLS; the handshake happens at
// the client's next command.
func dialTLS(t *testing.T, s *smtptest.Sink, cfg *tls.Config) *smtp.Client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", s.Addr(), wait)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c, err := smtp.NewClientStartTLS(nc, cfg)
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestNoSTARTTLSWithoutConfig(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	c := dial(t, s, "")
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered without Options.TLS")
	}
}

func TestScriptedRcpt(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.ScriptRcpt("Slow@Dest.example", smtptest.R(451, "4.7.1 try later"), smtptest.R(451), smtptest.R(250))
	s.ScriptRcpt("gone@dest.example", smtptest.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	c := dial(t, s, "")
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	var codes []int
	for range 4 {
		codes = append(codes, code(send(c, "f@example.com", []string{"slow@dest.example"}, body)))
		if err := c.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	if want := []int{451, 451, 0, 0}; !slices.Equal(codes, want) {
		t.Errorf("replies %v, want %v (0 = accepted)", codes, want)
	}

	// A refused recipient leaves the others in the transaction.
	if err := c.Mail("f@example.com", nil); err != nil {
		t.Fatal(err)
	}
	err := c.Rcpt("gone@dest.example", nil)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) || se.Message != "no such user" {
		t.Errorf("RCPT gone: %v", err)
	}
	if err := send(c, "f@example.com", []string{"ok@dest.example"}, body); err != nil {
		t.Fatal(err)
	}
	msgs := s.WaitMessages(t, 3, wait)
	if !slices.Equal(msgs[2].Rcpts, []string{"ok@dest.example"}) {
		t.Errorf("last message recipients %q", msgs[2].Rcpts)
	}

	// No replies clears the script.
	s.ScriptRcpt("gone@dest.example")
	if err := send(c, "f@example.com", []string{"gone@dest.example"}, body); err != nil {
		t.Errorf("after clearing the script: %v", err)
	}
}

func TestScriptedMailAndData(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.ScriptMail(smtptest.R(421, "4.3.2 shutting down"), smtptest.Reply{})
	s.ScriptData(smtptest.R(452), smtptest.R(554, "5.7.1 spam"), smtptest.R(250))
	c := dial(t, s, "")
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	var codes []int
	for range 4 {
		codes = append(codes, code(send(c, "f@example.com", []string{"t@dest.example"}, body)))
		if err := c.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	if want := []int{421, 452, 554, 0}; !slices.Equal(codes, want) {
		t.Errorf("replies %v, want %v", codes, want)
	}
	var attempts []int
	for _, m := range s.Attempts() {
		attempts = append(attempts, m.Code)
	}
	if want := []int{452, 554, 250}; !slices.Equal(attempts, want) {
		t.Errorf("attempt codes %v, want %v", attempts, want)
	}
	if n := len(s.Messages()); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
}

func TestScriptedGreeting(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.ScriptGreeting(smtptest.R(421, "4.7.0 too busy"), smtptest.Drop, smtptest.R(220))

	err := dial(t, s, "").Hello("client.example")
	if code(err) != 421 || !strings.Contains(err.Error(), "too busy") {
		t.Errorf("first connection: %v, want 421 too busy", err)
	}
	if err := dial(t, s, "").Hello("client.example"); err == nil || code(err) != 0 {
		t.Errorf("second connection: %v, want a closed connection", err)
	}
	c := dial(t, s, "")
	if err := c.Hello("client.example"); err != nil {
		t.Errorf("third connection: %v", err)
	}
	s.WaitFor(t, wait, "refused connections closed", func() bool {
		conns := s.Connections()
		return !conns[0].Closed.IsZero() && !conns[1].Closed.IsZero()
	})
	var refused []bool
	for _, cn := range s.Connections() {
		refused = append(refused, cn.Refused)
	}
	if !slices.Equal(refused, []bool{true, true, false}) {
		t.Errorf("refused %v", refused)
	}
}

func TestDropAfterData(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{DropAfterData: true})
	c := dial(t, s, "")
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	err := send(c, "f@example.com", []string{"t@dest.example"}, body)
	if err == nil || code(err) != 0 {
		t.Fatalf("send: %v, want the connection closed", err)
	}
	s.WaitActive(t, 0, wait)
	at := s.Attempts()
	if len(at) != 1 || at[0].Code != 0 || string(at[0].Data) != body {
		t.Fatalf("attempts %+v", at)
	}
	if n := len(s.Messages()); n != 0 {
		t.Errorf("%d messages accepted, want 0", n)
	}
}

func TestScriptedDropAtRcpt(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	s.ScriptRcpt("t@dest.example", smtptest.Drop, smtptest.Reply{})
	c := dial(t, s, "")
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "f@example.com", []string{"t@dest.example"}, body); err == nil || code(err) != 0 {
		t.Errorf("send: %v, want the connection closed", err)
	}
	s.WaitActive(t, 0, wait)
	c = dial(t, s, "")
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "f@example.com", []string{"t@dest.example"}, body); err != nil {
		t.Error(err)
	}
}

func TestPeakConns(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	release := s.Hold()
	const n = 5
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		c := dial(t, s, fmt.Sprintf("127.0.0.%d", i+2))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Hello(fmt.Sprintf("client%d.example", i)); err != nil {
				errs <- err
				return
			}
			if err := send(c, "f@example.com", []string{"t@dest.example"}, body); err != nil {
				errs <- err
				return
			}
			errs <- c.Quit()
		}()
	}
	// All five are open at once, held at EHLO.
	s.WaitActive(t, n, wait)
	if got := len(s.Messages()); got != 0 {
		t.Fatalf("%d messages while held", got)
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	s.WaitMessages(t, n, wait)
	s.WaitActive(t, 0, wait)

	// Sequential connections add to the total, not to the peak.
	for range 3 {
		c := dial(t, s, "")
		if err := c.Hello("late.example"); err != nil {
			t.Fatal(err)
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		s.WaitActive(t, 0, wait)
	}
	if s.PeakConns() != n || s.Conns() != n+3 {
		t.Errorf("PeakConns %d Conns %d, want %d %d", s.PeakConns(), s.Conns(), n, n+3)
	}
	remotes := map[netip.Addr]bool{}
	for _, m := range s.Messages() {
		remotes[m.Remote] = true
	}
	if len(remotes) != n {
		t.Errorf("messages from %d addresses, want %d", len(remotes), n)
	}
}

func TestAuth(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{Users: map[string]string{"relay": "secret"}})
	c := dial(t, s, "")
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if !c.SupportsAuth("PLAIN") {
		t.Fatal("AUTH PLAIN not offered")
	}
	if err := send(c, "f@example.com", []string{"t@dest.example"}, body); code(err) != 502 {
		t.Errorf("MAIL before AUTH: %v, want 502", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "relay", "wrong")); code(err) != 535 {
		t.Errorf("AUTH with a wrong password: %v, want 535", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "relay", "secret")); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "f@example.com", []string{"t@dest.example"}, body); err != nil {
		t.Fatal(err)
	}
	s.WaitMessages(t, 1, wait)
	if u := s.Connections()[0].AuthUser; u != "relay" {
		t.Errorf("AuthUser %q", u)
	}
}

func TestReplyHook(t *testing.T) {
	blocked := netip.MustParseAddr("127.0.0.3")
	var s *smtptest.Sink
	s = smtptest.Start(t, smtptest.Options{Reply: func(ev smtptest.Event) *smtptest.Reply {
		if ev.Stage == smtptest.StageMail && ev.Conn.Remote.Addr() == blocked {
			r := smtptest.R(550, "5.7.1 listed", ev.Conn.EHLO, fmt.Sprint(len(s.Messages())))
			return &r
		}
		return nil
	}})
	s.ScriptMail(smtptest.R(451))
	for _, tt := range []struct {
		local string
		want  int
	}{{"127.0.0.3", 550}, {"127.0.0.4", 451}, {"127.0.0.4", 451}} {
		c := dial(t, s, tt.local)
		if err := c.Hello("h.example"); err != nil {
			t.Fatal(err)
		}
		err := send(c, "f@example.com", []string{"t@dest.example"}, body)
		if code(err) != tt.want {
			t.Errorf("from %s: %v, want %d", tt.local, err, tt.want)
		}
		if tt.want == 550 && !strings.Contains(err.Error(), "listed h.example 0") {
			t.Errorf("hook reply %q", err)
		}
	}
}

func TestClose(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	c := dial(t, s, "")
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := c.Noop(); err == nil {
		t.Error("open connection still works after Close")
	}
	if nc, err := net.Dial("tcp", s.Addr()); err == nil {
		nc.Close()
		t.Error("dial succeeded after Close")
	}
	s.Close() // again, harmless
}

func TestWaitMessagesTimesOut(t *testing.T) {
	s := smtptest.Start(t, smtptest.Options{})
	ft := &fatalT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.WaitMessages(ft, 1, 50*time.Millisecond)
	}()
	<-done
	if !ft.failed {
		t.Error("WaitMessages did not fail on timeout")
	}
}

// fatalT records Fatalf instead of failing the test.
type fatalT struct {
	testing.TB
	failed bool
}

func (f *fatalT) Helper() {}

func (f *fatalT) Fatalf(format string, args ...any) {
	f.failed = true
	f.TB.Logf("(expected) "+format, args...)
	runtime.Goexit()
}
