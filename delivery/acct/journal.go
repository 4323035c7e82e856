package acct

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ternmta/tern/queue"
)

// Accounting through the spool's journal.
//
// A record written to its file after the spool commit that decided it is
// lost by a crash in between; written before, it survives an outcome the
// spool forgot. So a Journal has each record committed with its outcome,
// as a journal entry in the same pebble batch (see the queue's
// journal.go): Entry encodes the record, and the caller hands the bytes to
// the queue with the change they record. The Journal's goroutine then
// reads the committed entries in number order, appends their lines to the
// files, syncs the files and acknowledges the entries, which deletes them
// from the spool. Entries not yet acknowledged are read again at the next
// start, before anything else is written.
//
// Exactly once. A crash between a file's sync and the acknowledgement
// leaves lines in the file whose entries are read again. The
// acknowledgement therefore also stores, in the same batch, each file's
// position: its device and inode and its size once the lines were synced.
// After a crash, a file that is still the one its position names holds,
// past that size, only lines of entries not acknowledged, in the order the
// Journal reads them again, the last one perhaps cut short. The Journal
// compares them with the lines it is about to write: each line already
// there is skipped, and at the first that differs the file is cut and
// written from there. Every entry's line is in the file once, whether the
// crash came before, during or after the write, and without the
// acknowledgements having to be synced: one lost with a crash brings back
// its entries and the older position together. Two conditions keep this
// true, and the Journal keeps them: a file's position is durable in the
// spool before the first line goes into the file (so a new file, or one
// the Journal has not seen, is never mistaken for the old one), and a file
// is rotated only when everything written to it is durably acknowledged
// (so no unacknowledged line is ever in a file moved away).
//
// Costs. An entry rides in a batch the spool commits and syncs anyway: no
// sync of its own. The Journal writes out at most every Interval (100 ms by
// default): one read of the journal, one append and one fsync per file and
// one unsynced commit for the lot, which is a few syncs a second whatever
// the load.

// DefaultJournalInterval is JournalOptions.Interval's default.
const DefaultJournalInterval = 100 * time.Millisecond

const (
	// journalV1 starts an entry of a record without header values: its
	// CSV line (the default columns) follows.
	journalV1 = 1
	// journalV2 starts an entry with the values of the headers that
	// header_ fields read: the length of the CSV line (uvarint), the
	// line, then one CSV line of header names and values, alternating.
	journalV2 = 2
	// maxBatch bounds the entries one write-out reads and writes.
	maxBatch = 4096
	// maxTail bounds the unacknowledged bytes a file may hold after a
	// crash for the Journal to compare with what it writes; more cannot
	// come from a crash of the Journal (a few batches at most), so the
	// file was written by someone else and is left as it is.
	maxTail = 64 << 20
	// stateRoot is where the files' positions are kept among the spool's
	// named states.
	stateRoot = "acct/"
	// retryEvery is how often a failed write-out is tried again (and how
	// often quiet files are checked for move-interval).
	retryEvery = time.Second
)

// JournalOptions configure StartJournal.
type JournalOptions struct {
	// Interval is the least time between two write-outs of the journal to
	// the files while records keep coming; 0 means
	// DefaultJournalInterval. A record is in its file (synced) within
	// about that time of its outcome.
	Interval time.Duration
	// Logger receives what goes wrong (a file that cannot be written: the
	// records wait in the spool and are retried every second) and what a
	// start repairs; slog.Default() when nil.
	Logger *slog.Logger

	// manual (tests) starts no goroutine: the test writes out with drain.
	manual bool
	// hook (tests) is called at the points of a write-out where a crash is
	// worth testing: "synced" (lines in the files and synced, not yet
	// acknowledged) and "rotated" (a file moved aside and a new one made,
	// its position not yet in the spool).
	hook func(point string)
}

