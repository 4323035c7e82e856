package config

import (
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// dirRow is one row of the directive reference: a directive in one scope it
// is allowed in.
//
// The harness (TestDirectives) builds a small valid configuration, the
// scaffold, with one block of every kind, and checks for each row that:
//
//   - the directive with the good value, placed in scope, parses without
//     error or warning (unless warn says which warning is expected) and get
//     reads want back from the Config;
//   - without the directive, get reads def (a Setting must then be unset);
//   - the directive with the bad value is refused by an error on its own
//     line whose message contains badErr;
//   - the directive with the good value placed in scope wrong is refused by
//     an error on its line saying it is not allowed there.
//
// Rows of the <domain> scope run three times: in a global <domain>, in a
// <domain> inside a <virtual-mta> and inside a <virtual-mta-pool>.
type dirRow struct {
	name  string
	scope scope
	good  string
	// get reads the directive's value from the parsed config. When it
	// returns a Setting, the harness also checks Set and Pos.
	get    func(x target) any
	want   any
	def    any
	bad    string
	badErr string
	wrong  scope
	// extra are top-level lines the good value needs (a referenced block, a
	// certificate); sibling are lines beside the directive in its block.
	extra, sibling string
	// warn is a warning the good value is expected to produce.
	warn string
	// defErr, when set, is the error expected when the directive is absent
	// (smtp-listener is mandatory); def is then not checked.
	defErr string
	// setIn, for include, is the fixture file whose first line sets the
	// value get reads: the Setting's position must name that file.
	setIn string
}

// target is what the accessors of dirRow read from: the config and the
// scaffold block the row's directive was placed in.
type target struct {
	cfg  *Config
	src  *SourceSettings
	user *User
	vmta *VirtualMTA
	pool *Pool
	dom  *DomainSettings
	pl   *PatternList
	spl  *SMTPPatternList
	acct *AcctFile
}

// The scaffold's fixed names.
const (
	scaffoldSource = "192.0.2.0/24"
	scaffoldDomain = "example.com"
)

// scaffold returns a configuration with line placed in scope sc (and, for
// scopeDomain, in a <domain> at the top level or inside the VMTA or pool
// named by domIn), and the number of the line it is on. The file has the
// blocks <source 192.0.2.0/24>, <smtp-user u>, <virtual-mta v>,
// <virtual-mta w>, <virtual-mta-pool p> (member v), <domain example.com>,
// <pattern-list pl>, <smtp-pattern-list spl>, <acct-file acct.csv>,
// <mx-rollup-list> and <spool q>, all empty but for what they need to be
// valid.
func scaffold(r *dirRow, sc, domIn scope, line, dir string) (string, int) {
	var lines []string
	at := 0
	add := func(ls ...string) { lines = append(lines, ls...) }
	put := func(here bool) {
		if here && line != "" {
			add(line)
			at = len(lines)
			if r.sibling != "" {
				add(strings.Split(subst(r.sibling, dir), "\n")...)
			}
		}
	}
	domainBlock := func(in scope) {
		if sc == scopeDomain && domIn == in {
			add("<domain " + scaffoldDomain + ">")
			put(true)
			add("</domain>")
		}
	}
	if r.name != "smtp-listener" {
		add("smtp-listener 127.0.0.1:2525")
	}
	if r.extra != "" {
		add(strings.Split(subst(r.extra, dir), "\n")...)
	}
	put(sc == scopeTop)
	add("<source " + scaffoldSource + ">")
	put(sc == scopeSource)
	add("</source>")
	add("<smtp-user u>")
	// A user needs exactly one of password and password-hash: the scaffold
	// gives it a hash unless the row's own line provides one of them.
	authLine := sc == scopeUser && line != "" && (r.name == "password" || r.name == "password-hash")
	if !authLine {
		if r.name == "password-hash" {
			add("password plain") // so that the hash itself is absent
		} else {
			add("password-hash " + testHash)
		}
	}
	put(sc == scopeUser)
	add("</smtp-user>")
	add("<virtual-mta v>")
	put(sc == scopeVMTA)
	domainBlock(scopeVMTA)
	add("</virtual-mta>")
	add("<virtual-mta w>", "</virtual-mta>")
	add("<virtual-mta-pool p>", "virtual-mta v")
	put(sc == scopePool)
	domainBlock(scopePool)
	add("</virtual-mta-pool>")
	if sc == scopeDomain && domIn == scopeTop {
		domainBlock(scopeTop)
	} else {
		add("<domain "+scaffoldDomain+">", "</domain>")
	}
	add("<pattern-list pl>")
	put(sc == scopePatternList)
	add("</pattern-list>")
	add("<smtp-pattern-list spl>")
	put(sc == scopeSMTPPatternList)
	add("</smtp-pattern-list>")
	add("<acct-file acct.csv>")
	put(sc == scopeAcctFile)
	add("</acct-file>")
	add("<mx-rollup-list>")
	put(sc == scopeMXRollupList)
	add("</mx-rollup-list>")
	if sc == scopeListener && line != "" {
		add("<smtp-listener 127.0.0.1:2526>")
		put(true)
		add("</smtp-listener>")
	}
	if r.name != "spool" {
		add("<spool q>")
		put(sc == scopeSpool)
		add("</spool>")
	}
	return strings.Join(lines, "\n") + "\n", at
}

// subst replaces {dir} by the fixture directory.
func subst(s, dir string) string { return strings.ReplaceAll(s, "{dir}", dir) }

// locate finds the scaffold's blocks in cfg; domIn says which <domain
// example.com> is the row's.
func locate(t *testing.T, cfg *Config, domIn scope) target {
	t.Helper()
	x := target{cfg: cfg}
	want := netip.MustParsePrefix(scaffoldSource)
	for _, s := range cfg.Sources {
		if s.Prefix == want {
			x.src = &s.Settings
		}
	}
	for _, u := range cfg.Users {
		if u.Name == "u" {
			x.user = u
		}
	}
	for _, v := range cfg.VMTAs {
		if v.Name == "v" {
			x.vmta = v
		}
	}
	for _, p := range cfg.Pools {
		if p.Name == "p" {
			x.pool = p
		}
	}
	domains := cfg.Domains
	switch domIn {
	case scopeVMTA:
		domains = x.vmta.Domains
	case scopePool:
		domains = x.pool.Domains
	}
	for _, d := range domains {
		if d.Pattern.String() == scaffoldDomain {
			x.dom = &d.Settings
		}
	}
	if domIn != scopeTop && x.dom == nil {
		// The absent case: no block in the VMTA or pool; read the
		// global one's defaults.
		for _, d := range cfg.Domains {
			if d.Pattern.String() == scaffoldDomain {
				x.dom = &d.Settings
			}
		}
	}
	for _, p := range cfg.PatternLists {
		if p.Name == "pl" {
			x.pl = p
		}
	}
	for _, p := range cfg.SMTPPatternLists {
		if p.Name == "spl" {
			x.spl = p
		}
	}
	if len(cfg.AcctFiles) > 0 {
		x.acct = cfg.AcctFiles[0]
	}
	if x.src == nil || x.user == nil || x.vmta == nil || x.pool == nil || x.dom == nil || x.pl == nil || x.spl == nil || x.acct == nil {
		t.Fatalf("scaffold block missing from the config: %+v", x)
	}
	return x
}

// settingValue unwraps a Setting[T]: it returns the value, and whether v was
// a Setting together with its Set and Pos.
func settingValue(v any) (val any, isSetting, set bool, pos Position) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Struct || !strings.HasPrefix(rv.Type().Name(), "Setting[") {
		return v, false, false, Position{}
	}
	return rv.FieldByName("Value").Interface(), true, rv.FieldByName("Set").Bool(), rv.FieldByName("Pos").Interface().(Position)
}

