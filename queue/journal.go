package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// The journal.
//
// Not everything Tern must not lose is mail. The accounting record of an
// outcome is one example: written to its file after the outcome's commit,
// a crash in between keeps the outcome and loses the record, and written
// before, a crash keeps the record of an outcome the spool forgot (the
// delivery is then repeated, and recorded twice). The journal closes that
// window. A journal entry is an opaque byte string committed in the same
// pebble batch as the spool change it belongs to: the message Put stores
// (PutJournaled), the outcomes the committer writes (Outcome.Journal), the
// removals of Delete and Expire (Options.RemovalJournal). After a crash an
// entry is there exactly when its change is, and it costs no commit or
// sync of its own.
//
// One consumer reads the entries in sequence order (ReadJournal), makes
// them durable where they belong, and acknowledges them (AckJournal),
// which deletes them; what is not acknowledged when the process stops is
// read again after the next Open.
//
// Sequence numbers are handed out in increasing order, but the batches
// that carry them commit in another order: Puts commit concurrently, and
// the committer's batch collects entries while Puts come and go. A reader
// that went past a number whose batch has yet to commit would never see
// that entry. So the queue keeps a watermark, the lowest number whose
// batch may still commit; everything below it is committed (or was given
// up with a failed commit, which stops the queue), and ReadJournal reads
// only below it. Every committed entry is thus read once, in number order.

// prefixJournal starts the journal's keys, j/<seq>, with seq 64-bit
// big-endian so the keys sort by number. j sorts between b and m, outside
// the m/ range the scan at Open reads.
const (
	prefixJournal = 'j'
	journalKeyLen = 10
)

func appendJournalKey(dst []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, prefixJournal, '/'), seq)
}

// journal hands out sequence numbers and keeps the watermark.
type journal struct {
	mu   sync.Mutex
	next uint64 // the next number to hand out
	// open are the runs of numbers whose batch has not committed yet, in
	// the order handed out, that is by their first number.
	open []*journalRun
	mark uint64 // every number below mark is committed or given up
	// moved receives (without blocking; one buffered signal) when mark
	// moves.
	moved chan struct{}
}

// journalRun is the run of numbers given to one batch.
type journalRun struct {
	first uint64
	done  bool
}

// begin starts a run of n numbers for a batch and returns it with its
// first number.
func (j *journal) begin(n int) (*journalRun, uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r := &journalRun{first: j.next}
	j.next += uint64(n)
	j.open = append(j.open, r)
	return r, r.first
}

// take hands out n more numbers to a batch whose run has begun: they are
// above the run's first, so the run's place in the watermark covers them.
func (j *journal) take(n int) uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := j.next
	j.next += uint64(n)
	return s
}

// end records that the batch of run r committed, or never will; nil does
// nothing.
func (j *journal) end(r *journalRun) {
	if r == nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	r.done = true
	i := 0
	for i < len(j.open) && j.open[i].done {
		j.open[i] = nil
		i++
	}
	j.open = j.open[i:]
	mark := j.next
	if len(j.open) > 0 {
		mark = j.open[0].first
	}
	if mark > j.mark {
		j.mark = mark
		select {
		case j.moved <- struct{}{}:
		default:
		}
	}
}

func (j *journal) watermark() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.mark
}

// openJournal seeds the numbers above the last entry in the spool: an
// entry left unacknowledged by the last run keeps its number, and new ones
// come after it.
func (q *Queue) openJournal() error {
	q.j.moved = make(chan struct{}, 1)
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixJournal, '/'}, UpperBound: []byte{prefixJournal, '/' + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	q.j.next = 1 // 0 stays free, so that reading "after 0" reads everything
	if it.Last() {
		k := it.Key()
		if len(k) != journalKeyLen {
			return fmt.Errorf("queue: journal key %q: %w", k, errCorrupt)
		}
		q.j.next = binary.BigEndian.Uint64(k[2:]) + 1
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("queue: read journal: %w", err)
	}
	q.j.mark = q.j.next
	return nil
}

// journalLocked adds entry to the committer's batch under the next
// number; q.mu must be held. The batch's run keeps the watermark below
// its entries until it commits.
func (q *Queue) journalLocked(entry []byte) {
	var seq uint64
	if q.pendRun == nil {
		q.pendRun, seq = q.j.begin(1)
	} else {
		seq = q.j.take(1)
	}
	q.kbuf = appendJournalKey(q.kbuf[:0], seq)
	_ = q.pend.Set(q.kbuf, entry, nil)
}

