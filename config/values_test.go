package config

import (
	"math"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

const day = 24 * time.Hour

func TestParseDuration(t *testing.T) {
	good := []struct {
		in   string
		want time.Duration
	}{
		{"4d12h", 4*day + 12*time.Hour},
		{"1w", 7 * day},
		{"90s", 90 * time.Second},
		{"0", 0},
		{"0s", 0},
		{"30s", 30 * time.Second},
		{"10m", 10 * time.Minute},
		{"1h30m", 90 * time.Minute},
		{"1w2d3h4m5s", 9*day + 3*time.Hour + 4*time.Minute + 5*time.Second},
		{"2sec", 2 * time.Second},
		{"3min", 3 * time.Minute},
		{"4hr", 4 * time.Hour},
		{"5day", 5 * day},
		{"1H", time.Hour},         // units are case-insensitive
		{" 5m ", 5 * time.Minute}, // surrounding space is trimmed
		{"2562047h", 2562047 * time.Hour},
	}
	for _, c := range good {
		got, err := parseDuration(c.in)
		if err != nil || got != c.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	bad := []struct{ in, err string }{
		{"", "empty duration"},
		{"10", `"10" has no unit (use s, m, h, d or w, as in 10s)`},
		{"5m10", `"5m10" has no unit`},
		{"m", `"m" is not a duration`},
		{"-1m", `"-1m" is not a duration`},
		{"1.5h", `"1.5h" is not a duration (use whole numbers`},
		{"1y", `"1y": unknown unit "y"`},
		{"1hh", `unknown unit "hh"`},
		{"1 h", `"1 h" is not a duration`},
		{"forever", `is not a duration`},
		{"99999999999999999999s", "number out of range"},
		{"9223372036854775807s", "is too long"},
		{"2562048h", "is too long"},
		{"2562047h48m", "is too long"},
	}
	for _, c := range bad {
		got, err := parseDuration(c.in)
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("parseDuration(%q) = %v, %v; want an error containing %q", c.in, got, err, c.err)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{90 * time.Second, "1m30s"},
		{4*day + 12*time.Hour, "4d12h"},
		{7 * day, "1w"},
		{8*day + time.Second, "1w1d1s"},
		{1500 * time.Millisecond, "1s500ms"},
		{Never, "never"},
	} {
		if got := FormatDuration(c.d); got != c.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", c.d, got, c.want)
		}
		if c.d == Never || c.d%time.Second != 0 {
			continue
		}
		back, err := parseDuration(c.want)
		if err != nil || back != c.d {
			t.Errorf("parseDuration(FormatDuration(%v)) = %v, %v", c.d, back, err)
		}
	}
}

func TestParseDurationList(t *testing.T) {
	good := []struct {
		in   string
		want []time.Duration
	}{
		{"10m", []time.Duration{10 * time.Minute}},
		{"5m,10m,1h,4h", []time.Duration{5 * time.Minute, 10 * time.Minute, time.Hour, 4 * time.Hour}},
		{"5m, 10m , 1h", []time.Duration{5 * time.Minute, 10 * time.Minute, time.Hour}},
		// The list is kept as written; that the last interval repeats is
		// the delivery scheduler's business.
		{"1h,1h", []time.Duration{time.Hour, time.Hour}},
	}
	for _, c := range good {
		got, err := parseDurationList(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseDurationList(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	bad := []struct{ in, err string }{
		{"", "has an empty entry"},
		{"5m,", "has an empty entry"},
		{",5m", "has an empty entry"},
		{"5m,,1h", "has an empty entry"},
		{"0", "a retry interval must be longer than 0"},
		{"5m,0s", "a retry interval must be longer than 0"},
		{"5m,10", `"10" has no unit`},
		{"5m;10m", `"5m;10m" is not a duration`},
	}
	for _, c := range bad {
		got, err := parseDurationList(c.in)
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("parseDurationList(%q) = %v, %v; want an error containing %q", c.in, got, err, c.err)
		}
	}
}

func TestParseRate(t *testing.T) {
	good := []struct {
		in        string
		want      Rate
		perSecond float64
		str       string
	}{
		{"100/h", Rate{100, time.Hour}, 100.0 / 3600, "100/h"},
		{"20/15m", Rate{20, 15 * time.Minute}, 20.0 / 900, "20/15m"},
		{"1/m", Rate{1, time.Minute}, 1.0 / 60, "1/m"},
		{"5/s", Rate{5, time.Second}, 5, "5/s"},
		{"3/2sec", Rate{3, 2 * time.Second}, 1.5, "3/2s"},
		{"60/min", Rate{60, time.Minute}, 1, "60/m"},
		{"10/hr", Rate{10, time.Hour}, 10.0 / 3600, "10/h"},
		{"1000/day", Rate{1000, day}, 1000.0 / 86400, "1000/d"},
		{"7/D", Rate{7, day}, 7.0 / 86400, "7/d"},
		{"unlimited", Rate{}, math.Inf(1), "unlimited"},
		{"Unlimited", Rate{}, math.Inf(1), "unlimited"},
	}
	for _, c := range good {
		got, err := parseRate(c.in)
		if err != nil || got != c.want {
			t.Errorf("parseRate(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		if ps := got.PerSecond(); math.Abs(ps-c.perSecond) > 1e-12 && !(math.IsInf(ps, 1) && math.IsInf(c.perSecond, 1)) {
			t.Errorf("parseRate(%q).PerSecond() = %v, want %v", c.in, ps, c.perSecond)
		}
		if s := got.String(); s != c.str {
			t.Errorf("parseRate(%q).String() = %q, want %q", c.in, s, c.str)
		}
		if got.Unlimited() != (c.in == "unlimited" || c.in == "Unlimited") {
			t.Errorf("parseRate(%q).Unlimited() = %v", c.in, got.Unlimited())
		}
		if back, err := parseRate(c.str); err != nil || back != got {
			t.Errorf("parseRate(String()) = %+v, %v; want %+v", back, err, got)
		}
	}
	bad := []struct{ in, err string }{
		{"", "is not a rate (write N/unit"},
		{"100", `"100" is not a rate (write N/unit`},
		{"0/h", `"0" is not a positive count`},
		{"-1/h", `"-1" is not a positive count`},
		{"x/h", `"x" is not a positive count`},
		{"/h", `"" is not a positive count`},
		{"1/", `unknown unit ""`},
		{"1/0m", `bad interval "0m"`},
		{"1/y", `unknown unit "y"`},
		{"1/w", `unknown unit "w"`}, // a week is not a rate unit
		{"1/1.5h", `unknown unit ".5h"`},
		{"1/15", `unknown unit ""`},
		{"1/99999999999999999d", "is too long"},
		{"1/9223372036854775807s", "is too long"},
	}
	for _, c := range bad {
		got, err := parseRate(c.in)
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("parseRate(%q) = %+v, %v; want an error containing %q", c.in, got, err, c.err)
		}
	}
}

func TestParseSize(t *testing.T) {
	good := []struct {
		in   string
		want Size
		str  string
	}{
		{"40K", 40 << 10, "40K"},
		{"25M", 25 << 20, "25M"},
		{"1G", 1 << 30, "1G"},
		{"25m", 25 << 20, "25M"},
		{"1000", 1000, "1000"},
		{"1024", 1024, "1K"},
		{"0", 0, "0"},
		{"2048M", 2 << 30, "2G"},
		{"unlimited", Unlimited, "unlimited"},
		{"UNLIMITED", Unlimited, "unlimited"},
		{"8589934591G", 8589934591 << 30, "8589934591G"},
	}
	for _, c := range good {
		got, err := parseSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("parseSize(%q) = %v, %v; want %v", c.in, int64(got), err, int64(c.want))
			continue
		}
		if s := got.String(); s != c.str {
			t.Errorf("parseSize(%q).String() = %q, want %q", c.in, s, c.str)
		}
	}
	bad := []struct{ in, err string }{
		{"", "is not a size"},
		{"K", `"K" is not a size (write 40K, 25M, 1G or unlimited)`},
		{"-1", "is not a size"},
		{"1.5M", "is not a size"},
		{"1T", "is not a size"},
		{"25 M", "is not a size"},
		{"8589934592G", "is too large"},
		{"99999999999999999999", "is not a size"},
	}
	for _, c := range bad {
		got, err := parseSize(c.in)
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("parseSize(%q) = %v, %v; want an error containing %q", c.in, got, err, c.err)
		}
	}
}

func TestParseBool(t *testing.T) {
	for in, want := range map[string]bool{"yes": true, "no": false, "true": true, "false": false, "YES": true, "No": false, "True": true} {
		if got, err := parseBool(in); err != nil || got != want {
			t.Errorf("parseBool(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"1":     `"1" is not yes or no`,
		"on":    `"on" is not yes or no`,
		"ys":    `"ys" is not yes or no (did you mean "yes"?)`,
		"yess":  `"yess" is not yes or no (did you mean "yes"?)`,
		"flase": `"flase" is not yes or no (did you mean "false"?)`,
		"":      `"" is not yes or no`,
	} {
		if _, err := parseBool(in); err == nil || err.Error() != msg {
			t.Errorf("parseBool(%q) error = %v, want %q", in, err, msg)
		}
	}
}

func TestParseCIDR(t *testing.T) {
	good := []struct {
		in     string
		want   string
		masked bool
	}{
		{"0/0", "0.0.0.0/0", false},
		{"10/8", "10.0.0.0/8", false},
		{"172.16/12", "172.16.0.0/12", false},
		{"192.168.1/24", "192.168.1.0/24", false},
		{"192.0.2.7", "192.0.2.7/32", false},
		{"192.0.2.0/24", "192.0.2.0/24", false},
		{"2001:db8::/32", "2001:db8::/32", false},
		{"::1", "::1/128", false},
		{"::/0", "::/0", false},
		{"::ffff:192.0.2.7", "192.0.2.7/32", false}, // IPv4-mapped is IPv4
		// Host bits are cleared and reported, so the caller can warn.
		{"192.0.2.7/24", "192.0.2.0/24", true},
		{"2001:db8::1/32", "2001:db8::/32", true},
		{"10.1.2.3/8", "10.0.0.0/8", true},
	}
	for _, c := range good {
		got, masked, err := parseCIDR(c.in)
		if err != nil || got != netip.MustParsePrefix(c.want) || masked != c.masked {
			t.Errorf("parseCIDR(%q) = %v, %v, %v; want %s, %v", c.in, got, masked, err, c.want, c.masked)
		}
	}
	bad := []struct{ in, err string }{
		{"", `"" is not an IP address or CIDR`},
		{"/8", "is not an IP address or CIDR"},
		{"10./8", "is not an IP address or CIDR"},
		{"256/8", "is not an IP address or CIDR"},
		{"example.com", "is not an IP address or CIDR"},
		{"fe80::1%eth0", "is not an IP address or CIDR"},
		{"10/33", `"10/33": prefix length must be 0 to 32`},
		{"10/-1", "prefix length must be 0 to 32"},
		{"10/x", "prefix length must be 0 to 32"},
		{"::1/129", "prefix length must be 0 to 128"},
	}
	for _, c := range bad {
		got, _, err := parseCIDR(c.in)
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("parseCIDR(%q) = %v, %v; want an error containing %q", c.in, got, err, c.err)
		}
	}
}

func TestParseHostList(t *testing.T) {
	good := []struct {
		in   string
		want HostList
		str  string
	}{
		{"a.example, b.example; [192.0.2.1]:2525",
			HostList{{{Host: "a.example"}, {Host: "b.example"}}, {{Host: "192.0.2.1", Port: 2525, Literal: true}}},
			"a.example, b.example; [192.0.2.1]:2525"},
		{"relay.example", HostList{{{Host: "relay.example"}}}, "relay.example"},
		{"Relay.Example:587", HostList{{{Host: "relay.example", Port: 587}}}, "relay.example:587"},
		{"a;b;c", HostList{{{Host: "a"}}, {{Host: "b"}}, {{Host: "c"}}}, "a; b; c"},
		{"[2001:db8::25]:26, [::1]", HostList{{{Host: "2001:db8::25", Port: 26, Literal: true}, {Host: "::1", Literal: true}}}, "[2001:db8::25]:26, [::1]"},
		{"[::ffff:192.0.2.1]", HostList{{{Host: "192.0.2.1", Literal: true}}}, "[192.0.2.1]"},
	}
	for _, c := range good {
		got, err := parseHostList(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseHostList(%q) = %#v, %v; want %#v", c.in, got, err, c.want)
			continue
		}
		if s := got.String(); s != c.str {
			t.Errorf("parseHostList(%q).String() = %q, want %q", c.in, s, c.str)
		}
		if back, err := parseHostList(c.str); err != nil || !reflect.DeepEqual(back, got) {
			t.Errorf("parseHostList(String()) = %#v, %v", back, err)
		}
	}
	bad := []struct{ in, err string }{
		{"", "has an empty host entry"},
		{"a,", "has an empty host entry"},
		{";", "has an empty host entry"},
		{"a;;b", "has an empty host entry"},
		{"[192.0.2.1", `"[192.0.2.1": missing ]`},
		{"[mx.example]", `"mx.example" is not an IP address`},
		{"[]", `"" is not an IP address`},
		{"[192.0.2.1]x", `unexpected "x" after ]`},
		{"[192.0.2.1]:", "port must be 1 to 65535"},
		{"a.example:0", "port must be 1 to 65535"},
		{"a.example:65536", "port must be 1 to 65535"},
		{"a.example:smtp", "port must be 1 to 65535"},
		{"192.0.2.1:25:1", "port must be 1 to 65535"},
		{"mx..example", `"mx..example" is not a host name (write an IP address as [192.0.2.1])`},
		{"mx example", "is not a host name"},
	}
	for _, c := range bad {
		got, err := parseHostList(c.in)
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("parseHostList(%q) = %v, %v; want an error containing %q", c.in, got, err, c.err)
		}
	}
}

func TestParseRegex(t *testing.T) {
	cases := []struct {
		in      string
		match   []string
		noMatch []string
	}{
		// Case-insensitive by default.
		{`/421 .*too many/`, []string{"421 4.7.0 Too Many connections", "421 TOO MANY"}, []string{"450 too many"}},
		{`/^550/`, []string{"550 5.1.1 no"}, []string{" 550"}},
		{`/@Example\.COM$/`, []string{"a@example.com"}, []string{"a@example.org"}},
		// (?-i) makes it case-sensitive.
		{`/(?-i)TS01/`, []string{"421 [TS01] try later"}, []string{"421 [ts01] try later"}},
		// Spaces and escaped slashes are part of the expression.
		{`/a\/b c/`, []string{"x A/B C y"}, nil},
		{`//`, []string{"", "anything"}, nil},
	}
	for _, c := range cases {
		re, err := parseRegex(c.in)
		if err != nil {
			t.Errorf("parseRegex(%q): %v", c.in, err)
			continue
		}
		if re.String() != c.in || re.Source != c.in {
			t.Errorf("parseRegex(%q).String() = %q", c.in, re.String())
		}
		for _, s := range c.match {
			if !re.MatchString(s) {
				t.Errorf("%s does not match %q", c.in, s)
			}
		}
		for _, s := range c.noMatch {
			if re.MatchString(s) {
				t.Errorf("%s matches %q", c.in, s)
			}
		}
	}
	bad := []struct{ in, err string }{
		{"", "is not a regex: write it between slashes"},
		{"/", "is not a regex: write it between slashes"},
		{"abc", `"abc" is not a regex: write it between slashes, as /text/`},
		{"/abc", "is not a regex"},
		{"/abc/i", "is not a regex"},
		{"/(/", "bad regex /(/: missing closing ): `(`"},
		{"/a**/", "bad regex /a**/: invalid nested repetition operator"},
		{`/\p{Foo}/`, "bad regex"},
	}
	for _, c := range bad {
		_, err := parseRegex(c.in)
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("parseRegex(%q) error = %v, want one containing %q", c.in, err, c.err)
		}
	}
}

