package acct

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ternmta/tern/config"
)

// Set fans records out to every accounting file and pipe of a
// configuration. A nil or empty Set accepts and drops everything. It is
// safe for concurrent use, and a configuration reload changes its files and
// pipes with Prepare and Commit.
type Set struct {
	// opts are kept for the Writers a reload opens, so they share the
	// clock, logger and flush interval of the first ones.
	opts Options
	// open is Open when nil; tests set it to see the Writers a Prepare
	// opens.
	open func(*config.AcctFile, Options) (*Writer, error)
	// openPipe is OpenPipe when nil, for tests likewise.
	openPipe func(*config.AcctFile, Options) (*Pipe, error)

	// mu is read-locked for the whole of Write, Accepts and Flush and
	// write-locked by Commit and Close. A Write thus sees one list from
	// start to end (every file of one configuration, never a mix), and
	// Commit, once it holds mu, knows that no Write is still using a Writer
	// it is about to close. The cost on the hot path is the read lock's
	// two atomic adds; writers only contend with each other in Writer.mu.
	mu sync.RWMutex
	// writers and keys (the cleaned absolute path of each writer) are
	// replaced whole by Commit, never modified in place, so Writers can
	// hand the slice out.
	writers []*Writer
	keys    []string
	// pipes and pipeKeys (the command line, the identity of a pipe
	// across reloads) are replaced whole likewise.
	pipes    []*Pipe
	pipeKeys []string
	// headers are the header names any file or pipe reads (header_
	// fields), which a journal entry carries the values of.
	headers []string
	closed  bool

	// reload serializes Prepare, Commit and Abort, and guards pending.
	reload sync.Mutex
	// pending is the Change prepared and not yet committed or aborted. Only
	// one may exist: a second one would be computed against files the
	// first is about to open or close.
	pending *Change
}

// OpenAll opens a Writer for each <acct-file> of cfg that names a file and
// starts a Pipe for each that names a program. On error the files and
// pipes already opened are closed again. Two blocks naming the same file
// (after cleaning the path) are an error, as two Writers on one file would
// rotate it from under each other.
func OpenAll(cfg *config.Config, opts Options) (*Set, error) {
	s := &Set{opts: opts}
	c, err := s.Prepare(cfg)
	if err != nil {
		return nil, err
	}
	c.Commit()
	return s, nil
}

