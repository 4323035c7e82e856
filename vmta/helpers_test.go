package vmta_test

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/vmta"
)

// testOptions makes parsing independent of the machine's hostname.
var testOptions = config.Options{Hostname: "test.example"}

// build parses an inline config and builds its registry.
func build(t testing.TB, src string) *vmta.Registry {
	t.Helper()
	cfg, err := config.Parse("test.conf", []byte(src), testOptions)
	if err != nil {
		t.Fatalf("config.Parse:\n%v", err)
	}
	r, err := vmta.Build(cfg)
	if err != nil {
		t.Fatalf("vmta.Build: %v", err)
	}
	return r
}

// load reads a config from testdata and builds its registry.
func load(t testing.TB, name string) *vmta.Registry {
	t.Helper()
	cfg, err := config.Load(filepath.Join("testdata", name), testOptions)
	if err != nil {
		t.Fatalf("config.Load:\n%v", err)
	}
	r, err := vmta.Build(cfg)
	if err != nil {
		t.Fatalf("vmta.Build: %v", err)
	}
	return r
}

// setting reads the Setting field named field (a Go field name such as
// MaxSMTPOut) of a settings struct, formatting its value as the config file
// would write it.
func setting(t testing.TB, settings any, field string) (value string, pos config.Position, set bool) {
	t.Helper()
	f := reflect.ValueOf(settings).FieldByName(field)
	if !f.IsValid() {
		t.Fatalf("%T has no field %s", settings, field)
	}
	return formatValue(f.FieldByName("Value").Interface()), f.FieldByName("Pos").Interface().(config.Position), f.FieldByName("Set").Bool()
}

func formatValue(v any) string {
	switch x := v.(type) {
	case time.Duration:
		return config.FormatDuration(x)
	case []time.Duration:
		s := make([]string, len(x))
		for i, d := range x {
			s[i] = config.FormatDuration(d)
		}
		return strings.Join(s, ",")
	case config.Rate:
		// Written the short way (100/h) whatever Rate.String prefers.
		if x.Unlimited() {
			return "unlimited"
		}
		d := config.FormatDuration(x.Interval)
		if len(d) == 2 && d[0] == '1' {
			d = d[1:] // 1h → h
		}
		return fmt.Sprintf("%d/%s", x.Count, d)
	case fmt.Stringer:
		return x.String()
	}
	return fmt.Sprint(v)
}

// origin names the matched block that supplied a directive's value, as
// "OWNER PATTERN" ("global PATTERN" for a top-level block), or "default"
// when no block set it. It checks that the winning position belongs to
// exactly the first matched block that sets the directive.
func origin(t testing.TB, p *vmta.Policy, field string) string {
	t.Helper()
	_, pos, set := setting(t, p.Settings, field)
	if !set {
		for _, m := range p.Matched {
			if _, _, s := setting(t, m.Block.Settings, field); s {
				t.Errorf("%s is unset in the policy but set by %s", field, m)
			}
		}
		return "default"
	}
	for _, m := range p.Matched {
		_, bpos, s := setting(t, m.Block.Settings, field)
		if !s {
			continue
		}
		if bpos != pos {
			t.Errorf("%s comes from %s, but %s sets it first", field, pos, m)
		}
		owner := m.Owner
		if m.Level == vmta.LevelGlobal {
			owner = "global"
		}
		return owner + " " + m.Block.Pattern.String()
	}
	t.Errorf("%s set at %s by no matched block", field, pos)
	return "?"
}
