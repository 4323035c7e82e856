package vmta_test

import (
	"errors"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/vmta"
)

const selectConf = `host-name test.example
smtp-listener 127.0.0.1:2525
smtp-listener 127.0.0.1:587 source=submission

<virtual-mta mta1>
    smtp-source-host 192.0.2.1 mta1.test.example
</virtual-mta>
<virtual-mta mta2>
    smtp-source-host 192.0.2.2 mta2.test.example
</virtual-mta>
<virtual-mta mta3>
    smtp-source-host 192.0.2.3 mta3.test.example
</virtual-mta>
<virtual-mta-pool pool1>
    virtual-mta mta1
    virtual-mta mta2
    virtual-mta mta3
</virtual-mta-pool>

<pattern-list routes>
    mail-from /@news\.example\.com$/ virtual-mta=mta2
    rcpt-to /@gmail\.com$/ virtual-mta=pool1
    header x-stream /^transactional$/ virtual-mta=mta1
    header X-Case /(?-i)^Exact$/ virtual-mta=mta3
    mail-from /@/ virtual-mta=mta3
</pattern-list>
<pattern-list first>
    rcpt-to /example/ virtual-mta=mta1
    rcpt-to /example\.org/ virtual-mta=mta2
</pattern-list>

# Every IPv4 client: header honoured, pattern list, default pool1.
<source 0/0>
    process-x-virtual-mta yes
    pattern-list routes
    default-virtual-mta pool1
</source>
# This one: no header processing, no pattern list, default mta3.
<source 192.0.2.50>
    process-x-virtual-mta no
    default-virtual-mta mta3
</source>
# A listener's source: default mta1, which beats the IP's default.
<source submission>
    default-virtual-mta mta1
</source>
`

// TestPatternListMatch checks rule matching on its own: by sender, by any
// recipient, by header; first match wins; case-insensitive unless (?-i).
func TestPatternListMatch(t *testing.T) {
	r := build(t, selectConf)
	routes, ok := r.PatternList("ROUTES")
	if !ok {
		t.Fatal("pattern list routes not found (names are case-insensitive)")
	}
	first, _ := r.PatternList("first")
	hdr := func(kv ...string) func(string) []string {
		h := textproto.MIMEHeader{}
		for i := 0; i < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return h.Values
	}
	tests := []struct {
		name string
		pl   *vmta.PatternList
		msg  vmta.MessageInfo
		want string // "" for no match
	}{
		{"mail-from", routes, vmta.MessageInfo{MailFrom: "a@news.example.com"}, "mta2"},
		{"mail-from case-insensitive", routes, vmta.MessageInfo{MailFrom: "A@NEWS.Example.COM"}, "mta2"},
		{"first match wins over a later rule", routes, vmta.MessageInfo{MailFrom: "a@news.example.com", RcptTo: []string{"b@gmail.com"}}, "mta2"},
		{"rcpt-to: any recipient", routes, vmta.MessageInfo{RcptTo: []string{"x@yahoo.com", "b@GMail.com"}}, "pool1"},
		{"rcpt-to before header (rule order)", routes, vmta.MessageInfo{RcptTo: []string{"b@gmail.com"}, Header: hdr("X-Stream", "transactional")}, "pool1"},
		{"header, any case of name and value", routes, vmta.MessageInfo{Header: hdr("x-STREAM", "Transactional")}, "mta1"},
		{"header: any of its values", routes, vmta.MessageInfo{Header: hdr("X-Stream", "bulk", "X-Stream", "transactional")}, "mta1"},
		{"header value must match the regex", routes, vmta.MessageInfo{Header: hdr("X-Stream", "transactional-ish")}, ""},
		{"(?-i) is case-sensitive", routes, vmta.MessageInfo{Header: hdr("X-Case", "exact")}, ""},
		{"(?-i) matches the exact case", routes, vmta.MessageInfo{Header: hdr("X-Case", "Exact")}, "mta3"},
		{"catch-all last rule", routes, vmta.MessageInfo{MailFrom: "a@elsewhere.org"}, "mta3"},
		{"null sender matches nothing", routes, vmta.MessageInfo{}, ""},
		{"nil Header: header rules skipped", routes, vmta.MessageInfo{RcptTo: []string{"a@yahoo.com"}}, ""},
		{"first rule wins when both match", first, vmta.MessageInfo{RcptTo: []string{"a@example.org"}}, "mta1"},
		{"no match", first, vmta.MessageInfo{RcptTo: []string{"a@other.net"}}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tc.pl.Match(tc.msg)
			if ok != (tc.want != "") || got != tc.want {
				t.Errorf("Match = %q, %v; want %q", got, ok, tc.want)
			}
		})
	}
}

