package config

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// domainBlock reads a <domain PATTERN> into list, expanding macros: the body
// is read once and shared by every expansion. A pattern already in list
// merges with it.
// owner names the block the list belongs to ("" for the top level), so that
// finding the block a pattern merges with is a map lookup: an ESP file with
// thousands of domains in macros stays linear.
func (b *builder) domainBlock(n *node, owner string, list []*Domain) []*Domain {
	raw, ok := b.blockName(n, "domain pattern")
	if !ok {
		return list
	}
	expanded, errMsg := b.expand(raw, func(m string) ([]string, bool) {
		v, ok := b.cfg.Macros[m]
		return v, ok
	})
	if errMsg != "" {
		b.errorf(n.Args[0].Pos, "<domain>: %s", errMsg)
		return list
	}
	var patterns []DomainPattern
	seen := map[DomainPattern]bool{}
	for _, e := range expanded {
		p, err := parseDomainPattern(e)
		if err != nil {
			b.errorf(n.Args[0].Pos, "<domain>: %v", err)
			continue
		}
		if !seen[p] { // a macro listing a value twice names one domain
			seen[p] = true
			patterns = append(patterns, p)
		}
	}
	settings := DefaultDomainSettings()
	for _, c := range n.Children {
		if b.dispatch(c, scopeDomain) {
			domainTable.apply(b, &settings, c)
		}
	}
	if settings.AuthPassword.Set != settings.AuthUsername.Set {
		b.errorf(n.Pos, "%s: auth-username and auth-password go together", n.label())
	}
	if settings.DKIMSign.Value {
		b.dkimSignPos = append(b.dkimSignPos, settings.DKIMSign.Pos)
	}
	viaMacro := strings.Contains(raw, "$")
	for _, p := range patterns {
		k := domainKey{owner, p}
		if d, ok := b.domains[k]; ok {
			switch {
			case viaMacro && !b.explicit[k]:
				b.mergeInto(&d.Settings, &settings, n)
			case viaMacro:
				// <domain aol.com> named the domain itself: it wins
				// over a macro that also lists it, which only fills in
				// what it leaves unset.
				inherit(&d.Settings, &settings)
			case !b.explicit[k]:
				b.explicit[k] = true
				b.mergeOver(&d.Settings, &settings, n)
			default:
				b.mergeInto(&d.Settings, &settings, n)
			}
			continue
		}
		d := &Domain{Pos: n.Pos, Pattern: p, Settings: settings}
		b.domains[k] = d
		b.explicit[k] = !viaMacro
		list = append(list, d)
	}
	return list
}

// smtp421 reads smtp-421-means-mx-unavailable: Tern always behaves as
// with yes, so no is refused with what Tern does.
func smtp421(b *builder, _ *DomainSettings, n *node) {
	var v Setting[bool]
	setOne(b, &v, n, parseBool)
	if v.Set && !v.Value {
		b.warnf(n.Pos, "smtp-421-means-mx-unavailable no: Tern always treats a 421 greeting as the MX being unavailable and tries the next one (it also counts towards host-down-after); the line is ignored")
	}
}

// sourceIPLine reads a source-ip-* line: an optional CIDR of VMTA source
// addresses, then the value, which parse reads. A line without a CIDR applies
// to every source address, IPv4 and IPv6. have reports where the block
// already set a prefix: each CIDR may be given once per block.
func sourceIPLine[V any](b *builder, n *node, example string, parse func(string) (V, error), have func(netip.Prefix) (Position, bool)) ([]netip.Prefix, V, bool) {
	var zero V
	var prefixes []netip.Prefix
	var val arg
	switch len(n.Args) {
	case 1:
		prefixes, val = []netip.Prefix{allIPv4, allIPv6}, n.Args[0]
	case 2:
		p, ok := b.cidr(n.Args[0], n.Name)
		if !ok {
			return nil, zero, false
		}
		prefixes, val = []netip.Prefix{p}, n.Args[1]
	default:
		b.errorf(n.Pos, "%s takes an optional CIDR of source addresses and a value: %s %s or %s 192.0.2.0/24 %s", n.Name, n.Name, example, n.Name, example)
		return nil, zero, false
	}
	v, err := parse(val.Text)
	if err != nil {
		// A lone CIDR is a line whose value was left out (a bare count
		// such as 5 reads as a CIDR too, hence the punctuation test).
		if _, _, cerr := parseCIDR(val.Text); cerr == nil && len(n.Args) == 1 && strings.ContainsAny(val.Text, "./:") {
			b.errorf(val.Pos, "%s: the value after the CIDR is missing: %s %s %s", n.Name, n.Name, val.Text, example)
		} else {
			b.errorf(val.Pos, "%s: %v", n.Name, err)
		}
		return nil, zero, false
	}
	for _, p := range prefixes {
		if prev, dup := have(p); dup {
			what := p.String()
			if len(prefixes) == 2 {
				what = "every source IP (0.0.0.0/0 and ::/0)"
			}
			b.errorf(n.Pos, "%s for %s is already set at %s", n.Name, what, shortPos(prev, n.Pos))
			return nil, zero, false
		}
	}
	return prefixes, v, true
}

