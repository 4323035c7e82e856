package main

// Tests of the CLI commands over the admin API: the tern binary (ternCmd)
// against a running tern serve, its tables, --json and exit codes. Mail is
// kept queued by a sink that does not listen, so the queues have something
// to show and operate on.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/delivery/dnstest"
)

// cliTimeout bounds one CLI run; a passing run takes a fraction of it.
const cliTimeout = 60 * time.Second

// cliResult is what one CLI run did.
type cliResult struct {
	code           int
	stdout, stderr string
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// cliRun runs the tern binary with args. env entries ("K=V") are added to
// an environment without the TERN_ variables the CLI reads, so a
// developer's own settings cannot leak into the test.
func cliRun(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	cmd := ternCmd(t, args...)
	var kept []string
	for _, e := range cmd.Env {
		if !strings.HasPrefix(e, "TERN_API") && !strings.HasPrefix(e, "TERN_SMTP_PASSWORD") {
			kept = append(kept, e)
		}
	}
	cmd.Env = append(kept, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(cliTimeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("tern %s did not end within %v", strings.Join(args, " "), cliTimeout)
	}
	r := cliResult{stdout: out.String(), stderr: errb.String()}
	if ee := (*exec.ExitError)(nil); err != nil && !errAs(err, &ee) {
		t.Fatalf("tern %s: %v", strings.Join(args, " "), err)
	} else if err != nil {
		r.code = ee.ExitCode()
	}
	return r
}

// want fails the test unless r ended with code and its output holds each
// of the strings (in stdout, or in stderr when prefixed with "stderr:").
func (r cliResult) want(t *testing.T, what string, code int, contains ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("%s: exit %d, want %d\n%s", what, r.code, code, r)
		return
	}
	for _, c := range contains {
		out, s := r.stdout, c
		if rest, ok := strings.CutPrefix(c, "stderr:"); ok {
			out, s = r.stderr, rest
		}
		if !strings.Contains(out, s) {
			t.Errorf("%s: output lacks %q\n%s", what, s, r)
		}
	}
}

// decode unmarshals the stdout of a --json run.
func (r cliResult) decode(t *testing.T, what string, v any) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: exit %d\n%s", what, r.code, r)
	}
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("%s: stdout is not the JSON expected: %v\n%s", what, err, r)
	}
}

// tableRow returns the fields of the line of a table whose first column
// is first, nil when there is none.
func tableRow(out, first string) []string {
	for line := range strings.SplitSeq(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == first {
			return f
		}
	}
	return nil
}

// cliServer is a running tern serve with its admin API, for the CLI.
type cliServer struct {
	proc     *ternProc
	conf     string
	smtpAddr string
	api      []string // --api and --key for the CLI
	apiURL   string
}

// startCLIServer starts tern serve with admin access for 127.0.0.1 and
// the key k3y; its sink does not listen, so mail stays deferred. extra is
// added to the configuration.
func startCLIServer(t *testing.T, extra string) *cliServer {
	t.Helper()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("adm.test", "del.test"))
	sinkPort := freePortOn(t, sinkIP) // nothing listens: mail stays deferred
	smtpPort, adminPort := freePort(t), freePort(t)
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sinkPort, "")+fmt.Sprintf(`
<source 127.0.0.1>
    process-x-job yes
</source>
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 admin
http-api-key k3y
`, adminPort)+extra)
	url := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	return &cliServer{proc: startTern(t, conf), conf: conf, smtpAddr: fmt.Sprintf("127.0.0.1:%d", smtpPort),
		api: []string{"--api", url, "--key", "k3y"}, apiURL: url}
}

// run runs a CLI command against the server: args[0] is the command, the
// rest its arguments, and --api and --key are added.
func (s *cliServer) run(t *testing.T, args ...string) cliResult {
	t.Helper()
	return cliRun(t, nil, append(append([]string{args[0]}, s.api...), args[1:]...)...)
}

// waitQueues waits until the queue view satisfies ok.
func (s *cliServer) waitQueues(t *testing.T, what string, ok func(map[string]queueRow) bool) {
	t.Helper()
	waitUntil(t, deliverTimeout, "queues "+what, func() bool {
		var rows []queueRow
		if code := adminCall(t, "GET", s.apiURL+"/api/queues", "k3y", &rows); code != 200 {
			t.Fatalf("GET /api/queues: %d", code)
		}
		byName := map[string]queueRow{}
		for _, r := range rows {
			byName[r.Queue] = r
		}
		return ok(byName)
	})
}