// TestSelect walks the selection order step by step.
func TestSelect(t *testing.T) {
	r := build(t, selectConf)
	ipAll := r.Source(netip.MustParseAddr("203.0.113.9"))
	ipQuiet := r.Source(netip.MustParseAddr("192.0.2.50"))
	submission := r.Source(netip.MustParseAddr("203.0.113.9"), "submission")
	quietSubmission := r.Source(netip.MustParseAddr("192.0.2.50"), "submission")
	ipv6 := r.Source(netip.MustParseAddr("2001:db8::1")) // no block: defaults

	other := vmta.MessageInfo{MailFrom: "", RcptTo: []string{"a@yahoo.com"}}
	news := vmta.MessageInfo{MailFrom: "a@news.example.com", RcptTo: []string{"a@yahoo.com"}}
	tests := []struct {
		name      string
		in        vmta.SelectInput
		vmta      string // "" when any pool member will do
		pool      string
		via       string
		unknownAs string // the *UnknownVMTAError's name, when an error is expected
	}{
		{"header names a VMTA", vmta.SelectInput{Header: "mta3", HasHeader: true, Source: ipAll, Message: news}, "mta3", "", vmta.ViaHeader, ""},
		{"header names are case-insensitive and trimmed", vmta.SelectInput{Header: " MTA3 ", HasHeader: true, Source: ipAll}, "mta3", "", vmta.ViaHeader, ""},
		{"header names a pool", vmta.SelectInput{Header: "Pool1", HasHeader: true, Source: ipAll}, "", "pool1", vmta.ViaHeader, ""},
		{"header may name {default}", vmta.SelectInput{Header: "{default}", HasHeader: true, Source: ipAll, Message: news}, "{default}", "", vmta.ViaHeader, ""},
		{"unknown header name is an error", vmta.SelectInput{Header: "nope", HasHeader: true, Source: ipAll, Message: news}, "", "", "", "nope"},
		{"empty header is an error too", vmta.SelectInput{Header: "", HasHeader: true, Source: ipAll, Message: news}, "", "", "", ""},
		{"no header: pattern list", vmta.SelectInput{Source: ipAll, Message: news}, "mta2", "", vmta.ViaPatternList, ""},
		{"pattern list to a pool", vmta.SelectInput{Source: ipAll, Message: vmta.MessageInfo{RcptTo: []string{"x@gmail.com"}}}, "", "pool1", vmta.ViaPatternList, ""},
		{"no rule matches: source default (pool)", vmta.SelectInput{Source: ipAll, Message: other}, "", "pool1", vmta.ViaSource, ""},
		{"header ignored when the source does not process it", vmta.SelectInput{Header: "mta1", HasHeader: true, Source: ipQuiet, Message: other}, "mta3", "", vmta.ViaSource, ""},
		{"unknown header ignored too when not processed", vmta.SelectInput{Header: "nope", HasHeader: true, Source: ipQuiet, Message: other}, "mta3", "", vmta.ViaSource, ""},
		{"the IP's pattern list is inherited by a more specific block", vmta.SelectInput{Source: ipQuiet, Message: news}, "mta2", "", vmta.ViaPatternList, ""},
		{"listener source's default beats the IP's", vmta.SelectInput{Source: quietSubmission, Message: other}, "mta1", "", vmta.ViaSource, ""},
		{"listener source keeps the IP's pattern list", vmta.SelectInput{Source: submission, Message: news}, "mta2", "", vmta.ViaPatternList, ""},
		{"nothing set: {default}", vmta.SelectInput{Source: ipv6, Message: news}, "{default}", "", vmta.ViaDefault, ""},
		{"header not honoured by default", vmta.SelectInput{Header: "mta1", HasHeader: true, Source: ipv6}, "{default}", "", vmta.ViaDefault, ""},
		{"nil source: {default}", vmta.SelectInput{Header: "mta1", HasHeader: true, Message: news}, "{default}", "", vmta.ViaDefault, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sel, err := r.Select(tc.in)
			if tc.via == "" {
				var unknown *vmta.UnknownVMTAError
				if !errors.As(err, &unknown) {
					t.Fatalf("Select error %v, want *UnknownVMTAError", err)
				}
				if unknown.Name != tc.unknownAs {
					t.Errorf("unknown name %q, want %q", unknown.Name, tc.unknownAs)
				}
				return
			}
			if err != nil {
				t.Fatalf("Select: %v", err)
			}
			if sel.Via != tc.via {
				t.Errorf("via %q, want %q", sel.Via, tc.via)
			}
			if tc.pool == "" {
				if sel.Pool != nil {
					t.Errorf("pool %s, want none", sel.Pool.Name)
				}
				if sel.VMTA.Name != tc.vmta {
					t.Errorf("VMTA %s, want %s", sel.VMTA.Name, tc.vmta)
				}
				return
			}
			if sel.Pool == nil || sel.Pool.Name != tc.pool {
				t.Fatalf("pool %v, want %s", sel.Pool, tc.pool)
			}
			if !strings.HasPrefix(sel.VMTA.Name, "mta") {
				t.Errorf("VMTA %s is not a member of %s", sel.VMTA.Name, tc.pool)
			}
		})
	}
}