// sourceIPLimit adds a `source-ip-max-smtp-out [CIDR] N` line to the
// block's list: the lines of one block accumulate, one per CIDR.
func (b *builder) sourceIPLimit(s *Setting[SourceIPLimits], n *node) {
	prefixes, lim, ok := sourceIPLine(b, n, "5", limitOrUnlimited(100000), func(p netip.Prefix) (Position, bool) {
		for _, e := range s.Value {
			if e.Prefix == p {
				return e.Pos, true
			}
		}
		return Position{}, false
	})
	if !ok {
		return
	}
	pos := s.Pos
	if !s.Set {
		pos = n.Pos
	}
	list := append(SourceIPLimits(nil), s.Value...)
	for _, p := range prefixes {
		list = append(list, SourceIPLimit{Pos: n.Pos, Prefix: p, N: lim})
	}
	*s = Setting[SourceIPLimits]{Value: list, Pos: pos, Set: true}
}

// sourceIPRate adds a `source-ip-max-msg-rate [CIDR] RATE` (or
// source-ip-max-connect-rate) line to the block's list.
func (b *builder) sourceIPRate(s *Setting[SourceIPRates], n *node) {
	prefixes, r, ok := sourceIPLine(b, n, "100/h", parseRate, func(p netip.Prefix) (Position, bool) {
		for _, e := range s.Value {
			if e.Prefix == p {
				return e.Pos, true
			}
		}
		return Position{}, false
	})
	if !ok {
		return
	}
	pos := s.Pos
	if !s.Set {
		pos = n.Pos
	}
	list := append(SourceIPRates(nil), s.Value...)
	for _, p := range prefixes {
		list = append(list, SourceIPRate{Pos: n.Pos, Prefix: p, Rate: r})
	}
	*s = Setting[SourceIPRates]{Value: list, Pos: pos, Set: true}
}

// domainKey reads `domain-key SELECTOR,DOMAIN,KEYFILE` into keys and loads
// the key: a missing or unreadable key is a config error, not a delivery
// surprise. DOMAIN may be `*`: the key then signs for whatever domain the
// message's From: has.
func (b *builder) domainKey(keys *Setting[[]DomainKey], n *node) {
	parts := strings.Split(n.argText(), ",")
	if len(n.Args) == 0 || len(parts) != 3 {
		b.errorf(n.Pos, "domain-key takes SELECTOR,DOMAIN,KEYFILE")
		return
	}
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	if parts[2] == "" {
		b.errorf(n.Pos, "domain-key takes SELECTOR,DOMAIN,KEYFILE (the key file is missing)")
		return
	}
	sel, dom, file := parts[0], strings.ToLower(parts[1]), relPath(n.Pos, parts[2])
	if sel == "" || !validHostname(sel) {
		b.errorf(n.Args[0].Pos, "domain-key: %q is not a selector", sel)
		return
	}
	if dom != AnyDomain && !validHostname(dom) {
		b.errorf(n.Args[0].Pos, "domain-key: %q is not a domain (or * for the From: domain)", dom)
		return
	}
	signer, err := loadPrivateKey(b.readKeyFile, file)
	if errors.Is(err, errStopped) {
		return // a limit stopped the load; that was reported
	}
	if err != nil {
		b.errorf(n.Args[0].Pos, "domain-key: %v", err)
		return
	}
	for _, k := range keys.Value {
		if k.Domain == dom && k.Selector == sel {
			b.errorf(n.Pos, "domain-key %s,%s is already set at %s", sel, dom, shortPos(k.Pos, n.Pos))
			return
		}
	}
	pos := keys.Pos
	if !keys.Set {
		pos = n.Pos
	}
	list := append(append([]DomainKey(nil), keys.Value...), DomainKey{Pos: n.Pos, Selector: sel, Domain: dom, KeyFile: file, Signer: signer})
	*keys = Setting[[]DomainKey]{Value: list, Pos: pos, Set: true}
	b.hasDomainKey = true
}

// loadPrivateKey reads an RSA or Ed25519 private key in PEM (PKCS#1 or
// PKCS#8).
func loadPrivateKey(readFile func(string) ([]byte, error), file string) (crypto.Signer, error) {
	data, err := readFile(file)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM private key", file)
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: not an RSA or Ed25519 private key: %v", file, err)
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("%s: DKIM keys must be RSA or Ed25519, not %T", file, k)
}

// domainKey identifies a <domain> block: the pattern, in the block that
// holds it (owner).
type domainKey struct {
	owner   string
	pattern DomainPattern
}

// deliveryType reads PowerMTA's `type` of a queue. Tern delivers by SMTP;
// `discard` sets DomainSettings.Discard, and delivery then completes the
// queue's mail without sending it (delivery/discard.go); the other
// methods (pipe, file, http-delivery) are refused, since accepting them
// would send by SMTP mail meant for a program or a file.
func deliveryType(b *builder, s *DomainSettings, n *node) {
	a, ok := b.single(n)
	if !ok {
		return
	}
	switch strings.ToLower(a.Text) {
	case "smtp":
		setOne(b, &s.Discard, n, func(string) (bool, error) { return false, nil })
	case "discard":
		setOne(b, &s.Discard, n, func(string) (bool, error) { return true, nil })
	case "pipe", "file", "http-delivery":
		b.errorf(a.Pos, "type %s: Tern delivers by SMTP only (or discards, with type discard); deliver this domain's mail with another program", a.Text)
	default:
		b.errorf(a.Pos, "type: unknown delivery type %q (smtp or discard)", a.Text)
	}
}
