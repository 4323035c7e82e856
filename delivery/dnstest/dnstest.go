// Package dnstest runs an authoritative DNS server on loopback for tests.
//
// The server answers from an in-memory map of zones (MX, A, AAAA and TXT),
// over UDP and TCP on the same 127.0.0.1 port, and counts the queries it
// receives per (name, type) so that tests can check a resolver's cache.
// Zones can be changed while the server runs. Nothing here is global: each
// test starts its own server (Start), which stops when the test ends; New
// starts one outside a test, stopped by its caller.
package dnstest

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// DefaultTTL is the TTL given to answers whose Records leave TTL at zero.
const DefaultTTL = 300

// Zones maps a lower-case domain name, without the trailing dot
// ("example.com", "mx1.example.com"), to its records.
type Zones map[string]Records

// Records are the records served for one name.
//
// A name present in Zones with no record of the queried type gets NOERROR
// with an empty answer (NODATA). NoAnswer, ServFail and NXDOMAIN override the
// records, in that order of precedence.
type Records struct {
	// MX are the mail exchangers, answered in this order. A null MX
	// (RFC 7505) is MX{Pref: 0, Host: "."}.
	MX []MX
	// A are IPv4 addresses in dotted form.
	A []string
	// AAAA are IPv6 addresses.
	AAAA []string
	// TXT are text records, each served as one TXT record (split into
	// 255-byte strings when longer).
	TXT []string
	// NXDOMAIN makes the server answer NXDOMAIN for this name.
	NXDOMAIN bool
	// ServFail makes the server answer SERVFAIL for this name.
	ServFail bool
	// NoAnswer makes the server ignore queries for this name (they are
	// still counted), so that the client times out.
	NoAnswer bool
	// TTL is the TTL of every answer for this name; zero means DefaultTTL.
	TTL uint32
}

// MX is one mail exchanger: its preference and host name (without the
// trailing dot; "." for a null MX).
type MX struct {
	Pref uint16
	Host string
}

type queryKey struct {
	name  string
	qtype uint16
}

// Server is a running DNS server. Its methods are safe for concurrent use.
type Server struct {
	addr string
	udp  *dns.Server
	tcp  *dns.Server

	mu      sync.Mutex
	zones   Zones
	queries map[queryKey]int
}

// Start starts a server on 127.0.0.1 (a random port, UDP and TCP both)
// serving a copy of zones, and stops it when t ends.
func Start(t testing.TB, zones Zones) *Server {
	t.Helper()
	s, err := New("", zones)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// New starts a server serving a copy of zones, for callers without a
// testing.TB (a benchmark, a long-running simulation); the caller stops it
// with Stop. addr is the address for UDP and TCP both: "" or
// "127.0.0.1:0" for a random port free for both protocols, or a fixed one
// such as "127.0.1.53:53" (a resolver that cannot be told a port, like the
// C library's, needs port 53).
func New(addr string, zones Zones) (*Server, error) {
	s := &Server{zones: make(Zones), queries: make(map[queryKey]int)}
	for name, r := range zones {
		if err := check(name, r); err != nil {
			return nil, fmt.Errorf("dnstest: %w", err)
		}
		s.zones[canonical(name)] = r
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	pc, ln, err := listenBoth(addr)
	if err != nil {
		return nil, fmt.Errorf("dnstest: %w", err)
	}
	s.addr = pc.LocalAddr().String()
	if s.udp, err = serve(&dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.handle)}); err != nil {
		pc.Close()
		ln.Close()
		return nil, err
	}
	if s.tcp, err = serve(&dns.Server{Listener: ln, Handler: dns.HandlerFunc(s.handle)}); err != nil {
		_ = s.udp.Shutdown()
		ln.Close()
		return nil, err
	}
	return s, nil
}

// listenBoth opens a UDP socket on addr and a TCP listener on the same
// port. With port 0 it retries with a fresh port when the TCP port is
// taken.
func listenBoth(addr string) (net.PacketConn, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		lastErr = err
		pc.Close()
		if port != "0" {
			break
		}
	}
	return nil, nil, fmt.Errorf("no port free for both UDP and TCP: %w", lastErr)
}