func TestUnknownVMTAError(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"x", `unknown virtual MTA "x"`},
		{"bad\r\nname", `unknown virtual MTA "bad\r\nname"`},
		{"caf\u00e9", `unknown virtual MTA "caf\u00e9"`},
		{strings.Repeat("a", 100), `unknown virtual MTA "` + strings.Repeat("a", 64) + `..."`},
	} {
		if got := (&vmta.UnknownVMTAError{Name: tc.name}).Error(); got != tc.want {
			t.Errorf("Error() = %s, want %s", got, tc.want)
		}
	}
}

// TestSelectRoundRobin checks that a pool spreads selections evenly over
// its members, in member order.
func TestSelectRoundRobin(t *testing.T) {
	r := build(t, selectConf)
	src := r.Source(netip.MustParseAddr("203.0.113.9"))
	in := vmta.SelectInput{Header: "pool1", HasHeader: true, Source: src}
	var order []string
	counts := map[string]int{}
	const rounds = 100
	for i := range 3 * rounds {
		sel, err := r.Select(in)
		if err != nil {
			t.Fatal(err)
		}
		counts[sel.VMTA.Name]++
		if i < 6 {
			order = append(order, sel.VMTA.Name)
		}
	}
	if got := strings.Join(order, " "); got != "mta1 mta2 mta3 mta1 mta2 mta3" {
		t.Errorf("order %s", got)
	}
	for _, m := range []string{"mta1", "mta2", "mta3"} {
		if counts[m] != rounds {
			t.Errorf("%s selected %d times, want %d: %v", m, counts[m], rounds, counts)
		}
	}
}

