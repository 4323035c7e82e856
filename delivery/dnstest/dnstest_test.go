package dnstest_test

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ternmta/tern/delivery/dnstest"
)

func query(t *testing.T, s *dnstest.Server, net, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: net, Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := c.Exchange(m, s.Addr())
	if err != nil {
		t.Fatalf("%s %s %s: %v", net, name, dns.TypeToString[qtype], err)
	}
	return r
}

// rdata renders the answer section as "TYPE TTL data" lines.
func rdata(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		h := rr.Header()
		data := strings.TrimPrefix(rr.String(), h.String())
		out = append(out, dns.TypeToString[h.Rrtype]+" "+itoa(h.Ttl)+" "+data)
	}
	return out
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func zones() dnstest.Zones {
	return dnstest.Zones{
		"example.com": {
			MX:  []dnstest.MX{{Pref: 10, Host: "mx1.example.com"}, {Pref: 20, Host: "mx2.example.com"}},
			TXT: []string{"v=spf1 ip4:127.0.0.2 -all", strings.Repeat("x", 300)},
			TTL: 60,
		},
		"mx1.example.com":   {A: []string{"127.0.0.1"}, AAAA: []string{"::1"}},
		"null.example":      {MX: []dnstest.MX{{Pref: 0, Host: "."}}},
		"gone.example":      {NXDOMAIN: true},
		"broken.example":    {ServFail: true, A: []string{"127.0.0.1"}},
		"silent.example":    {NoAnswer: true},
		"Upper.Example":     {A: []string{"127.0.0.9"}},
		"big.example":       {A: manyA(60)},
		"noaddress.example": {},
	}
}

func manyA(n int) []string {
	var out []string
	for i := range n {
		out = append(out, "127.0.1."+itoa(uint32(i+1)))
	}
	return out
}

func TestRecords(t *testing.T) {
	s := dnstest.Start(t, zones())
	for _, netw := range []string{"udp", "tcp"} {
		t.Run(netw, func(t *testing.T) {
			tests := []struct {
				name  string
				qtype uint16
				rcode int
				want  []string
			}{
				{"example.com", dns.TypeMX, dns.RcodeSuccess, []string{
					"MX 60 10 mx1.example.com.", "MX 60 20 mx2.example.com."}},
				{"example.com", dns.TypeTXT, dns.RcodeSuccess, []string{
					`TXT 60 "v=spf1 ip4:127.0.0.2 -all"`,
					`TXT 60 "` + strings.Repeat("x", 255) + `" "` + strings.Repeat("x", 45) + `"`}},
				{"example.com", dns.TypeA, dns.RcodeSuccess, nil},
				{"mx1.example.com", dns.TypeA, dns.RcodeSuccess, []string{"A 300 127.0.0.1"}},
				{"MX1.example.COM", dns.TypeAAAA, dns.RcodeSuccess, []string{"AAAA 300 ::1"}},
				{"mx1.example.com", dns.TypeMX, dns.RcodeSuccess, nil},
				{"upper.example", dns.TypeA, dns.RcodeSuccess, []string{"A 300 127.0.0.9"}},
				{"null.example", dns.TypeMX, dns.RcodeSuccess, []string{"MX 300 0 ."}},
				{"noaddress.example", dns.TypeA, dns.RcodeSuccess, nil},
				{"unknown.example", dns.TypeMX, dns.RcodeNameError, nil},
				{"gone.example", dns.TypeA, dns.RcodeNameError, nil},
				{"broken.example", dns.TypeA, dns.RcodeServerFailure, nil},
			}
			for _, tt := range tests {
				r := query(t, s, netw, tt.name, tt.qtype)
				if r.Rcode != tt.rcode {
					t.Errorf("%s %s: rcode %s, want %s", tt.name, dns.TypeToString[tt.qtype],
						dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
				}
				if got := rdata(r); !slices.Equal(got, tt.want) {
					t.Errorf("%s %s: answer\n%q\nwant\n%q", tt.name, dns.TypeToString[tt.qtype], got, tt.want)
				}
			}
		})
	}
}

func TestTruncationOverUDP(t *testing.T) {
	s := dnstest.Start(t, zones())
	// Without EDNS0 a UDP answer is at most 512 bytes: the server sets TC
	// and the client retries over TCP, where all 60 records fit.
	r := query(t, s, "udp", "big.example", dns.TypeA)
	if !r.Truncated {
		t.Errorf("UDP answer with %d records not truncated", len(r.Answer))
	}
	r = query(t, s, "tcp", "big.example", dns.TypeA)
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("TCP answer: truncated %v, %d records, want 60", r.Truncated, len(r.Answer))
	}
}

