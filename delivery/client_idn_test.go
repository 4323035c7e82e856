package delivery

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/queue"
)

// Internationalised addresses (RFC 6531, RFC 5890): DNS is asked by
// A-labels, and a server without SMTPUTF8 gets A-label domains, or no
// RCPT at all for a local part that has no ASCII form.

const (
	uDomain = "bücher.example"        // a U-label domain
	aDomain = "xn--bcher-kva.example" // its A-labels
	badIDN  = "b\ufffdcher.example"   // not a valid IDN: U+FFFD is disallowed
)

// namesResolver answers every MX question with one MX host and every
// address question with one address, and records the names it is asked.
type namesResolver struct {
	mu    sync.Mutex
	names []string
	noMX  bool
}

func (r *namesResolver) LookupMX(_ context.Context, domain string) ([]*net.MX, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.names = append(r.names, "MX "+domain)
	if r.noMX {
		return nil, nil
	}
	return []*net.MX{{Host: "mx." + domain + ".", Pref: 10}}, nil
}

func (r *namesResolver) LookupAddr(_ context.Context, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.names = append(r.names, "A "+host)
	return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil
}

// destinations asks DNS about the A-labels of a U-label domain, and the
// host of an address fallback (the TLS server name) is the A-label form.
func TestDestinationsLookUpALabels(t *testing.T) {
	pol := config.DefaultDomainSettings()
	r := &namesResolver{}
	ts, err := destinations(context.Background(), r, uDomain, &pol)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"MX " + aDomain, "A mx." + aDomain}; !slices.Equal(r.names, want) {
		t.Errorf("asked %q, want %q", r.names, want)
	}
	if len(ts) != 1 || ts[0].host != "mx."+aDomain {
		t.Errorf("targets %+v", ts)
	}

	r = &namesResolver{noMX: true}
	if ts, err = destinations(context.Background(), r, uDomain, &pol); err != nil {
		t.Fatal(err)
	}
	if want := []string{"MX " + aDomain, "A " + aDomain}; !slices.Equal(r.names, want) || ts[0].host != aDomain {
		t.Errorf("asked %q, targets %+v", r.names, ts)
	}

	// An ASCII domain is asked as it is, even one the IDNA profile would
	// refuse (an underscore): DNS decides.
	r = &namesResolver{}
	if _, err = destinations(context.Background(), r, "under_score.example", &pol); err != nil || r.names[0] != "MX under_score.example" {
		t.Errorf("asked %q, err %v", r.names, err)
	}
}

// A domain that is not a valid IDN bounces with 5.1.2 and is never asked
// about.
func TestDestinationsInvalidIDN(t *testing.T) {
	pol := config.DefaultDomainSettings()
	r := &namesResolver{}
	_, err := destinations(context.Background(), r, badIDN, &pol)
	var perm *permanentError
	if !errors.As(err, &perm) || perm.code != "5.1.2" ||
		!strings.Contains(err.Error(), "domain "+badIDN+" is not a valid internationalised domain name") {
		t.Errorf("error %v, want a permanent 5.1.2", err)
	}
	if len(r.names) != 0 {
		t.Errorf("asked %q", r.names)
	}
}

// DNSResolver itself asks by A-labels whoever calls it (the provider
// routing asks about the queue's domain as it is), so the answer and the
// cache are those of the A-label name; an invalid IDN is not found,
// without a query.
func TestDNSResolverALabels(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Zones{
		aDomain:         {MX: []dnstest.MX{{Pref: 10, Host: "mx." + aDomain}}},
		"mx." + aDomain: {A: []string{"192.0.2.7"}},
	})
	r := newTestResolver(t, srv.Addr())
	for _, name := range []string{uDomain, "BÜCHER.example", aDomain} {
		mxs, err := r.LookupMX(context.Background(), name)
		if err != nil || len(mxs) != 1 || mxs[0].Host != "mx."+aDomain+"." {
			t.Errorf("MX of %s: %v %v", name, mxs, err)
		}
	}
	if n := srv.Queries(aDomain, dns.TypeMX); n != 1 {
		t.Errorf("%d MX queries for %s, want 1 (then cached under the A-labels)", n, aDomain)
	}
	before := srv.TotalQueries()
	if _, err := r.LookupMX(context.Background(), badIDN); !IsNotFound(err) {
		t.Errorf("MX of an invalid IDN: %v, want not found", err)
	}
	if srv.TotalQueries() != before {
		t.Error("an invalid IDN was sent to DNS")
	}
}