// Accessors for values that are not a single Setting.

// inboundSetting is an inbound limit as written (its Set and Pos) with
// the value in force, default applied (Config.Inbound), as its Value.
func inboundSetting[T any](s Setting[T], effective T) Setting[T] {
	s.Value = effective
	return s
}

func listenerStrings(c *Config) []string {
	var out []string
	for _, l := range c.Listeners {
		out = append(out, fmt.Sprintf("%s %s source=%s tls=%v", l.Network, l.Addr, l.Source, l.TLS))
	}
	return out
}

func settingStrings(ss []Setting[string]) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Value)
	}
	return out
}

func accessStrings(c *Config) []string {
	var out []string
	for _, a := range c.HTTPAccess {
		out = append(out, a.Prefix.String()+" "+a.Level.String())
	}
	return out
}

func sourceHostStrings(v *VirtualMTA) []string {
	var out []string
	for _, h := range v.SourceHosts {
		out = append(out, h.IP.String()+" "+h.HostName)
	}
	return out
}

func memberNames(p *Pool) []string {
	var out []string
	for _, m := range p.Members {
		out = append(out, m.Name)
	}
	return out
}

func ruleStrings(p *PatternList) []string {
	var out []string
	for _, r := range p.Rules {
		out = append(out, fmt.Sprintf("%d %s %s %s", r.Field, r.Header, r.Regexp, r.VirtualMTA))
	}
	return out
}

func replyStrings(p *SMTPPatternList) []string {
	var out []string
	for _, r := range p.Rules {
		a := r.Actions
		out = append(out, fmt.Sprintf("%s mode=%d after=%s defer=%v bounce=%v skip=%v",
			r.Regexp, a.Mode, FormatDuration(a.BackoffToNormalAfter.Value), a.DeferQueue, a.BounceRcpt, a.SkipMX))
	}
	return out
}

// sourceIPStrings writes each entry of a source-ip-* setting as "CIDR
// VALUE", keeping the Setting's Set and Pos for the harness to check.
func sourceIPStrings[L ~[]E, E any](s Setting[L]) Setting[[]string] {
	var out []string
	for _, e := range s.Value {
		switch e := any(e).(type) {
		case SourceIPLimit:
			out = append(out, fmt.Sprintf("%s %d", e.Prefix, e.N))
		case SourceIPRate:
			out = append(out, e.Prefix.String()+" "+e.Rate.String())
		}
	}
	return Setting[[]string]{Value: out, Pos: s.Pos, Set: s.Set}
}

func rollupStrings(c *Config) []string {
	var out []string
	for _, r := range c.MXRollups {
		out = append(out, r.Pattern.String()+" "+r.Name)
	}
	return out
}

func domainKeyStrings(s *DomainSettings) []string { return keyStrings(s.DomainKeys) }

func keyStrings(keys Setting[[]DomainKey]) []string {
	var out []string
	for _, k := range keys.Value {
		out = append(out, fmt.Sprintf("%s %s %s %T", k.Selector, k.Domain, k.KeyFile[strings.LastIndexByte(k.KeyFile, '/')+1:], k.Signer))
	}
	return out
}

type certState struct {
	File   string
	Loaded bool
}

