package delivery

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
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
//
// Make one with NewDNSResolver. Its name servers can be replaced while it
// is in use (SetServers), so that a configuration reload reaches DNS
// without a restart. Its methods are safe for concurrent use; Timeout and
// Now must be set before the first lookup and not changed afterwards.
type DNSResolver struct {
	// Timeout bounds one query; zero means 5 seconds.
	Timeout time.Duration
	// Now is the clock for cache expiry; nil means time.Now.
	Now func() time.Time

	// resolvConf is the file an empty server list is read from; "" means
	// /etc/resolv.conf. Only tests set it, so that they need not depend
	// on (or write) the machine's file.
	resolvConf string

	// gen is the current server list together with the answers cached
	// from it. Keeping the two in one value swapped as a whole is what
	// makes SetServers safe without a lock on the lookup path: a lookup
	// loads gen once, asks that list's servers and caches into that
	// list's map, so a lookup still in flight across a SetServers can
	// only write an old server's answer into the old, discarded cache.
	gen atomic.Pointer[generation]
}

// generation is one server list and the cache of its answers. servers is
// never modified once the generation is published.
type generation struct {
	servers []string // host:port, tried in order

	mu    sync.Mutex
	cache map[cacheKey]cacheEntry
	// stored counts the answers stored since the last sweep of expired
	// entries.
	stored int
}

// sweepEvery is how many answers are stored between two sweeps of the
// expired ones. Without sweeps the cache would keep every name ever
// asked for the life of the process; a sender reaching a million domains
// a day would carry them all. With them the cache holds about the names
// of the last hour (the longest TTL kept), at the cost of a pass over the
// map every sweepEvery stores.
const sweepEvery = 4096

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

// systemResolvConf is where the servers come from when none are configured.
const systemResolvConf = "/etc/resolv.conf"

// NewDNSResolver returns a resolver for servers, or for the system's
// resolv.conf when servers is empty. Each server is an IP address (port
// 53) or IP:PORT; anything else is an error, reported here rather than as
// a failure of every lookup later.
func NewDNSResolver(servers []string) (*DNSResolver, error) {
	return newDNSResolver(servers, "")
}

// newDNSResolver is NewDNSResolver reading resolvConf ("" for the system's)
// for an empty list.
func newDNSResolver(servers []string, resolvConf string) (*DNSResolver, error) {
	r := &DNSResolver{resolvConf: resolvConf}
	list, err := r.serverList(servers)
	if err != nil {
		return nil, err
	}
	r.gen.Store(&generation{servers: list})
	return r, nil
}

// SetServers makes servers the name servers of every lookup that starts
// from now on; lookups already in flight finish on the old ones. The list
// is read as NewDNSResolver reads it: empty means the nameserver lines of
// the system's resolv.conf, read again now (so a reload also picks up a
// changed resolv.conf).
//
// An invalid list (or an unreadable resolv.conf, or one without a
// nameserver line) returns an error and leaves the resolver as it was, so
// a bad reload cannot leave delivery without DNS.
//
// When the resulting list differs from the current one, in content or
// order, the cached answers are dropped, since they are the old servers'
// view (a split-horizon or test server may well answer differently), and
// changed is true. When it is the same, the cache is kept and changed is
// false, so a reload that does not touch name-server costs no lookups.
func (r *DNSResolver) SetServers(servers []string) (changed bool, err error) {
	list, err := r.serverList(servers)
	if err != nil {
		return false, err
	}
	next := &generation{servers: list}
	// Compare-and-swap rather than a plain store, so that of two
	// concurrent calls with different lists each reports truthfully
	// whether it replaced what it compared against.
	for {
		cur := r.gen.Load()
		if cur != nil && slices.Equal(cur.servers, list) {
			return false, nil
		}
		if r.gen.CompareAndSwap(cur, next) {
			return true, nil
		}
	}
}

