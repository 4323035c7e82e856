package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// emailAddress reads local@domain.
func emailAddress(s string) (string, error) {
	local, domain, ok := strings.Cut(s, "@")
	if !ok || local == "" || !validHostname(domain) {
		return "", fmt.Errorf("%q is not an email address", s)
	}
	return s, nil
}

// pathAt returns a parser of paths written at n, resolved against the
// directory of n's file.
func pathAt(n *node) func(string) (string, error) {
	return func(s string) (string, error) { return relPath(n.Pos, s), nil }
}

// inboundBuffer reads max-inbound-buffer: a size of at least
// MinInboundBuffer, or unlimited.
func inboundBuffer(s string) (Size, error) {
	v, err := parseSize(s)
	if err == nil && v < MinInboundBuffer {
		err = fmt.Errorf("%s is less than the minimum, %s", v, MinInboundBuffer)
	}
	return v, err
}

// listener reads `smtp-listener ADDR:PORT [source=NAME] [tls=yes]`.
func (b *builder) listener(n *node) {
	if len(n.Args) == 0 {
		b.errorf(n.Pos, "smtp-listener needs an address: smtp-listener 0/0:587")
		return
	}
	a := n.Args[0]
	l := &Listener{Pos: n.Pos, Network: "tcp"}
	host, port, err := net.SplitHostPort(a.Text)
	if err != nil {
		// 0/0:587 has no brackets and a slash; split at the last colon.
		i := strings.LastIndexByte(a.Text, ':')
		if i < 0 {
			b.errorf(a.Pos, "smtp-listener: %q has no port (write 0/0:587, [::]:587 or 127.0.0.1:2525)", a.Text)
			return
		}
		host, port = a.Text[:i], a.Text[i+1:]
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		b.errorf(a.Pos, "smtp-listener: port %q must be 1 to 65535", port)
		return
	}
	switch {
	case host == "0/0" || host == "0.0.0.0":
		l.Network, host = "tcp4", "0.0.0.0"
	case host == "::" || host == "::/0":
		l.Network, host = "tcp6", "::"
	case host == "":
	default:
		ip, err := netip.ParseAddr(host)
		if err != nil && !validHostname(host) {
			b.errorf(a.Pos, "smtp-listener: %q is not an IP address or host name", host)
			return
		}
		if err == nil {
			host = ip.Unmap().String()
		}
	}
	l.Addr = net.JoinHostPort(host, port)
	for _, opt := range n.Args[1:] {
		k, v, _ := strings.Cut(opt.Text, "=")
		switch strings.ToLower(k) {
		case "source":
			if v == "" {
				b.errorf(opt.Pos, "smtp-listener: source= needs a source name")
				continue
			}
			l.Source = v
		case "tls":
			t, err := parseBool(v)
			if err != nil {
				b.errorf(opt.Pos, "smtp-listener: tls: %v", err)
				continue
			}
			l.TLS = t
		default:
			b.errorf(opt.Pos, "smtp-listener: unknown option %q%s", opt.Text, didYouMean(k, []string{"source", "tls"}, "%s="))
		}
	}
	if prev, dup := b.listeners[l.Addr]; dup {
		b.errorf(n.Pos, "smtp-listener %s is already defined at %s", l.Addr, shortPos(prev.Pos, n.Pos))
		return
	}
	b.listeners[l.Addr] = l
	b.cfg.Listeners = append(b.cfg.Listeners, l)
}

func nameServer(s string) (string, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return net.JoinHostPort(ip.String(), "53"), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return "", fmt.Errorf("%q is not IP or IP:PORT", s)
	}
	if ap.Port() == 0 {
		return "", fmt.Errorf("%q: port 0 is not a port a server answers on", s)
	}
	return ap.String(), nil
}

// mgmtAddr reads [ADDR:]PORT. A bare port listens on every interface, as in
// PowerMTA; who may use it is up to http-access, which grants nothing by
// default.
func mgmtAddr(s string) (string, error) {
	if p, err := strconv.Atoi(s); err == nil {
		if p < 1 || p > 65535 {
			return "", fmt.Errorf("port %d must be 1 to 65535", p)
		}
		return ":" + s, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("%q is not PORT or ADDR:PORT", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("port %q must be 1 to 65535", port)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return "", fmt.Errorf("%q is not an IP address", host)
		}
	}
	return s, nil
}

func (b *builder) httpAccess(n *node) {
	if len(n.Args) != 2 {
		b.errorf(n.Pos, "http-access takes a CIDR and a level: http-access 127.0.0.1 admin")
		return
	}
	p, ok := b.cidr(n.Args[0], n.Name)
	if !ok {
		return
	}
	lvl, opts, _ := strings.Cut(strings.ToLower(n.Args[1].Text), ",")
	if opts != "" {
		// PowerMTA's deny-logs keeps monitor users from the log files;
		// Tern's admin API serves no log files to anyone.
		b.warnf(n.Args[1].Pos, "http-access: the option %q is ignored: the admin API serves no log files", opts)
	}
	for i, name := range accessLevelNames {
		if lvl == name {
			b.cfg.HTTPAccess = append(b.cfg.HTTPAccess, &HTTPAccess{Pos: n.Pos, Prefix: p, Level: AccessLevel(i)})
			return
		}
	}
	b.errorf(n.Args[1].Pos, "http-access: unknown level %q (none, monitor, operator or admin)%s", n.Args[1].Text, didYouMean(lvl, accessLevelNames, "%q"))
}

