package acct

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// BenchmarkJournal measures the two halves of a record's way through the
// journal, for comparison with direct (a record straight into the buffer
// of its file, the way before the journal):
//
//   - entry: what the worker that decides an outcome pays, encoding the
//     record into its entry (the entry then rides in a batch the spool
//     commits and syncs anyway);
//   - write-out: what the Journal pays per record, reading the entries,
//     appending the lines, syncing the file and acknowledging them, in
//     batches of 40, 400 and 4,000 records: 10 ms, 100 ms (the default
//     interval) and a second of records at 4,000 a second. The spool and
//     the file are on disk.
//
// cpu-µs/op is the process's user and system time per record, from
// getrusage: ns/op of the write-out includes waiting for the syncs.
func BenchmarkJournal(b *testing.B) {
	b.Run("entry", func(b *testing.B) {
		_, j := openBenchJournal(b)
		r := fullRecord()
		r.TimeLogged = time.Time{} // set by Entry, as for outcomes
		b.ReportAllocs()
		cpu := cpuTime(b)
		for b.Loop() {
			if e := j.Entry(r); e == nil {
				b.Fatal("no entry")
			}
		}
		reportCPU(b, cpu)
	})
	b.Run("direct", func(b *testing.B) {
		// The way before the journal: Writer.Write into the file's
		// buffer, which its flusher writes out every second.
		w, err := Open(acctFile(filepath.Join(b.TempDir(), "acct.csv"), defaultTypes, config.Unlimited, config.Never), Options{Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		r := fullRecord()
		r.TimeLogged = time.Time{}
		b.ReportAllocs()
		cpu := cpuTime(b)
		for b.Loop() {
			if err := w.Write(r); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, cpu)
	})
	for _, perBatch := range []int{40, 400, 4000} {
		b.Run(fmt.Sprintf("write-out/batch=%d", perBatch), func(b *testing.B) { benchWriteOut(b, perBatch) })
	}
}

// openBenchJournal opens a spool and one accounting file on disk, with a
// manual Journal.
func openBenchJournal(b *testing.B) (*queue.Queue, *Journal) {
	dir := b.TempDir()
	q, err := queue.Open(queue.Options{Dir: filepath.Join(dir, "spool"), Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	cfg := configOf(acctFile(filepath.Join(dir, "acct.csv"), defaultTypes, config.Unlimited, config.Never))
	set, err := OpenAll(cfg, Options{Logger: quiet, Journaled: true})
	if err != nil {
		b.Fatal(err)
	}
	j, err := StartJournal(q, set, JournalOptions{Logger: quiet, manual: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		j.Close()
		set.Close()
		q.Close()
	})
	return q, j
}

// benchWriteOut commits entries perBatch at a time (not measured) and
// writes each batch out.
func benchWriteOut(b *testing.B, perBatch int) {
	q, j := openBenchJournal(b)
	entry := j.Entry(fullRecord())
	m := queue.Message{Recipients: []queue.Recipient{{Address: "a@example.com", VMTA: "mta1"}}, Body: []byte("x")}
	b.ReportAllocs()
	b.ResetTimer()
	var cpu time.Duration // of the write-outs alone
	for done := 0; done < b.N; {
		n := min(perBatch, b.N-done)
		b.StopTimer()
		if _, err := q.PutJournaled(context.Background(), m, func(dst [][]byte, _ queue.ID, _ *queue.Message) [][]byte {
			for range n {
				dst = append(dst, entry)
			}
			return dst
		}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := cpuTime(b)
		got, err := j.drain()
		cpu += cpuTime(b) - start
		if err != nil || got != n {
			b.Fatalf("wrote out %d records (%v), want %d", got, err, n)
		}
		done += n
	}
	b.ReportMetric(float64(cpu)/float64(b.N)/1e3, "cpu-µs/op")
}

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
