package world_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ternmta/tern/delivery/smtptest/world"
)

// wait is the bound on every wait for a condition.
const wait = 20 * time.Second

// client is a minimal SMTP client for the tests.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

// dial connects from src (a loopback IP) to the host named name.
func dial(t *testing.T, w *world.World, name, src string) *client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: wait}
	c, err := d.Dial("tcp", net.JoinHostPort(hostIP(t, w, name), strconv.Itoa(w.Port())))
	if err != nil {
		t.Fatalf("dial %s from %s: %v", name, src, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(wait))
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

func hostIP(t *testing.T, w *world.World, name string) string {
	t.Helper()
	for _, h := range w.Hosts() {
		if h.Name == name {
			return h.IP
		}
	}
	t.Fatalf("no host %s", name)
	return ""
}

// reply reads one reply, all its lines, and returns its last line.
func (c *client) reply() (string, error) {
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			return l, err
		}
		l = strings.TrimRight(l, "\r\n")
		if len(l) < 4 || l[3] != '-' {
			return l, nil
		}
	}
}

// expect reads a reply and checks its code.
func (c *client) expect(code string) string {
	c.t.Helper()
	l, err := c.reply()
	if err != nil {
		c.t.Fatalf("reading a reply (want %s): %v (read %q)", code, err, l)
	}
	if !strings.HasPrefix(l, code) {
		c.t.Fatalf("reply %q, want %s", l, code)
	}
	return l
}

func (c *client) send(lines ...string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, strings.Join(lines, "\r\n")+"\r\n"); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// cmd sends a command and checks the reply's code.
func (c *client) cmd(line, code string) string {
	c.t.Helper()
	c.send(line)
	return c.expect(code)
}

// greet reads the banner and says EHLO.
func (c *client) greet() {
	c.t.Helper()
	c.expect("220")
	c.cmd("EHLO client.test", "250")
}

// deliver sends one message with Message-ID id to rcpts, each expected to
// be accepted.
func (c *client) deliver(from, id string, rcpts ...string) {
	c.t.Helper()
	c.cmd("MAIL FROM:<"+from+">", "250")
	for _, r := range rcpts {
		c.cmd("RCPT TO:<"+r+">", "250")
	}
	c.cmd("DATA", "354")
	c.send("Message-ID: "+id, "Subject: test", "", "body", "..dot line", ".")
	c.expect("250")
}

// closed reports whether the server closed the connection.
func (c *client) closed() bool {
	_, err := c.r.ReadByte()
	return err != nil
}

func waitFor(t *testing.T, w *world.World, what string, cond func(*world.Snapshot) bool) world.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := w.WaitFor(ctx, cond)
	if err != nil {
		t.Fatalf("waiting for %s: %v; last snapshot %+v", what, err, s)
	}
	return s
}

// fakeClock is a settable clock for greylisting.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// smallSpec is a world for the tests: one provider per behaviour.
func smallSpec() world.Spec {
	return world.Spec{
		Seed:        7,
		IdleTimeout: wait,
		Providers: []world.Provider{
			{Name: "capped", Domains: 2, Hosts: []world.Host{{}, {}}, ConnCapPerIP: 2, MsgsPerConn: 2},
			{Name: "grey", Domains: 1, Greylist: time.Minute},
			{Name: "limited", Domains: 3, RateLimitShare: 0.3, RateLimitReply: "421 4.7.28 Unusual rate"},
			{Name: "holes", Domains: 2, HostPerDomain: true, Hosts: []world.Host{{Kind: world.BlackHole}}},
			{Name: "half", Domains: 2, HostPerDomain: true, Hosts: []world.Host{{Kind: world.Dead}, {Pref: 50}}},
			{Name: "gone", Domains: 3, Nonexistent: true},
			{Name: "sender", Names: []string{"sender.test"}, Sender: true},
		},
	}
}