// cidr parses a CIDR argument, warning when host bits had to be cleared.
func (b *builder) cidr(a arg, what string) (netip.Prefix, bool) {
	p, masked, err := parseCIDR(a.Text)
	if err != nil {
		b.errorf(a.Pos, "%s: %v", what, err)
		return p, false
	}
	if masked {
		b.warnf(a.Pos, "%s: %s has host bits set; using %s", what, a.Text, p)
	}
	return p, true
}

func (b *builder) certificate(n *node) {
	if b.already(&b.cfg.TLSCertificateFile, b.cfg.TLSCertificateFile.Pos, n) {
		return
	}
	if len(n.Args) < 1 || len(n.Args) > 2 {
		b.errorf(n.Pos, "smtp-server-tls-certificate takes a certificate file and optionally a key file")
		return
	}
	certFile := relPath(n.Pos, n.Args[0].Text)
	keyFile := certFile
	if len(n.Args) == 2 {
		keyFile = relPath(n.Pos, n.Args[1].Text)
	}
	// Read through Options.Open, like includes, so that tests and the
	// fuzzer decide what a path yields, and within the load's limits.
	certPEM, err := b.readKeyFile(certFile)
	keyPEM := certPEM
	if err == nil && keyFile != certFile {
		keyPEM, err = b.readKeyFile(keyFile)
	}
	var cert tls.Certificate
	if err == nil {
		cert, err = tls.X509KeyPair(certPEM, keyPEM)
	}
	if errors.Is(err, errStopped) {
		return // a limit stopped the load; that was reported
	}
	if err != nil {
		b.errorf(n.Args[0].Pos, "smtp-server-tls-certificate: %v", err)
		return
	}
	b.cfg.TLSCertificate = &cert
	b.cfg.TLSCertificateFile = Setting[string]{Value: certFile, Pos: n.Pos, Set: true}
}

// mxConnectionLimit reads `mx-connection-limit N`: one limit for every MX
// host address. PowerMTA's `mx-connection-limit MX-PATTERN N` limits the
// hosts a pattern matches; Tern has no per-pattern limit, so that form is
// a warning that says what to use instead.
func mxConnectionLimit(b *builder, c *Config, n *node) {
	if len(n.Args) == 2 {
		b.warnf(n.Pos, "mx-connection-limit %s %s: Tern's limit is one value for every MX host (mx-connection-limit N); per-pattern limits are not applied. Limit a provider with max-smtp-out or source-ip-max-smtp-out in its <domain NAME.rollup>", n.Args[0].Text, n.Args[1].Text)
		return
	}
	setOne(b, &c.MXConnectionLimit, n, limitOrUnlimited(1000000))
}

// listenerBlock reads PowerMTA 5's block form of a listener,
// <smtp-listener ADDR:PORT>, whose body may name the source and ask for
// implicit TLS; the other listener settings are Tern's global ones.
func (b *builder) listenerBlock(n *node) {
	if len(n.Args) != 1 {
		b.errorf(n.Pos, "<smtp-listener> takes one address: <smtp-listener 0/0:587>")
		return
	}
	line := &node{Pos: n.Pos, Name: n.Name, Args: append([]arg(nil), n.Args...)}
	for _, c := range n.Children {
		if !b.dispatch(c, scopeListener) {
			continue
		}
		b.noteUse(c, rowInfo{name: c.Name})
		a, ok := b.single(c)
		if !ok {
			continue
		}
		switch c.Name {
		case "source":
			line.Args = append(line.Args, arg{Pos: a.Pos, Text: "source=" + a.Text})
		case "immediate-tls":
			line.Args = append(line.Args, arg{Pos: a.Pos, Text: "tls=" + a.Text})
		}
	}
	b.listener(line)
}

// httpAPIKey reads http-api-key: repeatable, as in PowerMTA, each line
// adding a key the admin API accepts (to give each tool its own, or to
// change a key without a moment where no key works).
func httpAPIKey(b *builder, c *Config, n *node) {
	var k Setting[string]
	setOne(b, &k, n, text)
	if !k.Set {
		return
	}
	for _, have := range c.HTTPAPIKeys {
		if have == k.Value {
			b.errorf(n.Args[0].Pos, "http-api-key: this key is already given")
			return
		}
	}
	if !c.HTTPAPIKey.Set {
		c.HTTPAPIKey = k
	}
	c.HTTPAPIKeys = append(c.HTTPAPIKeys, k.Value)
}
