package config

import (
	"net/netip"
	"strings"
	"testing"
)

// TestHashInsideValue checks that '#' starts a comment only where a value
// could start: a password containing '#' is kept whole.
func TestHashInsideValue(t *testing.T) {
	cfg := mustParse(t, `smtp-listener 127.0.0.1:2525
http-api-key abc#def   # the key has a hash in it
<smtp-user bob>
  password pa#ss#word
</smtp-user>
`)
	if got := cfg.HTTPAPIKey.Value; got != "abc#def" {
		t.Errorf("http-api-key = %q, want abc#def", got)
	}
	if got := cfg.Users[0].Password.Value; got != "pa#ss#word" {
		t.Errorf("password = %q, want pa#ss#word", got)
	}
}

// TestSMTPHostsBareIP checks that an IP written without brackets is a
// literal address, not a name to resolve.
func TestSMTPHostsBareIP(t *testing.T) {
	l, err := parseHostList("192.0.2.1, 2001:db8::25; relay.example:2525")
	if err != nil {
		t.Fatal(err)
	}
	want := HostList{{{Host: "192.0.2.1", Literal: true}, {Host: "2001:db8::25", Literal: true}}, {{Host: "relay.example", Port: 2525}}}
	if l.String() != want.String() || !l[0][0].Literal || !l[0][1].Literal || l[1][0].Literal {
		t.Errorf("parseHostList = %#v, want %#v", l, want)
	}
	l, err = parseHostList("192.0.2.1:2525")
	if err != nil || !l[0][0].Literal || l[0][0].Port != 2525 {
		t.Errorf("parseHostList(192.0.2.1:2525) = %#v, %v", l, err)
	}
}

// TestCIDRMapped checks that an IPv4-mapped prefix means the IPv4 network.
func TestCIDRMapped(t *testing.T) {
	p, _, err := parseCIDR("::ffff:10.0.0.0/104")
	if err != nil || p != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("parseCIDR(::ffff:10.0.0.0/104) = %v, %v; want 10.0.0.0/8", p, err)
	}
	if _, _, err := parseCIDR("::ffff:10.0.0.0/64"); err == nil {
		t.Error("parseCIDR(::ffff:10.0.0.0/64) accepted a prefix shorter than the mapping")
	}
}

// TestMergeRepeatable checks that repeatable directives of two blocks for
// the same key are joined rather than reported as set twice.
func TestMergeRepeatable(t *testing.T) {
	cfg := mustParse(t, `smtp-listener 127.0.0.1:2525
<source 10/8>
  remove-header X-Secret
</source>
<source 10.0.0.0/8>
  remove-header X-Internal
</source>
domain-macro tld com, com, net
<domain example.$tld>
  max-smtp-out 3
</domain>
`)
	got := strings.Join(cfg.Sources[0].Settings.RemoveHeaders.Value, ",")
	if got != "X-Secret,X-Internal" {
		t.Errorf("remove-header after merge = %q", got)
	}
	if len(cfg.Domains) != 2 {
		t.Errorf("a macro listing com twice made %d domain blocks, want 2", len(cfg.Domains))
	}
}

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	cfg, err := Parse("test.conf", []byte(src), Options{Hostname: "test.example"})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg
}