// The N+1th concurrent connection from one IP gets 421 at the banner and
// is closed, while another IP is served; a slot freed is given again.
func TestConnCapPerIP(t *testing.T) {
	w := world.StartT(t, smallSpec())
	a := dial(t, w, "mx1.capped.test", "127.0.0.20")
	a.expect("220")
	b := dial(t, w, "mx2.capped.test", "127.0.0.20")
	b.expect("220")
	over := dial(t, w, "mx1.capped.test", "127.0.0.20")
	if l := over.expect("421"); l != "421 4.7.0 Too many connections from 127.0.0.20" {
		t.Errorf("banner %q", l)
	}
	if !over.closed() {
		t.Error("the refused connection stays open")
	}
	other := dial(t, w, "mx2.capped.test", "127.0.0.21")
	other.greet()
	other.deliver("s@sender.test", "<1@t>", "u1@d0000.capped.test")

	a.cmd("QUIT", "221")
	waitFor(t, w, "the quit connection released", func(s *world.Snapshot) bool {
		return s.Provider("capped").Clients["127.0.0.20"].Open == 1
	})
	again := dial(t, w, "mx1.capped.test", "127.0.0.20")
	again.expect("220")

	s := w.Snapshot()
	p := s.Provider("capped")
	c := p.Clients["127.0.0.20"]
	if c.Connections != 4 || c.Refused != 1 || c.Peak != 2 || c.RefusedShare != 0.25 {
		t.Errorf("client 127.0.0.20: %+v, want 4 connections, 1 refused (share 0.25), peak 2", c)
	}
	if o := p.Clients["127.0.0.21"]; o.Connections != 1 || o.Refused != 0 || o.Peak != 1 {
		t.Errorf("client 127.0.0.21: %+v", o)
	}
	if p.Recipients != 1 || p.PeakPerIP() != 2 || p.Connections != 5 || p.Refused != 1 {
		t.Errorf("provider: %+v", p)
	}
}

// After MsgsPerConn transactions the next MAIL gets 421 and the
// connection closes.
func TestMsgsPerConn(t *testing.T) {
	w := world.StartT(t, smallSpec())
	c := dial(t, w, "mx1.capped.test", "127.0.0.22")
	c.greet()
	c.deliver("s@sender.test", "<a@t>", "x@d0000.capped.test")
	c.deliver("s@sender.test", "<b@t>", "x@d0001.capped.test", "y@d0001.capped.test")
	if l := c.cmd("MAIL FROM:<s@sender.test>", "421"); l != "421 4.7.0 Too many messages on this connection" {
		t.Errorf("reply %q", l)
	}
	if !c.closed() {
		t.Error("connection open after 421")
	}
	s := waitFor(t, w, "the counters", func(s *world.Snapshot) bool {
		return s.Provider("capped").TooManyMessages == 1
	})
	if p := s.Provider("capped"); p.Transactions != 2 || p.Messages != 2 || p.Recipients != 3 {
		t.Errorf("provider: %+v", p)
	}
}

