package queue

import (
	"bytes"
	"context"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// A message leased right after Put comes from memory; what the lease
// holds must be what the spool holds, and the memory is given back.
func TestFreshLeaseMatchesSpool(t *testing.T) {
	q, err := Open(Options{Dir: "spool", FS: vfs.NewMem(), Logger: benchLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx := context.Background()
	body := []byte("Subject: fresh\r\n\r\nbody\r\n")
	m := Message{
		Envelope: Envelope{Sender: "s@example.org", JobID: "j1", EnvID: "e1", DSNRet: RetHeaders},
		Recipients: []Recipient{
			{Address: "a@one.example", VMTA: "mta1", ORcpt: "rfc822;a@one.example", Notify: NotifyFailure},
			{Address: "b@two.example", VMTA: "mta1"},
			{Address: "c@one.example", VMTA: "mta1", Pool: "p"},
		},
		Body: body,
	}
	id, err := q.Put(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	body[0] = 'X' // the caller may reuse its buffer once Put returns
	stored, err := q.Lookup(id)
	if err != nil {
		t.Fatal(err)
	}

	one := Key{VMTA: "mta1", Domain: "one.example"}
	l, err := q.Lease(ctx, one, 10)
	if err != nil || l == nil || len(l.Messages) != 1 {
		t.Fatalf("Lease: %v %+v", err, l)
	}
	if l.bodies == nil {
		t.Fatal("the first lease did not take the fresh copy")
	}
	got := l.Messages[0]
	if !reflect.DeepEqual(got.Envelope, stored.Envelope) {
		t.Errorf("envelope %+v, spool says %+v", got.Envelope, stored.Envelope)
	}
	want := []RecipientState{stored.Recipients[0], stored.Recipients[2]}
	if !reflect.DeepEqual(got.Recipients, want) {
		t.Errorf("recipients %+v, spool says %+v", got.Recipients, want)
	}
	b, err := l.Body(id)
	if err != nil || !bytes.Equal(b, []byte("Subject: fresh\r\n\r\nbody\r\n")) {
		t.Errorf("Body = %q, %v", b, err)
	}

	// The other key's lease reads the spool: the copy went with the first.
	l2, err := q.Lease(ctx, Key{VMTA: "mta1", Domain: "two.example"}, 10)
	if err != nil || l2 == nil || l2.bodies != nil || len(l2.Messages) != 1 || l2.Messages[0].Recipients[0].Address != "b@two.example" {
		t.Fatalf("second lease: %v %+v", err, l2)
	}
	if b2, err := l2.Body(id); err != nil || !bytes.Equal(b, b2) {
		t.Errorf("spool body %q, %v; fresh body %q", b2, err, b)
	}
	q.mu.Lock()
	held := q.freshBytes
	q.mu.Unlock()
	if held != 0 {
		t.Errorf("freshBytes = %d after the first lease, want 0", held)
	}
	if err := l.Report(Outcome{ID: id, N: 0, Kind: Delivered}, Outcome{ID: id, N: 2, Kind: Delivered}); err != nil {
		t.Fatal(err)
	}
	if err := l2.Report(Outcome{ID: id, N: 1, Kind: Delivered}); err != nil {
		t.Fatal(err)
	}
}

// A message deleted before any lease gives its fresh memory back, and the
// bound keeps a backlog's bodies on disk only.
func TestFreshBounded(t *testing.T) {
	q, err := Open(Options{Dir: "spool", FS: vfs.NewMem(), Logger: benchLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx := context.Background()
	big := bytes.Repeat([]byte("x"), 1<<20)
	for i := 0; i < maxFreshBytes>>20+8; i++ {
		if _, err := q.Put(ctx, Message{Envelope: Envelope{Sender: "s@example.org"},
			Recipients: []Recipient{{Address: "a@one.example", VMTA: "mta1"}}, Body: big}); err != nil {
			t.Fatal(err)
		}
	}
	q.mu.Lock()
	held := q.freshBytes
	q.mu.Unlock()
	if held > maxFreshBytes || held < maxFreshBytes-(1<<20) {
		t.Errorf("freshBytes = %d, want close to the bound %d", held, maxFreshBytes)
	}
	if _, err := q.Delete(ctx, Selector{VMTA: "mta1"}, nil); err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	held = q.freshBytes
	q.mu.Unlock()
	if held != 0 {
		t.Errorf("freshBytes = %d after deleting everything, want 0", held)
	}
}
