package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// env is a queue on an in-memory FS with a fake clock, reopenable.
type env struct {
	t     *testing.T
	fs    vfs.FS
	clock *queuetest.Clock
	q     *queue.Queue
	ready chan queue.Key
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, fs: vfs.NewMem(), clock: queuetest.NewClock(t0), ready: make(chan queue.Key, 1024)}
	e.open()
	t.Cleanup(func() {
		if e.q != nil {
			_ = e.q.Close()
		}
	})
	return e
}

func (e *env) open() {
	e.t.Helper()
	q, err := queue.Open(queue.Options{
		Dir: "spool", FS: e.fs, Clock: e.clock, Logger: discard(),
		OnReady: func(k queue.Key) {
			select {
			case e.ready <- k:
			default:
			}
		},
	})
	if err != nil {
		e.t.Fatalf("Open: %v", err)
	}
	e.q = q
}

func (e *env) reopen() {
	e.t.Helper()
	if err := e.q.Close(); err != nil {
		e.t.Fatalf("Close: %v", err)
	}
	e.q = nil
	e.open()
}

func (e *env) put(m queue.Message) queue.ID {
	e.t.Helper()
	id, err := e.q.Put(context.Background(), m)
	if err != nil {
		e.t.Fatalf("Put: %v", err)
	}
	return id
}

func (e *env) lease(k queue.Key, n int) *queue.Lease {
	e.t.Helper()
	l, err := e.q.Lease(context.Background(), k, n)
	if err != nil {
		e.t.Fatalf("Lease(%v): %v", k, err)
	}
	return l
}

func (e *env) flush() {
	e.t.Helper()
	if err := e.q.Flush(context.Background()); err != nil {
		e.t.Fatalf("Flush: %v", err)
	}
}

func (e *env) stats(k queue.Key) queue.KeyStats { return e.q.Stats(k) }

func wantCounts(t *testing.T, s queue.KeyStats, ready, deferred, leased int) {
	t.Helper()
	if s.Ready != ready || s.Deferred != deferred || s.Leased != leased {
		t.Fatalf("%v: ready/deferred/leased = %d/%d/%d, want %d/%d/%d",
			s.Key, s.Ready, s.Deferred, s.Leased, ready, deferred, leased)
	}
}

// leasedRefs flattens a lease to "id/n" strings in order.
func leasedRefs(l *queue.Lease) []string {
	var out []string
	for _, m := range l.Messages {
		for _, r := range m.Recipients {
			out = append(out, fmt.Sprintf("%s/%d", m.ID, r.N))
		}
	}
	return out
}

func outcomes(l *queue.Lease, kind queue.Kind, until time.Time, reply string) []queue.Outcome {
	var out []queue.Outcome
	for _, m := range l.Messages {
		for _, r := range m.Recipients {
			out = append(out, queue.Outcome{ID: m.ID, N: r.N, Kind: kind, Until: until, Reply: reply})
		}
	}
	return out
}

var (
	kA = queue.Key{VMTA: "mta1", Domain: "a.example"}
	kB = queue.Key{VMTA: "mta1", Domain: "b.example"}
	kC = queue.Key{VMTA: "mta2", Domain: "a.example"}
)

func TestIDString(t *testing.T) {
	id := queue.ID(0x0123456789abcdef)
	if s := id.String(); s != "0123456789abcdef" {
		t.Fatalf("String = %q", s)
	}
	back, err := queue.ParseID(id.String())
	if err != nil || back != id {
		t.Fatalf("ParseID = %v, %v", back, err)
	}
	for _, bad := range []string{"", "0123", "0123456789abcdeg", "0123456789abcdef0"} {
		if _, err := queue.ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) succeeded", bad)
		}
	}
	if got := queue.ID(t0.UnixNano()).Time(); !got.Equal(t0) {
		t.Fatalf("Time = %v", got)
	}
}

func TestKey(t *testing.T) {
	if s := kA.String(); s != "a.example/mta1" {
		t.Fatalf("String = %q", s)
	}
	k, err := queue.ParseKey("A.Example/mta1")
	if err != nil || k != kA {
		t.Fatalf("ParseKey = %v, %v", k, err)
	}
	if _, err := queue.ParseKey("nokey"); err == nil {
		t.Fatal("ParseKey accepted a key without slash")
	}
}