// TestCLIViewsAndOperations drives every view and operation of the CLI
// against one server holding two deferred messages.
func TestCLIViewsAndOperations(t *testing.T) {
	t.Parallel()
	s := startCLIServer(t, "")
	mustInject(t, s.smtpAddr, "p@adm.test", "cli-pause", "X-Virtual-MTA: mta1", "X-Job: keep")
	mustInject(t, s.smtpAddr, "d@del.test", "cli-delete", "X-Virtual-MTA: mta1", "X-Job: doomed")
	s.waitQueues(t, "deferred", func(q map[string]queueRow) bool {
		return q["adm.test/mta1"].Deferred == 1 && q["del.test/mta1"].Deferred == 1
	})

	t.Run("status", func(t *testing.T) {
		s.run(t, "status").want(t, "status", 0, "tern dev, up ", "queued", "2 recipients in 2 messages", "deferred 2",
			"spool", "connections", "file descriptors", "TRAFFIC", "last hour")
		var st statusAnswer
		s.run(t, "status", "--json").decode(t, "status --json", &st)
		if st.Totals.Recipients != 2 || st.Totals.Queues != 2 || st.Spool == "" {
			t.Errorf("status --json: %+v, want 2 recipients in 2 queues and a spool", st)
		}
		if fd := st.FileDescriptors; fd == nil || fd.Limit <= 0 || fd.Open <= 0 || fd.Open > fd.Limit || fd.Inbound <= 0 || fd.Outbound <= 0 {
			t.Errorf("status --json: file descriptors %+v, want the budget and the descriptors open", fd)
		}
	})

	t.Run("queues", func(t *testing.T) {
		r := s.run(t, "queues")
		r.want(t, "queues", 0, "QUEUE", "PROVIDER", "TOTAL", "DEFERRED", "NEXT ATTEMPT", "LAST ERROR")
		// QUEUE PROVIDER TOTAL READY DEFERRED LEASED OLDEST NEXT ATTEMPT ...
		if f := tableRow(r.stdout, "adm.test/mta1"); len(f) < 6 || f[1] != "mx.sink.test" || f[2] != "1" || f[4] != "1" ||
			!strings.Contains(r.stdout, "normal") || !strings.Contains(r.stdout, "active") {
			t.Errorf("queues: row of adm.test/mta1 %q, want provider mx.sink.test, 1 deferred, normal, active\n%s", f, r.stdout)
		}
		var rows []queueRow
		s.run(t, "queues", "--domain", "adm.test", "--json").decode(t, "queues --domain --json", &rows)
		if len(rows) != 1 || rows[0].Queue != "adm.test/mta1" || rows[0].Deferred != 1 {
			t.Errorf("queues --domain adm.test --json: %+v", rows)
		}
		// Flags after the argument work as before it.
		s.run(t, "queues", "adm.test/mta1", "--events", "5").want(t, "queues QUEUE", 0,
			"adm.test/mta1", "mx.sink.test", "1 (ready 0, deferred 1, leased 0)", "KIND", "deferred", "p@adm.test")
	})

	t.Run("views", func(t *testing.T) {
		r := s.run(t, "vmtas")
		r.want(t, "vmtas", 0, "VMTA", "SOURCE IPS")
		if f := tableRow(r.stdout, "mta1"); len(f) < 3 || f[1] != "127.0.0.2" || f[2] != "mta1.tern.test" {
			t.Errorf("vmtas: row of mta1 %q\n%s", f, r.stdout)
		}
		var vm []struct {
			Name       string `json:"name"`
			Configured bool   `json:"configured"`
			Recipients int    `json:"recipients"`
		}
		s.run(t, "vmtas", "--json").decode(t, "vmtas --json", &vm)
		if len(vm) < 2 || vm[0].Name != "mta1" || !vm[0].Configured || vm[0].Recipients != 2 {
			t.Errorf("vmtas --json: %+v, want mta1 configured with 2 recipients first", vm)
		}
		r = s.run(t, "domains", "--top", "1")
		r.want(t, "domains", 0, "DOMAIN", "RECIPIENTS")
		if n := strings.Count(strings.TrimSpace(r.stdout), "\n"); n != 1 {
			t.Errorf("domains --top 1: %d rows, want 1\n%s", n, r.stdout)
		}
		r = s.run(t, "settings", "adm.test/mta1")
		r.want(t, "settings", 0, "settings of adm.test/mta1", "DIRECTIVE", "SET AT", "max-smtp-out")
		if f := tableRow(r.stdout, "default-smtp-port"); len(f) != 3 || !strings.HasPrefix(f[2], s.conf+":") {
			t.Errorf("settings: default-smtp-port row %q, want it set at %s:LINE:COL\n%s", f, s.conf, r.stdout)
		}
		if f := tableRow(r.stdout, "max-smtp-out"); len(f) != 3 || f[2] != "default" {
			t.Errorf("settings: max-smtp-out row %q, want it at its default\n%s", f, r.stdout)
		}
		var set struct {
			Queue    string `json:"queue"`
			Settings []any  `json:"settings"`
		}
		s.run(t, "settings", "adm.test/mta1", "--json").decode(t, "settings --json", &set)
		if set.Queue != "adm.test/mta1" || len(set.Settings) == 0 {
			t.Errorf("settings --json: %+v", set)
		}
		s.run(t, "settings", "adm.test/nosuch").want(t, "settings of an unknown VMTA", 1, `stderr:"nosuch"`, "stderr:404")
	})

	t.Run("pause and resume", func(t *testing.T) {
		s.run(t, "pause", "adm.test/mta1").want(t, "pause", 0, "pause: 1 queue paused; matched 1 queue: adm.test/mta1")
		s.waitQueues(t, "paused", func(q map[string]queueRow) bool { return q["adm.test/mta1"].Paused })
		var rows []queueRow
		s.run(t, "queues", "--paused", "yes", "--json").decode(t, "queues --paused yes", &rows)
		if len(rows) != 1 || rows[0].Queue != "adm.test/mta1" {
			t.Errorf("queues --paused yes: %+v, want adm.test/mta1 alone", rows)
		}
		r := s.run(t, "queues")
		if f := tableRow(r.stdout, "adm.test/mta1"); !strings.Contains(strings.Join(f, " "), "paused") {
			t.Errorf("queues after pause: row %q does not say paused", f)
		}
		var op struct {
			Count   int      `json:"count"`
			Matched []string `json:"matched"`
		}
		s.run(t, "pause", "--json", "adm.test/mta1").decode(t, "pause again --json", &op)
		if op.Count != 0 || len(op.Matched) != 1 {
			t.Errorf("pause of a paused queue --json: %+v, want count 0, 1 matched", op)
		}
		s.run(t, "resume", "adm.test/mta1").want(t, "resume", 0, "resume: 1 queue resumed")
		s.run(t, "pause", "--all").want(t, "pause --all", 0, "pause: 2 queues paused; matched 2 queues")
		s.run(t, "resume", "--all").want(t, "resume --all", 0, "resume: 2 queues resumed")
		s.waitQueues(t, "resumed", func(q map[string]queueRow) bool {
			return !q["adm.test/mta1"].Paused && !q["del.test/mta1"].Paused
		})
	})

	t.Run("retry and set-mode", func(t *testing.T) {
		s.run(t, "retry", "adm.test/mta1").want(t, "retry", 0, "retry: 1 recipient due now; matched 1 queue: adm.test/mta1")
		s.run(t, "set-mode", "*/mta1", "backoff").want(t, "set-mode", 0, "set-mode: 2 queues set to backoff")
		var rows []queueRow
		s.run(t, "queues", "--mode", "backoff", "--json").decode(t, "queues --mode backoff", &rows)
		if len(rows) != 2 {
			t.Errorf("queues --mode backoff: %+v, want both queues", rows)
		}
		s.run(t, "set-mode", "--all", "normal").want(t, "set-mode --all normal", 0, "set to normal")
	})

	t.Run("delete", func(t *testing.T) {
		s.run(t, "delete", "--job", "doomed").want(t, "delete --job", 0, "delete: 1 recipient deleted; matched 1 queue: del.test/mta1")
		s.waitQueues(t, "without del.test", func(q map[string]queueRow) bool {
			_, del := q["del.test/mta1"]
			_, adm := q["adm.test/mta1"]
			return !del && adm
		})
		s.run(t, "delete", "--job", "doomed", "adm.test/mta1").want(t, "delete --job QUEUE of nothing", 0, "0 recipients deleted; no queue matched")
	})

	t.Run("access and errors", func(t *testing.T) {
		r := cliRun(t, nil, "status", "--api", s.apiURL, "--key", "wrong")
		r.want(t, "a wrong key", exitDenied, "stderr:access denied")
		r = cliRun(t, []string{"TERN_API=" + s.apiURL, "TERN_API_KEY=k3y"}, "queues", "--json")
		r.want(t, "the API and key from the environment", 0, "adm.test/mta1")
		r = cliRun(t, nil, "status", "-c", s.conf)
		r.want(t, "the API and key from -c FILE", 0, "queued")
		r = cliRun(t, []string{"TERN_API_KEY=wrong"}, "status", "-c", s.conf)
		r.want(t, "TERN_API_KEY before the file's key", exitDenied)
		r = cliRun(t, nil, "status", "--api", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--timeout", "5s")
		r.want(t, "an API nobody listens on", exitUnreachable, "stderr:cannot reach the admin API")
		r = s.run(t, "queues", "nosuch.test/mta1")
		r.want(t, "a queue holding nothing", exitFailed, "stderr:404")
		r = s.run(t, "pause", "--json", "nosuch/x/y")
		r.want(t, "a malformed queue", exitUsage, "stderr:want DOMAIN/VMTA")
	})
	s.proc.stop(t)
}

// TestCLIReload: reload applies a valid file (exit 0) and reports each
// error of a broken one as FILE:LINE:COL (exit 1), also when the CLI finds
// the API through the broken file itself.
func TestCLIReload(t *testing.T) {
	t.Parallel()
	s := startCLIServer(t, "")
	s.run(t, "reload").want(t, "reload of a valid file", 0, "reloaded "+s.conf, "(0 warnings)")
	var ok struct {
		Reloaded bool `json:"reloaded"`
	}
	s.run(t, "reload", "--json").decode(t, "reload --json", &ok)
	if !ok.Reloaded {
		t.Errorf("reload --json: reloaded %v", ok.Reloaded)
	}

	good, err := os.ReadFile(s.conf)
	if err != nil {
		t.Fatal(err)
	}
	broken := string(good) + "max-smpt-out 3\n"
	line := strings.Count(broken, "\n")
	if err := os.WriteFile(s.conf, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("stderr:%s:%d:1: unknown directive \"max-smpt-out\"", s.conf, line)
	s.run(t, "reload").want(t, "reload of a broken file", exitFailed, "stderr:configuration refused", want)
	r := cliRun(t, nil, "reload", "-c", s.conf)
	r.want(t, "reload with -c of the broken file", exitFailed, want, "stderr:does not load")
	var refused struct {
		Error  string   `json:"error"`
		Errors []string `json:"errors"`
	}
	r = s.run(t, "reload", "--json")
	if r.code != exitFailed || json.Unmarshal([]byte(r.stdout), &refused) != nil || len(refused.Errors) != 1 {
		t.Errorf("reload --json of a broken file: %+v\n%s", refused, r)
	}
	// The server goes on with what it had.
	s.run(t, "status").want(t, "status after a refused reload", 0, "queued")
	s.proc.stop(t)
}

// TestCLIUsage: usage errors exit 2 before any request (no server runs
// here, so a request would exit 3).
func TestCLIUsage(t *testing.T) {
	t.Parallel()
	api := fmt.Sprintf("--api=127.0.0.1:%d", freePort(t))
	for _, args := range [][]string{
		{"status", api, "extra"},
		{"queues", api, "--nope"},
		{"queues", api, "--mode", "fast"},
		{"queues", api, "--paused", "maybe"},
		{"queues", api, "a/b", "c/d"},
		{"pause", api},
		{"pause", api, "*/*"},
		{"pause", api, "--all", "a/mta1"},
		{"resume", api, "example.com"},
		{"delete", api},
		{"set-mode", api, "a/mta1", "fast"},
		{"set-mode", api, "a/mta1"},
		{"settings", api, "*/mta1"},
		{"settings", api},
		{"domains", api, "--top", "0"},
		{"providers", api, "extra"},
		{"shaping", api, "--action", "pause"},
		{"hosts", api, "extra"},
		{"lift", api},
		{"lift", api, "--action", "pause"},
		{"lift", api, "--all", "--vmta", "mta1"},
		{"lift", api, "mx.example.net"},
		{"queues", api, "--provider"},
		{"status", "--api", "ftp://x"},
		{"status", api, "-c", filepath.Join(t.TempDir(), "missing.conf")},
	} {
		r := cliRun(t, nil, args...)
		r.want(t, strings.Join(args, " "), exitUsage, "stderr:usage: tern "+args[0])
	}
	cliRun(t, nil, "pause", "-h").want(t, "pause -h", 0, "stderr:exit codes:", "stderr:4  access denied")
	cliRun(t, nil, "lift", "-h").want(t, "lift -h", 0, "stderr:--provider", "stderr:--all", "stderr:exit codes:")
}

// TestCLIDefaultMgmtAddr keeps the CLI's default API address equal to
// http-mgmt-port's default.
func TestCLIDefaultMgmtAddr(t *testing.T) {
	cfg, err := config.Parse("t.conf", []byte("smtp-listener 127.0.0.1:2525\n"), config.Options{Hostname: "h"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPMgmtAddr.Value != defaultMgmtAddr {
		t.Errorf("http-mgmt-port defaults to %q, the CLI to %q", cfg.HTTPMgmtAddr.Value, defaultMgmtAddr)
	}
}

func TestCLIHelpers(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"8080", "127.0.0.1:8080"}, {":8080", "127.0.0.1:8080"}, {"0.0.0.0:81", "127.0.0.1:81"},
		{"[::]:82", "127.0.0.1:82"}, {"10.0.0.1:83", "10.0.0.1:83"}, {"[::1]:84", "[::1]:84"},
	} {
		if got := clientAddr(c.in); got != c.want {
			t.Errorf("clientAddr(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	src := []byte("# http-api-key no\nhttp-mgmt-port 127.0.0.1:9090 # admin\n  http-api-key \"a b\"\nhttp-api-key later\n")
	if got := scanDirective(src, "http-mgmt-port"); got != "127.0.0.1:9090" {
		t.Errorf("scanDirective http-mgmt-port = %q", got)
	}
	if got := scanDirective(src, "http-api-key"); got != "a b" {
		t.Errorf("scanDirective http-api-key = %q, want the quoted value", got)
	}
	for _, c := range []struct {
		d    time.Duration
		want string
	}{{0, "0s"}, {59 * time.Second, "59s"}, {192 * time.Second, "3m12s"}, {2*time.Hour + 5*time.Minute, "2h05m"},
		{76 * time.Hour, "3d04h"}} {
		if got := age(c.d); got != c.want {
			t.Errorf("age(%v) = %q, want %q", c.d, got, c.want)
		}
	}
	for _, c := range []struct {
		n    int64
		want string
	}{{512, "512 B"}, {12_345, "12.3 kB"}, {12_300_000, "12.3 MB"}, {4e15, "4000.0 TB"}} {
		if got := size(c.n); got != c.want {
			t.Errorf("size(%d) = %q, want %q", c.n, got, c.want)
		}
	}
	if got := clipStart("dial tcp: connect:  connection refused", 20); got != "…connection refused" {
		t.Errorf("clipStart = %q", got)
	}
	if got := clipStart("short", 20); got != "short" {
		t.Errorf("clipStart of a short text = %q", got)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"a", "--json", "b"}, "a b"},
		{[]string{"--json", "--", "--all"}, "--all"},
	} {
		fs, f := apiFlagSet("x", "", &bytes.Buffer{})
		pos, code := parseArgs(fs, c.args)
		if got := strings.Join(pos, " "); code != -1 || got != c.want || !f.json {
			t.Errorf("parseArgs(%q) = %q (%d, json %v), want %q with json", c.args, got, code, f.json, c.want)
		}
	}
}