// directiveTable returns the table; dir is the fixture directory, for the
// values that name files.
func directiveTable(dir string) []dirRow {
	rate := func(n int, d time.Duration) Rate { return Rate{Count: n, Interval: d} }
	return []dirRow{
		// Top level.
		{name: "smtp-listener", scope: scopeTop, good: "0/0:587",
			get:  func(x target) any { return listenerStrings(x.cfg) },
			want: []string{"tcp4 0.0.0.0:587 source= tls=false"}, defErr: "no smtp-listener",
			bad: "127.0.0.1", badErr: "has no port", wrong: scopeSource},
		{name: "host-name", scope: scopeTop, good: "mta.example.com",
			get:  func(x target) any { return x.cfg.HostName },
			want: "mta.example.com", def: testHostname,
			bad: "mta..example.com", badErr: "is not a host name", wrong: scopeSource},
		{name: "postmaster", scope: scopeTop, good: "pm@example.com",
			get:  func(x target) any { return x.cfg.Postmaster },
			want: "pm@example.com", def: "postmaster@" + testHostname,
			bad: "nobody", badErr: `"nobody" is not an email address`, wrong: scopeSource},
		{name: "spool", scope: scopeTop, good: "/var/spool/tern",
			get:  func(x target) any { return x.cfg.Spool.Dir },
			want: "/var/spool/tern", def: dir + "/spool",
			bad: "a b", badErr: "takes one value", wrong: scopeSource},
		{name: "smtp-server-tls-certificate", scope: scopeTop, good: "{dir}/cert.pem {dir}/key.pem",
			get: func(x target) any {
				return certState{x.cfg.TLSCertificateFile.Value, x.cfg.TLSCertificate != nil}
			},
			want: certState{dir + "/cert.pem", true}, def: certState{},
			bad: "{dir}/missing.pem", badErr: "no such file or directory", wrong: scopeDomain},
		{name: "name-server", scope: scopeTop, good: "192.0.2.53",
			get:  func(x target) any { return settingStrings(x.cfg.NameServers) },
			want: []string{"192.0.2.53:53"}, def: []string(nil),
			bad: "dns.example", badErr: "is not IP or IP:PORT", wrong: scopeVMTA},
		{name: "total-max-smtp-out", scope: scopeTop, good: "3000",
			get:  func(x target) any { return x.cfg.TotalMaxSMTPOut },
			want: 3000, def: 1200,
			bad: "0", badErr: "0 is out of range (1 to 1000000)", wrong: scopeSource},
		{name: "domain-key", scope: scopeTop, good: "s4,example.net,{dir}/rsa.pem",
			get:  func(x target) any { return keyStrings(x.cfg.DomainKeys) },
			want: []string{"s4 example.net rsa.pem *rsa.PrivateKey"}, def: []string(nil),
			bad: "s4,not a domain,{dir}/rsa.pem", badErr: "is not a domain", wrong: scopeSource},
		{name: "smtp-server-tls-allow-tlsv1", scope: scopeTop, good: "yes",
			get:  func(x target) any { return x.cfg.TLSAllowV10 },
			want: true, def: false,
			bad: "on", badErr: "is not yes or no", wrong: scopeSource},
		{name: "smtp-server-tls-allow-tlsv1.1", scope: scopeTop, good: "yes",
			get:  func(x target) any { return x.cfg.TLSAllowV11 },
			want: true, def: false,
			bad: "on", badErr: "is not yes or no", wrong: scopeDomain},
		{name: "smtp-server-tls-allow-tlsv1.2", scope: scopeTop, good: "no",
			get:  func(x target) any { return x.cfg.TLSAllowV12 },
			want: false, def: true,
			bad: "on", badErr: "is not yes or no", wrong: scopeVMTA},
		{name: "smtp-server-tls-allow-tlsv1.3", scope: scopeTop, good: "no",
			get:  func(x target) any { return x.cfg.TLSAllowV13 },
			want: false, def: true,
			bad: "on", badErr: "is not yes or no", wrong: scopeUser},
		{name: "total-max-smtp-in", scope: scopeTop, good: "100",
			get:  func(x target) any { return x.cfg.TotalMaxSMTPIn },
			want: 100, def: 500,
			bad: "many", badErr: `"many" is not a whole number`, wrong: scopeVMTA},
		{name: "http-mgmt-port", scope: scopeTop, good: "127.0.0.1:9090",
			get:  func(x target) any { return x.cfg.HTTPMgmtAddr },
			want: "127.0.0.1:9090", def: "127.0.0.1:8080",
			bad: "99999", badErr: "must be 1 to 65535", wrong: scopeDomain},
		{name: "http-access", scope: scopeTop, good: "10.0.0.0/8 monitor",
			get:  func(x target) any { return accessStrings(x.cfg) },
			want: []string{"10.0.0.0/8 monitor"}, def: []string(nil),
			bad: "10.0.0.0/8 root", badErr: `unknown level "root"`, wrong: scopeSource},
		{name: "http-api-key", scope: scopeTop, good: "s3cret-Token",
			get:  func(x target) any { return x.cfg.HTTPAPIKey },
			want: "s3cret-Token", def: "",
			bad: `""`, badErr: "empty value", wrong: scopeSource},
		{name: "log-file", scope: scopeTop, good: "/var/log/tern.log",
			get:  func(x target) any { return x.cfg.LogFile },
			want: "/var/log/tern.log", def: "",
			bad: "a b", badErr: "takes one value", wrong: scopeSource},
		{name: "log-level", scope: scopeTop, good: "debug",
			get:  func(x target) any { return x.cfg.LogLevel },
			want: slog.LevelDebug, def: slog.LevelInfo,
			bad: "verbose", badErr: `unknown log level "verbose"`, wrong: scopeVMTA},
		{name: "domain-macro", scope: scopeTop, good: "tld com, net,org",
			get:  func(x target) any { return x.cfg.Macros["tld"] },
			want: []string{"com", "net", "org"}, def: []string(nil),
			bad: "bad-name com", badErr: "not a valid macro name", wrong: scopeVMTA},
		{name: "mx-connection-limit", scope: scopeTop, good: "4",
			get:  func(x target) any { return x.cfg.MXConnectionLimit },
			want: 4, def: 0,
			bad: "-1", badErr: `"-1" is not a whole number or unlimited`, wrong: scopeDomain},
		{name: "max-smtp-in-per-ip", scope: scopeTop, good: "5",
			get:  func(x target) any { return inboundSetting(x.cfg.MaxSMTPInPerIP, x.cfg.Inbound().PerIP) },
			want: 5, def: DefaultMaxSMTPInPerIP,
			bad: "few", badErr: `"few" is not a whole number or unlimited`, wrong: scopeSource},
		// The reserve's default is a tenth of total-max-smtp-in's (500).
		{name: "smtp-in-reserved", scope: scopeTop, good: "0",
			get:  func(x target) any { return inboundSetting(x.cfg.SMTPInReserved, x.cfg.Inbound().Reserved) },
			want: 0, def: 50,
			bad: "-1", badErr: "-1 is out of range (0 to 1000000)", wrong: scopeSource},
		{name: "max-inbound-buffer", scope: scopeTop, good: "1G",
			get:  func(x target) any { return inboundSetting(x.cfg.MaxInboundBuffer, x.cfg.Inbound().Buffer) },
			want: Size(1 << 30), def: DefaultMaxInboundBuffer,
			bad: "1K", badErr: "1K is less than the minimum, 64K", wrong: scopeDomain},
		{name: "include", scope: scopeTop, good: "{dir}/inc-top.conf", setIn: "inc-top.conf",
			get:  func(x target) any { return x.cfg.TotalMaxSMTPIn },
			want: 42, def: 500,
			bad: "{dir}/missing.conf", badErr: "missing.conf does not exist", wrong: scopeUser},

		// <source>
		{name: "smtp-service", scope: scopeSource, good: "no",
			get:  func(x target) any { return x.src.SMTPService },
			want: false, def: true,
			bad: "maybe", badErr: `"maybe" is not yes or no`, wrong: scopeTop},
		{name: "always-allow-relaying", scope: scopeSource, good: "yes",
			get:  func(x target) any { return x.src.AlwaysAllowRelaying },
			want: true, def: false,
			bad: "yess", badErr: `(did you mean "yes"?)`, wrong: scopeDomain},
		{name: "require-auth", scope: scopeSource, good: "true",
			get:  func(x target) any { return x.src.RequireAuth },
			want: true, def: false,
			bad: "1", badErr: "is not yes or no", wrong: scopeVMTA},
		{name: "require-starttls", scope: scopeSource, good: "yes",
			extra: "smtp-server-tls-certificate {dir}/both.pem",
			get:   func(x target) any { return x.src.RequireStartTLS },
			want:  true, def: false,
			bad: "sometimes", badErr: "is not yes or no", wrong: scopeVMTA},
		{name: "allow-unencrypted-plain-auth", scope: scopeSource, good: "yes",
			get:  func(x target) any { return x.src.AllowUnencryptedPlainAuth },
			want: true, def: false,
			bad: "on", badErr: "is not yes or no", wrong: scopeDomain},
		{name: "smtp-max-auth-failure-rate", scope: scopeSource, good: "10/h",
			get:  func(x target) any { return x.src.SMTPMaxAuthFailureRate },
			want: rate(10, time.Hour), def: rate(3, 5*time.Minute),
			bad: "10", badErr: `"10" is not a rate`, wrong: scopeDomain},
		{name: "process-x-virtual-mta", scope: scopeSource, good: "yes",
			get:  func(x target) any { return x.src.ProcessXVirtualMTA },
			want: true, def: false,
			bad: "ja", badErr: "is not yes or no", wrong: scopeVMTA},
		{name: "default-virtual-mta", scope: scopeSource, good: "p",
			get:  func(x target) any { return x.src.DefaultVirtualMTA },
			want: "p", def: DefaultVMTA,
			bad: "nosuch", badErr: `no virtual MTA or pool named "nosuch"`, wrong: scopeDomain},
		{name: "process-x-job", scope: scopeSource, good: "yes",
			get:  func(x target) any { return x.src.ProcessXJob },
			want: true, def: false,
			bad: "y", badErr: "is not yes or no", wrong: scopeTop},
		{name: "max-message-size", scope: scopeSource, good: "25M",
			get:  func(x target) any { return x.src.MaxMessageSize },
			want: Size(25 << 20), def: Size(50 << 20),
			bad: "25X", badErr: `"25X" is not a size`, wrong: scopeDomain},
		{name: "max-rcpt-per-message", scope: scopeSource, good: "500",
			get:  func(x target) any { return x.src.MaxRcptPerMessage },
			want: 500, def: 1000,
			bad: "1000001", badErr: "out of range", wrong: scopeVMTA},
		{name: "add-received-header", scope: scopeSource, good: "no",
			get:  func(x target) any { return x.src.AddReceivedHeader },
			want: false, def: true,
			bad: "nope", badErr: "is not yes or no", wrong: scopeDomain},
		{name: "hide-message-source", scope: scopeSource, good: "yes",
			get:  func(x target) any { return x.src.HideMessageSource },
			want: true, def: false,
			bad: "2", badErr: "is not yes or no", wrong: scopeDomain},
		{name: "remove-header", scope: scopeSource, good: "X-Originating-IP",
			get:  func(x target) any { return x.src.RemoveHeaders },
			want: []string{"X-Originating-IP"}, def: []string(nil),
			bad: "Bad:Header", badErr: `"Bad:Header" is not a header name`, wrong: scopeVMTA},
		{name: "pattern-list", scope: scopeSource, good: "pl",
			get:  func(x target) any { return x.src.PatternList },
			want: "pl", def: "",
			bad: "nosuch", badErr: "no <pattern-list nosuch> block", wrong: scopeDomain},
		{name: "log-connections", scope: scopeSource, good: "yes",
			get:  func(x target) any { return x.src.LogConnections },
			want: true, def: false,
			bad: "all", badErr: "is not yes or no", wrong: scopeVMTA},
		{name: "log-commands", scope: scopeSource, good: "true",
			get:  func(x target) any { return x.src.LogCommands },
			want: true, def: false,
			bad: "some", badErr: "is not yes or no", wrong: scopeVMTA},
		{name: "include", scope: scopeSource, good: "{dir}/inc-source.conf", setIn: "inc-source.conf",
			get:  func(x target) any { return x.src.MaxRcptPerMessage },
			want: 7, def: 1000,
			bad: "{dir}/missing.conf", badErr: "does not exist", wrong: scopePool},

		// <smtp-user>
		{name: "password", scope: scopeUser, good: "secret",
			get:  func(x target) any { return x.user.Password },
			want: "secret", def: "", warn: "stored in plaintext",
			bad: `""`, badErr: "password: empty value", wrong: scopeSource},
		{name: "password-hash", scope: scopeUser, good: testHash,
			get:  func(x target) any { return x.user.PasswordHash },
			want: testHash, def: "",
			bad: "$2a$xyz", badErr: "not a bcrypt hash", wrong: scopeTop},
		{name: "authentication-method", scope: scopeUser, good: "password",
			get:  func(x target) any { return nil },
			want: nil, def: nil,
			bad: "system", badErr: "Tern checks the password or password-hash", wrong: scopeTop},
		{name: "source", scope: scopeUser, good: "bulk",
			extra: "<source bulk>\n</source>",
			get:   func(x target) any { return x.user.Source },
			want:  "bulk", def: AuthSource,
			bad: "nosuch", badErr: "no <source nosuch> block", wrong: scopeVMTA},

		// <virtual-mta>
		{name: "smtp-source-host", scope: scopeVMTA, good: "192.0.2.10 mta1.example.com",
			get:  func(x target) any { return sourceHostStrings(x.vmta) },
			want: []string{"192.0.2.10 mta1.example.com"}, def: []string(nil),
			bad: "192.0.2.300 mta1.example.com", badErr: `"192.0.2.300" is not an IP address`, wrong: scopeDomain},
		{name: "host-name", scope: scopeVMTA, good: "v.example.com",
			get:  func(x target) any { return x.vmta.HostName },
			want: "v.example.com", def: "",
			bad: "v..example.com", badErr: "is not a host name", wrong: scopeSource},
		{name: "max-smtp-out", scope: scopeVMTA, good: "50",
			get:  func(x target) any { return x.vmta.MaxSMTPOut },
			want: 50, def: 0,
			bad: "-1", badErr: "out of range", wrong: scopeSource},
		{name: "max-smtp-msg-rate", scope: scopeVMTA, good: "1000/h",
			get:  func(x target) any { return x.vmta.MaxSMTPMsgRate },
			want: rate(1000, time.Hour), def: Rate{},
			bad: "1000/y", badErr: `unknown unit "y"`, wrong: scopeSource},
		{name: "domain-key", scope: scopeVMTA, good: "s3,*,{dir}/rsa.pem",
			get:  func(x target) any { return keyStrings(x.vmta.DomainKeys) },
			want: []string{"s3 * rsa.pem *rsa.PrivateKey"}, def: []string(nil),
			bad: "s3,*,", badErr: "domain-key takes SELECTOR,DOMAIN,KEYFILE", wrong: scopeUser},
		{name: "include", scope: scopeVMTA, good: "{dir}/inc-vmta.conf", setIn: "inc-vmta.conf",
			get:  func(x target) any { return x.vmta.MaxSMTPOut },
			want: 9, def: 0,
			bad: "{dir}/missing.conf", badErr: "does not exist", wrong: scopeAcctFile},

		// <virtual-mta-pool>
		{name: "virtual-mta", scope: scopePool, good: "w",
			get:  func(x target) any { return memberNames(x.pool) },
			want: []string{"v", "w"}, def: []string{"v"},
			bad: "nosuch", badErr: "no <virtual-mta nosuch> block", wrong: scopeDomain},
		{name: "max-smtp-out", scope: scopePool, good: "40",
			get:  func(x target) any { return x.pool.MaxSMTPOut },
			want: 40, def: 0,
			bad: "x", badErr: "is not a whole number", wrong: scopeSource},
		{name: "domain-key", scope: scopePool, good: "s2,*,{dir}/rsa.pem",
			get:  func(x target) any { return keyStrings(x.pool.DomainKeys) },
			want: []string{"s2 * rsa.pem *rsa.PrivateKey"}, def: []string(nil),
			bad: "s2,*,{dir}/missing.pem", badErr: "no such file or directory", wrong: scopeSource},
		{name: "max-smtp-msg-rate", scope: scopePool, good: "500/h",
			get:  func(x target) any { return x.pool.MaxSMTPMsgRate },
			want: rate(500, time.Hour), def: Rate{},
			bad: "fast", badErr: "is not a rate", wrong: scopeSource},

		// <domain>
		{name: "max-smtp-out", scope: scopeDomain, good: "5",
			get:  func(x target) any { return x.dom.MaxSMTPOut },
			want: 5, def: 20,
			bad: "0", badErr: "out of range (1 to 100000)", wrong: scopeSource},
		{name: "max-msg-per-connection", scope: scopeDomain, good: "0",
			get:  func(x target) any { return x.dom.MaxMsgPerConnection },
			want: 0, def: 100,
			bad: "-1", badErr: "out of range", wrong: scopeSource},
		{name: "max-rcpt-per-transaction", scope: scopeDomain, good: "10",
			get:  func(x target) any { return x.dom.MaxRcptPerTransaction },
			want: 10, def: 100,
			bad: "0", badErr: "out of range", wrong: scopeSource},
		{name: "max-rcpt-per-message", scope: scopeDomain, good: "12",
			get:  func(x target) any { return x.dom.MaxRcptPerTransaction },
			want: 12, def: 100,
			bad: "100001", badErr: "100001 is out of range (1 to 100000)", wrong: scopeVMTA},
		{name: "max-msg-rate", scope: scopeDomain, good: "100/h",
			get:  func(x target) any { return x.dom.MaxMsgRate },
			want: rate(100, time.Hour), def: Rate{},
			bad: "100", badErr: "is not a rate", wrong: scopeSource},
		{name: "max-connect-rate", scope: scopeDomain, good: "20/15m",
			get:  func(x target) any { return x.dom.MaxConnectRate },
			want: rate(20, 15*time.Minute), def: Rate{},
			bad: "0/h", badErr: "is not a positive count", wrong: scopeSource},
		{name: "source-ip-max-smtp-out", scope: scopeDomain, good: "192.0.2.0/24 5",
			get:  func(x target) any { return sourceIPStrings(x.dom.SourceIPMaxSMTPOut) },
			want: []string{"192.0.2.0/24 5"}, def: []string(nil),
			bad: "192.0.2.0/24 many", badErr: `source-ip-max-smtp-out: "many" is not a whole number or unlimited`, wrong: scopeVMTA},
		{name: "source-ip-max-msg-rate", scope: scopeDomain, good: "100/h",
			get:  func(x target) any { return sourceIPStrings(x.dom.SourceIPMaxMsgRate) },
			want: []string{"0.0.0.0/0 100/h", "::/0 100/h"}, def: []string(nil),
			bad: "10.0.0.0/33 100/h", badErr: "prefix length must be 0 to 32", wrong: scopeSource},
		{name: "source-ip-max-connect-rate", scope: scopeDomain, good: "2001:db8::/32 10/m",
			get:  func(x target) any { return sourceIPStrings(x.dom.SourceIPMaxConnectRate) },
			want: []string{"2001:db8::/32 10/m"}, def: []string(nil),
			bad: "2001:db8::/32 10/0m", badErr: "bad interval", wrong: scopePool},
		{name: "initial-smtp-out", scope: scopeDomain, good: "4",
			get:  func(x target) any { return x.dom.InitialSMTPOut },
			want: 4, def: 2,
			bad: "0", badErr: "0 is out of range (1 to 10000)", wrong: scopeVMTA},
		{name: "adaptive-smtp-out", scope: scopeDomain, good: "no",
			get:  func(x target) any { return x.dom.AdaptiveSMTPOut },
			want: false, def: true,
			bad: "maybe", badErr: "is not yes or no", wrong: scopeSource},
		{name: "connection-idle-timeout", scope: scopeDomain, good: "1m",
			get:  func(x target) any { return x.dom.ConnectionIdleTimeout },
			want: time.Minute, def: 30 * time.Second,
			bad: "0", badErr: "must be longer than 0", wrong: scopeSource},
		{name: "retry-after", scope: scopeDomain, good: "5m, 10m,1h",
			get:  func(x target) any { return x.dom.RetryAfter },
			want: []time.Duration{5 * time.Minute, 10 * time.Minute, time.Hour}, def: []time.Duration{10 * time.Minute},
			bad: "5m,,1h", badErr: "has an empty entry", wrong: scopeSource},
		{name: "bounce-after", scope: scopeDomain, good: "2d",
			get:  func(x target) any { return x.dom.BounceAfter },
			want: 48 * time.Hour, def: 108 * time.Hour,
			bad: "2", badErr: `"2" has no unit`, wrong: scopeSource},
		{name: "notify-of-delay", scope: scopeDomain, good: "never",
			get:  func(x target) any { return x.dom.NotifyOfDelay },
			want: Never, def: 4 * time.Hour,
			bad: "4", badErr: `"4" has no unit`, wrong: scopeSource},
		{name: "bounce-upon-no-mx", scope: scopeDomain, good: "yes",
			get:  func(x target) any { return x.dom.BounceUponNoMX },
			want: true, def: false,
			bad: "nah", badErr: "is not yes or no", wrong: scopeSource},
		{name: "use-starttls", scope: scopeDomain, good: "no",
			get:  func(x target) any { return x.dom.UseStartTLS },
			want: false, def: true,
			bad: "never", badErr: "is not yes or no", wrong: scopeSource},
		{name: "require-starttls", scope: scopeDomain, good: "yes",
			get:  func(x target) any { return x.dom.RequireStartTLS },
			want: true, def: false,
			bad: "always", badErr: "is not yes or no", wrong: scopeTop},
		{name: "tls-verify-certificate", scope: scopeDomain, good: "yes",
			get:  func(x target) any { return x.dom.TLSVerifyCertificate },
			want: true, def: false,
			bad: "strict", badErr: "is not yes or no", wrong: scopeSource},
		{name: "smtp-hosts", scope: scopeDomain, good: "a.example, b.example; [192.0.2.1]:2525",
			get:  func(x target) any { return x.dom.SMTPHosts },
			want: HostList{{{Host: "a.example"}, {Host: "b.example"}}, {{Host: "192.0.2.1", Port: 2525, Literal: true}}},
			def:  HostList(nil),
			bad:  "[192.0.2.1", badErr: "missing ]", wrong: scopeSource},
		{name: "route", scope: scopeDomain, good: "Relay.Example:587",
			get:  func(x target) any { return x.dom.SMTPHosts },
			want: HostList{{{Host: "relay.example", Port: 587}}}, def: HostList(nil),
			bad: "a.example,", badErr: "empty host entry", wrong: scopeVMTA},
		{name: "default-smtp-port", scope: scopeDomain, good: "2525",
			get:  func(x target) any { return x.dom.DefaultSMTPPort },
			want: 2525, def: 25,
			bad: "70000", badErr: "out of range (1 to 65535)", wrong: scopeSource},
		{name: "mx-connection-attempts", scope: scopeDomain, good: "3",
			get:  func(x target) any { return x.dom.MXConnectionAttempts },
			want: 3, def: 5,
			bad: "101", badErr: "101 is out of range (1 to 100)", wrong: scopeTop},
		{name: "host-down-after", scope: scopeDomain, good: "5",
			get:  func(x target) any { return x.dom.HostDownAfter },
			want: 5, def: 2,
			bad: "0", badErr: "0 is out of range (1 to 1000)", wrong: scopePool},
		{name: "disable-mx-rollup", scope: scopeDomain, good: "yes",
			get:  func(x target) any { return x.dom.DisableMXRollup },
			want: true, def: false,
			bad: "sometimes", badErr: "is not yes or no", wrong: scopeTop},
		{name: "auth-username", scope: scopeDomain, good: "relay-user", sibling: "auth-password pw",
			get:  func(x target) any { return x.dom.AuthUsername },
			want: "relay-user", def: "",
			bad: `""`, badErr: "auth-username: empty value", wrong: scopeSource},
		{name: "auth-password", scope: scopeDomain, good: `"pass word"`, sibling: "auth-username u",
			get:  func(x target) any { return x.dom.AuthPassword },
			want: "pass word", def: "",
			bad: "pass word", badErr: "takes one value", wrong: scopeUser},
		{name: "use-unencrypted-plain-auth", scope: scopeDomain, good: "yes",
			get:  func(x target) any { return x.dom.UseUnencryptedPlainAuth },
			want: true, def: false,
			bad: "plain", badErr: "is not yes or no", wrong: scopeSource},
		{name: "connect-timeout", scope: scopeDomain, good: "30s",
			get:  func(x target) any { return x.dom.ConnectTimeout },
			want: 30 * time.Second, def: 2 * time.Minute,
			bad: "30x", badErr: `unknown unit "x"`, wrong: scopeSource},
		{name: "smtp-greeting-timeout", scope: scopeDomain, good: "1m30s",
			get:  func(x target) any { return x.dom.SMTPGreetingTimeout },
			want: 90 * time.Second, def: 5 * time.Minute,
			bad: "-1m", badErr: "is not a duration", wrong: scopeSource},
		{name: "data-send-timeout", scope: scopeDomain, good: "10min",
			get:  func(x target) any { return x.dom.DataSendTimeout },
			want: 10 * time.Minute, def: 3 * time.Minute,
			bad: "forever", badErr: "is not a duration", wrong: scopeSource},
		{name: "max-errors-per-connection", scope: scopeDomain, good: "5",
			get:  func(x target) any { return x.dom.MaxErrorsPerConnection },
			want: 5, def: 0,
			bad: "-5", badErr: "is not a whole number or unlimited", wrong: scopeSource},
		{name: "queue-priority", scope: scopeDomain, good: "90",
			get:  func(x target) any { return x.dom.QueuePriority },
			want: 90, def: 50,
			bad: "101", badErr: "101 is out of range (0 to 100)", wrong: scopeVMTA},
		{name: "smtp-pattern-list", scope: scopeDomain, good: "spl",
			get:  func(x target) any { return x.dom.SMTPPatternList },
			want: "spl", def: "",
			bad: "nosuch", badErr: "no <smtp-pattern-list nosuch> block", wrong: scopeSource},
		{name: "backoff-max-smtp-out", scope: scopeDomain, good: "1",
			get:  func(x target) any { return x.dom.BackoffMaxSMTPOut },
			want: 1, def: 2,
			bad: "0", badErr: "out of range", wrong: scopeSource},
		{name: "backoff-max-msg-rate", scope: scopeDomain, good: "10/h",
			get:  func(x target) any { return x.dom.BackoffMaxMsgRate },
			want: rate(10, time.Hour), def: rate(1, time.Minute),
			bad: "10/0h", badErr: "bad interval", wrong: scopeSource},
		{name: "backoff-retry-after", scope: scopeDomain, good: "30m,2h",
			get:  func(x target) any { return x.dom.BackoffRetryAfter },
			want: []time.Duration{30 * time.Minute, 2 * time.Hour}, def: []time.Duration{time.Hour},
			bad: "30m,0s", badErr: "must be longer than 0", wrong: scopeSource},
		{name: "backoff-to-normal-after", scope: scopeDomain, good: "never",
			get:  func(x target) any { return x.dom.BackoffToNormalAfter },
			want: Never, def: time.Hour,
			bad: "sometime", badErr: "is not a duration", wrong: scopeSource},
		{name: "backoff-to-normal-after-delivery", scope: scopeDomain, good: "no",
			get:  func(x target) any { return x.dom.BackoffToNormalAfterDelivery },
			want: false, def: true,
			bad: "later", badErr: "is not yes or no", wrong: scopeSource},
		{name: "dkim-sign", scope: scopeDomain, good: "yes", sibling: "domain-key s1,example.com,{dir}/rsa.pem",
			get:  func(x target) any { return x.dom.DKIMSign },
			want: true, def: false,
			bad: "perhaps", badErr: "is not yes or no", wrong: scopeSource},
		{name: "domain-key", scope: scopeDomain, good: "s1,Example.COM,{dir}/rsa.pem",
			get:  func(x target) any { return domainKeyStrings(x.dom) },
			want: []string{"s1 example.com rsa.pem *rsa.PrivateKey"}, def: []string(nil),
			bad: "s1,example.com,{dir}/missing.pem", badErr: "no such file or directory", wrong: scopeSource},
		{name: "reuse-ssl-session", scope: scopeDomain, good: "no",
			get:  func(x target) any { return x.dom.ReuseSSLSession },
			want: false, def: true,
			bad: "sometimes", badErr: "is not yes or no", wrong: scopeVMTA},
		{name: "smtp-421-means-mx-unavailable", scope: scopeDomain, good: "no",
			get:  func(x target) any { return nil },
			want: nil, def: nil, warn: "Tern always treats a 421 greeting as the MX being unavailable",
			bad: "maybe", badErr: "is not yes or no", wrong: scopeSource},
		{name: "include", scope: scopeDomain, good: "{dir}/inc-domain.conf", setIn: "inc-domain.conf",
			get:  func(x target) any { return x.dom.QueuePriority },
			want: 77, def: 50,
			bad: "{dir}/missing.conf", badErr: "does not exist", wrong: scopeAcctFile},
		{name: "type", scope: scopeDomain, good: "discard",
			get:  func(x target) any { return x.dom.Discard },
			want: true, def: false,
			bad: "pipe", badErr: "Tern delivers by SMTP only", wrong: scopeVMTA},
		{name: "log-commands", scope: scopeDomain, good: "yes",
			get:  func(x target) any { return nil },
			want: nil, def: nil, warn: "log-commands is a PowerMTA directive Tern ignores: Tern does not log outbound SMTP commands",
			wrong: scopeVMTA},
		{name: "log-connections", scope: scopeDomain, good: "yes",
			get:  func(x target) any { return nil },
			want: nil, def: nil, warn: "log-connections is a PowerMTA directive Tern ignores",
			wrong: scopeVMTA},
		{name: "remove-header", scope: scopeDomain, good: "X-Mailer",
			get:  func(x target) any { return nil },
			want: nil, def: nil, warn: "remove-header is a PowerMTA directive Tern ignores",
			wrong: scopeVMTA},

		// <pattern-list>
		{name: "mail-from", scope: scopePatternList, good: `/@example\.com$/ virtual-mta=v`,
			get:  func(x target) any { return ruleStrings(x.pl) },
			want: []string{`0  /@example\.com$/ v`}, def: []string(nil),
			bad: `/(/ virtual-mta=v`, badErr: "bad regex /(/", wrong: scopeSource},
		{name: "rcpt-to", scope: scopePatternList, good: `/@gmail\.com$/ virtual-mta=p`,
			get:  func(x target) any { return ruleStrings(x.pl) },
			want: []string{`1  /@gmail\.com$/ p`}, def: []string(nil),
			bad: `/x/ vmta=v`, badErr: `expected virtual-mta=NAME, found "vmta=v"`, wrong: scopeDomain},
		{name: "header", scope: scopePatternList, good: `X-Campaign: /^promo/ virtual-mta=w`,
			get:  func(x target) any { return ruleStrings(x.pl) },
			want: []string{`2 X-Campaign /^promo/ w`}, def: []string(nil),
			bad: `X-Campaign /x/ virtual-mta=nosuch`, badErr: "virtual-mta=nosuch: no virtual MTA or pool by that name", wrong: scopeSource},

		// <smtp-pattern-list>
		{name: "reply", scope: scopeSMTPPatternList, good: `/421 .*too many/ mode=backoff,backoff-to-normal-after=2h`,
			get:  func(x target) any { return replyStrings(x.spl) },
			want: []string{"/421 .*too many/ mode=1 after=2h defer=false bounce=false skip=false"}, def: []string(nil),
			bad: `/^5/ bounce-rcpt,skip-mx`, badErr: "bounce-rcpt and skip-mx contradict each other", wrong: scopeDomain},

		// <mx-rollup-list>
		{name: "mx", scope: scopeMXRollupList, good: "*.Google.com Gmail.Rollup",
			get:  func(x target) any { return rollupStrings(x.cfg) },
			want: []string{"*.google.com gmail.rollup"}, def: []string(nil),
			bad: "* everything.rollup", badErr: "mx: * would roll every domain into one queue", wrong: scopeDomain},

		// <acct-file>
		{name: "records", scope: scopeAcctFile, good: "d, b,t,r",
			get:  func(x target) any { return x.acct.Records },
			want: RecordTypes{Delivered: true, Bounced: true, Transient: true, Received: true}, def: RecordTypes{Delivered: true, Bounced: true},
			bad: "d,x", badErr: `unknown record type "x"`, wrong: scopeTop},
		{name: "max-size", scope: scopeAcctFile, good: "1G",
			get:  func(x target) any { return x.acct.MaxSize },
			want: Size(1 << 30), def: Size(250 << 20),
			bad: "big", badErr: "is not a size", wrong: scopeTop},
		{name: "move-interval", scope: scopeAcctFile, good: "1h",
			get:  func(x target) any { return x.acct.MoveInterval },
			want: time.Hour, def: 24 * time.Hour,
			bad: "1y", badErr: `unknown unit "y"`, wrong: scopeTop},
		{name: "delete-after", scope: scopeAcctFile, good: "30d",
			get:  func(x target) any { return x.acct.DeleteAfter },
			want: 30 * 24 * time.Hour, def: Never,
			bad: "0s", badErr: "must be longer than 0", wrong: scopeTop},
		{name: "move-to", scope: scopeAcctFile, good: "archive",
			get:  func(x target) any { return x.acct.MoveTo },
			want: dir + "/archive", def: "",
			bad: `""`, badErr: "empty path", wrong: scopeDomain},
		{name: "world-readable", scope: scopeAcctFile, good: "yes",
			get:  func(x target) any { return x.acct.WorldReadable },
			want: true, def: false,
			bad: "maybe", badErr: "yes or no", wrong: scopeTop},
		{name: "record-fields", scope: scopeAcctFile, good: "d timeLogged, rcpt,header_Subject",
			get: func(x target) any {
				var out []string
				for _, f := range x.acct.RecordFields {
					out = append(out, f.Type+" "+strings.Join(f.Fields, ","))
				}
				return out
			},
			want: []string{"d timeLogged,rcpt,header_Subject"}, def: []string(nil),
			bad: "d timeLoged", badErr: `unknown field "timeLoged" (did you mean timeLogged?)`, wrong: scopeTop},

		// <spool>
		{name: "deliver-only", scope: scopeSpool, good: "no",
			get:  func(x target) any { return nil },
			want: nil, def: nil,
			bad: "yes", badErr: "deliver-only yes: Tern's spool also takes new mail", wrong: scopeTop},
		{name: "delete-file-holders", scope: scopeSpool, good: "yes",
			get:  func(x target) any { return nil },
			want: nil, def: nil, warn: "delete-file-holders is a PowerMTA directive Tern ignores",
			bad: "", badErr: "", wrong: scopeDomain},
		{name: "priority", scope: scopeSpool, good: "1",
			get:  func(x target) any { return nil },
			want: nil, def: nil, warn: "priority is a PowerMTA directive Tern ignores",
			bad: "", badErr: "", wrong: scopeSource},
		{name: "call-to", scope: scopePatternList, good: "other",
			get:  func(x target) any { return nil },
			want: nil, def: nil, warn: "call-to is a PowerMTA directive Tern ignores",
			wrong: scopeDomain},
		{name: "include", scope: scopeSMTPPatternList, good: "{dir}/inc-spl.conf", setIn: "inc-spl.conf",
			get:  func(x target) any { return len(x.spl.Rules) },
			want: 1, def: 0,
			bad: "{dir}/missing.conf", badErr: "does not exist", wrong: scopePool},
		{name: "smtp-source-host", scope: scopeTop, good: "192.0.2.44 out.example.com",
			get: func(x target) any {
				var out []string
				for _, sh := range x.cfg.DefaultSourceHosts {
					out = append(out, sh.IP.String()+" "+sh.HostName)
				}
				return out
			},
			want: []string{"192.0.2.44 out.example.com"}, def: []string(nil),
			bad: "192.0.2.44", badErr: "smtp-source-host takes an IP address and a host name", wrong: scopeDomain},
		{name: "source", scope: scopeListener, good: "bulk", extra: "<source bulk>\n</source>",
			get:  func(x target) any { return listenerStrings(x.cfg) },
			want: []string{"tcp 127.0.0.1:2525 source= tls=false", "tcp 127.0.0.1:2526 source=bulk tls=false"},
			def:  []string{"tcp 127.0.0.1:2525 source= tls=false"},
			bad:  "a b", badErr: "source takes one value", wrong: scopeDomain},
		{name: "immediate-tls", scope: scopeListener, good: "no",
			get:  func(x target) any { return listenerStrings(x.cfg) },
			want: []string{"tcp 127.0.0.1:2525 source= tls=false", "tcp 127.0.0.1:2526 source= tls=false"},
			def:  []string{"tcp 127.0.0.1:2525 source= tls=false"},
			bad:  "perhaps", badErr: "is not yes or no", wrong: scopeDomain},
		{name: "min-free-space", scope: scopeSpool, good: "5G",
			get:  func(x target) any { return x.cfg.Spool.MinFreeSpace },
			want: Size(5 << 30), def: Size(1 << 30),
			bad: "5T", badErr: "is not a size", wrong: scopeTop},
	}
}