func TestPutLookupBody(t *testing.T) {
	e := newEnv(t)
	body := []byte("Subject: hi\r\n\r\nbody\r\n")
	m := queue.Message{
		Envelope: queue.Envelope{
			Sender:   "s@example.org",
			Received: t0.Add(-time.Minute),
			SourceIP: netip.MustParseAddr("192.0.2.7"),
			AuthUser: "user1",
			JobID:    "job-7",
			EnvID:    "env-1",
			DSNRet:   queue.RetHeaders,
		},
		Recipients: []queue.Recipient{
			{Address: "x@A.Example", VMTA: "mta1", Pool: "pool1", ORcpt: "rfc822;x@a.example", Notify: queue.NotifyFailure | queue.NotifyDelay},
			{Address: "y@b.example", VMTA: "mta1"},
			{Address: "z@whatever", Domain: "A.EXAMPLE", VMTA: "mta2"},
		},
		Body: body,
	}
	id := e.put(m)
	body[0] = 'X' // Put must not keep a reference
	if id.Time().Before(t0) {
		t.Fatalf("id %v is before the clock", id)
	}

	got, err := e.q.Lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	want := m.Envelope
	want.Size = int64(len(body))
	if !got.Envelope.Received.Equal(want.Received) {
		t.Fatalf("received = %v, want %v", got.Envelope.Received, want.Received)
	}
	got.Envelope.Received = want.Received
	if got.Envelope != want {
		t.Fatalf("envelope = %+v\nwant %+v", got.Envelope, want)
	}
	if len(got.Recipients) != 3 {
		t.Fatalf("recipients = %+v", got.Recipients)
	}
	r0 := got.Recipients[0]
	if r0.N != 0 || r0.Address != "x@A.Example" || r0.Domain != "a.example" || r0.Pool != "pool1" ||
		r0.ORcpt != "rfc822;x@a.example" || r0.Notify != queue.NotifyFailure|queue.NotifyDelay || r0.Attempts != 0 {
		t.Fatalf("recipient 0 = %+v", r0)
	}
	if got.Recipients[2].Key() != kC {
		t.Fatalf("recipient 2 key = %v", got.Recipients[2].Key())
	}
	b, err := e.q.Body(id)
	if err != nil || string(b) != "Subject: hi\r\n\r\nbody\r\n" {
		t.Fatalf("Body = %q, %v", b, err)
	}
	wantCounts(t, e.stats(kA), 1, 0, 0)
	wantCounts(t, e.stats(kB), 1, 0, 0)
	wantCounts(t, e.stats(kC), 1, 0, 0)
	tot := e.q.Totals()
	if tot.Messages != 1 || tot.Recipients != 3 || tot.Ready != 3 || tot.Keys != 3 || tot.Bytes != int64(len(body)) {
		t.Fatalf("Totals = %+v", tot)
	}
	if _, err := e.q.Body(id + 1); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("Body(unknown) = %v", err)
	}
	if _, err := e.q.Lookup(id + 1); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("Lookup(unknown) = %v", err)
	}
}

func TestPutValidation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for name, m := range map[string]queue.Message{
		"no recipients": {Body: []byte("x")},
		"no address":    {Recipients: []queue.Recipient{{VMTA: "v"}}},
		"no domain":     {Recipients: []queue.Recipient{{Address: "local", VMTA: "v"}}},
	} {
		if _, err := e.q.Put(ctx, m); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.q.Put(cctx, queuetest.Message("mta1", "a@a.example")); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: err = %v", err)
	}
	if tot := e.q.Totals(); tot.Recipients != 0 {
		t.Fatalf("rejected puts queued something: %+v", tot)
	}
}

func TestIDsIncreaseAcrossRestarts(t *testing.T) {
	e := newEnv(t)
	var last queue.ID
	for i := range 100 {
		id := e.put(queuetest.Message("mta1", "a@a.example"))
		if id <= last {
			t.Fatalf("put %d: id %v not above %v", i, id, last)
		}
		last = id
	}
	// Deliver everything so the spool holds no message, then turn the
	// clock back: IDs must still go up (the high-water mark persists).
	l := e.lease(kA, 1000)
	if err := l.Report(outcomes(l, queue.Delivered, time.Time{}, "250 ok")...); err != nil {
		t.Fatal(err)
	}
	e.flush()
	e.reopen()
	if tot := e.q.Totals(); tot.Messages != 0 {
		t.Fatalf("spool not empty: %+v", tot)
	}
	e.clock = queuetest.NewClock(t0.Add(-time.Hour))
	e.reopen()
	if id := e.put(queuetest.Message("mta1", "a@a.example")); id <= last {
		t.Fatalf("after restart with clock behind: id %v not above %v", id, last)
	}
}

func TestLeaseGroupsByMessageInFIFOOrder(t *testing.T) {
	e := newEnv(t)
	id1 := e.put(queuetest.Message("mta1", "1@a.example", "2@a.example", "x@b.example"))
	id2 := e.put(queuetest.Message("mta1", "3@a.example"))
	id3 := e.put(queuetest.Message("mta1", "4@a.example", "5@a.example"))

	l := e.lease(kA, 4)
	if len(l.Messages) != 3 || l.Key != kA {
		t.Fatalf("messages = %+v", l.Messages)
	}
	want := []string{id1.String() + "/0", id1.String() + "/1", id2.String() + "/0", id3.String() + "/0"}
	if got := leasedRefs(l); !slices.Equal(got, want) {
		t.Fatalf("leased %v, want %v", got, want)
	}
	if m := l.Messages[0]; m.Envelope.Sender != "sender@example.org" || m.Recipients[1].Address != "2@a.example" {
		t.Fatalf("message 0 = %+v", m)
	}
	body, err := l.Body(id1)
	if err != nil || !bytes.Contains(body, []byte("1@a.example")) {
		t.Fatalf("Body = %q, %v", body, err)
	}
	wantCounts(t, e.stats(kA), 1, 0, 4)

	// The remaining recipient goes to a second worker; nothing is handed out twice.
	l2 := e.lease(kA, 10)
	if got := leasedRefs(l2); !slices.Equal(got, []string{id3.String() + "/1"}) {
		t.Fatalf("second lease %v", got)
	}
	if l3 := e.lease(kA, 10); l3 != nil {
		t.Fatalf("third lease got %v", leasedRefs(l3))
	}
	// Releasing puts recipients back at the front, in order.
	l.Release()
	l.Release() // idempotent
	wantCounts(t, e.stats(kA), 4, 0, 1)
	l4 := e.lease(kA, 10)
	if got := leasedRefs(l4); !slices.Equal(got, want) {
		t.Fatalf("after release leased %v, want %v", got, want)
	}
	if _, err := e.q.Lease(context.Background(), kA, 0); !errors.Is(err, queue.ErrInvalid) {
		t.Fatalf("Lease(0) err = %v", err)
	}
}

