package dkim_test

import (
	"testing"

	"github.com/ternmta/tern/vmta/dkim"
)

// levelsConf has keys outside <domain>: at the top level (a * key and one
// for top.example), in <virtual-mta> and in <virtual-mta-pool>, plus
// <domain> keys that still come first.
const levelsConf = `
domain-key top,*,{dir}/rsa.pem
domain-key topex,top.example,{dir}/ed.pem
<domain *>
    dkim-sign yes
</domain>
<domain dest.example>
    domain-key dom,example.com,{dir}/rsa2.pem
</domain>
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.test.example
    domain-key v1,*,{dir}/ed.pem
    domain-key v1ex,vmta.example,{dir}/rsa2.pem
</virtual-mta>
<virtual-mta mta2>
    smtp-source-host 127.0.0.2 mta2.test.example
</virtual-mta>
<virtual-mta mta3>
    <domain *>
        domain-key vdom,*,{dir}/rsa2.pem
    </domain>
</virtual-mta>
<virtual-mta-pool pool1>
    virtual-mta mta1
    virtual-mta mta2
    domain-key p1,*,{dir}/rsa2.pem
    domain-key p1ex,pool.example,{dir}/ed.pem
</virtual-mta-pool>
`

// TestChooseKeyLevels: the <domain> keys, then the VMTA's own, then the
// pool's, then the top-level ones; within a level an aligned key before a
// * key; a * key signs with d= the From domain.
func TestChooseKeyLevels(t *testing.T) {
	reg := build(t, levelsConf)
	for _, c := range []struct {
		vmta, pool, from string
		want             string // selector,domain or "" for none
	}{
		// A <domain> key (global block) comes before every other level.
		{"mta1", "pool1", "example.com", "dom,example.com"},
		{"mta1", "", "news.example.com", "dom,example.com"},
		// The VMTA's own keys: aligned before *.
		{"mta1", "", "vmta.example", "v1ex,vmta.example"},
		{"mta1", "", "a.vmta.example", "v1ex,vmta.example"},
		{"mta1", "pool1", "pool.example", "v1,pool.example"},
		{"mta1", "", "Other.Example.", "v1,other.example"},
		// No VMTA key: the pool's, aligned before *.
		{"mta2", "pool1", "pool.example", "p1ex,pool.example"},
		{"mta2", "pool1", "other.example", "p1,other.example"},
		// Neither: the top-level keys, aligned before *.
		{"mta2", "", "top.example", "topex,top.example"},
		{"mta2", "", "other.example", "top,other.example"},
		{"{default}", "", "x.other.example", "top,x.other.example"},
		{"gone", "gone-pool", "other.example", "top,other.example"},
		// A * key in a VMTA's <domain> block is a <domain> key of the
		// first level: it wins over the global block's aligned key.
		{"mta3", "", "example.com", "vdom,example.com"},
		{"mta3", "", "top.example", "vdom,top.example"},
		{"mta2", "", "", ""},
	} {
		k, ok := dkim.ChooseKey(reg, c.vmta, c.pool, c.from)
		got := ""
		if ok {
			got = k.Selector + "," + k.Domain
			if k.Signer == nil {
				t.Errorf("%+v: key without a signer", c)
			}
		}
		if got != c.want {
			t.Errorf("ChooseKey(%q, %q, %q) = %q, want %q", c.vmta, c.pool, c.from, got, c.want)
		}
	}
}

// TestSignForAnyDomain signs with a VMTA's * key and verifies the
// signature against the key published under the From domain.
func TestSignForAnyDomain(t *testing.T) {
	reg := build(t, levelsConf)
	d := dns{}
	for _, v := range reg.Config().VMTAs {
		for _, k := range v.DomainKeys.Value {
			if k.Selector == "v1" {
				k.Domain = "brand.example"
				d.add(t, k)
			}
		}
	}
	signed, key, err := dkim.SignFor(reg, "mta1", "", "dest.example", message("news@Brand.Example"), dkim.Options{})
	if err != nil || key == nil {
		t.Fatalf("SignFor: key %v, err %v", key, err)
	}
	if key.Selector != "v1" || key.Domain != "brand.example" {
		t.Fatalf("signed with %s,%s, want v1,brand.example", key.Selector, key.Domain)
	}
	d.verifyOne(t, signed, "brand.example")
	if got := tag(t, signed, "d"); got != "brand.example" {
		t.Errorf("d=%s, want brand.example", got)
	}

	// Signed once: the same key does not sign again (d= is the From
	// domain, as the first signature's).
	again, key2, err := dkim.SignFor(reg, "mta1", "", "dest.example", signed, dkim.Options{})
	if err != nil || key2 != nil || len(again) != len(signed) {
		t.Errorf("signing a signed message again: key %v, err %v", key2, err)
	}
}
