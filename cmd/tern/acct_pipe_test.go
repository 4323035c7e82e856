package main

// Piped accounting through the real tern serve: <acct-file |PROGRAM>.

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// pipeProgram writes a shell script that notes its pid in pids and runs
// body (with exec, so the pid noted is the one that reads), and returns
// its path.
func pipeProgram(t *testing.T, dir, name, pids, body string) string {
	t.Helper()
	prog := filepath.Join(dir, name)
	if err := os.WriteFile(prog, []byte(fmt.Sprintf("#!/bin/sh\necho $$ >> %s\nexec %s\n", pids, body)), 0o755); err != nil {
		t.Fatal(err)
	}
	return prog
}

// pipeOutput returns the whole CSV lines the program wrote to path.
func pipeOutput(t *testing.T, path string) [][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.LastIndexByte(b, '\n')
	if i < 0 {
		return nil
	}
	r := csv.NewReader(bytes.NewReader(b[:i+1]))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil {
		t.Fatalf("%s does not parse: %v", path, err)
	}
	return rows
}

func readPids(t *testing.T, path string) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

// TestAcctPipe: tern serve writes the d records to a program's input, in
// the columns record-fields gives it, the header_ fields read from the
// message sent. The program is killed once it has the records of the
// first messages; tern starts it again, and it gets the records of the
// messages injected after that, after a new header line.
func TestAcctPipe(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("pipe.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	out, pids := filepath.Join(dir, "records.csv"), filepath.Join(dir, "pids")
	prog := pipeProgram(t, dir, "acct-reader", pids, "cat >> "+out)
	confText := func(records string) string {
		return baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "") + fmt.Sprintf(`
<acct-file "|%s">
    records %s
    record-fields d rcpt,dsnStatus,vmta,header_Subject
    record-fields b rcpt,dsnStatus,vmta,header_Subject
</acct-file>
`, prog, records)
	}
	conf := writeConf(t, dir, confText("d"))
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	// wantRows waits until the program's output holds a d record for
	// each of the markers, and checks them.
	wantRows := func(markers []string) [][]string {
		t.Helper()
		var rows [][]string
		waitUntil(t, deliverTimeout, fmt.Sprintf("d records of %d messages from the program", len(markers)), func() bool {
			rows = pipeOutput(t, out)
			n := 0
			for _, r := range rows {
				if r[0] == "d" {
					n++
				}
			}
			return n >= len(markers)
		})
		got := map[string][]string{}
		for _, r := range rows {
			if r[0] == "type" {
				if strings.Join(r, ",") != "type,rcpt,dsnStatus,vmta,header_Subject" {
					t.Errorf("header line %v", r)
				}
				continue
			}
			if _, dup := got[r[1]]; dup {
				t.Errorf("two records of %s", r[1])
			}
			got[r[1]] = r
		}
		for _, m := range markers {
			r := got[m+"@pipe.test"]
			if r == nil || r[2] != "2.0.0" || r[3] != "mta2" || r[4] != "test "+m {
				t.Errorf("record of %s: %v", m, r)
			}
		}
		return rows
	}
	var first, second []string
	for i := range 5 {
		m := fmt.Sprintf("pipe-a%d", i)
		first = append(first, m)
		mustInject(t, addr, m+"@pipe.test", m)
	}
	wantRows(first)
	ps := readPids(t, pids)
	if len(ps) != 1 {
		t.Fatalf("program started %d times before the kill", len(ps))
	}
	mark := p.mark()
	if err := syscall.Kill(ps[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, mark, deliverTimeout, "the program's end", func(l string) bool {
		return strings.Contains(l, "accounting program ended; starting it again") && strings.Contains(l, "signal: killed")
	})
	for i := range 5 {
		m := fmt.Sprintf("pipe-b%d", i)
		second = append(second, m)
		mustInject(t, addr, m+"@pipe.test", m)
	}
	rows := wantRows(append(first, second...))
	sink.WaitMessages(t, 10, deliverTimeout)
	if ps := readPids(t, pids); len(ps) != 2 {
		t.Errorf("program started %d times, want twice", len(ps))
	}
	if len(rows) != 12 || rows[0][0] != "type" || rows[6][0] != "type" {
		t.Errorf("output: %d lines, want a header, 5 records, a header, 5 records:\n%v", len(rows), rows)
	}

	// A reload that keeps the command line keeps the program, and
	// applies the new records to it.
	writeConf(t, dir, confText("d,b"))
	mark = p.mark()
	p.signal(t, syscall.SIGHUP)
	changed := p.waitLog(t, mark, deliverTimeout, "the reload's accounting change", func(l string) bool {
		return strings.Contains(l, "accounting files changed")
	})
	if logField(changed, "opened") != `""` || logField(changed, "closed") != `""` || !strings.Contains(changed, "updated=|"+prog) {
		t.Errorf("reload: %s", changed)
	}
	mustInject(t, addr, "pipe-c0@pipe.test", "pipe-c0")
	rows = wantRows(append(append(first, second...), "pipe-c0"))
	if ps := readPids(t, pids); len(ps) != 2 || len(rows) != 13 {
		t.Errorf("after the reload: program started %d times, %d lines; want the same program, one more line", len(ps), len(rows))
	}
	p.stop(t)
}

// TestAcctPipeNeverReads: a program that never reads its input holds up
// nothing. Every message is delivered and has its records in the
// accounting file beside it; the records past the pipe's buffer are
// dropped with a warning; tern stops in time, killing the program.
func TestAcctPipeNeverReads(t *testing.T) {
	t.Parallel()
	const total, sessions = 1000, 4
	const loadTimeout = 120 * time.Second
	dir := t.TempDir()
	domains := []string{"stall1.test", "stall2.test"}
	dns := dnstest.Start(t, zones(domains...))
	sink := startCountingSink(t, sinkIP+":0")
	smtpPort, adminPort := freePort(t), freePort(t)
	pids := filepath.Join(dir, "pids")
	prog := pipeProgram(t, dir, "stuck", pids, "sleep 3600")
	acctDir := filepath.Join(dir, "acct")
	// Records of about 3.3 KB (three padding headers in them), two a
	// message: more than the pipe's buffer (4 MB) holds.
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "")+fmt.Sprintf(`
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 monitor
http-api-key s3cret
<acct-file |%s>
    records r,d
    record-fields r *,header_X-Pad1,header_X-Pad2,header_X-Pad3
    record-fields d *,header_X-Pad1,header_X-Pad2,header_X-Pad3
</acct-file>
<acct-file %s>
    records r,d
</acct-file>
`, adminPort, prog, filepath.Join(acctDir, "acct.csv")))
	p := startTern(t, conf)
	pad := strings.Repeat("p", 1000)
	res := injectSessions(fmt.Sprintf("127.0.0.1:%d", smtpPort), "S", total, sessions, domains,
		"X-Pad1: "+pad, "X-Pad2: "+pad, "X-Pad3: "+pad)
	select {
	case <-res.done:
	case <-time.After(loadTimeout):
		t.Fatal("injecting did not finish")
	}
	res.mu.Lock()
	err, acked := res.err, len(res.acked)
	res.mu.Unlock()
	if err != nil || acked != total {
		t.Fatalf("%d of %d messages accepted: %v", acked, total, err)
	}
	sink.waitArrived(t, total, loadTimeout)
	waitUntil(t, loadTimeout, "the accounting file to hold every record", func() bool {
		return len(acctRecords(t, acctDir)) >= 2*total
	})
	byType := map[string]int{}
	for _, r := range acctRecords(t, acctDir) {
		byType[r["type"]]++
	}
	if byType["r"] != total || byType["d"] != total {
		t.Errorf("accounting file: %v, want %d r and %d d records", byType, total, total)
	}
	p.waitLog(t, 0, deliverTimeout, "a warning about dropped records", func(l string) bool {
		return strings.Contains(l, "accounting program does not keep up; records dropped")
	})
	if n := strings.Count(p.log(), "records dropped"); n > 20 {
		t.Errorf("%d warnings about dropped records: not rate-limited", n)
	}
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/metrics", adminPort), nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`(?m)^tern_acct_pipe_dropped_total\{acct_file="\|` + regexp.QuoteMeta(prog) + `"\} (\d+)$`).FindSubmatch(body)
	if m == nil {
		t.Errorf("/metrics has no drop count of the pipe:\n%s", body)
	} else if n, _ := strconv.Atoi(string(m[1])); n == 0 || n > 2*total {
		t.Errorf("/metrics: %d records dropped", n)
	}
	ps := readPids(t, pids)
	if len(ps) != 1 {
		t.Fatalf("program started %d times", len(ps))
	}
	p.stop(t)
	for _, want := range []string{"accounting program did not exit after its input was closed; killed", "accounting records not delivered to the program at shutdown"} {
		if !strings.Contains(p.log(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if !errors.Is(syscall.Kill(ps[0], 0), syscall.ESRCH) {
		t.Errorf("the program (pid %d) outlived tern serve", ps[0])
	}
}