// Journal writes the accounting records that come through the spool's
// journal to the files of a Set. It is safe for concurrent use.
type Journal struct {
	q        *queue.Queue
	set      *Set
	log      *slog.Logger
	now      func() time.Time
	interval time.Duration
	hook     func(string)

	// The rest belongs to whoever writes out: StartJournal, then the
	// goroutine, then Close.
	after uint64             // the journal is written out up to here
	files map[*Writer]*jfile // what is known of each file of the Set
	known map[string]bool    // the names of the positions in the spool
	found map[string]filePos // the positions found at start; nil after it
	fails int                // failed write-outs in a row
	// moved is set when a file's position changed in a way only a synced
	// commit may record (another file at the path, a rotation), until one
	// has: lines go to such a file only after that.
	moved bool
	batch []jline             // scratch for a write-out: its entries
	lines []byte              // scratch: their lines, one after the other
	acked []uint64            // scratch: the numbers acknowledged
	next  map[*Writer]filePos // scratch: positions to acknowledge
	// proj holds, during a write-out, the batch's lines in the columns
	// of each layout, and projBuf the bytes of those made for it.
	proj    map[*layout][][]byte
	projBuf []byte

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// jline is an entry read back: its number, its CSV line in the default
// columns (the line's first byte is the record type) and its header
// values (a CSV line, nil when it has none), both aliasing Journal.lines.
type jline struct {
	seq  uint64
	line []byte
	hdrs []byte
}

// jfile is what the Journal knows of one file.
type jfile struct {
	name  string  // the name of its position among the spool's states
	acked filePos // the position the spool has, or will have with the last acknowledgement
	// tail holds the bytes the file had past acked when they were found
	// there (a crash, a failed write): lines perhaps of the entries about
	// to be written. While it is not nil the file is being verified:
	// lines are compared with it instead of written, matched bytes so far.
	tail    []byte
	matched int
}

// StartJournal writes out what the journal of q holds from before (the
// records of outcomes the last run did not get into the files), repairing
// what a crash left in the files, and then keeps writing out the records
// of q's journal to set's files until Close. set must have been opened
// with Options.Journaled, and nothing may add to q's journal until
// StartJournal returns, so that the repair sees the files as the crash
// left them.
func StartJournal(q *queue.Queue, set *Set, opts JournalOptions) (*Journal, error) {
	if set == nil || !set.opts.Journaled {
		return nil, errors.New("acct: StartJournal needs a Set opened with Options.Journaled")
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultJournalInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	j := &Journal{
		q: q, set: set, log: opts.Logger, now: set.opts.Now, interval: opts.Interval, hook: opts.hook,
		files: map[*Writer]*jfile{}, known: map[string]bool{}, found: map[string]filePos{},
		next: map[*Writer]filePos{}, proj: map[*layout][][]byte{},
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	if j.now == nil {
		j.now = time.Now
	}
	states, err := q.States(stateRoot)
	if err != nil {
		return nil, fmt.Errorf("acct: reading the accounting files' positions: %w", err)
	}
	for name, v := range states {
		j.known[name] = true
		if p, ok := decodeFilePos(v); ok {
			j.found[name] = p
		}
	}
	n, err := j.drain()
	if err != nil {
		return nil, fmt.Errorf("acct: writing out the accounting journal: %w", err)
	}
	if n > 0 {
		j.log.Info("accounting records of the last run written out", "records", n)
	}
	j.found = nil // a file a reload brings is new to the Journal: its position is taken as found
	if opts.manual {
		close(j.done)
	} else {
		go j.run()
	}
	return j, nil
}

// Entry returns the journal entry of r, to be committed with the spool
// change that decides it; nil when no file or pipe records r's type (or j
// is nil). A zero TimeLogged is set to now: the line is fixed here, so
// that it is the same however often it is written out. The entry holds
// the default columns, and the values of the headers that the header_
// fields of the files and pipes read now (from r.Message), so that each
// file can make its own columns of it.
func (j *Journal) Entry(r Record) []byte {
	if j == nil || !validType(r.Type) || !j.set.Accepts(r.Type) {
		return nil
	}
	if r.TimeLogged.IsZero() {
		r.TimeLogged = j.now()
	}
	e := encoders.Get().(*encoder)
	defer encoders.Put(e)
	line, err := e.line(&r)
	if err != nil {
		j.log.Error("encoding an accounting record failed", "err", err)
		return nil
	}
	hs := j.set.entryHeaders()
	if len(hs) == 0 || r.Message == nil {
		return append(append(make([]byte, 0, 1+len(line)), journalV1), line...)
	}
	out := binary.AppendUvarint([]byte{journalV2}, uint64(len(line)))
	out = append(out, line...)
	pairs := e.vals[:0]
	for _, h := range hs {
		pairs = append(pairs, h, HeaderValue(r.Message, h))
	}
	e.vals = pairs
	hl, err := e.write(pairs)
	if err != nil {
		j.log.Error("encoding an accounting record failed", "err", err)
		return nil
	}
	return append(out, hl...)
}

// decodeEntry splits a journal entry into its line and header values.
func decodeEntry(e []byte) (line, hdrs []byte, err error) {
	switch {
	case len(e) >= 2 && e[0] == journalV1:
		return e[1:], nil, nil
	case len(e) >= 2 && e[0] == journalV2:
		n, k := binary.Uvarint(e[1:])
		if k > 0 && n > 0 && n <= uint64(len(e)-1-k) {
			return e[1+k : 1+k+int(n)], e[1+k+int(n):], nil
		}
	}
	return nil, nil, errors.New("not an accounting record this version of Tern can read")
}

// Accepts reports whether any file records type t (see Set.Accepts).
func (j *Journal) Accepts(t byte) bool { return j != nil && j.set.Accepts(t) }

// Close stops the Journal after writing out what the spool has committed
// by now, outcomes reported before the call included. The Set stays open.
// Records committed after Close are written out at the next start.
func (j *Journal) Close() error {
	j.closeOnce.Do(func() {
		close(j.stop)
		<-j.done
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := j.q.Flush(ctx); err != nil {
			j.closeErr = fmt.Errorf("acct: accounting journal: %w", err)
			return
		}
		if _, err := j.drain(); err != nil {
			j.closeErr = fmt.Errorf("acct: accounting journal: %w", err)
		}
	})
	return j.closeErr
}

// run writes out as entries arrive, at most once an interval, so that
// under load one write and one sync per file carry many records.
func (j *Journal) run() {
	defer close(j.done)
	tick := time.NewTicker(retryEvery)
	defer tick.Stop()
	wait := time.NewTimer(0)
	<-wait.C
	var last time.Time
	for {
		select {
		case <-j.stop:
			return
		case <-j.q.JournalMoved():
		case <-tick.C:
		}
		if d := j.interval - time.Since(last); d > 0 {
			wait.Reset(d)
			select {
			case <-j.stop:
				wait.Stop()
				return
			case <-wait.C:
			}
		}
		last = time.Now()
		if _, err := j.drain(); err != nil {
			if j.fails++; j.fails == 1 || j.fails%60 == 0 {
				j.log.Error("writing accounting records failed; they wait in the spool and are retried every second",
					"err", err, "attempts", j.fails)
			}
			continue
		}
		if j.fails > 0 {
			j.log.Info("writing accounting records works again", "attempts", j.fails)
			j.fails = 0
		}
	}
}

// drain writes out until everything committed so far is in the files,
// and returns the number of entries written out.
func (j *Journal) drain() (int, error) {
	total := 0
	for {
		n, more, err := j.step()
		total += n
		if err != nil || !more {
			return total, err
		}
	}
}

// step writes out one batch: the entries after j.after up to maxBatch,
// or fewer when a file is due for rotation within them. It returns how
// many entries it wrote out, and whether there are more to read.
func (j *Journal) step() (n int, more bool, err error) {
	s := j.set
	// A reload's Commit waits for the batch: it is written to one
	// configuration's files and acknowledged with their positions, and a
	// file the reload removes is not closed under it.
	s.mu.RLock()
	defer s.mu.RUnlock()
	ws, keys := s.writers, s.keys

	live := make(map[*Writer]bool, len(ws))
	for i, w := range ws {
		live[w] = true
		changed, err := j.check(w, keys[i])
		if err != nil {
			return 0, false, err
		}
		j.moved = j.moved || changed
	}
	for w := range j.files {
		if !live[w] {
			delete(j.files, w) // removed by a reload; its position goes with the next acknowledgement
		}
	}
	if j.moved {
		// A file's position is in the spool before anything is written
		// to the file, so that a crash cannot make it look like another;
		// and the file's name is durable before its position is, so that
		// a crash of the machine cannot lose a file the spool counts on.
		for _, w := range ws {
			if err := syncDir(filepath.Dir(w.Path())); err != nil {
				return 0, false, err
			}
		}
		if err := j.ack(queue.JournalAck{Sync: true}); err != nil {
			return 0, false, err
		}
	}

	// The lines are copied into one buffer rather than allocated one by
	// one, and sliced once all are read, since the buffer moves as it
	// grows.
	batch, lines := j.batch[:0], j.lines[:0]
	var ends []int // per entry: the end of its line, then of its header values
	through, err := j.q.ReadJournal(j.after, maxBatch, func(seq uint64, e []byte) error {
		line, hdrs, err := decodeEntry(e)
		if err != nil {
			return fmt.Errorf("journal entry %d: %w", seq, err)
		}
		lines = append(lines, line...)
		ends = append(ends, len(lines))
		lines = append(lines, hdrs...)
		ends = append(ends, len(lines))
		batch = append(batch, jline{seq: seq})
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	for i, start := 0, 0; i < len(batch); i++ {
		le, he := ends[2*i], ends[2*i+1]
		batch[i].line = lines[start:le:le]
		if he > le {
			batch[i].hdrs = lines[le:he:he]
		}
		start = he
	}
	j.batch, j.lines = batch[:0], lines[:0]
	more = len(batch) == maxBatch
	if len(batch) == 0 {
		// Nothing to write: a quiet file may be due by move-interval, and
		// what a file still holds unverified belongs to no entry.
		var due []*Writer
		for _, w := range ws {
			if j.files[w].tail == nil && w.jDue() {
				due = append(due, w)
			}
		}
		if err := j.rotate(due); err != nil {
			return 0, false, err
		}
		for _, w := range ws {
			if err := j.cutTail(w); err != nil {
				return 0, false, err
			}
			w.sweep() // delete-after, at most once a minute
		}
		j.after = through // past numbers without an entry (a failed commit's)
		return 0, false, nil
	}

	clear(j.proj)
	j.projBuf = j.projBuf[:0]
	cut, due := j.plan(ws, batch)
	if len(due) > 0 {
		if err := j.rotate(due); err != nil {
			return 0, false, err
		}
		cut, _ = j.plan(ws, batch) // a new file takes a line at least
	}
	if cut < len(batch) {
		batch, through, more = batch[:cut], batch[cut-1].seq, true
	}

	clear(j.next)
	for _, w := range ws {
		f := j.files[w]
		wrote := false
		wl := j.linesFor(w.lay.Load(), batch)
		for i, e := range batch {
			if !w.Accepts(e.line[0]) {
				continue
			}
			line := wl[i]
			if f.tail != nil {
				if bytes.HasPrefix(f.tail[f.matched:], line) {
					f.matched += len(line) // written before the crash
					continue
				}
				if err := j.cutTail(w); err != nil {
					return 0, false, err
				}
			}
			if err := w.jAppend(line); err != nil {
				return 0, false, err
			}
			wrote = true
		}
		if !more {
			// Everything committed has been read: the rest of a tail is
			// no line of an entry (a line cut short by a crash).
			if err := j.cutTail(w); err != nil {
				return 0, false, err
			}
		}
		if wrote || f.matched > 0 {
			pos, err := w.jSync()
			if err != nil {
				return 0, false, err
			}
			if f.tail != nil {
				pos.size = f.acked.size + int64(f.matched) // past it, still to be verified
			}
			j.next[w] = pos
		}
	}
	j.at("synced")
	j.acked = j.acked[:0]
	for _, e := range batch {
		j.acked = append(j.acked, e.seq)
	}
	if err := j.ack(queue.JournalAck{Entries: j.acked}); err != nil {
		return 0, false, err
	}
	j.after = through
	// The pipes get the records once they are acknowledged: a crash
	// before that writes them out again at the next start, and a pipe
	// should not see them twice.
	for _, p := range s.pipes {
		pl := j.linesFor(p.lay.Load(), batch)
		lay := p.lay.Load()
		for i, e := range batch {
			if p.Accepts(e.line[0]) {
				_ = p.enqueue(lay, pl[i]) // only a closed pipe refuses, and Close waits for mu
			}
		}
	}
	for _, w := range ws {
		w.sweep() // after a rotation, delete-after looks at once
	}
	return len(batch), more, nil
}

// linesFor returns the lines of batch in the columns of l: the entries'
// own lines for the default columns, else lines made from them, once per
// layout and write-out (in j.proj). A line is nil for a type l does not
// record.
func (j *Journal) linesFor(l *layout, batch []jline) [][]byte {
	if out, ok := j.proj[l]; ok {
		return out
	}
	out := make([][]byte, len(batch))
	if l.std {
		for i, e := range batch {
			out[i] = e.line
		}
		j.proj[l] = out
		return out
	}
	e := encoders.Get().(*encoder)
	defer encoders.Put(e)
	vals := make([]string, valHeaders+len(l.headers))
	starts := make([]int, len(batch))
	for i, en := range batch {
		starts[i] = -1
		if l.cols[typeIndex(en.line[0])] == nil {
			continue
		}
		j.entryValues(l, en, vals)
		e.cols = l.project(en.line[0], vals, e.cols)
		line, err := e.write(e.cols)
		if err != nil {
			line = append(e.buf.Bytes()[:0], en.line[0], '\n') // cannot happen: CSV writes any string
		}
		starts[i] = len(j.projBuf)
		j.projBuf = append(j.projBuf, line...)
	}
	// Sliced once all are in, as the buffer moves while it grows.
	for i := range batch {
		if starts[i] < 0 {
			continue
		}
		end := len(j.projBuf)
		for k := i + 1; k < len(batch); k++ {
			if starts[k] >= 0 {
				end = starts[k]
				break
			}
		}
		out[i] = j.projBuf[starts[i]:end:end]
	}
	j.proj[l] = out
	return out
}

// entryValues fills vals with the values of the entry for layout l (see
// layout.values): its default columns read back from its line, the time
// it was queued, and its header values.
func (j *Journal) entryValues(l *layout, en jline, vals []string) {
	clear(vals)
	rec, err := csv.NewReader(bytes.NewReader(en.line)).Read()
	if err != nil || len(rec) != numColumns {
		// Cannot happen for a line Entry wrote; the type at least.
		j.log.Error("an accounting journal entry does not read back; its record is written with the type alone", "err", err)
		vals[0] = string(en.line[:1])
		return
	}
	copy(vals, rec)
	if l.ageCol {
		q, err1 := time.Parse(TimeFormat, rec[2])
		lg, err2 := time.Parse(TimeFormat, rec[1])
		if err1 == nil && err2 == nil {
			vals[valTotalSecondsQueued] = secondsQueued(q, lg)
		}
	}
	if len(l.headers) == 0 || en.hdrs == nil {
		return
	}
	pairs, err := csv.NewReader(bytes.NewReader(en.hdrs)).Read()
	if err != nil {
		return
	}
	for i, h := range l.headers {
		for k := 0; k+1 < len(pairs); k += 2 {
			if strings.EqualFold(pairs[k], h) {
				vals[valHeaders+i] = pairs[k+1]
				break
			}
		}
	}
}

// check finds where the file of w stands before a batch, and reports
// whether its position changed in a way the spool must know before
// anything is written to it.
func (j *Journal) check(w *Writer, key string) (changed bool, err error) {
	pos, err := w.jPos()
	if err != nil {
		return false, err
	}
	f := j.files[w]
	switch {
	case f == nil:
		f = &jfile{name: stateName(key)}
		j.files[w] = f
		if p, ok := j.found[f.name]; ok && p.sameFile(pos) {
			f.acked = p // what lies past it is unacknowledged: verified below
		} else {
			// A file the spool knows nothing of (new, or moved in by
			// someone else): its content is not the Journal's to judge.
			f.acked, changed = pos, true
		}
	case !f.acked.sameFile(pos):
		// Another file is at the path now (someone moved the file away,
		// or it was opened anew after a failure): none of its lines are
		// ours.
		f.acked, f.tail, changed = pos, nil, true
	}
	f.matched = 0
	want := f.acked.size + int64(len(f.tail))
	if pos.size == want {
		if changed {
			return true, j.repairCut(w, f)
		}
		return false, nil
	}
	f.tail = nil
	if pos.size < f.acked.size {
		j.log.Warn("accounting file is shorter than when its last records were acknowledged; records may be missing from it",
			"acct-file", w.Path(), "size", pos.size, "acknowledged", f.acked.size)
		f.acked.size = pos.size
		return true, j.repairCut(w, f)
	}
	tail, err := w.jTail(f.acked.size, maxTail)
	if errors.Is(err, errTailTooLong) {
		j.log.Warn("accounting file has more unacknowledged bytes than Tern writes; left as it is",
			"acct-file", w.Path(), "size", pos.size, "acknowledged", f.acked.size)
		f.acked = pos
		return true, j.repairCut(w, f)
	}
	if err != nil {
		return false, err
	}
	f.tail = tail
	return changed, nil
}

// repairCut moves aside a file whose last line is cut short but which
// the Journal cannot repair (it does not know what the line was), so that
// new lines do not go after half a line; f then stands for the new file.
func (j *Journal) repairCut(w *Writer, f *jfile) error {
	if f.acked.size == 0 {
		return nil
	}
	last, err := w.jTail(f.acked.size-1, 1)
	if err != nil || len(last) == 1 && last[0] == '\n' {
		return err
	}
	j.log.Warn("accounting file ends with a line cut short; moved aside", "acct-file", w.Path())
	if err := w.jRotate(); err != nil {
		return err
	}
	pos, err := w.jPos()
	f.acked = pos
	return err
}

// cutTail ends the verification of w's file: the bytes of its tail not
// matched are cut off.
func (j *Journal) cutTail(w *Writer) error {
	f := j.files[w]
	if f.tail == nil {
		return nil
	}
	if rest := len(f.tail) - f.matched; rest > 0 {
		if err := w.jTruncate(f.acked.size + int64(f.matched)); err != nil {
			return err
		}
		j.log.Info("accounting file: removed what a crash left after its last complete record",
			"acct-file", w.Path(), "bytes", rest)
	}
	f.tail = nil
	return nil
}

// plan returns how many entries of batch the files take before one of
// them is due for rotation, and the files due before the first of their
// lines. A file being verified is not rotated.
func (j *Journal) plan(ws []*Writer, batch []jline) (cut int, due []*Writer) {
	cut = len(batch)
	var lens []int
	var at []int
	for _, w := range ws {
		if j.files[w].tail != nil {
			continue
		}
		lens, at = lens[:0], at[:0]
		wl := j.linesFor(w.lay.Load(), batch)
		for i, e := range batch {
			if w.Accepts(e.line[0]) {
				lens = append(lens, len(wl[i]))
				at = append(at, i)
			}
		}
		switch n := w.jFit(lens); {
		case n == 0 && len(lens) > 0:
			due = append(due, w)
		case n < len(lens):
			cut = min(cut, at[n])
		}
	}
	return cut, due
}

// rotate rotates the files of ws once everything acknowledged is durable,
// and records their new positions before anything is written to them.
func (j *Journal) rotate(ws []*Writer) error {
	if len(ws) == 0 {
		return nil
	}
	if err := j.q.AckJournal(queue.JournalAck{Sync: true}); err != nil {
		return err
	}
	for _, w := range ws {
		j.moved = true
		if err := w.jRotate(); err != nil {
			return err
		}
		pos, err := w.jPos()
		if err != nil {
			return err
		}
		j.files[w].acked = pos
	}
	j.at("rotated")
	return j.ack(queue.JournalAck{Sync: true})
}

// at calls the test hook at point.
func (j *Journal) at(point string) {
	if j.hook != nil {
		j.hook(point)
	}
}

// ack commits a with the position of every file (j.next's, where set),
// deleting those of files no longer configured, and makes them the
// acknowledged ones.
func (j *Journal) ack(a queue.JournalAck) error {
	a.States = make(map[string][]byte, len(j.files)+len(j.known))
	names := make(map[string]bool, len(j.files))
	for w, f := range j.files {
		p, ok := j.next[w]
		if !ok {
			p = f.acked
		}
		a.States[f.name] = p.encode()
		names[f.name] = true
	}
	for name := range j.known {
		if !names[name] {
			a.States[name] = nil
		}
	}
	if err := j.q.AckJournal(a); err != nil {
		return err
	}
	if a.Sync {
		j.moved = false
	}
	for w, p := range j.next {
		if f := j.files[w]; f != nil {
			f.acked = p
			if f.tail != nil {
				f.tail, f.matched = f.tail[f.matched:], 0
			}
		}
	}
	clear(j.next)
	j.known = names
	return nil
}

// stateName is the name of the position of the file with the cleaned
// absolute path key; long paths are hashed, since state names are
// bounded.
func stateName(key string) string {
	if len(key) <= 400 && !strings.ContainsRune(key, 0) {
		return stateRoot + key
	}
	sum := sha256.Sum256([]byte(key))
	return stateRoot + "sha256:" + hex.EncodeToString(sum[:])
}
