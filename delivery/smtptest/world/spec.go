// Package world simulates the part of the Internet an outbound mail server
// talks to, on loopback: mailbox providers that host many domains behind a
// few MX hosts, each with its own habits (a cap on connections per client
// IP, a cap on messages per connection, rate-limit deferrals, greylisting,
// slow replies, unknown users), hosts that are dead or black holes, domains
// that do not exist, and a DNS server that answers for all of them.
//
// A World is started from a Spec. Every MX host gets its own address in
// 127.0.0.0/8 (127.10.0.1 and up; 127.0.0.1 to 127.0.0.9 are left to the
// mail servers under test as source addresses) and all hosts listen on one
// common port, as real MX hosts all listen on 25. The receivers are small
// hand-written SMTP servers, cheap enough for thousands of messages a
// second, whose every read is bounded. They count what they see per
// provider and per client IP; Snapshot returns the counters, Reset clears
// them between benchmark passes, and WaitFor waits for a condition on them.
//
// Load generates a deterministic list of messages over the world's domains,
// each recipient with its expected fate, for an injector to send through
// the mail server under test.
//
// Nothing here is global: a test starts its own small world (StartT, on a
// free port), a benchmark a big one (Start with BenchSpec, on port 25).
package world

import (
	"fmt"
	"strings"
	"time"
)

// HostKind is how an MX host behaves.
type HostKind int

const (
	// Normal hosts speak SMTP with their provider's behaviours.
	Normal HostKind = iota
	// Dead hosts reset every connection right after accepting it (TCP RST,
	// through SO_LINGER 0): the closest a listener can come to a host that
	// refuses connections, and one whose dials can be counted.
	Dead
	// BlackHole hosts accept connections and never send a byte; they hold
	// each one until the client closes it.
	BlackHole
)

// String returns "normal", "dead" or "blackhole".
func (k HostKind) String() string {
	switch k {
	case Normal:
		return "normal"
	case Dead:
		return "dead"
	case BlackHole:
		return "blackhole"
	}
	return fmt.Sprintf("HostKind(%d)", int(k))
}

