package acct

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ternmta/tern/config"
)

// ErrClosed is returned by Write and Flush on a closed Writer.
var ErrClosed = errors.New("acct: writer is closed")

// ErrJournaled is returned by Write on a Writer opened with
// Options.Journaled: its records come through a Journal.
var ErrJournaled = errors.New("acct: records of a journaled accounting file go through the journal")

// DefaultFlushInterval is how long a written line may wait in the buffer
// before the background flusher writes it to the file.
const DefaultFlushInterval = time.Second

const (
	bufferSize = 64 << 10
	// stampFormat is the rotation suffix: UTC, milliseconds.
	stampFormat = "20060102T150405.000Z"
	// retryRotateAfter is how long a failed rotation waits before it is
	// tried again (the lines keep going to the current file meanwhile).
	retryRotateAfter = time.Minute
	filePerm         = 0o640
	// worldPerm is the mode of the files of world-readable yes.
	worldPerm = 0o644
	dirPerm   = 0o755
	// sweepEvery is how often delete-after looks for old rotated files
	// when nothing was rotated meanwhile: they age by the hour or the
	// day, so a minute late is on time.
	sweepEvery = time.Minute
)

// Options are the run-time dependencies of a Writer.
type Options struct {
	// Now is the clock used for timeLogged defaults, move-interval and the
	// rotation suffix; time.Now when nil.
	Now func() time.Time
	// Logger receives the errors nobody else sees (background flushes and
	// rotations); slog.Default() when nil.
	Logger *slog.Logger
	// FlushInterval is how often buffered lines are written to the file;
	// DefaultFlushInterval when zero.
	FlushInterval time.Duration
	// Journaled opens Writers for a Journal, which is then the only one to
	// write them: it decides when lines are written, synced and rotated,
	// so a Writer has no flusher and does not rotate on its own, and Write
	// refuses records. A file whose last line was cut short is kept (the
	// Journal repairs it) rather than moved aside.
	Journaled bool

	// tick replaces the flusher's ticker in tests.
	tick <-chan time.Time
	// pipeBuffer, pipeBackoff, pipeMaxBackoff and pipeCloseWait replace
	// pipeBufferBytes, pipeMinBackoff, pipeMaxBackoff and pipeCloseWait
	// in tests.
	pipeBuffer     int
	pipeBackoff    time.Duration
	pipeMaxBackoff time.Duration
	pipeCloseWait  time.Duration
}

// Writer appends records to one accounting file. It is safe for concurrent
// use.
type Writer struct {
	path string
	// types is the typeBits of the records written. It is atomic rather
	// than under mu so Accepts and the filtering in Write stay lock-free
	// while Reconfigure can still change it.
	types  atomic.Uint32
	now    func() time.Time
	log    *slog.Logger
	rename func(oldpath, newpath string) error // os.Rename; tests replace it
	// journaled is Options.Journaled: a Journal writes this file.
	journaled bool

	// lay is how records are written. It changes only under mu (a
	// reload's Reconfigure), but Write reads it before taking mu, to
	// encode outside the lock.
	lay atomic.Pointer[layout]

	mu       sync.Mutex
	maxSize  int64         // 0: no size rotation
	interval time.Duration // 0: no time rotation
	perm     os.FileMode   // the file's mode: filePerm or worldPerm
	// moveTo is the directory rotated files go to ("" beside the file),
	// deleteAfter how old they may grow (0: forever).
	moveTo      string
	deleteAfter time.Duration
	// reformat is set when a reload changed the columns: the file is
	// rotated before its next line, so that every file holds lines of
	// its header's columns only.
	reformat bool
	// sweepNow asks for a look for old rotated files at once (a file was
	// just rotated); lastSweep is when the last look was.
	sweepNow  bool
	lastSweep time.Time
	f         *os.File
	bw        *bufio.Writer
	size      int64     // bytes in the current file, buffered ones included
	records   int64     // records in the current file
	opened    time.Time // when the current file was started
	lastErr   time.Time // when a rotation last failed
	// lastStamp is just after the last rotation suffix used, so suffixes
	// keep increasing even if the clock steps back.
	lastStamp time.Time
	closed    bool

	stop chan struct{}
	done chan struct{}
}