func TestOutcomes(t *testing.T) {
	e := newEnv(t)
	id := e.put(queuetest.Message("mta1", "1@a.example", "2@a.example", "3@a.example", "4@b.example"))
	l := e.lease(kA, 10)
	err := l.Report(
		queue.Outcome{ID: id, N: 0, Kind: queue.Delivered, Reply: "250 ok"},
		queue.Outcome{ID: id, N: 1, Kind: queue.Bounced, Reply: "550 no such user"},
		queue.Outcome{ID: id, N: 2, Kind: queue.Deferred, Until: t0.Add(time.Hour), Reply: "451 try later"},
	)
	if err != nil {
		t.Fatal(err)
	}
	wantCounts(t, e.stats(kA), 0, 1, 0)
	if s := e.stats(kA); !s.NextAttempt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("NextAttempt = %v", s.NextAttempt)
	}
	// Reporting twice, or for a recipient not held, fails without effect.
	if err := l.Report(queue.Outcome{ID: id, N: 0, Kind: queue.Delivered}); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("second report err = %v", err)
	}
	if err := l.Report(queue.Outcome{ID: id, N: 3, Kind: queue.Delivered}); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("report of other key err = %v", err)
	}
	e.flush()
	got, err := e.q.Lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Recipients) != 2 || got.Recipients[0].N != 2 || got.Recipients[1].N != 3 {
		t.Fatalf("recipients left = %+v", got.Recipients)
	}
	r := got.Recipients[0]
	if r.Attempts != 1 || r.LastReply != "451 try later" || !r.NextAttempt.Equal(t0.Add(time.Hour)) || !r.LastAttempt.Equal(t0) {
		t.Fatalf("deferred record = %+v", r)
	}

	// The deferral is not leasable before it comes due.
	if l := e.lease(kA, 10); l != nil {
		t.Fatal("deferred recipient leased early")
	}
	e.clock.Advance(time.Hour)
	wantCounts(t, e.stats(kA), 1, 0, 0)
	l = e.lease(kA, 10)
	if l == nil || l.Messages[0].Recipients[0].Attempts != 1 {
		t.Fatalf("lease after deferral = %+v", l)
	}
	if err := l.Report(outcomes(l, queue.Delivered, time.Time{}, "250")...); err != nil {
		t.Fatal(err)
	}
	// One recipient of another key keeps the message alive.
	e.flush()
	if _, err := e.q.Body(id); err != nil {
		t.Fatalf("body gone while b.example is queued: %v", err)
	}
	l = e.lease(kB, 10)
	if err := l.Report(outcomes(l, queue.Delivered, time.Time{}, "250")...); err != nil {
		t.Fatal(err)
	}
	e.flush()
	if _, err := e.q.Lookup(id); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("message still there after last outcome: %v", err)
	}
	if _, err := e.q.Body(id); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("body still there after last outcome: %v", err)
	}
	if tot := e.q.Totals(); tot != (queue.Totals{}) {
		t.Fatalf("Totals = %+v", tot)
	}
}

func TestReportValidation(t *testing.T) {
	e := newEnv(t)
	id := e.put(queuetest.Message("mta1", "1@a.example", "2@a.example"))
	l := e.lease(kA, 10)
	for name, outs := range map[string][]queue.Outcome{
		"bad kind": {{ID: id, N: 0, Kind: queue.Deleted}},
		"twice":    {{ID: id, N: 0, Kind: queue.Delivered}, {ID: id, N: 0, Kind: queue.Bounced}},
	} {
		if err := l.Report(outs...); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	// A failed report changes nothing.
	wantCounts(t, e.stats(kA), 0, 0, 2)
	if !l.Live(id, 0) || !l.Live(id, 1) || l.Live(id, 2) {
		t.Fatal("Live wrong")
	}
	// Deferral with a time not in the future is due at once.
	if err := l.Report(queue.Outcome{ID: id, N: 0, Kind: queue.Deferred, Until: t0, Reply: "421"}); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, e.stats(kA), 1, 0, 1)
	if l.Live(id, 0) {
		t.Fatal("reported recipient still live")
	}
	l.Release()
	wantCounts(t, e.stats(kA), 2, 0, 0)
	if err := l.Report(queue.Outcome{ID: id, N: 1, Kind: queue.Delivered}); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("report after release err = %v", err)
	}
}

