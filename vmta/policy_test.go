package vmta_test

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/ternmta/tern/config"
)

// TestPolicyPrecedence is the acceptance table: for a config mixing global,
// pool and VMTA <domain> blocks with exact, [*.], *. and * patterns, the
// effective value of one directive for (VMTA, pool, domain), and which
// block it comes from. The two testdata files hold the same blocks in
// opposite orders, and must agree on every row.
func TestPolicyPrecedence(t *testing.T) {
	tests := []struct {
		vmta, pool, domain string
		field              string // Go name of the config.DomainSettings field
		want               string
		from               string // OWNER PATTERN of the winning block, or default
		why                string
	}{
		// Global blocks, one level.
		{"mta2", "", "example.com", "MaxSMTPOut", "5", "global example.com", "exact beats [*.], *. and *"},
		{"mta2", "", "example.com", "MaxMsgRate", "100/h", "global example.com", "exact"},
		{"mta2", "", "example.com", "ConnectTimeout", "30s", "global [*.]example.com", "[*.]x matches x itself"},
		{"mta2", "", "example.com", "DataSendTimeout", "3m", "default", "*.x does not match x itself"},
		{"mta2", "", "example.com", "RetryAfter", "5m,15m", "global *", "each directive on its own: * fills in"},
		{"mta2", "", "a.example.com", "MaxSMTPOut", "7", "global [*.]example.com", "[*.]x matches a subdomain, and beats *.x"},
		{"mta2", "", "a.example.com", "DataSendTimeout", "1m", "global *.example.com", "*.x matches a subdomain"},
		{"mta2", "", "a.example.com", "MaxMsgRate", "unlimited", "default", "exact example.com does not match a subdomain"},
		{"mta2", "", "a.sub.example.com", "MaxSMTPOut", "9", "global *.sub.example.com", "the longest matching suffix wins"},
		{"mta2", "", "sub.example.com", "MaxSMTPOut", "7", "global [*.]example.com", "*.sub.example.com does not match sub.example.com"},
		{"mta2", "", "deep.sub.example.com", "MaxSMTPOut", "9", "global *.sub.example.com", "longest suffix"},
		{"mta2", "", "deep.sub.example.com", "MaxErrorsPerConnection", "4", "global [*.]deep.sub.example.com", "[*.] on the domain itself"},
		{"mta2", "", "x.deep.sub.example.com", "MaxErrorsPerConnection", "4", "global [*.]deep.sub.example.com", "[*.] on a subdomain"},
		{"mta2", "", "x.deep.sub.example.com", "MaxSMTPOut", "9", "global *.sub.example.com", "a shorter suffix fills in what the longer leaves unset"},
		{"mta2", "", "x.deep.sub.example.com", "ConnectTimeout", "30s", "global [*.]example.com", "down to the shortest suffix"},
		{"mta2", "", "notexample.com", "MaxSMTPOut", "10", "global *", "suffixes match whole labels only"},
		{"mta2", "", "other.org", "MaxSMTPOut", "10", "global *", "only * matches"},
		{"mta2", "", "other.org", "BounceAfter", "2d", "global *", "only * matches"},
		{"mta2", "", "other.org", "ConnectTimeout", "2m", "default", "built-in default when no block sets it"},
		{"mta2", "", "other.org", "DefaultSMTPPort", "25", "default", "built-in default"},
		{"mta2", "", "EXAMPLE.com.", "MaxSMTPOut", "5", "global example.com", "the domain is lower-cased, a trailing dot ignored"},

		// VMTA blocks over global ones.
		{"mta1", "", "example.com", "MaxSMTPOut", "2", "mta1 example.com", "the VMTA overrides one directive"},
		{"mta1", "", "example.com", "MaxMsgRate", "100/h", "global example.com", "... and inherits the others from global"},
		{"mta1", "", "example.com", "ConnectTimeout", "30s", "global [*.]example.com", "... from any level"},
		{"mta1", "", "example.com", "BounceAfter", "1d", "mta1 *", "the VMTA's * beats the global exact block"},
		{"mta1", "", "other.org", "BounceAfter", "1d", "mta1 *", "VMTA *"},
		{"mta1", "", "other.org", "MaxSMTPOut", "10", "global *", "VMTA * inherits from global *"},
		{"mta1", "", "a.example.com", "QueuePriority", "70", "global *.example.com", "mta1 has no *.example.com"},
		{"mta2", "", "a.example.com", "QueuePriority", "90", "mta2 *.example.com", "mta2 has one"},
		{"MTA1", "", "example.com", "MaxSMTPOut", "2", "mta1 example.com", "VMTA names are case-insensitive"},

		// Pool blocks: only when the VMTA was selected through the pool.
		{"mta2", "pool1", "example.com", "MaxSMTPOut", "3", "pool1 [*.]example.com", "the pool's [*.] beats the global exact"},
		{"mta2", "pool1", "example.com", "MaxConnectRate", "10/m", "pool1 [*.]example.com", "pool"},
		{"mta2", "", "example.com", "MaxConnectRate", "unlimited", "default", "not selected through the pool: no pool blocks"},
		{"mta2", "pool1", "example.com", "MaxMsgRate", "100/h", "global example.com", "the pool inherits from global"},
		{"mta2", "pool1", "a.example.com", "QueuePriority", "90", "mta2 *.example.com", "the VMTA beats the pool"},
		{"mta1", "pool1", "example.com", "MaxSMTPOut", "2", "mta1 example.com", "the VMTA beats the pool"},
		{"mta1", "pool1", "example.com", "MaxConnectRate", "10/m", "pool1 [*.]example.com", "the pool fills in for the VMTA"},
		{"mta1", "pool1", "a.example.com", "MaxSMTPOut", "3", "pool1 [*.]example.com", "mta1's exact block does not match"},
		{"mta1", "pool1", "a.example.com", "BounceAfter", "1d", "mta1 *", "the VMTA's * beats the pool's [*.]"},
		{"mta2", "pool1", "other.org", "DefaultSMTPPort", "2525", "pool1 *", "pool *"},
		{"mta2", "pool1", "other.org", "MaxSMTPOut", "10", "global *", "pool * inherits from global *"},
		{"mta1", "POOL1", "other.org", "DefaultSMTPPort", "2525", "pool1 *", "pool names are case-insensitive"},
		{"mta2", "mta1", "example.com", "MaxSMTPOut", "5", "global example.com", "a VMTA name as pool adds nothing"},

		// Names this registry does not know (removed by a reload).
		{"gone", "", "example.com", "MaxSMTPOut", "5", "global example.com", "unknown VMTA: global blocks"},
		{"gone", "", "other.org", "BounceAfter", "2d", "global *", "unknown VMTA: global blocks"},
		{"", "", "example.com", "MaxSMTPOut", "5", "global example.com", "no VMTA name"},
		{"gone", "pool1", "example.com", "MaxSMTPOut", "3", "pool1 [*.]example.com", "a known pool still applies"},
		{"mta2", "gone", "example.com", "MaxSMTPOut", "5", "global example.com", "unknown pool: skipped"},
		{"{default}", "", "example.com", "MaxSMTPOut", "5", "global example.com", "{default} has no blocks here"},
	}
	for _, file := range []string{"precedence.conf", "precedence_reversed.conf"} {
		r := load(t, file)
		for _, tc := range tests {
			name := fmt.Sprintf("%s/%s,%s,%s/%s", file, tc.vmta, tc.pool, tc.domain, tc.field)
			t.Run(name, func(t *testing.T) {
				p := r.Policy(tc.vmta, tc.pool, tc.domain)
				got, _, _ := setting(t, p.Settings, tc.field)
				if got != tc.want {
					t.Errorf("%s = %s, want %s (%s)", tc.field, got, tc.want, tc.why)
				}
				if from := origin(t, p, tc.field); from != tc.from {
					t.Errorf("%s comes from %s, want %s (%s)", tc.field, from, tc.from, tc.why)
				}
			})
		}
	}
}

