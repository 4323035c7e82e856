package config

import (
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Never is the duration value of the word `never` where a directive allows it
// (for example backoff-to-normal-after): longer than any real wait.
const Never time.Duration = math.MaxInt64

// Unlimited is the Size of the word `unlimited`.
const Unlimited Size = math.MaxInt64

// Size is a byte count written as 40K, 25M, 1G or a plain number. Units are
// binary (K = 1024), as in PowerMTA.
type Size int64

// String formats the size with the largest unit that divides it exactly.
func (s Size) String() string {
	switch {
	case s == Unlimited:
		return "unlimited"
	case s != 0 && s%(1<<30) == 0:
		return strconv.FormatInt(int64(s>>30), 10) + "G"
	case s != 0 && s%(1<<20) == 0:
		return strconv.FormatInt(int64(s>>20), 10) + "M"
	case s != 0 && s%(1<<10) == 0:
		return strconv.FormatInt(int64(s>>10), 10) + "K"
	}
	return strconv.FormatInt(int64(s), 10)
}

// Rate is N events per interval, written `100/h` or `20/15m`. The zero Rate
// is unlimited.
type Rate struct {
	Count    int
	Interval time.Duration
}

// Unlimited reports whether the rate sets no limit.
func (r Rate) Unlimited() bool { return r.Interval == 0 }

// Zero reports whether the rate allows nothing: PowerMTA's `max-msg-rate 0`,
// which holds a queue's mail without sending it.
func (r Rate) Zero() bool { return r.Count == 0 && r.Interval != 0 }

// PerSecond is the rate as events per second, +Inf when unlimited and 0 for
// a zero rate; the form token-bucket limiters take.
func (r Rate) PerSecond() float64 {
	if r.Unlimited() {
		return math.Inf(1)
	}
	return float64(r.Count) / r.Interval.Seconds()
}

// String formats the rate as it would be written in the file.
func (r Rate) String() string {
	if r.Unlimited() {
		return "unlimited"
	}
	if r.Zero() {
		return "0"
	}
	per := FormatDuration(r.Interval)
	if len(per) == 2 && per[0] == '1' {
		per = per[1:] // 100/h, as it is written, rather than 100/1h
	}
	return strconv.Itoa(r.Count) + "/" + per
}

// HostAddr is one destination of a host list: a name to resolve or a
// literal IP written [ip], with an optional port (0: the default port).
type HostAddr struct {
	Host    string
	Port    int
	Literal bool
}

// String formats the host as it would be written in the file.
func (h HostAddr) String() string {
	s := h.Host
	if h.Literal {
		s = "[" + h.Host + "]"
	}
	if h.Port != 0 {
		s += ":" + strconv.Itoa(h.Port)
	}
	return s
}

// HostList is an smtp-hosts value: preference levels in order, each a set of
// hosts used round robin. `a, b; c` is two levels: {a, b} then {c}.
type HostList [][]HostAddr

// String formats the list as it would be written in the file.
func (l HostList) String() string {
	levels := make([]string, len(l))
	for i, lvl := range l {
		hosts := make([]string, len(lvl))
		for j, h := range lvl {
			hosts[j] = h.String()
		}
		levels[i] = strings.Join(hosts, ", ")
	}
	return strings.Join(levels, "; ")
}

// Regexp is a compiled /…/ value together with the text it was written as.
// Matching is case-insensitive unless the expression starts with (?-i).
type Regexp struct {
	*regexp.Regexp
	Source string
}

// String returns the regex as written, slashes included.
func (r Regexp) String() string { return r.Source }

// FormatDuration writes d in the config's own notation (4d12h, 90s, 1w).
func FormatDuration(d time.Duration) string {
	if d == Never {
		return "never"
	}
	if d == 0 {
		return "0s"
	}
	var b strings.Builder
	units := []struct {
		d time.Duration
		s string
	}{{7 * 24 * time.Hour, "w"}, {24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}}
	for _, u := range units {
		if d >= u.d {
			fmt.Fprintf(&b, "%d%s", d/u.d, u.s)
			d %= u.d
		}
	}
	if d > 0 {
		b.WriteString(d.String())
	}
	return b.String()
}

var durationUnits = map[string]time.Duration{
	"s": time.Second, "sec": time.Second,
	"m": time.Minute, "min": time.Minute,
	"h": time.Hour, "hr": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour,
	"w": 7 * 24 * time.Hour,
}

// parseDuration reads 30s, 10m, 4d12h, 1w. A bare number is refused rather
// than guessed: PowerMTA files are not consistent about its unit.
func parseDuration(s string) (time.Duration, error) {
	in := strings.ToLower(strings.TrimSpace(s))
	if in == "" {
		return 0, fmt.Errorf("empty duration")
	}
	if in == "0" {
		return 0, nil
	}
	var total time.Duration
	for in != "" {
		i := 0
		for i < len(in) && in[i] >= '0' && in[i] <= '9' {
			i++
		}
		if i == 0 {
			return 0, fmt.Errorf("%q is not a duration (use units s, m, h, d, w, as in 30s or 4d12h)", s)
		}
		n, err := strconv.ParseInt(in[:i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration: number out of range", s)
		}
		j := i
		for j < len(in) && in[j] >= 'a' && in[j] <= 'z' {
			j++
		}
		if j == i && i < len(in) {
			return 0, fmt.Errorf("%q is not a duration (use whole numbers with units s, m, h, d, w, as in 90s or 4d12h)", s)
		}
		if j == i {
			return 0, fmt.Errorf("%q has no unit (use s, m, h, d or w, as in %ss)", s, in[:i])
		}
		unit, ok := durationUnits[in[i:j]]
		if !ok {
			return 0, fmt.Errorf("%q: unknown unit %q (use s, m, h, d or w)", s, in[i:j])
		}
		if n > int64(math.MaxInt64/unit) || total > math.MaxInt64-time.Duration(n)*unit {
			return 0, fmt.Errorf("%q is too long", s)
		}
		total += time.Duration(n) * unit
		in = in[j:]
	}
	return total, nil
}

// parseDurationList reads a retry schedule: durations separated by commas.
func parseDurationList(s string) ([]time.Duration, error) {
	parts := strings.Split(s, ",")
	out := make([]time.Duration, 0, len(parts))
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, fmt.Errorf("%q has an empty entry", s)
		}
		d, err := parseDuration(p)
		if err != nil {
			return nil, err
		}
		if d <= 0 {
			return nil, fmt.Errorf("%q: a retry interval must be longer than 0", s)
		}
		out = append(out, d)
	}
	return out, nil
}