func TestParseDomainPattern(t *testing.T) {
	good := []struct {
		in   string
		want DomainPattern
		str  string
	}{
		{"*", DomainPattern{Kind: PatternAny}, "*"},
		{"example.com", DomainPattern{PatternExact, "example.com"}, "example.com"},
		{"Example.COM.", DomainPattern{PatternExact, "example.com"}, "example.com"},
		{"*.example.com", DomainPattern{PatternSubdomains, "example.com"}, "*.example.com"},
		{"[*.]example.com", DomainPattern{PatternSelfAndSubdomains, "example.com"}, "[*.]example.com"},
		{"[*.]co.uk", DomainPattern{PatternSelfAndSubdomains, "co.uk"}, "[*.]co.uk"},
		{"localhost", DomainPattern{PatternExact, "localhost"}, "localhost"},
	}
	for _, c := range good {
		got, err := parseDomainPattern(c.in)
		if err != nil || got != c.want || got.String() != c.str {
			t.Errorf("parseDomainPattern(%q) = %+v (%s), %v; want %+v (%s)", c.in, got, got, err, c.want, c.str)
		}
	}
	for _, in := range []string{"", "*.*.example.com", "a*b.com", "[*.]*", "[*.]", "*.", "ex ample.com", "example..com", "[*]example.com", "*example.com"} {
		if in == "*." {
			// "*." is "*" written as a fully-qualified name; accepted.
			continue
		}
		if got, err := parseDomainPattern(in); err == nil {
			t.Errorf("parseDomainPattern(%q) = %+v, want an error", in, got)
		}
	}
}

