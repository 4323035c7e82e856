package queue

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Pebble's background errors. When the disk is full, pebble retries a
// failed flush or compaction again and again, and reports each failure:
// hundreds a second. Two things follow. While the spool opens (a flush of
// the write-ahead log replayed at open), such an error means the open
// cannot finish; Open gives up with that error instead of waiting for ever
// with the listeners never opened. While the queue runs, the errors are
// logged at most once per backgroundLogEvery, with a count of those left
// out, so a full disk does not also fill the log.

// backgroundLogEvery is the least time between two log lines about
// pebble's background errors.
const backgroundLogEvery = 10 * time.Second

// backgroundErrors receives pebble's background errors: it logs them,
// rate-limited, and hands the first one to whoever waits for it.
type backgroundErrors struct {
	log *slog.Logger

	mu         sync.Mutex
	first      chan struct{} // closed at the first error
	firstErr   error
	lastLogged time.Time
	suppressed int
}

func newBackgroundErrors(log *slog.Logger) *backgroundErrors {
	return &backgroundErrors{log: log, first: make(chan struct{})}
}

// report is pebble's EventListener.BackgroundError.
func (b *backgroundErrors) report(err error) {
	now := time.Now()
	b.mu.Lock()
	if b.firstErr == nil {
		b.firstErr = err
		close(b.first)
	}
	if !b.lastLogged.IsZero() && now.Sub(b.lastLogged) < backgroundLogEvery {
		b.suppressed++
		b.mu.Unlock()
		return
	}
	n := b.suppressed
	b.suppressed, b.lastLogged = 0, now
	b.mu.Unlock()
	if n > 0 {
		b.log.Error("queue: spool background error", "err", err, "similar_errors_not_logged", n,
			"every", backgroundLogEvery.String())
		return
	}
	b.log.Error("queue: spool background error", "err", err)
}

// err returns the first error reported, nil if none.
func (b *backgroundErrors) err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.firstErr
}

// listener returns an event listener that routes background errors
// through b; pebble leaves its other events unlogged, as before.
func (b *backgroundErrors) listener() *pebble.EventListener {
	return &pebble.EventListener{BackgroundError: b.report}
}

// openWatched runs pebble.Open, and gives up with the first background
// error if one comes before the open finishes: a flush of the replayed
// write-ahead log that fails for want of space is retried by pebble for
// ever, and Open would never return. The abandoned open keeps running (and
// the directory locked) until the process exits, which is what its caller
// does with such an error.
func openWatched(dir string, po *pebble.Options, bg *backgroundErrors) (*pebble.DB, error) {
	type result struct {
		db  *pebble.DB
		err error
	}
	done := make(chan result, 1)
	go func() {
		db, err := pebble.Open(dir, po)
		done <- result{db, err}
	}()
	select {
	case r := <-done:
		return r.db, r.err
	case <-bg.first:
		select {
		case r := <-done: // it finished after all
			return r.db, r.err
		default:
		}
		return nil, fmt.Errorf("the spool cannot finish opening: %w", bg.err())
	}
}
