package config

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// TestErrorsGolden runs the data-driven files in testdata/errors. Commands:
//
//	file path=NAME
//	<content>
//
// serves <content> as the file NAME (for includes, keys and certificates) to
// the checks that follow in the same file; nothing is read from disk.
//
//	check [name=FILE]
//	<config>
//	----
//	<diagnostics>
//
// parses <config> as FILE (default test.conf) and prints every error
// exactly as ErrorList.Error formats it, then every warning prefixed with
// "warning: ". A config that loads prints "ok" before its warnings.
//
// Run `go test ./config -run TestErrorsGolden -rewrite` to regenerate the
// expected output after an intended change of wording, and review the diff.
func TestErrorsGolden(t *testing.T) {
	datadriven.Walk(t, "testdata/errors", func(t *testing.T, path string) {
		files := memFS{}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			switch d.Cmd {
			case "file":
				var name string
				d.ScanArgs(t, "path", &name)
				files[filepath.Clean(name)] = []byte(d.Input + "\n")
				return ""
			case "check":
				name := "test.conf"
				if d.HasArg("name") {
					d.ScanArgs(t, "name", &name)
				}
				return checkOutput(t, name, d.Input+"\n", files.options())
			default:
				t.Fatalf("%s: unknown command %q", d.Pos, d.Cmd)
				return ""
			}
		})
	})
}

// checkOutput parses src and renders its diagnostics for a golden file. It
// also checks what every golden case shares: errors come as an *ErrorList
// whose Error() is its errors one per line, sorted, each with a position in
// a file.
func checkOutput(t *testing.T, name, src string, opts Options) string {
	t.Helper()
	cfg, err := Parse(name, []byte(src), opts)
	var out strings.Builder
	var warnings []Diagnostic
	if err != nil {
		var el *ErrorList
		if !errors.As(err, &el) {
			t.Fatalf("error is %T, want *ErrorList: %v", err, err)
		}
		if cfg != nil {
			t.Error("a Config was returned together with an error")
		}
		if len(el.Errors) == 0 {
			t.Error("an ErrorList without errors")
		}
		if got, want := el.Error(), diagStrings(el.Errors); got != want {
			t.Errorf("Error() = %q, want the errors one per line: %q", got, want)
		}
		checkSortedAndLocated(t, el.Errors)
		out.WriteString(el.Error())
		out.WriteByte('\n')
		warnings = el.Warnings
	} else {
		out.WriteString("ok\n")
		warnings = cfg.Warnings
	}
	checkSortedAndLocated(t, warnings)
	for _, w := range warnings {
		out.WriteString("warning: " + w.String() + "\n")
	}
	return out.String()
}

// checkSortedAndLocated fails unless every diagnostic has a file and a line,
// no message spans lines, and the list is in file, line, column order.
func checkSortedAndLocated(t *testing.T, ds []Diagnostic) {
	t.Helper()
	for _, d := range ds {
		if d.Pos.File == "" || !d.Pos.IsValid() || d.Pos.Column < 1 {
			t.Errorf("diagnostic without a position: %q", d)
		}
		if strings.Contains(d.Message, "\n") {
			t.Errorf("diagnostic message spans lines: %q", d)
		}
	}
	if !slices.IsSortedFunc(ds, func(a, b Diagnostic) int {
		if c := strings.Compare(a.Pos.File, b.Pos.File); c != 0 {
			return c
		}
		if a.Pos.Line != b.Pos.Line {
			return a.Pos.Line - b.Pos.Line
		}
		return a.Pos.Column - b.Pos.Column
	}) {
		t.Errorf("diagnostics are not sorted:\n%s", diagStrings(ds))
	}
}
