package config

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const listener = "smtp-listener 127.0.0.1:2525\n"

// domainNames lists the patterns of ds in order.
func domainNames(ds []*Domain) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Pattern.String())
	}
	return out
}

func findDomain(t *testing.T, ds []*Domain, pattern string) *Domain {
	t.Helper()
	for _, d := range ds {
		if d.Pattern.String() == pattern {
			return d
		}
	}
	t.Fatalf("no <domain %s> in %v", pattern, domainNames(ds))
	return nil
}

func TestMacroExpansion(t *testing.T) {
	src := listener + `
<domain yahoo.$tld>
    max-smtp-out 4
</domain>
domain-macro tld com, co.uk,FR
domain-macro msft hotmail, outlook
domain-macro ytld $tld, co.jp
<domain $msft.$tld>
    queue-priority 70
</domain>
<domain [*.]yahoo.$ytld>
    max-msg-rate 100/h
</domain>
<virtual-mta mta1>
    <domain *.$msft.com>
        max-smtp-out 1
    </domain>
</virtual-mta>
`
	cfg := parseOK(t, "macros.conf", src, noFiles())
	wantMacros := map[string][]string{
		"tld":  {"com", "co.uk", "fr"},
		"msft": {"hotmail", "outlook"},
		"ytld": {"com", "co.uk", "fr", "co.jp"},
	}
	if !reflect.DeepEqual(cfg.Macros, wantMacros) {
		t.Errorf("Macros = %v, want %v", cfg.Macros, wantMacros)
	}
	want := []string{
		// A macro may be used above its definition.
		"yahoo.com", "yahoo.co.uk", "yahoo.fr",
		// Two macros in one pattern: the cross product, in order.
		"hotmail.com", "hotmail.co.uk", "hotmail.fr", "outlook.com", "outlook.co.uk", "outlook.fr",
		// A macro whose values use another macro.
		"[*.]yahoo.com", "[*.]yahoo.co.uk", "[*.]yahoo.fr", "[*.]yahoo.co.jp",
	}
	if got := domainNames(cfg.Domains); !reflect.DeepEqual(got, want) {
		t.Errorf("domains:\n got %v\nwant %v", got, want)
	}
	// Every expansion carries the body and the position of the one block.
	for _, d := range cfg.Domains[:3] {
		if d.Settings.MaxSMTPOut.Value != 4 || d.Pos.Line != 3 || d.Settings.MaxSMTPOut.Pos.Line != 4 {
			t.Errorf("%s: max-smtp-out %+v at %v", d.Pattern, d.Settings.MaxSMTPOut, d.Pos)
		}
	}
	if got := domainNames(cfg.VMTAs[0].Domains); !reflect.DeepEqual(got, []string{"*.hotmail.com", "*.outlook.com"}) {
		t.Errorf("mta1 domains = %v", got)
	}
}