// TestDirectives runs every row of the directive table; see dirRow.
func TestDirectives(t *testing.T) {
	dir := writeFixtures(t)
	name := dir + "/tern.conf"
	opts := Options{Hostname: testHostname}
	index := directiveIndex()
	for _, r := range directiveTable(dir) {
		t.Run(r.name+" in "+scopeLabels[r.scope], func(t *testing.T) {
			for _, s := range index[r.name] {
				if s == r.wrong {
					t.Fatalf("table error: %s is allowed in %s, so that is not a wrong scope", r.name, scopeLabels[s])
				}
			}
			placements := []scope{scopeTop}
			if r.scope == scopeDomain {
				placements = []scope{scopeTop, scopeVMTA, scopePool}
			}
			for _, domIn := range placements {
				checkGood(t, &r, name, dir, opts, domIn)
				checkDefault(t, &r, name, dir, opts, domIn)
				checkBad(t, &r, name, dir, opts, domIn)
			}
			checkWrongScope(t, &r, name, dir, opts)
		})
	}
}

func checkGood(t *testing.T, r *dirRow, name, dir string, opts Options, domIn scope) {
	t.Helper()
	src, line := scaffold(r, r.scope, domIn, r.name+" "+subst(r.good, dir), dir)
	cfg := parseOK(t, name, src, opts)
	if r.warn != "" {
		if !hasDiag(cfg.Warnings, name, line, r.warn) {
			t.Errorf("good value: no warning %q at line %d; warnings:\n%s", r.warn, line, diagStrings(cfg.Warnings))
		}
	} else if len(cfg.Warnings) > 0 {
		t.Errorf("good value: unexpected warnings:\n%s", diagStrings(cfg.Warnings))
	}
	got, isSetting, set, pos := settingValue(r.get(locate(t, cfg, domIn)))
	if !reflect.DeepEqual(got, r.want) {
		t.Errorf("good value %q: got %#v, want %#v", r.good, got, r.want)
	}
	wantFile := name
	if r.setIn != "" {
		wantFile, line = dir+"/"+r.setIn, 1
	}
	if isSetting && (!set || pos.File != wantFile || pos.Line != line || pos.Column < 1) {
		t.Errorf("good value: Set=%v Pos=%v, want set at %s:%d", set, pos, wantFile, line)
	}
}

