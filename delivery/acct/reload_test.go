package acct

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
)

func configOf(files ...*config.AcctFile) *config.Config {
	return &config.Config{AcctFiles: files}
}

// openSet opens a Set that the test closes at the end, and records in
// *opened every Writer its Prepares open.
func openSet(t *testing.T, cfg *config.Config, opts Options) (*Set, *[]*Writer) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	s, err := OpenAll(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	opened := new([]*Writer)
	s.open = func(af *config.AcctFile, o Options) (*Writer, error) {
		w, err := Open(af, o)
		if err == nil {
			*opened = append(*opened, w)
			t.Cleanup(func() { w.Close() })
		}
		return w, err
	}
	return s, opened
}

func isClosed(w *Writer) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed
}

// typesIn returns the type column of every record in path, in order.
func typesIn(t *testing.T, path string) string {
	t.Helper()
	var b strings.Builder
	for _, rec := range readCSV(t, path) {
		b.WriteString(rec[0])
	}
	return b.String()
}

// rcptsIn returns the rcpt column of every record in path, in order.
func rcptsIn(t *testing.T, path string) []string {
	t.Helper()
	var rcpts []string
	for _, rec := range readCSV(t, path) {
		rcpts = append(rcpts, rec[4])
	}
	return rcpts
}

func writeOrFail(t *testing.T, s *Set, typ byte, rcpt string) {
	t.Helper()
	if err := s.Write(Record{Type: typ, Rcpt: rcpt}); err != nil {
		t.Fatal(err)
	}
}

func checkSummary(t *testing.T, c *Change, opened, closed, updated []string) {
	t.Helper()
	o, cl, u := c.Summary()
	if !slices.Equal(o, opened) || !slices.Equal(cl, closed) || !slices.Equal(u, updated) {
		t.Errorf("Summary() = opened %q, closed %q, updated %q; want %q, %q, %q", o, cl, u, opened, closed, updated)
	}
}

func TestReloadRecordTypes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.csv")
	s, opened := openSet(t, configOf(acctFile(path, config.RecordTypes{Delivered: true}, 1<<20, config.Never)), Options{})
	w := s.Writers()[0]
	writeOrFail(t, s, TypeDelivered, "d1")
	writeOrFail(t, s, TypeBounced, "b1")

	// The same file spelled differently is kept, not opened again.
	c, err := s.Prepare(configOf(acctFile(dir+"/./a.csv", config.RecordTypes{Delivered: true, Bounced: true}, 1<<10, time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, c, nil, nil, []string{path})
	if len(*opened) != 0 {
		t.Fatalf("Prepare opened %d files for a kept path", len(*opened))
	}
	// Nothing changes before Commit.
	if s.Accepts(TypeBounced) {
		t.Error("Accepts(b) before Commit")
	}
	writeOrFail(t, s, TypeBounced, "b2")

	c.Commit()
	if ws := s.Writers(); len(ws) != 1 || ws[0] != w {
		t.Fatalf("Writers() = %v, want the same Writer", ws)
	}
	if !s.Accepts(TypeBounced) {
		t.Error("Accepts(b) false after Commit")
	}
	if got, want := w.current(), (settings{types: typeBits(config.RecordTypes{Delivered: true, Bounced: true}), maxSize: 1 << 10, interval: time.Hour, perm: filePerm, lay: stdLayout}); got != want {
		t.Errorf("settings after Commit %+v, want %+v", got, want)
	}
	writeOrFail(t, s, TypeBounced, "b3")
	writeOrFail(t, s, TypeDelivered, "d2")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(rcptsIn(t, path), ","), "d1,b3,d2"; got != want {
		t.Errorf("records %s, want %s", got, want)
	}
}

func TestReloadOpensNewFile(t *testing.T) {
	dir := t.TempDir()
	pathA, pathB := filepath.Join(dir, "a.csv"), filepath.Join(dir, "new", "b.csv")
	cfgA := acctFile(pathA, defaultTypes, 1<<20, config.Never)
	s, opened := openSet(t, configOf(cfgA), Options{})
	wa := s.Writers()[0]
	writeOrFail(t, s, TypeDelivered, "0")

	// The new file comes first, to check the order of the new list.
	c, err := s.Prepare(configOf(acctFile(pathB, config.RecordTypes{Delivered: true}, 1<<20, config.Never), cfgA))
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, c, []string{pathB}, nil, nil)
	if len(*opened) != 1 {
		t.Fatalf("Prepare opened %d files", len(*opened))
	}
	wb := (*opened)[0]
	if _, err := os.Stat(pathB); err != nil {
		t.Errorf("new file not created by Prepare: %v", err)
	}
	if ws := s.Writers(); len(ws) != 1 {
		t.Fatalf("%d writers before Commit", len(ws))
	}
	writeOrFail(t, s, TypeDelivered, "1")

	c.Commit()
	if ws := s.Writers(); len(ws) != 2 || ws[0] != wb || ws[1] != wa {
		t.Fatalf("Writers() after Commit = %v, want [%p %p]", ws, wb, wa)
	}
	writeOrFail(t, s, TypeDelivered, "2")
	writeOrFail(t, s, TypeBounced, "3")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rcptsIn(t, pathA), ","); got != "0,1,2,3" {
		t.Errorf("a: %s", got)
	}
	if got := strings.Join(rcptsIn(t, pathB), ","); got != "2" {
		t.Errorf("b: %s", got)
	}
}

