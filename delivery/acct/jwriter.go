package acct

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// What a Journal does with a journaled Writer's file. Only the Journal's
// one goroutine calls these methods; each takes the Writer's lock, so
// they are safe against Close and Reconfigure.

// filePos is where an accounting file stands: which file it is (device
// and inode, so that a file moved away and another in its place are told
// apart) and how many bytes it holds.
type filePos struct {
	dev, ino uint64
	size     int64
}

func (p filePos) sameFile(o filePos) bool { return p.dev == o.dev && p.ino == o.ino }

// filePosV1 starts the encoding of a filePos in the spool.
const filePosV1 = 1

func (p filePos) encode() []byte {
	b := []byte{filePosV1}
	b = binary.AppendUvarint(b, p.dev)
	b = binary.AppendUvarint(b, p.ino)
	return binary.AppendUvarint(b, uint64(p.size))
}

func decodeFilePos(b []byte) (filePos, bool) {
	if len(b) < 1 || b[0] != filePosV1 {
		return filePos{}, false
	}
	b = b[1:]
	var v [3]uint64
	for i := range v {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return filePos{}, false
		}
		v[i], b = x, b[n:]
	}
	return filePos{dev: v[0], ino: v[1], size: int64(v[2])}, len(b) == 0
}

// errTailTooLong is returned by jTail for more bytes than asked for.
var errTailTooLong = errors.New("acct: more unacknowledged bytes than a journal batch writes")

// jPos writes out what is buffered and returns the position of the file,
// opening it again first if a failure closed it.
func (w *Writer) jPos() (filePos, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return filePos{}, ErrClosed
	}
	if w.f == nil {
		if err := w.openFile(); err != nil {
			return filePos{}, err
		}
	}
	if err := w.flushLocked(); err != nil {
		return filePos{}, err
	}
	return w.statLocked()
}

// statLocked returns the position of the open file and makes w.size
// agree with it.
func (w *Writer) statLocked() (filePos, error) {
	fi, err := w.f.Stat()
	if err != nil {
		return filePos{}, w.writeFailed(err) // opened again next time
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return filePos{}, fmt.Errorf("acct: %s: no inode number on this system", w.path)
	}
	w.size = fi.Size()
	return filePos{dev: uint64(st.Dev), ino: uint64(st.Ino), size: fi.Size()}, nil
}

// jAppend adds line, a whole CSV line, to the file's buffer.
func (w *Writer) jAppend(line []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	if w.f == nil {
		return fmt.Errorf("acct: %s: the file was closed by an earlier failure", w.path)
	}
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

// jSync writes out the buffer, syncs the file and returns its position.
func (w *Writer) jSync() (filePos, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return filePos{}, ErrClosed
	}
	if w.f == nil {
		return filePos{}, fmt.Errorf("acct: %s: the file was closed by an earlier failure", w.path)
	}
	if err := w.flushLocked(); err != nil {
		return filePos{}, err
	}
	if err := w.f.Sync(); err != nil {
		return filePos{}, w.writeFailed(err)
	}
	return w.statLocked()
}

// jTail returns the bytes of the file from offset off to its end, at
// most limit of them (errTailTooLong otherwise).
func (w *Writer) jTail(off, limit int64) ([]byte, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil, fmt.Errorf("acct: %s: the file was closed by an earlier failure", w.path)
	}
	if err := w.flushLocked(); err != nil {
		return nil, err
	}
	pos, err := w.statLocked()
	if err != nil {
		return nil, err
	}
	if pos.size-off > limit {
		return nil, errTailTooLong
	}
	b := make([]byte, max(pos.size-off, 0))
	if _, err := w.f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("acct: reading %s: %w", w.path, err)
	}
	return b, nil
}

// jTruncate cuts the file to its first n bytes: what a crash or a failed
// write left after the last line the spool acknowledged, and that is not
// what the Journal writes next.
func (w *Writer) jTruncate(n int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return fmt.Errorf("acct: %s: the file was closed by an earlier failure", w.path)
	}
	if err := w.flushLocked(); err != nil {
		return err
	}
	if err := w.f.Truncate(n); err != nil {
		return fmt.Errorf("acct: truncating %s: %w", w.path, err)
	}
	w.size = n
	return nil
}

// jFit returns how many of the next lines, of the lengths given, go into
// the current file before it is due for rotation; 0 means it is due
// before the first. A file holding no record takes at least one line, as
// with Write; and while a failed rotation waits for its retry, every line.
func (w *Writer) jFit(lens []int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	if !w.lastErr.IsZero() && now.Sub(w.lastErr) < retryRotateAfter {
		return len(lens)
	}
	if w.reformat {
		return 0 // new columns: a new file, with their header
	}
	expired := w.interval > 0 && now.Sub(w.opened) >= w.interval
	if w.records == 0 && expired {
		w.opened = now // an idle file is not moved: its interval starts again
		expired = false
	}
	size, records := w.size, w.records
	for i, n := range lens {
		if records > 0 && (expired || w.maxSize > 0 && size+int64(n) > w.maxSize) {
			return i
		}
		size += int64(n)
		records++
	}
	return len(lens)
}

// jDue reports whether the file is due for rotation now, with no line to
// write: its move-interval has elapsed (see due).
func (w *Writer) jDue() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.f != nil && w.interval > 0 && w.due(0)
}

// jRotate moves the file aside and starts a new one, as rotate does, and
// makes both durable before it returns: the renaming and the new file
// with its header. The Journal records the new file's position in the
// spool before writing anything to it.
func (w *Writer) jRotate() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	w.rotate()
	if w.f == nil {
		return fmt.Errorf("acct: %s: no file after rotation", w.path)
	}
	if err := w.flushLocked(); err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil {
		return w.writeFailed(err)
	}
	if w.moveTo != "" {
		// The moved file's new name is durable too.
		if err := syncDir(w.moveTo); err != nil {
			return err
		}
	}
	return syncDir(filepath.Dir(w.path))
}

// syncDir makes the entries of directory dir (a rename, a new file)
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("acct: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("acct: syncing %s: %w", dir, err)
	}
	return nil
}
