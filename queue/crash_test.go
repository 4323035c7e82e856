package queue_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

// Crash tests. vfs.NewCrashableMem keeps track of what was synced;
// CrashClone returns the filesystem as a crash at that instant could leave
// it: everything synced plus, with UnsyncedDataPercent, a random part of
// what was not.

func openFS(t *testing.T, fs vfs.FS) *queue.Queue {
	t.Helper()
	q, err := queue.Open(queue.Options{Dir: "spool", FS: fs, Logger: discard(), Clock: queuetest.NewClock(t0)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}

// contents drains every key of q through leases and returns, per message,
// its recipients' addresses; it checks that each message is whole (body
// readable, names its recipients). It releases nothing, so call it on a
// queue that is thrown away afterwards.
func contents(t *testing.T, q *queue.Queue) map[queue.ID][]string {
	t.Helper()
	out := map[queue.ID][]string{}
	if _, err := q.RetryNow(queue.Selector{}); err != nil {
		t.Fatal(err)
	}
	for _, ks := range q.Keys(queue.Selector{}) {
		l, err := q.Lease(context.Background(), ks.Key, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if l == nil {
			continue
		}
		for _, m := range l.Messages {
			body, err := l.Body(m.ID)
			if err != nil {
				t.Fatalf("message %s without body: %v", m.ID, err)
			}
			for _, r := range m.Recipients {
				if !bytes.Contains(body, []byte(r.Address)) {
					t.Fatalf("message %s: body %q does not name %s", m.ID, body, r.Address)
				}
				out[m.ID] = append(out[m.ID], r.Address)
			}
		}
	}
	return out
}

// checkWhole verifies that every message in got has all nrcpt recipients.
func checkWhole(t *testing.T, q *queue.Queue, got map[queue.ID][]string, nrcpt int) {
	t.Helper()
	for id := range got {
		e, err := q.Lookup(id)
		if err != nil {
			t.Fatalf("Lookup(%s): %v", id, err)
		}
		if len(e.Recipients) != nrcpt {
			t.Fatalf("message %s has %d recipients in the spool, want %d (half-written)", id, len(e.Recipients), nrcpt)
		}
	}
}

func threeRcpt(tag string) queue.Message {
	return queuetest.Message("mta1", tag+"-0@a.example", tag+"-1@a.example", tag+"-2@b.example")
}

// TestCrashPutsThatReturnedSurvive puts from many goroutines and crashes
// in the middle: every Put that had returned is present and whole after
// reopen, and no message is half there, whatever part of the unsynced data
// the crash kept.
func TestCrashPutsThatReturnedSurvive(t *testing.T) {
	for round, unsynced := range []int{0, 50, 100, 30} {
		t.Run(fmt.Sprintf("unsynced=%d", unsynced), func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			q, err := queue.Open(queue.Options{Dir: "spool", FS: fs, Logger: discard()})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var returned []queue.ID
			stop := make(chan struct{})
			enough := make(chan struct{}) // closed when 200 Puts have returned
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						id, err := q.Put(context.Background(), threeRcpt(fmt.Sprintf("g%d-%d", g, i)))
						if err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						returned = append(returned, id)
						if len(returned) == 200 {
							close(enough)
						}
						mu.Unlock()
					}
				}()
			}
			// Crash once a fair number of Puts have returned, while more are
			// in flight.
			select {
			case <-enough:
			case <-time.After(30 * time.Second):
				close(stop)
				wg.Wait()
				t.Fatal("Puts too slow")
			}
			mu.Lock()
			before := append([]queue.ID(nil), returned...)
			mu.Unlock()
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: unsynced, RNG: rand.New(rand.NewPCG(uint64(round), 7))})
			close(stop)
			wg.Wait()
			_ = q.Close()
			if len(before) == 0 {
				t.Fatal("no Put returned")
			}

			q2 := openFS(t, crashed)
			got := contents(t, q2)
			for _, id := range before {
				if len(got[id]) != 3 {
					t.Fatalf("Put %s returned before the crash but has %d recipients after it", id, len(got[id]))
				}
			}
			checkWhole(t, q2, got, 3)
			t.Logf("%d Puts returned before the crash, %d messages after it", len(before), len(got))
		})
	}
}

