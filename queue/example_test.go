package queue_test

import (
	"context"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

// A delivery worker's loop for one queue key: wait for due recipients,
// lease some, deliver them message by message, report the outcomes.
func Example() {
	ctx := context.Background()
	clock := queuetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	q, err := queue.Open(queue.Options{Dir: "spool", FS: vfs.NewMem(), Clock: clock, Logger: discard()})
	if err != nil {
		panic(err)
	}
	defer q.Close()

	// The listener: Put returns once the message is durable.
	if _, err := q.Put(ctx, queue.Message{
		Envelope: queue.Envelope{Sender: "news@shop.example", JobID: "spring"},
		Recipients: []queue.Recipient{
			{Address: "ann@mail.example", VMTA: "mta1"},
			{Address: "bob@mail.example", VMTA: "mta1"},
		},
		Body: []byte("Subject: spring sale\r\n\r\n...\r\n"),
	}); err != nil {
		panic(err)
	}

	// The worker for mail.example/mta1.
	key := queue.Key{VMTA: "mta1", Domain: "mail.example"}
	if err := q.Wait(ctx, key); err != nil {
		panic(err)
	}
	l, err := q.Lease(ctx, key, 100)
	if err != nil {
		panic(err)
	}
	defer l.Release() // hands back anything not reported
	for _, m := range l.Messages {
		body, _ := l.Body(m.ID)
		fmt.Printf("one transaction: MAIL FROM:<%s>, %d RCPT, %d bytes\n", m.Envelope.Sender, len(m.Recipients), len(body))
		// Suppose the server took ann and greylisted bob.
		if err := l.Report(
			queue.Outcome{ID: m.ID, N: m.Recipients[0].N, Kind: queue.Delivered, Reply: "250 2.0.0 ok"},
			queue.Outcome{ID: m.ID, N: m.Recipients[1].N, Kind: queue.Deferred, Until: clock.Now().Add(10 * time.Minute), Reply: "451 4.7.1 greylisted"},
		); err != nil {
			panic(err)
		}
	}
	s := q.Stats(key)
	fmt.Printf("%s: ready %d, deferred %d, next attempt in %v\n", s.Key, s.Ready, s.Deferred, s.NextAttempt.Sub(clock.Now()))

	clock.Advance(10 * time.Minute) // the deferral comes due
	fmt.Printf("after 10m: ready %d\n", q.Stats(key).Ready)
	// Output:
	// one transaction: MAIL FROM:<news@shop.example>, 2 RCPT, 29 bytes
	// mail.example/mta1: ready 0, deferred 1, next attempt in 10m0s
	// after 10m: ready 1
}