// serve runs srv in a goroutine and returns once it is ready to answer.
func serve(srv *dns.Server) (*dns.Server, error) {
	started := make(chan struct{})
	done := make(chan error, 1)
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case <-started:
		return srv, nil
	case err := <-done:
		return nil, fmt.Errorf("dnstest: serve: %w", err)
	}
}

// Stop stops the server before the test ends, so that a test can tell an
// answer served from a client's cache from one asked of the server: after
// Stop, queries to Addr fail. Stopping twice is harmless.
func (s *Server) Stop() {
	_ = s.udp.Shutdown()
	_ = s.tcp.Shutdown()
}

// Addr returns the server's address, "127.0.0.1:PORT", the same for UDP
// and TCP.
func (s *Server) Addr() string { return s.addr }

// Set replaces the records of name (added if absent). It panics if an
// address in r does not parse.
func (s *Server) Set(name string, r Records) {
	if err := check(name, r); err != nil {
		panic("dnstest: " + err.Error())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zones[canonical(name)] = r
}

// Delete removes name, which then gets NXDOMAIN.
func (s *Server) Delete(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.zones, canonical(name))
}

// Queries returns how many queries of type qtype (dns.TypeMX, dns.TypeA…)
// for name the server has received, over UDP and TCP together.
func (s *Server) Queries(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[queryKey{canonical(name), qtype}]
}

// TotalQueries returns how many questions the server has received in all.
func (s *Server) TotalQueries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.queries {
		n += c
	}
	return n
}

// check reports an address in r that does not parse as its type.
func check(name string, r Records) error {
	for _, a := range r.A {
		if ip, err := netip.ParseAddr(a); err != nil || !ip.Is4() {
			return fmt.Errorf("%s: bad A address %q", name, a)
		}
	}
	for _, a := range r.AAAA {
		if ip, err := netip.ParseAddr(a); err != nil || !ip.Is6() || ip.Zone() != "" {
			return fmt.Errorf("%s: bad AAAA address %q", name, a)
		}
	}
	return nil
}

// canonical lower-cases name and drops a trailing dot.
func canonical(name string) string {
	return strings.TrimSuffix(strings.ToLower(name), ".")
}

func (s *Server) handle(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := canonical(q.Name)

	s.mu.Lock()
	s.queries[queryKey{name, q.Qtype}]++
	r, ok := s.zones[name]
	s.mu.Unlock()

	switch {
	case ok && r.NoAnswer:
		return
	case ok && r.ServFail:
		m.Authoritative = false
		m.Rcode = dns.RcodeServerFailure
	case !ok || r.NXDOMAIN:
		m.Rcode = dns.RcodeNameError
	default:
		m.Answer = answers(q, r)
	}
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		size := uint16(dns.MinMsgSize)
		if opt := req.IsEdns0(); opt != nil {
			size = max(size, opt.UDPSize())
		}
		m.Truncate(int(size))
	}
	_ = w.WriteMsg(m)
}

// answers builds the answer section for q from r (nil when r holds no
// record of that type).
func answers(q dns.Question, r Records) []dns.RR {
	ttl := r.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	var out []dns.RR
	switch q.Qtype {
	case dns.TypeMX:
		for _, mx := range r.MX {
			out = append(out, &dns.MX{Hdr: hdr(dns.TypeMX), Preference: mx.Pref, Mx: dns.Fqdn(mx.Host)})
		}
	case dns.TypeA:
		for _, a := range r.A {
			out = append(out, &dns.A{Hdr: hdr(dns.TypeA), A: net.ParseIP(a).To4()})
		}
	case dns.TypeAAAA:
		for _, a := range r.AAAA {
			out = append(out, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: net.ParseIP(a)})
		}
	case dns.TypeTXT:
		for _, txt := range r.TXT {
			out = append(out, &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: splitTXT(txt)})
		}
	}
	return out
}

// splitTXT cuts s into the 255-byte character-strings a TXT record holds.
func splitTXT(s string) []string {
	var parts []string
	for len(s) > 255 {
		parts = append(parts, s[:255])
		s = s[255:]
	}
	return append(parts, s)
}