// The first attempt of a triplet is greylisted, so is a retry before the
// delay; one after it is accepted. Another client IP is a new triplet.
func TestGreylist(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)}
	spec := smallSpec()
	spec.Now = clock.now
	w := world.StartT(t, spec)
	c := dial(t, w, "mx1.grey.test", "127.0.0.23")
	c.greet()
	c.cmd("MAIL FROM:<s@sender.test>", "250")
	if l := c.cmd("RCPT TO:<u@d0000.grey.test>", "451"); l != "451 4.7.1 Greylisted, try again in 60 seconds" {
		t.Errorf("first attempt: %q", l)
	}
	clock.add(59 * time.Second)
	if l := c.cmd("RCPT TO:<u@d0000.grey.test>", "451"); l != "451 4.7.1 Greylisted, try again in 1 seconds" {
		t.Errorf("early retry: %q", l)
	}
	// Another sender is another triplet.
	c.cmd("RSET", "250")
	c.cmd("MAIL FROM:<t@sender.test>", "250")
	c.cmd("RCPT TO:<u@d0000.grey.test>", "451")
	c.cmd("RSET", "250")
	clock.add(time.Second)
	c.deliver("s@sender.test", "<g@t>", "u@d0000.grey.test")

	o := dial(t, w, "mx1.grey.test", "127.0.0.24")
	o.greet()
	o.cmd("MAIL FROM:<s@sender.test>", "250")
	o.cmd("RCPT TO:<u@d0000.grey.test>", "451")

	s := waitFor(t, w, "4 greylisted", func(s *world.Snapshot) bool { return s.Provider("grey").Greylisted == 4 })
	if p := s.Provider("grey"); p.Recipients != 1 {
		t.Errorf("recipients %d, want 1", p.Recipients)
	}
	// Reset forgets the triplets.
	w.Reset()
	c2 := dial(t, w, "mx1.grey.test", "127.0.0.23")
	c2.greet()
	c2.cmd("MAIL FROM:<s@sender.test>", "250")
	c2.cmd("RCPT TO:<u@d0000.grey.test>", "451")
}

// rateLimited sends one RCPT for each of n recipients, each on a fresh
// connection when the previous reply closed it, and returns the refused.
func rateLimited(t *testing.T, w *world.World, n int) []string {
	t.Helper()
	var refused []string
	var c *client
	for i := range n {
		if c == nil {
			c = dial(t, w, "mx1.limited.test", "127.0.0.25")
			c.greet()
			c.cmd("MAIL FROM:<s@sender.test>", "250")
		}
		rcpt := fmt.Sprintf("r%d@d000%d.limited.test", i, i%3)
		c.send("RCPT TO:<" + rcpt + ">")
		l, err := c.reply()
		if err != nil {
			t.Fatalf("RCPT %s: %v", rcpt, err)
		}
		switch {
		case strings.HasPrefix(l, "250"):
		case l == "421 4.7.28 Unusual rate":
			refused = append(refused, rcpt)
			if !c.closed() {
				t.Fatal("421 did not close the connection")
			}
			c.c.Close()
			c = nil
		default:
			t.Fatalf("RCPT %s: %q", rcpt, l)
		}
	}
	return refused
}

// The rate-limited recipients are a share near RateLimitShare, the same
// for the same seed, others for another seed; a retried recipient gets a
// fresh draw.
func TestRateLimitShareIsDeterministic(t *testing.T) {
	const n = 400
	w1 := world.StartT(t, smallSpec())
	first := rateLimited(t, w1, n)
	if share := float64(len(first)) / n; share < 0.2 || share > 0.4 {
		t.Errorf("share %.3f, want about 0.3", share)
	}
	s := waitFor(t, w1, "the count", func(s *world.Snapshot) bool {
		return s.Provider("limited").RateLimited == int64(len(first))
	})
	_ = s
	w2 := world.StartT(t, smallSpec())
	if again := rateLimited(t, w2, n); !slices.Equal(first, again) {
		t.Errorf("same seed, different draws:\n%v\n%v", first, again)
	}
	spec := smallSpec()
	spec.Seed = 8
	w3 := world.StartT(t, spec)
	if other := rateLimited(t, w3, n); slices.Equal(first, other) {
		t.Error("another seed drew the same recipients")
	}
	// The second attempt of each refused recipient is a new draw: not all
	// of them are refused again.
	c := dial(t, w1, "mx1.limited.test", "127.0.0.25")
	c.greet()
	c.cmd("MAIL FROM:<s@sender.test>", "250")
	accepted := 0
	for _, r := range first {
		c.send("RCPT TO:<" + r + ">")
		l, err := c.reply()
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(l, "250") {
			accepted++
			continue
		}
		c.c.Close()
		c = dial(t, w1, "mx1.limited.test", "127.0.0.25")
		c.greet()
		c.cmd("MAIL FROM:<s@sender.test>", "250")
	}
	if accepted == 0 {
		t.Error("every retried recipient was refused again")
	}
}