func TestWaitAndOnReady(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Wait returns when mail arrives.
	done := make(chan error, 1)
	go func() { done <- e.q.Wait(ctx, kA) }()
	e.put(queuetest.Message("mta1", "1@a.example"))
	if err := <-done; err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if k := <-e.ready; k != kA {
		t.Fatalf("OnReady(%v)", k)
	}
	// A deferral coming due wakes the waiter; nothing polls.
	l := e.lease(kA, 1)
	if err := l.Report(outcomes(l, queue.Deferred, t0.Add(10*time.Minute), "451")...); err != nil {
		t.Fatal(err)
	}
	go func() { done <- e.q.Wait(ctx, kA) }()
	select {
	case err := <-done:
		t.Fatalf("Wait returned early: %v", err)
	case <-e.ready:
		t.Fatal("OnReady before the deferral came due")
	default:
	}
	if n := e.clock.Pending(); n != 1 {
		t.Fatalf("%d timers armed, want 1", n)
	}
	e.clock.Advance(9 * time.Minute)
	wantCounts(t, e.stats(kA), 0, 1, 0)
	e.clock.Advance(time.Minute)
	if err := <-done; err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if k := <-e.ready; k != kA {
		t.Fatalf("OnReady(%v)", k)
	}
	// Wait honours its context.
	cctx, ccancel := context.WithCancel(ctx)
	go func() { done <- e.q.Wait(cctx, kB) }()
	ccancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel = %v", err)
	}
	// Close wakes waiters.
	go func() { done <- e.q.Wait(ctx, kB) }()
	_ = e.q.Close()
	if err := <-done; !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("Wait after Close = %v", err)
	}
	if _, err := e.q.Put(ctx, queuetest.Message("mta1", "1@a.example")); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("Put after Close = %v", err)
	}
	e.q = nil
}

func TestOneTimerForManyDeferrals(t *testing.T) {
	e := newEnv(t)
	keys := []queue.Key{kA, kB, kC}
	for i := range 30 {
		k := keys[i%3]
		e.put(queuetest.Message(k.VMTA, fmt.Sprintf("%d@%s", i, k.Domain)))
	}
	for i, k := range keys {
		l := e.lease(k, 100)
		if err := l.Report(outcomes(l, queue.Deferred, t0.Add(time.Duration(i+1)*time.Minute), "451")...); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.clock.Pending(); n != 1 {
		t.Fatalf("%d timers armed, want 1", n)
	}
	for i, k := range keys {
		e.clock.Advance(time.Minute)
		wantCounts(t, e.stats(k), 10, 0, 0)
		if i+1 < len(keys) {
			wantCounts(t, e.stats(keys[i+1]), 0, 10, 0)
		}
	}
	if n := e.clock.Pending(); n != 0 {
		t.Fatalf("%d timers armed after all came due", n)
	}
}

func TestPauseResume(t *testing.T) {
	e := newEnv(t)
	e.put(queuetest.Message("mta1", "1@a.example", "2@b.example"))
	e.put(queuetest.Message("mta2", "3@a.example"))
	drain(e.ready)

	if n, err := e.q.Pause(queue.KeySelector(kA)); err != nil || n != 1 {
		t.Fatalf("Pause key = %d, %v", n, err)
	}
	if l := e.lease(kA, 10); l != nil {
		t.Fatal("leased from a paused key")
	}
	if !e.stats(kA).Paused || e.stats(kB).Paused {
		t.Fatal("pause state wrong")
	}
	// Resume wakes the scheduler.
	if n, err := e.q.Resume(queue.KeySelector(kA)); err != nil || n != 1 {
		t.Fatalf("Resume = %d, %v", n, err)
	}
	if k := <-e.ready; k != kA {
		t.Fatalf("OnReady(%v)", k)
	}

	// Pause a whole VMTA: existing keys and keys that appear later.
	if n, _ := e.q.Pause(queue.Selector{VMTA: "mta1"}); n != 2 {
		t.Fatalf("Pause VMTA paused %d keys", n)
	}
	newKey := queue.Key{VMTA: "mta1", Domain: "new.example"}
	e.put(queuetest.Message("mta1", "4@new.example"))
	if !e.stats(newKey).Paused || e.lease(newKey, 1) != nil {
		t.Fatal("new key of paused VMTA not paused")
	}
	if e.stats(kC).Paused {
		t.Fatal("other VMTA paused")
	}
	// Pause by domain across VMTAs.
	if n, _ := e.q.Pause(queue.Selector{Domain: "A.example"}); n != 1 { // only mta2's was unpaused
		t.Fatalf("Pause domain paused %d keys", n)
	}
	if e.lease(kC, 1) != nil {
		t.Fatal("leased from domain-paused key")
	}
	if _, err := e.q.Pause(queue.Selector{JobID: "j"}); !errors.Is(err, queue.ErrInvalid) {
		t.Fatalf("Pause by job err = %v", err)
	}
	keys := e.q.Keys(queue.Selector{})
	paused := 0
	for _, s := range keys {
		if s.Paused {
			paused++
		}
	}
	if paused != 4 {
		t.Fatalf("Keys shows %d paused: %+v", paused, keys)
	}
	// Resume everything.
	if n, _ := e.q.Resume(queue.Selector{}); n != 4 {
		t.Fatalf("Resume all resumed %d", n)
	}
	for _, k := range []queue.Key{kA, kB, kC, newKey} {
		if l := e.lease(k, 10); l == nil {
			t.Fatalf("%v not leasable after resume", k)
		}
	}
	e.put(queuetest.Message("mta1", "5@newer.example"))
	if e.stats(queue.Key{VMTA: "mta1", Domain: "newer.example"}).Paused {
		t.Fatal("rule survived Resume of everything")
	}
}

func drain(c chan queue.Key) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

func TestDelete(t *testing.T) {
	e := newEnv(t)
	mk := func(job string, rcpts ...string) queue.ID {
		m := queuetest.Message("mta1", rcpts...)
		m.JobID = job
		return e.put(m)
	}
	idJ1 := mk("j1", "1@a.example", "2@b.example")
	idJ2 := mk("j2", "3@a.example")
	idJ3 := mk("j1", "4@a.example")
	_ = idJ3

	// Lease j2's recipient, defer one of j1's.
	l := e.lease(kA, 2) // idJ1/0, idJ2/0
	if err := l.Report(queue.Outcome{ID: idJ1, N: 0, Kind: queue.Deferred, Until: t0.Add(time.Hour), Reply: "451 greylisted"}); err != nil {
		t.Fatal(err)
	}

	var removed []queue.Removal
	n, err := e.q.Delete(context.Background(), queue.Selector{JobID: "j1"}, func(r queue.Removal) { removed = append(removed, r) })
	if err != nil || n != 3 {
		t.Fatalf("Delete job = %d, %v", n, err)
	}
	slices.SortFunc(removed, func(a, b queue.Removal) int { return cmpAddr(a.Recipient.Address, b.Recipient.Address) })
	addrs := []string{}
	for _, r := range removed {
		addrs = append(addrs, r.Recipient.Address)
		if r.Kind != queue.Deleted || r.Envelope.JobID != "j1" || r.Envelope.Sender != "sender@example.org" || r.Recipient.VMTA != "mta1" {
			t.Fatalf("removal = %+v", r)
		}
	}
	if !slices.Equal(addrs, []string{"1@a.example", "2@b.example", "4@a.example"}) {
		t.Fatalf("removed %v", addrs)
	}
	if removed[0].Recipient.LastReply != "451 greylisted" || removed[0].Recipient.Attempts != 1 {
		t.Fatalf("removal lost the last reply: %+v", removed[0])
	}
	// Delete is durable when it returns.
	if _, err := e.q.Lookup(idJ1); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("job j1 message still there: %v", err)
	}
	wantCounts(t, e.stats(kA), 0, 0, 1)
	wantCounts(t, e.stats(kB), 0, 0, 0)

	// Deleting a leased recipient: the worker's later outcome is ignored.
	if !l.Live(idJ2, 0) {
		t.Fatal("j2 not live before delete")
	}
	removed = nil
	n, err = e.q.Delete(context.Background(), queue.KeySelector(kA), func(r queue.Removal) { removed = append(removed, r) })
	if err != nil || n != 1 || removed[0].ID != idJ2 {
		t.Fatalf("Delete key = %d, %v, %+v", n, err, removed)
	}
	if l.Live(idJ2, 0) {
		t.Fatal("deleted recipient still live in its lease")
	}
	if err := l.Report(queue.Outcome{ID: idJ2, N: 0, Kind: queue.Deferred, Until: t0.Add(time.Hour)}); err != nil {
		t.Fatalf("report for deleted recipient: %v", err)
	}
	l.Release()
	e.flush()
	if tot := e.q.Totals(); tot != (queue.Totals{}) {
		t.Fatalf("Totals after deletes = %+v", tot)
	}
	e.reopen()
	if tot := e.q.Totals(); tot != (queue.Totals{}) {
		t.Fatalf("Totals after reopen = %+v", tot)
	}
	if n, err := e.q.Delete(context.Background(), queue.Selector{}, nil); err != nil || n != 0 {
		t.Fatalf("Delete of nothing = %d, %v", n, err)
	}
}

