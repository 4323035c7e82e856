package queue

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// What a journal entry adds to the commits it rides in: the same work
// with and without one entry of accountingEntrySize bytes (about an
// accounting record's CSV line) per message or outcome. Besides the
// usual ns/op, which for synced Puts is mostly waiting for the disk, they
// report cpu-µs/op: the process's user and system time per operation,
// from getrusage, which is what a busy server pays. With entries, a
// reader reads and acknowledges them every 100 ms, as the accounting
// Journal does (without writing them anywhere), so that they leave the
// spool as they do in a server: an entry deleted while its memtable is
// in memory costs a flush little.

const accountingEntrySize = 300

// cpuTime is the CPU time the process has used so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N)/1e3, "cpu-µs/op")
}

// acknowledge reads and acknowledges q's journal every 100 ms until the
// returned function is called, which acknowledges what is left and
// returns once the reader has stopped.
func acknowledge(b *testing.B, q *Queue) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	var after uint64
	var seqs []uint64
	round := func() {
		seqs = seqs[:0]
		through, err := q.ReadJournal(after, 0, func(seq uint64, _ []byte) error {
			seqs = append(seqs, seq)
			return nil
		})
		if err == nil {
			err = q.AckJournal(JournalAck{Entries: seqs})
		}
		if err != nil {
			b.Error(err)
		}
		after = through
	}
	go func() {
		defer close(stopped)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				round()
				return
			case <-tick.C:
				round()
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// BenchmarkPutJournaled is BenchmarkPut's 16 callers with entries=0 (Put)
// and entries=1 (PutJournaled with one entry a message: its r record).
func BenchmarkPutJournaled(b *testing.B) {
	body := benchBody()
	entry := bytes.Repeat([]byte{'x'}, accountingEntrySize)
	for _, entries := range []int{0, 1} {
		b.Run(fmt.Sprintf("entries=%d", entries), func(b *testing.B) {
			q := openBench(b, b.TempDir())
			defer q.Close()
			ctx := context.Background()
			fn := func(dst [][]byte, _ ID, _ *Message) [][]byte { return append(dst, entry) }
			var next atomic.Int64
			b.ResetTimer()
			cpu := cpuTime(b)
			stop := func() {}
			if entries > 0 {
				stop = acknowledge(b, q)
			}
			var wg sync.WaitGroup
			for range 16 {
				wg.Go(func() {
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						var err error
						if entries == 0 {
							_, err = q.Put(ctx, benchMessage(int(i), body))
						} else {
							_, err = q.PutJournaled(ctx, benchMessage(int(i), body), fn)
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			stop()
			b.StopTimer()
			reportCPU(b, cpu)
		})
	}
}

// BenchmarkReportJournaled leases and reports Delivered, one recipient a
// lease as a worker of one connection would, with entries=0 (no entry)
// and entries=1 (its d record), and waits for the committer at the end.
func BenchmarkReportJournaled(b *testing.B) {
	body := benchBody()
	entry := bytes.Repeat([]byte{'x'}, accountingEntrySize)
	for _, entries := range []int{0, 1} {
		b.Run(fmt.Sprintf("entries=%d", entries), func(b *testing.B) {
			q := openBench(b, b.TempDir())
			defer q.Close()
			key := Key{VMTA: "mta", Domain: "d.example"}
			msgs := make([]Message, 0, 10000)
			for i := 0; i < b.N; {
				msgs = msgs[:0]
				for ; i < b.N && len(msgs) < cap(msgs); i++ {
					m := benchMessage(i, body)
					m.Recipients[0].Domain, m.Recipients[0].VMTA = key.Domain, key.VMTA
					msgs = append(msgs, m)
				}
				if err := q.bulkPut(msgs, nil); err != nil {
					b.Fatal(err)
				}
			}
			q.settle(b)
			ctx := context.Background()
			b.ResetTimer()
			cpu := cpuTime(b)
			stop := func() {}
			if entries > 0 {
				stop = acknowledge(b, q)
			}
			for range b.N {
				l, err := q.Lease(ctx, key, 1)
				if err != nil || l == nil {
					b.Fatalf("Lease: %v, %v", l, err)
				}
				m := l.Messages[0]
				out := Outcome{ID: m.ID, N: m.Recipients[0].N, Kind: Delivered}
				if entries > 0 {
					out.Journal = entry
				}
				if err := l.Report(out); err != nil {
					b.Fatal(err)
				}
			}
			if err := q.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			stop()
			b.StopTimer()
			reportCPU(b, cpu)
		})
	}
}
