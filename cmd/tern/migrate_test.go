package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckMigrate runs tern check --migrate on a PowerMTA file that loads
// and on one that does not: every directive is reported under how Tern
// treats it, and the errors come last with their positions.
func TestCheckMigrate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "pmta.conf")
	src := `smtp-listener 127.0.0.1:2525
run-as-root yes
<virtual-mta a>
  smtp-source-host 127.0.0.2 a.example.com
</virtual-mta>
<virtual-mta b>
  smtp-source-host 127.0.0.2 b.example.com
</virtual-mta>
<domain *>
  backoff-to-normal-after 1h
  max-smtp-out 5
  queue-to other.example
  queue-to other.example
</domain>
<bounce-category-patterns>
  /spam/ spam-related
</bounce-category-patterns>
<smtp-user api>
  password secret
</smtp-user>
`
	if err := os.WriteFile(good, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runTern(t, "", "check", "--migrate", good)
	if code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s\nstdout:\n%s", code, errs, out)
	}
	for _, want := range []string{
		"The file loads: 5 warnings",
		"  run-as-root, at " + good + ":2:1\n      Tern runs as the user that starts it",
		"  queue-to ×2, at " + good + ":12:3, " + good + ":13:3\n",
		"  <bounce-category-patterns>, at " + good + ":15:1\n",
		"  backoff-to-normal-after, at " + good + ":10:3\n      the default is 1h (PowerMTA: never)",
		"smtp-listener, smtp-source-host ×2, max-smtp-out",
		"Other warnings (1):\n  " + good + ":19:3: smtp-user api: the password is stored in plaintext",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if i, j := strings.Index(out, "Ignored"), strings.Index(out, "Applied as PowerMTA does"); i < 0 || j < i {
		t.Errorf("ignored directives should come first:\n%s", out)
	}

	bad := filepath.Join(dir, "bad.conf")
	if err := os.WriteFile(bad, []byte(src+"max-smtp-outt 4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runTern(t, "", "check", "--migrate", bad)
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	for _, want := range []string{
		"The file does not load yet: 1 error to fix (listed last)",
		"To fix before the file loads (each error says how):\n  " + bad + `:21:1: unknown directive "max-smtp-outt" (did you mean "max-smtp-out"?)`,
		"  run-as-root, at " + bad + ":2:1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