// A black hole sends nothing, holds every connection until the client
// closes it, and counts dials and held connections.
func TestBlackHole(t *testing.T) {
	w := world.StartT(t, smallSpec())
	var cs []*client
	for range 3 {
		cs = append(cs, dial(t, w, "mx1.d0000.holes.test", "127.0.0.26"))
	}
	cs = append(cs, dial(t, w, "mx1.d0001.holes.test", "127.0.0.27"))
	s := waitFor(t, w, "4 held", func(s *world.Snapshot) bool { return s.Provider("holes").Held == 4 })
	h := s.Host("mx1.d0000.holes.test")
	if h == nil || h.Kind != world.BlackHole || h.Held != 3 || h.Dials["127.0.0.26"] != 3 {
		t.Fatalf("host: %+v", h)
	}
	// Nothing comes, not even after the client speaks.
	cs[0].send("EHLO client.test")
	_ = cs[0].c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := cs[0].c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, syscall.EAGAIN) && !isTimeout(err) {
		t.Errorf("read from a black hole: %d bytes, %v", n, err)
	}
	for _, c := range cs {
		c.c.Close()
	}
	s = waitFor(t, w, "none held", func(s *world.Snapshot) bool { return s.Provider("holes").Held == 0 })
	p := s.Provider("holes")
	if p.PeakHeld != 4 || p.Dials["127.0.0.26"] != 3 || p.Dials["127.0.0.27"] != 1 || p.Connections != 0 {
		t.Errorf("provider: %+v", p)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A dead host resets every connection and counts each dial; the secondary
// of the same domain serves.
func TestDeadHost(t *testing.T) {
	w := world.StartT(t, smallSpec())
	addr := net.JoinHostPort(hostIP(t, w, "mx1.d0001.half.test"), strconv.Itoa(w.Port()))
	for range 3 {
		// The reset may come before connect returns, or at the first read.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.28")}, Timeout: wait}
		c, err := d.Dial("tcp", addr)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(wait))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
			t.Errorf("a dead host: %v", err)
		}
	}
	c := dial(t, w, "mx2.d0001.half.test", "127.0.0.28")
	c.greet()
	c.deliver("s@sender.test", "<h@t>", "u@d0001.half.test")
	s := waitFor(t, w, "3 dials", func(s *world.Snapshot) bool { return s.Provider("half").DeadDials == 3 })
	if h := s.Host("mx1.d0001.half.test"); h == nil || h.Kind != world.Dead || h.Dials["127.0.0.28"] != 3 {
		t.Errorf("host: %+v", h)
	}
	if p := s.Provider("half"); p.Recipients != 1 || p.Dials["127.0.0.28"] != 3 {
		t.Errorf("provider: %+v", p)
	}
}

// A (Message-ID, recipient) pair delivered twice is one recipient and a
// duplicate; unknown users and other providers' domains are refused.
func TestDuplicatesAndRefusals(t *testing.T) {
	w := world.StartT(t, smallSpec())
	c := dial(t, w, "mx2.capped.test", "127.0.0.29")
	c.greet()
	c.deliver("s@sender.test", "<dup@t>", "a@d0000.capped.test", "b@d0000.capped.test")
	c.cmd("RSET", "250")
	c2 := dial(t, w, "mx1.capped.test", "127.0.0.29")
	c2.greet()
	c2.deliver("s@sender.test", "<dup@t>", "A@D0000.capped.test")
	c2.cmd("MAIL FROM:<s@sender.test>", "250")
	if l := c2.cmd("RCPT TO:<nouser1@d0000.capped.test>", "550"); l != "550 5.1.1 <nouser1@d0000.capped.test>: no such user" {
		t.Errorf("unknown user: %q", l)
	}
	c2.cmd("RCPT TO:<x@d0000.grey.test>", "550 5.7.1")
	c2.cmd("DATA", "554")
	s := waitFor(t, w, "counters", func(s *world.Snapshot) bool {
		p := s.Provider("capped")
		return p.Duplicates == 1 && p.UnknownUser == 1 && p.RelayDenied == 1
	})
	if p := s.Provider("capped"); p.Recipients != 2 || p.Messages != 2 {
		t.Errorf("provider: %+v", p)
	}
}

