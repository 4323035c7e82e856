package vmta_test

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/vmta"
)

const sourcesConf = `smtp-listener 127.0.0.1:2525
<virtual-mta mta1>
</virtual-mta>
<virtual-mta mta2>
</virtual-mta>
<virtual-mta-pool pool1>
    virtual-mta mta1
    virtual-mta mta2
</virtual-mta-pool>
<pattern-list routes>
    mail-from /@news\.example$/ virtual-mta=mta2
</pattern-list>

<source 10.1.2.3>
    default-virtual-mta mta1
    max-message-size 30M
</source>
<source 0/0>
    max-message-size 10M
    add-received-header no
    max-rcpt-per-message 50
    remove-header X-Secret
</source>
<source 10/8>
    max-message-size 20M
    always-allow-relaying yes
    remove-header X-Internal
    remove-header X-Other
</source>
<source ::/0>
    max-message-size 5M
</source>
<source 2001:db8::/32>
    always-allow-relaying yes
    pattern-list routes
</source>
<source bulk>
    default-virtual-mta pool1
    process-x-virtual-mta yes
    max-rcpt-per-message 5000
</source>
<source night>
    max-rcpt-per-message 10
    log-commands yes
</source>
`

// TestSource checks merging: CIDR blocks from 0/0 down to the most
// specific, each directive on its own, then named sources on top.
func TestSource(t *testing.T) {
	r := build(t, sourcesConf)
	authConf := strings.Replace(sourcesConf, "<source night>", "<source {auth}>\n    always-allow-relaying yes\n    default-virtual-mta mta2\n</source>\n<source night>", 1)
	rAuth := build(t, authConf)

	type want struct {
		size     string
		relay    bool
		received bool
		maxRcpt  int
		dflt     string
		dfltSet  bool
		xvmta    bool
		logCmds  bool
		remove   string
		pattern  string
		blocks   string
	}
	defaults := want{size: "50M", received: true, maxRcpt: 1000, dflt: "{default}"}
	tests := []struct {
		name  string
		reg   *vmta.Registry
		ip    string
		names []string
		want  want
	}{
		{"most specific wins per directive", r, "10.1.2.3", nil,
			want{size: "30M", relay: true, received: false, maxRcpt: 50, dflt: "mta1", dfltSet: true, remove: "X-Internal,X-Other",
				blocks: "0.0.0.0/0 10.0.0.0/8 10.1.2.3/32"}},
		{"10/8 over 0/0", r, "10.9.9.9", nil,
			want{size: "20M", relay: true, maxRcpt: 50, dflt: "{default}", remove: "X-Internal,X-Other",
				blocks: "0.0.0.0/0 10.0.0.0/8"}},
		{"0/0 only", r, "192.0.2.1", nil,
			want{size: "10M", maxRcpt: 50, dflt: "{default}", remove: "X-Secret", blocks: "0.0.0.0/0"}},
		{"IPv4-mapped IPv6 matches IPv4 CIDRs", r, "::ffff:10.1.2.3", nil,
			want{size: "30M", relay: true, maxRcpt: 50, dflt: "mta1", dfltSet: true, remove: "X-Internal,X-Other",
				blocks: "0.0.0.0/0 10.0.0.0/8 10.1.2.3/32"}},
		{"IPv6: ::/0 then 2001:db8::/32, not 0/0", r, "2001:db8::25", nil,
			want{size: "5M", relay: true, received: true, maxRcpt: 1000, dflt: "{default}", pattern: "routes",
				blocks: "::/0 2001:db8::/32"}},
		{"IPv6 zone ignored", r, "fe80::1%eth0", nil,
			want{size: "5M", received: true, maxRcpt: 1000, dflt: "{default}", blocks: "::/0"}},
		{"named source overrides what the IP matched", r, "10.1.2.3", []string{"bulk"},
			want{size: "30M", relay: true, maxRcpt: 5000, dflt: "pool1", dfltSet: true, xvmta: true, remove: "X-Internal,X-Other",
				blocks: "0.0.0.0/0 10.0.0.0/8 10.1.2.3/32 bulk"}},
		{"named sources are case-insensitive", r, "192.0.2.1", []string{"BULK"},
			want{size: "10M", maxRcpt: 5000, dflt: "pool1", dfltSet: true, xvmta: true, remove: "X-Secret",
				blocks: "0.0.0.0/0 bulk"}},
		{"several names apply in order", r, "192.0.2.1", []string{"", "bulk", "night"},
			want{size: "10M", maxRcpt: 10, dflt: "pool1", dfltSet: true, xvmta: true, logCmds: true, remove: "X-Secret",
				blocks: "0.0.0.0/0 bulk night"}},
		{"{auth} without a block changes nothing", r, "10.9.9.9", []string{config.AuthSource},
			want{size: "20M", relay: true, maxRcpt: 50, dflt: "{default}", remove: "X-Internal,X-Other",
				blocks: "0.0.0.0/0 10.0.0.0/8"}},
		{"{auth} with a block overrides", rAuth, "192.0.2.1", []string{config.AuthSource},
			want{size: "10M", relay: true, maxRcpt: 50, dflt: "mta2", dfltSet: true, remove: "X-Secret",
				blocks: "0.0.0.0/0 {auth}"}},
		{"listener source, then the user's source", rAuth, "192.0.2.1", []string{"bulk", config.AuthSource},
			want{size: "10M", relay: true, maxRcpt: 5000, dflt: "mta2", dfltSet: true, xvmta: true, remove: "X-Secret",
				blocks: "0.0.0.0/0 bulk {auth}"}},
		{"invalid address: built-in defaults", r, "", nil, defaults},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ip netip.Addr
			if tc.ip != "" {
				ip = netip.MustParseAddr(tc.ip)
			}
			p := tc.reg.Source(ip, tc.names...)
			var blocks []string
			for _, b := range p.Blocks {
				if b.Named() {
					blocks = append(blocks, b.Name)
				} else {
					blocks = append(blocks, b.Prefix.String())
				}
			}
			pattern := ""
			if p.PatternList != nil {
				pattern = p.PatternList.Name
			}
			got := want{
				size: p.MaxMessageSize.String(), relay: p.AlwaysAllowRelaying, received: p.AddReceivedHeader,
				maxRcpt: p.MaxRcptPerMessage, dflt: p.DefaultVirtualMTA, dfltSet: p.Settings.DefaultVirtualMTA.Set,
				xvmta: p.ProcessXVirtualMTA, logCmds: p.LogCommands, remove: strings.Join(p.RemoveHeaders, ","),
				pattern: pattern, blocks: strings.Join(blocks, " "),
			}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestSourcePositions checks that the merged settings say which block each
// value came from.
func TestSourcePositions(t *testing.T) {
	r := build(t, sourcesConf)
	p := r.Source(netip.MustParseAddr("10.1.2.3"), "bulk")
	for _, tc := range []struct {
		field, pos string
	}{
		{"MaxMessageSize", "test.conf:16:5"},
		{"AlwaysAllowRelaying", "test.conf:26:5"},
		{"MaxRcptPerMessage", "test.conf:40:5"},
		{"AddReceivedHeader", "test.conf:20:5"},
	} {
		if _, pos, _ := setting(t, p.Settings, tc.field); pos.String() != tc.pos {
			t.Errorf("%s from %s, want %s", tc.field, pos, tc.pos)
		}
	}
	if _, _, set := setting(t, p.Settings, "SMTPService"); set {
		t.Error("SMTPService is marked as set although no block sets it")
	}
}

// TestSourcePolicyMirrorsSettings keeps SourcePolicy's plain fields in step
// with config.SourceSettings: a directive added to config must show up
// here too, with the merged value.
func TestSourcePolicyMirrorsSettings(t *testing.T) {
	r := build(t, sourcesConf)
	p := r.Source(netip.MustParseAddr("2001:db8::1"), "night")
	pv := reflect.ValueOf(*p)
	sv := reflect.ValueOf(p.Settings)
	for i := range sv.NumField() {
		name := sv.Type().Field(i).Name
		f := pv.FieldByName(name)
		if !f.IsValid() {
			t.Errorf("SourcePolicy has no field %s", name)
			continue
		}
		want := sv.Field(i).FieldByName("Value").Interface()
		if name == "PatternList" {
			if p.PatternList == nil || p.PatternList.Name != want {
				t.Errorf("PatternList = %v, want %q", p.PatternList, want)
			}
			continue
		}
		if got := f.Interface(); !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// TestSourceSiblings checks that only the blocks on the client's own chain
// merge: 10.1/16 applies to 10.1.2.3, its sibling 10.2/16 does not.
func TestSourceSiblings(t *testing.T) {
	r := build(t, `smtp-listener 127.0.0.1:2525
<source 10/8>
    max-rcpt-per-message 8
</source>
<source 10.2/16>
    max-rcpt-per-message 77
    hide-message-source yes
</source>
<source 10.1/16>
    log-connections yes
</source>
<source 10.1.2.3>
    log-commands yes
</source>
<source 10.2.0.0/24>
    log-commands yes
</source>
`)
	tests := []struct {
		ip                   string
		maxRcpt              int
		hide, logConn, logCm bool
	}{
		{"10.1.2.3", 8, false, true, true},
		{"10.1.9.9", 8, false, true, false},
		{"10.2.0.1", 77, true, false, true},
		{"10.2.1.1", 77, true, false, false},
		{"10.3.0.1", 8, false, false, false},
		{"11.0.0.1", 1000, false, false, false},
	}
	for _, tc := range tests {
		p := r.Source(netip.MustParseAddr(tc.ip))
		if p.MaxRcptPerMessage != tc.maxRcpt || p.HideMessageSource != tc.hide || p.LogConnections != tc.logConn || p.LogCommands != tc.logCm {
			t.Errorf("%s: max-rcpt %d hide %v log-connections %v log-commands %v; want %d %v %v %v", tc.ip,
				p.MaxRcptPerMessage, p.HideMessageSource, p.LogConnections, p.LogCommands, tc.maxRcpt, tc.hide, tc.logConn, tc.logCm)
		}
	}
}

// TestSourceShared checks that sessions matching the same blocks share one
// *SourcePolicy, with and without named sources.
func TestSourceShared(t *testing.T) {
	r := build(t, sourcesConf)
	a, b := netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("10.8.8.8")
	if r.Source(a) != r.Source(b) {
		t.Error("two clients of 10/8 do not share a policy")
	}
	if r.Source(a, "bulk") != r.Source(b, "BULK", "") {
		t.Error("two clients of 10/8 with source bulk do not share a policy")
	}
	if r.Source(a, "bulk") == r.Source(a) {
		t.Error("a named source did not change the policy")
	}
	if r.Source(a, "bulk", "night") == r.Source(a, "night", "bulk") {
		t.Error("the order of named sources is ignored")
	}
	if r.Source(a, config.AuthSource) != r.Source(a) {
		t.Error("{auth} without a block gives another policy")
	}
}