func TestNoAnswer(t *testing.T) {
	s := dnstest.Start(t, zones())
	c := &dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("silent.example.", dns.TypeMX)
	if _, _, err := c.Exchange(m, s.Addr()); err == nil {
		t.Fatal("query for a NoAnswer name got an answer")
	}
	if n := s.Queries("silent.example", dns.TypeMX); n != 1 {
		t.Errorf("Queries = %d, want 1", n)
	}
}

func TestRuntimeChangesAndCounts(t *testing.T) {
	s := dnstest.Start(t, zones())
	if got := s.Queries("example.com", dns.TypeMX); got != 0 {
		t.Fatalf("Queries before any = %d", got)
	}
	query(t, s, "udp", "example.com", dns.TypeMX)
	query(t, s, "tcp", "Example.COM.", dns.TypeMX)
	query(t, s, "udp", "example.com", dns.TypeA)
	if got := s.Queries("example.com", dns.TypeMX); got != 2 {
		t.Errorf("Queries(example.com, MX) = %d, want 2", got)
	}
	if got := s.Queries("EXAMPLE.com.", dns.TypeA); got != 1 {
		t.Errorf("Queries(example.com, A) = %d, want 1", got)
	}

	s.Set("new.example", dnstest.Records{A: []string{"127.0.0.7"}, TTL: 5})
	if got := rdata(query(t, s, "udp", "new.example", dns.TypeA)); !slices.Equal(got, []string{"A 5 127.0.0.7"}) {
		t.Errorf("after Set: %q", got)
	}
	s.Set("example.com", dnstest.Records{MX: []dnstest.MX{{Pref: 5, Host: "other.example"}}})
	if got := rdata(query(t, s, "udp", "example.com", dns.TypeMX)); !slices.Equal(got, []string{"MX 300 5 other.example."}) {
		t.Errorf("after replacing: %q", got)
	}
	s.Delete("example.com")
	if r := query(t, s, "udp", "example.com", dns.TypeMX); r.Rcode != dns.RcodeNameError {
		t.Errorf("after Delete: rcode %s", dns.RcodeToString[r.Rcode])
	}
	if got := s.Queries("example.com", dns.TypeMX); got != 4 {
		t.Errorf("Queries(example.com, MX) = %d, want 4", got)
	}
	if got := s.TotalQueries(); got != 6 {
		t.Errorf("TotalQueries = %d, want 6", got)
	}
}

func TestConcurrentQueriesAndChanges(t *testing.T) {
	s := dnstest.Start(t, zones())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 50 {
			s.Set("flip.example", dnstest.Records{A: []string{"127.0.0." + itoa(uint32(i+1))}})
			s.Delete("flip.example")
		}
	}()
	for range 50 {
		r := query(t, s, "udp", "flip.example", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			t.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
		}
	}
	<-done
	if got := s.Queries("flip.example", dns.TypeA); got != 50 {
		t.Errorf("Queries = %d, want 50", got)
	}
}

func TestSetRejectsBadAddress(t *testing.T) {
	s := dnstest.Start(t, nil)
	defer func() {
		if recover() == nil {
			t.Error("Set with a bad AAAA address did not panic")
		}
	}()
	s.Set("bad.example", dnstest.Records{AAAA: []string{"127.0.0.1"}})
}

// New serves without a testing.TB, on a random port or a fixed address,
// until Stop; a taken fixed address and a bad record are errors.
func TestNewWithoutTB(t *testing.T) {
	s, err := dnstest.New("", zones())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if got := rdata(query(t, s, "udp", "mx1.example.com", dns.TypeA)); !slices.Equal(got, []string{"A 300 127.0.0.1"}) {
		t.Errorf("answer %q", got)
	}
	fixed, err := dnstest.New(s.Addr(), nil)
	if err == nil {
		fixed.Stop()
		t.Fatalf("New on the taken address %s succeeded", s.Addr())
	}
	if _, err := dnstest.New("", dnstest.Zones{"bad.example": {A: []string{"::1"}}}); err == nil {
		t.Error("New with a bad A address succeeded")
	}
	s.Stop()
	c := &dns.Client{Net: "tcp", Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("mx1.example.com.", dns.TypeA)
	if _, _, err := c.Exchange(m, s.Addr()); err == nil {
		t.Error("a stopped server answered over TCP")
	}
}