var header = func() []byte {
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write(Columns)
	w.Flush()
	return b.Bytes()
}()

// Open opens (creating it and its directory if needed) the accounting file
// of cfg and starts its background flusher. An existing file that starts with
// the expected header and ends with a complete line is appended to; any other
// existing file is first moved aside as if rotated.
func Open(cfg *config.AcctFile, opts Options) (*Writer, error) {
	w := &Writer{
		path:      cfg.Path,
		now:       opts.Now,
		log:       opts.Logger,
		rename:    os.Rename,
		journaled: opts.Journaled,
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	st := settingsOf(cfg)
	w.types.Store(st.types)
	w.lay.Store(st.lay)
	w.maxSize, w.interval, w.perm = st.maxSize, st.interval, st.perm
	w.moveTo, w.deleteAfter = st.moveTo, st.deleteAfter
	if w.now == nil {
		w.now = time.Now
	}
	if w.log == nil {
		w.log = slog.Default()
	}
	w.log = w.log.With("acct-file", w.path)
	if err := os.MkdirAll(filepath.Dir(w.path), dirPerm); err != nil {
		return nil, fmt.Errorf("acct: %w", err)
	}
	if w.moveTo != "" {
		if err := os.MkdirAll(w.moveTo, dirPerm); err != nil {
			return nil, fmt.Errorf("acct: move-to: %w", err)
		}
	}
	if err := w.adoptExisting(); err != nil {
		return nil, err
	}
	if err := w.openFile(); err != nil {
		return nil, err
	}
	if w.journaled {
		close(w.done) // no flusher: the Journal flushes, syncs and rotates
		return w, nil
	}
	tick := opts.tick
	var ticker *time.Ticker
	if tick == nil {
		iv := opts.FlushInterval
		if iv <= 0 {
			iv = DefaultFlushInterval
		}
		ticker = time.NewTicker(iv)
		tick = ticker.C
	}
	go w.flusher(tick, ticker)
	return w, nil
}

// Path returns the path of the file being written.
func (w *Writer) Path() string { return w.path }

// Accepts reports whether records of type t go to this file.
func (w *Writer) Accepts(t byte) bool {
	return w.types.Load()&typeBit(t) != 0
}

// typeBit is the bit of record type t in a Writer's types; 0 for an
// unknown type, which no file accepts.
func typeBit(t byte) uint32 {
	switch t {
	case TypeDelivered:
		return 1 << 0
	case TypeBounced:
		return 1 << 1
	case TypeTransient:
		return 1 << 2
	case TypeReceived:
		return 1 << 3
	}
	return 0
}

// typeBits is the set of record types as typeBit bits.
func typeBits(types config.RecordTypes) uint32 {
	var b uint32
	if types.Delivered {
		b |= typeBit(TypeDelivered)
	}
	if types.Bounced {
		b |= typeBit(TypeBounced)
	}
	if types.Transient {
		b |= typeBit(TypeTransient)
	}
	if types.Received {
		b |= typeBit(TypeReceived)
	}
	return b
}

// settings are the parts of an <acct-file> block a Writer can change while
// it runs, normalized so two blocks meaning the same compare equal (the
// layout by its sig).
type settings struct {
	types       uint32        // typeBits
	maxSize     int64         // 0: no size rotation
	interval    time.Duration // 0: no time rotation
	perm        os.FileMode
	moveTo      string
	deleteAfter time.Duration // 0: rotated files are kept
	lay         *layout
}

func settingsOf(cfg *config.AcctFile) settings {
	st := settings{types: typeBits(cfg.Records.Value), perm: filePerm, moveTo: cfg.MoveTo.Value, lay: layoutOf(cfg)}
	if ms := int64(cfg.MaxSize.Value); ms > 0 && config.Size(ms) != config.Unlimited {
		st.maxSize = ms
	}
	if iv := cfg.MoveInterval.Value; iv > 0 && iv != config.Never {
		st.interval = iv
	}
	if da := cfg.DeleteAfter.Value; da > 0 && da != config.Never {
		st.deleteAfter = da
	}
	if cfg.WorldReadable.Value {
		st.perm = worldPerm
	}
	if st.moveTo != "" {
		st.moveTo = filepath.Clean(st.moveTo)
	}
	return st
}

// same reports whether two settings write the same way.
func (st settings) same(o settings) bool {
	a, b := st, o
	a.lay, b.lay = nil, nil
	return a == b && st.lay.sig == o.lay.sig
}

// current returns the settings in effect, for comparing with a new block.
func (w *Writer) current() settings {
	w.mu.Lock()
	defer w.mu.Unlock()
	return settings{types: w.types.Load(), maxSize: w.maxSize, interval: w.interval, perm: w.perm,
		moveTo: w.moveTo, deleteAfter: w.deleteAfter, lay: w.lay.Load()}
}

// Reconfigure applies the settings of cfg to the open file, so a
// configuration reload changes them without closing the file under the
// writes in progress or losing its buffer and rotation state. cfg.Path is
// ignored: another path is another file, with a Writer of its own.
//
// The record types apply from the next Write. Max-size and move-interval
// apply to the current file as if they had been set when it was opened: a
// file already past the new max-size is rotated before the next line, one
// older than the new move-interval at the next line or flusher tick (the
// flusher reads the interval on every tick, so it follows the change without
// a restart). New columns (record-fields, or records with record-fields)
// rotate the file before its next line, so that no file mixes lines of
// two headers. world-readable changes the current file's mode at once;
// move-to and delete-after apply to the next rotation and the next look
// for old files. It is safe to call concurrently with Write.
func (w *Writer) Reconfigure(cfg *config.AcctFile) {
	st := settingsOf(cfg)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.types.Store(st.types)
	if old := w.lay.Load(); old.sig != st.lay.sig {
		w.lay.Store(st.lay)
		// Only other columns need another file: lines that fill the
		// same columns otherwise (another type recorded) fit this one.
		w.reformat = w.reformat || !bytes.Equal(old.header, st.lay.header)
	}
	w.maxSize, w.interval = st.maxSize, st.interval
	w.moveTo, w.deleteAfter = st.moveTo, st.deleteAfter
	if w.moveTo != "" {
		if err := os.MkdirAll(w.moveTo, dirPerm); err != nil {
			w.log.Error("accounting move-to directory cannot be made; rotated files stay beside the file", "err", err)
		}
	}
	if st.perm != w.perm {
		w.perm = st.perm
		if w.f != nil {
			if err := w.f.Chmod(w.perm); err != nil {
				w.log.Warn("accounting file: cannot change its mode", "err", err)
			}
		}
	}
	w.sweepNow = true // delete-after may have shortened
}

func validType(t byte) bool { return typeBit(t) != 0 }

// encoder turns records into CSV lines outside the Writer's lock.
type encoder struct {
	buf    bytes.Buffer
	csv    *csv.Writer
	fields []string
	// vals and cols are scratch for layouts other than the default.
	vals, cols []string
}

// line returns r's CSV line with the default columns, in e's buffer.
func (e *encoder) line(r *Record) ([]byte, error) {
	e.buf.Reset()
	r.fields(e.fields)
	if err := e.csv.Write(e.fields); err != nil {
		return nil, fmt.Errorf("acct: %w", err)
	}
	e.csv.Flush()
	return e.buf.Bytes(), nil
}

// lineFor returns r's CSV line in the columns of l, in e's buffer.
func (e *encoder) lineFor(r *Record, l *layout) ([]byte, error) {
	if l.std {
		return e.line(r)
	}
	e.vals = slices.Grow(e.vals[:0], valHeaders+len(l.headers))[:valHeaders+len(l.headers)]
	l.values(r, e.vals)
	e.cols = l.project(r.Type, e.vals, e.cols)
	return e.write(e.cols)
}

// write returns the CSV line of fields, in e's buffer.
func (e *encoder) write(fields []string) ([]byte, error) {
	e.buf.Reset()
	if err := e.csv.Write(fields); err != nil {
		return nil, fmt.Errorf("acct: %w", err)
	}
	e.csv.Flush()
	return e.buf.Bytes(), nil
}

var encoders = sync.Pool{New: func() any {
	e := &encoder{fields: make([]string, len(Columns))}
	e.csv = csv.NewWriter(&e.buf)
	return e
}}

// Write appends r to the file if the file records its type; other types are
// ignored. A zero TimeLogged is set to the current time. The line is buffered:
// it reaches the file within the flush interval, or on Flush or Close.
func (w *Writer) Write(r Record) error {
	if !validType(r.Type) {
		return fmt.Errorf("acct: unknown record type %q", r.Type)
	}
	if w.journaled {
		return ErrJournaled
	}
	if w.types.Load()&typeBit(r.Type) == 0 {
		return nil
	}
	if r.TimeLogged.IsZero() {
		r.TimeLogged = w.now()
	}
	e := encoders.Get().(*encoder)
	defer encoders.Put(e)
	lay := w.lay.Load()
	line, err := e.lineFor(&r, lay)
	if err != nil {
		return err
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	if now := w.lay.Load(); now != lay {
		// A reload changed the columns meanwhile: the line goes into
		// a file of the new ones.
		if line, err = e.lineFor(&r, now); err != nil {
			return err
		}
	}
	if w.f != nil && w.due(int64(len(line))) {
		w.rotate()
	}
	if w.f == nil {
		// A previous rotation could not start the new file.
		if err := w.openFile(); err != nil {
			return err
		}
	}
	// Keep lines whole in the file even between flushes: flush before a
	// line that does not fit rather than let bufio split it.
	if len(line) > w.bw.Available() && w.bw.Buffered() > 0 {
		if err := w.bw.Flush(); err != nil {
			return w.writeFailed(err)
		}
	}
	if _, err := w.bw.Write(line); err != nil {
		return w.writeFailed(err)
	}
	w.size += int64(len(line))
	w.records++
	return nil
}

// writeFailed handles a failed write: bufio.Writer keeps failing once it has
// failed, so the file is dropped and the next Write opens it again.
func (w *Writer) writeFailed(err error) error {
	w.bw = nil
	w.f.Close()
	w.f = nil
	return fmt.Errorf("acct: %s: %w", w.path, err)
}

// due reports whether the current file must be rotated before a line of n
// bytes. A file holding no record is never rotated (a line longer than
// max-size gets a file of its own; an idle file is not moved, its
// move-interval restarts instead). Called with mu held.
func (w *Writer) due(n int64) bool {
	now := w.now()
	if !w.lastErr.IsZero() && now.Sub(w.lastErr) < retryRotateAfter {
		return false
	}
	if w.reformat {
		return true
	}
	expired := w.interval > 0 && now.Sub(w.opened) >= w.interval
	if w.records == 0 {
		if expired {
			w.opened = now
		}
		return false
	}
	return expired || w.maxSize > 0 && w.size+n > w.maxSize
}

// Flush writes the buffered lines to the file.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	return w.flushLocked()
}

func (w *Writer) flushLocked() error {
	if w.bw == nil || w.bw.Buffered() == 0 {
		return nil
	}
	if err := w.bw.Flush(); err != nil {
		return w.writeFailed(err)
	}
	return nil
}

// Close flushes the buffered lines, stops the flusher and closes the file.
// Closing twice returns nil.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	close(w.stop)
	<-w.done

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.flushLocked()
	if w.f != nil {
		err = errors.Join(err, w.f.Sync(), w.f.Close())
		w.f, w.bw = nil, nil
	}
	if err != nil {
		return fmt.Errorf("acct: closing %s: %w", w.path, err)
	}
	return nil
}