// PutJournaled is Put with journal entries committed in the same synced
// batch as the message: entries, if not nil, is called once the message
// has its ID (with Received, Size and the recipients' domains filled in as
// Put stores them) and returns the entries appended to dst; nil or empty
// entries are not stored. The message and its entries are durable
// together, or neither is.
func (q *Queue) PutJournaled(ctx context.Context, m Message, entries func(dst [][]byte, id ID, m *Message) [][]byte) (ID, error) {
	return q.put(ctx, m, entries)
}

// ReadJournal calls fn, in number order, with the committed journal
// entries numbered above after, at most max of them (max <= 0: no bound).
// It returns through, the number the journal has been read up to: every
// entry numbered from after+1 to through has been passed to fn, so the
// next call passes through as after. An entry committed later never gets a
// number at or below through. entry is valid only during the call; an
// error from fn stops the reading and is returned.
func (q *Queue) ReadJournal(after uint64, max int, fn func(seq uint64, entry []byte) error) (through uint64, err error) {
	if err := q.enter(); err != nil {
		return after, err
	}
	defer q.leave()
	mark := q.j.watermark()
	if mark <= after+1 {
		return after, nil
	}
	it, err := q.db.NewIter(&pebble.IterOptions{
		LowerBound: appendJournalKey(nil, after+1),
		UpperBound: appendJournalKey(nil, mark),
	})
	if err != nil {
		return after, err
	}
	defer it.Close()
	through = mark - 1
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) != journalKeyLen {
			return after, fmt.Errorf("queue: journal key %q: %w", k, errCorrupt)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return after, fmt.Errorf("queue: read journal: %w", err)
		}
		seq := binary.BigEndian.Uint64(k[2:])
		if err := fn(seq, v); err != nil {
			return after, err
		}
		if n++; max > 0 && n == max {
			through = seq
			break
		}
	}
	if err := it.Error(); err != nil {
		return after, fmt.Errorf("queue: read journal: %w", err)
	}
	return through, nil
}

// JournalMoved returns a channel that receives when entries may have
// become readable by ReadJournal. Signals are coalesced: one receive may
// stand for many commits, so a reader reads everything there is after
// each. It is meant for the journal's one reader.
func (q *Queue) JournalMoved() <-chan struct{} { return q.j.moved }

// JournalAck is what AckJournal commits in one batch.
type JournalAck struct {
	// Entries are the numbers of the entries acknowledged, which are
	// deleted. Each is deleted with a key of its own rather than a range:
	// pebble gathers a memtable's range deletions for every iterator
	// opened on it, so one range per acknowledgement would make every
	// read of the spool slower the longer a memtable lives, that is the
	// quieter the server (measured: a write-out of one record took 8
	// times longer after 10,000 acknowledgements in one memtable; with
	// point deletions it stays the same).
	Entries []uint64
	// States are named states (see PutState) stored in the same batch,
	// so that what the reader keeps about its progress changes atomically
	// with the entries it acknowledges; a nil value deletes the state.
	States map[string][]byte
	// Sync makes AckJournal return only once the batch, and everything
	// committed before it, is durable. Without it the batch becomes durable
	// with the next synced commit, and a crash before that brings the
	// entries (and the states as they were) back.
	Sync bool
}

// AckJournal commits a: the entries are deleted and the states stored, in
// one batch.
func (q *Queue) AckJournal(a JournalAck) error {
	if err := q.enter(); err != nil {
		return err
	}
	defer q.leave()
	b := q.db.NewBatchWithSize(len(a.Entries)*(journalKeyLen+8) + 64*len(a.States))
	var kb []byte
	for _, seq := range a.Entries {
		kb = appendJournalKey(kb[:0], seq)
		_ = b.Delete(kb, nil)
	}
	for name, v := range a.States {
		k, err := stateKey(name)
		if err != nil {
			_ = b.Close()
			return err
		}
		if v == nil {
			_ = b.Delete(k, nil)
		} else {
			_ = b.Set(k, v, nil)
		}
	}
	opts := pebble.NoSync
	if a.Sync {
		opts = pebble.Sync
		if b.Empty() {
			// Something for the WAL to sync: a sync is what was asked for.
			_ = b.LogData(nil, nil)
		}
	} else if b.Empty() {
		_ = b.Close()
		return nil
	}
	if err := commitWith(b, opts); err != nil {
		q.fail(err)
		return fmt.Errorf("queue: acknowledge journal: %w", err)
	}
	return nil
}
