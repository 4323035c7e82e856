package queue_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

// Journal tests. Entries are strings naming what they record ("r
// addr" for a stored recipient, "d addr" for a delivery, "b addr" for a
// removal), so a test can check each against the spool it came with.

// rEntries is a PutJournaled callback: one "r addr" entry per recipient.
func rEntries(dst [][]byte, _ queue.ID, m *queue.Message) [][]byte {
	for _, rc := range m.Recipients {
		dst = append(dst, []byte("r "+rc.Address))
	}
	return dst
}

// removalEntry is an Options.RemovalJournal: "b addr".
func removalEntry(r queue.Removal) []byte { return []byte("b " + r.Recipient.Address) }

// openJournaled opens the spool on fs with removals journaled.
func openJournaled(t *testing.T, fs vfs.FS) *queue.Queue {
	t.Helper()
	q, err := queue.Open(queue.Options{Dir: "spool", FS: fs, Logger: discard(), Clock: queuetest.NewClock(t0),
		RemovalJournal: removalEntry})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}

type jentry struct {
	seq  uint64
	text string
}

// readAll reads the journal after after, with at most max entries a call,
// until it has read everything committed.
func readAll(t *testing.T, q *queue.Queue, after uint64, max int) ([]jentry, uint64) {
	t.Helper()
	var out []jentry
	for {
		through, err := q.ReadJournal(after, max, func(seq uint64, e []byte) error {
			out = append(out, jentry{seq, string(e)})
			return nil
		})
		if err != nil {
			t.Fatalf("ReadJournal(%d): %v", after, err)
		}
		if through == after {
			return out, after
		}
		after = through
	}
}

func seqs(es []jentry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.seq
	}
	return out
}

func texts(es []jentry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.text
	}
	return out
}

func putJ(t *testing.T, q *queue.Queue, m queue.Message) queue.ID {
	t.Helper()
	id, err := q.PutJournaled(context.Background(), m, rEntries)
	if err != nil {
		t.Fatalf("PutJournaled: %v", err)
	}
	return id
}

