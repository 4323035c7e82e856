package config

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func (b *builder) topDirective(n *node) {
	cfg := b.cfg
	switch n.Name {
	case "domain-macro":
		// read before everything else by macros
	case "smtp-listener":
		b.listener(n)
	case "host-name":
		setOne(b, &cfg.HostName, n, hostname)
	case "postmaster":
		setOne(b, &cfg.Postmaster, n, func(s string) (string, error) {
			local, domain, ok := strings.Cut(s, "@")
			if !ok || local == "" || !validHostname(domain) {
				return "", fmt.Errorf("%q is not an email address", s)
			}
			return s, nil
		})
	case "spool":
		setOne(b, &cfg.Spool.Dir, n, func(s string) (string, error) { return relPath(n.Pos, s), nil })
	case "smtp-server-tls-certificate":
		b.certificate(n)
	case "name-server":
		var s Setting[string]
		setOne(b, &s, n, nameServer)
		if s.Set {
			cfg.NameServers = append(cfg.NameServers, s)
		}
	case "total-max-smtp-out":
		setOne(b, &cfg.TotalMaxSMTPOut, n, intRange(1, 1000000))
	case "total-max-smtp-in":
		setOne(b, &cfg.TotalMaxSMTPIn, n, intRange(1, 1000000))
	case "http-mgmt-port":
		setOne(b, &cfg.HTTPMgmtAddr, n, mgmtAddr)
	case "http-access":
		b.httpAccess(n)
	case "http-api-key":
		setOne(b, &cfg.HTTPAPIKey, n, text)
	case "log-file":
		setOne(b, &cfg.LogFile, n, func(s string) (string, error) { return relPath(n.Pos, s), nil })
	case "log-level":
		setOne(b, &cfg.LogLevel, n, logLevel)
	case "mx-connection-limit":
		setOne(b, &cfg.MXConnectionLimit, n, limitOrUnlimited(1000000))
	case "max-smtp-in-per-ip":
		setOne(b, &cfg.MaxSMTPInPerIP, n, limitOrUnlimited(1000000))
	case "smtp-in-reserved":
		setOne(b, &cfg.SMTPInReserved, n, intRange(0, 1000000))
	case "max-inbound-buffer":
		setOne(b, &cfg.MaxInboundBuffer, n, inboundBuffer)
	}
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
	lvl := strings.ToLower(n.Args[1].Text)
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

// sourceBlock reads <source CIDR|NAME>. Blocks for the same CIDR or name
// merge; a directive set in both is an error.
func (b *builder) sourceBlock(n *node) {
	arg, ok := b.blockName(n, "CIDR or source name")
	if !ok {
		return
	}
	src := &Source{Pos: n.Pos}
	a := n.Args[0]
	looksLikeCIDR := arg != "" && (arg[0] >= '0' && arg[0] <= '9' || strings.ContainsAny(arg, ":/"))
	if looksLikeCIDR {
		p, ok := b.cidr(a, "<source>")
		if !ok {
			return
		}
		src.Prefix = p
	} else {
		if !b.validName(n, arg) {
			return
		}
		src.Name = arg
	}
	settings := DefaultSourceSettings()
	for _, c := range n.Children {
		if b.dispatch(c, scopeSource) {
			b.sourceDirective(&settings, c)
		}
	}
	key := src.Prefix.String()
	if src.Named() {
		key = "name:" + strings.ToLower(src.Name)
	}
	if prev, ok := b.sources[key]; ok {
		b.mergeInto(&prev.Settings, &settings, n)
		return
	}
	src.Settings = settings
	b.sources[key] = src
	b.cfg.Sources = append(b.cfg.Sources, src)
}

func (b *builder) sourceDirective(s *SourceSettings, n *node) {
	switch n.Name {
	case "smtp-service":
		setOne(b, &s.SMTPService, n, parseBool)
	case "always-allow-relaying":
		setOne(b, &s.AlwaysAllowRelaying, n, parseBool)
	case "require-auth":
		setOne(b, &s.RequireAuth, n, parseBool)
	case "require-starttls":
		setOne(b, &s.RequireStartTLS, n, parseBool)
	case "allow-unencrypted-plain-auth":
		setOne(b, &s.AllowUnencryptedPlainAuth, n, parseBool)
	case "smtp-max-auth-failure-rate":
		setOne(b, &s.SMTPMaxAuthFailureRate, n, parseRate)
	case "process-x-virtual-mta":
		setOne(b, &s.ProcessXVirtualMTA, n, parseBool)
	case "default-virtual-mta":
		setOne(b, &s.DefaultVirtualMTA, n, vmtaRef)
	case "process-x-job":
		setOne(b, &s.ProcessXJob, n, parseBool)
	case "max-message-size":
		setOne(b, &s.MaxMessageSize, n, parseSize)
	case "max-rcpt-per-message":
		setOne(b, &s.MaxRcptPerMessage, n, intRange(1, 1000000))
	case "add-received-header":
		setOne(b, &s.AddReceivedHeader, n, parseBool)
	case "hide-message-source":
		setOne(b, &s.HideMessageSource, n, parseBool)
	case "remove-header":
		// repeatable: each line adds a header name
		var h Setting[string]
		setOne(b, &h, n, headerName)
		if h.Set {
			pos := s.RemoveHeaders.Pos
			if !s.RemoveHeaders.Set {
				pos = n.Pos
			}
			list := append(append([]string(nil), s.RemoveHeaders.Value...), h.Value)
			s.RemoveHeaders = Setting[[]string]{Value: list, Pos: pos, Set: true}
		}
	case "pattern-list":
		setOne(b, &s.PatternList, n, text)
	case "log-connections":
		setOne(b, &s.LogConnections, n, parseBool)
	case "log-commands":
		setOne(b, &s.LogCommands, n, parseBool)
	}
}

// repeatableFields are the settings whose directive may be repeated; when two
// blocks for the same key both set one, their lists are joined.
var repeatableFields = map[string]bool{"RemoveHeaders": true, "DomainKeys": true}

// mergeInto folds the settings of a second block for the same key into the
// first, reporting directives both set.
func (b *builder) mergeInto(dst, src any, n *node) {
	d := reflect.ValueOf(dst).Elem()
	s := reflect.ValueOf(src).Elem()
	for i := 0; i < d.NumField(); i++ {
		sf := s.Field(i)
		if !sf.Interface().(interface{ isSet() bool }).isSet() {
			continue
		}
		df := d.Field(i)
		if repeatableFields[d.Type().Field(i).Name] {
			dv, sv := df.FieldByName("Value"), sf.FieldByName("Value")
			if df.Interface().(interface{ isSet() bool }).isSet() {
				joined := reflect.AppendSlice(reflect.AppendSlice(reflect.MakeSlice(dv.Type(), 0, dv.Len()+sv.Len()), dv), sv)
				dv.Set(joined)
				continue
			}
		}
		if df.Interface().(interface{ isSet() bool }).isSet() {
			spos := sf.FieldByName("Pos").Interface().(Position)
			dpos := df.FieldByName("Pos").Interface().(Position)
			b.errorf(spos, "%s is already set for %s at %s", b.directiveAt[spos], n.label(), shortPos(dpos, spos))
			continue
		}
		df.Set(sf)
	}
}

func (b *builder) userBlock(n *node) {
	name, ok := b.blockName(n, "user name")
	if !ok {
		return
	}
	key := strings.ToLower(name)
	if prev, dup := b.users[key]; dup {
		b.errorf(n.Pos, "<smtp-user %s> is already defined at %s", name, shortPos(prev.Pos, n.Pos))
		return
	}
	u := &User{Pos: n.Pos, Name: name, Password: def(""), PasswordHash: def(""), Source: def(AuthSource)}
	for _, c := range n.Children {
		if !b.dispatch(c, scopeUser) {
			continue
		}
		switch c.Name {
		case "password":
			setOne(b, &u.Password, c, text)
			if u.Password.Set && u.Password.Pos == c.Pos {
				b.warnf(c.Pos, "smtp-user %s: the password is stored in plaintext; prefer password-hash (tern hash-password prints one)", name)
			}
		case "password-hash":
			setOne(b, &u.PasswordHash, c, func(s string) (string, error) {
				if _, err := bcrypt.Cost([]byte(s)); err != nil {
					return "", fmt.Errorf("not a bcrypt hash ($2a$…); tern hash-password prints one")
				}
				return s, nil
			})
		case "source":
			setOne(b, &u.Source, c, text)
		}
	}
	switch {
	case u.Password.Set && u.PasswordHash.Set:
		b.errorf(u.PasswordHash.Pos, "smtp-user %s: set password or password-hash, not both", name)
	case !u.Password.Set && !u.PasswordHash.Set && !hasChild(n, "password", "password-hash"):
		// (a password line with a bad value was reported already)
		b.errorf(n.Pos, "<smtp-user %s> has no password-hash (or password)", name)
	}
	b.users[key] = u
	b.cfg.Users = append(b.cfg.Users, u)
}

// claimName registers a VMTA or pool name; they share one name space.
func (b *builder) claimName(n *node, name string) bool {
	key := strings.ToLower(name)
	if prev, dup := b.names[key]; dup {
		b.errorf(n.Pos, "%s: the name %s is already used at %s (virtual MTAs and pools share one name space)", n.label(), name, shortPos(prev, n.Pos))
		return false
	}
	b.names[key] = n.Pos
	return true
}

func (b *builder) vmtaBlock(n *node) {
	name, ok := b.blockName(n, "name")
	if !ok || !b.validName(n, name) || !b.claimName(n, name) {
		return
	}
	v := &VirtualMTA{Pos: n.Pos, Name: name, HostName: def(""), MaxSMTPOut: def(0), MaxSMTPMsgRate: def(Rate{})}
	for _, c := range n.Children {
		if !b.dispatch(c, scopeVMTA) {
			continue
		}
		if c.Block {
			v.Domains = b.domainBlock(c, v.Domains)
			continue
		}
		switch c.Name {
		case "smtp-source-host":
			b.sourceHost(v, c)
		case "host-name":
			setOne(b, &v.HostName, c, hostname)
		case "max-smtp-out":
			setOne(b, &v.MaxSMTPOut, c, intRange(1, 1000000))
		case "max-smtp-msg-rate":
			setOne(b, &v.MaxSMTPMsgRate, c, parseRate)
		}
	}
	b.cfg.VMTAs = append(b.cfg.VMTAs, v)
}

// sourceHost reads `smtp-source-host IP HOSTNAME`. No two VMTAs may share an
// IP: segregation by IP is why VMTAs exist.
func (b *builder) sourceHost(v *VirtualMTA, n *node) {
	if len(n.Args) != 2 {
		b.errorf(n.Pos, "smtp-source-host takes an IP address and a host name: smtp-source-host 192.0.2.10 mta1.example.com")
		return
	}
	ip, err := netip.ParseAddr(n.Args[0].Text)
	if err != nil || ip.Zone() != "" {
		b.errorf(n.Args[0].Pos, "smtp-source-host: %q is not an IP address", n.Args[0].Text)
		return
	}
	ip = ip.Unmap()
	host, err := hostname(n.Args[1].Text)
	if err != nil {
		b.errorf(n.Args[1].Pos, "smtp-source-host: %v", err)
		return
	}
	for _, other := range b.cfg.VMTAs {
		for _, sh := range other.SourceHosts {
			if sh.IP == ip {
				b.errorf(n.Args[0].Pos, "smtp-source-host: %s is already the source IP of <virtual-mta %s> at %s; virtual MTAs must not share source IPs", ip, other.Name, shortPos(sh.Pos, n.Pos))
				return
			}
		}
	}
	for _, sh := range v.SourceHosts {
		if sh.IP == ip {
			b.errorf(n.Args[0].Pos, "smtp-source-host: %s is listed twice (first at %s)", ip, shortPos(sh.Pos, n.Pos))
			return
		}
	}
	v.SourceHosts = append(v.SourceHosts, SourceHost{Pos: n.Pos, IP: ip, HostName: host})
}

func (b *builder) poolBlock(n *node) {
	name, ok := b.blockName(n, "name")
	if !ok || !b.validName(n, name) {
		return
	}
	if strings.EqualFold(name, DefaultVMTA) {
		b.errorf(n.Args[0].Pos, "%s is the default virtual MTA and cannot be a pool", DefaultVMTA)
		return
	}
	if !b.claimName(n, name) {
		return
	}
	p := &Pool{Pos: n.Pos, Name: name, MaxSMTPOut: def(0), MaxSMTPMsgRate: def(Rate{})}
	for _, c := range n.Children {
		if !b.dispatch(c, scopePool) {
			continue
		}
		if c.Block {
			p.Domains = b.domainBlock(c, p.Domains)
			continue
		}
		switch c.Name {
		case "virtual-mta":
			a, ok := b.single(c)
			if !ok {
				continue
			}
			dup := false
			for _, m := range p.Members {
				if strings.EqualFold(m.Name, a.Text) {
					b.errorf(c.Pos, "virtual-mta %s is already a member (line %d)", a.Text, m.Pos.Line)
					dup = true
				}
			}
			if !dup {
				p.Members = append(p.Members, PoolMember{Pos: c.Pos, Name: a.Text})
			}
		case "max-smtp-out":
			setOne(b, &p.MaxSMTPOut, c, intRange(1, 1000000))
		case "max-smtp-msg-rate":
			setOne(b, &p.MaxSMTPMsgRate, c, parseRate)
		}
	}
	if len(p.Members) == 0 {
		b.errorf(n.Pos, "%s has no members (add virtual-mta NAME lines)", n.label())
	}
	b.cfg.Pools = append(b.cfg.Pools, p)
}

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

func (b *builder) patternListBlock(n *node) {
	name, ok := b.blockName(n, "name")
	if !ok || !b.validName(n, name) {
		return
	}
	key := strings.ToLower(name)
	if prev, dup := b.patterns[key]; dup {
		b.errorf(n.Pos, "<pattern-list %s> is already defined at %s", name, shortPos(prev.Pos, n.Pos))
		return
	}
	pl := &PatternList{Pos: n.Pos, Name: name}
	for _, c := range n.Children {
		if !b.dispatch(c, scopePatternList) {
			continue
		}
		r := PatternRule{Pos: c.Pos}
		args := c.Args
		switch c.Name {
		case "mail-from":
			r.Field = MatchMailFrom
		case "rcpt-to":
			r.Field = MatchRcptTo
		case "header":
			r.Field = MatchHeader
			if len(args) == 0 {
				b.errorf(c.Pos, "header needs a header name, a /regex/ and virtual-mta=NAME")
				continue
			}
			h, err := headerName(strings.TrimSuffix(args[0].Text, ":"))
			if err != nil {
				b.errorf(args[0].Pos, "header: %v", err)
				continue
			}
			r.Header, args = h, args[1:]
		}
		if len(args) != 2 {
			b.errorf(c.Pos, "%s takes a /regex/ and virtual-mta=NAME", c.Name)
			continue
		}
		re, err := parseRegex(args[0].Text)
		if err != nil {
			b.errorf(args[0].Pos, "%s: %v", c.Name, err)
			continue
		}
		r.Regexp = re
		k, v, _ := strings.Cut(args[1].Text, "=")
		if !strings.EqualFold(k, "virtual-mta") || v == "" {
			b.errorf(args[1].Pos, "%s: expected virtual-mta=NAME, found %q", c.Name, args[1].Text)
			continue
		}
		r.VirtualMTA = v
		pl.Rules = append(pl.Rules, r)
	}
	b.patterns[key] = pl
	b.cfg.PatternLists = append(b.cfg.PatternLists, pl)
}

var replyActionNames = []string{"mode=backoff", "mode=normal", "backoff", "backoff-to-normal-after=",
	"defer-queue", "bounce-rcpt", "skip-mx", "suspend", "disable-source-ip", "reroute=", "bounce-queue",
	"for=", "reenable-after=", "threshold="}

func (b *builder) smtpPatternListBlock(n *node) {
	name, ok := b.blockName(n, "name")
	if !ok || !b.validName(n, name) {
		return
	}
	key := strings.ToLower(name)
	if prev, dup := b.replies[key]; dup {
		b.errorf(n.Pos, "<smtp-pattern-list %s> is already defined at %s", name, shortPos(prev.Pos, n.Pos))
		return
	}
	sp := &SMTPPatternList{Pos: n.Pos, Name: name}
	for _, c := range n.Children {
		if !b.dispatch(c, scopeSMTPPatternList) {
			continue
		}
		if len(c.Args) < 2 {
			b.errorf(c.Pos, "reply takes a /regex/ and actions: reply /421 .*\\[TS01\\]/ mode=backoff")
			continue
		}
		re, err := parseRegex(c.Args[0].Text)
		if err != nil {
			b.errorf(c.Args[0].Pos, "reply: %v", err)
			continue
		}
		rule := ReplyRule{Pos: c.Pos, Regexp: re}
		if b.replyActions(&rule.Actions, c) {
			sp.Rules = append(sp.Rules, rule)
		}
	}
	b.replies[key] = sp
	b.cfg.SMTPPatternLists = append(b.cfg.SMTPPatternLists, sp)
}

// replyActions reads the actions of a reply rule and refuses contradictory
// combinations.
func (b *builder) replyActions(act *ReplyActions, c *node) bool {
	act.For = def(DefaultReplyFor)
	// seen maps what an action sets to the spelling that set it: backoff
	// and mode= both set the mode, for= and reenable-after= the duration.
	seen := map[string]string{}
	ok := true
	for _, a := range c.Args[1:] {
		for _, word := range strings.Split(a.Text, ",") {
			word = strings.TrimSpace(word)
			if word == "" {
				continue
			}
			k, v, hasVal := strings.Cut(word, "=")
			k = strings.ToLower(k)
			if !b.replyAction(act, c, a, word, k, v, hasVal, seen) {
				ok = false
			}
		}
	}
	bad := func(msg string) {
		b.errorf(c.Pos, "reply: %s", msg)
		ok = false
	}
	var stops []string
	for _, x := range []struct {
		on   bool
		name string
	}{{act.Suspend, "suspend"}, {act.BounceQueue, "bounce-queue"}, {act.Reroute != "", "reroute="}, {act.DeferQueue, "defer-queue"}} {
		if x.on {
			stops = append(stops, x.name)
		}
	}
	if len(stops) > 1 {
		bad(stops[0] + " and " + stops[1] + " exclude each other: a rule takes at most one of suspend, bounce-queue, reroute= and defer-queue")
	}
	if act.BounceRcpt && act.SkipMX {
		bad("bounce-rcpt and skip-mx contradict each other (one fails the recipient, the other keeps it for the next MX)")
	}
	if act.SkipMX {
		switch {
		case act.DeferQueue:
			bad("defer-queue and skip-mx contradict each other (one stops the queue, the other tries the next MX now)")
		case act.Suspend:
			bad("suspend and skip-mx contradict each other (one stops the queue, the other tries the next MX now)")
		case act.Reroute != "":
			bad("reroute= and skip-mx contradict each other (one moves the queue's mail to another virtual MTA, the other tries the next MX now)")
		case act.BounceQueue:
			bad("bounce-queue and skip-mx contradict each other (one bounces the queue's mail, the other keeps it for the next MX)")
		}
	}
	if act.BounceQueue && act.BounceRcpt {
		bad("bounce-queue and bounce-rcpt overlap (bounce-queue bounces this recipient with the rest of the queue); give one")
	}
	if act.BackoffToNormalAfter.Set && act.Mode != ModeBackoff {
		bad("backoff-to-normal-after= only makes sense with mode=backoff")
	}
	stateful := "an action that lasts: backoff, suspend, disable-source-ip, reroute= or bounce-queue"
	if act.For.Set {
		switch {
		case !act.Stateful():
			bad(seen["for"] + "= needs " + stateful)
		case act.BackoffToNormalAfter.Set:
			bad(seen["for"] + "= and backoff-to-normal-after= both say how long the backoff lasts; give one")
		case act.Mode == ModeBackoff:
			// for= is the duration of every lasting action of the rule,
			// the backoff's too.
			act.BackoffToNormalAfter = act.For
		}
	}
	if act.Threshold.Set && !act.Stateful() {
		bad("threshold= needs " + stateful)
	}
	return ok
}

// replyAction reads one action word of a reply rule (k the lower-cased name,
// v what follows '=', as written) into act, and reports an action given
// twice or unknown, or a bad value.
func (b *builder) replyAction(act *ReplyActions, c *node, a arg, word, k, v string, hasVal bool, seen map[string]string) bool {
	what := k
	switch k {
	case "backoff":
		what = "mode"
	case "reenable-after":
		what = "for"
	}
	if prev, dup := seen[what]; dup {
		switch {
		case prev == k:
			b.errorf(a.Pos, "reply: %s is given twice", k)
		case what == "mode":
			b.errorf(a.Pos, "reply: the mode is given twice (backoff is mode=backoff)")
		default:
			b.errorf(a.Pos, "reply: %s= and %s= are one setting (reenable-after= is PowerMTA's for=); give it once", prev, k)
		}
		return false
	}
	seen[what] = k
	bad := func(err error) bool {
		b.errorf(a.Pos, "reply: %s: %v", k, err)
		return false
	}
	switch {
	case k == "mode" && strings.EqualFold(v, "backoff"), k == "backoff" && !hasVal:
		act.Mode = ModeBackoff
	case k == "mode" && strings.EqualFold(v, "normal"):
		act.Mode = ModeNormal
	case k == "backoff-to-normal-after" && hasVal:
		d, err := durationOrNever(v)
		if err != nil {
			return bad(err)
		}
		act.BackoffToNormalAfter = Setting[time.Duration]{Value: d, Pos: c.Pos, Set: true}
	case k == "defer-queue" && !hasVal:
		act.DeferQueue = true
	case k == "bounce-rcpt" && !hasVal:
		act.BounceRcpt = true
	case k == "skip-mx" && !hasVal:
		act.SkipMX = true
	case k == "suspend" && !hasVal:
		act.Suspend = true
	case k == "disable-source-ip" && !hasVal:
		act.DisableSourceIP = true
	case k == "bounce-queue" && !hasVal:
		act.BounceQueue = true
	case k == "reroute" && hasVal:
		name, err := vmtaRef(v)
		if err != nil {
			return bad(err)
		}
		act.Reroute = name
		// Whether it exists is known once the whole file is read.
		b.reroutes = append(b.reroutes, nameRef{Pos: a.Pos, Name: name})
	case (k == "for" || k == "reenable-after") && hasVal:
		d, err := positiveDuration(v)
		if err != nil {
			return bad(err)
		}
		act.For = Setting[time.Duration]{Value: d, Pos: c.Pos, Set: true}
	case k == "threshold" && hasVal:
		r, err := parseRate(v)
		if err != nil || r.Unlimited() {
			return bad(fmt.Errorf("%q is not a count of matches per interval (write N/DURATION, as in threshold=5/1m)", v))
		}
		act.Threshold = Setting[Rate]{Value: r, Pos: c.Pos, Set: true}
	default:
		try := word
		if hasVal {
			try = k + "="
		}
		b.errorf(a.Pos, "reply: unknown action %q%s", word, didYouMean(try, replyActionNames, "%q"))
		return false
	}
	return true
}

// nameRef is a VMTA or pool name written at Pos, to check once every block
// is read.
type nameRef struct {
	Pos  Position
	Name string
}

// rollupName is the shape of a rollup name: a lower-case host-name-like
// label, letters, digits, dots and dashes.
var rollupName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)