func checkDefault(t *testing.T, r *dirRow, name, dir string, opts Options, domIn scope) {
	t.Helper()
	src, _ := scaffold(r, r.scope, domIn, "", dir)
	if r.defErr != "" {
		el := parseErr(t, name, src, opts)
		if !strings.Contains(el.Error(), r.defErr) {
			t.Errorf("absent: error\n%v\nwant one containing %q", el, r.defErr)
		}
		return
	}
	cfg := parseOK(t, name, src, opts)
	got, isSetting, set, _ := settingValue(r.get(locate(t, cfg, domIn)))
	if !reflect.DeepEqual(got, r.def) {
		t.Errorf("absent: got %#v, want default %#v", got, r.def)
	}
	if isSetting && set {
		t.Errorf("absent: the Setting is marked as set")
	}
}

func checkBad(t *testing.T, r *dirRow, name, dir string, opts Options, domIn scope) {
	t.Helper()
	if r.bad == "" && r.badErr == "" {
		return // an ignored directive takes any value
	}
	src, line := scaffold(r, r.scope, domIn, r.name+" "+subst(r.bad, dir), dir)
	el := parseErr(t, name, src, opts)
	if !hasDiag(el.Errors, name, line, r.badErr) {
		t.Errorf("bad value %q: want an error at %s:%d containing %q; got:\n%v\nconfig:\n%s", r.bad, name, line, r.badErr, el, numbered(src))
	}
}

