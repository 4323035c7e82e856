package acct

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// TestLayoutColumns: the constant and the configuration's field list
// agree with Columns.
func TestLayoutColumns(t *testing.T) {
	if numColumns != len(Columns) {
		t.Errorf("numColumns = %d, len(Columns) = %d", numColumns, len(Columns))
	}
	if got := config.AcctFieldNames(); !slices.Equal(got, Columns[1:]) {
		t.Errorf("config.AcctFieldNames() = %v, want Columns after type", got)
	}
}

func withFields(af *config.AcctFile, fields ...config.RecordFields) *config.AcctFile {
	af.RecordFields = fields
	return af
}

const testMessage = "Received: from x\r\nsubject: Spring\r\n  sale, \"50%\" off\r\nX-Job: spring-42\r\n\r\nSubject: not a header, the body\r\n"

// fieldsRecord is a d record of recipient i with a message.
func fieldsRecord(typ byte, i int) Record {
	r := fullRecord()
	r.Type, r.Rcpt, r.Message = typ, rcptOf(i), []byte(testMessage)
	r.TimeQueued = r.TimeLogged.Add(-62*time.Second - time.Millisecond)
	return r
}

// fieldsConfig is PowerMTA's example, with headers and a computed field.
func fieldsConfig(path string) *config.AcctFile {
	return withFields(acctFile(path, defaultTypes, config.Unlimited, config.Never),
		config.RecordFields{Type: "d", Fields: []string{"timeLogged", "orig", "rcpt", "vmta", "dsnStatus", "header_Subject", "header_x-job"}},
		config.RecordFields{Type: "b", Fields: []string{"timeLogged", "rcpt", "bounceCat", "totalSecondsQueued", "dlvTlsProtocol"}})
}

const fieldsHeader = "type,timeLogged,orig,rcpt,vmta,dsnStatus,header_Subject,header_x-job,bounceCat,totalSecondsQueued,dlvTlsProtocol\n"

// wantFieldsLines are the lines of fieldsRecord(d, 0) and (b, 1) in
// fieldsConfig's columns.
const wantFieldsLines = `d,2026-11-25T17:15:02+02:00,bounces@sender.example,user0@example.com,vmta1,5.1.1 (bad destination mailbox address),"Spring  sale, ""50%"" off",spring-42,,,` + "\n" +
	`b,2026-11-25T17:15:02+02:00,,user1@example.com,,,,,bad-mailbox,63,` + "\n"

// TestRecordFields: record-fields choose the columns of each type; the
// file has their union, each type leaves the others' columns empty, and
// header_ fields hold the message's headers.
func TestRecordFields(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acct.csv")
	w, _ := openManual(t, fieldsConfig(path), nil)
	for i, typ := range []byte{TypeDelivered, TypeBounced} {
		if err := w.Write(fieldsRecord(typ, i)); err != nil {
			t.Fatal(err)
		}
	}
	r := fieldsRecord(TypeDelivered, 2)
	r.Message = nil // no message at hand: empty header columns
	if err := w.Write(r); err != nil {
		t.Fatal(err)
	}
	w.Close()
	want := fieldsHeader + wantFieldsLines +
		`d,2026-11-25T17:15:02+02:00,bounces@sender.example,user2@example.com,vmta1,5.1.1 (bad destination mailbox address),,,,,` + "\n"
	if got := readFile(t, path); got != want {
		t.Errorf("file:\n%s\nwant:\n%s", got, want)
	}
}

// TestRecordFieldsDefaults: record-fields that list the default columns
// (`*`) write exactly what a file without them does, so such a file is
// not rotated by a reload that adds them.
func TestRecordFieldsDefaults(t *testing.T) {
	af := withFields(acctFile("x.csv", defaultTypes, 0, 0), config.RecordFields{Type: "d", Fields: config.AcctFieldNames()})
	if l := layoutOf(af); l != stdLayout {
		t.Errorf("layout of the default fields is not the default layout: %q", l.header)
	}
	af.RecordFields[0].Fields = append(af.RecordFields[0].Fields, "header_Subject")
	if l := layoutOf(af); l == stdLayout || !strings.HasSuffix(string(l.header), ",header_Subject\n") {
		t.Errorf("layout with a header field: %q", l.header)
	}
}

