package config

import (
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// TestRollupName checks which rollup an MX host gets: the most specific
// pattern wins whatever the file order, as for <domain> patterns.
func TestRollupName(t *testing.T) {
	src := listener + `<mx-rollup-list>
    mx *.google.com google.rollup
    mx [*.]l.google.com gmail.rollup
    mx aspmx.l.google.com workspace.rollup
    mx *.l.google.com sub.rollup
</mx-rollup-list>
<mx-rollup-list>
    mx [*.]yahoodns.net yahoo.rollup
    mx *.am0.yahoodns.net yahoo-am0.rollup
    mx *.google.com google.rollup
</mx-rollup-list>
`
	cfg := parseOK(t, "rollup.conf", src, noFiles())
	if n := len(cfg.MXRollups); n != 6 {
		t.Errorf("%d entries, want 6 (the repeated *.google.com line adds none)", n)
	}
	for host, want := range map[string]string{
		"aspmx.l.google.com":           "workspace.rollup", // exact
		"ASPMX.L.Google.COM.":          "workspace.rollup", // case and trailing dot
		"l.google.com":                 "gmail.rollup",     // [*.]x matches x itself
		"alt1.aspmx.l.google.com":      "gmail.rollup",     // [*.]x before *.x
		"gmail-smtp-in.l.google.com":   "gmail.rollup",
		"smtp.google.com":              "google.rollup", // the longer suffixes do not match
		"yahoodns.net":                 "yahoo.rollup",
		"mta5.am0.yahoodns.net":        "yahoo-am0.rollup", // longest suffix
		"mx-aol.mail.gm0.yahoodns.net": "yahoo.rollup",
		"google.com":                   "", // *.google.com is subdomains only
		"mx.example.com":               "",
		"notyahoodns.net":              "",
		"":                             "",
	} {
		got, ok := cfg.RollupName(host)
		if got != want || ok != (want != "") {
			t.Errorf("RollupName(%q) = %q, %v; want %q", host, got, ok, want)
		}
	}
	// Without entries nothing rolls up.
	if name, ok := (&Config{}).RollupName("aspmx.l.google.com"); ok || name != "" {
		t.Errorf("empty config: RollupName = %q, %v", name, ok)
	}
	// The first of two entries with one pattern wins (a hand-made Config:
	// Load refuses two names for one pattern).
	c := &Config{MXRollups: []*MXRollup{
		{Pattern: DomainPattern{Kind: PatternSubdomains, Domain: "x.example"}, Name: "first"},
		{Pattern: DomainPattern{Kind: PatternSubdomains, Domain: "x.example"}, Name: "second"},
	}}
	if name, _ := c.RollupName("mx.x.example"); name != "first" {
		t.Errorf("tie: RollupName = %q, want first", name)
	}
}

func TestSourceIPLimitsFor(t *testing.T) {
	l := SourceIPLimits{
		{Prefix: allIPv4, N: 10},
		{Prefix: allIPv6, N: 10},
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), N: 4},
		{Prefix: netip.MustParsePrefix("192.0.2.7/32"), N: 0}, // unlimited
		{Prefix: netip.MustParsePrefix("2001:db8::/32"), N: 2},
	}
	for ip, want := range map[string]int{
		"198.51.100.1":         10,
		"192.0.2.1":            4,
		"192.0.2.7":            0, // the most specific says unlimited
		"::ffff:192.0.2.9":     4, // IPv4-mapped counts as IPv4
		"2001:db8::25":         2,
		"2001:db9::25":         10,
		"::ffff:198.51.100.10": 10,
	} {
		n, ok := l.For(netip.MustParseAddr(ip))
		if n != want || ok != (want != 0) {
			t.Errorf("For(%s) = %d, %v; want %d", ip, n, ok, want)
		}
	}
	v4only := SourceIPLimits{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), N: 3}}
	if n, ok := v4only.For(netip.MustParseAddr("2001:db8::1")); ok || n != 0 {
		t.Errorf("no prefix contains the address: For = %d, %v", n, ok)
	}
	if n, ok := SourceIPLimits(nil).For(netip.MustParseAddr("192.0.2.1")); ok || n != 0 {
		t.Errorf("empty list: For = %d, %v", n, ok)
	}
}