func checkWrongScope(t *testing.T, r *dirRow, name, dir string, opts Options) {
	t.Helper()
	src, line := scaffold(r, r.wrong, scopeTop, r.name+" "+subst(r.good, dir), dir)
	el := parseErr(t, name, src, opts)
	want := r.name + " is not allowed " + scopeWhere(r.wrong) + "; it belongs "
	if !hasDiag(el.Errors, name, line, want) {
		t.Errorf("in %s: want an error at %s:%d containing %q; got:\n%v\nconfig:\n%s", scopeLabels[r.wrong], name, line, want, el, numbered(src))
	}
}

// TestDirectiveTableComplete fails when a directive is added to
// a scope table without a row in the table, or the table has a row for a
// directive in a scope that does not allow it.
func TestDirectiveTableComplete(t *testing.T) {
	rows := map[string]bool{}
	for _, r := range directiveTable("/fixtures") {
		key := scopeLabels[r.scope] + " " + r.name
		if rows[key] {
			t.Errorf("two rows for %s", key)
		}
		rows[key] = true
	}
	var missing []string
	for sc, infos := range scopeInfos {
		for _, ri := range infos {
			if ri.pmta == PMTAIgnored {
				// Any value is a warning; TestEveryPowerMTADirective
				// places each one where PowerMTA allows it.
				delete(rows, scopeLabels[sc]+" "+ri.name)
				continue
			}
			key := scopeLabels[sc] + " " + ri.name
			if !rows[key] {
				missing = append(missing, key)
			}
			delete(rows, key)
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("no row in directiveTable for %s", m)
	}
	for k := range rows {
		t.Errorf("row %s is for a directive the scope table does not list there", k)
	}
}

// blockRow is a block in a scope it may be opened in, and one where it may
// not.
type blockRow struct {
	name    string
	arg     string
	body    string
	parents []scope
	wrong   scope
}

var blockTable = []blockRow{
	{name: "source", arg: "10.0.0.0/8", parents: []scope{scopeTop}, wrong: scopeVMTA},
	{name: "smtp-user", arg: "alice", body: "password-hash " + testHash, parents: []scope{scopeTop}, wrong: scopeSource},
	{name: "virtual-mta", arg: "mta9", parents: []scope{scopeTop}, wrong: scopePool},
	{name: "virtual-mta-pool", arg: "pool9", body: "virtual-mta v", parents: []scope{scopeTop}, wrong: scopeVMTA},
	{name: "domain", arg: "example.org", body: "max-smtp-out 3", parents: []scope{scopeTop, scopeVMTA, scopePool}, wrong: scopeSource},
	{name: "pattern-list", arg: "pl9", parents: []scope{scopeTop, scopePatternList}, wrong: scopeSource},
	{name: "smtp-pattern-list", arg: "spl9", parents: []scope{scopeTop}, wrong: scopeDomain},
	{name: "acct-file", arg: "other.csv", parents: []scope{scopeTop}, wrong: scopeSource},
	{name: "spool", arg: "q2", parents: []scope{scopeTop}, wrong: scopeVMTA},
	{name: "mx-rollup-list", body: "mx *.mx.example.net example.rollup", parents: []scope{scopeTop}, wrong: scopeDomain},
	{name: "smtp-listener", arg: "127.0.0.1:2527", parents: []scope{scopeTop}, wrong: scopeVMTA},
}

// TestBlocks opens every block in each scope it is allowed in and in one
// where it is not.
func TestBlocks(t *testing.T) {
	if len(blockTable) != len(blockScopes) {
		t.Errorf("blockTable has %d rows, blockScopes %d blocks", len(blockTable), len(blockScopes))
	}
	for _, br := range blockTable {
		bs, ok := blockScopes[br.name]
		if !ok {
			t.Errorf("%s is not in blockScopes", br.name)
			continue
		}
		if !reflect.DeepEqual(bs.parents, br.parents) {
			t.Errorf("<%s>: blockScopes allows %v, the table %v", br.name, bs.parents, br.parents)
		}
		block := "<" + br.name + ">"
		if br.arg != "" {
			block = "<" + br.name + " " + br.arg + ">"
		}
		if br.body != "" {
			block += "\n" + br.body
		}
		block += "\n</" + br.name + ">"
		// The row's block is the line placed; "spool" is left out of the
		// scaffold so that a second spool is not the error found.
		r := &dirRow{name: br.name}
		for _, p := range br.parents {
			t.Run(br.name+" in "+scopeLabels[p], func(t *testing.T) {
				src, _ := scaffold(r, p, scopeTop, block, "")
				parseOK(t, "blocks.conf", src, noFiles())
			})
		}
		t.Run(br.name+" in "+scopeLabels[br.wrong], func(t *testing.T) {
			src, line := scaffold(r, br.wrong, scopeTop, block, "")
			el := parseErr(t, "blocks.conf", src, noFiles())
			want := "<" + br.name + "> is not allowed " + scopeWhere(br.wrong) + "; it belongs " + scopeList(br.parents)
			if !hasDiag(el.Errors, "blocks.conf", line, want) {
				t.Errorf("want an error at line %d containing %q; got:\n%v", line, want, el)
			}
		})
	}
}

// TestNameServerForms checks the spellings name-server takes and the ones
// it refuses, port 0 among them (no server answers there, and the resolver
// would refuse it only when tern serve starts).
func TestNameServerForms(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.53": "192.0.2.53:53", "192.0.2.53:5353": "192.0.2.53:5353",
		"2001:db8::53": "[2001:db8::53]:53", "[2001:db8::53]:54": "[2001:db8::53]:54",
	} {
		if got, err := nameServer(in); err != nil || got != want {
			t.Errorf("nameServer(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"192.0.2.53:0", "[2001:db8::53]:0", "dns.example", "192.0.2.53:99999", ""} {
		if got, err := nameServer(in); err == nil {
			t.Errorf("nameServer(%q) = %q, want an error", in, got)
		}
	}
}
