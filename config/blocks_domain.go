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
func (b *builder) domainBlock(n *node, list []*Domain) []*Domain {
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
			b.domainDirective(&settings, c)
		}
	}
	if settings.AuthPassword.Set != settings.AuthUsername.Set {
		b.errorf(n.Pos, "%s: auth-username and auth-password go together", n.label())
	}
	if settings.DKIMSign.Value {
		b.dkimSignPos = append(b.dkimSignPos, settings.DKIMSign.Pos)
	}
next:
	for _, p := range patterns {
		for _, d := range list {
			if d.Pattern == p {
				b.mergeInto(&d.Settings, &settings, n)
				continue next
			}
		}
		list = append(list, &Domain{Pos: n.Pos, Pattern: p, Settings: settings})
	}
	return list
}

func (b *builder) domainDirective(s *DomainSettings, n *node) {
	switch n.Name {
	case "max-smtp-out":
		setOne(b, &s.MaxSMTPOut, n, intRange(1, 100000))
	case "max-msg-per-connection":
		setOne(b, &s.MaxMsgPerConnection, n, intRange(0, 1000000))
	case "max-rcpt-per-transaction", "max-rcpt-per-message":
		// max-rcpt-per-message is PowerMTA's name for this in <domain>
		setOne(b, &s.MaxRcptPerTransaction, n, intRange(1, 100000))
	case "max-msg-rate":
		setOne(b, &s.MaxMsgRate, n, parseRate)
	case "max-connect-rate":
		setOne(b, &s.MaxConnectRate, n, parseRate)
	case "source-ip-max-smtp-out":
		b.sourceIPLimit(&s.SourceIPMaxSMTPOut, n)
	case "source-ip-max-msg-rate":
		b.sourceIPRate(&s.SourceIPMaxMsgRate, n)
	case "source-ip-max-connect-rate":
		b.sourceIPRate(&s.SourceIPMaxConnectRate, n)
	case "initial-smtp-out":
		setOne(b, &s.InitialSMTPOut, n, intRange(1, 10000))
	case "adaptive-smtp-out":
		setOne(b, &s.AdaptiveSMTPOut, n, parseBool)
	case "connection-idle-timeout":
		setOne(b, &s.ConnectionIdleTimeout, n, positiveDuration)
	case "retry-after":
		setList(b, &s.RetryAfter, n, parseDurationList)
	case "bounce-after":
		setOne(b, &s.BounceAfter, n, positiveDuration)
	case "notify-of-delay":
		setOne(b, &s.NotifyOfDelay, n, durationOrNever)
	case "bounce-upon-no-mx":
		setOne(b, &s.BounceUponNoMX, n, parseBool)
	case "use-starttls":
		setOne(b, &s.UseStartTLS, n, parseBool)
	case "require-starttls":
		setOne(b, &s.RequireStartTLS, n, parseBool)
	case "tls-verify-certificate":
		setOne(b, &s.TLSVerifyCertificate, n, parseBool)
	case "smtp-hosts", "route":
		setList(b, &s.SMTPHosts, n, parseHostList)
	case "default-smtp-port":
		setOne(b, &s.DefaultSMTPPort, n, intRange(1, 65535))
	case "mx-connection-attempts":
		setOne(b, &s.MXConnectionAttempts, n, intRange(1, 100))
	case "host-down-after":
		setOne(b, &s.HostDownAfter, n, intRange(1, 1000))
	case "disable-mx-rollup":
		setOne(b, &s.DisableMXRollup, n, parseBool)
	case "auth-username":
		setOne(b, &s.AuthUsername, n, text)
	case "auth-password":
		setOne(b, &s.AuthPassword, n, text)
	case "use-unencrypted-plain-auth":
		setOne(b, &s.UseUnencryptedPlainAuth, n, parseBool)
	case "connect-timeout":
		setOne(b, &s.ConnectTimeout, n, positiveDuration)
	case "smtp-greeting-timeout":
		setOne(b, &s.SMTPGreetingTimeout, n, positiveDuration)
	case "data-send-timeout":
		setOne(b, &s.DataSendTimeout, n, positiveDuration)
	case "max-errors-per-connection":
		setOne(b, &s.MaxErrorsPerConnection, n, countOrUnlimited)
	case "queue-priority":
		setOne(b, &s.QueuePriority, n, intRange(0, 100))
	case "smtp-pattern-list":
		setOne(b, &s.SMTPPatternList, n, text)
	case "backoff-max-smtp-out":
		setOne(b, &s.BackoffMaxSMTPOut, n, intRange(1, 100000))
	case "backoff-max-msg-rate":
		setOne(b, &s.BackoffMaxMsgRate, n, parseRate)
	case "backoff-retry-after":
		setList(b, &s.BackoffRetryAfter, n, parseDurationList)
	case "backoff-to-normal-after":
		setOne(b, &s.BackoffToNormalAfter, n, durationOrNever)
	case "backoff-to-normal-after-delivery":
		setOne(b, &s.BackoffToNormalAfterDelivery, n, parseBool)
	case "dkim-sign":
		setOne(b, &s.DKIMSign, n, parseBool)
	case "domain-key":
		b.domainKey(s, n)
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

// domainKey reads `domain-key SELECTOR,DOMAIN,KEYFILE` and loads the key:
// a missing or unreadable key is a config error, not a delivery surprise.
func (b *builder) domainKey(s *DomainSettings, n *node) {
	parts := strings.Split(n.argText(), ",")
	if len(n.Args) == 0 || len(parts) != 3 {
		b.errorf(n.Pos, "domain-key takes SELECTOR,DOMAIN,KEYFILE")
		return
	}
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	sel, dom, file := parts[0], strings.ToLower(parts[1]), relPath(n.Pos, parts[2])
	if sel == "" || !validHostname(sel) {
		b.errorf(n.Args[0].Pos, "domain-key: %q is not a selector", sel)
		return
	}
	if !validHostname(dom) {
		b.errorf(n.Args[0].Pos, "domain-key: %q is not a domain", dom)
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
	for _, k := range s.DomainKeys.Value {
		if k.Domain == dom && k.Selector == sel {
			b.errorf(n.Pos, "domain-key %s,%s is already set at %s", sel, dom, shortPos(k.Pos, n.Pos))
			return
		}
	}
	pos := s.DomainKeys.Pos
	if !s.DomainKeys.Set {
		pos = n.Pos
	}
	keys := append(append([]DomainKey(nil), s.DomainKeys.Value...), DomainKey{Pos: n.Pos, Selector: sel, Domain: dom, KeyFile: file, Signer: signer})
	s.DomainKeys = Setting[[]DomainKey]{Value: keys, Pos: pos, Set: true}
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