// parseRate reads N/unit or N/Munit (100/h, 20/15m) or `unlimited`.
func parseRate(s string) (Rate, error) {
	in := strings.ToLower(strings.TrimSpace(s))
	if in == "unlimited" {
		return Rate{}, nil
	}
	num, per, ok := strings.Cut(in, "/")
	if !ok {
		return Rate{}, fmt.Errorf("%q is not a rate (write N/unit as in 100/h or 20/15m, or unlimited)", s)
	}
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 {
		return Rate{}, fmt.Errorf("%q is not a rate: %q is not a positive count", s, num)
	}
	i := 0
	for i < len(per) && per[i] >= '0' && per[i] <= '9' {
		i++
	}
	mult := 1
	if i > 0 {
		mult, err = strconv.Atoi(per[:i])
		if err != nil || mult <= 0 {
			return Rate{}, fmt.Errorf("%q is not a rate: bad interval %q", s, per)
		}
	}
	unit, ok := durationUnits[per[i:]]
	if !ok || per[i:] == "w" {
		return Rate{}, fmt.Errorf("%q is not a rate: unknown unit %q (use s, m, h or d)", s, per[i:])
	}
	if int64(mult) > int64(math.MaxInt64/unit) {
		return Rate{}, fmt.Errorf("%q is not a rate: interval %q is too long", s, per)
	}
	return Rate{Count: n, Interval: time.Duration(mult) * unit}, nil
}

// parseRateOrZero reads a rate, or 0 for none at all (a Zero rate).
func parseRateOrZero(s string) (Rate, error) {
	if strings.TrimSpace(s) == "0" {
		return Rate{Count: 0, Interval: time.Hour}, nil
	}
	return parseRate(s)
}