func TestHeaderValue(t *testing.T) {
	long := strings.Repeat("é", 600) // 1200 bytes
	msg := "From: a@b.example\nSUBJECT:plain\nX-Empty:\nX-Folded: one\n\ttwo\n three\nX-Long: " + long + "\nX-Job : spaced\n\nX-Body: no\n"
	for _, tc := range []struct{ name, want string }{
		{"subject", "plain"},
		{"x-empty", ""},
		{"X-Folded", "one\ttwo three"},
		{"x-job", "spaced"},
		{"X-Body", ""},
		{"X-Missing", ""},
		{"From", "a@b.example"},
	} {
		if got := HeaderValue([]byte(msg), tc.name); got != tc.want {
			t.Errorf("HeaderValue(%s) = %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := HeaderValue([]byte(msg), "x-long"); len(got) != 1000 || !strings.HasPrefix(long, got) {
		t.Errorf("a long value is %d bytes, want 1000, cut between characters", len(got))
	}
	if got := HeaderValue(nil, "subject"); got != "" {
		t.Errorf("no message: %q", got)
	}
	if got := string(HeaderSection([]byte(testMessage))); got != testMessage[:strings.Index(testMessage, "\r\n\r\n")+4] {
		t.Errorf("HeaderSection = %q", got)
	}
	if got := string(HeaderSection([]byte("A: b\nC: d"))); got != "A: b\nC: d" {
		t.Errorf("HeaderSection of a message without a body = %q", got)
	}
}

// putRecords commits records made by mk for recipients from to to-1,
// one message each, through the Journal.
func (e *jenv) putRecords(from, to int, mk func(i int) []Record) {
	e.t.Helper()
	for i := from; i < to; i++ {
		m := queue.Message{Recipients: []queue.Recipient{{Address: rcptOf(i), VMTA: "mta1"}}, Body: []byte("x")}
		if _, err := e.q.PutJournaled(context.Background(), m, func(dst [][]byte, _ queue.ID, _ *queue.Message) [][]byte {
			for _, r := range mk(i) {
				dst = append(dst, e.j.Entry(r))
			}
			return dst
		}); err != nil {
			e.t.Fatal(err)
		}
	}
}

// TestJournalRecordFields: through the journal, a file with
// record-fields gets the same lines as when written directly (the entry
// carries the header values), beside a file with the default columns and
// a pipe with columns of its own.
func TestJournalRecordFields(t *testing.T) {
	dir := t.TempDir()
	prog, out, _ := catScript(t, dir)
	fPath, sPath := filepath.Join(dir, "f", "fields.csv"), filepath.Join(dir, "s", "std.csv")
	e := newJEnv(t, configOf(fieldsConfig(fPath), acctFile(sPath, defaultTypes, config.Unlimited, config.Never),
		withFields(pipeFile([]string{prog}, config.RecordTypes{Delivered: true}),
			config.RecordFields{Type: "d", Fields: []string{"rcpt", "header_X-Job"}})))
	e.putRecords(0, 2, func(i int) []Record { return []Record{fieldsRecord([]byte{TypeDelivered, TypeBounced}[i], i)} })
	e.drain()
	if got := readFile(t, fPath); got != fieldsHeader+wantFieldsLines {
		t.Errorf("file with record-fields:\n%s\nwant:\n%s", got, fieldsHeader+wantFieldsLines)
	}
	if recs := readCSV(t, sPath); len(recs) != 2 || recs[0][8] != fullRecord().DSNDiag {
		t.Errorf("file with the default columns: %v", recs)
	}
	waitFor(t, "the pipe's record", func() bool { return records(t, out) == 1 })
	if got, want := readFile(t, out), "type,rcpt,header_X-Job\nd,user0@example.com,spring-42\n"; got != want {
		t.Errorf("pipe output %q, want %q", got, want)
	}
}

// TestReloadNewColumnsRotates: a reload that changes a file's columns
// moves the file aside before the first line in the new ones, written
// directly or through the journal, so that no file mixes two headers.
func TestReloadNewColumnsRotates(t *testing.T) {
	t.Run("direct", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "acct.csv")
		s, _ := openSet(t, configOf(acctFile(path, defaultTypes, config.Unlimited, config.Never)), Options{})
		writeOrFail(t, s, TypeDelivered, "old")
		c, err := s.Prepare(configOf(fieldsConfig(path)))
		if err != nil {
			t.Fatal(err)
		}
		checkSummary(t, c, nil, nil, []string{path})
		c.Commit()
		if err := s.Write(fieldsRecord(TypeDelivered, 0)); err != nil {
			t.Fatal(err)
		}
		s.Flush()
		checkReformatted(t, dir, path)
	})
	t.Run("journal", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "acct.csv")
		e := newJEnv(t, configOf(acctFile(path, defaultTypes, config.Unlimited, config.Never)))
		e.putRecords(0, 1, func(i int) []Record { return []Record{{Type: TypeDelivered, Rcpt: "old"}} })
		e.drain()
		c, err := e.set.Prepare(configOf(fieldsConfig(path)))
		if err != nil {
			t.Fatal(err)
		}
		c.Commit()
		e.drain() // nothing to write: no rotation yet
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("%d files before a line in the new columns", len(ents))
		}
		e.putRecords(0, 1, func(i int) []Record { return []Record{fieldsRecord(TypeDelivered, 0)} })
		e.drain()
		checkReformatted(t, dir, path)
	})
}