func cmpAddr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestDeleteByVMTAAndDomain(t *testing.T) {
	e := newEnv(t)
	e.put(queuetest.Message("mta1", "1@a.example", "2@b.example"))
	e.put(queuetest.Message("mta2", "3@a.example"))
	if n, _ := e.q.Delete(context.Background(), queue.Selector{Domain: "a.example"}, nil); n != 2 {
		t.Fatalf("deleted %d by domain", n)
	}
	wantCounts(t, e.stats(kB), 1, 0, 0)
	e.put(queuetest.Message("mta2", "4@b.example"))
	if n, _ := e.q.Delete(context.Background(), queue.Selector{VMTA: "mta1"}, nil); n != 1 {
		t.Fatalf("deleted %d by VMTA", n)
	}
	if tot := e.q.Totals(); tot.Recipients != 1 || tot.Messages != 1 {
		t.Fatalf("Totals = %+v", tot)
	}
}

func TestRetryNow(t *testing.T) {
	e := newEnv(t)
	for i := range 3 {
		e.put(queuetest.Message("mta1", fmt.Sprintf("%d@a.example", i)))
	}
	e.put(queuetest.Message("mta1", "x@b.example"))
	for _, k := range []queue.Key{kA, kB} {
		l := e.lease(k, 10)
		for i, o := range outcomes(l, queue.Deferred, time.Time{}, "451") {
			o.Until = t0.Add(time.Duration(3-i) * time.Hour)
			if err := l.Report(o); err != nil {
				t.Fatal(err)
			}
		}
	}
	drain(e.ready)
	n, err := e.q.RetryNow(queue.KeySelector(kA))
	if err != nil || n != 3 {
		t.Fatalf("RetryNow = %d, %v", n, err)
	}
	if k := <-e.ready; k != kA {
		t.Fatalf("OnReady(%v)", k)
	}
	wantCounts(t, e.stats(kA), 3, 0, 0)
	wantCounts(t, e.stats(kB), 0, 1, 0)
	// In order of their next attempts: the last-put one was due first.
	l := e.lease(kA, 10)
	var addrs []string
	for _, m := range l.Messages {
		addrs = append(addrs, m.Recipients[0].Address)
	}
	if !slices.Equal(addrs, []string{"2@a.example", "1@a.example", "0@a.example"}) {
		t.Fatalf("order after RetryNow: %v", addrs)
	}
}

