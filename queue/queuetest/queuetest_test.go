package queuetest_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

func TestClock(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := queuetest.NewClock(start)
	var fired []int
	c.AfterFunc(2*time.Second, func() { fired = append(fired, 2) })
	c.AfterFunc(time.Second, func() {
		fired = append(fired, 1)
		c.AfterFunc(0, func() { fired = append(fired, 10) }) // armed while firing
	})
	stop := c.AfterFunc(time.Second, func() { fired = append(fired, 99) })
	if !stop.Stop() || stop.Stop() {
		t.Fatal("Stop should succeed once")
	}
	if c.Pending() != 2 {
		t.Fatalf("Pending = %d", c.Pending())
	}
	c.Advance(1500 * time.Millisecond)
	if !slices.Equal(fired, []int{1, 10}) {
		t.Fatalf("fired %v", fired)
	}
	c.Set(start) // never backwards
	if !c.Now().Equal(start.Add(1500 * time.Millisecond)) {
		t.Fatalf("Now = %v", c.Now())
	}
	c.Advance(time.Second)
	if !slices.Equal(fired, []int{1, 10, 2}) || c.Pending() != 0 {
		t.Fatalf("fired %v, pending %d", fired, c.Pending())
	}
}

func TestOpenAndMessage(t *testing.T) {
	q := queuetest.Open(t, queue.Options{})
	id, err := q.Put(context.Background(), queuetest.Message("mta1", "a@x.example", "b@x.example"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := q.Lookup(id)
	if err != nil || len(e.Recipients) != 2 || e.Recipients[1].Key() != (queue.Key{VMTA: "mta1", Domain: "x.example"}) {
		t.Fatalf("Lookup = %+v, %v", e, err)
	}
}
