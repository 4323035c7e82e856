package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// The include tests read the files under testdata/include from disk, through
// Load and the default Options.ReadFile and Glob.

const incDir = "testdata/include/"

// loadDiag loads file and returns its errors and warnings formatted one per
// line (errors first), or "ok" and the warnings.
func loadDiag(t *testing.T, file string) (*Config, string) {
	t.Helper()
	cfg, err := Load(file, Options{Hostname: testHostname})
	if err == nil {
		return cfg, strings.TrimSpace("ok\n" + diagStrings(cfg.Warnings))
	}
	var el *ErrorList
	if !errors.As(err, &el) {
		t.Fatalf("Load(%s) error is %T: %v", file, err, err)
	}
	out := el.Error()
	if len(el.Warnings) > 0 {
		out += "\nwarnings:\n" + diagStrings(el.Warnings)
	}
	return cfg, out
}

func TestIncludeSplicesFiles(t *testing.T) {
	cfg, diag := loadDiag(t, incDir+"main.conf")
	if diag != "ok" {
		t.Fatalf("Load(main.conf):\n%s", diag)
	}
	// The glob conf.d/*.conf includes 10-vmtas.conf then 20-domains.conf,
	// in lexical order, at the place of the include: mta2 comes before
	// mta1 and yahoo.com (included from 20-domains.conf, relative to it)
	// before gmail.com. conf.d/README does not match the glob.
	var vmtas []string
	for _, v := range cfg.VMTAs {
		vmtas = append(vmtas, v.Name)
	}
	if got := strings.Join(vmtas, ","); got != "mta2,mta1" {
		t.Errorf("VMTAs = %s, want mta2,mta1", got)
	}
	var domains []string
	for _, d := range cfg.Domains {
		domains = append(domains, d.Pattern.String())
	}
	if got := strings.Join(domains, ","); got != "yahoo.com,gmail.com" {
		t.Errorf("domains = %s, want yahoo.com,gmail.com", got)
	}
	if len(cfg.Pools) != 1 || len(cfg.Pools[0].Members) != 2 {
		t.Fatalf("pools = %+v, want pool1 with two members", cfg.Pools)
	}
	if p := cfg.Pools[0].Pos; p.String() != incDir+"conf.d/10-vmtas.conf:4:1" {
		t.Errorf("pool1 is at %s, want conf.d/10-vmtas.conf:4:1", p)
	}
	yahoo := cfg.Domains[0]
	if yahoo.Pos.String() != incDir+"conf.d/nested.d/yahoo.conf:1:1" || yahoo.Settings.MaxSMTPOut.Value != 3 {
		t.Errorf("yahoo.com: %s max-smtp-out %d", yahoo.Pos, yahoo.Settings.MaxSMTPOut.Value)
	}

	// Inside <virtual-mta>: the included directives belong to the VMTA and
	// their positions name the included file.
	mta1 := cfg.VMTAs[1]
	if mta1.HostName.Value != "mta1.example.com" || mta1.HostName.Pos.String() != incDir+"vmta/mta1.conf:1:1" {
		t.Errorf("mta1 host-name = %+v", mta1.HostName)
	}
	if mta1.MaxSMTPOut.Value != 40 || mta1.MaxSMTPOut.Pos.String() != incDir+"vmta/mta1.conf:2:1" {
		t.Errorf("mta1 max-smtp-out = %+v", mta1.MaxSMTPOut)
	}

	// Inside <domain>, in a VMTA and globally: one file serves both.
	if len(mta1.Domains) != 1 {
		t.Fatalf("mta1 has %d domain blocks, want 1", len(mta1.Domains))
	}
	for _, d := range []*Domain{mta1.Domains[0], cfg.Domains[1]} {
		s := d.Settings
		if s.MaxSMTPOut.Value != 2 || s.MaxSMTPOut.Pos.String() != incDir+"domain/limits.conf:1:1" {
			t.Errorf("%s max-smtp-out = %+v", d.Pattern, s.MaxSMTPOut)
		}
		if want := []time.Duration{5 * time.Minute, 30 * time.Minute}; len(s.RetryAfter.Value) != 2 || s.RetryAfter.Value[0] != want[0] || s.RetryAfter.Value[1] != want[1] {
			t.Errorf("%s retry-after = %v", d.Pattern, s.RetryAfter.Value)
		}
	}
	// The including block's own directives stay in its file.
	if qp := cfg.Domains[1].Settings.QueuePriority; qp.Value != 80 || qp.Pos.String() != incDir+"main.conf:17:5" {
		t.Errorf("gmail.com queue-priority = %+v", qp)
	}

	// Inside <source>.
	var src *Source
	for _, s := range cfg.Sources {
		if s.Prefix.String() == "10.0.0.0/8" {
			src = s
		}
	}
	if src == nil {
		t.Fatal("no <source 10/8>")
	}
	if st := src.Settings; !st.AlwaysAllowRelaying.Value || st.DefaultVirtualMTA.Value != "pool1" || st.DefaultVirtualMTA.Pos.String() != incDir+"source/app.conf:2:1" {
		t.Errorf("source 10/8: relaying %+v, default-virtual-mta %+v", st.AlwaysAllowRelaying, st.DefaultVirtualMTA)
	}
}