func TestExpire(t *testing.T) {
	e := newEnv(t)
	old := e.put(queuetest.Message("mta1", "old@a.example", "old@b.example"))
	e.clock.Advance(2 * time.Hour)
	young := e.put(queuetest.Message("mta1", "young@a.example"))
	// A leased old recipient is left to its worker.
	l := e.lease(kB, 1)
	// The old a.example recipient is deferred with a reply.
	la := e.lease(kA, 1)
	if err := la.Report(queue.Outcome{ID: old, N: 0, Kind: queue.Deferred, Until: e.clock.Now().Add(time.Hour), Reply: "452 mailbox full"}); err != nil {
		t.Fatal(err)
	}
	var removed []queue.Removal
	n, err := e.q.Expire(context.Background(), time.Hour, queue.Selector{}, func(r queue.Removal) { removed = append(removed, r) })
	if err != nil || n != 1 {
		t.Fatalf("Expire = %d, %v", n, err)
	}
	r := removed[0]
	if r.Kind != queue.Expired || r.ID != old || r.Recipient.Address != "old@a.example" || r.Recipient.LastReply != "452 mailbox full" ||
		!r.Envelope.Received.Equal(t0) {
		t.Fatalf("removal = %+v", r)
	}
	wantCounts(t, e.stats(kA), 1, 0, 0)
	wantCounts(t, e.stats(kB), 0, 0, 1)
	if l.Messages[0].ID != old {
		t.Fatal("wrong lease")
	}
	if _, err := e.q.Body(old); err != nil {
		t.Fatalf("message expired while a recipient is leased: %v", err)
	}
	if err := l.Report(outcomes(l, queue.Delivered, time.Time{}, "250")...); err != nil {
		t.Fatal(err)
	}
	e.flush()
	if _, err := e.q.Body(old); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("old message still there: %v", err)
	}
	if _, err := e.q.Body(young); err != nil {
		t.Fatal(err)
	}
	if _, err := e.q.Expire(context.Background(), -1, queue.Selector{}, nil); !errors.Is(err, queue.ErrInvalid) {
		t.Fatalf("negative age err = %v", err)
	}
}

