package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// acctConf parses a configuration made of the listener and body, in a
// file of dir, and returns its one <acct-file>.
func acctConf(t *testing.T, dir, body string) (*AcctFile, *Config) {
	t.Helper()
	cfg := parseOK(t, filepath.Join(dir, "tern.conf"), listener+body, noFiles())
	if len(cfg.AcctFiles) != 1 {
		t.Fatalf("%d <acct-file> blocks", len(cfg.AcctFiles))
	}
	return cfg.AcctFiles[0], cfg
}

// TestAcctFilePipe: `<acct-file |PROGRAM ARGS>` in the forms PowerMTA
// files and quoting allow.
func TestAcctFilePipe(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "bin", "reader")
	spaced := filepath.Join(dir, "my bin", "acct reader")
	if err := os.MkdirAll(filepath.Dir(spaced), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spaced, []byte("#!/bin/sh\nexec cat\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(prog), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prog, []byte("#!/bin/sh\nexec cat\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tag  string
		want []string
		name string
	}{
		{`|/bin/cat`, []string{"/bin/cat"}, "|/bin/cat"},
		{`|/bin/cat -u -`, []string{"/bin/cat", "-u", "-"}, "|/bin/cat -u -"},
		{`"|/bin/cat -u  -"`, []string{"/bin/cat", "-u", "-"}, "|/bin/cat -u -"},
		{`| /bin/cat -u`, []string{"/bin/cat", "-u"}, "|/bin/cat -u"},
		{`|/bin/sh -c "cat >> /tmp/x"`, []string{"/bin/sh", "-c", "cat >> /tmp/x"}, `|/bin/sh -c "cat >> /tmp/x"`},
		{`|bin/reader`, []string{prog}, "|" + prog},
		{`|./bin/../bin/reader`, []string{prog}, "|" + prog},
		{`|cat`, []string{"cat"}, "|cat"}, // looked up in PATH
		// A path with spaces is a value of its own.
		{`| "my bin/acct reader" "an arg"`, []string{spaced, "an arg"}, `|"` + spaced + `" "an arg"`},
	} {
		af, _ := acctConf(t, dir, "<acct-file "+tc.tag+">\n</acct-file>\n")
		if !slices.Equal(af.Command, tc.want) || af.Path != "" {
			t.Errorf("<acct-file %s>: command %q, path %q; want %q", tc.tag, af.Command, af.Path, tc.want)
		}
		if af.Name() != tc.name {
			t.Errorf("<acct-file %s>: Name() = %q, want %q", tc.tag, af.Name(), tc.name)
		}
		if af.Records.Value != (RecordTypes{Delivered: true, Bounced: true}) {
			t.Errorf("<acct-file %s>: records %v", tc.tag, af.Records.Value)
		}
	}

	// The same command twice is one pipe; other arguments another.
	name := filepath.Join(dir, "tern.conf")
	el := parseErr(t, name, listener+"<acct-file |/bin/cat>\n</acct-file>\n<acct-file |/bin/cat>\n</acct-file>\n", noFiles())
	if !hasDiag(el.Errors, name, 4, "<acct-file |/bin/cat> is already defined at line 2") {
		t.Errorf("duplicate pipe: %v", el)
	}
	cfg := parseOK(t, name, listener+"<acct-file |/bin/cat>\n</acct-file>\n<acct-file |/bin/cat ->\n</acct-file>\n<acct-file cat>\n</acct-file>\n", noFiles())
	if len(cfg.AcctFiles) != 3 || cfg.AcctFiles[2].Path != filepath.Join(dir, "cat") {
		t.Errorf("pipes and a file named cat: %+v", cfg.AcctFiles)
	}
}

func TestAcctFilePipeErrors(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "tern.conf")
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ tag, want string }{
		{`|`, "<acct-file |…> names no program"},
		{`"| "`, "<acct-file |…> names no program"},
	} {
		el := parseErr(t, name, listener+"<acct-file "+tc.tag+">\n</acct-file>\n", noFiles())
		if !hasDiag(el.Errors, name, 2, tc.want) || el.Errors[0].Pos.Column != 12 {
			t.Errorf("<acct-file %s>: errors\n%v\nwant one at 2:12 containing %q", tc.tag, el, tc.want)
		}
	}
	// A program that cannot run (yet) is a warning: the file is often
	// checked before the program is installed.
	for _, tc := range []struct{ tag, want string }{
		{`|/nonexistent/tern-acct-reader`, "cannot run /nonexistent/tern-acct-reader yet: "},
		{`|plain`, "cannot run plain yet: "},
		{`|no-such-program-tern-test`, "cannot run no-such-program-tern-test yet: executable file not found in $PATH"},
	} {
		cfg := parseOK(t, name, listener+"<acct-file "+tc.tag+">\n</acct-file>\n", noFiles())
		if !hasDiag(cfg.Warnings, name, 2, tc.want) || cfg.Warnings[0].Pos.Column != 12 {
			t.Errorf("<acct-file %s>: warnings\n%v\nwant one at 2:12 containing %q", tc.tag, diagStrings(cfg.Warnings), tc.want)
		}
	}
}

