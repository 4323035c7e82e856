package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRepeatLimiter(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	log := slog.New(newRepeatLimiter(slog.NewTextHandler(&buf, nil), func() time.Time { return now }))
	for range 300 {
		log.Error("disk full", "err", "no space left on device")
		log.Info("delivery attempt") // info lines are never limited
	}
	log.Error("another failure") // other messages have their own count
	count := func(s string) int { return strings.Count(buf.String(), s) }
	if n := count(`msg="disk full"`); n != repeatBurst {
		t.Errorf("%d disk-full lines in one window, want %d", n, repeatBurst)
	}
	if n := count(`msg="delivery attempt"`); n != 300 {
		t.Errorf("%d info lines, want all 300", n)
	}
	if n := count(`msg="another failure"`); n != 1 {
		t.Errorf("%d lines of another message, want 1", n)
	}
	// The next window lets the message through again and says how many
	// were left out.
	buf.Reset()
	now = now.Add(repeatWindow)
	log.Error("disk full", "err", "no space left on device")
	if !strings.Contains(buf.String(), "similar_lines_not_logged=295") {
		t.Errorf("first line of the next window: %q, want it to count the 295 left out", buf.String())
	}
}
