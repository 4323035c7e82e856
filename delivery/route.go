package delivery

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"

	"github.com/ternmta/tern/config"
)

// asciiDomain returns domain as DNS and servers without SMTPUTF8 know it:
// a domain with non-ASCII labels (U-labels, RFC 5890) is converted to
// A-labels ("bücher.example" to "xn--bcher-kva.example") with the IDNA
// Lookup profile (RFC 5891 §5), which also maps it (case, width)
// as lookups should. A domain that cannot be converted (a disallowed code
// point, a broken bidi label) is an error: no such name can be in DNS.
//
// An ASCII domain is returned as it is, not put through the profile:
// the profile's STD3 rules would refuse names that resolve and take mail
// today (an underscore in a label), and whether they exist is DNS's
// to say.
func asciiDomain(domain string) (string, error) {
	if isASCII([]byte(domain)) {
		return domain, nil
	}
	return idna.Lookup.ToASCII(domain)
}

// idnaError is the permanent failure of a domain that is not a valid
// internationalised domain name.
func idnaError(domain string, err error) *permanentError {
	return &permanentError{"5.1.2", fmt.Sprintf("domain %s is not a valid internationalised domain name (%v)", domain, err)}
}

// domainName is domain for messages: with its A-label form when that
// differs, since that is the name DNS was asked about.
func domainName(domain, ascii string) string {
	if ascii == domain {
		return domain
	}
	return domain + " (" + ascii + ")"
}

// destinations lists the addresses to try for domain, in order: the smart
// hosts of smtp-hosts when set, else the MX hosts by preference (equal ones
// shuffled), else the domain's own A/AAAA (RFC 5321 §5.1). A permanent
// problem (no such domain, null MX, a domain that is not a valid
// internationalised name) is a *permanentError. An internationalised
// domain is looked up by its A-labels.
func destinations(ctx context.Context, r Resolver, domain string, pol *config.DomainSettings) ([]target, error) {
	port := pol.DefaultSMTPPort.Value
	if hosts := pol.SMTPHosts.Value; len(hosts) > 0 {
		var out []target
		var lastErr error
		for _, level := range hosts {
			level = append([]config.HostAddr(nil), level...)
			shuffleEqual(level, func(config.HostAddr) int { return 0 })
			for _, h := range level {
				p := h.Port
				if p == 0 {
					p = port
				}
				if h.Literal {
					out = append(out, target{host: h.Host, ip: netip.MustParseAddr(h.Host), port: p})
					continue
				}
				ips, err := r.LookupAddr(ctx, h.Host)
				if err != nil {
					lastErr = err
				}
				for _, ip := range ips {
					out = append(out, target{host: h.Host, ip: ip, port: p})
				}
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("no address for smtp-hosts %s: %v", hosts, lastErr)
		}
		return out, nil
	}

	ascii, err := asciiDomain(domain)
	if err != nil {
		return nil, idnaError(domain, err)
	}
	name := domainName(domain, ascii)
	mxs, err := r.LookupMX(ctx, ascii)
	if err != nil {
		if IsNotFound(err) {
			return nil, &permanentError{"5.1.2", fmt.Sprintf("domain %s does not exist", name)}
		}
		return nil, fmt.Errorf("MX lookup for %s failed: %w", name, err)
	}
	if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
		return nil, &permanentError{"5.1.10", fmt.Sprintf("domain %s accepts no mail (null MX)", name)}
	}
	if len(mxs) == 0 {
		ips, err := r.LookupAddr(ctx, ascii)
		if IsNotFound(err) {
			return nil, &permanentError{"5.1.2", fmt.Sprintf("domain %s does not exist", name)}
		}
		if len(ips) == 0 {
			if pol.BounceUponNoMX.Value {
				return nil, &permanentError{"5.1.2", fmt.Sprintf("domain %s has no MX, A or AAAA record", name)}
			}
			if err == nil {
				err = errors.New("no MX, A or AAAA record")
			}
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		// The host is the A-label form: it is the TLS server name (SNI
		// and certificates know no other).
		out := make([]target, len(ips))
		for i, ip := range ips {
			out[i] = target{host: ascii, ip: ip, port: port}
		}
		return out, nil
	}
	sortMX(mxs)
	var out []target
	var lastErr error
	for _, mx := range mxs {
		host := strings.TrimSuffix(mx.Host, ".")
		ips, err := r.LookupAddr(ctx, host)
		if err != nil {
			lastErr = err
		}
		for _, ip := range ips {
			out = append(out, target{host: host, ip: ip, port: port})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no address for the MX hosts of %s: %v", name, lastErr)
	}
	return out, nil
}
