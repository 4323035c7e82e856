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
	dirPerm          = 0o755
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

	mu       sync.Mutex
	maxSize  int64         // 0: no size rotation
	interval time.Duration // 0: no time rotation
	f        *os.File
	bw       *bufio.Writer
	size     int64     // bytes in the current file, buffered ones included
	records  int64     // records in the current file
	opened   time.Time // when the current file was started
	lastErr  time.Time // when a rotation last failed
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
	w.maxSize, w.interval = st.maxSize, st.interval
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
// it runs, normalized so two blocks meaning the same compare equal.
type settings struct {
	types    uint32        // typeBits
	maxSize  int64         // 0: no size rotation
	interval time.Duration // 0: no time rotation
}

func settingsOf(cfg *config.AcctFile) settings {
	st := settings{types: typeBits(cfg.Records.Value)}
	if ms := int64(cfg.MaxSize.Value); ms > 0 && config.Size(ms) != config.Unlimited {
		st.maxSize = ms
	}
	if iv := cfg.MoveInterval.Value; iv > 0 && iv != config.Never {
		st.interval = iv
	}
	return st
}

// current returns the settings in effect, for comparing with a new block.
func (w *Writer) current() settings {
	w.mu.Lock()
	defer w.mu.Unlock()
	return settings{types: w.types.Load(), maxSize: w.maxSize, interval: w.interval}
}

// Reconfigure applies the records, max-size and move-interval of cfg to the
// open file, so a configuration reload changes them without closing the file
// under the writes in progress or losing its buffer and rotation state.
// cfg.Path is ignored: another path is another file, with a Writer of its
// own.
//
// The record types apply from the next Write. Max-size and move-interval
// apply to the current file as if they had been set when it was opened: a
// file already past the new max-size is rotated before the next line, one
// older than the new move-interval at the next line or flusher tick (the
// flusher reads the interval on every tick, so it follows the change without
// a restart). It is safe to call concurrently with Write.
func (w *Writer) Reconfigure(cfg *config.AcctFile) {
	st := settingsOf(cfg)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.types.Store(st.types)
	w.maxSize, w.interval = st.maxSize, st.interval
}

func validType(t byte) bool { return typeBit(t) != 0 }

// encoder turns records into CSV lines outside the Writer's lock.
type encoder struct {
	buf    bytes.Buffer
	csv    *csv.Writer
	fields []string
}

// line returns r's CSV line, in e's buffer.
func (e *encoder) line(r *Record) ([]byte, error) {
	e.buf.Reset()
	r.fields(e.fields)
	if err := e.csv.Write(e.fields); err != nil {
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
	line, err := e.line(&r)
	if err != nil {
		return err
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
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
	dst, err := w.moveAside(now)
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
	w.log.Info("accounting file rotated", "moved-to", dst)
	if err := w.openFile(); err != nil {
		// Write retries the open.
		w.log.Error("accounting rotation: new file", "err", err)
	}
}

// moveAside renames the file at w.path to a name carrying the UTC time
// stamp of now. When that name is taken (two rotations in the same
// millisecond) the stamp is advanced a millisecond at a time until it is
// free, so names stay unique, in one format, and sort in rotation order.
func (w *Writer) moveAside(now time.Time) (string, error) {
	ext := filepath.Ext(w.path)
	base := strings.TrimSuffix(w.path, ext)
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

// openFile opens w.path for appending, writing the header when the file is
// new or empty. Called with mu held (or before the Writer is shared).
func (w *Writer) openFile() error {
	mode := os.O_WRONLY
	if w.journaled {
		mode = os.O_RDWR // the Journal reads back and cuts what a crash left
	}
	f, err := os.OpenFile(w.path, mode|os.O_CREATE|os.O_APPEND, filePerm)
	if err != nil {
		return fmt.Errorf("acct: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("acct: %w", err)
	}
	w.f = f
	w.bw = bufio.NewWriterSize(f, bufferSize)
	w.size = st.Size()
	w.records = 0
	w.opened = w.now()
	if w.size == 0 {
		w.bw.Write(header)
		w.size = int64(len(header))
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
	ok := st.Size() >= int64(len(header))
	if ok {
		head := make([]byte, len(header))
		_, err := io.ReadFull(f, head)
		ok = err == nil && bytes.Equal(head, header)
	}
	if ok && !w.journaled {
		last := make([]byte, 1)
		_, err := f.ReadAt(last, st.Size()-1)
		ok = err == nil && last[0] == '\n'
	}
	if ok {
		return nil
	}
	dst, err := w.moveAside(w.now())
	if err != nil {
		return fmt.Errorf("acct: moving aside %s: %w", w.path, err)
	}
	w.log.Warn("accounting file was not a complete Tern accounting file; moved aside", "moved-to", dst)
	return nil
}