// Commands may come in one write (PIPELINING); every reply comes back in
// order.
func TestPipelining(t *testing.T) {
	w := world.StartT(t, smallSpec())
	c := dial(t, w, "mx1.capped.test", "127.0.0.30")
	c.expect("220")
	c.send("EHLO client.test", "MAIL FROM:<s@sender.test> SIZE=100 BODY=8BITMIME", "RCPT TO:<a@d0001.capped.test> NOTIFY=FAILURE ORCPT=rfc822;a@d0001.capped.test",
		"RCPT TO:<nouser@d0001.capped.test>", "DATA")
	ehlo := ""
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		ehlo += l
		if l[3] == ' ' {
			break
		}
	}
	for _, ext := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE", "ENHANCEDSTATUSCODES", "DSN"} {
		if !strings.Contains(ehlo, "250-"+ext) && !strings.Contains(ehlo, "250 "+ext) {
			t.Errorf("EHLO lacks %s:\n%s", ext, ehlo)
		}
	}
	c.expect("250")
	c.expect("250")
	c.expect("550")
	c.expect("354")
	c.send("Message-ID: <p@t>", "", ".", "QUIT")
	c.expect("250")
	c.expect("221")
	if !c.closed() {
		t.Error("connection open after QUIT")
	}
	// An unknown parameter is refused.
	u := dial(t, w, "mx1.capped.test", "127.0.0.30")
	u.greet()
	u.cmd("MAIL FROM:<s@sender.test> FOO=1", "555")
}

// DNS answers MX and A for the world, NXDOMAIN for nonexistent domains.
func TestDNS(t *testing.T) {
	w := world.StartT(t, smallSpec())
	ask := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		for _, netw := range []string{"udp", "tcp"} {
			r, _, err := (&dns.Client{Net: netw, Timeout: wait}).Exchange(m, w.DNSAddr())
			if err != nil {
				t.Fatalf("%s %s: %v", netw, name, err)
			}
			if netw == "tcp" {
				return r
			}
		}
		return nil
	}
	r := ask("d0001.half.test", dns.TypeMX)
	var mx []string
	for _, rr := range r.Answer {
		m := rr.(*dns.MX)
		mx = append(mx, fmt.Sprintf("%d %s", m.Preference, m.Mx))
	}
	if want := []string{"10 mx1.d0001.half.test.", "50 mx2.d0001.half.test."}; !slices.Equal(mx, want) {
		t.Errorf("MX %v, want %v", mx, want)
	}
	r = ask("mx2.capped.test", dns.TypeA)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != hostIP(t, w, "mx2.capped.test") {
		t.Errorf("A: %v", r.Answer)
	}
	if r := ask("d0002.gone.test", dns.TypeMX); r.Rcode != dns.RcodeNameError {
		t.Errorf("nonexistent domain: rcode %s", dns.RcodeToString[r.Rcode])
	}
	for _, h := range w.Hosts() {
		if strings.HasPrefix(h.IP, "127.0.0.") {
			t.Errorf("host %s on %s, an MTA's source range", h.Name, h.IP)
		}
	}
	if got := w.ProviderOf("D0001.half.test"); got != "half" {
		t.Errorf("ProviderOf = %q", got)
	}
}