func TestDomainPatternMatch(t *testing.T) {
	must := func(s string) DomainPattern {
		p, err := parseDomainPattern(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		pattern string
		domain  string
		want    bool
	}{
		{"*", "example.com", true},
		{"*", "com", true},
		{"example.com", "example.com", true},
		{"example.com", "mail.example.com", false},
		{"example.com", "example.co", false},
		{"example.com", "xexample.com", false},
		{"*.example.com", "example.com", false},
		{"*.example.com", "mail.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "badexample.com", false},
		{"*.example.com", "example.com.evil", false},
		{"[*.]example.com", "example.com", true},
		{"[*.]example.com", "mail.example.com", true},
		{"[*.]example.com", "a.b.example.com", true},
		{"[*.]example.com", "notexample.com", false},
		{"[*.]example.com", "example.org", false},
		{"[*.]example.com", "com", false},
		{"*.co.uk", "yahoo.co.uk", true},
		{"*.co.uk", "co.uk", false},
	}
	for _, c := range cases {
		if got := must(c.pattern).Match(c.domain); got != c.want {
			t.Errorf("%s.Match(%q) = %v, want %v", c.pattern, c.domain, got, c.want)
		}
	}
}

func TestSuggest(t *testing.T) {
	candidates := []string{"max-smtp-out", "max-msg-rate", "bounce-after", "retry-after", "smtp-hosts"}
	for in, want := range map[string]string{
		"max-smtp-outt": "max-smtp-out",
		"MAX-SMTP-OUT":  "max-smtp-out",
		"bounce-afer":   "bounce-after",
		"retry-afterr":  "retry-after",
		"smtp-host":     "smtp-hosts",
		"frobnicate":    "",
		"x":             "",
	} {
		if got := suggest(in, candidates); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
	if got := suggest("anything", nil); got != "" {
		t.Errorf("suggest with no candidates = %q", got)
	}
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"a", "", 1}, {"", "abc", 3}, {"kitten", "sitting", 3}, {"flaw", "lawn", 2}, {"same", "same", 0}} {
		if got := editDistance(c.a, c.b); got != c.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.d)
		}
	}
}

