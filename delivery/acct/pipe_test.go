package acct

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
)

// Pipe tests run real programs: small shell scripts in the test's
// directory that note their pid and append their input to a file.

// syncBuffer is a log destination safe for the Pipe's goroutine and the
// test to use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// count returns how many log lines contain msg.
func (s *syncBuffer) count(msg string) int { return strings.Count(s.String(), msg) }

// catScript writes a program that appends its pid to pids and its input
// to out, and returns its path.
func catScript(t *testing.T, dir string) (prog, out, pids string) {
	t.Helper()
	out, pids = filepath.Join(dir, "out.csv"), filepath.Join(dir, "pids")
	prog = filepath.Join(dir, "acct-reader")
	// exec: the pid noted is the one reading (and the one killed).
	script := fmt.Sprintf("#!/bin/sh\necho $$ >> %s\nexec cat >> %s\n", pids, out)
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return prog, out, pids
}

func pipeFile(argv []string, types config.RecordTypes) *config.AcctFile {
	return &config.AcctFile{Command: argv, Records: config.Setting[config.RecordTypes]{Value: types}}
}

// outLines returns the lines of the program's output, split as CSV (a
// missing file has none).
func outLines(t *testing.T, path string) [][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	// Only whole lines: the program may be halfway through one.
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		return nil
	}
	r := csv.NewReader(bytes.NewReader(b))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return recs
}

// records counts the lines of out that are not header lines.
func records(t *testing.T, out string) int {
	n := 0
	for _, l := range outLines(t, out) {
		if l[0] != "type" {
			n++
		}
	}
	return n
}

func pidsOf(t *testing.T, path string) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
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

