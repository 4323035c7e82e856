// Package queuetest helps test code that uses the queue: a fake clock that
// drives deferral timers without sleeping, an in-memory spool, and a
// message builder.
package queuetest

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/ternmta/tern/queue"
)

// Clock is a queue.Clock whose time moves only when told to. Timers fire
// synchronously inside Advance and Set, in time order, so a test knows that
// every deferral due by then has been handled when they return.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	seq    int
	timers []*timer
}

type timer struct {
	c    *Clock
	when time.Time
	seq  int
	f    func()
}

// NewClock returns a Clock reading start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc arranges for f to run when the clock has been advanced by d.
func (c *Clock) AfterFunc(d time.Duration, f func()) queue.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &timer{c: c, when: c.now.Add(d), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

// Stop cancels the timer if it has not fired.
func (t *timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i < 0 {
		return false
	}
	t.c.timers = slices.Delete(t.c.timers, i, i+1)
	return true
}

// Advance moves the clock forward by d and runs every timer due by then.
func (c *Clock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// Set moves the clock to t (never backwards) and runs every timer due by
// then, including ones those timers arm.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	if t.After(c.now) {
		c.now = t
	}
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *timer
		for _, tm := range c.timers {
			if !tm.when.After(c.now) && (next == nil || tm.when.Before(next.when) ||
				(tm.when.Equal(next.when) && tm.seq < next.seq)) {
				next = tm
			}
		}
		if next == nil {
			c.mu.Unlock()
			return
		}
		i := slices.Index(c.timers, next)
		c.timers = slices.Delete(c.timers, i, i+1)
		c.mu.Unlock()
		next.f()
	}
}

// Pending returns the number of timers armed and not yet fired.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Open opens a queue for a test and closes it at the end of the test. An
// unset FS becomes an in-memory one, Dir "spool", Clock a Clock at
// 2026-01-01 UTC and Logger a logger that discards.
func Open(t testing.TB, opts queue.Options) *queue.Queue {
	t.Helper()
	if opts.FS == nil {
		opts.FS = vfs.NewMem()
	}
	if opts.Dir == "" {
		opts.Dir = "spool"
	}
	if opts.Clock == nil {
		opts.Clock = NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	q, err := queue.Open(opts)
	if err != nil {
		t.Fatalf("queue.Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}

// Message returns a small message from sender@example.org to rcpts, all
// queued on vmta. The body names the recipients so tests can tell
// messages apart.
func Message(vmta string, rcpts ...string) queue.Message {
	m := queue.Message{
		Envelope: queue.Envelope{Sender: "sender@example.org"},
		Body:     fmt.Appendf(nil, "Subject: test\r\n\r\nto %v\r\n", rcpts),
	}
	for _, r := range rcpts {
		m.Recipients = append(m.Recipients, queue.Recipient{Address: r, VMTA: vmta})
	}
	return m
}
