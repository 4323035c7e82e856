package delivery

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/ternmta/tern/config"
)

// destinations lists the addresses to try for domain, in order: the smart
// hosts of smtp-hosts when set, else the MX hosts by preference (equal ones
// shuffled), else the domain's own A/AAAA (RFC 5321 §5.1). A permanent
// problem (no such domain, null MX) is a *permanentError.
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

	mxs, err := r.LookupMX(ctx, domain)
	if err != nil {
		if IsNotFound(err) {
			return nil, &permanentError{"5.1.2", fmt.Sprintf("domain %s does not exist", domain)}
		}
		return nil, fmt.Errorf("MX lookup for %s failed: %w", domain, err)
	}
	if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
		return nil, &permanentError{"5.1.10", fmt.Sprintf("domain %s accepts no mail (null MX)", domain)}
	}
	if len(mxs) == 0 {
		ips, err := r.LookupAddr(ctx, domain)
		if IsNotFound(err) {
			return nil, &permanentError{"5.1.2", fmt.Sprintf("domain %s does not exist", domain)}
		}
		if len(ips) == 0 {
			if pol.BounceUponNoMX.Value {
				return nil, &permanentError{"5.1.2", fmt.Sprintf("domain %s has no MX, A or AAAA record", domain)}
			}
			if err == nil {
				err = errors.New("no MX, A or AAAA record")
			}
			return nil, fmt.Errorf("%s: %w", domain, err)
		}
		out := make([]target, len(ips))
		for i, ip := range ips {
			out[i] = target{host: domain, ip: ip, port: port}
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
		return nil, fmt.Errorf("no address for the MX hosts of %s: %v", domain, lastErr)
	}
	return out, nil
}