func TestSettingOrAndInherit(t *testing.T) {
	set := Setting[int]{Value: 5, Set: true}
	fallback := Setting[int]{Value: 9, Set: true}
	if got := set.Or(fallback); got != set {
		t.Errorf("set.Or = %+v", got)
	}
	if got := def(1).Or(fallback); got != fallback {
		t.Errorf("unset.Or = %+v", got)
	}

	child := DefaultDomainSettings()
	child.MaxSMTPOut = Setting[int]{Value: 3, Set: true}
	parent := DefaultDomainSettings()
	parent.MaxSMTPOut = Setting[int]{Value: 7, Set: true}
	parent.QueuePriority = Setting[int]{Value: 80, Set: true}
	got := child.Inherit(parent)
	if got.MaxSMTPOut.Value != 3 || got.QueuePriority.Value != 80 || !got.QueuePriority.Set || got.BounceAfter.Value != 108*time.Hour || got.BounceAfter.Set {
		t.Errorf("DomainSettings.Inherit: max-smtp-out %+v, queue-priority %+v, bounce-after %+v", got.MaxSMTPOut, got.QueuePriority, got.BounceAfter)
	}
	if child.QueuePriority.Set {
		t.Error("Inherit modified its receiver")
	}

	src := DefaultSourceSettings()
	src.RequireAuth = Setting[bool]{Value: true, Set: true}
	ps := DefaultSourceSettings()
	ps.RequireAuth = Setting[bool]{Value: false, Set: true}
	ps.MaxMessageSize = Setting[Size]{Value: 10 << 20, Set: true}
	gs := src.Inherit(ps)
	if !gs.RequireAuth.Value || gs.MaxMessageSize.Value != 10<<20 || gs.SMTPService.Set {
		t.Errorf("SourceSettings.Inherit = %+v", gs)
	}
}

// TestDefaultsAreUnset checks that the default settings mark nothing as set:
// precedence code relies on it.
func TestDefaultsAreUnset(t *testing.T) {
	for _, v := range []any{DefaultDomainSettings(), DefaultSourceSettings()} {
		rv := reflect.ValueOf(v)
		for i := 0; i < rv.NumField(); i++ {
			if rv.Field(i).FieldByName("Set").Bool() {
				t.Errorf("%T.%s is set in the defaults", v, rv.Type().Field(i).Name)
			}
		}
	}
}
