package acct

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// Journal tests: the spool on an in-memory file system that can crash
// (vfs.NewCrashableMem keeps only what was synced), the accounting files on
// disk. The Journal is manual: the test writes out with drain, so a crash
// can be put at an exact point of a write-out.

// jenv is a spool with a Journal writing to the files of cfg.
type jenv struct {
	t     *testing.T
	cfg   *config.Config
	clock *fakeClock
	fs    *vfs.MemFS
	q     *queue.Queue
	set   *Set
	j     *Journal
	hook  func(point string)
	next  int          // messages stored so far
	log   bytes.Buffer // the Journal's log
}

func newJEnv(t *testing.T, cfg *config.Config) *jenv {
	e := &jenv{t: t, cfg: cfg, clock: newClock()}
	e.start(vfs.NewCrashableMem())
	t.Cleanup(func() {
		e.j.Close()
		e.set.Close()
		e.q.Close()
	})
	return e
}

// start opens the spool on fs, the Set and the Journal: what the Journal
// finds in the spool from before is written out.
func (e *jenv) start(fs *vfs.MemFS) {
	e.t.Helper()
	e.fs = fs
	q, err := queue.Open(queue.Options{Dir: "spool", FS: fs, Logger: quiet})
	if err != nil {
		e.t.Fatal(err)
	}
	e.q = q
	if e.set, err = OpenAll(e.cfg, Options{Logger: quiet, Now: e.clock.Now, Journaled: true}); err != nil {
		e.t.Fatal(err)
	}
	e.j, err = StartJournal(q, e.set, JournalOptions{Logger: slog.New(slog.NewTextHandler(&e.log, nil)), manual: true, hook: func(p string) {
		if e.hook != nil {
			e.hook(p)
		}
	}})
	if err != nil {
		e.t.Fatal(err)
	}
}

// put stores n messages, message i with recipient user<i>@example.com and
// an r and a d record of it (the queue does not care what an entry
// records).
func (e *jenv) put(n int) {
	e.t.Helper()
	for range n {
		i := e.next
		e.next++
		m := queue.Message{Recipients: []queue.Recipient{{Address: rcptOf(i), VMTA: "mta1"}}, Body: []byte("x")}
		if _, err := e.q.PutJournaled(context.Background(), m, func(dst [][]byte, _ queue.ID, _ *queue.Message) [][]byte {
			return append(dst, e.j.Entry(jrecord(TypeReceived, i)), e.j.Entry(jrecord(TypeDelivered, i)))
		}); err != nil {
			e.t.Fatal(err)
		}
	}
}

// abandon ends the run as a crash would: the Journal writes nothing
// more, the files are closed (with nothing buffered: a write-out leaves
// nothing), the spool is dropped (the test goes on with a crash clone).
func (e *jenv) abandon() {
	e.set.Close()
	e.q.Close()
}

func (e *jenv) drain() {
	e.t.Helper()
	if _, err := e.j.drain(); err != nil {
		e.t.Fatal(err)
	}
}

func rcptOf(i int) string { return "user" + strconv.Itoa(i) + "@example.com" }

// jrecord is record i of type typ; every tenth has a quoted multi-line
// diagnostic, so that lines are compared whole, not split at newlines.
func jrecord(typ byte, i int) Record {
	r := Record{Type: typ, Rcpt: rcptOf(i), EnvID: strconv.Itoa(i)}
	if i%10 == 0 {
		r.DSNDiag = multiLineDiag
	}
	return r
}

// counts returns, for the files in dir (rotated ones and the current
// one), how many records of each type each recipient has; every file must
// be whole.
func counts(t *testing.T, dir string) (map[string]string, int) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, ent := range ents {
		for _, rec := range readCSV(t, filepath.Join(dir, ent.Name())) {
			out[rec[4]] += rec[0]
		}
	}
	return out, len(ents)
}

