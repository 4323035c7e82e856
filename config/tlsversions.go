package config

import "crypto/tls"

// InboundTLSVersions returns the range of TLS versions inbound STARTTLS and
// tls=yes listeners accept, from smtp-server-tls-allow-tlsv1 to -tlsv1.3:
// the oldest and the newest version allowed. ok is false when none is.
// Go's TLS stack takes a range, so a version left out between two allowed
// ones is still accepted; Load warns about such a gap.
func (c *Config) InboundTLSVersions() (lo, hi uint16, ok bool) {
	for _, v := range c.tlsVersions() {
		if !v.allowed {
			continue
		}
		if !ok {
			lo = v.version
		}
		hi, ok = v.version, true
	}
	return lo, hi, ok
}

type tlsVersion struct {
	version uint16
	allowed bool
	at      Setting[bool]
	name    string
}

func (c *Config) tlsVersions() []tlsVersion {
	return []tlsVersion{
		{tls.VersionTLS10, c.TLSAllowV10.Value, c.TLSAllowV10, "smtp-server-tls-allow-tlsv1"},
		{tls.VersionTLS11, c.TLSAllowV11.Value, c.TLSAllowV11, "smtp-server-tls-allow-tlsv1.1"},
		{tls.VersionTLS12, c.TLSAllowV12.Value, c.TLSAllowV12, "smtp-server-tls-allow-tlsv1.2"},
		{tls.VersionTLS13, c.TLSAllowV13.Value, c.TLSAllowV13, "smtp-server-tls-allow-tlsv1.3"},
	}
}

// checkTLSVersions reports a configuration that allows no TLS version, and
// warns about a version refused between two allowed ones.
func (b *builder) checkTLSVersions() {
	vs := b.cfg.tlsVersions()
	lo, hi, ok := b.cfg.InboundTLSVersions()
	if !ok {
		for _, v := range vs {
			if v.at.Set {
				b.errorf(v.at.Pos, "%s no: no TLS version is left allowed; STARTTLS could never succeed", v.name)
				return
			}
		}
		return
	}
	for _, v := range vs {
		if !v.allowed && v.version > lo && v.version < hi && v.at.Set {
			b.warnf(v.at.Pos, "%s no: a version between two allowed ones cannot be refused; it stays allowed", v.name)
		}
	}
}
