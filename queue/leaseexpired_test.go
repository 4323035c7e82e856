package queue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

// LeaseExpired takes the due recipients received before the cutoff from
// anywhere in the FIFO, up to max, and leaves the others in their order;
// released, they go back due; a paused key hands out nothing.
func TestLeaseExpired(t *testing.T) {
	e := newEnv(t)
	var old []queue.ID
	for i := range 3 {
		old = append(old, e.put(queuetest.Message("mta1", fmt.Sprintf("old%d@a.example", i))))
	}
	e.clock.Advance(2 * time.Hour)
	cutoff := e.clock.Now()
	for i := range 2 {
		e.put(queuetest.Message("mta1", fmt.Sprintf("young%d@a.example", i)))
	}
	// Deferred and due again, an old recipient stands behind the young
	// ones in the FIFO.
	la := e.lease(kA, 1)
	if err := la.Report(queue.Outcome{ID: old[0], N: 0, Kind: queue.Deferred, Until: e.clock.Now(), Reply: "451 later"}); err != nil {
		t.Fatal(err)
	}
	e.flush()
	wantCounts(t, e.stats(kA), 5, 0, 0)

	l1, err := e.q.LeaseExpired(context.Background(), kA, cutoff, 2)
	if err != nil || l1 == nil || len(l1.Messages) != 2 {
		t.Fatalf("LeaseExpired(max 2) = %v, %v", l1, err)
	}
	l2, err := e.q.LeaseExpired(context.Background(), kA, cutoff, 10)
	if err != nil || l2 == nil || len(l2.Messages) != 1 {
		t.Fatalf("LeaseExpired(max 10) = %v, %v", l2, err)
	}
	got := map[queue.ID]bool{}
	for _, l := range []*queue.Lease{l1, l2} {
		for _, m := range l.Messages {
			if !slices.Contains(old, m.ID) || !m.Envelope.Received.Before(cutoff) {
				t.Errorf("leased %s received %v, after the cutoff", m.ID, m.Envelope.Received)
			}
			got[m.ID] = true
		}
	}
	if len(got) != 3 {
		t.Errorf("leased %d old messages, want 3", len(got))
	}
	wantCounts(t, e.stats(kA), 2, 0, 3)
	if l3, err := e.q.LeaseExpired(context.Background(), kA, cutoff, 10); l3 != nil || err != nil {
		t.Fatalf("nothing old left: LeaseExpired = %v, %v", l3, err)
	}
	// The young ones are still due, in their order.
	ly := e.lease(kA, 5)
	var addrs []string
	for _, m := range ly.Messages {
		addrs = append(addrs, m.Recipients[0].Address)
	}
	if !slices.Equal(addrs, []string{"young0@a.example", "young1@a.example"}) {
		t.Errorf("young recipients %v", addrs)
	}
	ly.Release()

	// Bounced, the old ones leave the queue; released, they are due again.
	if err := l1.Report(outcomes(l1, queue.Bounced, time.Time{}, "5.4.7 expired")...); err != nil {
		t.Fatal(err)
	}
	l2.Release()
	wantCounts(t, e.stats(kA), 3, 0, 0)

	if _, err := e.q.Pause(queue.KeySelector(kA)); err != nil {
		t.Fatal(err)
	}
	if l, err := e.q.LeaseExpired(context.Background(), kA, cutoff, 10); l != nil || err != nil {
		t.Errorf("paused: LeaseExpired = %v, %v", l, err)
	}
	if _, err := e.q.LeaseExpired(context.Background(), kA, cutoff, 0); !errors.Is(err, queue.ErrInvalid) {
		t.Errorf("max 0: err = %v", err)
	}
}