// TestPolicyMatchedOrder checks the full lookup order for one queue that
// every level has something to say about.
func TestPolicyMatchedOrder(t *testing.T) {
	r := load(t, "precedence_reversed.conf")
	p := r.Policy("mta2", "pool1", "x.deep.sub.example.com")
	var got []string
	for _, m := range p.Matched {
		got = append(got, m.Level.String()+" "+m.Owner+" "+m.Block.Pattern.String())
	}
	want := []string{
		"virtual-mta mta2 *.example.com",
		"virtual-mta-pool pool1 [*.]example.com",
		"virtual-mta-pool pool1 *",
		"global  [*.]deep.sub.example.com",
		"global  *.sub.example.com",
		"global  [*.]example.com",
		"global  *.example.com",
		"global  *",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("matched blocks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	s := p.Matched[0].String()
	if !strings.HasPrefix(s, "<virtual-mta mta2> <domain *.example.com> at testdata/precedence_reversed.conf:") {
		t.Errorf("MatchedBlock.String() = %q", s)
	}
}

// TestPolicyPositions checks that Pos says where the winning value was
// written, for `tern settings` to print.
func TestPolicyPositions(t *testing.T) {
	src := `smtp-listener 127.0.0.1:2525
<domain *>
    max-smtp-out 4
</domain>
<virtual-mta mta1>
    <domain example.com>
        max-smtp-out 2
    </domain>
</virtual-mta>
`
	r := build(t, src)
	for _, tc := range []struct {
		vmta, pos string
	}{{"mta1", "test.conf:7:9"}, {"other", "test.conf:3:5"}} {
		p := r.Policy(tc.vmta, "", "example.com")
		if got := p.Settings.MaxSMTPOut.Pos.String(); got != tc.pos {
			t.Errorf("%s: max-smtp-out at %s, want %s", tc.vmta, got, tc.pos)
		}
	}
}

// TestPolicyDefaults checks that a config without <domain> blocks gives
// the built-in defaults, none marked as set.
func TestPolicyDefaults(t *testing.T) {
	r := build(t, "smtp-listener 127.0.0.1:2525\n<virtual-mta mta1>\n</virtual-mta>\n")
	for _, v := range []string{"mta1", "{default}", "nope"} {
		p := r.Policy(v, "", "example.com")
		if !reflect.DeepEqual(p.Settings, config.DefaultDomainSettings()) {
			t.Errorf("%s: settings differ from the built-in defaults:\n%+v", v, p.Settings)
		}
		if len(p.Matched) != 0 {
			t.Errorf("%s: matched %v", v, p.Matched)
		}
	}
}

// TestPolicyShared checks that domains matching the same blocks share one
// *Policy, which is what keeps the cache bounded by the configuration.
func TestPolicyShared(t *testing.T) {
	r := load(t, "precedence.conf")
	a := r.Policy("mta1", "", "one.org")
	b := r.Policy("mta1", "", "two.net")
	c := r.Policy("MTA1", "", "one.org")
	if a != b || a != c {
		t.Error("domains matching the same blocks do not share a policy")
	}
	if d := r.Policy("mta2", "", "one.org"); d == a {
		t.Error("mta1 and mta2 share a policy although mta1 has its own * block")
	}
	if e := r.Policy("mta1", "", "example.com"); e == a {
		t.Error("example.com shares a policy with one.org")
	}
}

// TestPolicyConcurrent resolves policies from many goroutines at once; run
// with -race.
func TestPolicyConcurrent(t *testing.T) {
	r := load(t, "precedence.conf")
	domains := []string{"example.com", "a.example.com", "a.sub.example.com", "other.org", "x.deep.sub.example.com"}
	want := map[string]int{}
	for _, d := range domains {
		want[d] = r.Policy("mta1", "pool1", d).Settings.MaxSMTPOut.Value
	}
	r = load(t, "precedence.conf") // a fresh, empty cache
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				d := domains[(g+i)%len(domains)]
				if got := r.Policy("mta1", "pool1", d).Settings.MaxSMTPOut.Value; got != want[d] {
					t.Errorf("%s: max-smtp-out %d, want %d", d, got, want[d])
					return
				}
			}
		})
	}
	wg.Wait()
}
