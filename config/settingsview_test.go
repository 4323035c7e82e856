package config

import (
	"reflect"
	"strings"
	"testing"
)

// Every DomainSettings field is stored by exactly one row of the <domain>
// table (aliases aside), so the settings view can never show a field under
// a wrong or missing name, or leave one out.
func TestDirectivesNameEveryField(t *testing.T) {
	s := DefaultDomainSettings()
	owner := map[uintptr]string{}
	for _, r := range domainTable.rows {
		if r.field == nil || r.aliasOf != "" {
			continue
		}
		p := reflect.ValueOf(r.field(&s)).Pointer()
		if prev, dup := owner[p]; dup {
			t.Errorf("%s and %s store the same field", prev, r.name)
		}
		owner[p] = r.name
	}
	v := reflect.ValueOf(&s).Elem()
	for i := 0; i < v.NumField(); i++ {
		if _, ok := owner[v.Field(i).Addr().Pointer()]; !ok {
			t.Errorf("DomainSettings.%s is stored by no row of the <domain> table", v.Type().Field(i).Name)
		}
	}
	ds := s.Directives()
	seen := map[string]bool{}
	for _, d := range ds {
		if _, ok := lookup(scopeDomain, d.Name); !ok {
			t.Errorf("field tagged %q, which is not a <domain> directive", d.Name)
		}
		if seen[d.Name] {
			t.Errorf("directive %q listed twice", d.Name)
		}
		seen[d.Name] = true
		if d.Set || d.Pos != (Position{}) {
			t.Errorf("%s: a default shows as set (%+v)", d.Name, d)
		}
		if strings.HasPrefix(d.Value, "<") {
			t.Errorf("%s: value %q was not formatted by its type", d.Name, d.Value)
		}
	}
}

// Directives shows a set value with where it was written, defaults as
// such, and never a password.
func TestDirectivesValues(t *testing.T) {
	src := listener + `<domain example.com>
    max-smtp-out 7
    retry-after 5m,30m,2h
    max-msg-rate 100/h
    auth-username bulk
    auth-password s3cret
    smtp-hosts [10.0.0.1]:2525, mx.example.net
    max-errors-per-connection unlimited
</domain>
`
	cfg := parseOK(t, "t.conf", src, noFiles())
	var dom *Domain
	for _, d := range cfg.Domains {
		if d.Pattern.String() == "example.com" {
			dom = d
		}
	}
	if dom == nil {
		t.Fatal("no example.com domain")
	}
	got := map[string]DirectiveValue{}
	for _, d := range dom.Settings.Directives() {
		got[d.Name] = d
	}
	for name, want := range map[string]string{
		"max-smtp-out":              "7",
		"retry-after":               "5m,30m,2h",
		"max-msg-rate":              "100/h",
		"auth-password":             "(hidden)",
		"smtp-hosts":                "[10.0.0.1]:2525, mx.example.net",
		"max-errors-per-connection": "unlimited",
	} {
		d := got[name]
		if d.Value != want || !d.Set || d.Pos.File != "t.conf" || d.Pos.Line < 3 {
			t.Errorf("%s = %+v, want value %q set in t.conf", name, d, want)
		}
	}
	if d := got["max-smtp-out"]; d.Pos.Line != 3 {
		t.Errorf("max-smtp-out set at %s, want line 3", d.Pos)
	}
	if d := got["bounce-after"]; d.Set || d.Value != "4d12h" {
		t.Errorf("bounce-after = %+v, want the default 4d12h, not set", d)
	}
}
