package acct

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// BenchmarkJournal measures the two halves of a record's way through the
// journal, for comparison with BenchmarkWrite (a record straight into
// the buffer of its file, the way before the journal):
//
//   - entry: what the worker that decides an outcome pays, encoding the
//     record into its entry (the entry then rides in a batch the spool
//     commits and syncs anyway);
//   - write-out: what the Journal pays per record, reading the entries,
//     appending the lines, syncing the file and acknowledging them, in
//     batches of perBatch records (about 100 ms of records at 4,000
//     a second); the spool and the file are on disk.
func BenchmarkJournal(b *testing.B) {
	const perBatch = 400
	r := fullRecord()
	open := func(b *testing.B) (*queue.Queue, *Set, *Journal) {
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
		return q, set, j
	}

	b.Run("entry", func(b *testing.B) {
		_, _, j := open(b)
		r.TimeLogged = time.Time{} // set by Entry, as for outcomes
		b.ReportAllocs()
		for b.Loop() {
			if e := j.Entry(r); e == nil {
				b.Fatal("no entry")
			}
		}
	})

	b.Run("write-out", func(b *testing.B) {
		q, _, j := open(b)
		entry := j.Entry(r)
		m := queue.Message{Recipients: []queue.Recipient{{Address: "a@example.com", VMTA: "mta1"}}, Body: []byte("x")}
		b.ReportAllocs()
		b.ResetTimer()
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
			got, err := j.drain()
			if err != nil || got != n {
				b.Fatalf("wrote out %d records (%v), want %d", got, err, n)
			}
			done += n
		}
	})
}
