package acct

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
)

const wantHeader = "type,timeLogged,timeQueued,orig,rcpt,orcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,srcType,srcMta,dlvType,dlvSourceIp,dlvDestinationIp,dlvEsmtpAvailable,dlvSize,vmta,jobId,envId,queue,vmtaPool\n"

var quiet = slog.New(slog.DiscardHandler)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 25, 17, 15, 0, 123e6, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func acctFile(path string, types config.RecordTypes, maxSize config.Size, interval time.Duration) *config.AcctFile {
	return &config.AcctFile{
		Path:         path,
		Records:      config.Setting[config.RecordTypes]{Value: types},
		MaxSize:      config.Setting[config.Size]{Value: maxSize},
		MoveInterval: config.Setting[time.Duration]{Value: interval},
	}
}

var defaultTypes = config.RecordTypes{Delivered: true, Bounced: true}

// openManual opens a Writer whose flusher only runs when the test ticks it.
func openManual(t *testing.T, cfg *config.AcctFile, clock *fakeClock) (*Writer, func()) {
	t.Helper()
	tick := make(chan time.Time)
	opts := Options{Logger: quiet, tick: tick}
	if clock != nil {
		opts.Now = clock.Now
	}
	w, err := Open(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	// The channel is unbuffered: the second send is only received once the
	// flusher has finished handling the first tick.
	return w, func() { tick <- time.Time{}; tick <- time.Time{} }
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// readCSV parses an accounting file, checking its header line and the number
// of fields of every record, and returns the records after the header.
func readCSV(t *testing.T, path string) [][]string {
	t.Helper()
	text := readFile(t, path)
	if !strings.HasPrefix(text, wantHeader) {
		t.Fatalf("%s does not start with the header: %.200q", path, text)
	}
	if !strings.HasSuffix(text, "\n") {
		t.Fatalf("%s does not end with a whole line: %.200q", path, text[max(0, len(text)-200):])
	}
	r := csv.NewReader(strings.NewReader(text))
	r.FieldsPerRecord = len(Columns)
	recs, err := r.ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return recs[1:]
}

func fullRecord() Record {
	loc := time.FixedZone("", 2*3600)
	return Record{
		Type:              TypeBounced,
		TimeLogged:        time.Date(2026, 11, 25, 17, 15, 2, 0, loc),
		TimeQueued:        time.Date(2026, 11, 25, 17, 14, 0, 0, time.UTC),
		Orig:              "bounces@sender.example",
		Rcpt:              "nobody@example.com",
		ORcpt:             "rfc822;Nobody@Example.com",
		DSNAction:         "failed",
		DSNStatus:         "5.1.1 (bad destination mailbox address)",
		DSNDiag:           "smtp;550 5.1.1 <nobody@example.com>: no such user",
		DSNMta:            "dns;mx.example.com (192.0.2.1)",
		BounceCat:         "bad-mailbox",
		SrcType:           "smtp",
		SrcMta:            "app.sender.example (198.51.100.7)",
		DlvType:           "smtp",
		DlvSourceIP:       "203.0.113.5",
		DlvDestinationIP:  "192.0.2.1",
		DlvESMTPAvailable: "8BITMIME,PIPELINING,SIZE,STARTTLS",
		DlvSize:           12345,
		VMTA:              "vmta1",
		JobID:             "job-42",
		EnvID:             "env-7",
		Queue:             "example.com/vmta1",
		VMTAPool:          "pool-a",
	}
}

func TestHeaderAndColumns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acct.csv")
	w, _ := openManual(t, acctFile(path, defaultTypes, 1<<20, config.Never), nil)
	if err := w.Write(fullRecord()); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(Record{Type: TypeDelivered, TimeLogged: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Rcpt: "a@b.example"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	text := readFile(t, path)
	want := wantHeader +
		`b,2026-11-25T17:15:02+02:00,2026-11-25T17:14:00Z,bounces@sender.example,nobody@example.com,rfc822;Nobody@Example.com,failed,5.1.1 (bad destination mailbox address),smtp;550 5.1.1 <nobody@example.com>: no such user,dns;mx.example.com (192.0.2.1),bad-mailbox,smtp,app.sender.example (198.51.100.7),smtp,203.0.113.5,192.0.2.1,"8BITMIME,PIPELINING,SIZE,STARTTLS",12345,vmta1,job-42,env-7,example.com/vmta1,pool-a` + "\n" +
		`d,2026-01-02T03:04:05Z,,,a@b.example,,,,,,,,,,,,,,,,,,` + "\n"
	if text != want {
		t.Errorf("file:\n%s\nwant:\n%s", text, want)
	}
	if got := strings.Join(Columns, ",") + "\n"; got != wantHeader {
		t.Errorf("Columns = %q", got)
	}
	recs := readCSV(t, path)
	if len(recs) != 2 || len(recs[0]) != 23 {
		t.Fatalf("records: %q", recs)
	}
}

func TestTimeLoggedDefaultsToNow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acct.csv")
	clock := newClock()
	w, _ := openManual(t, acctFile(path, defaultTypes, 1<<20, config.Never), clock)
	if err := w.Write(Record{Type: TypeDelivered, Rcpt: "x@y.example"}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	recs := readCSV(t, path)
	if got, want := recs[0][1], "2026-11-25T17:15:00Z"; got != want {
		t.Errorf("timeLogged = %q, want %q", got, want)
	}
}

func TestRecordFiltering(t *testing.T) {
	all := []byte{TypeDelivered, TypeBounced, TypeTransient, TypeReceived}
	for _, tc := range []struct {
		types config.RecordTypes
		want  string
	}{
		{defaultTypes, "db"},
		{config.RecordTypes{Transient: true}, "t"},
		{config.RecordTypes{Delivered: true, Transient: true, Received: true}, "dtr"},
		{config.RecordTypes{Delivered: true, Bounced: true, Transient: true, Received: true}, "dbtr"},
	} {
		t.Run(tc.types.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "acct.csv")
			w, _ := openManual(t, acctFile(path, tc.types, 1<<20, config.Never), nil)
			for _, typ := range all {
				if got, want := w.Accepts(typ), strings.IndexByte(tc.want, typ) >= 0; got != want {
					t.Errorf("Accepts(%c) = %v", typ, got)
				}
				for range 2 {
					if err := w.Write(Record{Type: typ, Rcpt: "r@example.com"}); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := w.Write(Record{Type: 'x'}); err == nil {
				t.Error("Write accepted type 'x'")
			}
			if err := w.Write(Record{}); err == nil {
				t.Error("Write accepted a record without a type")
			}
			w.Close()
			var got string
			for _, rec := range readCSV(t, path) {
				got += rec[0]
			}
			want := ""
			for _, c := range tc.want {
				want += string(c) + string(c)
			}
			if got != want {
				t.Errorf("types written %q, want %q", got, want)
			}
		})
	}
}

func TestQuotingRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acct.csv")
	w, _ := openManual(t, acctFile(path, defaultTypes, 1<<20, config.Never), nil)
	values := []string{
		`plain`,
		`with,comma`,
		`with "quotes"`,
		`"`,
		`""`,
		"line\nbreak",
		"two\n\nbreaks,\"and\" more",
		` leading space`,
		`trailing space `,
		`smtp;550-5.7.1 "blocked", see https://example.com/?a=1,b=2`,
		`ünïcödé, 日本語`,
		`\.`,
		`#not a comment`,
		``,
	}
	for i, v := range values {
		r := fullRecord()
		r.DSNDiag, r.Orig, r.JobID, r.VMTAPool = v, v, v, v
		r.EnvID = strconv.Itoa(i)
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	recs := readCSV(t, path)
	if len(recs) != len(values) {
		t.Fatalf("%d records, want %d", len(recs), len(values))
	}
	col := func(name string) int { return slices.Index(Columns, name) }
	for i, v := range values {
		rec := recs[i]
		for _, name := range []string{"dsnDiag", "orig", "jobId", "vmtaPool"} {
			if got := rec[col(name)]; got != v {
				t.Errorf("record %d %s = %q, want %q", i, name, got, v)
			}
		}
		if rec[col("envId")] != strconv.Itoa(i) || rec[col("dlvSize")] != "12345" {
			t.Errorf("record %d: neighbouring columns disturbed: %q", i, rec)
		}
	}
}

func TestFlushOnClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acct.csv")
	w, _ := openManual(t, acctFile(path, defaultTypes, 1<<20, config.Never), nil)
	for i := range 10 {
		if err := w.Write(Record{Type: TypeDelivered, Rcpt: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if got := readFile(t, path); got != "" {
		t.Fatalf("file written before any flush: %q", got)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(readCSV(t, path)); n != 10 {
		t.Fatalf("%d records after Close, want 10", n)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := w.Write(Record{Type: TypeDelivered}); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	if err := w.Flush(); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after Close: %v", err)
	}
}

func TestFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acct.csv")
	w, _ := openManual(t, acctFile(path, defaultTypes, 1<<20, config.Never), nil)
	w.Write(Record{Type: TypeDelivered})
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := len(readCSV(t, path)); n != 1 {
		t.Fatalf("%d records after Flush, want 1", n)
	}
}

func TestPeriodicFlushFakeTicker(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acct.csv")
	w, tick := openManual(t, acctFile(path, defaultTypes, 1<<20, config.Never), nil)
	w.Write(Record{Type: TypeDelivered, Rcpt: "one"})
	if got := readFile(t, path); got != "" {
		t.Fatalf("file written before the tick: %q", got)
	}
	tick()
	if recs := readCSV(t, path); len(recs) != 1 || recs[0][4] != "one" {
		t.Fatalf("after tick: %q", recs)
	}
	w.Write(Record{Type: TypeBounced, Rcpt: "two"})
	tick()
	if recs := readCSV(t, path); len(recs) != 2 {
		t.Fatalf("after second tick: %q", recs)
	}
}

// TestPeriodicFlushRealTimer checks the real ticker by waiting for the file's
// content, with a deadline.
func TestPeriodicFlushRealTimer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acct.csv")
	w, err := Open(acctFile(path, defaultTypes, 1<<20, config.Never), Options{Logger: quiet, FlushInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write(Record{Type: TypeDelivered, Rcpt: "one"})
	want := wantHeader
	deadline := time.After(5 * time.Second)
	poll := time.NewTicker(2 * time.Millisecond)
	defer poll.Stop()
	for {
		b, _ := os.ReadFile(path)
		if bytes.HasPrefix(b, []byte(want)) && bytes.Contains(b, []byte(",one,")) {
			return
		}
		select {
		case <-deadline:
			t.Fatalf("not flushed within 5s: %q", b)
		case <-poll.C:
		}
	}
}

func TestCreatesDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "var", "acct", "acct.csv")
	w, _ := openManual(t, acctFile(path, defaultTypes, 1<<20, config.Never), nil)
	w.Write(Record{Type: TypeDelivered})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(readCSV(t, path)); n != 1 {
		t.Fatalf("%d records", n)
	}
}

// acctFiles returns the accounting files in dir: the rotated ones in name
// order, then the current one.
func acctFiles(t *testing.T, dir, current string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	hasCurrent := false
	for _, e := range ents {
		if e.Name() == current {
			hasCurrent = true
			continue
		}
		names = append(names, filepath.Join(dir, e.Name()))
	}
	slices.Sort(names)
	if hasCurrent {
		names = append(names, filepath.Join(dir, current))
	}
	return names
}

const multiLineDiag = "smtp;250-first line\n250 \"second\", line"

// numbered is record i of the rotation tests: small, so that 100,000 of them
// stay fast under -race, with a quoted multi-line field now and then.
func numbered(i int) Record {
	id := strconv.Itoa(i)
	r := Record{
		Type:       TypeDelivered,
		TimeLogged: time.Date(2026, 11, 25, 17, 15, 2, 0, time.UTC),
		Rcpt:       "user" + id + "@example.com",
		DSNStatus:  "2.0.0 (success)",
		EnvID:      id,
	}
	if i%97 == 0 {
		// Quoted multi-line fields must not be split by a rotation either.
		r.DSNDiag = multiLineDiag
	}
	return r
}

// checkUnion checks that the files hold records 0..n-1 exactly once each,
// every file within maxSize, and returns the number of files.
func checkUnion(t *testing.T, files []string, n int, maxSize int64, ordered bool) {
	t.Helper()
	seen := make([]int, n)
	next := 0
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > maxSize {
			t.Errorf("%s: %d bytes, more than max-size %d", f, st.Size(), maxSize)
		}
		recs := readCSV(t, f)
		if len(recs) == 0 {
			t.Errorf("%s holds no record", f)
		}
		for _, rec := range recs {
			id, err := strconv.Atoi(rec[20])
			if err != nil || id < 0 || id >= n || rec[4] != "user"+rec[20]+"@example.com" {
				t.Fatalf("%s: bad record %q", f, rec)
			}
			want := ""
			if id%97 == 0 {
				want = multiLineDiag
			}
			if rec[8] != want {
				t.Fatalf("%s: record %d dsnDiag %q, want %q", f, id, rec[8], want)
			}
			seen[id]++
			if ordered && id != next {
				t.Fatalf("%s: record %d, want %d (files out of order)", f, id, next)
			}
			next++
		}
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("record %d written %d times", id, c)
		}
	}
}

func TestRotationBySize(t *testing.T) {
	t.Parallel()
	const n, maxSize = 100_000, 200 << 10
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	w, err := Open(acctFile(path, defaultTypes, maxSize, config.Never), Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := w.Write(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	files := acctFiles(t, dir, "acct.csv")
	if len(files) < 10 {
		t.Fatalf("only %d files: %v", len(files), files)
	}
	for _, f := range files[:len(files)-1] {
		name := filepath.Base(f)
		if _, err := time.Parse("acct-"+stampFormat+".csv", name); err != nil {
			t.Errorf("rotated file name %q: %v", name, err)
		}
	}
	checkUnion(t, files, n, maxSize, true)
}

func TestRotationBySizeConcurrent(t *testing.T) {
	t.Parallel()
	const n, writers, maxSize = 100_000, 16, 200 << 10
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	w, err := Open(acctFile(path, defaultTypes, maxSize, config.Never),
		Options{Logger: quiet, FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for g := range writers {
		wg.Go(func() {
			for i := g; i < n; i += writers {
				if err := w.Write(numbered(i)); err != nil {
					errs <- err
					return
				}
				if i%5000 == 0 {
					w.Flush()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	files := acctFiles(t, dir, "acct.csv")
	if len(files) < 10 {
		t.Fatalf("only %d files", len(files))
	}
	checkUnion(t, files, n, maxSize, false)
}

func TestRotationSameMillisecond(t *testing.T) {
	// A frozen clock: every rotation happens at the same instant, and the
	// names must still be unique and sort in rotation order.
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	clock := newClock()
	maxSize := int64(len(wantHeader) + 3*1024)
	w, _ := openManual(t, acctFile(path, defaultTypes, config.Size(maxSize), config.Never), clock)
	const n = 200
	for i := range n {
		if err := w.Write(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	files := acctFiles(t, dir, "acct.csv")
	if len(files) < 5 {
		t.Fatalf("only %d files", len(files))
	}
	if got, want := filepath.Base(files[0]), "acct-20261125T171500.123Z.csv"; got != want {
		t.Errorf("first rotated file %q, want %q", got, want)
	}
	if got, want := filepath.Base(files[1]), "acct-20261125T171500.124Z.csv"; got != want {
		t.Errorf("second rotated file %q, want %q", got, want)
	}
	checkUnion(t, files, n, maxSize, true)
}

func TestLineLongerThanMaxSize(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	w, _ := openManual(t, acctFile(path, defaultTypes, 512, config.Never), nil)
	long := numbered(1)
	long.DSNDiag = strings.Repeat("x", 2000)
	for _, r := range []Record{numbered(0), long, numbered(2)} {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	files := acctFiles(t, dir, "acct.csv")
	if len(files) != 3 {
		t.Fatalf("%d files, want 3 (the long line alone in one)", len(files))
	}
	var ids []string
	for _, f := range files {
		for _, rec := range readCSV(t, f) {
			ids = append(ids, rec[20])
		}
	}
	if got := strings.Join(ids, ","); got != "0,1,2" {
		t.Errorf("records %s", got)
	}
}

func TestMoveInterval(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	clock := newClock()
	w, tick := openManual(t, acctFile(path, defaultTypes, 1<<30, time.Hour), clock)
	for i := range 3 {
		w.Write(numbered(i))
	}
	clock.Advance(59 * time.Minute)
	w.Write(numbered(3))
	if files := acctFiles(t, dir, "acct.csv"); len(files) != 1 {
		t.Fatalf("rotated before move-interval: %v", files)
	}
	clock.Advance(time.Minute)
	w.Write(numbered(4)) // rotates first
	files := acctFiles(t, dir, "acct.csv")
	if len(files) != 2 || filepath.Base(files[0]) != "acct-20261125T181500.123Z.csv" {
		t.Fatalf("files after move-interval: %v", files)
	}
	if n := len(readCSV(t, files[0])); n != 4 {
		t.Errorf("rotated file holds %d records, want 4", n)
	}

	// A quiet file is moved by the flusher once the interval has elapsed.
	clock.Advance(time.Hour)
	tick()
	files = acctFiles(t, dir, "acct.csv")
	if len(files) != 3 || filepath.Base(files[1]) != "acct-20261125T191500.123Z.csv" {
		t.Fatalf("files after a quiet interval: %v", files)
	}
	if got := readFile(t, path); got != wantHeader {
		t.Errorf("new file = %q, want just the header", got)
	}

	// An empty file (header only) is not moved; its interval restarts.
	clock.Advance(2 * time.Hour)
	tick()
	w.Write(numbered(5))
	clock.Advance(30 * time.Minute)
	w.Write(numbered(6))
	if files := acctFiles(t, dir, "acct.csv"); len(files) != 3 {
		t.Fatalf("an empty file was rotated: %v", files)
	}
	w.Close()
	checkUnion(t, acctFiles(t, dir, "acct.csv"), 7, 1<<30, true)
}

func TestMoveIntervalNever(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	clock := newClock()
	w, tick := openManual(t, acctFile(path, defaultTypes, config.Unlimited, config.Never), clock)
	for i := range 3 {
		w.Write(numbered(i))
		clock.Advance(1000 * time.Hour)
		tick()
	}
	w.Close()
	if files := acctFiles(t, dir, "acct.csv"); len(files) != 1 {
		t.Fatalf("rotated with move-interval never: %v", files)
	}
}

func TestAppendsToExistingFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	cfg := acctFile(path, defaultTypes, 1<<20, config.Never)
	for i := range 2 {
		w, _ := openManual(t, cfg, nil)
		w.Write(numbered(i))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	files := acctFiles(t, dir, "acct.csv")
	if len(files) != 1 {
		t.Fatalf("files %v", files)
	}
	checkUnion(t, files, 2, 1<<20, true)
}

func TestMovesAsideForeignFile(t *testing.T) {
	for name, content := range map[string]string{
		"foreign":   "something else\n",
		"truncated": wantHeader + "d,2026-",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "acct.csv")
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			w, _ := openManual(t, acctFile(path, defaultTypes, 1<<20, config.Never), newClock())
			w.Write(numbered(0))
			w.Close()
			files := acctFiles(t, dir, "acct.csv")
			if len(files) != 2 || filepath.Base(files[0]) != "acct-20261125T171500.123Z.csv" {
				t.Fatalf("files %v", files)
			}
			if got := readFile(t, files[0]); got != content {
				t.Errorf("moved file = %q", got)
			}
			checkUnion(t, files[1:], 1, 1<<20, true)
		})
	}
}

func TestOpenAll(t *testing.T) {
	dir := t.TempDir()
	src := `
smtp-listener 127.0.0.1:2525
<acct-file all/acct.csv>
    records d,b,t,r
    max-size 10M
    move-interval never
</acct-file>
<acct-file bounces.csv>
    records b
</acct-file>
`
	cfg, err := config.Parse(filepath.Join(dir, "tern.conf"), []byte(src), config.Options{Hostname: "tern.test"})
	if err != nil {
		t.Fatal(err)
	}
	clock := newClock()
	set, err := OpenAll(cfg, Options{Logger: quiet, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Writers()) != 2 {
		t.Fatalf("%d writers", len(set.Writers()))
	}
	if !set.Accepts(TypeReceived) || !set.Accepts(TypeBounced) {
		t.Error("Accepts")
	}
	for _, typ := range []byte{TypeDelivered, TypeBounced, TypeTransient, TypeReceived, TypeBounced} {
		if err := set.Write(Record{Type: typ, Rcpt: "x@example.com"}); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Second)
	}
	if err := set.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := set.Close(); err != nil {
		t.Fatal(err)
	}
	types := func(path string) string {
		var s string
		for _, rec := range readCSV(t, path) {
			s += rec[0]
		}
		return s
	}
	if got := types(filepath.Join(dir, "all", "acct.csv")); got != "dbtrb" {
		t.Errorf("all: %q", got)
	}
	if got := types(filepath.Join(dir, "bounces.csv")); got != "bb" {
		t.Errorf("bounces: %q", got)
	}
	var empty *Set
	if err := empty.Write(Record{Type: TypeDelivered}); err != nil || empty.Accepts(TypeDelivered) || empty.Close() != nil {
		t.Error("nil Set is not a no-op")
	}
}

func TestOpenAllClosesOnError(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{AcctFiles: []*config.AcctFile{
		acctFile(filepath.Join(dir, "ok.csv"), defaultTypes, 1<<20, config.Never),
		acctFile(filepath.Join(blocker, "sub", "acct.csv"), defaultTypes, 1<<20, config.Never),
	}}
	if _, err := OpenAll(cfg, Options{Logger: quiet}); err == nil {
		t.Fatal("OpenAll succeeded with a file under a regular file")
	}
}

func BenchmarkWrite(b *testing.B) {
	path := filepath.Join(b.TempDir(), "acct.csv")
	w, err := Open(acctFile(path, defaultTypes, 250<<20, config.Never), Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	r := fullRecord()
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if err := w.Write(r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
}

func BenchmarkWriteParallel(b *testing.B) {
	path := filepath.Join(b.TempDir(), "acct.csv")
	w, err := Open(acctFile(path, defaultTypes, 250<<20, config.Never), Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.ReportAllocs()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		r := fullRecord()
		for pb.Next() {
			if err := w.Write(r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
}

func TestRotationRenameFailure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	clock := newClock()
	maxSize := int64(len(wantHeader) + 1024)
	w, _ := openManual(t, acctFile(path, defaultTypes, config.Size(maxSize), config.Never), clock)
	failing := true
	w.mu.Lock()
	w.rename = func(oldpath, newpath string) error {
		if failing {
			return errors.New("injected rename failure")
		}
		return os.Rename(oldpath, newpath)
	}
	w.mu.Unlock()
	i := 0
	for ; i < 50; i++ { // well past max-size: the rotation fails
		if err := w.Write(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	if files := acctFiles(t, dir, "acct.csv"); len(files) != 1 {
		t.Fatalf("files %v", files)
	}
	w.mu.Lock()
	failing = false
	w.mu.Unlock()
	for ; i < 60; i++ { // within a minute of the failure: not retried yet
		w.Write(numbered(i))
	}
	if files := acctFiles(t, dir, "acct.csv"); len(files) != 1 {
		t.Fatalf("rotation retried within a minute: %v", files)
	}
	clock.Advance(time.Minute)
	for ; i < 100; i++ {
		w.Write(numbered(i))
	}
	w.Close()
	files := acctFiles(t, dir, "acct.csv")
	if len(files) < 3 {
		t.Fatalf("rotation not retried: %v", files)
	}
	// The first file holds everything written while rotation failed.
	if n := len(readCSV(t, files[0])); n != 60 {
		t.Errorf("first file holds %d records, want 60", n)
	}
	checkUnion(t, files[:1], 60, 1<<20, true)
	var rest []string
	for _, f := range files[1:] {
		for _, rec := range readCSV(t, f) {
			rest = append(rest, rec[20])
		}
	}
	if len(rest) != 40 || rest[0] != "60" || rest[39] != "99" {
		t.Errorf("records after the retry: %v", rest)
	}
}