// wantSynthetic checks a recipient refused by Tern for want of SMTPUTF8:
// a 553 5.6.7 at RCPT, which bounces.
func wantSynthetic(t *testing.T, r result) {
	t.Helper()
	if r.code != 553 || !r.atRcpt || r.atMail || !strings.HasPrefix(r.text, "553 5.6.7 ") ||
		!strings.HasSuffix(r.text, "(the server does not support SMTPUTF8)") {
		t.Errorf("%s: %+v, want Tern's 553 5.6.7 at RCPT", r.rcpt.Address, r)
	}
	if v := judgeReply(r.code, r.atRcpt, nil); v.kind != queue.Bounced || v.closeSession {
		t.Errorf("%s: verdict %+v, want a bounce that keeps the session", r.rcpt.Address, v)
	}
}

// expectLines reads one command line per want, each exactly as given.
func (s *serverConn) expectLines(want ...string) error {
	for _, w := range want {
		l, err := s.line()
		if err != nil {
			return errors.New("waiting for " + w + ": " + err.Error())
		}
		if l != w {
			return errors.New("got " + l + ", want " + w)
		}
	}
	return nil
}

// deliverIDN sends env to rcpts over a new connection to a server offering
// caps, whose side is script, and returns the results; the session is
// closed politely and the script must end well.
func deliverIDN(t *testing.T, caps []string, script func(s *serverConn) error, env queue.Envelope, rs []queue.RecipientState) []result {
	t.Helper()
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, caps...); err != nil {
			return err
		}
		if err := script(s); err != nil {
			return err
		}
		if err := s.expectLines("QUIT"); err != nil {
			return err
		}
		s.say("221 bye")
		return nil
	})
	oc := dialScripted(t, sc)
	res := oc.send(env, rs, []byte("Subject: t\r\n\r\nhi\r\n"))
	if oc.broken {
		t.Error("connection broken")
	}
	oc.close()
	sc.wait(t)
	return res
}

// Without SMTPUTF8, with PIPELINING: an ASCII local part at a U-label
// domain goes to the A-labels (the stored address unchanged), a non-ASCII
// local part is refused without its RCPT while the others go on, and the
// replies read match the commands sent, so the message's reply is the one
// the live recipients get.
func TestClientNoSMTPUTF8Pipelined(t *testing.T) {
	res := deliverIDN(t, []string{"PIPELINING", "8BITMIME"}, func(s *serverConn) error {
		if err := s.expectLines("MAIL FROM:<s@"+aDomain+">", "RCPT TO:<a@"+aDomain+">", "RCPT TO:<b@x.test>", "DATA"); err != nil {
			return err
		}
		s.say("250 ok", "250 ok", "250 ok", "354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		s.say("250 2.0.0 queued")
		return nil
	}, queue.Envelope{Sender: "s@" + uDomain}, rcpts("a@"+uDomain, "jörg@x.test", "b@x.test"))
	if res[0].code != 250 || res[0].rcpt.Address != "a@"+uDomain {
		t.Errorf("a@%s: %+v", uDomain, res[0])
	}
	wantSynthetic(t, res[1])
	if res[2].code != 250 || res[2].text != "250 2.0.0 queued" {
		t.Errorf("b@x.test: %+v", res[2])
	}
}

// The same without PIPELINING: one command at a time, the refused
// recipient skipped.
func TestClientNoSMTPUTF8Lockstep(t *testing.T) {
	res := deliverIDN(t, nil, func(s *serverConn) error {
		for _, cmd := range []string{"MAIL FROM:<s@example.org>", "RCPT TO:<a@" + aDomain + ">", "DATA"} {
			if err := s.expectLines(cmd); err != nil {
				return err
			}
			if cmd == "DATA" {
				s.say("354 go")
			} else {
				s.say("250 ok")
			}
		}
		if _, err := s.data(); err != nil {
			return err
		}
		s.say("250 2.0.0 queued")
		return nil
	}, queue.Envelope{Sender: "s@example.org"}, rcpts("ü@x.test", "a@"+uDomain))
	wantSynthetic(t, res[0])
	if res[1].code != 250 {
		t.Errorf("a@%s: %+v", uDomain, res[1])
	}
}

// No recipient left: the transaction is not started (no MAIL, no RSET),
// the connection stays usable and the next transaction is the first
// the server sees. A non-ASCII sender local part refuses every recipient
// the same way.
func TestClientNoSMTPUTF8NothingLeft(t *testing.T) {
	for _, c := range []struct {
		name   string
		sender string
		rcpts  []string
	}{
		{"every local part non-ASCII", "s@example.org", []string{"jörg@x.test", "zoë@" + uDomain}},
		{"sender local part non-ASCII", "jörg@example.org", []string{"a@x.test", "b@" + uDomain}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sc := startScripted(t, func(s *serverConn) error {
				if err := greet(s, "PIPELINING"); err != nil {
					return err
				}
				if err := s.expectLines("MAIL FROM:<next@example.org>", "RCPT TO:<n@x.test>", "DATA"); err != nil {
					return err
				}
				s.say("250 ok", "250 ok", "354 go")
				if _, err := s.data(); err != nil {
					return err
				}
				s.say("250 2.0.0 queued")
				return nil
			})
			oc := dialScripted(t, sc)
			res := oc.send(queue.Envelope{Sender: c.sender}, rcpts(c.rcpts...), []byte("x\r\n"))
			for _, r := range res {
				wantSynthetic(t, r)
			}
			if oc.txns != 0 || oc.broken {
				t.Errorf("after a transaction not started: %d transactions, broken %v", oc.txns, oc.broken)
			}
			if res = oc.send(queue.Envelope{Sender: "next@example.org"}, rcpts("n@x.test"), []byte("x\r\n")); res[0].code != 250 {
				t.Errorf("next transaction: %+v", res[0])
			}
			sc.wait(t)
		})
	}
}

