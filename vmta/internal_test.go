package vmta

import (
	"fmt"
	"testing"

	"github.com/ternmta/tern/config"
	"golang.org/x/crypto/bcrypt"
)

func mustBuild(t *testing.T, src string) *Registry {
	t.Helper()
	cfg, err := config.Parse("test.conf", []byte(src), config.Options{Hostname: "test.example"})
	if err != nil {
		t.Fatalf("config.Parse:\n%v", err)
	}
	r, err := Build(cfg)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return r
}

// TestDummyHashCost checks that the hash unknown users are compared against
// costs as much as the most expensive real one, so that an unknown user
// takes no less time than a known one.
func TestDummyHashCost(t *testing.T) {
	h4, _ := bcrypt.GenerateFromPassword([]byte("a"), 4)
	h5, _ := bcrypt.GenerateFromPassword([]byte("b"), 5)
	tests := []struct {
		users string
		cost  int
	}{
		{"", 0},
		{fmt.Sprintf("<smtp-user a>\npassword-hash %s\n</smtp-user>\n<smtp-user b>\npassword-hash %s\n</smtp-user>\n", h4, h5), 5},
		{fmt.Sprintf("<smtp-user a>\npassword-hash %s\n</smtp-user>\n<smtp-user p>\npassword plain\n</smtp-user>\n", h4), 4},
		{"<smtp-user p>\npassword plain\n</smtp-user>\n", 0},
	}
	for _, tc := range tests {
		r := mustBuild(t, "smtp-listener 127.0.0.1:2525\n"+tc.users)
		got := 0
		if r.dummyHash != nil {
			var err error
			if got, err = bcrypt.Cost(r.dummyHash); err != nil {
				t.Fatal(err)
			}
		}
		if got != tc.cost {
			t.Errorf("users %q: dummy hash cost %d, want %d", tc.users, got, tc.cost)
		}
	}
}

// TestPolicyCacheBounded checks that the policy cache grows with the
// configuration, not with the number of domains asked about.
func TestPolicyCacheBounded(t *testing.T) {
	r := mustBuild(t, `smtp-listener 127.0.0.1:2525
<domain *>
    max-smtp-out 3
</domain>
<domain [*.]example.com>
    max-smtp-out 4
</domain>
<virtual-mta mta1>
</virtual-mta>
`)
	for i := range 1000 {
		r.Policy("mta1", "", fmt.Sprintf("d%d.org", i))
		r.Policy("mta1", "", fmt.Sprintf("d%d.example.com", i))
		r.Policy("{default}", "", fmt.Sprintf("d%d.net", i))
	}
	n := 0
	r.policies.Range(func(_, _ any) bool { n++; return true })
	if n != 2 {
		t.Errorf("%d cached policies after 3000 domains, want 2 (one per set of matching blocks)", n)
	}
}

// TestPolicyManyMatches checks the uncached path for a domain that matches
// more blocks than a cache key holds.
func TestPolicyManyMatches(t *testing.T) {
	src := "smtp-listener 127.0.0.1:2525\n"
	domain := "x"
	for i := range sigCap + 2 {
		domain = fmt.Sprintf("l%d.%s", i, domain)
	}
	// [*.] and *. blocks for every suffix of domain, each setting
	// queue-priority to its own label count.
	s := domain
	for {
		labels := 1
		for _, c := range s {
			if c == '.' {
				labels++
			}
		}
		src += fmt.Sprintf("<domain [*.]%s>\nqueue-priority %d\n</domain>\n<domain *.%s>\nmax-smtp-out %d\n</domain>\n", s, labels, s, labels)
		i := 0
		for i < len(s) && s[i] != '.' {
			i++
		}
		if i == len(s) {
			break
		}
		s = s[i+1:]
	}
	r := mustBuild(t, src)
	p := r.Policy("", "", "sub."+domain)
	if len(p.Matched) <= sigCap {
		t.Fatalf("only %d blocks matched; the test needs more than %d", len(p.Matched), sigCap)
	}
	labels := sigCap + 3
	if got := p.Settings.QueuePriority.Value; got != labels {
		t.Errorf("queue-priority %d, want %d (the longest suffix)", got, labels)
	}
	if got := p.Settings.MaxSMTPOut.Value; got != labels {
		t.Errorf("max-smtp-out %d, want %d (the longest suffix)", got, labels)
	}
	if p2 := r.Policy("", "", "sub."+domain); p2 == p {
		t.Error("an uncacheable policy was cached")
	}
}
