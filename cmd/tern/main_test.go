package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func runTern(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestCheckExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.conf")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example configs found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			code, out, errs := runTern(t, "", "check", f)
			if code != 0 {
				t.Fatalf("tern check %s: exit %d\n%s", f, code, errs)
			}
			for _, want := range []string{"configuration OK", "listeners", "virtual MTAs", "pools", "domain blocks", ", level "} {
				if !strings.Contains(out, want) {
					t.Errorf("summary lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

func TestCheckReportsEveryError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.conf")
	src := `smtp-listener 127.0.0.1:2525
max-smpt-out 3
<source 127.0.0.1>
  max-smtp-out 4
</source>
<virtual-mta mta1>
  smtp-source-host 127.0.0.2 mta1.example.com
</domain>
pickup /var/pickup
`
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runTern(t, "", "check", path)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stdout:\n%s", code, out)
	}
	for _, want := range []string{
		path + `:2:1: unknown directive "max-smpt-out" (did you mean "max-smtp-out"?)`,
		path + ":4:3: max-smtp-out is not allowed in <source>; it belongs in <virtual-mta>, <virtual-mta-pool> or <domain>",
		path + ":8:1: </domain> closes <virtual-mta mta1> opened at line 6",
		path + ":9:1: warning: pickup is a PowerMTA directive Tern ignores: ",
		"3 errors, 1 warning; the configuration is refused",
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
}

func TestCheckUsage(t *testing.T) {
	if code, _, _ := runTern(t, "", "check"); code != 2 {
		t.Errorf("check without a file: exit %d, want 2", code)
	}
	code, _, errs := runTern(t, "", "check", filepath.Join(t.TempDir(), "missing.conf"))
	if code != 1 || !strings.Contains(errs, "no such file") {
		t.Errorf("missing file: exit %d, stderr %q", code, errs)
	}
	if code, _, _ := runTern(t, "", "frobnicate"); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}

func TestHashPassword(t *testing.T) {
	code, out, errs := runTern(t, "s3cret pass\n", "hash-password", "-cost", "4")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	hash := strings.TrimSpace(out)
	if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte("s3cret pass")); err != nil {
		t.Fatalf("hash %q does not verify: %v", hash, err)
	}
	if bcrypt.CompareHashAndPassword([]byte(hash), []byte("s3cret")) == nil {
		t.Fatal("hash verifies a different password")
	}
	if code, _, _ := runTern(t, "\n", "hash-password"); code != 1 {
		t.Errorf("empty password: exit %d, want 1", code)
	}
	if code, _, _ := runTern(t, "x\n", "hash-password", "pw-on-command-line"); code != 2 {
		t.Errorf("password as argument: exit %d, want 2", code)
	}
}
