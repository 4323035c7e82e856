package queue_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

// A spool whose disk is full when it opens: the write-ahead log replayed
// at open cannot be flushed, and pebble retries that for ever. Open gives
// up with the error instead of hanging (the daemon's listeners would never
// open), and the error is logged a few times, not hundreds a second.
func TestOpenGivesUpOnAFullDisk(t *testing.T) {
	mem := vfs.NewMem()
	q, err := queue.Open(queue.Options{Dir: "spool", FS: mem, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := q.Put(context.Background(), queuetest.Message("mta1", "r@example.com")); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	full := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		// The flush of the replayed log writes an sstable: that is where
		// a full disk stops pebble's open.
		if op.Kind.ReadOrWrite() == errorfs.OpIsWrite && strings.HasSuffix(filepath.Base(op.Path), ".sst") {
			return syscall.ENOSPC
		}
		return nil
	})}
	full.On()
	// The open given up on goes on in the background: give it space at
	// the end, so that it finishes rather than retry for the rest of the
	// package's tests.
	defer full.Off()
	logs := &countingHandler{}
	done := make(chan error, 1)
	go func() {
		q, err := queue.Open(queue.Options{Dir: "spool", FS: errorfs.Wrap(mem, full), Logger: slog.New(logs)})
		if err == nil {
			q.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Open on a full disk: %v, want an error saying no space is left", err)
		}
		t.Logf("Open: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("Open on a full disk still waiting after 30s (%d lines logged)", logs.n())
	}
	if n := logs.n(); n > 5 {
		t.Errorf("%d error lines logged while opening, want a few", n)
	}
}

// countingHandler counts the error records logged.
type countingHandler struct {
	mu    sync.Mutex
	count int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.mu.Lock()
		h.count++
		h.mu.Unlock()
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }
func (h *countingHandler) n() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}
