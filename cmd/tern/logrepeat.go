package main

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// A failure that repeats (a full disk, an unreachable resolver) can make
// the same error line hundreds of times a second and fill the disk the log
// is on as well. repeatLimiter lets through at most repeatBurst error or
// warning lines with the same message per repeatWindow; the rest are
// counted, and the first line let through in a later window says how many
// were left out. Lines below warning are not limited: at info and debug a
// line per event is the point (and debug is asked for).

// repeatWindow and repeatBurst bound the repeats of one message.
const (
	repeatWindow = 10 * time.Second
	repeatBurst  = 5
	// repeatKeys bounds the messages tracked in a window; past it, new
	// messages pass unlimited until the window ends.
	repeatKeys = 1024
)

// repeatLimiter is a slog.Handler in front of the daemon's handler.
type repeatLimiter struct {
	next  slog.Handler
	state *repeatState // shared by the handlers WithAttrs and WithGroup make
}

type repeatState struct {
	now   func() time.Time
	mu    sync.Mutex
	start time.Time // the current window's start
	seen  map[string]*repeatCount
	// left counts the lines left out in earlier windows, by message,
	// until a line with that message passes again and reports them.
	left map[string]int
}

type repeatCount struct{ n, dropped int }

func newRepeatLimiter(next slog.Handler, now func() time.Time) *repeatLimiter {
	return &repeatLimiter{next: next, state: &repeatState{now: now, seen: map[string]*repeatCount{}, left: map[string]int{}}}
}

func (h *repeatLimiter) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *repeatLimiter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.next.Handle(ctx, r)
	}
	pass, before := h.state.admit(r.Message)
	if !pass {
		return nil
	}
	if before > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("similar_lines_not_logged", before))
	}
	return h.next.Handle(ctx, r)
}

// admit reports whether a line with message msg may pass now, and how
// many lines with it were left out before, in earlier windows.
func (s *repeatState) admit(msg string) (bool, int) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.start) >= repeatWindow {
		for m, c := range s.seen {
			if c.dropped > 0 && len(s.left) < repeatKeys {
				s.left[m] += c.dropped
			}
		}
		clear(s.seen)
		s.start = now
	}
	c := s.seen[msg]
	if c == nil {
		if len(s.seen) >= repeatKeys {
			return true, 0
		}
		c = &repeatCount{}
		s.seen[msg] = c
	}
	if c.n >= repeatBurst {
		c.dropped++
		return false, 0
	}
	c.n++
	before := s.left[msg]
	delete(s.left, msg)
	return true, before
}

func (h *repeatLimiter) WithAttrs(as []slog.Attr) slog.Handler {
	return &repeatLimiter{next: h.next.WithAttrs(as), state: h.state}
}

func (h *repeatLimiter) WithGroup(name string) slog.Handler {
	return &repeatLimiter{next: h.next.WithGroup(name), state: h.state}
}