// MarshalText makes a HostKind read as its name in JSON.
func (k HostKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Host is one MX host of a provider.
type Host struct {
	// Name is the host's DNS name. Empty: mxN.PROVIDER.test (N from 1 in
	// the order of Hosts), or mxN.DOMAIN with HostPerDomain.
	Name string
	// Pref is the MX preference; zero means 10 times the host's position
	// in Hosts (10, 20, …), so that the first is the primary.
	Pref uint16
	// Kind is how the host behaves.
	Kind HostKind
}

// DefaultRateLimitReply is the reply given to rate-limited recipients when
// Provider.RateLimitReply is empty.
const DefaultRateLimitReply = "451 4.7.1 Rate limited, try again later"

// Provider is a mail provider: a set of domains served by the same MX
// hosts with the same behaviours.
type Provider struct {
	// Name names the provider and its generated domains and hosts; it
	// must be a DNS label ("bigmail").
	Name string
	// Domains is how many domains to generate: d0000.NAME.test,
	// d0001.NAME.test, …
	Domains int
	// Names are domains with explicit names, served after the generated
	// ones ("bigmail.test", "bench-sender.test").
	Names []string
	// Hosts are the MX hosts of every domain of the provider; none means
	// one Normal host. A domain may have several, with preferences (a dead
	// primary and a normal secondary, for instance).
	Hosts []Host
	// HostPerDomain gives each domain its own copy of Hosts (named
	// mxN.DOMAIN), as for small companies that run their own server.
	// Connection caps then apply per domain instead of per provider.
	HostPerDomain bool
	// Nonexistent makes the provider's domains absent from DNS: queries
	// for them get NXDOMAIN. Such a provider has no hosts.
	Nonexistent bool
	// Sender marks the provider of the envelope senders: it accepts every
	// recipient of its domains (no behaviours apply) and parses the
	// delivery status notifications (MAIL FROM:<>) it receives.
	Sender bool
	// Weight is the provider's share of the generated load, relative to
	// the other providers' (Load). Zero: it gets no messages.
	Weight float64

	// ConnCapPerIP is how many concurrent connections the provider as a
	// whole (across its MX hosts) allows from one client IP; the next one
	// gets "421 4.7.0 Too many connections from IP" as its banner and is
	// closed. Zero: no cap.
	ConnCapPerIP int
	// MsgsPerConn is how many transactions one connection may carry; the
	// next MAIL gets "421 4.7.0 Too many messages on this connection" and
	// the connection is closed. Zero: no limit.
	MsgsPerConn int
	// RateLimitShare is the share (0 to 1) of RCPT commands refused with
	// RateLimitReply. Which ones is a pseudo-random function of the seed,
	// the recipient and how many times it was tried before, so a run is
	// reproducible and a retried recipient gets a fresh draw.
	RateLimitShare float64
	// RateLimitReply is the reply to a rate-limited RCPT, code and text
	// ("421 4.7.28 …"); empty means DefaultRateLimitReply. A 421 reply
	// closes the connection, as 421 does.
	RateLimitReply string
	// Greylist, when positive, greylists: the first RCPT of each (client
	// IP, sender, recipient) triplet gets "451 4.7.1 Greylisted, try
	// again in N seconds", and so does every retry until Greylist has
	// passed since the first; later ones are accepted.
	Greylist time.Duration
	// BannerDelay is how long the host waits before its banner (also
	// before a 421 banner).
	BannerDelay time.Duration
	// ReplyDelay is how long the host waits before every other reply.
	ReplyDelay time.Duration
}

// Spec describes a world.
type Spec struct {
	// Providers are the providers; their names must differ.
	Providers []Provider
	// Seed drives every pseudo-random choice (rate limiting, Load).
	Seed int64
	// Port is the port every host listens on. Zero: a port found free on
	// all of the world's addresses (StartT and tests); a benchmark gives
	// 25.
	Port int
	// DNSAddr is the DNS server's address, UDP and TCP. Empty:
	// 127.0.0.1 at a random port. A resolver that cannot be told a port
	// (the C library's) needs a fixed one such as "127.0.1.53:53".
	DNSAddr string
	// IdleTimeout bounds the wait for each command or data line of a
	// client on a normal host; the connection is closed past it. Zero:
	// five minutes. Black holes have no timeout: they wait for the client.
	IdleTimeout time.Duration
	// MaxMessageBytes is the largest message accepted (announced with
	// SIZE; a bigger one is read, discarded and refused with 552). Zero:
	// 10 MiB.
	MaxMessageBytes int64
	// MaxTracked bounds each of the world's tables (deliveries per
	// provider for duplicates, greylist triplets, rate-limit attempt
	// counts, DSN recipients): past it new keys are not remembered and
	// the Untracked counter grows. Zero: 4,000,000.
	MaxTracked int
	// MaxConns bounds the connections held open at once over the whole
	// world; one more is closed at once. Zero: 50,000.
	MaxConns int
	// Now is the clock for greylisting; nil means time.Now. Tests give a
	// fake one.
	Now func() time.Time
}

func (s *Spec) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return 5 * time.Minute
}

func (s *Spec) maxMessageBytes() int64 {
	if s.MaxMessageBytes > 0 {
		return s.MaxMessageBytes
	}
	return 10 << 20
}

func (s *Spec) maxTracked() int {
	if s.MaxTracked > 0 {
		return s.MaxTracked
	}
	return 4_000_000
}

func (s *Spec) maxConns() int {
	if s.MaxConns > 0 {
		return s.MaxConns
	}
	return 50_000
}

func (s *Spec) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Domain is one domain of a world, as its DNS serves it.
type Domain struct {
	// Name is the domain name, lower case.
	Name string
	// Provider is the name of the provider that serves it.
	Provider string
	// MX are its MX hosts' names with their preferences, primary first;
	// none for a nonexistent domain.
	MX []MX
	// Nonexistent is true when DNS answers NXDOMAIN for it.
	Nonexistent bool
}

// MX is one MX record of a domain.
type MX struct {
	Pref uint16
	Host string
}

// HostInfo is one MX host of a world.
type HostInfo struct {
	// Name is the host's DNS name and IP the IPv4 address it has (and
	// listens on).
	Name string
	IP   string
	// Kind is how it behaves.
	Kind HostKind
	// Provider is the name of the provider it belongs to; Domain is the
	// domain it serves alone with HostPerDomain, else "".
	Provider string
	Domain   string
}