// flusher flushes the buffer on every tick and moves the file when
// move-interval has elapsed, so a quiet file is still flushed and moved on
// time.
func (w *Writer) flusher(tick <-chan time.Time, ticker *time.Ticker) {
	defer close(w.done)
	if ticker != nil {
		defer ticker.Stop()
	}
	for {
		select {
		case <-w.stop:
			return
		case <-tick:
		}
		w.mu.Lock()
		if !w.closed {
			if w.f != nil && w.interval > 0 && w.due(0) {
				w.rotate()
			}
			if err := w.flushLocked(); err != nil {
				w.log.Error("accounting flush failed", "err", err)
			}
		}
		w.mu.Unlock()
		w.sweep()
	}
}

// rotate moves the current file aside and starts a new one. Called with mu
// held. Failures are logged and leave the writer appending to the current
// file (retried after retryRotateAfter), so no line is lost to a rotation.
func (w *Writer) rotate() {
	now := w.now()
	if err := w.flushLocked(); err != nil {
		w.log.Error("accounting rotation: flush failed", "err", err)
		w.lastErr = now
		return
	}
	if w.f == nil {
		return
	}
	if err := w.f.Sync(); err != nil {
		w.log.Warn("accounting rotation: sync failed", "err", err)
	}
	if err := w.f.Close(); err != nil {
		w.log.Warn("accounting rotation: close failed", "err", err)
	}
	w.f, w.bw = nil, nil
	dst, err := w.moveAside(now, true)
	if err != nil {
		w.log.Error("accounting rotation: rename failed", "err", err)
		w.lastErr = now
		// Go on appending to the same file.
		size, records, opened := w.size, w.records, w.opened
		if err := w.openFile(); err != nil {
			w.log.Error("accounting rotation: reopen failed", "err", err)
			return
		}
		w.size, w.records, w.opened = size, records, opened
		return
	}
	w.lastErr = time.Time{}
	w.reformat = false
	w.sweepNow = true
	w.log.Info("accounting file rotated", "moved-to", dst)
	if err := w.openFile(); err != nil {
		// Write retries the open.
		w.log.Error("accounting rotation: new file", "err", err)
	}
}