// TestCrashLeasedAreDueAgain: leases are not written, so a crash makes
// leased recipients due again (at-least-once).
func TestCrashLeasedAreDueAgain(t *testing.T) {
	fs := vfs.NewCrashableMem()
	q := openFS(t, fs)
	var ids []queue.ID
	for i := range 5 {
		id, err := q.Put(context.Background(), threeRcpt(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	l, err := q.Lease(context.Background(), kA, 100)
	if err != nil || l == nil {
		t.Fatalf("Lease: %v", err)
	}
	if err := q.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	q2 := openFS(t, fs.CrashClone(vfs.CrashCloneCfg{}))
	wantCounts(t, q2.Stats(kA), 10, 0, 0)
	wantCounts(t, q2.Stats(kB), 5, 0, 0)
	got := contents(t, q2)
	for _, id := range ids {
		if len(got[id]) != 3 {
			t.Fatalf("message %s: %v", id, got[id])
		}
	}
}

// TestCrashOutcomes: once Flush has returned, delivered and bounced
// recipients stay gone after a crash and deferred ones keep their new
// state; recipients without a final outcome are never lost, whether or not
// the crash caught outcomes still in flight.
func TestCrashOutcomes(t *testing.T) {
	for round, unsynced := range []int{0, 50, 100} {
		t.Run(fmt.Sprintf("unsynced=%d", unsynced), func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			q := openFS(t, fs)
			ctx := context.Background()
			const n = 60
			ids := make([]queue.ID, n)
			for i := range ids {
				id, err := q.Put(ctx, threeRcpt(fmt.Sprint(i)))
				if err != nil {
					t.Fatal(err)
				}
				ids[i] = id
			}
			// Phase 1, flushed: messages 0-19 fully delivered, 20-29 bounced
			// on a.example, 30-39 deferred on a.example.
			la, _ := q.Lease(ctx, kA, 1000)
			lb, _ := q.Lease(ctx, kB, 1000)
			var outs []queue.Outcome
			for _, m := range la.Messages {
				i := indexOf(ids, m.ID)
				for _, r := range m.Recipients {
					switch {
					case i < 20:
						outs = append(outs, queue.Outcome{ID: m.ID, N: r.N, Kind: queue.Delivered})
					case i < 30:
						outs = append(outs, queue.Outcome{ID: m.ID, N: r.N, Kind: queue.Bounced, Reply: "550"})
					case i < 40:
						outs = append(outs, queue.Outcome{ID: m.ID, N: r.N, Kind: queue.Deferred, Until: t0.Add(time.Hour), Reply: "451"})
					}
				}
			}
			if err := la.Report(outs...); err != nil {
				t.Fatal(err)
			}
			outs = outs[:0]
			for _, m := range lb.Messages {
				if indexOf(ids, m.ID) < 20 {
					outs = append(outs, queue.Outcome{ID: m.ID, N: 2, Kind: queue.Delivered})
				}
			}
			if err := lb.Report(outs...); err != nil {
				t.Fatal(err)
			}
			if err := q.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			// Phase 2, in flight at the crash: deliver the rest of b.example.
			outs = outs[:0]
			for _, m := range lb.Messages {
				if indexOf(ids, m.ID) >= 20 {
					outs = append(outs, queue.Outcome{ID: m.ID, N: 2, Kind: queue.Delivered})
				}
			}
			if err := lb.Report(outs...); err != nil {
				t.Fatal(err)
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: unsynced, RNG: rand.New(rand.NewPCG(uint64(round), 9))})

			q2 := openFS(t, crashed)
			for i, id := range ids {
				e, err := q2.Lookup(id)
				if i < 20 {
					if !errors.Is(err, queue.ErrNotFound) {
						t.Fatalf("delivered message %d resurrected: %+v, %v", i, e, err)
					}
					continue
				}
				if i < 30 && errors.Is(err, queue.ErrNotFound) {
					continue // its last recipient's in-flight outcome was kept
				}
				if err != nil {
					t.Fatalf("message %d lost: %v", i, err)
				}
				var aCount int
				for _, r := range e.Recipients {
					if r.Domain == "a.example" {
						aCount++
						if i >= 30 && i < 40 && (r.Attempts != 1 || r.LastReply != "451") {
							t.Fatalf("message %d: deferral lost: %+v", i, r)
						}
					}
				}
				switch {
				case i < 30 && aCount != 0:
					t.Fatalf("message %d: bounced recipients resurrected", i)
				case i >= 30 && aCount != 2:
					t.Fatalf("message %d: a.example recipients lost: %+v", i, e.Recipients)
				}
				// b.example's outcome was in flight: it may or may not be
				// there, but a message that is there is never empty.
				if i < 30 && len(e.Recipients) != 1 {
					t.Fatalf("message %d: %+v", i, e.Recipients)
				}
			}
		})
	}
}

func indexOf(ids []queue.ID, id queue.ID) int {
	for i, x := range ids {
		if x == id {
			return i
		}
	}
	return -1
}

// TestSyncFailure injects an error into the WAL's sync: the Put returns
// an error, later writes are refused, and after reopening nothing
// half-written is visible; the failed message is either whole or absent
// (absent if the crash drops what was never synced).
func TestSyncFailure(t *testing.T) {
	mem := vfs.NewCrashableMem()
	inj := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if strings.HasSuffix(op.Path, ".log") {
				return errorfs.ErrInjected
			}
		}
		return nil
	})}
	q, err := queue.Open(queue.Options{Dir: "spool", FS: errorfs.Wrap(mem, inj), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var good []queue.ID
	for i := range 10 {
		id, err := q.Put(ctx, threeRcpt(fmt.Sprint("good", i)))
		if err != nil {
			t.Fatal(err)
		}
		good = append(good, id)
	}
	if err := q.Failed(); err != nil {
		t.Fatalf("Failed() = %v before any failure", err)
	}
	inj.On()
	if _, err := q.Put(ctx, threeRcpt("failed")); !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("Put with a failing sync: err = %v, want the injected error", err)
	}
	if err := q.Failed(); !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("Failed() = %v after the failed sync, want the injected error", err)
	}
	if _, err := q.Put(ctx, threeRcpt("after")); err == nil {
		t.Fatal("Put after a failed sync succeeded")
	}
	l, err := q.Lease(ctx, kA, 10)
	if err == nil {
		t.Fatalf("Lease after a failed sync succeeded: %v", l)
	}
	crashed := mem.CrashClone(vfs.CrashCloneCfg{})
	inj.Off()
	_ = q.Close()

	for name, fs := range map[string]vfs.FS{"crash": crashed, "same-fs": mem} {
		t.Run(name, func(t *testing.T) {
			q2 := openFS(t, fs)
			got := contents(t, q2)
			checkWhole(t, q2, got, 3)
			for _, id := range good {
				if len(got[id]) != 3 {
					t.Fatalf("message %s put before the failure lost", id)
				}
			}
			for id, addrs := range got {
				if strings.HasPrefix(addrs[0], "after") {
					t.Fatalf("refused Put %s is in the spool", id)
				}
			}
			if name == "crash" && len(got) != len(good) {
				t.Fatalf("%d messages after crash, want %d", len(got), len(good))
			}
		})
	}
}