// layout is a spec expanded: every domain and host, with addresses.
type layout struct {
	domains []Domain
	hosts   []HostInfo
	// hostGroup is, per host, the index of its connection-cap group in
	// its provider (0 unless HostPerDomain: the domain's index).
	hostGroup []int
	// hostProv and domainProv index providers by host and domain.
	hostProv   []int
	domainProv map[string]int
	// provDomains lists each provider's domains (indices in domains).
	provDomains [][]int
}

// expand lays the spec out, checking it.
func (s *Spec) expand() (*layout, error) {
	l := &layout{domainProv: make(map[string]int)}
	names := make(map[string]bool)
	hostNames := make(map[string]bool)
	if len(s.Providers) == 0 {
		return nil, fmt.Errorf("world: bad spec: no provider")
	}
	if len(s.Providers) > 245 {
		return nil, fmt.Errorf("world: bad spec: %d providers, at most 245", len(s.Providers))
	}
	for pi := range s.Providers {
		p := &s.Providers[pi]
		if !isLabel(p.Name) {
			return nil, fmt.Errorf("world: bad spec: provider name %q is not a DNS label", p.Name)
		}
		if names[p.Name] {
			return nil, fmt.Errorf("world: bad spec: provider %q twice", p.Name)
		}
		names[p.Name] = true
		if p.Domains < 0 || p.Weight < 0 || p.ConnCapPerIP < 0 || p.MsgsPerConn < 0 ||
			p.RateLimitShare < 0 || p.RateLimitShare > 1 || p.Greylist < 0 || p.BannerDelay < 0 || p.ReplyDelay < 0 {
			return nil, fmt.Errorf("world: bad spec: provider %s: a negative or out-of-range value", p.Name)
		}
		if p.RateLimitReply != "" {
			if _, _, err := parseReply(p.RateLimitReply); err != nil {
				return nil, fmt.Errorf("world: bad spec: provider %s: RateLimitReply: %v", p.Name, err)
			}
		}
		if p.Nonexistent && (len(p.Hosts) > 0 || p.Sender) {
			return nil, fmt.Errorf("world: bad spec: provider %s: a nonexistent provider has no hosts and is no sender", p.Name)
		}
		var doms []string
		for d := range p.Domains {
			doms = append(doms, fmt.Sprintf("d%04d.%s.test", d, p.Name))
		}
		for _, n := range p.Names {
			doms = append(doms, strings.ToLower(strings.TrimSuffix(n, ".")))
		}
		if len(doms) == 0 {
			return nil, fmt.Errorf("world: bad spec: provider %s has no domain", p.Name)
		}
		hosts := p.Hosts
		if len(hosts) == 0 && !p.Nonexistent {
			hosts = []Host{{}}
		}
		ipIndex := 0
		addHosts := func(suffix, domain string, group int) ([]MX, error) {
			var mx []MX
			for hi, h := range hosts {
				name := strings.ToLower(strings.TrimSuffix(h.Name, "."))
				if name == "" {
					name = fmt.Sprintf("mx%d.%s", hi+1, suffix)
				} else if domain != "" {
					name = fmt.Sprintf("%s.%s", name, suffix)
				}
				if hostNames[name] || names["dom:"+name] {
					return nil, fmt.Errorf("world: bad spec: host name %s twice", name)
				}
				if ipIndex >= 254*256 {
					return nil, fmt.Errorf("world: bad spec: provider %s has too many hosts", p.Name)
				}
				hostNames[name] = true
				ip := fmt.Sprintf("127.%d.%d.%d", 10+pi, ipIndex/254, ipIndex%254+1)
				ipIndex++
				l.hosts = append(l.hosts, HostInfo{Name: name, IP: ip, Kind: h.Kind, Provider: p.Name, Domain: domain})
				l.hostGroup = append(l.hostGroup, group)
				l.hostProv = append(l.hostProv, pi)
				pref := h.Pref
				if pref == 0 {
					pref = uint16(10 * (hi + 1))
				}
				mx = append(mx, MX{Pref: pref, Host: name})
			}
			sortMX(mx)
			return mx, nil
		}
		var shared []MX
		if !p.HostPerDomain && !p.Nonexistent {
			var err error
			if shared, err = addHosts(p.Name+".test", "", 0); err != nil {
				return nil, err
			}
		}
		var idx []int
		for di, d := range doms {
			if !isDomain(d) {
				return nil, fmt.Errorf("world: bad spec: provider %s: bad domain name %q", p.Name, d)
			}
			if names["dom:"+d] || hostNames[d] {
				return nil, fmt.Errorf("world: bad spec: domain %s twice", d)
			}
			names["dom:"+d] = true
			dom := Domain{Name: d, Provider: p.Name, MX: shared, Nonexistent: p.Nonexistent}
			if p.HostPerDomain && !p.Nonexistent {
				var err error
				if dom.MX, err = addHosts(d, d, di); err != nil {
					return nil, err
				}
			}
			l.domainProv[d] = pi
			idx = append(idx, len(l.domains))
			l.domains = append(l.domains, dom)
		}
		l.provDomains = append(l.provDomains, idx)
	}
	return l, nil
}