// A bounce report to the sender domain is counted with the recipients it
// names as failed.
func TestDSN(t *testing.T) {
	w := world.StartT(t, smallSpec())
	c := dial(t, w, "mx1.sender.test", "127.0.0.31")
	c.greet()
	c.cmd("MAIL FROM:<>", "250")
	c.cmd("RCPT TO:<s@sender.test>", "250")
	c.cmd("DATA", "354")
	c.send(strings.Split(strings.ReplaceAll(`From: MAILER-DAEMON@mta.test
To: s@sender.test
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn1@mta.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="BOUND"

--BOUND
Content-Type: text/plain

Your message could not be delivered.

--BOUND
Content-Type: message/delivery-status

Reporting-MTA: dns; mta.test
Arrival-Date: Mon, 2 Mar 2026 09:00:00 +0000

Final-Recipient: rfc822; Nouser1@d0000.capped.test
Original-Recipient: rfc822;nouser1@d0000.capped.test
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 no such user

Final-Recipient: rfc822;
 x@d0001.gone.test
Action: failed
Status: 5.4.4

Final-Recipient: rfc822; late@d0000.grey.test
Action: delayed
Status: 4.7.1

--BOUND
Content-Type: text/rfc822-headers

Final-Recipient: rfc822; not-this@d0000.capped.test
Message-ID: <orig@t>

--BOUND--
.`, "\r", ""), "\n")...)
	c.expect("250")
	s := waitFor(t, w, "a report", func(s *world.Snapshot) bool { return s.DSN.Reports == 1 })
	want := map[string]int64{"nouser1@d0000.capped.test": 1, "x@d0001.gone.test": 1}
	if len(s.DSN.Recipients) != 2 || s.DSN.Recipients["nouser1@d0000.capped.test"] != 1 || s.DSN.Recipients["x@d0001.gone.test"] != 1 {
		t.Errorf("recipients %v, want %v", s.DSN.Recipients, want)
	}
	if s.DSN.OtherActions != 1 || s.DSN.Unparsed != 0 {
		t.Errorf("DSN: %+v", s.DSN)
	}
	if m := s.DSN.Missing([]string{"x@d0001.gone.test", "nouser2@d0000.capped.test"}); !slices.Equal(m, []string{"nouser2@d0000.capped.test"}) {
		t.Errorf("Missing = %v", m)
	}
	// A plain message to the sender domain is a delivery, not a report.
	c.deliver("s@sender.test", "<plain@t>", "s@sender.test")
	s = waitFor(t, w, "the delivery", func(s *world.Snapshot) bool { return s.Provider("sender").Messages == 2 })
	if s.DSN.Reports != 1 {
		t.Errorf("reports %d", s.DSN.Reports)
	}
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// A client sending an endless line or an endless message does not make
// the server hold what it sends: the line is refused, the message too
// big, and the session goes on.
func TestHostileClientBoundedMemory(t *testing.T) {
	spec := smallSpec()
	spec.MaxMessageBytes = 1 << 20
	w := world.StartT(t, spec)
	c := dial(t, w, "mx1.capped.test", "127.0.0.32")
	c.greet()
	before := heapInUse()
	chunk := []byte(strings.Repeat("A", 64<<10))
	const total = 64 << 20
	go func() {
		for sent := 0; sent < total; sent += len(chunk) {
			if _, err := c.c.Write(chunk); err != nil {
				return
			}
		}
		_, _ = io.WriteString(c.c, "\r\nNOOP\r\n")
	}()
	c.expect("500 5.5.6")
	c.expect("250")
	if grew := int64(heapInUse()) - int64(before); grew > 16<<20 {
		t.Errorf("the heap grew by %d MiB over a 64 MiB line", grew>>20)
	}

	c.cmd("MAIL FROM:<s@sender.test>", "250")
	c.cmd("RCPT TO:<a@d0000.capped.test>", "250")
	c.cmd("DATA", "354")
	before = heapInUse()
	line := []byte(strings.Repeat("B", 998) + "\r\n")
	go func() {
		_, _ = io.WriteString(c.c, "Message-ID: <big@t>\r\n\r\n")
		for sent := 0; sent < total; sent += len(line) {
			if _, err := c.c.Write(line); err != nil {
				return
			}
		}
		_, _ = io.WriteString(c.c, ".\r\n")
	}()
	c.expect("552 5.3.4")
	if grew := int64(heapInUse()) - int64(before); grew > 16<<20 {
		t.Errorf("the heap grew by %d MiB over a 64 MiB message", grew>>20)
	}
	c.cmd("NOOP", "250")
	// Bad commands end the session after a while.
	for i := 0; ; i++ {
		c.send("BOGUS")
		l, err := c.reply()
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(l, "421") {
			break
		}
		if i > 100 {
			t.Fatal("bad commands never end the session")
		}
	}
	if s := w.Snapshot(); s.Provider("capped").Messages != 0 {
		t.Errorf("the oversized message was counted")
	}
}

// The banner comes no sooner than BannerDelay.
func TestBannerDelay(t *testing.T) {
	spec := world.Spec{Providers: []world.Provider{{Name: "slow", Domains: 1, BannerDelay: 300 * time.Millisecond, ReplyDelay: 100 * time.Millisecond}}}
	w := world.StartT(t, spec)
	begin := time.Now()
	c := dial(t, w, "mx1.slow.test", "127.0.0.33")
	c.expect("220")
	if d := time.Since(begin); d < 300*time.Millisecond {
		t.Errorf("banner after %v", d)
	}
	begin = time.Now()
	c.cmd("NOOP", "250")
	if d := time.Since(begin); d < 100*time.Millisecond {
		t.Errorf("reply after %v", d)
	}
}

// Reset clears counters but keeps open connections counted as open.
func TestReset(t *testing.T) {
	w := world.StartT(t, smallSpec())
	c := dial(t, w, "mx1.capped.test", "127.0.0.34")
	c.greet()
	c.deliver("s@sender.test", "<r@t>", "a@d0000.capped.test")
	waitFor(t, w, "a recipient", func(s *world.Snapshot) bool { return s.Provider("capped").Recipients == 1 })
	w.Reset()
	s := w.Snapshot()
	p := s.Provider("capped")
	if p.Recipients != 0 || p.Messages != 0 || p.Connections != 0 {
		t.Errorf("after Reset: %+v", p)
	}
	if cl := p.Clients["127.0.0.34"]; cl.Open != 1 || cl.Peak != 1 {
		t.Errorf("open connection after Reset: %+v", cl)
	}
	// The same message again is no duplicate after a Reset.
	c.deliver("s@sender.test", "<r@t>", "a@d0000.capped.test")
	c.cmd("QUIT", "221")
	s = waitFor(t, w, "closed", func(s *world.Snapshot) bool { return s.Provider("capped").Clients["127.0.0.34"].Open == 0 })
	if p := s.Provider("capped"); p.Recipients != 1 || p.Duplicates != 0 {
		t.Errorf("after Reset and a delivery: %+v", p)
	}
}

// Bad specs are refused.
func TestBadSpec(t *testing.T) {
	for _, spec := range []world.Spec{
		{},
		{Providers: []world.Provider{{Name: "Big Mail", Domains: 1}}},
		{Providers: []world.Provider{{Name: "a", Domains: 1}, {Name: "a", Domains: 1}}},
		{Providers: []world.Provider{{Name: "a"}}},
		{Providers: []world.Provider{{Name: "a", Domains: 1, RateLimitShare: 2}}},
		{Providers: []world.Provider{{Name: "a", Domains: 1, RateLimitReply: "busy"}}},
		{Providers: []world.Provider{{Name: "a", Domains: 1, Nonexistent: true, Hosts: []world.Host{{}}}}},
		{Providers: []world.Provider{{Name: "a", Names: []string{"x.test"}}, {Name: "b", Names: []string{"x.test"}}}},
	} {
		if w, err := world.Start(spec); err == nil {
			w.Close()
			t.Errorf("Start(%+v) succeeded", spec)
		}
	}
}

// A 421 reaches a client that pipelined more after the refused command:
// the server closes gracefully (FIN, then drains), not with a reset.
func TestCloseAfter421IsGraceful(t *testing.T) {
	w := world.StartT(t, smallSpec())
	for i := range 20 {
		c := dial(t, w, "mx1.capped.test", "127.0.0.35")
		c.greet()
		c.deliver("s@sender.test", fmt.Sprintf("<l%d.1@t>", i), "x@d0000.capped.test")
		c.deliver("s@sender.test", fmt.Sprintf("<l%d.2@t>", i), "x@d0000.capped.test")
		// MAIL is refused; the RCPT, DATA and data behind it are unread
		// when the server closes.
		c.send("MAIL FROM:<s@sender.test>", "RCPT TO:<x@d0000.capped.test>", "DATA", strings.Repeat("data line\r\n", 20000))
		l, err := c.reply()
		if err != nil || !strings.HasPrefix(l, "421 4.7.0 Too many messages") {
			t.Fatalf("attempt %d: reply %q, %v", i, l, err)
		}
		if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("attempt %d: after the 421: %v, want EOF", i, err)
		}
		c.c.Close()
	}
}