// mxRollupListBlock reads an <mx-rollup-list>: `mx HOST-PATTERN NAME`
// lines. The block may appear several times; the entries of all of them
// form one list in file order. One host pattern has one rollup name.
func (b *builder) mxRollupListBlock(n *node) {
	if len(n.Args) > 0 {
		b.errorf(n.Args[0].Pos, "<mx-rollup-list> takes no argument")
	}
	for _, c := range n.Children {
		if !b.dispatch(c, scopeMXRollupList) {
			continue
		}
		if len(c.Args) != 2 {
			b.errorf(c.Pos, "mx takes an MX host pattern and a rollup name: mx *.google.com gmail.rollup")
			continue
		}
		pa, na := c.Args[0], c.Args[1]
		p, err := parseDomainPattern(pa.Text)
		if err != nil {
			b.errorf(pa.Pos, "mx: %q is not an MX host pattern (use mx.example.com, *.example.com or [*.]example.com)", pa.Text)
			continue
		}
		if p.Kind == PatternAny {
			b.errorf(pa.Pos, "mx: * would roll every domain into one queue; name the provider's MX hosts, as in *.google.com")
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(na.Text, "."))
		if !rollupName.MatchString(name) || !validHostname(name) {
			b.errorf(na.Pos, "mx: %q is not a rollup name (a host-name-like label of letters, digits, dots and dashes, as in gmail.rollup)", na.Text)
			continue
		}
		if prev, dup := b.rollups[p]; dup {
			if prev.Name != name {
				b.errorf(c.Pos, "mx %s: the pattern already rolls up to %s at %s; one MX host pattern has one rollup name", p, prev.Name, shortPos(prev.Pos, c.Pos))
			}
			continue // the same entry again adds nothing
		}
		r := &MXRollup{Pos: c.Pos, Pattern: p, Name: name}
		b.rollups[p] = r
		b.cfg.MXRollups = append(b.cfg.MXRollups, r)
	}
}