// TestAcctFilePipeIgnoresFileSettings: the directives about files are
// warnings in a pipe's block.
func TestAcctFilePipeIgnoresFileSettings(t *testing.T) {
	dir := t.TempDir()
	af, cfg := acctConf(t, dir, `<acct-file |/bin/cat>
    records d,b,t
    max-size 10M
    move-interval 1h
    delete-after 1d
    move-to /tmp
    world-readable yes
</acct-file>
`)
	if af.Records.Value != (RecordTypes{Delivered: true, Bounced: true, Transient: true}) {
		t.Errorf("records %v", af.Records.Value)
	}
	name := filepath.Join(dir, "tern.conf")
	for line, d := range map[int]string{4: "max-size", 5: "move-interval", 6: "delete-after", 7: "move-to", 8: "world-readable"} {
		if !hasDiag(cfg.Warnings, name, line, d+" applies to accounting files; <acct-file |/bin/cat> is a pipe, so it is ignored") {
			t.Errorf("no warning for %s at line %d; warnings:\n%s", d, line, diagStrings(cfg.Warnings))
		}
	}
	if len(cfg.Warnings) != 5 {
		t.Errorf("warnings:\n%s", diagStrings(cfg.Warnings))
	}
}

// TestAcctFileDirectives: delete-after, move-to and world-readable, set
// and by default.
func TestAcctFileDirectives(t *testing.T) {
	dir := t.TempDir()
	af, cfg := acctConf(t, dir, "<acct-file acct/a.csv>\n</acct-file>\n")
	if af.DeleteAfter.Value != Never || af.MoveTo.Value != "" || af.WorldReadable.Value || af.MoveInterval.Value != 24*time.Hour || af.RecordFields != nil {
		t.Errorf("defaults: %+v", af)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings: %s", diagStrings(cfg.Warnings))
	}
	af, cfg = acctConf(t, dir, `<acct-file acct/a.csv>
    delete-after 30d
    move-to ../archive/acct
    world-readable yes
    move-interval never
</acct-file>
`)
	if af.DeleteAfter.Value != 30*24*time.Hour || af.MoveTo.Value != filepath.Join(filepath.Dir(dir), "archive", "acct") ||
		!af.WorldReadable.Value || af.MoveInterval.Value != Never {
		t.Errorf("settings: %+v", af)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings: %s", diagStrings(cfg.Warnings))
	}
	af, _ = acctConf(t, dir, "<acct-file a.csv>\n  delete-after never\n  move-to /abs/dir\n</acct-file>\n")
	if af.DeleteAfter.Value != Never || !af.DeleteAfter.Set || af.MoveTo.Value != "/abs/dir" {
		t.Errorf("never and an absolute directory: %+v", af)
	}
}

// TestAcctFileRecordTypes: PowerMTA's other record types are accepted
// with a warning saying Tern writes none, by letter or long name.
func TestAcctFileRecordTypes(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "tern.conf")
	af, cfg := acctConf(t, dir, "<acct-file a.csv>\n  records d,b,t,tq,r,f,rb,rs\n</acct-file>\n")
	want := RecordTypes{true, true, true, true, true, true, true, true}
	if af.Records.Value != want || af.Records.Value.String() != "d,b,t,r,tq,f,rb,rs" {
		t.Errorf("records %+v (%s)", af.Records.Value, af.Records.Value)
	}
	for _, w := range []string{
		"records: Tern writes no tq records: a connection that fails before any recipient is tried is recorded as a t record for each recipient it held back",
		"records: Tern writes no f (feedback loop) records: they come from PowerMTA's bounce and feedback-loop processors, which Tern does not have",
		"records: Tern writes no rb (remote bounce) records",
		"records: Tern writes no rs (remote status) records",
	} {
		if !hasDiag(cfg.Warnings, name, 3, w) {
			t.Errorf("no warning %q; warnings:\n%s", w, diagStrings(cfg.Warnings))
		}
	}
	af, cfg = acctConf(t, dir, "<acct-file a.csv>\n  records delivery, transient-queue, feedback-loop, remote-bounce, remote-status, receipt\n</acct-file>\n")
	if got := af.Records.Value.String(); got != "d,r,tq,f,rb,rs" || len(cfg.Warnings) != 4 {
		t.Errorf("long names: %s; warnings:\n%s", got, diagStrings(cfg.Warnings))
	}
	el := parseErr(t, name, listener+"<acct-file a.csv>\n  records d,q\n</acct-file>\n", noFiles())
	if !hasDiag(el.Errors, name, 3, `unknown record type "q" (d, b, t, r, tq, f, rb or rs)`) {
		t.Errorf("unknown type: %v", el)
	}
}