func TestViews(t *testing.T) {
	e := newEnv(t)
	for i := range 5 {
		e.put(queuetest.Message("mta1", fmt.Sprintf("%d@a.example", i)))
		e.clock.Advance(time.Minute)
	}
	for i := range 3 {
		m := queuetest.Message("mta1", fmt.Sprintf("%d@b.example", i))
		m.JobID = "jb"
		e.put(m)
	}
	e.put(queuetest.Message("mta2", "x@a.example"))
	l := e.lease(kA, 2)
	if err := l.Report(outcomes(l, queue.Deferred, e.clock.Now().Add(time.Hour), "451")[:1]...); err != nil {
		t.Fatal(err)
	}
	s := e.stats(kA)
	wantCounts(t, s, 3, 1, 1)
	if !s.Oldest.Equal(t0) || s.Total() != 5 {
		t.Fatalf("stats = %+v", s)
	}
	keys := e.q.Keys(queue.Selector{})
	var names []string
	for _, k := range keys {
		names = append(names, fmt.Sprintf("%s=%d", k.Key, k.Total()))
	}
	if !slices.Equal(names, []string{"a.example/mta1=5", "b.example/mta1=3", "a.example/mta2=1"}) {
		t.Fatalf("Keys = %v", names)
	}
	if ks := e.q.Keys(queue.Selector{Domain: "a.example"}); len(ks) != 2 {
		t.Fatalf("Keys(domain) = %+v", ks)
	}
	if ks := e.q.Keys(queue.Selector{JobID: "jb"}); len(ks) != 1 || ks[0].Key != kB || ks[0].Ready != 3 {
		t.Fatalf("Keys(job) = %+v", ks)
	}
	tot := e.q.Totals()
	if tot.Keys != 3 || tot.Messages != 9 || tot.Recipients != 9 || tot.Ready != 7 || tot.Deferred != 1 || tot.Leased != 1 {
		t.Fatalf("Totals = %+v", tot)
	}
	// Ages now: a.example recipients are 5,4,3,2,1 minutes old; the rest 0.
	ages, err := e.q.Ages(queue.Selector{}, []time.Duration{time.Minute, 3 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ages, []int{4, 2, 3}) {
		t.Fatalf("Ages = %v", ages)
	}
	if ages, _ := e.q.Ages(queue.Selector{JobID: "jb"}, []time.Duration{time.Minute}); !slices.Equal(ages, []int{3, 0}) {
		t.Fatalf("Ages(job) = %v", ages)
	}
	if _, err := e.q.Ages(queue.Selector{}, []time.Duration{time.Minute, time.Minute}); err == nil {
		t.Fatal("Ages accepted non-increasing bounds")
	}
	if s := e.stats(queue.Key{VMTA: "x", Domain: "nowhere"}); s.Total() != 0 || s.Paused {
		t.Fatalf("stats of unknown key = %+v", s)
	}
}

func TestReopenRebuildsIndex(t *testing.T) {
	e := newEnv(t)
	var ids []queue.ID
	for i := range 6 {
		ids = append(ids, e.put(queuetest.Message("mta1", fmt.Sprintf("%d@a.example", i), fmt.Sprintf("%d@b.example", i))))
	}
	l := e.lease(kA, 6)
	outs := outcomes(l, queue.Delivered, time.Time{}, "250")
	outs[1].Kind = queue.Deferred
	outs[1].Until = t0.Add(time.Hour)
	outs[2].Kind = queue.Deferred
	outs[2].Until = t0.Add(2 * time.Hour)
	outs[3].Kind = queue.Bounced
	if err := l.Report(outs[:4]...); err != nil { // 4 and 5 stay leased
		t.Fatal(err)
	}
	lb := e.lease(kB, 2) // leased at the "crash"
	_ = lb
	e.flush()
	e.reopen()

	wantCounts(t, e.stats(kA), 2, 2, 0) // leased ones are due again
	wantCounts(t, e.stats(kB), 6, 0, 0)
	if tot := e.q.Totals(); tot.Messages != 6 || tot.Recipients != 10 {
		t.Fatalf("Totals = %+v", tot)
	}
	// FIFO order survives: ids[4] before ids[5]; deferrals come due in order.
	l = e.lease(kA, 10)
	if got := leasedRefs(l); !slices.Equal(got, []string{ids[4].String() + "/0", ids[5].String() + "/0"}) {
		t.Fatalf("after reopen leased %v", got)
	}
	e.clock.Advance(time.Hour)
	wantCounts(t, e.stats(kA), 1, 1, 2)
	e.clock.Advance(time.Hour)
	wantCounts(t, e.stats(kA), 2, 0, 2)
	// A deferral that came due while the queue was closed is ready at Open.
	e.reopen()
	wantCounts(t, e.stats(kA), 4, 0, 0)
	l = e.lease(kA, 10)
	for _, m := range l.Messages {
		if m.ID == ids[1] && (m.Recipients[0].Attempts != 1 || !m.Recipients[0].LastAttempt.Equal(t0)) {
			t.Fatalf("deferred state lost: %+v", m.Recipients[0])
		}
	}
}

func TestCloseTwiceAndReleaseAfterClose(t *testing.T) {
	e := newEnv(t)
	e.put(queuetest.Message("mta1", "1@a.example"))
	l := e.lease(kA, 1)
	if err := e.q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.q.Close(); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
	l.Release()
	if err := l.Report(outcomes(l, queue.Delivered, time.Time{}, "")...); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("Report after Close = %v", err)
	}
	if err := e.q.Flush(context.Background()); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("Flush after Close = %v", err)
	}
	e.q = nil
}