// Writers returns the Set's file writers, in configuration order. The
// slice is not modified afterwards; a reload replaces it.
func (s *Set) Writers() []*Writer {
	if s == nil {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.writers
}

// Pipes returns the Set's pipes, in configuration order. The slice is not
// modified afterwards; a reload replaces it.
func (s *Set) Pipes() []*Pipe {
	if s == nil {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pipes
}

// Accepts reports whether any file or pipe records type t, so callers can
// skip building records nobody wants.
func (s *Set) Accepts(t byte) bool {
	if s == nil {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, w := range s.writers {
		if w.Accepts(t) {
			return true
		}
	}
	for _, p := range s.pipes {
		if p.Accepts(t) {
			return true
		}
	}
	return false
}

// entryHeaders returns the header names some file or pipe reads.
func (s *Set) entryHeaders() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.headers
}

// Write writes r to every file and pipe that records its type; it returns
// the errors of the files that failed, the others still get the record. A
// zero TimeLogged is set once, so every file logs the same time. A Write
// concurrent with a reload's Commit goes wholly to the files and settings of
// the old configuration or wholly to those of the new one. A pipe never
// makes Write wait (see Pipe.Write).
func (s *Set) Write(r Record) error {
	if s == nil {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.writers) == 0 && len(s.pipes) == 0 {
		return nil
	}
	if r.TimeLogged.IsZero() {
		if s.opts.Now != nil {
			r.TimeLogged = s.opts.Now()
		} else {
			r.TimeLogged = time.Now()
		}
	}
	var errs []error
	for _, w := range s.writers {
		if err := w.Write(r); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range s.pipes {
		if err := p.Write(r); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Flush flushes every file.
func (s *Set) Flush() error {
	if s == nil {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var errs []error
	for _, w := range s.writers {
		errs = append(errs, w.Flush())
	}
	return errors.Join(errs...)
}

// Close closes every file and pipe (the pipes all at once, each within
// pipeCloseWait). Later Writes return ErrClosed for each, and later
// Prepares fail; a Change prepared before Close and committed after it
// closes its new files and pipes instead of installing them.
func (s *Set) Close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	s.closed = true
	var errs []error
	for _, w := range s.writers {
		errs = append(errs, w.Close())
	}
	pipes := s.pipes
	s.mu.Unlock()
	// Outside mu: a pipe may take its seconds, and a Write meanwhile
	// must not wait for them (it finds the pipe closed, or its record is
	// among the last the program gets).
	closePipes(pipes)
	return errors.Join(errs...)
}

// closePipes closes pipes side by side, so that each has its time to
// finish, not a share of one.
func closePipes(pipes []*Pipe) {
	var wg sync.WaitGroup
	for _, p := range pipes {
		wg.Go(func() { p.Close() })
	}
	wg.Wait()
}

// Change is a reload of a Set's accounting files prepared by Set.Prepare:
// the files new to the configuration are already open, and nothing else has
// changed yet. Exactly one of Commit and Abort applies or discards it; the
// other, and any second call, then does nothing, so a caller can defer Abort
// right after Prepare and Commit once the rest of its reload has succeeded.
type Change struct {
	s *Set
	// writers and keys, pipes and pipeKeys are the Set's lists once
	// committed.
	writers  []*Writer
	keys     []string
	pipes    []*Pipe
	pipeKeys []string
	// kept are the Writers carried over, with their new blocks, and
	// keptPipes the pipes.
	kept      []keptWriter
	keptPipes []keptPipe
	// opened are the Writers Prepare opened, closed by Abort; removed the
	// ones no longer configured, closed by Commit. Likewise for pipes.
	opened       []*Writer
	removed      []*Writer
	openedPipes  []*Pipe
	removedPipes []*Pipe
	// updated are the names of the kept files and pipes whose settings
	// change.
	updated []string
	done    bool
}

type keptWriter struct {
	w   *Writer
	cfg *config.AcctFile
}

type keptPipe struct {
	p   *Pipe
	cfg *config.AcctFile
}

// pipeKey is the identity of a pipe across reloads: its command line.
func pipeKey(af *config.AcctFile) string { return strings.Join(af.Command, "\x00") }

// pathKey is the identity of an accounting file across reloads: the same
// file spelled differently (relative, with ./ or //) must be kept, not
// opened a second time.
func pathKey(p string) (string, error) {
	k, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("acct: %s: %w", p, err)
	}
	return k, nil
}

// Prepare is the first phase of applying cfg's <acct-file> blocks to a
// running Set. It opens the files that are new (so a reload that cannot open
// one is refused before anything changes) and works out which files are kept
// and which are removed; the Set itself is unchanged until the Change is
// committed. Files are matched by cleaned absolute path. Kept files get
// their new records, max-size and move-interval at Commit, and keep their
// open file (no rotation just because of the reload).
//
// If a new file cannot be opened, the files this Prepare opened are closed
// again and the error is returned. Only one Change may be pending at a time:
// Prepare fails until the previous one is committed or aborted.
func (s *Set) Prepare(cfg *config.Config) (*Change, error) {
	if s == nil {
		return nil, errors.New("acct: Prepare on a nil Set")
	}
	if cfg == nil {
		return nil, errors.New("acct: Prepare without a configuration")
	}
	s.reload.Lock()
	defer s.reload.Unlock()
	if s.pending != nil {
		return nil, errors.New("acct: a reload of the accounting files is already prepared; commit or abort it first")
	}
	s.mu.RLock()
	closed, curWriters, curKeys := s.closed, s.writers, s.keys
	curPipes, curPipeKeys := s.pipes, s.pipeKeys
	s.mu.RUnlock()
	if closed {
		return nil, errors.New("acct: Prepare on a closed Set")
	}

	c := &Change{s: s}
	fail := func(err error) (*Change, error) {
		for _, w := range c.opened {
			if cerr := w.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
		closePipes(c.openedPipes)
		return nil, err
	}
	seen := make(map[string]bool, len(cfg.AcctFiles))
	seenPipes := map[string]bool{}
	for _, af := range cfg.AcctFiles {
		if af.Command != nil {
			key := pipeKey(af)
			if seenPipes[key] {
				return fail(fmt.Errorf("acct: %s is configured twice", af.Name()))
			}
			seenPipes[key] = true
			if i := slices.Index(curPipeKeys, key); i >= 0 {
				p := curPipes[i]
				c.keptPipes = append(c.keptPipes, keptPipe{p, af})
				if !p.current().same(settingsOf(af)) {
					c.updated = append(c.updated, p.Name())
				}
				c.pipes = append(c.pipes, p)
				c.pipeKeys = append(c.pipeKeys, key)
				continue
			}
			open := s.openPipe
			if open == nil {
				open = OpenPipe
			}
			p, err := open(af, s.opts)
			if err != nil {
				return fail(err)
			}
			c.openedPipes = append(c.openedPipes, p)
			c.pipes = append(c.pipes, p)
			c.pipeKeys = append(c.pipeKeys, key)
			continue
		}
		key, err := pathKey(af.Path)
		if err != nil {
			return fail(err)
		}
		if seen[key] {
			return fail(fmt.Errorf("acct: %s is configured twice", key))
		}
		seen[key] = true
		if i := slices.Index(curKeys, key); i >= 0 {
			w := curWriters[i]
			c.kept = append(c.kept, keptWriter{w, af})
			if !w.current().same(settingsOf(af)) {
				c.updated = append(c.updated, w.Path())
			}
			c.writers = append(c.writers, w)
			c.keys = append(c.keys, key)
			continue
		}
		open := s.open
		if open == nil {
			open = Open
		}
		w, err := open(af, s.opts)
		if err != nil {
			return fail(err)
		}
		c.opened = append(c.opened, w)
		c.writers = append(c.writers, w)
		c.keys = append(c.keys, key)
	}
	for i, key := range curKeys {
		if !seen[key] {
			c.removed = append(c.removed, curWriters[i])
		}
	}
	for i, key := range curPipeKeys {
		if !seenPipes[key] {
			c.removedPipes = append(c.removedPipes, curPipes[i])
		}
	}
	s.pending = c
	return c, nil
}

// Commit switches the Set to the new configuration's files, in its order,
// applies the new settings to the kept files, and then flushes and closes
// the files no longer configured. The switch is atomic with respect to
// Write, Accepts and Flush: a record goes either to the old files (before
// they are closed, so it is in them once Commit returns) or to the new ones.
// Failures to close a removed file are logged with the Set's logger; there is
// nothing else to do about them, since the switch has already happened.
func (c *Change) Commit() { c.finish(c.commit) }

// commit is Commit's work, under the Set's reload lock.
func (c *Change) commit() {
	s := c.s
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		// Closed while the Change was pending: its files must not be
		// left open by a Set nobody will close again.
		c.closeOpened()
		return
	}
	// Under the write lock, so no Write sees new settings with old files
	// or the reverse.
	for _, k := range c.kept {
		k.w.Reconfigure(k.cfg)
	}
	for _, k := range c.keptPipes {
		k.p.Reconfigure(k.cfg)
	}
	s.writers, s.keys = c.writers, c.keys
	s.pipes, s.pipeKeys = c.pipes, c.pipeKeys
	s.headers = headersOf(c.writers, c.pipes)
	s.mu.Unlock()

	// Outside mu, so Writes to the other files go on while these are
	// flushed, but under reload, so a Prepare cannot open one of these
	// paths again before it is closed.
	for _, w := range c.removed {
		if err := w.Close(); err != nil {
			s.logger().Error("closing a removed accounting file failed", "acct-file", w.Path(), "err", err)
		}
	}
	closePipes(c.removedPipes)
}

// headersOf returns the header names the layouts of ws and ps read, each
// once (compared without case).
func headersOf(ws []*Writer, ps []*Pipe) []string {
	var out []string
	add := func(l *layout) {
		for _, h := range l.headers {
			if !slices.ContainsFunc(out, func(o string) bool { return strings.EqualFold(o, h) }) {
				out = append(out, h)
			}
		}
	}
	for _, w := range ws {
		add(w.lay.Load())
	}
	for _, p := range ps {
		add(p.lay.Load())
	}
	return out
}

// Abort discards the Change: the files Prepare opened are closed (a new,
// empty one keeps its header line) and the Set is left as it was.
func (c *Change) Abort() { c.finish(c.closeOpened) }

// finish ends the Change once, by Commit or Abort, running end under the
// Set's reload lock; later calls, and calls on nil, do nothing.
func (c *Change) finish(end func()) {
	if c == nil {
		return
	}
	c.s.reload.Lock()
	defer c.s.reload.Unlock()
	if c.done {
		return
	}
	c.done = true
	c.s.pending = nil
	end()
}

// closeOpened closes the Writers Prepare opened, logging failures.
func (c *Change) closeOpened() {
	for _, w := range c.opened {
		if err := w.Close(); err != nil {
			c.s.logger().Error("closing an accounting file of an abandoned reload failed", "acct-file", w.Path(), "err", err)
		}
	}
	closePipes(c.openedPipes)
}

// Summary describes the Change for a log line: the paths of the files
// opened (and the names, "|program …", of the pipes started), of those
// closed (or to be closed), and of the kept ones whose settings change.
// All are empty when the reload changes nothing but maybe the order of the
// files.
func (c *Change) Summary() (opened, closed, updated []string) {
	if c == nil {
		return nil, nil, nil
	}
	for _, w := range c.opened {
		opened = append(opened, w.Path())
	}
	for _, p := range c.openedPipes {
		opened = append(opened, p.Name())
	}
	for _, w := range c.removed {
		closed = append(closed, w.Path())
	}
	for _, p := range c.removedPipes {
		closed = append(closed, p.Name())
	}
	return opened, closed, slices.Clone(c.updated)
}

// logger is where the Set logs what no caller sees: the logger of its
// Options, as for its Writers.
func (s *Set) logger() *slog.Logger {
	if s.opts.Logger != nil {
		return s.opts.Logger
	}
	return slog.Default()
}