// parseSize reads 40K, 25M, 1G, a plain byte count, or `unlimited`.
func parseSize(s string) (Size, error) {
	in := strings.ToUpper(strings.TrimSpace(s))
	if in == "UNLIMITED" {
		return Unlimited, nil
	}
	shift := 0
	switch {
	case strings.HasSuffix(in, "K"):
		shift = 10
	case strings.HasSuffix(in, "M"):
		shift = 20
	case strings.HasSuffix(in, "G"):
		shift = 30
	}
	if shift > 0 {
		in = in[:len(in)-1]
	}
	n, err := strconv.ParseInt(in, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size (write 40K, 25M, 1G or unlimited)", s)
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return Size(n << shift), nil
}

// parseBool reads yes, no, true or false.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "yes", "true":
		return true, nil
	case "no", "false":
		return false, nil
	}
	return false, fmt.Errorf("%q is not yes or no%s", s, didYouMean(s, []string{"yes", "no", "true", "false"}, "%q"))
}

// parseCIDR reads a network in PowerMTA's notation: 0/0, 10/8, 192.0.2.7,
// 2001:db8::/32, ::1. A short IPv4 network (10/8) is padded with zeros. The
// second result is set when host bits were cleared, so the caller can warn.
func parseCIDR(s string) (netip.Prefix, bool, error) {
	addr, bits, hasBits := strings.Cut(s, "/")
	if !strings.Contains(addr, ":") {
		if n := strings.Count(addr, "."); n < 3 && addr != "" {
			addr += strings.Repeat(".0", 3-n)
		}
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || ip.Zone() != "" {
		return netip.Prefix{}, false, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	n := ip.BitLen()
	if hasBits {
		n, err = strconv.Atoi(bits)
		if err != nil || n < 0 || n > ip.BitLen() {
			return netip.Prefix{}, false, fmt.Errorf("%q: prefix length must be 0 to %d", s, ip.BitLen())
		}
	}
	if ip.Is4In6() {
		// ::ffff:10.0.0.0/104 is 10.0.0.0/8: clients are matched unmapped
		if n < 96 {
			return netip.Prefix{}, false, fmt.Errorf("%q: an IPv4-mapped prefix needs a length of 96 or more", s)
		}
		ip, n = ip.Unmap(), n-96
	}
	p := netip.PrefixFrom(ip, n)
	m := p.Masked()
	return m, m.Addr() != p.Addr(), nil
}

// parseHostList reads an smtp-hosts value: `a.example, b.example;
// [192.0.2.1]:2525`.
func parseHostList(s string) (HostList, error) {
	var list HostList
	for _, level := range strings.Split(s, ";") {
		var hosts []HostAddr
		for _, h := range strings.Split(level, ",") {
			h = strings.TrimSpace(h)
			if h == "" {
				return nil, fmt.Errorf("%q has an empty host entry", s)
			}
			ha, err := parseHostAddr(h)
			if err != nil {
				return nil, err
			}
			hosts = append(hosts, ha)
		}
		list = append(list, hosts)
	}
	return list, nil
}

func parseHostAddr(h string) (HostAddr, error) {
	var ha HostAddr
	rest := h
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return ha, fmt.Errorf("%q: missing ]", h)
		}
		ip, err := netip.ParseAddr(h[1:end])
		if err != nil {
			return ha, fmt.Errorf("%q: %q is not an IP address", h, h[1:end])
		}
		ha.Host, ha.Literal = ip.Unmap().String(), true
		rest = h[end+1:]
		if rest != "" && rest[0] != ':' {
			return ha, fmt.Errorf("%q: unexpected %q after ]", h, rest)
		}
	} else if ip, err := netip.ParseAddr(h); err == nil {
		// a bare IP (IPv6 has no room for a port without brackets)
		return HostAddr{Host: ip.Unmap().String(), Literal: true}, nil
	} else {
		host, port, hasPort := strings.Cut(h, ":")
		ha.Host, rest = strings.ToLower(host), ""
		if hasPort {
			rest = ":" + port
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			ha.Host, ha.Literal = ip.Unmap().String(), true
		} else if !validHostname(ha.Host) {
			return ha, fmt.Errorf("%q is not a host name (write an IP address as [192.0.2.1])", host)
		}
	}
	if rest != "" {
		p, err := strconv.Atoi(rest[1:])
		if err != nil || p < 1 || p > 65535 {
			return ha, fmt.Errorf("%q: port must be 1 to 65535", h)
		}
		ha.Port = p
	}
	return ha, nil
}