// TestAcctFileRecordFields: the columns of each record type.
func TestAcctFileRecordFields(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "tern.conf")
	af, cfg := acctConf(t, dir, `<acct-file a.csv>
    records d,b,r
    record-fields d timeLogged,orig,rcpt,vmta,dsnStatus,header_Subject
    record-fields bounce Type, timelogged, RCPT,   bounceCat, header_X-Job ,totalSecondsQueued
    record-fields r *,header_Message-ID
    record-fields tq timeLogged,anythingAtAll
</acct-file>
`)
	got := map[string]string{}
	for _, rf := range af.RecordFields {
		got[rf.Type] = strings.Join(rf.Fields, ",")
	}
	want := map[string]string{
		"d": "timeLogged,orig,rcpt,vmta,dsnStatus,header_Subject",
		"b": "timeLogged,rcpt,bounceCat,header_X-Job,totalSecondsQueued",
		"r": strings.Join(AcctFieldNames(), ",") + ",header_Message-ID",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("record-fields:\n%v\nwant\n%v", got, want)
	}
	if af.RecordFields[0].Pos.Line != 4 {
		t.Errorf("record-fields d at %v", af.RecordFields[0].Pos)
	}
	if len(cfg.Warnings) != 1 || !hasDiag(cfg.Warnings, name, 7, "record-fields tq is ignored: Tern writes no tq records") {
		t.Errorf("warnings:\n%s", diagStrings(cfg.Warnings))
	}

	// PowerMTA fields Tern has no value for: a warning each.
	_, cfg = acctConf(t, dir, "<acct-file a.csv>\n  record-fields d rcpt,dlvTlsProtocol,timeFirstAttempt\n</acct-file>\n")
	if len(cfg.Warnings) != 2 || !hasDiag(cfg.Warnings, name, 3, "record-fields: Tern has no value for dlvTlsProtocol; its column is left empty") {
		t.Errorf("warnings:\n%s", diagStrings(cfg.Warnings))
	}
}

func TestAcctFileRecordFieldsErrors(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "tern.conf")
	for _, tc := range []struct {
		line string
		col  int
		want string
	}{
		{"record-fields d timeLogged,orig,rcpt,dsnStatuss", 40, `record-fields: unknown field "dsnStatuss" (did you mean dsnStatus?)`},
		{"record-fields d timeLogged, vmtaPol", 31, `record-fields: unknown field "vmtaPol" (did you mean vmtaPool?)`},
		{`record-fields d "rcpt,bogusField"`, 25, `record-fields: unknown field "bogusField"`},
		{"record-fields d rcpt,,orig", 24, "record-fields: empty field name"},
		{"record-fields d rcpt,orig,rcpt", 29, "record-fields: rcpt is listed twice"},
		{"record-fields d *,rcpt", 21, "record-fields: rcpt is listed twice"},
		{"record-fields d header_", 19, "record-fields: header_: empty header name"},
		{`record-fields d "header_Bad Name"`, 20, `record-fields: header_Bad Name: "Bad Name" is not a header name`},
		{"record-fields x rcpt", 17, `record-fields: unknown record type "x"`},
		{"record-fields d", 3, "record-fields needs a record type and a list of fields"},
		{"record-fields d type", 3, "record-fields d lists no field"},
	} {
		el := parseErr(t, name, listener+"<acct-file a.csv>\n  "+tc.line+"\n</acct-file>\n", noFiles())
		found := false
		for _, d := range el.Errors {
			if d.Pos.Line == 3 && d.Pos.Column == tc.col && strings.Contains(d.Message, tc.want) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: errors\n%v\nwant one at 3:%d containing %q", tc.line, el, tc.col, tc.want)
		}
	}
	el := parseErr(t, name, listener+"<acct-file a.csv>\n  record-fields d rcpt\n  record-fields delivery orig\n</acct-file>\n", noFiles())
	if !hasDiag(el.Errors, name, 4, "record-fields for d is already set at line 3") {
		t.Errorf("twice for one type: %v", el)
	}
}

// TestWorldReadableImplemented: world-readable is a directive of
// <acct-file> now, not a PowerMTA name ignored with a warning.
func TestWorldReadableImplemented(t *testing.T) {
	if _, ignored := ignoredDirectives["world-readable"]; ignored {
		t.Error("world-readable is still listed as ignored")
	}
	name := filepath.Join(t.TempDir(), "tern.conf")
	el := parseErr(t, name, listener+"world-readable yes\n", noFiles())
	if !hasDiag(el.Errors, name, 2, "world-readable is not allowed at the top level; it belongs in <acct-file>") {
		t.Errorf("world-readable at the top level: %v", el)
	}
}