// TestSelectConcurrent selects from many goroutines at once (run with
// -race); the round robin still comes out exactly even.
func TestSelectConcurrent(t *testing.T) {
	r := build(t, selectConf)
	src := r.Source(netip.MustParseAddr("203.0.113.9"))
	msgs := []vmta.MessageInfo{
		{RcptTo: []string{"a@gmail.com"}},                                    // pattern list → pool1
		{RcptTo: []string{"a@yahoo.com"}},                                    // source default → pool1
		{MailFrom: "n@news.example.com"},                                     // pattern list → mta2
		{Header: textproto.MIMEHeader{"X-Stream": {"transactional"}}.Values}, // → mta1
	}
	const goroutines, perG = 8, 300
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			local := map[string]int{}
			for i := range perG {
				m := msgs[(g+i)%len(msgs)]
				sel, err := r.Select(vmta.SelectInput{Source: src, Message: m})
				if err != nil {
					t.Error(err)
					return
				}
				if sel.Pool != nil {
					local[sel.VMTA.Name]++
				}
			}
			mu.Lock()
			for k, v := range local {
				counts[k] += v
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	// Half of the messages go through pool1: 1200 selections over 3 members.
	for _, m := range []string{"mta1", "mta2", "mta3"} {
		if counts[m] != goroutines*perG/2/3 {
			t.Errorf("pool1 picked %s %d times, want %d: %v", m, counts[m], goroutines*perG/2/3, counts)
		}
	}
}

// TestVMTAs checks the VMTA model: source hosts and EHLO names, the
// implicit {default}, caps, Lookup and the sorted accessors.
func TestVMTAs(t *testing.T) {
	r := build(t, `host-name global.example
smtp-listener 127.0.0.1:2525
<virtual-mta Zeta>
    smtp-source-host 192.0.2.1 a.example
    smtp-source-host 2001:db8::1 b.example
    max-smtp-out 40
    max-smtp-msg-rate 1000/h
</virtual-mta>
<virtual-mta alpha>
    smtp-source-host ::ffff:192.0.2.2 c.example
    host-name override.example
</virtual-mta>
<virtual-mta noip>
    host-name own.example
</virtual-mta>
<virtual-mta bare>
</virtual-mta>
<virtual-mta-pool Pool2>
    virtual-mta bare
    virtual-mta {default}
    max-smtp-out 7
</virtual-mta-pool>
<virtual-mta-pool pool1>
    virtual-mta zeta
</virtual-mta-pool>
`)
	hosts := func(v *vmta.VMTA) string {
		var s []string
		for _, h := range v.SourceHosts {
			ip := "auto"
			if h.IP.IsValid() {
				ip = h.IP.String()
			}
			s = append(s, ip+"="+h.HostName)
		}
		return strings.Join(s, " ")
	}
	want := map[string]string{
		"Zeta":      "192.0.2.1=a.example 2001:db8::1=b.example",
		"alpha":     "192.0.2.2=override.example", // host-name overrides; v4-mapped unmapped
		"noip":      "auto=own.example",
		"bare":      "auto=global.example",
		"{default}": "auto=global.example",
	}
	var names []string
	for _, v := range r.VMTAs() {
		names = append(names, v.Name)
		if got := hosts(v); got != want[v.Name] {
			t.Errorf("%s: source hosts %s, want %s", v.Name, got, want[v.Name])
		}
	}
	if got := strings.Join(names, " "); got != "alpha bare noip Zeta {default}" {
		t.Errorf("VMTAs() order: %s", got)
	}
	var pools []string
	for _, p := range r.Pools() {
		pools = append(pools, p.Name)
	}
	if got := strings.Join(pools, " "); got != "pool1 Pool2" {
		t.Errorf("Pools() order: %s", got)
	}

	z, _, ok := r.Lookup("ZETA")
	if !ok || z == nil || z.Name != "Zeta" {
		t.Fatalf("Lookup(ZETA) = %v, %v", z, ok)
	}
	if z.MaxSMTPOut != 40 || z.MaxSMTPMsgRate.Count != 1000 || z.Config == nil {
		t.Errorf("Zeta: max-smtp-out %d, rate %v, config %v", z.MaxSMTPOut, z.MaxSMTPMsgRate, z.Config)
	}
	if v, _, _ := r.Lookup("bare"); v.MaxSMTPOut != 0 || !v.MaxSMTPMsgRate.Unlimited() {
		t.Errorf("bare: max-smtp-out %d, rate %v; want no caps", v.MaxSMTPOut, v.MaxSMTPMsgRate)
	}
	d, _, ok := r.Lookup("{DEFAULT}")
	if !ok || d.Config != nil {
		t.Errorf("Lookup({DEFAULT}) = %v, %v; want the implicit default (no config block)", d, ok)
	}
	v, p, ok := r.Lookup("pool2")
	if !ok || v != nil || p == nil || p.Name != "Pool2" || p.MaxSMTPOut != 7 {
		t.Fatalf("Lookup(pool2) = %v, %v, %v", v, p, ok)
	}
	if p.Members[1] != d {
		t.Error("pool member {default} is not the registry's {default}")
	}
	if _, _, ok := r.Lookup("missing"); ok {
		t.Error("Lookup(missing) succeeded")
	}
	if _, ok := r.VMTA("pool1"); ok {
		t.Error("VMTA(pool1) found a VMTA")
	}
	if _, ok := r.Pool("zeta"); ok {
		t.Error("Pool(zeta) found a pool")
	}
	if got := r.VMTAs(); &got[0] == &r.VMTAs()[0] {
		t.Error("VMTAs() shares its slice between calls")
	}
	if r.Config() == nil || r.Config().HostName.Value != "global.example" {
		t.Error("Config() is not the config built from")
	}
}

// TestDefinedDefault checks a file that defines {default} itself.
func TestDefinedDefault(t *testing.T) {
	r := build(t, `smtp-listener 127.0.0.1:2525
<virtual-mta {default}>
    smtp-source-host 192.0.2.9 default.example
    <domain *>
        max-smtp-out 3
    </domain>
</virtual-mta>
`)
	sel, err := r.Select(vmta.SelectInput{})
	if err != nil {
		t.Fatal(err)
	}
	if sel.VMTA.Config == nil || sel.VMTA.SourceHosts[0].IP != netip.MustParseAddr("192.0.2.9") {
		t.Errorf("{default} = %+v, want the file's block", sel.VMTA)
	}
	if got := r.Policy(config.DefaultVMTA, "", "example.com").Settings.MaxSMTPOut.Value; got != 3 {
		t.Errorf("{default}'s <domain *>: max-smtp-out %d, want 3", got)
	}
	if n := len(r.VMTAs()); n != 1 {
		t.Errorf("%d VMTAs, want 1", n)
	}
}

// TestBuildErrors checks that Build refuses a hand-made Config with
// dangling references rather than misroute mail.
func TestBuildErrors(t *testing.T) {
	if _, err := vmta.Build(nil); err == nil {
		t.Error("Build(nil) succeeded")
	}
	cfg := &config.Config{
		HostName: config.Setting[string]{Value: "x.example"},
		Pools:    []*config.Pool{{Name: "p", Members: []config.PoolMember{{Name: "ghost"}}}},
		Sources: []*config.Source{
			{Name: "s", Settings: config.SourceSettings{
				DefaultVirtualMTA: config.Setting[string]{Value: "ghost", Set: true},
				PatternList:       config.Setting[string]{Value: "nolist", Set: true},
			}},
			{Prefix: netip.MustParsePrefix("10.0.0.0/8")},
			{Prefix: netip.MustParsePrefix("10.0.0.0/8")},
		},
	}
	_, err := vmta.Build(cfg)
	if err == nil {
		t.Fatal("Build succeeded")
	}
	for _, want := range []string{"member ghost", `default-virtual-mta: no virtual MTA or pool named "ghost"`, "pattern-list: no <pattern-list nolist>", "<source 10.0.0.0/8> is defined twice"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