// wantEach fails unless each of the first n recipients has exactly the
// record types of want (in any order) in dir.
func wantEach(t *testing.T, dir string, n int, want string) {
	t.Helper()
	got, _ := counts(t, dir)
	bad := 0
	for i := range n {
		k := got[rcptOf(i)]
		if len(k) != len(want) || strings.Count(k, "r") != strings.Count(want, "r") || strings.Count(k, "d") != strings.Count(want, "d") {
			if bad++; bad <= 10 {
				t.Errorf("%s: records %q in %s, want %q", rcptOf(i), k, dir, want)
			}
		}
		delete(got, rcptOf(i))
	}
	if len(got) > 0 {
		t.Errorf("records of recipients never stored: %v", got)
	}
}

// twoFiles is the configuration of the crash tests: a small file taking r
// and d records, which rotates every few write-outs, and one taking d.
func twoFiles(dir string) *config.Config {
	return configOf(
		acctFile(filepath.Join(dir, "a", "a.csv"), config.RecordTypes{Received: true, Delivered: true}, 3000, config.Never),
		acctFile(filepath.Join(dir, "b", "b.csv"), config.RecordTypes{Delivered: true}, config.Unlimited, config.Never),
	)
}

var errCrash = errors.New("crash")

// TestJournalCrashExactlyOnce crashes at each point of a write-out that
// matters, at the nth time it is reached: when the files hold and have
// synced lines the spool has not acknowledged ("synced"), with the last
// of those lines cut short ("cut"), and when a file has just been moved
// aside and a new one started whose position the spool does not have
// ("rotated"). The spool keeps only what was synced, or everything. After
// the restart, and more records, every record is in its files exactly
// once.
func TestJournalCrashExactlyOnce(t *testing.T) {
	const total = 240
	for _, point := range []string{"synced", "cut", "rotated"} {
		for nth := 1; nth <= 4; nth++ {
			for _, unsynced := range []int{0, 100} {
				t.Run(fmt.Sprintf("%s-%d-unsynced=%d", point, nth, unsynced), func(t *testing.T) {
					dir := t.TempDir()
					e := newJEnv(t, twoFiles(dir))
					hookPoint := point
					if point == "cut" {
						hookPoint = "synced"
					}
					var crashed *vfs.MemFS
					seen := 0
					e.hook = func(p string) {
						if p == hookPoint {
							if seen++; seen == nth {
								crashed = e.fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: unsynced, RNG: rand.New(rand.NewPCG(uint64(nth), 3))})
								panic(errCrash)
							}
						}
					}
					func() {
						defer func() {
							if p := recover(); p != nil && p != errCrash {
								panic(p)
							}
						}()
						for e.next < total {
							e.put(7)
							e.drain()
						}
					}()
					if crashed == nil {
						t.Fatalf("the write-outs never reached %q %d times", hookPoint, nth)
					}
					// The process is gone: its files stay as they are (a
					// sync leaves nothing buffered), its spool is the clone.
					e.hook = nil
					e.abandon()
					a := filepath.Join(dir, "a", "a.csv")
					if point == "cut" {
						st, err := os.Stat(a)
						if err != nil {
							t.Fatal(err)
						}
						if err := os.Truncate(a, st.Size()-7); err != nil {
							t.Fatal(err)
						}
					}
					e.start(crashed)
					if point == "cut" && !strings.Contains(e.log.String(), "removed what a crash left") {
						t.Errorf("no repair of the line cut short logged:\n%s", e.log.String())
					}
					for e.next < total {
						e.put(7)
						e.drain()
					}
					wantEach(t, filepath.Join(dir, "a"), e.next, "rd")
					wantEach(t, filepath.Join(dir, "b"), e.next, "d")
					if _, n := counts(t, filepath.Join(dir, "a")); n < 3 {
						t.Errorf("%d files for a.csv: want it rotated", n)
					}
				})
			}
		}
	}
}