// TestReloadSameColumnsKeepsFile: a reload that changes the layout but
// not the columns (another type recorded, with the same fields) keeps
// writing the same file.
func TestReloadSameColumnsKeepsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	fields := []string{"rcpt", "header_Subject"}
	mk := func(types config.RecordTypes) *config.AcctFile {
		return withFields(acctFile(path, types, config.Unlimited, config.Never),
			config.RecordFields{Type: "d", Fields: fields}, config.RecordFields{Type: "b", Fields: fields})
	}
	s, _ := openSet(t, configOf(mk(config.RecordTypes{Delivered: true})), Options{})
	if err := s.Write(fieldsRecord(TypeDelivered, 0)); err != nil {
		t.Fatal(err)
	}
	c, err := s.Prepare(configOf(mk(defaultTypes)))
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, c, nil, nil, []string{path})
	c.Commit()
	if err := s.Write(fieldsRecord(TypeBounced, 1)); err != nil {
		t.Fatal(err)
	}
	s.Flush()
	if files := acctFiles(t, dir, filepath.Base(path)); len(files) != 1 {
		t.Errorf("files %v, want the one file", files)
	}
	want := "type,rcpt,header_Subject\nd,user0@example.com,\"Spring  sale, \"\"50%\"\" off\"\nb,user1@example.com,\"Spring  sale, \"\"50%\"\" off\"\n"
	if got := readFile(t, path); got != want {
		t.Errorf("file:\n%s\nwant:\n%s", got, want)
	}
}

// checkReformatted checks that dir holds the file moved aside, with the
// default columns and the record of "old", and the current file, with
// fieldsConfig's columns and the first line of wantFieldsLines.
func checkReformatted(t *testing.T, dir, path string) {
	t.Helper()
	files := acctFiles(t, dir, filepath.Base(path))
	if len(files) != 2 {
		t.Fatalf("files %v, want the one moved aside and the current one", files)
	}
	if got := rcptsIn(t, files[0]); len(got) != 1 || got[0] != "old" {
		t.Errorf("moved-aside file holds %v", got)
	}
	want := fieldsHeader + wantFieldsLines[:strings.IndexByte(wantFieldsLines, '\n')+1]
	if got := readFile(t, path); got != want {
		t.Errorf("current file:\n%s\nwant:\n%s", got, want)
	}
}

func rotateConfig(path string, maxSize config.Size) *config.AcctFile {
	return acctFile(path, defaultTypes, maxSize, config.Never)
}