// TestKill9 runs a child process (this test binary) that Puts in a loop
// and prints each returned ID, SIGKILLs it, and checks that every printed
// ID is in the spool, whole.
func TestKill9(t *testing.T) {
	if dir := os.Getenv("TERN_QUEUE_KILL9_DIR"); dir != "" {
		kill9Child(dir)
		return
	}
	if testing.Short() {
		t.Skip("starts a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TERN_QUEUE_KILL9_DIR="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var ids []queue.ID
	sc := bufio.NewScanner(out)
	killed := false
	timeout := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	defer timeout.Stop()
	for sc.Scan() {
		s, ok := strings.CutPrefix(sc.Text(), "put ")
		if !ok {
			continue
		}
		id, err := queue.ParseID(s)
		if err != nil {
			t.Fatalf("child printed %q", sc.Text())
		}
		ids = append(ids, id)
		if len(ids) == 300 && !killed {
			if err := cmd.Process.Kill(); err != nil { // SIGKILL
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("child ended before it was killed (%d ids): %v", len(ids), err)
	}
	q, err := queue.Open(queue.Options{Dir: dir, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for _, id := range ids {
		e, err := q.Lookup(id)
		if err != nil {
			t.Fatalf("id %s reported by the child is missing: %v", id, err)
		}
		if len(e.Recipients) != 3 {
			t.Fatalf("id %s has %d recipients", id, len(e.Recipients))
		}
		if _, err := q.Body(id); err != nil {
			t.Fatalf("id %s has no body: %v", id, err)
		}
	}
	t.Logf("%d ids reported before SIGKILL, all present; %d messages in the spool", len(ids), q.Totals().Messages)
}

// kill9Child is the child of TestKill9: it Puts from several goroutines
// until killed, printing "put <id>" after each Put returns.
func kill9Child(dir string) {
	// Never outlive a parent that died without killing us.
	time.AfterFunc(time.Minute, func() { os.Exit(3) })
	q, err := queue.Open(queue.Options{Dir: dir, Logger: discard()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id, err := q.Put(context.Background(), threeRcpt(fmt.Sprintf("c%d-%d", g, i)))
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Fprintf(os.Stdout, "put %s\n", id)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestOutcomeSyncFailure: when the committer's sync fails, Flush reports
// it, the queue refuses writes, and after a crash the recipients whose
// outcomes were lost are still queued (delivered again: at least once).
func TestOutcomeSyncFailure(t *testing.T) {
	mem := vfs.NewCrashableMem()
	inj := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if strings.HasSuffix(op.Path, ".log") {
				return errorfs.ErrInjected
			}
		}
		return nil
	})}
	q, err := queue.Open(queue.Options{Dir: "spool", FS: errorfs.Wrap(mem, inj), Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := q.Put(ctx, threeRcpt("m"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := q.Lease(ctx, kA, 10)
	if err != nil || l == nil {
		t.Fatalf("Lease: %v", err)
	}
	inj.On()
	if err := l.Report(outcomes(l, queue.Delivered, time.Time{}, "250")...); err != nil {
		t.Fatalf("Report: %v", err) // recorded in memory; the commit fails later
	}
	if err := q.Flush(ctx); !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("Flush = %v, want the injected error", err)
	}
	if _, err := q.Put(ctx, threeRcpt("after")); err == nil {
		t.Fatal("Put after a failed outcome commit succeeded")
	}
	crashed := mem.CrashClone(vfs.CrashCloneCfg{})
	inj.Off()
	_ = q.Close()

	q2 := openFS(t, crashed)
	e, err := q2.Lookup(id)
	if err != nil || len(e.Recipients) != 3 {
		t.Fatalf("after crash: %+v, %v; want all 3 recipients queued", e, err)
	}
}
