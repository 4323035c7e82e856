package acct

import (
	"errors"
	"time"

	"github.com/ternmta/tern/config"
)

// Set fans records out to every accounting file of a configuration. A nil or
// empty Set accepts and drops everything. It is safe for concurrent use.
type Set struct {
	writers []*Writer
	now     func() time.Time
}

// OpenAll opens a Writer for each <acct-file> of cfg. On error the files
// already opened are closed again.
func OpenAll(cfg *config.Config, opts Options) (*Set, error) {
	s := &Set{now: opts.Now}
	if s.now == nil {
		s.now = time.Now
	}
	for _, af := range cfg.AcctFiles {
		w, err := Open(af, opts)
		if err != nil {
			return nil, errors.Join(err, s.Close())
		}
		s.writers = append(s.writers, w)
	}
	return s, nil
}

// Writers returns the Set's writers, in configuration order.
func (s *Set) Writers() []*Writer {
	if s == nil {
		return nil
	}
	return s.writers
}

// Accepts reports whether any file records type t, so callers can skip
// building records nobody wants.
func (s *Set) Accepts(t byte) bool {
	if s == nil {
		return false
	}
	for _, w := range s.writers {
		if w.Accepts(t) {
			return true
		}
	}
	return false
}

// Write writes r to every file that records its type; it returns the errors
// of the files that failed, the others still get the record. A zero
// TimeLogged is set once, so every file logs the same time.
func (s *Set) Write(r Record) error {
	if s == nil || len(s.writers) == 0 {
		return nil
	}
	if r.TimeLogged.IsZero() {
		r.TimeLogged = s.now()
	}
	var errs []error
	for _, w := range s.writers {
		if err := w.Write(r); err != nil {
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
	var errs []error
	for _, w := range s.writers {
		errs = append(errs, w.Flush())
	}
	return errors.Join(errs...)
}

// Close closes every file.
func (s *Set) Close() error {
	if s == nil {
		return nil
	}
	var errs []error
	for _, w := range s.writers {
		errs = append(errs, w.Close())
	}
	return errors.Join(errs...)
}
