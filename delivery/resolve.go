package delivery

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Resolver answers the DNS questions delivery asks. DNSResolver is the real
// one; tests point it at a delivery/dnstest server.
type Resolver interface {
	// LookupMX returns the MX records of domain. A domain without MX
	// records returns an empty list and no error; a domain that does not
	// exist returns an error for which IsNotFound is true.
	LookupMX(ctx context.Context, domain string) ([]*net.MX, error)
	// LookupAddr returns the IPv4 and IPv6 addresses of host.
	LookupAddr(ctx context.Context, host string) ([]netip.Addr, error)
}

// DNSError is a failed lookup. NotFound is set for NXDOMAIN, which is
// permanent: the domain does not exist. Anything else may pass.
type DNSError struct {
	Name     string
	NotFound bool
	Err      string
}

func (e *DNSError) Error() string {
	if e.NotFound {
		return fmt.Sprintf("%s: no such domain", e.Name)
	}
	return fmt.Sprintf("%s: %s", e.Name, e.Err)
}

// IsNotFound reports whether err says the name does not exist.
func IsNotFound(err error) bool {
	var de *DNSError
	return errors.As(err, &de) && de.NotFound
}

// DNSResolver queries name servers with miekg/dns and caches answers for
// their TTL (between MinTTL and MaxTTL), so a busy queue does not ask for
// the same MX every message.
type DNSResolver struct {
	// Servers are host:port of the name servers, tried in order.
	Servers []string
	// Timeout bounds one query; zero means 5 seconds.
	Timeout time.Duration
	// Now is the clock for cache expiry; nil means time.Now.
	Now func() time.Time

	mu    sync.Mutex
	cache map[cacheKey]cacheEntry
}

type cacheKey struct {
	name  string
	qtype uint16
}

type cacheEntry struct {
	rrs     []dns.RR
	err     error
	expires time.Time
}

// Cache bounds: a zero TTL still saves the next message's lookup, and a long
// one does not pin a stale MX for days.
const (
	minTTL = 5 * time.Second
	maxTTL = time.Hour
	// negTTL is how long a failure other than NXDOMAIN is remembered.
	negTTL = 5 * time.Second
)

// NewDNSResolver returns a resolver for servers, or for the system's
// resolv.conf when servers is empty.
func NewDNSResolver(servers []string) (*DNSResolver, error) {
	if len(servers) == 0 {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("reading /etc/resolv.conf (set name-server in the config): %w", err)
		}
		for _, s := range cc.Servers {
			servers = append(servers, net.JoinHostPort(s, cc.Port))
		}
	}
	return &DNSResolver{Servers: servers}, nil
}

func (r *DNSResolver) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// query returns the answer records of (name, qtype), from the cache when
// fresh.
func (r *DNSResolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	name = dns.Fqdn(strings.ToLower(name))
	key := cacheKey{name, qtype}
	now := r.now()
	r.mu.Lock()
	if e, ok := r.cache[key]; ok && now.Before(e.expires) {
		r.mu.Unlock()
		return e.rrs, e.err
	}
	r.mu.Unlock()

	rrs, ttl, err := r.exchange(ctx, name, qtype)
	r.mu.Lock()
	if r.cache == nil {
		r.cache = map[cacheKey]cacheEntry{}
	}
	r.cache[key] = cacheEntry{rrs: rrs, err: err, expires: now.Add(ttl)}
	r.mu.Unlock()
	return rrs, err
}

func (r *DNSResolver) exchange(ctx context.Context, name string, qtype uint16) ([]dns.RR, time.Duration, error) {
	timeout := r.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	var lastErr error = &DNSError{Name: strings.TrimSuffix(name, "."), Err: "no name server configured"}
	for _, srv := range r.Servers {
		c := &dns.Client{Timeout: timeout}
		in, _, err := c.ExchangeContext(ctx, m, srv)
		if err == nil && in.Truncated {
			c.Net = "tcp"
			in, _, err = c.ExchangeContext(ctx, m, srv)
		}
		if err != nil {
			lastErr = &DNSError{Name: strings.TrimSuffix(name, "."), Err: err.Error()}
			continue
		}
		switch in.Rcode {
		case dns.RcodeSuccess:
			var rrs []dns.RR
			ttl := maxTTL
			for _, rr := range in.Answer {
				if rr.Header().Rrtype == qtype {
					rrs = append(rrs, rr)
					if t := time.Duration(rr.Header().Ttl) * time.Second; t < ttl {
						ttl = t
					}
				}
			}
			if len(rrs) == 0 {
				ttl = minTTL
			}
			return rrs, max(ttl, minTTL), nil
		case dns.RcodeNameError:
			return nil, minTTL * 12, &DNSError{Name: strings.TrimSuffix(name, "."), NotFound: true}
		default:
			lastErr = &DNSError{Name: strings.TrimSuffix(name, "."), Err: dns.RcodeToString[in.Rcode]}
		}
	}
	return nil, negTTL, lastErr
}

// LookupMX implements Resolver.
func (r *DNSResolver) LookupMX(ctx context.Context, domain string) ([]*net.MX, error) {
	rrs, err := r.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	out := make([]*net.MX, 0, len(rrs))
	for _, rr := range rrs {
		mx := rr.(*dns.MX)
		out = append(out, &net.MX{Host: mx.Mx, Pref: mx.Preference})
	}
	return out, nil
}

// LookupAddr implements Resolver: A records, then AAAA.
func (r *DNSResolver) LookupAddr(ctx context.Context, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	var firstErr error
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.query(ctx, host, qt)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		for _, rr := range rrs {
			switch v := rr.(type) {
			case *dns.A:
				if ip, ok := netip.AddrFromSlice(v.A.To4()); ok {
					out = append(out, ip)
				}
			case *dns.AAAA:
				if ip, ok := netip.AddrFromSlice(v.AAAA); ok {
					out = append(out, ip)
				}
			}
		}
	}
	if len(out) == 0 && firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}

// target is one address to try, with the name it came from.
type target struct {
	host string // MX or smart host name, or the literal
	ip   netip.Addr
	port int
}

func (t target) addr() string { return netip.AddrPortFrom(t.ip, uint16(t.port)).String() }

// permanentError is a failure no retry will cure: the recipient bounces.
type permanentError struct {
	code string // enhanced status code
	msg  string
}

func (e *permanentError) Error() string { return e.code + " " + e.msg }

// shuffle randomises hosts of equal preference, as RFC 5321 §5.1 asks, so
// equal MXs share the load.
func shuffleEqual[T any](list []T, pref func(T) int) {
	for i := 0; i < len(list); {
		j := i + 1
		for j < len(list) && pref(list[j]) == pref(list[i]) {
			j++
		}
		rand.Shuffle(j-i, func(a, b int) { list[i+a], list[i+b] = list[i+b], list[i+a] })
		i = j
	}
}

// sortMX orders MX records by preference, shuffling equal ones.
func sortMX(mxs []*net.MX) {
	sort.SliceStable(mxs, func(i, j int) bool { return mxs[i].Pref < mxs[j].Pref })
	shuffleEqual(mxs, func(m *net.MX) int { return int(m.Pref) })
}
