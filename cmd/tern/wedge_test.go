package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
)

// A full spool disk at start: tern serve exits at once with one clear
// message instead of waiting for ever while pebble retries its flush (and
// logging that hundreds of times a second). The disk is a small tmpfs,
// which needs root: the test is skipped where mount is not allowed.
func TestServeRefusesAFullSpoolDisk(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	spool := filepath.Join(dir, "spool")
	if err := os.Mkdir(spool, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", spool).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs for the spool (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", spool).Run() })
	// Fill the disk.
	f, err := os.Create(filepath.Join(spool, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()

	dns := dnstest.Start(t, zones("x.test"))
	conf := writeConf(t, dir, baseConf(dir, freePort(t), dns.Addr(), 25, ""))
	cmd := ternCmd(t, "serve", "-c", conf)
	start := time.Now()
	done := make(chan struct{})
	var out []byte
	go func() {
		out, err = cmd.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(startTimeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("tern serve still running %v after starting on a full disk; output:\n%.2000s", startTimeout, out)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("exit: %v, want status 1", err)
	}
	if !strings.Contains(string(out), "cannot open the spool") || !strings.Contains(string(out), "free") {
		t.Errorf("output does not say the spool's disk is full:\n%s", out)
	}
	if n := strings.Count(string(out), "\n"); n > 10 {
		t.Errorf("%d lines of output in %v, want a few:\n%.2000s", n, time.Since(start).Round(time.Millisecond), out)
	}
}

// A reload that cannot finish (here an <acct-file> that is a FIFO nobody
// reads: opening it for writing blocks) must not stop SIGTERM from
// working: the reload runs beside the signal loop.
func TestSIGTERMDuringAStuckReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("x.test"))
	body := baseConf(dir, freePort(t), dns.Addr(), 25, "")
	p := startTern(t, writeConf(t, dir, body))
	fifo := filepath.Join(dir, "acct.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.conf, []byte(body+fmt.Sprintf("<acct-file %s>\n    records d\n</acct-file>\n", fifo)), 0o644); err != nil {
		t.Fatal(err)
	}
	mark := p.mark()
	p.signal(t, syscall.SIGHUP)
	// Ask again until tern serve says the first reload is still running
	// (it hangs on the FIFO), or that it ended (should the accounting code
	// one day refuse a FIFO): either way SIGTERM must then stop tern serve.
	deadline := time.Now().Add(reloadTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		p.mu.Lock()
		seen := false
		for _, line := range p.lines[mark:] {
			if strings.Contains(line, "a reload is still running") || strings.Contains(line, `msg="reload refused"`) ||
				strings.Contains(line, `msg="configuration reloaded"`) {
				seen = true
			}
		}
		p.mu.Unlock()
		if seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sign of the reload within %v", reloadTimeout)
		}
		<-tick.C
		p.signal(t, syscall.SIGHUP)
	}
	p.signal(t, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(exitTimeout):
		t.Fatalf("tern serve did not exit within %v of SIGTERM during a stuck reload", exitTimeout)
	}
}