// moveAside renames the file at w.path to a name carrying the UTC time
// stamp of now, in the move-to directory when rotated is set and there is
// one (a file moved aside because it is not Tern's stays beside it). When
// that name is taken (two rotations in the same millisecond) the stamp is
// advanced a millisecond at a time until it is free, so names stay unique,
// in one format, and sort in rotation order. A move-to directory that
// cannot take the file (removed, on another file system) is logged and
// the file is renamed beside the current one instead, so the rotation
// still happens.
func (w *Writer) moveAside(now time.Time, rotated bool) (string, error) {
	if rotated && w.moveTo != "" {
		dst, err := w.renameStamped(now, w.moveTo)
		if err == nil {
			return dst, nil
		}
		w.log.Error("accounting rotation: cannot move the file to the move-to directory; it stays beside the file", "move-to", w.moveTo, "err", err)
	}
	return w.renameStamped(now, filepath.Dir(w.path))
}

// renameStamped renames the file at w.path into dir, under its name with
// the time stamp (see moveAside).
func (w *Writer) renameStamped(now time.Time, dir string) (string, error) {
	ext := filepath.Ext(w.path)
	base := filepath.Join(dir, strings.TrimSuffix(filepath.Base(w.path), ext))
	t := now.UTC().Truncate(time.Millisecond)
	if t.Before(w.lastStamp) {
		t = w.lastStamp
	}
	for {
		dst := base + "-" + t.Format(stampFormat) + ext
		if _, err := os.Lstat(dst); err == nil {
			t = t.Add(time.Millisecond)
			continue
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		if err := w.rename(w.path, dst); err != nil {
			return "", err
		}
		w.lastStamp = t.Add(time.Millisecond)
		return dst, nil
	}
}

// sweep deletes the rotated files older than delete-after (by the time
// stamp in their names, the time they were rotated), beside the file and
// in the move-to directory; only names of the form the rotation makes
// are considered. It looks at most every sweepEvery, or at once after a
// rotation, and does its reading of directories outside w.mu, so writes
// go on meanwhile.
func (w *Writer) sweep() {
	w.mu.Lock()
	now := w.now()
	if w.deleteAfter <= 0 || w.closed || !w.sweepNow && now.Sub(w.lastSweep) < sweepEvery {
		w.mu.Unlock()
		return
	}
	w.sweepNow, w.lastSweep = false, now
	maxAge, dirs := w.deleteAfter, []string{filepath.Dir(w.path)}
	if w.moveTo != "" && w.moveTo != dirs[0] {
		dirs = append(dirs, w.moveTo)
	}
	w.mu.Unlock()

	ext := filepath.Ext(w.path)
	prefix := strings.TrimSuffix(filepath.Base(w.path), ext) + "-"
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			w.log.Warn("delete-after: cannot read the directory of rotated files", "dir", dir, "err", err)
			continue
		}
		for _, e := range entries {
			name := e.Name()
			stamp, ok := strings.CutPrefix(name, prefix)
			if !ok || !e.Type().IsRegular() {
				continue
			}
			if stamp, ok = strings.CutSuffix(stamp, ext); !ok || len(stamp) != len(stampFormat) {
				continue
			}
			t, err := time.Parse(stampFormat, stamp)
			if err != nil || now.Sub(t) < maxAge {
				continue
			}
			p := filepath.Join(dir, name)
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				w.log.Warn("delete-after: cannot delete a rotated accounting file", "file", p, "err", err)
				continue
			}
			w.log.Info("rotated accounting file deleted (delete-after)", "file", p)
		}
	}
}