func (b *builder) acctFileBlock(n *node) {
	path, ok := b.blockName(n, "file path")
	if !ok {
		return
	}
	path = filepath.Clean(relPath(n.Pos, path))
	// Two spellings of one file are one file: two writers on it would
	// break each other's rotation.
	key := path
	if abs, err := filepath.Abs(path); err == nil {
		key = abs
	}
	if prev, dup := b.acct[key]; dup {
		b.errorf(n.Pos, "<acct-file %s> is already defined at %s", path, shortPos(prev.Pos, n.Pos))
		return
	}
	af := &AcctFile{Pos: n.Pos, Path: path,
		Records:      def(RecordTypes{Delivered: true, Bounced: true}),
		MaxSize:      def(Size(250 << 20)),
		MoveInterval: def(24 * time.Hour),
	}
	for _, c := range n.Children {
		if !b.dispatch(c, scopeAcctFile) {
			continue
		}
		switch c.Name {
		case "records":
			setList(b, &af.Records, c, parseRecords)
		case "max-size":
			setOne(b, &af.MaxSize, c, parseSize)
		case "move-interval":
			setOne(b, &af.MoveInterval, c, durationOrNever)
		}
	}
	b.acct[key] = af
	b.cfg.AcctFiles = append(b.cfg.AcctFiles, af)
}