// TestDomainMerge checks that blocks for the same pattern (written out or
// from a macro) merge, and that a directive set in both is an error naming
// both places.
func TestDomainMerge(t *testing.T) {
	src := listener + `domain-macro tld com, net
<domain yahoo.com>
    max-smtp-out 3
</domain>
<domain yahoo.$tld>
    queue-priority 70
</domain>
<domain YAHOO.COM.>
    retry-after 5m
</domain>
<virtual-mta mta1>
    <domain yahoo.com>
        max-smtp-out 1
    </domain>
    <domain yahoo.com>
        bounce-after 1d
    </domain>
</virtual-mta>
`
	cfg := parseOK(t, "merge.conf", src, noFiles())
	if got := domainNames(cfg.Domains); !reflect.DeepEqual(got, []string{"yahoo.com", "yahoo.net"}) {
		t.Fatalf("domains = %v", got)
	}
	com := findDomain(t, cfg.Domains, "yahoo.com").Settings
	if com.MaxSMTPOut.Value != 3 || com.QueuePriority.Value != 70 || !com.RetryAfter.Set || com.BounceAfter.Set {
		t.Errorf("yahoo.com merged: %+v %+v %+v", com.MaxSMTPOut, com.QueuePriority, com.RetryAfter)
	}
	if com.MaxSMTPOut.Pos.Line != 4 || com.QueuePriority.Pos.Line != 7 || com.RetryAfter.Pos.Line != 10 {
		t.Errorf("merged settings keep their own lines: %d %d %d", com.MaxSMTPOut.Pos.Line, com.QueuePriority.Pos.Line, com.RetryAfter.Pos.Line)
	}
	net := findDomain(t, cfg.Domains, "yahoo.net").Settings
	if net.MaxSMTPOut.Set || net.QueuePriority.Value != 70 {
		t.Errorf("yahoo.net: %+v %+v", net.MaxSMTPOut, net.QueuePriority)
	}
	// The VMTA's blocks merge among themselves, not with the global ones.
	v := cfg.VMTAs[0]
	if len(v.Domains) != 1 || v.Domains[0].Settings.MaxSMTPOut.Value != 1 || !v.Domains[0].Settings.BounceAfter.Set || v.Domains[0].Settings.QueuePriority.Set {
		t.Errorf("mta1 domains: %+v", v.Domains)
	}

	// A block naming the domain itself wins over a macro's block for it,
	// before or after it; after, each value it replaces is a warning.
	for _, order := range []string{"explicit first", "macro first"} {
		explicit, macro := "<domain yahoo.com>\n    max-smtp-out 3\n</domain>\n", "<domain yahoo.$tld>\n    max-smtp-out 4\n    queue-priority 60\n</domain>\n"
		body := explicit + macro
		if order == "macro first" {
			body = macro + explicit
		}
		cfg := parseOK(t, "merge.conf", listener+"domain-macro tld com, net\n"+body, noFiles())
		com, net := findDomain(t, cfg.Domains, "yahoo.com").Settings, findDomain(t, cfg.Domains, "yahoo.net").Settings
		if com.MaxSMTPOut.Value != 3 || com.QueuePriority.Value != 60 || net.MaxSMTPOut.Value != 4 {
			t.Errorf("%s: yahoo.com %d/%d, yahoo.net %d; want 3/60 and 4", order, com.MaxSMTPOut.Value, com.QueuePriority.Value, net.MaxSMTPOut.Value)
		}
		wantWarn := order == "macro first"
		if got := len(cfg.Warnings) == 1 && strings.Contains(cfg.Warnings[0].Message, "max-smtp-out for <domain yahoo.com> replaces the value a domain macro's block gave it at line 4"); got != wantWarn {
			t.Errorf("%s: warnings %s", order, diagStrings(cfg.Warnings))
		}
	}
	// Two macro blocks for one domain that disagree are an error; that
	// agree, are not.
	el := parseErr(t, "merge.conf", listener+`domain-macro tld com, net
domain-macro big yahoo.com
<domain $big>
    max-smtp-out 3
</domain>
<domain yahoo.$tld>
    max-smtp-out 4
</domain>
`, noFiles())
	want := "merge.conf:8:5: max-smtp-out is already set for <domain yahoo.$tld> at line 5"
	if el.Error() != want {
		t.Errorf("conflict:\n%v\nwant\n%s", el, want)
	}
	parseOK(t, "merge.conf", listener+`domain-macro tld com, net
domain-macro big yahoo.com
<domain $big>
    max-smtp-out 3
</domain>
<domain yahoo.$tld>
    max-smtp-out 3
</domain>
`, noFiles())
}

// TestSourceMerge checks that <source> blocks for the same CIDR (however
// written) or the same name merge, and the order of Config.Sources: CIDR
// sources from the least to the most specific, then named ones.
func TestSourceMerge(t *testing.T) {
	src := listener + `<source {auth}>
    always-allow-relaying yes
</source>
<source 10.1.0.0/16>
    max-rcpt-per-message 10
</source>
<source 10/8>
    require-auth yes
</source>
<source 0/0>
    smtp-service no
</source>
<source 10.0.0.0/8>
    max-message-size 10M
</source>
<source Bulk-Feed>
    process-x-job yes
</source>
<source bulk-feed>
    log-commands yes
</source>
<source 2001:db8::/32>
</source>
`
	cfg := parseOK(t, "sources.conf", src, noFiles())
	var order []string
	for _, s := range cfg.Sources {
		if s.Named() {
			order = append(order, s.Name)
		} else {
			order = append(order, s.Prefix.String())
		}
	}
	want := []string{"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32", "{auth}", "Bulk-Feed"}
	if !reflect.DeepEqual(order, want) {
		t.Errorf("sources = %v, want %v", order, want)
	}
	for _, s := range cfg.Sources {
		switch {
		case s.Prefix == netip.MustParsePrefix("10.0.0.0/8"):
			if !s.Settings.RequireAuth.Value || s.Settings.MaxMessageSize.Value != 10<<20 || s.Pos.Line != 8 {
				t.Errorf("10/8 merged: %+v", s.Settings)
			}
		case s.Name == "Bulk-Feed":
			if !s.Settings.ProcessXJob.Value || !s.Settings.LogCommands.Value {
				t.Errorf("bulk-feed merged: %+v", s.Settings)
			}
		}
	}
	// A user may name the source in another case.
	parseOK(t, "sources.conf", src+"<smtp-user u>\npassword-hash "+testHash+"\nsource BULK-FEED\n</smtp-user>\n", noFiles())
}