// TestJournalEntriesWithTheirChanges: entries go with PutJournaled, with
// outcomes that carry one and with removals; an outcome ignored because
// its recipient was deleted while leased leaves no entry; they read back
// in the order they were decided, in pieces of any size, from a spool
// reopened after a crash too.
func TestJournalEntriesWithTheirChanges(t *testing.T) {
	fs := vfs.NewCrashableMem()
	q := openJournaled(t, fs)
	ctx := context.Background()
	id := putJ(t, q, queuetest.Message("mta1", "x0@a.example", "x1@a.example", "x2@b.example"))
	if _, err := q.Put(ctx, queuetest.Message("mta1", "plain@a.example")); err != nil { // no entries
		t.Fatal(err)
	}
	l, err := q.Lease(ctx, kA, 2)
	if err != nil || l == nil {
		t.Fatalf("Lease: %v", err)
	}
	if err := l.Report(
		queue.Outcome{ID: id, N: 1, Kind: queue.Deferred, Until: t0.Add(time.Hour), Journal: []byte("t x1@a.example")},
		queue.Outcome{ID: id, N: 0, Kind: queue.Delivered, Journal: []byte("d x0@a.example")},
	); err != nil {
		t.Fatal(err)
	}
	lb, err := q.Lease(ctx, kB, 1)
	if err != nil || lb == nil {
		t.Fatalf("Lease: %v", err)
	}
	if n, err := q.Delete(ctx, queue.KeySelector(kB), nil); err != nil || n != 1 {
		t.Fatalf("Delete = %d, %v", n, err)
	}
	// The worker's outcome comes after the deletion: ignored, and so is
	// its entry.
	if err := lb.Report(queue.Outcome{ID: id, N: 2, Kind: queue.Delivered, Journal: []byte("d x2@b.example")}); err != nil {
		t.Fatal(err)
	}
	if err := q.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"r x0@a.example", "r x1@a.example", "r x2@b.example", "t x1@a.example", "d x0@a.example", "b x2@b.example"}
	for _, max := range []int{0, 1, 4} {
		got, _ := readAll(t, q, 0, max)
		if !slices.Equal(texts(got), want) {
			t.Fatalf("journal read %d at a time: %q, want %q", max, texts(got), want)
		}
		if !slices.IsSortedFunc(got, func(a, b jentry) int { return int(a.seq - b.seq) }) || got[0].seq == 0 {
			t.Fatalf("entry numbers %v: want increasing, from 1 on", got)
		}
	}

	q2 := openJournaled(t, fs.CrashClone(vfs.CrashCloneCfg{}))
	got, _ := readAll(t, q2, 0, 0)
	if !slices.Equal(texts(got), want) {
		t.Fatalf("journal after a crash: %q, want %q", texts(got), want)
	}
	if _, err := q2.ReadJournal(got[len(got)-1].seq, 0, func(uint64, []byte) error {
		t.Fatal("an entry after the last")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestJournalAck: acknowledged entries are deleted together with the
// states stored in the same batch; without Sync a crash can bring both
// back as they were, with Sync it cannot. New entries get numbers above
// those left in the journal.
func TestJournalAck(t *testing.T) {
	fs := vfs.NewCrashableMem()
	q := openJournaled(t, fs)
	for i := range 3 {
		putJ(t, q, queuetest.Message("mta1", fmt.Sprintf("a%d@a.example", i)))
	}
	es, _ := readAll(t, q, 0, 0)
	if len(es) != 3 {
		t.Fatalf("%d entries, want 3", len(es))
	}
	state := func(q *queue.Queue) string {
		st, err := q.States("acct/")
		if err != nil {
			t.Fatal(err)
		}
		return string(st["acct/f"])
	}
	if err := q.PutState("acct/gone", []byte("x")); err != nil {
		t.Fatal(err)
	}

	// Unsynced: in effect at once, lost with a crash before another sync.
	if err := q.AckJournal(queue.JournalAck{Entries: seqs(es[:2]),
		States: map[string][]byte{"acct/f": []byte("two"), "acct/gone": nil}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := readAll(t, q, 0, 0); !slices.Equal(texts(got), texts(es[2:])) || state(q) != "two" {
		t.Fatalf("after the ack: journal %q, state %q", texts(got), state(q))
	}
	crashed := openJournaled(t, fs.CrashClone(vfs.CrashCloneCfg{}))
	if got, _ := readAll(t, crashed, 0, 0); !slices.Equal(texts(got), texts(es)) || state(crashed) != "" {
		t.Fatalf("unsynced ack after a crash: journal %q, state %q; want it undone", texts(got), state(crashed))
	}
	if st, _ := crashed.States("acct/gone"); len(st) != 1 {
		t.Fatal("a state the unsynced ack deleted is gone after the crash")
	}

	// Synced: survives.
	if err := q.AckJournal(queue.JournalAck{Sync: true, States: map[string][]byte{"acct/f": []byte("two")}}); err != nil {
		t.Fatal(err)
	}
	q3 := openJournaled(t, fs.CrashClone(vfs.CrashCloneCfg{}))
	got, _ := readAll(t, q3, 0, 0)
	if !slices.Equal(texts(got), texts(es[2:])) || state(q3) != "two" {
		t.Fatalf("synced ack after a crash: journal %q, state %q", texts(got), state(q3))
	}
	if st, _ := q3.States("acct/gone"); len(st) != 0 {
		t.Fatal("the deleted state came back")
	}
	putJ(t, q3, queuetest.Message("mta1", "later@a.example"))
	got, _ = readAll(t, q3, 0, 0)
	if len(got) != 2 || got[1].text != "r later@a.example" || got[1].seq <= es[2].seq {
		t.Fatalf("after a new Put: %v; want it numbered after %d", got, es[2].seq)
	}
	// Numbers without an entry (acknowledged already, or never used) are
	// no error.
	if err := q3.AckJournal(queue.JournalAck{Entries: append(seqs(got), es[0].seq, got[1].seq+100)}); err != nil {
		t.Fatal(err)
	}
	if got, _ := readAll(t, q3, 0, 0); len(got) != 0 {
		t.Fatalf("after acknowledging everything: %v", got)
	}
}

// TestJournalReadWhileCommitting puts from many goroutines while a
// reader follows the journal and acknowledges what it read: every entry
// is read exactly once, and each read returns entries in number order,
// although the Puts' batches commit in another order.
func TestJournalReadWhileCommitting(t *testing.T) {
	q := openJournaled(t, vfs.NewMem())
	const goroutines, each = 8, 60
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				rcpts := []string{fmt.Sprintf("g%d-%d-0@a.example", g, i)}
				if i%3 == 0 {
					rcpts = append(rcpts, fmt.Sprintf("g%d-%d-1@b.example", g, i))
				}
				putJ(t, q, queuetest.Message("mta1", rcpts...))
			}
		}()
	}
	putsDone := make(chan struct{})
	go func() { wg.Wait(); close(putsDone) }()

	seen := map[string]int{}
	var after uint64
	read := func() {
		got, through := readAll(t, q, after, 7)
		for i, e := range got {
			seen[e.text]++
			if e.seq <= after || (i > 0 && e.seq <= got[i-1].seq) {
				t.Fatalf("entry %d read after %d, or out of order: %v", e.seq, after, got)
			}
		}
		if err := q.AckJournal(queue.JournalAck{Entries: seqs(got)}); err != nil {
			t.Fatal(err)
		}
		after = through
	}
	for done := false; !done; {
		select {
		case <-q.JournalMoved():
		case <-putsDone:
			done = true
		}
		read()
	}
	read()
	want := goroutines * (each + (each+2)/3) // a second recipient for every third message
	if len(seen) != want {
		t.Fatalf("%d distinct entries read, want %d", len(seen), want)
	}
	for e, n := range seen {
		if n != 1 {
			t.Fatalf("entry %q read %d times", e, n)
		}
	}
	if rest, _ := readAll(t, q, 0, 0); len(rest) != 0 {
		t.Fatalf("%d entries left after acknowledging all", len(rest))
	}
}

// TestJournalCrashKeepsEntriesWithTheirChanges puts messages from many
// goroutines while a worker delivers them, reporting each delivery with
// an entry, and crashes in the middle with part of the unsynced data
// kept: afterwards a recipient's r entry is there exactly when its message
// was stored, its d entry exactly when the delivery was recorded (the
// recipient is gone), and every Put that returned has its entries.
func TestJournalCrashKeepsEntriesWithTheirChanges(t *testing.T) {
	for round, unsynced := range []int{0, 50, 100} {
		t.Run(fmt.Sprintf("unsynced=%d", unsynced), func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			q, err := queue.Open(queue.Options{Dir: "spool", FS: fs, Logger: discard()})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var mu sync.Mutex
			var returned []string         // recipients of Puts that returned
			enough := make(chan struct{}) // closed once 400 have
			var wg sync.WaitGroup
			for g := range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ctx.Err() == nil; i++ {
						rcpts := []string{fmt.Sprintf("g%d-%d-0@a.example", g, i), fmt.Sprintf("g%d-%d-1@a.example", g, i)}
						if _, err := q.PutJournaled(context.Background(), queuetest.Message("mta1", rcpts...), rEntries); err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						if returned = append(returned, rcpts...); len(returned) == 400 {
							close(enough)
						}
						mu.Unlock()
					}
				}()
			}
			wg.Add(1)
			go func() { // the worker: delivers whatever is due
				defer wg.Done()
				for ctx.Err() == nil {
					if err := q.Wait(ctx, kA); err != nil {
						return
					}
					l, err := q.Lease(ctx, kA, 5)
					if err != nil || l == nil {
						continue
					}
					var outs []queue.Outcome
					for _, m := range l.Messages {
						for _, r := range m.Recipients {
							outs = append(outs, queue.Outcome{ID: m.ID, N: r.N, Kind: queue.Delivered, Journal: []byte("d " + r.Address)})
						}
					}
					if err := l.Report(outs...); err != nil {
						t.Error(err)
					}
				}
			}()
			select {
			case <-enough:
			case <-time.After(30 * time.Second):
				cancel()
				wg.Wait()
				t.Fatal("Puts too slow")
			}
			mu.Lock()
			before := slices.Clone(returned)
			mu.Unlock()
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: unsynced, RNG: rand.New(rand.NewPCG(uint64(round), 11))})
			cancel()
			wg.Wait()
			_ = q.Close()

			q2 := openFS(t, crashed)
			queued := map[string]bool{}
			for _, addrs := range contents(t, q2) {
				for _, a := range addrs {
					queued[a] = true
				}
			}
			got, _ := readAll(t, q2, 0, 0)
			rs, ds := map[string]int{}, map[string]int{}
			for _, e := range got {
				kind, addr, _ := strings.Cut(e.text, " ")
				if kind == "r" {
					rs[addr]++
				} else {
					ds[addr]++
				}
			}
			for a := range queued {
				if rs[a] != 1 || ds[a] != 0 {
					t.Fatalf("%s is queued with %d r and %d d entries, want 1 and 0", a, rs[a], ds[a])
				}
			}
			for a, n := range rs {
				if n != 1 || (!queued[a] && ds[a] != 1) {
					t.Fatalf("%s: %d r entries, %d d entries, queued %v; want one r, and one d unless queued", a, n, ds[a], queued[a])
				}
			}
			for a, n := range ds {
				if n != 1 || queued[a] || rs[a] != 1 {
					t.Fatalf("%s: %d d entries, %d r entries, queued %v", a, n, rs[a], queued[a])
				}
			}
			for _, a := range before {
				if rs[a] != 1 {
					t.Fatalf("%s: its Put returned before the crash, but it has no r entry", a)
				}
			}
			t.Logf("%d recipients stored before the crash; after it %d r and %d d entries, %d queued", len(before), len(rs), len(ds), len(queued))
		})
	}
}
