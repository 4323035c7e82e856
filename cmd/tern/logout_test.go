package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestLogOutputSwapLosesNothing writes lines from several goroutines while
// the output moves between two files and standard error: every line lands
// exactly once, whole, in one of them.
func TestLogOutputSwapLosesNothing(t *testing.T) {
	dir := t.TempDir()
	var stderr syncBuffer
	a, b := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	o, err := newLogOutput(a, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	const writers, lines = 4, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				fmt.Fprintf(o, "w%d line %d\n", w, i)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	paths := []string{b, "", a}
	for i := 0; ; i++ {
		select {
		case <-done:
		default:
			p := paths[i%len(paths)]
			f, err := openLogFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := o.swap(p, f); err != nil {
				t.Fatal(err)
			}
			continue
		}
		break
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, text := range []string{readOr(t, a), readOr(t, b), stderr.String()} {
		for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
			if l != "" {
				seen[l]++
			}
		}
	}
	for w := range writers {
		for i := range lines {
			if l := fmt.Sprintf("w%d line %d", w, i); seen[l] != 1 {
				t.Fatalf("%q written %d times, want once", l, seen[l])
			}
		}
	}
	if len(seen) != writers*lines {
		t.Fatalf("%d distinct lines, want %d (a line was split or mangled)", len(seen), writers*lines)
	}
}

// TestLogOutputBadPath: a file that cannot be opened is an error naming
// log-file.
func TestLogOutputBadPath(t *testing.T) {
	_, err := newLogOutput(filepath.Join(t.TempDir(), "missing", "tern.log"), os.Stderr)
	if err == nil || !strings.Contains(err.Error(), "log-file") {
		t.Fatalf("newLogOutput in a missing directory: %v, want a log-file error", err)
	}
}

func readOr(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(data)
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// levelSpy is a handler that notes the logger's level at each line it
// handles.
type levelSpy struct {
	slog.Handler
	level *slog.LevelVar
	mu    sync.Mutex
	seen  []slog.Level
}

func (h *levelSpy) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	h.seen = append(h.seen, h.level.Level())
	h.mu.Unlock()
	return h.Handler.Handle(ctx, r)
}

// TestSetLogLevel: the change is logged whichever way the level moves,
// even between two levels above info, and the logger's level is only ever
// the old one or the new one: lowering it for the line, however briefly,
// would let other goroutines' lines of the lower level through.
func TestSetLogLevel(t *testing.T) {
	for _, tc := range []struct{ from, to slog.Level }{
		{slog.LevelInfo, slog.LevelDebug},
		{slog.LevelDebug, slog.LevelError},
		{slog.LevelWarn, slog.LevelError},
		{slog.LevelError, slog.LevelWarn},
	} {
		var level slog.LevelVar
		level.Set(tc.from)
		var out bytes.Buffer
		spy := &levelSpy{Handler: slog.NewTextHandler(&out, &slog.HandlerOptions{Level: &level}), level: &level}
		setLogLevel(slog.New(spy), &level, tc.to)
		if got := level.Level(); got != tc.to {
			t.Errorf("%v to %v: the level is %v", tc.from, tc.to, got)
		}
		want := fmt.Sprintf(`msg="log level changed" from=%v to=%v`, tc.from, tc.to)
		if !strings.Contains(out.String(), want) {
			t.Errorf("%v to %v: logged %q, want %q", tc.from, tc.to, out.String(), want)
		}
		for _, l := range spy.seen {
			if l != tc.from && l != tc.to {
				t.Errorf("%v to %v: the logger was at %v while the change was logged", tc.from, tc.to, l)
			}
		}
	}
}