// reaped reports whether process pid is gone, not even a zombie: its
// input pipe is then closed for sure.
func reaped(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func pipeRecord(typ byte, i int) Record {
	return Record{Type: typ, TimeLogged: time.Date(2026, 11, 25, 17, 15, 0, 0, time.UTC), Rcpt: rcptOf(i), VMTA: "mta1"}
}

// TestPipeHeaderAndRecords: the program gets the header line and then
// the records of the types it takes, in order, and Close ends it.
func TestPipeHeaderAndRecords(t *testing.T) {
	prog, out, pids := catScript(t, t.TempDir())
	s, err := OpenAll(configOf(pipeFile([]string{prog}, config.RecordTypes{Delivered: true, Bounced: true})), Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(s.Pipes()) != 1 || len(s.Writers()) != 0 {
		t.Fatalf("pipes %v, writers %v", s.Pipes(), s.Writers())
	}
	if !s.Accepts(TypeDelivered) || s.Accepts(TypeTransient) {
		t.Error("Accepts does not follow the pipe's records")
	}
	for i := range 50 {
		typ := []byte{TypeDelivered, TypeBounced, TypeTransient}[i%3]
		if err := s.Write(pipeRecord(typ, i)); err != nil {
			t.Fatal(err)
		}
	}
	want := 34 // the d and b records of 50
	waitFor(t, "the records in the program's output", func() bool { return records(t, out) == want })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if !strings.HasPrefix(string(b), wantHeader) || strings.Count(string(b), "type,") != 1 {
		t.Fatalf("output does not start with one header line:\n%.300s", b)
	}
	k := 0
	for i := range 50 {
		if i%3 == 2 {
			continue
		}
		rec := outLines(t, out)[1+k]
		if rec[4] != rcptOf(i) || rec[0] != string([]byte{"dbt"[i%3]}) || len(rec) != len(Columns) {
			t.Errorf("record %d = %v", k, rec)
		}
		k++
	}
	if p := pidsOf(t, pids); len(p) != 1 {
		t.Errorf("program started %d times", len(p))
	} else {
		waitFor(t, "the program to exit after Close", func() bool { return reaped(p[0]) })
	}
	if err := s.Write(pipeRecord(TypeDelivered, 99)); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
}

// TestPipeRestartsAfterKill kills the program after it has read N
// records: it is started again, gets a header line, and then every
// record written after the kill.
func TestPipeRestartsAfterKill(t *testing.T) {
	dir := t.TempDir()
	prog, out, pids := catScript(t, dir)
	var logs syncBuffer
	s, err := OpenAll(configOf(pipeFile([]string{prog, "--some-arg"}, config.RecordTypes{Delivered: true})),
		Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), pipeBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n, m = 20, 30
	for i := range n {
		if err := s.Write(pipeRecord(TypeDelivered, i)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the first records", func() bool { return records(t, out) == n })
	first := pidsOf(t, pids)
	if len(first) != 1 {
		t.Fatalf("pids %v", first)
	}
	if err := syscall.Kill(first[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Once the program is gone, its input is closed: what is written
	// now waits in the Pipe's buffer for the next program.
	waitFor(t, "the killed program to be reaped", func() bool { return reaped(first[0]) })
	for i := n; i < n+m; i++ {
		if err := s.Write(pipeRecord(TypeDelivered, i)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the records written after the kill", func() bool { return records(t, out) == n+m })
	if p := pidsOf(t, pids); len(p) != 2 {
		t.Errorf("program started %d times, want twice", len(p))
	}
	lines := outLines(t, out)
	if len(lines) != n+m+2 || lines[0][0] != "type" || lines[n+1][0] != "type" {
		t.Fatalf("output: %d lines, headers at 0 and %d expected:\n%v", len(lines), n+1, lines)
	}
	for i, k := 0, 0; i < len(lines); i++ {
		if lines[i][0] == "type" {
			continue
		}
		if lines[i][4] != rcptOf(k) {
			t.Errorf("line %d is %s's record, want %s's", i, lines[i][4], rcptOf(k))
		}
		k++
	}
	if l := logs.String(); !strings.Contains(l, "accounting program ended; starting it again") || !strings.Contains(l, "signal: killed") {
		t.Errorf("log does not say why the program was started again:\n%s", l)
	}
}

// TestPipeProgramNeverReads: a program that never reads its input does
// not hold up Write: 100,000 records return at once, those past the
// buffer are dropped and counted, with one warning while the clock does
// not move, and Close kills the program after its wait.
func TestPipeProgramNeverReads(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "sleeper")
	pidFile := filepath.Join(dir, "pid")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\necho $$ > "+pidFile+"\nexec sleep 1000\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	clock := newClock()
	const buffer = 64 << 10
	s, err := OpenAll(configOf(pipeFile([]string{prog}, config.RecordTypes{Delivered: true})),
		Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: clock.Now, pipeBuffer: buffer, pipeCloseWait: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const total = 100_000
	lineLen := 0
	for i := range total {
		r := pipeRecord(TypeDelivered, i)
		if i == 0 {
			e := encoders.Get().(*encoder)
			l, _ := e.line(&r)
			lineLen = len(l)
			encoders.Put(e)
		}
		if err := s.Write(r); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	p := s.Pipes()[0]
	// At most the buffer, a write in progress and a kernel pipe (64 KiB
	// by default; 1 MiB allowed for) are not dropped.
	kept := (buffer + pipeChunk + 1<<20) / lineLen
	if d := p.Dropped(); d < total-uint64(kept) || d > total {
		t.Errorf("dropped %d of %d records, want at least %d", d, total, total-kept)
	}
	if n := logs.count("records dropped"); n != 1 {
		t.Errorf("%d warnings about dropped records while the clock stood still, want 1:\n%s", n, logs.String())
	}
	clock.Advance(dropWarnEvery)
	if err := s.Write(pipeRecord(TypeDelivered, total)); err != nil {
		t.Fatal(err)
	}
	if n := logs.count("records dropped"); n != 2 {
		t.Errorf("%d warnings after %v, want 2", n, dropWarnEvery)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "did not exit after its input was closed; killed") {
		t.Errorf("log does not say the program was killed:\n%s", logs.String())
	}
	if pids := pidsOf(t, pidFile); len(pids) != 1 || !reaped(pids[0]) {
		t.Errorf("program %v still running after Close", pids)
	}
}

// TestPipeReload: a reload that keeps the command line keeps the running
// program and applies the new records; another command line is another
// pipe, and the old program is ended.
func TestPipeReload(t *testing.T) {
	dir := t.TempDir()
	prog, out, pids := catScript(t, dir)
	filePath := filepath.Join(dir, "files", "acct.csv")
	s, err := OpenAll(configOf(pipeFile([]string{prog}, config.RecordTypes{Delivered: true})), Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p := s.Pipes()[0]
	writeOrFail(t, s, TypeDelivered, "d1")
	writeOrFail(t, s, TypeBounced, "b1") // not taken yet

	c, err := s.Prepare(configOf(
		pipeFile([]string{prog}, config.RecordTypes{Delivered: true, Bounced: true}),
		acctFile(filePath, defaultTypes, config.Unlimited, config.Never)))
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, c, []string{filePath}, nil, []string{"|" + prog})
	c.Commit()
	if ps := s.Pipes(); len(ps) != 1 || ps[0] != p {
		t.Fatalf("pipes after a reload with the same command: %v, want the same Pipe", ps)
	}
	writeOrFail(t, s, TypeBounced, "b2")
	waitFor(t, "d1 and b2", func() bool { return records(t, out) == 2 })
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := rcptsIn(t, filePath); len(got) != 1 || got[0] != "b2" {
		t.Errorf("file got %v, want b2", got)
	}
	first := pidsOf(t, pids)
	if len(first) != 1 || p.starts.Load() != 1 {
		t.Fatalf("the program was started again by the reload: pids %v", first)
	}
	if lines := outLines(t, out); len(lines) != 3 || lines[1][4] != "d1" || lines[2][4] != "b2" {
		t.Errorf("output %v, want a header, d1 and b2", lines)
	}

	// Other columns: a header line in them before the next record, from
	// the same program.
	c, err = s.Prepare(configOf(withFields(pipeFile([]string{prog}, config.RecordTypes{Delivered: true}),
		config.RecordFields{Type: "d", Fields: []string{"rcpt", "vmta"}})))
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, c, nil, []string{filePath}, []string{"|" + prog})
	c.Commit()
	writeOrFail(t, s, TypeDelivered, "d2")
	waitFor(t, "d2", func() bool { return records(t, out) == 3 })
	if lines := outLines(t, out); len(lines) != 5 || strings.Join(lines[3], ",") != "type,rcpt,vmta" || strings.Join(lines[4], ",") != "d,d2," {
		t.Errorf("output after new columns: %v", lines)
	}

	// Another argument: another pipe.
	c, err = s.Prepare(configOf(pipeFile([]string{prog, "x y"}, config.RecordTypes{Delivered: true})))
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, c, []string{"|" + prog + ` "x y"`}, []string{"|" + prog}, nil)
	c.Commit()
	if ps := s.Pipes(); len(ps) != 1 || ps[0] == p {
		t.Fatalf("pipes after a change of command: %v", ps)
	}
	waitFor(t, "the old program to end", func() bool { return reaped(first[0]) })
	writeOrFail(t, s, TypeDelivered, "d3")
	waitFor(t, "d3 from the new program", func() bool { return records(t, out) == 4 })
	if p := pidsOf(t, pids); len(p) != 2 {
		t.Errorf("pids %v, want two programs", p)
	}
}

// TestPipeCannotStart: a program that cannot be run fails the open, so a
// reload naming it is refused.
func TestPipeCannotStart(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenAll(configOf(pipeFile([]string{notExec}, defaultTypes)), Options{Logger: quiet}); err == nil {
		t.Fatal("OpenAll started a program that is not executable")
	}
	s, err := OpenAll(configOf(), Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Prepare(configOf(pipeFile([]string{filepath.Join(dir, "missing")}, defaultTypes))); err == nil {
		t.Fatal("Prepare accepted a missing program")
	}
	if c, err := s.Prepare(configOf()); err != nil {
		t.Fatalf("a failed Prepare left a Change pending: %v", err)
	} else {
		c.Abort()
	}
}

// TestJournalFeedsPipe: through a Journal, a pipe gets each record once
// the spool has acknowledged it, beside the files.
func TestJournalFeedsPipe(t *testing.T) {
	dir := t.TempDir()
	prog, out, _ := catScript(t, dir)
	e := newJEnv(t, configOf(
		acctFile(filepath.Join(dir, "files", "a.csv"), config.RecordTypes{Delivered: true}, config.Unlimited, config.Never),
		pipeFile([]string{prog}, config.RecordTypes{Delivered: true, Received: true})))
	if err := e.set.Pipes()[0].Write(pipeRecord(TypeDelivered, 0)); !errors.Is(err, ErrJournaled) {
		t.Errorf("Write on a journaled pipe = %v, want ErrJournaled", err)
	}
	e.put(10)
	e.drain()
	e.put(5)
	e.drain()
	wantEach(t, filepath.Join(dir, "files"), 15, "d")
	waitFor(t, "the records in the program's output", func() bool { return records(t, out) == 30 })
	got := map[string]string{}
	for _, l := range outLines(t, out)[1:] {
		got[l[4]] += l[0]
	}
	for i := range 15 {
		if got[rcptOf(i)] != "rd" {
			t.Errorf("%s: %q through the pipe, want r then d", rcptOf(i), got[rcptOf(i)])
		}
	}
}

// TestPipeBackoff: a program that exits at once is started again and
// again, each time after twice the wait of the time before, and the log
// says how it exited and what it wrote on standard error.
func TestPipeBackoff(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "quitter")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\necho \"no database\" >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	// A run shorter than the most wait does not start the waits over;
	// ten seconds is far more than the script takes, however loaded the
	// machine.
	s, err := OpenAll(configOf(pipeFile([]string{prog}, defaultTypes)),
		Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), pipeBackoff: 5 * time.Millisecond, pipeMaxBackoff: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitFor(t, "four runs of the program", func() bool { return logs.count("accounting program ended") >= 4 })
	l := logs.String()
	for _, want := range []string{`why="exit status 3"`, `stderr="no database"`} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %s:\n%s", want, l)
		}
	}
	var waits []string
	for _, m := range regexp.MustCompile(`restart_in=(\S+)`).FindAllStringSubmatch(l, -1) {
		waits = append(waits, m[1])
	}
	if len(waits) < 4 || strings.Join(waits[:4], " ") != "5ms 10ms 20ms 40ms" {
		t.Errorf("waits %v, want 5ms 10ms 20ms 40ms first", waits)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