// TestCaseAndComments checks that names are case-insensitive, values keep
// their case, comments may follow values, and quoted values keep spaces and
// '#'.
func TestCaseAndComments(t *testing.T) {
	src := `SMTP-Listener 127.0.0.1:2525   # trailing comment
	# an indented comment

HTTP-API-KEY "Key With # and Spaces"
<Virtual-MTA MTA1>  # comment after a tag
    Smtp-Source-Host 192.0.2.10 Mta1.Example.COM
</VIRTUAL-mta>
<DOMAIN Example.COM>
	MAX-SMTP-OUT 3	# tab before the comment
</domain>
`
	cfg := parseOK(t, "case.conf", src, noFiles())
	if cfg.HTTPAPIKey.Value != "Key With # and Spaces" {
		t.Errorf("http-api-key = %q", cfg.HTTPAPIKey.Value)
	}
	if v := cfg.VMTAs[0]; v.Name != "MTA1" || v.SourceHosts[0].HostName != "Mta1.Example.COM" {
		t.Errorf("VMTA = %q %+v", v.Name, v.SourceHosts)
	}
	d := cfg.Domains[0]
	if d.Pattern.String() != "example.com" || d.Settings.MaxSMTPOut.Value != 3 {
		t.Errorf("domain = %s %+v", d.Pattern, d.Settings.MaxSMTPOut)
	}
	if p := d.Settings.MaxSMTPOut.Pos; p.Line != 9 || p.Column != 2 {
		t.Errorf("max-smtp-out at %v, want line 9 column 2", p)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings: %s", diagStrings(cfg.Warnings))
	}
	// No newline at the end of the file.
	parseOK(t, "nonl.conf", "smtp-listener 127.0.0.1:2525", noFiles())
	// CRLF line ends.
	parseOK(t, "crlf.conf", "smtp-listener 127.0.0.1:2525\r\n<domain *>\r\n  max-smtp-out 3\r\n</domain>\r\n", noFiles())
}

// TestIgnoredWarn checks every name in the ignored lists: the config
// loads, the warning names the directive or block and says what Tern does
// instead, and the migration report lists it as ignored.
func TestIgnoredWarn(t *testing.T) {
	index := directiveIndex()
	for _, n := range keys(ignoredDirectives) {
		for _, where := range []struct {
			sc          scope
			open, close string
		}{{scopeTop, "", ""}, {scopeDomain, "<domain *>\n", "</domain>\n"}, {scopeSource, "<source 0/0>\n", "</source>\n"}} {
			if slices.Contains(index[n], where.sc) {
				continue // applied there: its row's harness case covers it
			}
			src := listener + where.open + n + " some value\n" + where.close
			cfg := parseOK(t, "ni.conf", src, noFiles())
			want := n + " is a PowerMTA directive Tern ignores: " + ignoredDirectives[n]
			if len(cfg.Warnings) != 1 || cfg.Warnings[0].Message != want || cfg.Warnings[0].Pos.Line != strings.Count(listener+where.open, "\n")+1 {
				t.Errorf("%q: warnings %s", src, diagStrings(cfg.Warnings))
			}
			if !slices.ContainsFunc(cfg.Migration, func(m MigrationItem) bool { return m.Name == n && m.Status == PMTAIgnored }) {
				t.Errorf("%q: not in the migration report as ignored: %+v", src, cfg.Migration)
			}
		}
	}
	for _, n := range keys(ignoredBlocks) {
		src := listener + "<" + n + " arg>\n  anything goes here 1 2 3\n  <nested x>\n  </nested>\n</" + n + ">\n"
		cfg := parseOK(t, "ni.conf", src, noFiles())
		want := "<" + n + "> is a PowerMTA block Tern ignores with its contents: " + ignoredBlocks[n]
		if len(cfg.Warnings) != 1 || cfg.Warnings[0].Message != want || cfg.Warnings[0].Pos.Line != 2 {
			t.Errorf("<%s>: warnings %s", n, diagStrings(cfg.Warnings))
		}
	}
	for n := range ignoredBlocks {
		if _, ok := blockScopes[n]; ok {
			t.Errorf("<%s> is both implemented and in ignoredBlocks", n)
		}
	}
}