// With SMTPUTF8 offered, addresses go as UTF-8, as stored, and MAIL says
// SMTPUTF8.
func TestClientSMTPUTF8Offered(t *testing.T) {
	res := deliverIDN(t, []string{"PIPELINING", "SMTPUTF8"}, func(s *serverConn) error {
		if err := s.expectLines("MAIL FROM:<jörg@"+uDomain+"> SMTPUTF8", "RCPT TO:<zoë@"+uDomain+">", "RCPT TO:<a@x.test>", "DATA"); err != nil {
			return err
		}
		s.say("250 ok", "250 ok", "250 ok", "354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		s.say("250 2.0.0 queued")
		return nil
	}, queue.Envelope{Sender: "jörg@" + uDomain}, rcpts("zoë@"+uDomain, "a@x.test"))
	if res[0].code != 250 || res[1].code != 250 {
		t.Errorf("results %+v", res)
	}
}

// A domain that is not a valid IDN cannot be converted for a server
// without SMTPUTF8: a recipient's is refused with 5.1.2, a sender's
// refuses the transaction with 5.1.7, and nothing is sent for them.
func TestClientNoSMTPUTF8InvalidIDN(t *testing.T) {
	res := deliverIDN(t, []string{"PIPELINING"}, func(s *serverConn) error {
		if err := s.expectLines("MAIL FROM:<s@example.org>", "RCPT TO:<a@x.test>", "DATA"); err != nil {
			return err
		}
		s.say("250 ok", "250 ok", "354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		s.say("250 2.0.0 queued")
		return nil
	}, queue.Envelope{Sender: "s@example.org"}, rcpts("a@"+badIDN, "a@x.test"))
	if r := res[0]; r.code != 553 || !r.atRcpt || !strings.HasPrefix(r.text, "553 5.1.2 recipient <a@"+badIDN+">: domain "+badIDN+" is not a valid internationalised domain name") {
		t.Errorf("invalid IDN recipient: %+v", r)
	}
	if res[1].code != 250 {
		t.Errorf("a@x.test: %+v", res[1])
	}

	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		return s.expectLines("QUIT")
	})
	oc := dialScripted(t, sc)
	res = oc.send(queue.Envelope{Sender: "s@" + badIDN}, rcpts("a@x.test"), []byte("x\r\n"))
	if r := res[0]; r.code != 553 || !r.atRcpt || !strings.HasPrefix(r.text, "553 5.1.7 sender <s@"+badIDN+">") {
		t.Errorf("invalid IDN sender: %+v", r)
	}
	oc.close()
	sc.wait(t)
}

