package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

// TestTraffic follows one message in and out, and a deletion, through the
// per-minute and per-hour windows as the clock moves on.
func TestTraffic(t *testing.T) {
	e := newEnv(t)
	id := e.put(queuetest.Message("mta1", "1@a.example", "2@a.example", "3@a.example"))
	e.put(queuetest.Message("mta1", "4@a.example"))
	want := queue.Traffic{MessagesIn: 2, RecipientsIn: 4}
	if got := e.q.Traffic(time.Minute); got != want {
		t.Fatalf("after puts: %+v, want %+v", got, want)
	}

	e.clock.Advance(10 * time.Second)
	l := e.lease(kA, 3)
	if err := l.Report(
		queue.Outcome{ID: id, N: 0, Kind: queue.Delivered},
		queue.Outcome{ID: id, N: 1, Kind: queue.Bounced},
		queue.Outcome{ID: id, N: 2, Kind: queue.Deferred, Until: e.clock.Now().Add(time.Hour)},
	); err != nil {
		t.Fatal(err)
	}
	l.Release()
	want = queue.Traffic{MessagesIn: 2, RecipientsIn: 4, Delivered: 1, Bounced: 1, Deferred: 1}
	if got := e.q.Traffic(time.Minute); got != want {
		t.Fatalf("after outcomes: %+v, want %+v", got, want)
	}

	// Two minutes on, the last minute is empty and the hour has it all.
	e.clock.Advance(2 * time.Minute)
	if got := e.q.Traffic(time.Minute); got != (queue.Traffic{}) {
		t.Fatalf("last minute later: %+v, want nothing", got)
	}
	if n, err := e.q.Delete(context.Background(), queue.Selector{VMTA: "mta1"}, nil); err != nil || n != 2 {
		t.Fatalf("Delete = %d, %v; want 2", n, err)
	}
	want = queue.Traffic{Removed: 2, MessagesOut: 2}
	if got := e.q.Traffic(time.Minute); got != want {
		t.Fatalf("after delete: %+v, want %+v", got, want)
	}
	want = queue.Traffic{MessagesIn: 2, RecipientsIn: 4, Delivered: 1, Bounced: 1, Deferred: 1, Removed: 2, MessagesOut: 2}
	if got := e.q.Traffic(time.Hour); got != want {
		t.Fatalf("last hour: %+v, want %+v", got, want)
	}
	// An hour and more later the buckets are reused, not summed again.
	e.clock.Advance(time.Hour + time.Minute)
	e.put(queuetest.Message("mta1", "5@a.example"))
	want = queue.Traffic{MessagesIn: 1, RecipientsIn: 1}
	if got := e.q.Traffic(2 * time.Hour); got != want {
		t.Fatalf("an hour later: %+v, want %+v", got, want)
	}
}
