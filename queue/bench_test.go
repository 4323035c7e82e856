package queue

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Benchmarks run on the real filesystem (t.TempDir) so that fsync costs
// what it costs. Run them with a modest -benchtime, e.g.
//
//	go test -run '^$' -bench . -benchtime 20000x ./queue
//
// BenchmarkReopen1M builds its 1M-recipient spool once per test binary
// (that takes a while) and reopens it b.N times.

func TestMain(m *testing.M) {
	code := m.Run()
	if benchSpool.dir != "" {
		_ = os.RemoveAll(benchSpool.dir)
	}
	os.Exit(code)
}

func benchLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openBench(b *testing.B, dir string) *Queue {
	b.Helper()
	o := Options{Dir: dir, Logger: benchLogger()}
	q, err := Open(o)
	if err != nil {
		b.Fatal(err)
	}
	return q
}

func benchMessage(i int, body []byte) Message {
	d := fmt.Sprintf("d%d.example", i%100)
	return Message{
		Envelope: Envelope{Sender: "bounces@sender.example", JobID: "job1"},
		Recipients: []Recipient{{
			Address: fmt.Sprintf("user%d@%s", i, d),
			Domain:  d,
			VMTA:    fmt.Sprintf("mta%d", i%4),
		}},
		Body: body,
	}
}

// settle flushes the memtables and waits for pebble's compactions to
// finish, so that a benchmark does not pay for the setup's write debt.
func (q *Queue) settle(b *testing.B) {
	if err := q.db.Flush(); err != nil {
		b.Fatal(err)
	}
	quiet := 0
	for deadline := time.Now().Add(time.Minute); quiet < 5 && time.Now().Before(deadline); {
		if q.db.Metrics().Compact.NumInProgress == 0 {
			quiet++
		} else {
			quiet = 0
		}
		time.Sleep(20 * time.Millisecond) // setup pacing, not a measured result
	}
}

// benchBody returns a 4 KB body of random letters, which compresses about
// as badly as real mail.
func benchBody() []byte {
	body := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range body {
		body[i] = byte('a' + rng.IntN(26))
	}
	return body
}

// bulkPut stores msgs with one unsynced commit and indexes them: a fast
// way to fill a spool for benchmarks. edit, if set, may change each
// prepared message before it is written.
func (q *Queue) bulkPut(msgs []Message, edit func(i int, p *prepared)) error {
	b := q.db.NewBatch()
	now := q.clock.Now()
	ps := make([]*prepared, len(msgs))
	for i := range msgs {
		p, err := prepare(&msgs[i])
		if err != nil {
			return err
		}
		p.fill(now, len(msgs[i].Body))
		p.id = q.ids.next(now)
		if edit != nil {
			edit(i, p)
		}
		p.write(b, msgs[i].Body)
		ps[i] = p
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return err
	}
	_ = b.Close()
	for _, p := range ps {
		q.index(p, nil)
	}
	return nil
}

// BenchmarkPut measures synced Puts of 4 KB messages with one recipient
// from 1, 16 and 64 concurrent callers; pebble groups their WAL syncs.
func BenchmarkPut(b *testing.B) {
	body := benchBody()
	for _, callers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			q := openBench(b, b.TempDir())
			defer q.Close()
			ctx := context.Background()
			var next atomic.Int64
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range callers {
				wg.Go(func() {
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						if _, err := q.Put(ctx, benchMessage(int(i), body)); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "puts/s")
		})
	}
}

