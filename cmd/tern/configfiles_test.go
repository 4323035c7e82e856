package main

// Tests of what tern check and a reload do with configurations that name
// files Tern must not read as they are (issue #14, finding 6): /dev/zero,
// a FIFO nobody writes, an include fan-out, /etc/shadow. Each is a normal
// refusal: check exits 1, a reload is refused and the running configuration
// stays. Before, check and a SIGHUPed daemon died of "out of memory", and
// the FIFO hung the reload.

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// badIncludes writes into dir what each case includes and returns, by case
// name, the include line and what the refusal must say.
func badIncludes(t *testing.T, dir string) map[string][2]string {
	t.Helper()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		name := filepath.Join(dir, fmt.Sprintf("fan%02d.conf", i))
		body := fmt.Sprintf("include fan%02d.conf\ninclude fan%02d.conf\n", i+1, i+1)
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shadow := filepath.Join(dir, "shadow")
	if err := os.WriteFile(shadow, []byte("root:$y$j9T$SALT$HASHHASHHASH:19700:0:99999:7:::\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return map[string][2]string{
		"dev-zero": {"include /dev/zero", "/dev/zero is a character device, not a regular file"},
		"fifo":     {"include " + fifo, fifo + " is a named pipe (FIFO), not a regular file"},
		"fan-out":  {"include fan00.conf", "at most 1000 files are read"},
		"shadow":   {"include " + shadow, "1 error in this file, not shown"},
	}
}

// checkTimeout bounds one tern check here: a refusal takes milliseconds.
const checkTimeout = 20 * time.Second

func TestCheckRefusesFilesItMustNotRead(t *testing.T) {
	dir := t.TempDir()
	for name, c := range badIncludes(t, dir) {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".conf")
			if err := os.WriteFile(path, []byte("smtp-listener 127.0.0.1:2525\n"+c[0]+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			type result struct {
				code         int
				stdout, errs string
			}
			done := make(chan result, 1)
			go func() {
				code, out, errs := runTern(t, "", "check", path)
				done <- result{code, out, errs}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(checkTimeout):
				t.Fatalf("tern check did not return within %v", checkTimeout)
			}
			if r.code != 1 || !strings.Contains(r.errs, c[1]) || !strings.Contains(r.errs, "the configuration is refused") {
				t.Errorf("tern check: exit %d, stderr:\n%s\nwant exit 1 and %q", r.code, r.errs, c[1])
			}
			if strings.Contains(r.errs, "HASH") {
				t.Errorf("tern check quotes the included file:\n%s", r.errs)
			}
		})
	}
}

// TestReloadRefusesFilesItMustNotRead reloads a running tern serve with each
// bad include in its file: first /dev/zero by SIGHUP (the signal that
// crashed it), then every case through POST /api/reload, whose answer
// carries the errors (the log limits repeated "reload refused" lines, so
// it cannot tell one reload from the next). Every reload is refused,
// promptly, tern goes on serving with what it ran, and SIGTERM still stops
// it.
func TestReloadRefusesFilesItMustNotRead(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort, adminPort := freePort(t), freePort(t)
	good := baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "") + fmt.Sprintf(`
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 admin
`, adminPort)
	conf := writeConf(t, dir, good)
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	cases := badIncludes(t, dir)

	writeConf(t, dir, good+cases["dev-zero"][0]+"\n")
	if l := hup(t, p); !strings.Contains(l, `msg="reload refused"`) || !strings.Contains(l, cases["dev-zero"][1]) {
		t.Errorf("SIGHUP logged %q, want reload refused with %q", l, cases["dev-zero"][1])
	}
	mustInject(t, addr, "x@dest.test", "after-sighup")

	api := fmt.Sprintf("http://127.0.0.1:%d/api/reload", adminPort)
	for name, c := range cases {
		writeConf(t, dir, good+c[0]+"\n")
		var refusal struct {
			Errors []string `json:"errors"`
		}
		start := time.Now()
		code := adminCall(t, "POST", api, "", &refusal)
		if code != http.StatusUnprocessableEntity || !strings.Contains(strings.Join(refusal.Errors, "\n"), c[1]) {
			t.Errorf("%s: POST /api/reload: %d %q, want 422 with %q", name, code, refusal.Errors, c[1])
		}
		if d := time.Since(start); d > checkTimeout {
			t.Errorf("%s: the reload took %v", name, d)
		}
		mustInject(t, addr, "x@dest.test", "after-"+name)
	}
	sink.WaitMessages(t, 1+len(cases), deliverTimeout)
	p.stop(t)
}