// openFile opens w.path for appending, writing the header when the file is
// new or empty. Called with mu held (or before the Writer is shared).
func (w *Writer) openFile() error {
	mode := os.O_WRONLY
	if w.journaled {
		mode = os.O_RDWR // the Journal reads back and cuts what a crash left
	}
	f, err := os.OpenFile(w.path, mode|os.O_CREATE|os.O_APPEND, w.perm)
	if err != nil {
		return fmt.Errorf("acct: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("acct: %w", err)
	}
	// The mode asked for, whatever the umask or the file's earlier
	// mode: world-readable yes is for a reader the umask would keep out.
	if st.Mode().Perm() != w.perm {
		if err := f.Chmod(w.perm); err != nil {
			w.log.Warn("accounting file: cannot change its mode", "err", err)
		}
	}
	w.f = f
	w.bw = bufio.NewWriterSize(f, bufferSize)
	w.size = st.Size()
	w.records = 0
	w.opened = w.now()
	if w.size == 0 {
		h := w.lay.Load().header
		w.bw.Write(h)
		w.size = int64(len(h))
	} else {
		// An adopted file: its lines count for max-size, so rotation
		// may happen on the next Write.
		w.records = 1
	}
	return nil
}

// adoptExisting decides what to do with a file already at w.path: keep
// appending to it when it is one of ours and ends with a whole line, move it
// aside otherwise. A journaled Writer keeps one of ours whose last line a
// crash cut short: its Journal knows what to cut (or moves it aside).
func (w *Writer) adoptExisting() error {
	f, err := os.Open(w.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("acct: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("acct: %w", err)
	}
	if st.Size() == 0 {
		return nil
	}
	want := w.lay.Load().header
	ok := st.Size() >= int64(len(want))
	if ok {
		head := make([]byte, len(want))
		_, err := io.ReadFull(f, head)
		ok = err == nil && bytes.Equal(head, want)
	}
	if ok && !w.journaled {
		last := make([]byte, 1)
		_, err := f.ReadAt(last, st.Size()-1)
		ok = err == nil && last[0] == '\n'
	}
	if ok {
		return nil
	}
	dst, err := w.moveAside(w.now(), false)
	if err != nil {
		return fmt.Errorf("acct: moving aside %s: %w", w.path, err)
	}
	w.log.Warn("accounting file was not a complete Tern accounting file; moved aside", "moved-to", dst)
	return nil
}