// TestConcurrent runs producers and delivery workers at once (meant for
// -race): every recipient is delivered exactly once and the queue ends
// empty, also on disk.
func TestConcurrent(t *testing.T) {
	dir := t.TempDir()
	q, err := queue.Open(queue.Options{Dir: dir, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	const producers, perProducer = 8, 150
	keys := []queue.Key{kA, kB, kC}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var mu sync.Mutex
	delivered := map[string]int{}
	total := 0
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perProducer {
				k := keys[(p+i)%len(keys)]
				m := queuetest.Message(k.VMTA, fmt.Sprintf("p%d-%d-0@%s", p, i, k.Domain), fmt.Sprintf("p%d-%d-1@%s", p, i, k.Domain))
				if _, err := q.Put(ctx, m); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	want := producers * perProducer * 2
	var workers sync.WaitGroup
	for w := range 6 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			k := keys[w%len(keys)]
			for n := 0; ; n++ {
				mu.Lock()
				finished := total == want
				mu.Unlock()
				if finished {
					return
				}
				l, err := q.Lease(ctx, k, 5)
				if err != nil {
					t.Error(err)
					return
				}
				if l == nil {
					wctx, wcancel := context.WithTimeout(ctx, 50*time.Millisecond)
					err := q.Wait(wctx, k)
					wcancel()
					if err != nil && ctx.Err() != nil {
						t.Error("timed out")
						return
					}
					continue
				}
				var outs []queue.Outcome
				var addrs []string
				for _, m := range l.Messages {
					for _, r := range m.Recipients {
						kind := queue.Delivered
						if n%7 == 0 && r.Attempts == 0 {
							kind = queue.Deferred // due again at once
						}
						outs = append(outs, queue.Outcome{ID: m.ID, N: r.N, Kind: kind, Reply: "250"})
						addrs = append(addrs, r.Address)
					}
				}
				if n%5 == 0 && len(outs) > 1 { // report one, release the rest
					outs = outs[:1]
				}
				if err := l.Report(outs...); err != nil {
					t.Error(err)
				}
				l.Release()
				mu.Lock()
				for i, o := range outs {
					if o.Kind == queue.Delivered {
						delivered[addrs[i]]++
						total++
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	workers.Wait()
	if t.Failed() {
		return
	}
	for a, n := range delivered {
		if n != 1 {
			t.Errorf("%s delivered %d times", a, n)
		}
	}
	if len(delivered) != want {
		t.Errorf("%d recipients delivered, want %d", len(delivered), want)
	}
	if err := q.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if tot := q.Totals(); tot != (queue.Totals{}) {
		t.Fatalf("Totals = %+v", tot)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q2, err := queue.Open(queue.Options{Dir: dir, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	if tot := q2.Totals(); tot != (queue.Totals{}) {
		t.Fatalf("Totals after reopen = %+v", tot)
	}
}

// TestConcurrentOperations mixes producers and workers with operators
// deleting a job, pausing and resuming, retrying and reading views (meant
// for -race). Every recipient ends delivered or deleted, and the queue
// ends empty.
func TestConcurrentOperations(t *testing.T) {
	q, err := queue.Open(queue.Options{Dir: t.TempDir(), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	keys := []queue.Key{kA, kB, kC}
	const producers, perProducer = 4, 150

	var mu sync.Mutex
	seen := map[string]int{} // address -> delivered or deleted
	var putWG, workWG, opWG sync.WaitGroup
	var putDone = make(chan struct{})
	for p := range producers {
		putWG.Go(func() {
			for i := range perProducer {
				k := keys[(p+i)%len(keys)]
				m := queuetest.Message(k.VMTA, fmt.Sprintf("p%d-%d@%s", p, i, k.Domain))
				if i%3 == 0 {
					m.JobID = "del"
				}
				if _, err := q.Put(ctx, m); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	go func() { putWG.Wait(); close(putDone) }()
	record := func(addr string) {
		mu.Lock()
		seen[addr]++
		mu.Unlock()
	}
	for w := range 6 {
		workWG.Go(func() {
			k := keys[w%len(keys)]
			for ctx.Err() == nil {
				l, err := q.Lease(ctx, k, 4)
				if err != nil {
					t.Error(err)
					return
				}
				if l == nil {
					select {
					case <-putDone:
						if q.Stats(k).Total() == 0 {
							return
						}
					default:
					}
					wctx, wcancel := context.WithTimeout(ctx, 20*time.Millisecond)
					_ = q.Wait(wctx, k)
					wcancel()
					continue
				}
				var outs []queue.Outcome
				var addrs []string
				for _, m := range l.Messages {
					for _, r := range m.Recipients {
						if !l.Live(m.ID, r.N) {
							continue // deleted meanwhile
						}
						outs = append(outs, queue.Outcome{ID: m.ID, N: r.N, Kind: queue.Delivered})
						addrs = append(addrs, r.Address)
					}
				}
				if err := l.Report(outs...); err != nil {
					t.Error(err)
				}
				l.Release()
				for _, a := range addrs {
					record(a)
				}
			}
		})
	}
	opWG.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-putDone:
				if _, err := q.Delete(ctx, queue.Selector{JobID: "del"}, func(r queue.Removal) { record(r.Recipient.Address) }); err != nil {
					t.Error(err)
				}
				return
			default:
			}
			if _, err := q.Delete(ctx, queue.Selector{JobID: "del"}, func(r queue.Removal) { record(r.Recipient.Address) }); err != nil {
				t.Error(err)
				return
			}
			_, _ = q.Pause(queue.Selector{VMTA: "mta1"})
			_ = q.Keys(queue.Selector{})
			_, _ = q.Ages(queue.Selector{}, []time.Duration{time.Second})
			_ = q.Totals()
			_, _ = q.RetryNow(queue.Selector{})
			_, _ = q.Resume(queue.Selector{})
		}
	})
	opWG.Wait()
	_, _ = q.Resume(queue.Selector{})
	workWG.Wait()
	if t.Failed() {
		return
	}
	if err := q.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if tot := q.Totals(); tot != (queue.Totals{}) {
		t.Fatalf("Totals = %+v", tot)
	}
	if len(seen) != producers*perProducer {
		t.Fatalf("%d recipients accounted for, want %d", len(seen), producers*perProducer)
	}
	// A recipient deleted between a worker's Live check and its Report is
	// counted by both; nothing is counted more often than that.
	for a, n := range seen {
		if n < 1 || n > 2 {
			t.Errorf("%s seen %d times", a, n)
		}
	}
}

// TestMinSyncIntervalReachesPebble checks that MinSyncInterval is what
// pebble gets as its least time between WAL syncs: 500µs by default, the
// value set, and none when negative.
func TestMinSyncIntervalReachesPebble(t *testing.T) {
	for _, tc := range []struct {
		set  time.Duration
		want time.Duration // 0: pebble gets no interval
	}{
		{0, 500 * time.Microsecond},
		{2 * time.Millisecond, 2 * time.Millisecond},
		{-1, 0},
	} {
		var got time.Duration
		q, err := queue.Open(queue.Options{Dir: t.TempDir(), Logger: discard(), MinSyncInterval: tc.set,
			Pebble: func(o *pebble.Options) {
				if o.WALMinSyncInterval != nil {
					got = o.WALMinSyncInterval()
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		q.Close()
		if got != tc.want {
			t.Errorf("MinSyncInterval %v: pebble's WALMinSyncInterval is %v, want %v", tc.set, got, tc.want)
		}
	}
}