// TestMoveTo: rotated files go to the move-to directory; a file that is
// not Tern's, moved aside at open, stays beside the file.
func TestMoveTo(t *testing.T) {
	dir := t.TempDir()
	path, archive := filepath.Join(dir, "acct.csv"), filepath.Join(t.TempDir(), "archive", "acct")
	if err := os.WriteFile(path, []byte("not an accounting file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	af := rotateConfig(path, 1000)
	af.MoveTo = config.Setting[string]{Value: archive}
	clock := newClock()
	w, _ := openManual(t, af, clock)
	for i := range 30 {
		clock.Advance(time.Second)
		if err := w.Write(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	beside := acctFiles(t, dir, filepath.Base(path))
	if len(beside) != 2 || readFile(t, beside[0]) != "not an accounting file\n" {
		t.Errorf("beside the file: %v, want the foreign file moved aside and the current one", beside)
	}
	moved := acctFiles(t, archive, "")
	if len(moved) < 2 {
		t.Fatalf("move-to directory holds %v, want the rotated files", moved)
	}
	checkUnion(t, append(moved, path), 30, 1000, true)
}

// TestDeleteAfter: rotated files older than delete-after (by their time
// stamp) are deleted, at a rotation or on the flusher's look a minute
// later; the current file and names not of the rotation's form stay.
func TestDeleteAfter(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	keep := []string{filepath.Join(dir, "acct-notes.csv"), filepath.Join(dir, "acct-20200101T000000.000Z.csv.gz"), filepath.Join(dir, "other-20200101T000000.000Z.csv")}
	for _, k := range keep {
		if err := os.WriteFile(k, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	af := acctFile(path, defaultTypes, config.Unlimited, time.Hour)
	af.DeleteAfter = config.Setting[time.Duration]{Value: 3 * time.Hour}
	clock := newClock()
	w, tick := openManual(t, af, clock)
	rotated := func() []string {
		var out []string
		for _, f := range acctFiles(t, dir, filepath.Base(path)) {
			if f != path && !slices.Contains(keep, f) {
				out = append(out, f)
			}
		}
		return out
	}
	// One file an hour: rotated at 1h, 2h, … (a quiet file is not moved,
	// so a record an hour).
	for h := range 6 {
		if err := w.Write(numbered(h)); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Hour)
		tick()
	}
	// The files rotated at 1h … 6h: those of 1h, 2h and 3h are 3 hours
	// old or more at 6h.
	if got := rotated(); len(got) != 3 {
		t.Errorf("rotated files kept at 6h: %v, want the three of the last three hours", got)
	}
	clock.Advance(59*time.Minute + 50*time.Second)
	tick() // a look: the oldest, of 4h, is not 3 hours old yet
	if got := rotated(); len(got) != 3 {
		t.Errorf("rotated files at 6h59m50s: %v, want 3 still", got)
	}
	clock.Advance(30 * time.Second)
	tick() // 3 hours old now, but the last look was 30s ago
	if got := rotated(); len(got) != 3 {
		t.Errorf("rotated files 30s after a look: %v, want 3 still", got)
	}
	clock.Advance(time.Minute)
	tick()
	if got := rotated(); len(got) != 2 {
		t.Errorf("rotated files at 7h01m20s: %v, want those of 5h and 6h", got)
	}
	for _, k := range keep {
		if _, err := os.Stat(k); err != nil {
			t.Errorf("%s: %v; only rotated files may be deleted", k, err)
		}
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the current file: %v", err)
	}
}

// TestJournalDeleteAfter: through the journal too, with move-to.
func TestJournalDeleteAfter(t *testing.T) {
	dir := t.TempDir()
	path, archive := filepath.Join(dir, "acct.csv"), filepath.Join(t.TempDir(), "archive")
	af := acctFile(path, defaultTypes, config.Unlimited, time.Hour)
	af.DeleteAfter = config.Setting[time.Duration]{Value: 90 * time.Minute}
	af.MoveTo = config.Setting[string]{Value: archive}
	e := newJEnv(t, configOf(af))
	for i := range 3 {
		e.putRecords(i, i+1, func(i int) []Record { return []Record{{Type: TypeDelivered, Rcpt: rcptOf(i)}} })
		e.drain()
		e.clock.Advance(time.Hour)
		e.drain() // the quiet file is moved
	}
	// Rotated at 1h, 2h and 3h: the one of 1h is older than 90 minutes.
	if got := acctFiles(t, archive, ""); len(got) != 2 || len(rcptsIn(t, got[0])) != 1 || rcptsIn(t, got[0])[0] != rcptOf(1) {
		t.Errorf("move-to directory holds %v, want the files of user1 and user2", got)
	}
	if got := acctFiles(t, dir, filepath.Base(path)); len(got) != 1 {
		t.Errorf("beside the file: %v, want the current file alone", got)
	}
}

// TestWorldReadable: files are mode 0640, or 0644 with world-readable
// yes, whatever the umask; a reload changes the open file's mode.
func TestWorldReadable(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "acct.csv")
	mode := func() os.FileMode {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm()
	}
	s, _ := openSet(t, configOf(acctFile(path, defaultTypes, 300, config.Never)), Options{})
	if m := mode(); m != 0o640 {
		t.Errorf("mode %o, want 640", m)
	}
	af := acctFile(path, defaultTypes, 300, config.Never)
	af.WorldReadable = config.Setting[bool]{Value: true}
	c, err := s.Prepare(configOf(af))
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, c, nil, nil, []string{path})
	c.Commit()
	if m := mode(); m != 0o644 {
		t.Errorf("mode after the reload %o, want 644", m)
	}
	for i := range 5 { // rotations: new files
		if err := s.Write(numbered(i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Flush()
	for _, f := range acctFiles(t, dir, path) {
		if st, _ := os.Stat(f); st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %o, want 644", f, st.Mode().Perm())
		}
	}
}