// A refused MAIL in a pipelined transaction with a recipient Tern refused
// itself: the replies drained are those of the commands sent (MAIL, one
// RCPT, DATA), so the next transaction reads its own; the recipient
// refused by Tern keeps its 553 5.6.7, not MAIL's reply.
func TestClientNoSMTPUTF8MailRefusedDrainsSentCommands(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		if err := s.expectLines("MAIL FROM:<s@example.org>", "RCPT TO:<a@x.test>", "DATA"); err != nil {
			return err
		}
		s.say("451 4.3.0 try later", "503 5.5.1 no MAIL", "503 5.5.1 no recipients")
		if err := s.expectLines("RSET"); err != nil {
			return err
		}
		s.say("250 reset")
		if err := s.expectLines("MAIL FROM:<s@example.org>", "RCPT TO:<b@x.test>", "DATA"); err != nil {
			return err
		}
		s.say("250 ok", "250 ok", "354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		s.say("250 2.0.0 second")
		return nil
	})
	oc := dialScripted(t, sc)
	res := oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("jörg@x.test", "a@x.test"), []byte("x\r\n"))
	wantSynthetic(t, res[0])
	if r := res[1]; r.code != 451 || !r.atMail {
		t.Errorf("a@x.test: %+v, want MAIL's 451", r)
	}
	if res = oc.send(queue.Envelope{Sender: "s@example.org"}, rcpts("b@x.test"), []byte("x\r\n")); res[0].code != 250 || res[0].text != "250 2.0.0 second" {
		t.Errorf("second transaction: %+v", res[0])
	}
	sc.wait(t)
}

// A transaction pipelined behind a message goes out with only the RCPTs
// the server can take, and its sendTxn reads that many replies; one with
// no recipient left is not written ahead at all, and its sendTxn sends
// nothing.
func TestClientNoSMTPUTF8PipelinedAhead(t *testing.T) {
	sc := startScripted(t, func(s *serverConn) error {
		if err := greet(s, "PIPELINING"); err != nil {
			return err
		}
		if err := s.expectLines("MAIL FROM:<a@example.org>", "RCPT TO:<a@x.test>", "DATA"); err != nil {
			return err
		}
		s.say("250 ok", "250 ok", "354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		// b's commands came behind a's message, without jörg's RCPT.
		if err := s.expectLines("MAIL FROM:<b@example.org>", "RCPT TO:<b@"+aDomain+">", "DATA"); err != nil {
			return err
		}
		s.say("250 2.0.0 a queued", "250 ok", "250 ok", "354 go")
		if _, err := s.data(); err != nil {
			return err
		}
		// c has nobody the server can take: nothing of it follows b.
		s.say("250 2.0.0 b queued")
		if err := s.expectLines("QUIT"); err != nil {
			return err
		}
		s.say("221 bye")
		return nil
	})
	oc := dialScripted(t, sc)
	a := testTxn("a")
	b := &txn{env: queue.Envelope{Sender: "b@example.org"}, rcpts: rcpts("jörg@x.test", "b@"+uDomain), body: []byte("b\r\n")}
	c := &txn{env: queue.Envelope{Sender: "c@example.org"}, rcpts: rcpts("zoë@x.test"), body: []byte("c\r\n")}
	if res := oc.sendTxn(a, func() *txn { return b }); res[0].code != 250 || oc.ahead != b {
		t.Fatalf("a: %+v, ahead %v", res[0], oc.ahead != nil)
	}
	res := oc.sendTxn(b, func() *txn { return c })
	wantSynthetic(t, res[0])
	if res[1].code != 250 || res[1].text != "250 2.0.0 b queued" {
		t.Errorf("b@%s: %+v", uDomain, res[1])
	}
	if oc.ahead != nil {
		t.Fatal("a transaction with nobody to send was written ahead")
	}
	res = oc.sendTxn(c, nil)
	wantSynthetic(t, res[0])
	oc.close()
	sc.wait(t)
}