// BenchmarkLeaseOutcome measures the delivery cycle: 8 workers, one per
// key, lease up to rcpts recipients, report them all delivered (which
// deletes recipient, envelope and body), until the queue is empty; then
// Flush, so every outcome counted is durable. The queue is filled first
// (b.N messages of 4 KB, unsynced bulk commits) and pebble is left to
// settle, so the records are read from sstables, as with a backlog that
// has been on disk for a while, rather than from the memtable.
func BenchmarkLeaseOutcome(b *testing.B) {
	body := benchBody()
	for _, per := range []int{1, 20} {
		b.Run(fmt.Sprintf("rcpts=%d", per), func(b *testing.B) {
			q := openBench(b, b.TempDir())
			defer q.Close()
			const nkeys = 8
			msgs := make([]Message, 0, 10000)
			for i := 0; i < b.N; {
				msgs = msgs[:0]
				for ; i < b.N && len(msgs) < cap(msgs); i++ {
					m := benchMessage(i, body)
					m.Recipients[0].Domain = fmt.Sprintf("d%d.example", i%nkeys)
					m.Recipients[0].VMTA = "mta"
					msgs = append(msgs, m)
				}
				if err := q.bulkPut(msgs, nil); err != nil {
					b.Fatal(err)
				}
			}
			q.settle(b)
			ctx := context.Background()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for w := range nkeys {
				key := Key{VMTA: "mta", Domain: fmt.Sprintf("d%d.example", w)}
				wg.Go(func() {
					outs := make([]Outcome, 0, per)
					for {
						l, err := q.Lease(ctx, key, per)
						if err != nil {
							b.Error(err)
							return
						}
						if l == nil {
							return
						}
						outs = outs[:0]
						for _, m := range l.Messages {
							for _, r := range m.Recipients {
								outs = append(outs, Outcome{ID: m.ID, N: r.N, Kind: Delivered, Reply: "250 2.0.0 ok"})
							}
						}
						if err := l.Report(outs...); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			if err := q.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			if tot := q.Totals(); tot.Recipients != 0 {
				b.Fatalf("queue not drained: %+v", tot)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "outcomes/s")
		})
	}
}

// benchSpool is the 1M-recipient spool, built once per test binary.
var benchSpool struct {
	once sync.Once
	dir  string
	err  error
}

const (
	reopenRecipients = 1_000_000
	reopenBody       = 256 // small bodies: the reopen scan never reads them
)

// buildReopenSpool writes 1M one-recipient messages (the worst case for
// index memory per recipient) over 100 keys, a fifth of them deferred.
func buildReopenSpool(b *testing.B) (string, error) {
	dir, err := os.MkdirTemp("", "tern-queue-bench-")
	if err != nil {
		return "", err
	}
	q, err := Open(Options{Dir: dir, Logger: benchLogger()})
	if err != nil {
		return dir, err
	}
	start := time.Now()
	body := make([]byte, reopenBody)
	msgs := make([]Message, 0, 20000)
	later := time.Now().Add(24 * time.Hour)
	for i := 0; i < reopenRecipients; {
		msgs = msgs[:0]
		for ; i < reopenRecipients && len(msgs) < cap(msgs); i++ {
			msgs = append(msgs, benchMessage(i, body))
		}
		base := i - len(msgs)
		err := q.bulkPut(msgs, func(j int, p *prepared) {
			if (base+j)%5 == 0 {
				p.rcpts[0].NextAttempt = later
				p.rcpts[0].Attempts = 1
				p.rcpts[0].LastReply = "451 4.7.1 try again later"
			}
		})
		if err != nil {
			_ = q.Close()
			return dir, err
		}
	}
	if err := q.Close(); err != nil {
		return dir, err
	}
	b.Logf("built a spool of %d recipients in %v", reopenRecipients, time.Since(start).Round(time.Millisecond))
	return dir, nil
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkReopen1M measures Open of a spool holding 1,000,000 queued
// recipients (the index rebuild scan) and the heap the index takes.
// index-B/rcpt is measured by dropping the index after Open and
// comparing the live heap; heap-B/rcpt is everything Open added to the
// heap, pebble's own structures included.
func BenchmarkReopen1M(b *testing.B) {
	benchSpool.once.Do(func() { benchSpool.dir, benchSpool.err = buildReopenSpool(b) })
	if benchSpool.err != nil {
		b.Fatal(benchSpool.err)
	}
	var total time.Duration
	var indexBytes, heapBytes float64
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		before := heapAlloc()
		b.StartTimer()
		start := time.Now()
		q, err := Open(Options{Dir: benchSpool.dir, Logger: benchLogger()})
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		b.Logf("reopen %d: %v", i, time.Since(start))
		b.StopTimer()
		if tot := q.Totals(); tot.Recipients != reopenRecipients || tot.Deferred != reopenRecipients/5 {
			b.Fatalf("reopened spool: %+v", tot)
		}
		withIndex := heapAlloc()
		q.mu.Lock()
		q.keys = make(map[Key]*keyQueue)
		q.due = nil
		q.mu.Unlock()
		withoutIndex := heapAlloc()
		indexBytes = float64(withIndex-withoutIndex) / reopenRecipients
		heapBytes = float64(withIndex-before) / reopenRecipients
		if err := q.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(total.Seconds()/float64(b.N), "reopen-s")
	b.ReportMetric(indexBytes, "index-B/rcpt")
	b.ReportMetric(heapBytes, "heap-B/rcpt")
}