func parseRecords(s string) (RecordTypes, error) {
	var r RecordTypes
	for _, p := range strings.Split(s, ",") {
		switch strings.ToLower(strings.TrimSpace(p)) {
		case "d", "delivery", "delivered":
			r.Delivered = true
		case "b", "bounce", "bounced":
			r.Bounced = true
		case "t", "transient":
			r.Transient = true
		case "r", "receipt", "received":
			r.Received = true
		default:
			return r, fmt.Errorf("unknown record type %q (d, b, t or r)", strings.TrimSpace(p))
		}
	}
	return r, nil
}

func (b *builder) spoolBlock(n *node) {
	path, ok := b.blockName(n, "directory")
	if !ok {
		return
	}
	if b.already(&b.cfg.Spool.Dir, b.cfg.Spool.Dir.Pos, n) {
		return
	}
	b.cfg.Spool.Dir = Setting[string]{Value: relPath(n.Pos, path), Pos: n.Pos, Set: true}
	for _, c := range n.Children {
		if b.dispatch(c, scopeSpool) && c.Name == "min-free-space" {
			setOne(b, &b.cfg.Spool.MinFreeSpace, c, parseSize)
		}
	}
}

// hasChild reports whether block n has a directive with one of the names.
func hasChild(n *node, names ...string) bool {
	for _, c := range n.Children {
		for _, name := range names {
			if !c.Block && c.Name == name {
				return true
			}
		}
	}
	return false
}
