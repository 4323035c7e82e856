package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite the expected diagnostics of the PowerMTA corpus (testdata/pmta/*.golden)")

// corpusFiles are the PowerMTA files of testdata/pmta, each with the
// golden file holding what loading it reports.
var corpusFiles = []struct {
	file, golden string
	// mistakes is set for the file with genuine errors, each marked by a
	// "# MISTAKE:" comment above its line.
	mistakes bool
}{
	{"testdata/pmta/stock.conf", "testdata/pmta/stock.golden", false},
	{"testdata/pmta/esp.conf", "testdata/pmta/esp.golden", false},
	{"testdata/pmta/installer/config", "testdata/pmta/installer.golden", false},
	{"testdata/pmta/mistakes.conf", "testdata/pmta/mistakes.golden", true},
}

// TestPowerMTACorpus loads realistic PowerMTA files: each loads with
// warnings only, unless it holds genuine mistakes, which are errors at the
// lines marked. The diagnostics are compared with golden files; run
// `go test ./config -run TestPowerMTACorpus -update-golden` after an
// intended change, and review the diff.
func TestPowerMTACorpus(t *testing.T) {
	for _, c := range corpusFiles {
		t.Run(filepath.Base(c.file), func(t *testing.T) {
			cfg, err := Load(c.file, Options{Hostname: "mta.example.net"})
			var errs, warns []Diagnostic
			if err != nil {
				var el *ErrorList
				if !errors.As(err, &el) {
					t.Fatal(err)
				}
				errs, warns = el.Errors, el.Warnings
			} else {
				warns = cfg.Warnings
			}
			var sb strings.Builder
			for _, d := range errs {
				sb.WriteString("error: " + d.String() + "\n")
			}
			for _, d := range warns {
				sb.WriteString("warning: " + d.String() + "\n")
			}
			got := sb.String()
			if !c.mistakes && len(errs) > 0 {
				t.Errorf("%s does not load:\n%s", c.file, got)
			}
			if c.mistakes {
				checkMistakes(t, c.file, errs)
			}
			if *updateGolden {
				if err := os.WriteFile(c.golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(c.golden)
			if err != nil {
				t.Fatalf("%v (run with -update-golden to write it)", err)
			}
			if got != string(want) {
				t.Errorf("%s: the diagnostics differ from %s (run with -update-golden and review the diff):\ngot:\n%s", c.file, c.golden, got)
			}
		})
	}
}

// checkMistakes checks that each line marked "# MISTAKE:" (the first
// non-comment line after the marker) has an error, and that there is no
// error elsewhere.
func checkMistakes(t *testing.T, file string, errs []Diagnostic) {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	marked := map[int]bool{}
	lines := strings.Split(string(src), "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.Contains(lines[i], "# MISTAKE:") {
			continue
		}
		j := i + 1
		for j < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[j]), "#") {
			j++
		}
		marked[j+1] = true
	}
	if len(marked) < 4 {
		t.Fatalf("%s marks %d mistakes; the corpus should hold at least 4", file, len(marked))
	}
	found := map[int]bool{}
	lineOf := regexp.MustCompile(`^[^:]+:(\d+):`)
	for _, d := range errs {
		m := lineOf.FindStringSubmatch(d.String())
		if m == nil {
			t.Errorf("error without a line: %s", d)
			continue
		}
		n, _ := strconv.Atoi(m[1])
		if !marked[n] {
			t.Errorf("error at a line not marked as a mistake: %s", d)
		}
		found[n] = true
	}
	for n := range marked {
		if !found[n] {
			t.Errorf("%s:%d is marked as a mistake but has no error", file, n)
		}
	}
}