func TestSourceIPRatesFor(t *testing.T) {
	hour := func(n int) Rate { return Rate{Count: n, Interval: time.Hour} }
	l := SourceIPRates{
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Rate: hour(100)},
		{Prefix: netip.MustParsePrefix("192.0.2.128/25"), Rate: Rate{}}, // unlimited
		{Prefix: netip.MustParsePrefix("192.0.2.200/29"), Rate: hour(5)},
	}
	for ip, want := range map[string]Rate{
		"192.0.2.1":   hour(100),
		"192.0.2.130": {},
		"192.0.2.201": hour(5),
		"10.0.0.1":    {},
	} {
		r, ok := l.For(netip.MustParseAddr(ip))
		if r != want || ok != !want.Unlimited() {
			t.Errorf("For(%s) = %v, %v; want %v", ip, r, ok, want)
		}
	}
}

// TestSourceIPLines checks how the lines of a source-ip-* directive end up
// in the setting: in file order, a line without a CIDR as 0.0.0.0/0 and
// ::/0, all with their own positions and the Setting at the first line.
func TestSourceIPLines(t *testing.T) {
	src := listener + `<domain gmail.rollup>
    source-ip-max-smtp-out 192.0.2.0/24 2
    source-ip-max-smtp-out 5
    source-ip-max-smtp-out 192.0.2.7 unlimited
    source-ip-max-msg-rate 10/8 1000/h
</domain>
<mx-rollup-list>
    mx *.google.com gmail.rollup
</mx-rollup-list>
`
	cfg := parseOK(t, "sip.conf", src, noFiles())
	st := findDomain(t, cfg.Domains, "gmail.rollup").Settings
	lim := st.SourceIPMaxSMTPOut
	want := SourceIPLimits{
		{Pos: Position{"sip.conf", 3, 5}, Prefix: netip.MustParsePrefix("192.0.2.0/24"), N: 2},
		{Pos: Position{"sip.conf", 4, 5}, Prefix: allIPv4, N: 5},
		{Pos: Position{"sip.conf", 4, 5}, Prefix: allIPv6, N: 5},
		{Pos: Position{"sip.conf", 5, 5}, Prefix: netip.MustParsePrefix("192.0.2.7/32"), N: 0},
	}
	if !reflect.DeepEqual(lim.Value, want) || !lim.Set || lim.Pos.Line != 3 {
		t.Errorf("source-ip-max-smtp-out = %+v", lim)
	}
	if got := lim.Value.String(); got != "192.0.2.0/24 2; 5; 192.0.2.7/32 unlimited" {
		t.Errorf("String() = %q", got)
	}
	if got := st.SourceIPMaxMsgRate.Value.String(); got != "10.0.0.0/8 1000/h" {
		t.Errorf("source-ip-max-msg-rate = %q", got)
	}
	if got := st.SourceIPMaxConnectRate; got.Set || got.Value.String() != "unlimited" {
		t.Errorf("source-ip-max-connect-rate unset = %+v (%q)", got, got.Value.String())
	}
	// The same pair from two lines is written out, not folded into one
	// value: it is not what a line without a CIDR means.
	two := SourceIPLimits{{Pos: Position{Line: 1}, Prefix: allIPv4, N: 5}, {Pos: Position{Line: 2}, Prefix: allIPv6, N: 5}}
	if got := two.String(); got != "0.0.0.0/0 5; ::/0 5" {
		t.Errorf("two lines: String() = %q", got)
	}
}