// sortMX orders mx by preference (stable, a short list).
func sortMX(mx []MX) {
	for i := 1; i < len(mx); i++ {
		for j := i; j > 0 && mx[j].Pref < mx[j-1].Pref; j-- {
			mx[j], mx[j-1] = mx[j-1], mx[j]
		}
	}
}

func isLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func isDomain(s string) bool {
	if len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if !isLabel(l) {
			return false
		}
	}
	return true
}

// BenchSender is the envelope sender of the messages Load makes for
// BenchSpec's world; its domain's MX counts the bounce reports.
const BenchSender = "bench@bench-sender.test"

// BenchSpec is the world of `make bench-world`: 2,000-odd domains the way
// a bulk sender sees the Internet, on port 25 with DNS on 127.0.1.53:53.
//
//   - bigmail (Gmail-like): 800 domains, 3 MX hosts, 10 connections per
//     client IP, 100 messages per connection, 1% of RCPTs rate-limited
//     with "421 4.7.28" (which closes the connection).
//   - softmail (Outlook-like): 500 domains, 2 MX hosts, 5 connections per
//     IP, 3% "451 4.7.500 Server busy".
//   - slowmail: 250 domains, 2 MX hosts, a 2 s banner, 200 ms per reply,
//     20 connections per IP.
//   - greymail: 200 domains, 2 MX hosts, greylisting for 60 s.
//   - small: 300 domains, each with its own MX host, 5 connections per IP.
//   - deadmx: 20 domains whose only MX host is dead; blackhole: 20 whose
//     only MX host is a black hole; halfdead: 30 whose primary is dead and
//     secondary normal (each domain with its own hosts).
//   - nxdomain: 100 domains that do not exist.
//   - sender: bench-sender.test, which receives the bounce reports.
//
// The weights give the big providers most of the load, as a bulk sender's
// lists do; about 1% of recipients go to nonexistent domains, and Load
// makes about 2% unknown users.
func BenchSpec() Spec {
	return Spec{
		Seed:    1,
		Port:    25,
		DNSAddr: "127.0.1.53:53",
		Providers: []Provider{
			{Name: "bigmail", Domains: 800, Weight: 40, Hosts: []Host{{}, {}, {}},
				ConnCapPerIP: 10, MsgsPerConn: 100, RateLimitShare: 0.01,
				RateLimitReply: "421 4.7.28 Our system has detected an unusual rate of mail originating from your IP address, try again later"},
			{Name: "softmail", Domains: 500, Weight: 22, Hosts: []Host{{}, {}},
				ConnCapPerIP: 5, RateLimitShare: 0.03,
				RateLimitReply: "451 4.7.500 Server busy, try again later"},
			{Name: "slowmail", Domains: 250, Weight: 8, Hosts: []Host{{}, {}},
				ConnCapPerIP: 20, BannerDelay: 2 * time.Second, ReplyDelay: 200 * time.Millisecond},
			{Name: "greymail", Domains: 200, Weight: 7, Hosts: []Host{{}, {}},
				Greylist: 60 * time.Second},
			{Name: "small", Domains: 300, Weight: 18, HostPerDomain: true, ConnCapPerIP: 5},
			{Name: "deadmx", Domains: 20, Weight: 0.6, HostPerDomain: true, Hosts: []Host{{Kind: Dead}}},
			{Name: "blackhole", Domains: 20, Weight: 0.2, HostPerDomain: true, Hosts: []Host{{Kind: BlackHole}}},
			{Name: "halfdead", Domains: 30, Weight: 3, HostPerDomain: true,
				Hosts: []Host{{Kind: Dead}, {}}},
			{Name: "nxdomain", Domains: 100, Weight: 1, Nonexistent: true},
			{Name: "sender", Names: []string{"bench-sender.test"}, Sender: true},
		},
	}
}