// TestPostmasterFollowsHostName checks the derived default.
func TestPostmasterFollowsHostName(t *testing.T) {
	cfg := parseOK(t, "pm.conf", listener+"host-name mx.example.net\n", noFiles())
	if cfg.Postmaster.Value != "postmaster@mx.example.net" || cfg.Postmaster.Set {
		t.Errorf("postmaster = %+v", cfg.Postmaster)
	}
}

// TestListenerForms checks the address forms of smtp-listener and its
// options.
func TestListenerForms(t *testing.T) {
	dir := writeFixtures(t)
	src := fmt.Sprintf(`smtp-server-tls-certificate %s/both.pem
smtp-listener 0/0:587
smtp-listener 0.0.0.0:25
smtp-listener [::]:587
smtp-listener ::/0:26
smtp-listener 127.0.0.1:2525 source=submission
smtp-listener [::1]:465 tls=yes source={auth}
smtp-listener :2600 TLS=no
smtp-listener localhost:2601
smtp-listener [::ffff:127.0.0.1]:2602
<source submission>
</source>
`, dir)
	cfg := parseOK(t, dir+"/l.conf", src, Options{Hostname: testHostname})
	want := []string{
		"tcp4 0.0.0.0:587 source= tls=false",
		"tcp4 0.0.0.0:25 source= tls=false",
		"tcp6 [::]:587 source= tls=false",
		"tcp6 [::]:26 source= tls=false",
		"tcp 127.0.0.1:2525 source=submission tls=false",
		"tcp [::1]:465 source={auth} tls=true",
		"tcp :2600 source= tls=false",
		"tcp localhost:2601 source= tls=false",
		"tcp 127.0.0.1:2602 source= tls=false",
	}
	if got := listenerStrings(cfg); !reflect.DeepEqual(got, want) {
		t.Errorf("listeners:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestKeysAndCertificates loads DKIM keys of each supported kind and the
// certificate in its two layouts, from files written by the test.
func TestKeysAndCertificates(t *testing.T) {
	dir := writeFixtures(t)
	opts := Options{Hostname: testHostname}
	name := dir + "/k.conf"
	cfg := parseOK(t, name, listener+`smtp-server-tls-certificate both.pem
<domain example.com>
    dkim-sign yes
    domain-key rsa1,example.com,rsa.pem
    domain-key rsa8, example.com, rsa8.pem
    domain-key ed1,example.com,`+dir+`/ed25519.pem
</domain>
`, opts)
	if cfg.TLSCertificate == nil || len(cfg.TLSCertificate.Certificate) != 1 || cfg.TLSCertificateFile.Value != dir+"/both.pem" {
		t.Errorf("certificate: %v %+v", cfg.TLSCertificate != nil, cfg.TLSCertificateFile)
	}
	got := domainKeyStrings(&cfg.Domains[0].Settings)
	want := []string{"rsa1 example.com rsa.pem *rsa.PrivateKey", "rsa8 example.com rsa8.pem *rsa.PrivateKey", "ed1 example.com ed25519.pem ed25519.PrivateKey"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("domain keys = %v", got)
	}

	cfg = parseOK(t, name, listener+"smtp-server-tls-certificate cert.pem key.pem\nsmtp-listener 127.0.0.1:465 tls=yes\n", opts)
	if cfg.TLSCertificate == nil || !cfg.Listeners[1].TLS {
		t.Error("certificate from two files not loaded")
	}

	el := parseErr(t, name, listener+`smtp-server-tls-certificate cert.pem
smtp-server-tls-certificate cert.pem ec.pem
smtp-server-tls-certificate both.pem
<domain example.com>
    domain-key s1,example.com,ec.pem
    domain-key s2,example.com,garbage.pem
    domain-key s3,example.com,cert.pem
    domain-key s4,example.com,rsa.pem
    domain-key s4,EXAMPLE.com,rsa8.pem
</domain>
`, opts)
	for _, c := range []struct {
		line int
		msg  string
	}{
		// One file without a key, then a good pair, then a third one.
		{2, "smtp-server-tls-certificate: tls: found a certificate rather than a key in the PEM for the private key"},
		{4, "smtp-server-tls-certificate is already set at line 3"},
		{6, "domain-key: " + dir + "/ec.pem: DKIM keys must be RSA or Ed25519, not *ecdsa.PrivateKey"},
		{7, "domain-key: " + dir + "/garbage.pem: no PEM private key"},
		{8, "domain-key: " + dir + "/cert.pem: not an RSA or Ed25519 private key"},
		{10, "domain-key s4,example.com is already set at line 9"},
	} {
		if !hasDiag(el.Errors, name, c.line, c.msg) {
			t.Errorf("no error at line %d: %q; got:\n%v", c.line, c.msg, el)
		}
	}
}

// TestErrorListFormat checks ErrorList.Error and Diagnostic formatting.
func TestErrorListFormat(t *testing.T) {
	el := parseErr(t, "f.conf", "bogus 1\n<domain *>\nmax-smtp-out x\n</domain>\nbogus2\n", noFiles())
	lines := strings.Split(el.Error(), "\n")
	if len(lines) != len(el.Errors) || len(lines) != 4 {
		t.Fatalf("Error() has %d lines for %d errors:\n%v", len(lines), len(el.Errors), el)
	}
	// At one position, errors keep the order they were found in.
	want := []string{
		`f.conf:1:1: unknown directive "bogus"`,
		"f.conf:1:1: no smtp-listener: at least one is required",
		`f.conf:3:14: max-smtp-out: "x" is not a whole number`,
		`f.conf:5:1: unknown directive "bogus2"`,
	}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("Error():\n%s\nwant:\n%s", el, strings.Join(want, "\n"))
	}
	if s := (Position{}).String(); s != "-" {
		t.Errorf("zero Position = %q", s)
	}
	if (Position{File: "x"}).IsValid() || !(Position{File: "x", Line: 1}).IsValid() {
		t.Error("IsValid")
	}
	ds := []Diagnostic{{Pos: Position{"b", 1, 1}}, {Pos: Position{"a", 2, 1}, Message: "2"}, {Pos: Position{"a", 1, 5}}, {Pos: Position{"a", 2, 1}, Message: "1"}}
	sortDiagnostics(ds)
	var got []string
	for _, d := range ds {
		got = append(got, d.String())
	}
	if w := []string{"a:1:5: ", "a:2:1: 2", "a:2:1: 1", "b:1:1: "}; !reflect.DeepEqual(got, w) {
		t.Errorf("sorted = %q, want %q (stable at one position)", got, w)
	}
}

// TestStringers covers the String methods the CLI prints.
func TestStringers(t *testing.T) {
	if s := (RecordTypes{Delivered: true, Transient: true, Received: true}).String(); s != "d,t,r" {
		t.Errorf("RecordTypes = %q", s)
	}
	var levels []string
	for l := AccessNone; l <= AccessAdmin; l++ {
		levels = append(levels, l.String())
	}
	if strings.Join(levels, ",") != "none,monitor,operator,admin" {
		t.Errorf("levels = %v", levels)
	}
}

// TestSourceRcptLimitUnlimited: PowerMTA's max-rcpt-per-message 0 and
// unlimited in <source> are read as the largest limit Tern keeps.
func TestSourceRcptLimitUnlimited(t *testing.T) {
	for _, v := range []string{"0", "unlimited", "Unlimited"} {
		cfg := parseOK(t, "rcpt.conf", listener+"<source 0/0>\n    max-rcpt-per-message "+v+"\n</source>\n", noFiles())
		if got := cfg.Sources[0].Settings.MaxRcptPerMessage.Value; got != maxRcptLimit {
			t.Errorf("max-rcpt-per-message %s: %d, want %d", v, got, maxRcptLimit)
		}
	}
}