// TestJournalReplayAtStart: what the journal holds when the spool is
// opened (a run that ended before writing it out) is written out by
// StartJournal, before it returns.
func TestJournalReplayAtStart(t *testing.T) {
	dir := t.TempDir()
	e := newJEnv(t, twoFiles(dir))
	e.put(20)
	e.drain()
	e.put(15) // committed, and the run ends before writing them out
	crashed := e.fs.CrashClone(vfs.CrashCloneCfg{})
	e.abandon()
	// And b.csv is gone: it has to start anew.
	if err := os.RemoveAll(filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	e.start(crashed)
	wantEach(t, filepath.Join(dir, "a"), 35, "rd")
	got, _ := counts(t, filepath.Join(dir, "b"))
	// b.csv was removed with its lines: the replay brings back those of
	// the entries still in the journal, and no more.
	for i := range 35 {
		if k, want := got[rcptOf(i)], map[bool]string{false: "", true: "d"}[i >= 20]; k != want {
			t.Errorf("%s: b.csv has %q, want %q", rcptOf(i), k, want)
		}
	}
}

// TestJournalEntry: no entry for a record no file takes; the time logged
// is fixed in the entry, so the line is the same at every write-out.
func TestJournalEntry(t *testing.T) {
	dir := t.TempDir()
	e := newJEnv(t, configOf(acctFile(filepath.Join(dir, "d.csv"), config.RecordTypes{Delivered: true}, config.Unlimited, config.Never)))
	if b := e.j.Entry(Record{Type: TypeReceived}); b != nil {
		t.Errorf("entry for an r record no file takes: %q", b)
	}
	if b := e.j.Entry(Record{Type: 'x'}); b != nil {
		t.Errorf("entry for an unknown type: %q", b)
	}
	var nilJ *Journal
	if nilJ.Entry(Record{Type: TypeDelivered}) != nil || nilJ.Accepts(TypeDelivered) {
		t.Error("a nil Journal makes entries")
	}
	b := e.j.Entry(Record{Type: TypeDelivered, Rcpt: "a@example.com"})
	want := "d," + e.clock.Now().Format(TimeFormat) + ",,,a@example.com,"
	if len(b) < 2 || b[0] != journalV1 || !strings.HasPrefix(string(b[1:]), want) {
		t.Errorf("entry %q, want a version byte and a line starting %q", b, want)
	}
	if err := e.set.Write(Record{Type: TypeDelivered}); !errors.Is(err, ErrJournaled) {
		t.Errorf("Set.Write on journaled files: %v, want ErrJournaled", err)
	}
}

// TestJournalWriteFailureRetried: a file that cannot be written keeps its
// records in the spool; the next write-out after it works again writes
// them, once.
func TestJournalWriteFailureRetried(t *testing.T) {
	dir := t.TempDir()
	e := newJEnv(t, twoFiles(dir))
	e.put(10)
	e.drain()
	e.put(10)
	w := e.set.Writers()[1] // b.csv
	ro, err := os.Open(w.Path())
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	w.f.Close()
	w.f = ro // writes fail from now on
	w.bw.Reset(ro)
	w.mu.Unlock()
	if _, err := e.j.drain(); err == nil {
		t.Fatal("write-out to a read-only file did not fail")
	}
	e.put(5)
	e.drain() // opens b.csv again
	wantEach(t, filepath.Join(dir, "a"), 25, "rd")
	wantEach(t, filepath.Join(dir, "b"), 25, "d")
}

// TestJournalReload: a reload that adds a file and a record type applies
// to the records made after it; a file the reload removes keeps what it
// had, and its position leaves the spool.
func TestJournalReload(t *testing.T) {
	dir := t.TempDir()
	aPath, cPath := filepath.Join(dir, "a", "a.csv"), filepath.Join(dir, "c", "c.csv")
	e := newJEnv(t, configOf(acctFile(aPath, config.RecordTypes{Delivered: true}, config.Unlimited, config.Never)))
	e.put(10)
	e.drain()
	e.put(5) // journaled before the reload: d records only
	ch, err := e.set.Prepare(configOf(
		acctFile(aPath, config.RecordTypes{Delivered: true, Received: true}, config.Unlimited, config.Never),
		acctFile(cPath, config.RecordTypes{Received: true}, config.Unlimited, config.Never)))
	if err != nil {
		t.Fatal(err)
	}
	ch.Commit()
	e.put(5)
	e.drain()
	a, _ := counts(t, filepath.Join(dir, "a"))
	c, _ := counts(t, filepath.Join(dir, "c"))
	for i := range 20 {
		wantA, wantC := "d", ""
		if i >= 15 {
			wantA, wantC = "rd", "r"
		}
		if a[rcptOf(i)] != wantA || c[rcptOf(i)] != wantC {
			t.Errorf("%s: a.csv %q, c.csv %q; want %q and %q", rcptOf(i), a[rcptOf(i)], c[rcptOf(i)], wantA, wantC)
		}
	}
	states, err := e.q.States(stateRoot)
	if err != nil || len(states) != 2 {
		t.Fatalf("positions in the spool: %v, %v; want a.csv's and c.csv's", states, err)
	}

	ch, err = e.set.Prepare(configOf(acctFile(cPath, config.RecordTypes{Received: true}, config.Unlimited, config.Never)))
	if err != nil {
		t.Fatal(err)
	}
	ch.Commit()
	e.put(3)
	e.drain()
	if a2, _ := counts(t, filepath.Join(dir, "a")); len(a2) != 20 {
		t.Errorf("a.csv, removed, got records: %d recipients", len(a2))
	}
	wantEachFrom(t, filepath.Join(dir, "c"), 15, 23, "r")
	states, _ = e.q.States(stateRoot)
	if _, ok := states[stateName(mustAbs(t, cPath))]; !ok || len(states) != 1 {
		t.Errorf("positions in the spool after a.csv was removed: %v", states)
	}
}

func wantEachFrom(t *testing.T, dir string, from, to int, want string) {
	t.Helper()
	got, _ := counts(t, dir)
	for i := from; i < to; i++ {
		if got[rcptOf(i)] != want {
			t.Errorf("%s: %q in %s, want %q", rcptOf(i), got[rcptOf(i)], dir, want)
		}
	}
	if len(got) != to-from {
		t.Errorf("%s holds records of %d recipients, want %d", dir, len(got), to-from)
	}
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestJournalMoveInterval: a quiet file is moved aside once its
// move-interval is over, without a record to write.
func TestJournalMoveInterval(t *testing.T) {
	dir := t.TempDir()
	e := newJEnv(t, configOf(acctFile(filepath.Join(dir, "m.csv"), config.RecordTypes{Delivered: true}, config.Unlimited, time.Hour)))
	e.put(3)
	e.drain()
	e.clock.Advance(59 * time.Minute)
	e.drain()
	if _, n := counts(t, dir); n != 1 {
		t.Fatalf("%d files before the hour is over", n)
	}
	e.clock.Advance(2 * time.Minute)
	e.drain()
	if _, n := counts(t, dir); n != 2 {
		t.Fatalf("%d files after the hour, want the moved one and a new one", n)
	}
	e.put(2)
	e.drain()
	wantEach(t, dir, 5, "d")
}

// TestJournalCutForeignFile: a file with no position in the spool (one
// from before journaling, say) that ends in half a line is moved aside
// at start rather than appended to.
func TestJournalCutForeignFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.csv")
	if err := os.WriteFile(path, []byte(wantHeader+"d,2026-01-01T00:00:00Z,,,half"), 0o640); err != nil {
		t.Fatal(err)
	}
	e := newJEnv(t, configOf(acctFile(path, config.RecordTypes{Delivered: true}, config.Unlimited, config.Never)))
	e.put(2)
	e.drain()
	if got := rcptsIn(t, path); len(got) != 2 {
		t.Errorf("records in the new file: %v", got)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("%d files, want the new one and the one moved aside", len(ents))
	}
}
