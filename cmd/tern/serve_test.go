package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/ternmta/tern/queue"
)

// TestMain lets a test run this binary as the tern command: with
// TERN_TEST_MAIN set, the test binary is tern.
func TestMain(m *testing.M) {
	if os.Getenv("TERN_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// ternCmd returns a command running tern with args in a child process.
func ternCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "TERN_TEST_MAIN=1")
	return cmd
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writeConf(t *testing.T, dir, body string) string {
	t.Helper()
	path := filepath.Join(dir, "tern.conf")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitLine reads lines from r until one contains want, or fails after the
// deadline; it returns everything read.
func waitLine(t *testing.T, r *bufio.Reader, want string, deadline time.Duration) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		var all strings.Builder
		for {
			line, err := r.ReadString('\n')
			all.WriteString(line)
			if strings.Contains(line, want) || err != nil {
				got <- all.String()
				return
			}
		}
	}()
	select {
	case s := <-got:
		if !strings.Contains(s, want) {
			t.Fatalf("output ended without %q:\n%s", want, s)
		}
		return s
	case <-time.After(deadline):
		t.Fatalf("no %q within %v", want, deadline)
	}
	return ""
}

// TestServeAcceptsAndDrains runs tern serve as a child process, sends a
// message, stops it with SIGTERM and finds the message in the spool.
func TestServeAcceptsAndDrains(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	path := writeConf(t, dir, fmt.Sprintf(`
host-name tern.test
# The test waits for the "message accepted" line.
log-level debug
spool %s
smtp-listener 127.0.0.1:%d
# No DNS answers: the message stays queued (deferred) for the check below,
# and the test never asks the internet.
name-server 127.0.0.1:1
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.tern.test
</virtual-mta>
<source 0/0>
    default-virtual-mta mta1
</source>
`, filepath.Join(dir, "spool"), port))
	cmd := ternCmd(t, "serve", "-c", path)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	logs := bufio.NewReader(stderr)
	waitLine(t, logs, "smtp listener open", 20*time.Second)

	addr := fmt.Sprintf("127.0.0.1:%d", port)
	msg := "Subject: hello\r\n\r\nbody\r\n"
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("app@example.org", []string{"rcpt@example.com"}, strings.NewReader(msg)); err != nil {
		t.Fatalf("SendMail: %v", err)
	}
	c.Quit()
	waitLine(t, logs, "message accepted", 10*time.Second)

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, logs)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tern serve did not exit cleanly after SIGTERM: %v", err)
	}

	q, err := queue.Open(queue.Options{Dir: filepath.Join(dir, "spool")})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if tot := q.Totals(); tot.Messages != 1 || tot.Recipients != 1 {
		t.Fatalf("spool after restart holds %+v, want 1 message with 1 recipient", tot)
	}
}

// TestServePortInUse checks that a listener that cannot bind stops tern
// serve with exit status 1 and a message naming the address.
func TestServePortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	path := writeConf(t, dir, fmt.Sprintf("spool %s\nsmtp-listener %s\n", filepath.Join(dir, "spool"), busy.Addr()))
	out, err := ternCmd(t, "serve", "-c", path).CombinedOutput()
	var ee *exec.ExitError
	if !errAs(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit = %v, want status 1; output:\n%s", err, out)
	}
	if !strings.Contains(string(out), busy.Addr().String()) || !strings.Contains(string(out), "address already in use") {
		t.Errorf("output does not explain the bind failure:\n%s", out)
	}
}

// TestServeBrokenConfig checks that serve refuses to start on a broken file
// and says where.
func TestServeBrokenConfig(t *testing.T) {
	dir := t.TempDir()
	path := writeConf(t, dir, "smtp-listener 127.0.0.1:2525\nmax-smpt-out 3\n")
	out, err := ternCmd(t, "serve", "-c", path).CombinedOutput()
	var ee *exec.ExitError
	if !errAs(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit = %v, want status 1; output:\n%s", err, out)
	}
	if !strings.Contains(string(out), path+":2:1: unknown directive") {
		t.Errorf("output does not locate the error:\n%s", out)
	}
}

func errAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}