// TestReplyActionsParsed checks what each action sets, and the defaults of
// For and Threshold.
func TestReplyActionsParsed(t *testing.T) {
	unset := Setting[time.Duration]{Value: DefaultReplyFor}
	at := func(d time.Duration) Setting[time.Duration] {
		return Setting[time.Duration]{Value: d, Pos: Position{"r.conf", 6, 5}, Set: true}
	}
	for _, c := range []struct {
		actions  string
		want     ReplyActions
		stateful bool
	}{
		{"mode=backoff", ReplyActions{Mode: ModeBackoff, For: unset}, true},
		{"backoff", ReplyActions{Mode: ModeBackoff, For: unset}, true},
		{"Mode=Normal", ReplyActions{Mode: ModeNormal, For: unset}, false},
		{"backoff,for=2h", ReplyActions{Mode: ModeBackoff, For: at(2 * time.Hour), BackoffToNormalAfter: at(2 * time.Hour)}, true},
		{"backoff backoff-to-normal-after=never", ReplyActions{Mode: ModeBackoff, For: unset, BackoffToNormalAfter: at(Never)}, true},
		{"suspend", ReplyActions{Suspend: true, For: unset}, true},
		{"suspend,for=15m", ReplyActions{Suspend: true, For: at(15 * time.Minute)}, true},
		{"disable-source-ip,reenable-after=1d", ReplyActions{DisableSourceIP: true, For: at(24 * time.Hour)}, true},
		{"reroute=MTA2", ReplyActions{Reroute: "MTA2", For: unset}, true},
		{"bounce-queue", ReplyActions{BounceQueue: true, For: unset}, true},
		{"backoff,disable-source-ip,threshold=5/10m", ReplyActions{Mode: ModeBackoff, DisableSourceIP: true, For: unset,
			Threshold: Setting[Rate]{Value: Rate{Count: 5, Interval: 10 * time.Minute}, Pos: Position{"r.conf", 6, 5}, Set: true}}, true},
		{"defer-queue", ReplyActions{DeferQueue: true, For: unset}, false},
		{"bounce-rcpt", ReplyActions{BounceRcpt: true, For: unset}, false},
		{"skip-mx,disable-source-ip", ReplyActions{SkipMX: true, DisableSourceIP: true, For: unset}, true},
	} {
		src := listener + `<virtual-mta mta2>
</virtual-mta>
<smtp-pattern-list p>
    # one rule
    reply /^421 / ` + c.actions + `
</smtp-pattern-list>
`
		cfg, err := Parse("r.conf", []byte(src), noFiles())
		if err != nil {
			t.Errorf("%s: %v", c.actions, err)
			continue
		}
		got := cfg.SMTPPatternLists[0].Rules[0].Actions
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", c.actions, got, c.want)
		}
		if got.Stateful() != c.stateful {
			t.Errorf("%s: Stateful() = %v", c.actions, got.Stateful())
		}
	}
}

// TestDirectivesProviderValues checks the settings view of the new <domain>
// directives, set and default.
func TestDirectivesProviderValues(t *testing.T) {
	src := listener + `<mx-rollup-list>
    mx *.yahoodns.net yahoo.rollup
</mx-rollup-list>
<domain yahoo.rollup>
    source-ip-max-smtp-out 3
    source-ip-max-smtp-out 192.0.2.0/25 1
    source-ip-max-connect-rate 192.0.2.0/24 unlimited
    notify-of-delay never
    disable-mx-rollup yes
</domain>
`
	cfg := parseOK(t, "v.conf", src, noFiles())
	got := map[string]DirectiveValue{}
	for _, d := range findDomain(t, cfg.Domains, "yahoo.rollup").Settings.Directives() {
		got[d.Name] = d
	}
	for name, want := range map[string]struct {
		value string
		set   bool
	}{
		"source-ip-max-smtp-out":     {"3; 192.0.2.0/25 1", true},
		"source-ip-max-msg-rate":     {"unlimited", false},
		"source-ip-max-connect-rate": {"192.0.2.0/24 unlimited", true},
		"notify-of-delay":            {"never", true},
		"disable-mx-rollup":          {"yes", true},
		"initial-smtp-out":           {"2", false},
		"adaptive-smtp-out":          {"yes", false},
		"mx-connection-attempts":     {"5", false},
		"host-down-after":            {"2", false},
	} {
		d := got[name]
		if d.Value != want.value || d.Set != want.set {
			t.Errorf("%s = %+v, want %q (set %v)", name, d, want.value, want.set)
		}
	}
	if d := got["source-ip-max-smtp-out"]; d.Pos.Line != 6 {
		t.Errorf("source-ip-max-smtp-out set at %s, want line 6 (its first line)", d.Pos)
	}
}

// TestMXConnectionLimit checks the top-level limit's spellings.
func TestMXConnectionLimit(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "unlimited": 0, "Unlimited": 0, "25": 25, "1000000": 1000000} {
		cfg := parseOK(t, "l.conf", listener+"mx-connection-limit "+in+"\n", noFiles())
		if got := cfg.MXConnectionLimit; got.Value != want || !got.Set {
			t.Errorf("mx-connection-limit %s = %+v, want %d", in, got, want)
		}
	}
	cfg := parseOK(t, "l.conf", listener, noFiles())
	if got := cfg.MXConnectionLimit; got.Value != 0 || got.Set {
		t.Errorf("default mx-connection-limit = %+v", got)
	}
	el := parseErr(t, "l.conf", listener+"mx-connection-limit 1000001\n", noFiles())
	if !hasDiag(el.Errors, "l.conf", 2, "1000001 is out of range (0 to 1000000, or unlimited)") {
		t.Errorf("errors: %v", el)
	}
}