// Servers returns the name servers lookups use now, as host:port in the
// order they are tried. It is a copy: changing it does not change the
// resolver.
func (r *DNSResolver) Servers() []string {
	if g := r.gen.Load(); g != nil {
		return slices.Clone(g.servers)
	}
	return nil
}

// current returns the generation lookups use now. A DNSResolver not made
// by NewDNSResolver has none until SetServers; it gets an empty one, whose
// lookups fail with "no name server configured", rather than a nil
// dereference.
func (r *DNSResolver) current() *generation {
	if g := r.gen.Load(); g != nil {
		return g
	}
	r.gen.CompareAndSwap(nil, &generation{})
	return r.gen.Load()
}

// serverList validates and normalises servers (see NewDNSResolver), or
// reads the resolv.conf when servers is empty. NewDNSResolver and
// SetServers share it so that a reload accepts exactly what a start does.
func (r *DNSResolver) serverList(servers []string) ([]string, error) {
	if len(servers) > 0 {
		out := make([]string, 0, len(servers))
		for _, s := range servers {
			addr, err := normServer(s)
			if err != nil {
				return nil, err
			}
			out = append(out, addr)
		}
		return out, nil
	}
	path := r.resolvConf
	if path == "" {
		path = systemResolvConf
	}
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s (set name-server in the config): %w", path, err)
	}
	if len(cc.Servers) == 0 {
		// resolv.conf(5) would mean the local machine, but a file
		// caught half-rewritten (by DHCP, say) must not swap working
		// servers for one that is probably not there: refuse.
		return nil, fmt.Errorf("%s has no nameserver line (set name-server in the config)", path)
	}
	out := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%s: nameserver %q is not an IP address", path, s)
		}
		out = append(out, net.JoinHostPort(ip.String(), cc.Port))
	}
	return out, nil
}

// normServer turns an IP (port 53) or IP:PORT into the canonical host:port
// that the dns client dials, so that two spellings of one server compare
// equal in SetServers. Host names are refused: resolving the resolver's
// own servers would need a resolver.
func normServer(s string) (string, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return net.JoinHostPort(ip.String(), "53"), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return "", fmt.Errorf("name server %q is not IP or IP:PORT", s)
	}
	return ap.String(), nil
}

func (r *DNSResolver) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// query returns the answer records of (name, qtype), from the cache when
// fresh. An internationalised name is asked by its A-labels, whoever asks
// (destinations converts recipient domains itself; the provider routing
// and smart host names come here as they are): sent as UTF-8 it would
// only draw an NXDOMAIN. A name that cannot be converted is not found,
// without a query.
func (r *DNSResolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	ascii, err := asciiDomain(name)
	if err != nil {
		return nil, &DNSError{Name: name, NotFound: true}
	}
	name = dns.Fqdn(strings.ToLower(ascii))
	key := cacheKey{name, qtype}
	now := r.now()
	g := r.current()
	g.mu.Lock()
	if e, ok := g.cache[key]; ok && now.Before(e.expires) {
		g.mu.Unlock()
		return e.rrs, e.err
	}
	g.mu.Unlock()

	rrs, ttl, err := r.exchange(ctx, g.servers, name, qtype)
	g.mu.Lock()
	if g.cache == nil {
		g.cache = map[cacheKey]cacheEntry{}
	}
	g.cache[key] = cacheEntry{rrs: rrs, err: err, expires: now.Add(ttl)}
	if g.stored++; g.stored >= sweepEvery {
		g.stored = 0
		for k, e := range g.cache {
			if !now.Before(e.expires) {
				delete(g.cache, k)
			}
		}
	}
	g.mu.Unlock()
	return rrs, err
}

func (r *DNSResolver) exchange(ctx context.Context, servers []string, name string, qtype uint16) ([]dns.RR, time.Duration, error) {
	timeout := r.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	var lastErr error = &DNSError{Name: strings.TrimSuffix(name, "."), Err: "no name server configured"}
	for _, srv := range servers {
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