func TestReloadClosesRemovedFile(t *testing.T) {
	dir := t.TempDir()
	pathA, pathB := filepath.Join(dir, "a.csv"), filepath.Join(dir, "b.csv")
	cfgA := acctFile(pathA, defaultTypes, 1<<20, config.Never)
	// No periodic flush during the test: whatever b holds at the end was
	// flushed by the Commit.
	s, _ := openSet(t, configOf(cfgA, acctFile(pathB, defaultTypes, 1<<20, config.Never)), Options{FlushInterval: time.Hour})
	wb := s.Writers()[1]
	const n = 200 // fits in the buffer
	for i := range n {
		if err := s.Write(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := readFile(t, pathB); got != "" {
		t.Fatalf("b flushed before the reload (%d bytes); the test proves nothing", len(got))
	}

	c, err := s.Prepare(configOf(cfgA))
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, c, nil, []string{pathB}, nil)
	if isClosed(wb) {
		t.Fatal("removed file closed before Commit")
	}
	c.Commit()
	if !isClosed(wb) {
		t.Fatal("removed file still open after Commit")
	}
	checkUnion(t, []string{pathB}, n, 1<<20, true)
	if err := wb.Write(numbered(n)); !errors.Is(err, ErrClosed) {
		t.Errorf("Write on the removed Writer: %v, want ErrClosed", err)
	}
	if err := s.Write(numbered(n)); err != nil {
		t.Fatalf("Write after the reload: %v", err)
	}
	if err := s.Flush(); err != nil {
		t.Fatalf("Flush after the reload: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	checkUnion(t, []string{pathA}, n+1, 1<<20, true)
	checkUnion(t, []string{pathB}, n, 1<<20, true)
}

func TestReloadAbort(t *testing.T) {
	dir := t.TempDir()
	pathA, pathB := filepath.Join(dir, "a.csv"), filepath.Join(dir, "b.csv")
	s, opened := openSet(t, configOf(acctFile(pathA, config.RecordTypes{Delivered: true}, 1<<20, config.Never)), Options{})
	before := s.Writers()
	settingsBefore := before[0].current()

	c, err := s.Prepare(configOf(
		acctFile(pathA, config.RecordTypes{Delivered: true, Bounced: true}, 1<<10, time.Hour),
		acctFile(pathB, defaultTypes, 1<<20, config.Never)))
	if err != nil {
		t.Fatal(err)
	}
	c.Abort()
	if len(*opened) != 1 || !isClosed((*opened)[0]) {
		t.Fatalf("Abort did not close the file Prepare opened (%d opened)", len(*opened))
	}
	check := func() {
		t.Helper()
		if ws := s.Writers(); !slices.Equal(ws, before) {
			t.Fatalf("Writers() = %v, want %v", ws, before)
		}
		if got := before[0].current(); got != settingsBefore {
			t.Errorf("settings %+v, want %+v", got, settingsBefore)
		}
		if s.Accepts(TypeBounced) {
			t.Error("Accepts(b) after Abort")
		}
	}
	check()
	// Commit after Abort, and Abort again, do nothing.
	c.Commit()
	c.Abort()
	check()
	writeOrFail(t, s, TypeBounced, "b")
	writeOrFail(t, s, TypeDelivered, "d")

	// The Set is free for the next reload.
	c, err = s.Prepare(configOf(acctFile(pathA, defaultTypes, 1<<20, config.Never)))
	if err != nil {
		t.Fatalf("Prepare after Abort: %v", err)
	}
	c.Abort()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := typesIn(t, pathA); got != "d" {
		t.Errorf("a: %q", got)
	}
	// The aborted file was created by Prepare; it is left with its header
	// and nothing else.
	if got := readFile(t, pathB); got != wantHeader {
		t.Errorf("b: %q", got)
	}
}

func TestReloadOpenFailure(t *testing.T) {
	dir := t.TempDir()
	pathA, pathC := filepath.Join(dir, "a.csv"), filepath.Join(dir, "c.csv")
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(blocker, "sub", "acct.csv") // under a regular file
	cfgA := acctFile(pathA, config.RecordTypes{Delivered: true}, 1<<20, config.Never)
	s, opened := openSet(t, configOf(cfgA), Options{})
	before := s.Writers()
	settingsBefore := before[0].current()

	c, err := s.Prepare(configOf(
		acctFile(pathA, config.RecordTypes{Bounced: true}, 1<<10, time.Hour),
		acctFile(pathC, defaultTypes, 1<<20, config.Never),
		acctFile(bad, defaultTypes, 1<<20, config.Never)))
	if err == nil || c != nil {
		t.Fatalf("Prepare with an unopenable file = %v, %v", c, err)
	}
	if !strings.Contains(err.Error(), blocker) {
		t.Errorf("error does not name the file: %v", err)
	}
	if len(*opened) != 1 || (*opened)[0].Path() != pathC || !isClosed((*opened)[0]) {
		t.Fatalf("the file opened before the failure is not closed again")
	}
	if ws := s.Writers(); !slices.Equal(ws, before) || before[0].current() != settingsBefore {
		t.Fatal("the failed Prepare changed the Set")
	}
	writeOrFail(t, s, TypeDelivered, "d")
	writeOrFail(t, s, TypeBounced, "b")

	// Nothing is left pending.
	c, err = s.Prepare(configOf(cfgA))
	if err != nil {
		t.Fatalf("Prepare after a failed one: %v", err)
	}
	c.Commit()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := typesIn(t, pathA); got != "d" {
		t.Errorf("a: %q", got)
	}
}

func TestReloadMisuse(t *testing.T) {
	dir := t.TempDir()
	pathA := filepath.Join(dir, "a.csv")
	cfgA := acctFile(pathA, defaultTypes, 1<<20, config.Never)

	var nilSet *Set
	if _, err := nilSet.Prepare(configOf(cfgA)); err == nil {
		t.Error("Prepare on a nil Set succeeded")
	}
	var nilChange *Change
	nilChange.Commit()
	nilChange.Abort()
	if o, c, u := nilChange.Summary(); o != nil || c != nil || u != nil {
		t.Error("Summary of a nil Change")
	}

	s, opened := openSet(t, configOf(cfgA), Options{})
	if _, err := s.Prepare(nil); err == nil {
		t.Error("Prepare(nil) succeeded")
	}

	// The same new file twice (differently spelled) is refused, and the
	// first one opened is closed again.
	x := filepath.Join(dir, "x.csv")
	if _, err := s.Prepare(configOf(cfgA, acctFile(x, defaultTypes, 1<<20, config.Never),
		acctFile(filepath.Join(dir, "sub")+"/../x.csv", defaultTypes, 1<<20, config.Never))); err == nil {
		t.Error("Prepare with a file configured twice succeeded")
	}
	if len(*opened) != 1 || !isClosed((*opened)[0]) {
		t.Error("the duplicate file's Writer was not closed")
	}
	if _, err := OpenAll(configOf(cfgA, acctFile(dir+"//a.csv", defaultTypes, 1<<20, config.Never)), Options{Logger: quiet}); err == nil {
		t.Error("OpenAll with a file configured twice succeeded")
	}

	// One Change at a time.
	c1, err := s.Prepare(configOf(cfgA))
	if err != nil {
		t.Fatal(err)
	}
	if c2, err := s.Prepare(configOf(cfgA)); err == nil {
		c2.Abort()
		t.Error("a second Prepare while one is pending succeeded")
	}
	c1.Commit()

	// A Change committed after Close closes its new file instead of
	// installing it; Prepare after Close fails.
	pathB := filepath.Join(dir, "b.csv")
	c, err := s.Prepare(configOf(cfgA, acctFile(pathB, defaultTypes, 1<<20, config.Never)))
	if err != nil {
		t.Fatal(err)
	}
	before := s.Writers()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	c.Commit()
	if wb := (*opened)[len(*opened)-1]; wb.Path() != pathB || !isClosed(wb) {
		t.Error("Commit after Close left the new file open")
	}
	if !slices.Equal(s.Writers(), before) {
		t.Error("Commit after Close installed the new files")
	}
	if _, err := s.Prepare(configOf(cfgA)); err == nil {
		t.Error("Prepare after Close succeeded")
	}
}

// TestReconfigure checks Writer.Reconfigure: record types from the next
// record, max-size from the next line, and move-interval followed by the
// flusher.
func TestReconfigure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	clock := newClock()
	w, tick := openManual(t, acctFile(path, config.RecordTypes{Delivered: true}, config.Unlimited, config.Never), clock)
	files := func() int { return len(acctFiles(t, dir, "acct.csv")) }

	w.Write(numbered(0))
	clock.Advance(2 * time.Hour)
	tick()
	if n := files(); n != 1 {
		t.Fatalf("%d files with move-interval never", n)
	}
	// The file is two hours old: with move-interval 1h the flusher moves it
	// at its next tick.
	w.Reconfigure(acctFile(path, config.RecordTypes{Delivered: true}, config.Unlimited, time.Hour))
	tick()
	if n := files(); n != 2 {
		t.Fatalf("%d files after move-interval 1h on a 2h old file, want 2", n)
	}
	w.Write(numbered(1))
	clock.Advance(59 * time.Minute)
	tick()
	if n := files(); n != 2 {
		t.Fatalf("%d files before the new interval elapsed, want 2", n)
	}
	clock.Advance(time.Minute)
	tick()
	if n := files(); n != 3 {
		t.Fatalf("%d files after the new interval elapsed, want 3", n)
	}
	// Back to never: no more moves.
	w.Reconfigure(acctFile(path, config.RecordTypes{Delivered: true}, config.Unlimited, config.Never))
	w.Write(numbered(2))
	clock.Advance(5 * time.Hour)
	tick()
	if n := files(); n != 3 {
		t.Fatalf("%d files after move-interval went back to never, want 3", n)
	}

	// A smaller max-size rotates before the next line.
	w.Reconfigure(acctFile(path, config.RecordTypes{Delivered: true}, config.Size(len(wantHeader)+10), config.Never))
	w.Write(numbered(3))
	if n := files(); n != 4 {
		t.Fatalf("%d files after a smaller max-size, want 4", n)
	}

	// Record types apply to the next record.
	bounce := numbered(4)
	bounce.Type = TypeBounced
	w.Write(bounce)
	w.Reconfigure(acctFile(path, config.RecordTypes{Bounced: true}, config.Unlimited, config.Never))
	if !w.Accepts(TypeBounced) || w.Accepts(TypeDelivered) {
		t.Error("Accepts does not follow the new records")
	}
	bounce = numbered(5)
	bounce.Type = TypeBounced
	w.Write(bounce)
	w.Write(numbered(6))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, f := range acctFiles(t, dir, "acct.csv") {
		for _, rec := range readCSV(t, f) {
			ids = append(ids, rec[0]+rec[20])
		}
	}
	if got, want := strings.Join(ids, ","), "d0,d1,d2,d3,b5"; got != want {
		t.Errorf("records %s, want %s", got, want)
	}
}

// raceConfig is the k-th configuration of TestReloadRace: a.csv always,
// with records and max-size alternating; b.csv in two configurations out of
// four, with records changing too.
func raceConfig(dirA, dirB string, k int) (cfg *config.Config, a, b config.RecordTypes) {
	a = config.RecordTypes{Delivered: true, Bounced: true}
	maxSize := config.Size(64 << 10)
	if k%2 == 1 {
		a = config.RecordTypes{Delivered: true, Transient: true}
		maxSize = config.Unlimited
	}
	cfg = configOf(acctFile(filepath.Join(dirA, "acct.csv"), a, maxSize, config.Never))
	switch k % 4 {
	case 1:
		b = config.RecordTypes{Delivered: true, Bounced: true, Transient: true}
	case 2:
		b = config.RecordTypes{Bounced: true}
	}
	if b != (config.RecordTypes{}) {
		// b first half of the time, to change the order too.
		bf := acctFile(filepath.Join(dirB, "acct.csv"), b, config.Unlimited, config.Never)
		if k%4 == 1 {
			cfg.AcctFiles = append([]*config.AcctFile{bf}, cfg.AcctFiles...)
		} else {
			cfg.AcctFiles = append(cfg.AcctFiles, bf)
		}
	}
	return cfg, a, b
}

// waitFor waits until cond holds, looking again every few milliseconds
// (a pipe's program needs the CPU a spin would take), and fails the test
// after a deadline generous for a loaded machine.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// TestReloadRace writes records from several goroutines while the Set is
// reloaded over and over, and checks that every record is in the files of
// exactly one configuration in effect while it was being written, once.
func TestReloadRace(t *testing.T) {
	const (
		goroutines = 8
		reloads    = 200
		perReload  = 25 // records written between two commits, at least
	)
	dirA, dirB, dirC := t.TempDir(), t.TempDir(), t.TempDir()
	cfg0, _, _ := raceConfig(dirA, dirB, 0)
	s, err := OpenAll(cfg0, Options{Logger: quiet, FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// gen is odd while a Commit runs: Commit k happens while gen is 2k-1.
	// A Write that reads g0 before and g1 after it used the configuration
	// of one of the commits g0/2 .. (g1+1)/2.
	var gen, written atomic.Int64
	var stop atomic.Bool
	type sent struct {
		typ    byte
		g0, g1 int64
	}
	logs := make([][]sent, goroutines)
	var failures atomic.Int64
	var firstErr sync.Once
	fail := func(err error) {
		failures.Add(1)
		firstErr.Do(func() { t.Errorf("during the reloads: %v", err) })
	}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				id := g + goroutines*i
				typ := "dbt"[id%3]
				g0 := gen.Load()
				err := s.Write(Record{Type: typ, Rcpt: "r" + strconv.Itoa(id), EnvID: strconv.Itoa(id)})
				g1 := gen.Load()
				if err != nil {
					fail(err)
				}
				logs[g] = append(logs[g], sent{typ, g0, g1})
				written.Add(1)
			}
		})
	}
	wg.Go(func() {
		for !stop.Load() {
			if err := s.Flush(); err != nil {
				fail(err)
			}
			s.Accepts(TypeReceived)
			s.Writers()
		}
	})

	for k := 1; k <= reloads; k++ {
		last := written.Load()
		waitFor(t, "records between reloads", func() bool { return written.Load() >= last+perReload || failures.Load() > 0 })
		if k%7 == 0 {
			// An aborted reload with a third file changes nothing.
			bogus, _, _ := raceConfig(dirA, dirB, k+1)
			bogus.AcctFiles = append(bogus.AcctFiles, acctFile(filepath.Join(dirC, "acct.csv"), defaultTypes, 1, time.Millisecond))
			c, err := s.Prepare(bogus)
			if err != nil {
				t.Fatal(err)
			}
			c.Abort()
		}
		cfg, _, _ := raceConfig(dirA, dirB, k)
		c, err := s.Prepare(cfg)
		if err != nil {
			t.Fatal(err)
		}
		gen.Add(1)
		c.Commit()
		gen.Add(1)
	}
	last := written.Load()
	waitFor(t, "records after the last reload", func() bool { return written.Load() >= last+perReload || failures.Load() > 0 })
	stop.Store(true)
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if failures.Load() > 0 {
		t.FailNow()
	}

	count := func(dir string) map[int]int {
		counts := map[int]int{}
		for _, f := range acctFiles(t, dir, "acct.csv") {
			for _, rec := range readCSV(t, f) {
				id, err := strconv.Atoi(rec[20])
				if err != nil || rec[4] != "r"+rec[20] {
					t.Fatalf("%s: bad record %q", f, rec)
				}
				g, i := id%goroutines, id/goroutines
				if i >= len(logs[g]) || rec[0] != string(logs[g][i].typ) {
					t.Fatalf("%s: record %q was never written", f, rec)
				}
				counts[id]++
			}
		}
		return counts
	}
	inA, inB := count(dirA), count(dirB)
	if got := typesIn(t, filepath.Join(dirC, "acct.csv")); got != "" {
		t.Errorf("the aborted file received records: %q", got)
	}
	total, bad := 0, 0
	for g, log := range logs {
		for i, r := range log {
			total++
			id := g + goroutines*i
			a, b := inA[id], inB[id]
			ok := false
			for k := r.g0 / 2; k <= min((r.g1+1)/2, reloads) && !ok; k++ {
				_, ta, tb := raceConfig(dirA, dirB, int(k))
				bit := typeBit(r.typ)
				ok = a == btoi(typeBits(ta)&bit != 0) && b == btoi(typeBits(tb)&bit != 0)
			}
			if !ok {
				bad++
				if bad <= 10 {
					t.Errorf("record %d (%c, generations %d..%d): %d times in a, %d in b", id, r.typ, r.g0, r.g1, a, b)
				}
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d records misplaced", bad, total)
	}
	files := len(acctFiles(t, dirA, "acct.csv"))
	t.Logf("%d records, %d reloads, a rotated into %d files", total, reloads, files)
	if total < reloads*perReload {
		t.Errorf("only %d records written", total)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