func TestIncludeErrors(t *testing.T) {
	for _, c := range []struct {
		file string
		want string
	}{
		{"loop-a.conf", incDir + "loop-b.conf:2:1: include loop: " + incDir + "loop-b.conf includes " + incDir + "loop-a.conf, which is already being read"},
		{"self.conf", incDir + "self.conf:2:1: include loop: " + incDir + "self.conf includes " + incDir + "self.conf, which is already being read"},
		{"missing.conf", strings.Join([]string{
			incDir + `missing.conf:2:9: include: ` + incDir + `nowhere/file.conf does not exist`,
			incDir + `missing.conf:4:9: include: bad pattern "[.conf": syntax error in pattern`,
			incDir + `missing.conf:6:13: include: ` + incDir + `nowhere/domain.conf does not exist`,
			"warnings:",
			incDir + `missing.conf:3:9: include: "nowhere/*.conf" matches no file`,
		}, "\n")},
		// Positions in included files name those files; every file must
		// balance its own blocks; include is refused in a pool.
		{"broken.conf", strings.Join([]string{
			incDir + "broken.conf:7:1: <virtual-mta-pool pool1> has no members (add virtual-mta NAME lines)",
			incDir + "broken.conf:8:5: include is not allowed in <virtual-mta-pool>; it belongs at the top level or in <source>, <domain>, <virtual-mta> or <smtp-pattern-list>",
			incDir + "broken/domain.conf:2:1: smtp-source-host is not allowed in <domain>; it belongs at the top level or in <virtual-mta>",
			incDir + "broken/domain.conf:3:1: </domain> without an open <domain>",
			incDir + `broken/vmta.conf:3:18: max-smtp-out: "lots" is not a whole number`,
			incDir + "broken/vmta.conf:5:1: <domain example.org> is never closed (missing </domain>)",
		}, "\n")},
	} {
		t.Run(c.file, func(t *testing.T) {
			cfg, got := loadDiag(t, incDir+c.file)
			if cfg != nil {
				t.Errorf("Load(%s) returned a config", c.file)
			}
			if got != c.want {
				t.Errorf("Load(%s):\n%s\nwant:\n%s", c.file, got, c.want)
			}
		})
	}
}

// TestLoadMissingFile checks that Load reports a main file it cannot read.
func TestLoadMissingFile(t *testing.T) {
	_, err := Load(incDir+"no-such.conf", Options{Hostname: testHostname})
	var el *ErrorList
	if !errors.As(err, &el) || len(el.Errors) != 1 || !strings.Contains(el.Error(), "no-such.conf: cannot read the configuration: no such file or directory") {
		t.Fatalf("Load(missing) = %v", err)
	}
	if el.Errors[0].Pos.File != incDir+"no-such.conf" {
		t.Errorf("position %v does not name the file", el.Errors[0].Pos)
	}
}
