package config

import (
	"path/filepath"
	"testing"
)

// TestExamples loads every examples/*.conf: each must be valid (warnings,
// for PowerMTA directives not implemented yet, are allowed). The test fails
// when there is no example at all, so that a moved directory does not pass
// silently.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../examples/*.conf")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no ../examples/*.conf file")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(f, Options{Hostname: testHostname})
			if err != nil {
				t.Fatalf("%v", err)
			}
			if len(cfg.Listeners) == 0 {
				t.Error("no listener")
			}
			for _, w := range cfg.Warnings {
				t.Logf("warning: %s", w)
			}
		})
	}
}