// BenchmarkDelivery measures the receivers: 4 KB messages, one per
// transaction, over parallel reused connections.
func BenchmarkDelivery(b *testing.B) {
	w, err := world.Start(world.Spec{Providers: []world.Provider{{Name: "bench", Domains: 10, Hosts: []world.Host{{}, {}}, Weight: 1}}})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	var msgs []world.Message
	for _, m := range w.Load(1000) {
		if !slices.ContainsFunc(m.To, func(r world.Recipient) bool { return r.Fate != world.Deliverable }) {
			msgs = append(msgs, m)
		}
	}
	var next atomic.Int64
	b.SetBytes(world.LoadSize)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		h := w.Hosts()[next.Add(1)%2]
		c, err := net.Dial("tcp", net.JoinHostPort(h.IP, strconv.Itoa(w.Port())))
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		read := func() {
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					b.Error(err)
					return
				}
				if len(l) < 4 || l[3] != '-' {
					return
				}
			}
		}
		read()
		io.WriteString(c, "EHLO bench.test\r\n")
		read()
		for pb.Next() {
			m := &msgs[next.Add(1)%int64(len(msgs))]
			var cmd strings.Builder
			fmt.Fprintf(&cmd, "MAIL FROM:<%s>\r\n", m.From)
			for _, rc := range m.To {
				fmt.Fprintf(&cmd, "RCPT TO:<%s>\r\n", rc.Addr)
			}
			cmd.WriteString("DATA\r\n")
			io.WriteString(c, cmd.String())
			for range 2 + len(m.To) {
				read()
			}
			c.Write(m.Data())
			io.WriteString(c, ".\r\n")
			read()
		}
	})
	b.StopTimer()
	s := w.Snapshot()
	b.ReportMetric(float64(s.Providers[0].Messages)/b.Elapsed().Seconds(), "msgs/s")
}

// A snapshot marshals to JSON with host kinds by name.
func TestSnapshotJSON(t *testing.T) {
	w := world.StartT(t, smallSpec())
	c := dial(t, w, "mx1.d0000.holes.test", "127.0.0.36")
	waitFor(t, w, "a held connection", func(s *world.Snapshot) bool { return s.Provider("holes").Held == 1 })
	c.c.Close()
	b, err := json.Marshal(w.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"kind":"blackhole"`, `"name":"capped"`, `"dials":{"127.0.0.36":1}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s:\n%s", want, b)
		}
	}
}