// validHostname checks the shape of a DNS name: labels of letters, digits,
// hyphens and underscores, each 1 to 63 characters.
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}

// parseRegex reads /…/, case-insensitive unless the body starts with (?-i).
func parseRegex(s string) (Regexp, error) {
	if len(s) < 2 || s[0] != '/' || s[len(s)-1] != '/' {
		return Regexp{}, fmt.Errorf("%q is not a regex: write it between slashes, as /text/", s)
	}
	body := s[1 : len(s)-1]
	// Check the body as written first, so an error quotes the operator's
	// text rather than the (?i) added below.
	if _, err := regexp.Compile(body); err != nil {
		return Regexp{}, fmt.Errorf("bad regex %s: %s", s, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	expr := body
	if !strings.HasPrefix(body, "(?-i)") {
		expr = "(?i)" + body
	}
	re := regexp.MustCompile(expr) // valid: the body compiled above
	return Regexp{Regexp: re, Source: s}, nil
}

// PatternKind says how a domain pattern matches.
type PatternKind int

// The kinds of domain pattern, from most to least specific.
const (
	// PatternExact matches one domain: example.com.
	PatternExact PatternKind = iota
	// PatternSelfAndSubdomains matches a domain and its subdomains: [*.]example.com.
	PatternSelfAndSubdomains
	// PatternSubdomains matches subdomains only: *.example.com.
	PatternSubdomains
	// PatternAny matches every domain: *.
	PatternAny
)

// DomainPattern is the argument of a <domain> block.
type DomainPattern struct {
	Kind PatternKind
	// Domain is the lower-case suffix the pattern is anchored on; empty for *.
	Domain string
}

// String writes the pattern as in the file.
func (p DomainPattern) String() string {
	switch p.Kind {
	case PatternSelfAndSubdomains:
		return "[*.]" + p.Domain
	case PatternSubdomains:
		return "*." + p.Domain
	case PatternAny:
		return "*"
	}
	return p.Domain
}

// Match reports whether the (lower-case) domain falls under the pattern.
func (p DomainPattern) Match(domain string) bool {
	switch p.Kind {
	case PatternAny:
		return true
	case PatternExact:
		return domain == p.Domain
	case PatternSelfAndSubdomains:
		if domain == p.Domain {
			return true
		}
		fallthrough
	default:
		return len(domain) > len(p.Domain) && strings.HasSuffix(domain, p.Domain) && domain[len(domain)-len(p.Domain)-1] == '.'
	}
}

// parseDomainPattern reads *, example.com, *.example.com or [*.]example.com
// (after macro expansion).
func parseDomainPattern(s string) (DomainPattern, error) {
	in := strings.ToLower(strings.TrimSuffix(s, "."))
	var p DomainPattern
	switch {
	case in == "*":
		return DomainPattern{Kind: PatternAny}, nil
	case strings.HasPrefix(in, "[*.]"):
		p = DomainPattern{Kind: PatternSelfAndSubdomains, Domain: in[4:]}
	case strings.HasPrefix(in, "*."):
		p = DomainPattern{Kind: PatternSubdomains, Domain: in[2:]}
	default:
		p = DomainPattern{Kind: PatternExact, Domain: in}
	}
	if strings.Contains(p.Domain, "*") || !validHostname(p.Domain) {
		return p, fmt.Errorf("%q is not a domain pattern (use *, example.com, *.example.com or [*.]example.com)", s)
	}
	return p, nil
}

// Every source address, as a line of a source-ip-* directive without a CIDR
// means: both families, since 0/0 alone is IPv4 only.
var (
	allIPv4 = netip.MustParsePrefix("0.0.0.0/0")
	allIPv6 = netip.MustParsePrefix("::/0")
)

// SourceIPLimit is one line of source-ip-max-smtp-out: the limit N for the
// VMTA source addresses in Prefix. N is 0 for `0` or `unlimited`: no limit
// for those addresses, whatever a wider prefix says.
type SourceIPLimit struct {
	Pos    Position
	Prefix netip.Prefix
	N      int
}

// SourceIPLimits are the lines of source-ip-max-smtp-out in one <domain>
// block, in file order; no two have the same prefix.
type SourceIPLimits []SourceIPLimit

// For returns the limit for the source address ip: the N of the most
// specific prefix containing it. ok is false when no limit applies: no
// prefix contains ip, or the most specific one says unlimited.
func (l SourceIPLimits) For(ip netip.Addr) (n int, ok bool) {
	i := mostSpecific(len(l), func(i int) netip.Prefix { return l[i].Prefix }, ip)
	if i < 0 || l[i].N <= 0 {
		return 0, false
	}
	return l[i].N, true
}

// String writes the list as in the file, lines separated by "; ". A line
// written without a CIDR (0.0.0.0/0 and ::/0 from one line) shows as its
// value alone; an empty list is "unlimited".
func (l SourceIPLimits) String() string {
	return formatSourceIP(len(l), func(i int) (Position, netip.Prefix, string) {
		if l[i].N <= 0 {
			return l[i].Pos, l[i].Prefix, "unlimited"
		}
		return l[i].Pos, l[i].Prefix, strconv.Itoa(l[i].N)
	})
}

// SourceIPRate is one line of source-ip-max-msg-rate or
// source-ip-max-connect-rate: the rate for the VMTA source addresses in
// Prefix. The zero Rate (`unlimited`) sets no limit for those addresses,
// whatever a wider prefix says.
type SourceIPRate struct {
	Pos    Position
	Prefix netip.Prefix
	Rate   Rate
}

// SourceIPRates are the lines of one source-ip-*-rate directive in one
// <domain> block, in file order; no two have the same prefix.
type SourceIPRates []SourceIPRate

// For returns the rate for the source address ip: the Rate of the most
// specific prefix containing it. ok is false when no limit applies: no
// prefix contains ip, or the most specific one says unlimited.
func (l SourceIPRates) For(ip netip.Addr) (Rate, bool) {
	i := mostSpecific(len(l), func(i int) netip.Prefix { return l[i].Prefix }, ip)
	if i < 0 || l[i].Rate.Unlimited() {
		return Rate{}, false
	}
	return l[i].Rate, true
}

// String writes the list as SourceIPLimits.String does.
func (l SourceIPRates) String() string {
	return formatSourceIP(len(l), func(i int) (Position, netip.Prefix, string) {
		return l[i].Pos, l[i].Prefix, l[i].Rate.String()
	})
}

// mostSpecific returns the index of the longest of n prefixes that contains
// ip (an IPv4-mapped address counts as IPv4), the first one for equal
// lengths; -1 when none does.
func mostSpecific(n int, prefix func(int) netip.Prefix, ip netip.Addr) int {
	ip = ip.Unmap()
	best := -1
	for i := 0; i < n; i++ {
		p := prefix(i)
		if p.Contains(ip) && (best < 0 || p.Bits() > prefix(best).Bits()) {
			best = i
		}
	}
	return best
}

// formatSourceIP writes n source-ip entries "CIDR VALUE; …". The pair
// 0.0.0.0/0 and ::/0 from one line, as a line without a CIDR stores it, is
// written as the value alone.
func formatSourceIP(n int, entry func(int) (Position, netip.Prefix, string)) string {
	if n == 0 {
		return "unlimited"
	}
	var parts []string
	for i := 0; i < n; i++ {
		pos, p, v := entry(i)
		if p == allIPv4 && i+1 < n {
			if npos, np, nv := entry(i + 1); np == allIPv6 && npos == pos && nv == v {
				parts = append(parts, v)
				i++
				continue
			}
		}
		parts = append(parts, p.String()+" "+v)
	}
	return strings.Join(parts, "; ")
}
