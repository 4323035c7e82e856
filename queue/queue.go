package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Options configure Open. Only Dir is required.
type Options struct {
	// Dir is the spool directory (created if missing).
	Dir string
	// FS is the filesystem pebble uses; nil means the real one. Tests pass
	// vfs.NewCrashableMem() or an errorfs wrapper.
	FS vfs.FS
	// Clock is the source of time for IDs, deferrals and ages; nil means
	// SystemClock.
	Clock Clock
	// Logger receives the queue's and pebble's logs; nil means
	// slog.Default().
	Logger *slog.Logger
	// OnReady, if set, is called when a key becomes ready: it had no
	// leasable recipients (or was paused) and now has some, because mail
	// arrived, a deferral came due, a lease was released or the key was
	// resumed or retried. It is called without locks held, possibly from
	// several goroutines at once, and must not block for long; it may call
	// back into the queue. It is a hint for a scheduler to start a worker;
	// Wait is the race-free way for a worker to wait.
	OnReady func(Key)
	// CacheSize is the memory for cached sstable blocks in bytes; 0 means
	// 64 MiB. Pebble charges memtables against its block cache, so the
	// queue gives pebble a cache of CacheSize plus room for all memtables;
	// pebble's memory for caching and memtables stays under that sum.
	CacheSize int64
	// MemTableSize is pebble's memtable size in bytes; 0 means 16 MiB,
	// about a second of 4 KB mail at 4,000 messages/s: most messages are
	// still delivered and deleted while their memtable is in memory.
	// 64 MiB was measured slower under load (each new memtable is fresh
	// memory to fault in, and a WAL is recycled, so that a sync stops
	// also writing the file's new size, only once the memtable before it
	// is flushed) and used more memory; see the README's Performance
	// section.
	MemTableSize uint64
	// MinSyncInterval is the least time between two syncs of the
	// write-ahead log; 0 means 500µs, negative means none. A commit that
	// comes sooner after the last sync waits for the rest of the interval,
	// and the commits arriving meanwhile share its sync: under load,
	// fewer and fuller fdatasyncs, each of which costs the machine far
	// more than the wait costs one client (about 10% of the CPU per
	// message at 3,500 messages/s with 20 clients, measured). After a
	// quiet spell the first commit syncs at once.
	MinSyncInterval time.Duration
	// Pebble, if set, may adjust pebble's options after the queue has set
	// its own, for tuning. Changing the Merger or FS breaks the queue.
	Pebble func(*pebble.Options)
	// RemovalJournal, if set, is called by Delete and Expire with each
	// recipient they remove, before the removal is committed; the entry it
	// returns (none if empty) is committed to the journal in the same
	// batch as the removal (see journal.go). It must not call the queue.
	RemovalJournal func(Removal) []byte
}

// maxPendingBytes bounds the outcomes waiting for the committer: a Report
// that finds more waits for the next commit, which gives backpressure
// instead of unbounded memory when the disk falls behind.
const maxPendingBytes = 8 << 20

// Queue is an open spool with its ready index. All methods are safe for
// concurrent use.
type Queue struct {
	opts  Options
	db    *pebble.DB
	clock Clock
	log   *slog.Logger
	ids   idGen

	// closeMu is held shared by every operation that touches pebble and
	// exclusively by Close, so Close waits for them and none starts after.
	closeMu sync.RWMutex
	closed  bool

	// failed is set once a commit fails. After an fsync failure the state of
	// the WAL is unknown and pebble treats further writes as fatal, so the
	// queue refuses all writes until it is reopened.
	failed atomic.Pointer[failure]

	mu        sync.Mutex
	shut      bool // Close has begun
	keys      map[Key]*keyQueue
	due       dueHeap    // keys with deferrals, by earliest deferral
	rules     []Selector // pause rules, so new keys start paused
	nMsgs     int
	nReady    int
	nDeferred int
	nLeased   int
	bytes     int64
	traffic   *trafficRing // counts for Traffic, guarded by mu
	// freshBytes is the size of the bodies held by msgInfo.fresh, kept
	// under maxFreshBytes (guarded by mu).
	freshBytes int64

	timer    Timer
	timerAt  int64 // Unix nanoseconds the timer is armed for; 0 if none
	timerGen uint64

	// The outcome committer. Mutations are appended to pend under mu, in
	// the order they were decided, and the committer commits the batch with
	// a synced write. Generations number the batches: everything appended
	// while pendGen was g is durable once durableGen >= g.
	pend       *pebble.Batch
	pendOps    int
	pendGen    uint64
	durableGen uint64
	durableCh  chan struct{} // closed and replaced after each commit
	stopping   bool
	kick       chan struct{}
	commitDone chan struct{}
	kbuf       []byte // scratch for keys appended under mu
	// pendRun holds the journal numbers of the entries in pend (nil if it
	// has none) below the watermark until pend commits.
	pendRun *journalRun

	j journal // numbers and watermark of the journal entries
}

type failure struct{ err error }

// Open opens (creating if needed) the spool in opts.Dir and rebuilds the
// ready index with one scan of envelopes and recipient records. Recipients
// that were leased when the process stopped are due again.
func Open(opts Options) (*Queue, error) {
	if opts.Dir == "" && opts.FS == nil {
		return nil, fmt.Errorf("%w: Options.Dir is empty", ErrInvalid)
	}
	if opts.Clock == nil {
		opts.Clock = SystemClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = 64 << 20
	}
	if opts.MemTableSize == 0 {
		opts.MemTableSize = 16 << 20
	}
	const memTables = 4
	bg := newBackgroundErrors(opts.Logger)
	po := &pebble.Options{
		FS:            opts.FS,
		Logger:        pebbleLogger{opts.Logger},
		EventListener: bg.listener(),
		Merger:        hwMerger,
		// Without the memtable share, a full memtable reserves the whole
		// cache and no block is ever cached: every lease then reads its
		// records from disk.
		CacheSize:                   opts.CacheSize + memTables*int64(opts.MemTableSize),
		MemTableSize:                opts.MemTableSize,
		MemTableStopWritesThreshold: memTables,
		FormatMajorVersion:          pebble.FormatNewest,
	}
	switch minSync := opts.MinSyncInterval; {
	case minSync == 0:
		minSync = defaultMinSyncInterval
		fallthrough
	case minSync > 0:
		po.WALMinSyncInterval = func() time.Duration { return minSync }
	}
	if po.FS == nil {
		po.FS = vfs.Default
	}
	// Bloom filters let a Get (a lease reads each envelope and recipient
	// record by key) skip sstables that do not hold the key; without them
	// every overlapping L0 file costs an index and a data block read.
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		po.Levels[i].FilterType = pebble.TableFilter
	}
	if opts.Pebble != nil {
		opts.Pebble(po)
	}
	start := time.Now()
	db, err := openWatched(opts.Dir, po, bg)
	if err != nil {
		return nil, fmt.Errorf("queue: open spool %s: %w", opts.Dir, err)
	}
	pebbleOpened := time.Since(start)
	q := &Queue{
		opts:       opts,
		db:         db,
		clock:      opts.Clock,
		log:        opts.Logger,
		keys:       make(map[Key]*keyQueue),
		traffic:    new(trafficRing),
		pendGen:    1,
		durableCh:  make(chan struct{}),
		kick:       make(chan struct{}, 1),
		commitDone: make(chan struct{}),
	}
	if err := q.rebuild(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := q.openJournal(); err != nil {
		_ = db.Close()
		return nil, err
	}
	q.pend = db.NewBatch()
	go q.commitLoop()
	q.mu.Lock()
	// Read under the lock: the timer armed here may promote due
	// deferrals at once.
	msgs, ready, deferred, keys := q.nMsgs, q.nReady, q.nDeferred, len(q.keys)
	q.rearmLocked()
	q.mu.Unlock()
	q.log.Info("queue: spool open", "dir", opts.Dir, "messages", msgs,
		"ready", ready, "deferred", deferred, "keys", keys,
		"elapsed", time.Since(start), "pebble", pebbleOpened)
	return q, nil
}

// rebuild scans the envelopes and recipient records (one range, in ID
// order) and fills the index. It also removes what a crash or bug could
// leave behind: recipient records without an envelope (their outcome was
// final) and envelopes without recipients.
func (q *Queue) rebuild() error {
	now := q.clock.Now().UnixNano()
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: []byte("m/"), UpperBound: []byte("m0")})
	if err != nil {
		return err
	}
	defer it.Close()

	var (
		garbage [][]byte
		maxID   ID
		cur     *msgInfo
		lookup  = make(map[string]*keyQueue) // domain NUL vmta -> key, lookups without allocating
		jobs    = make(map[string]string)    // interned job IDs
		namebuf []byte
	)
	endMessage := func() {
		if cur != nil && cur.live == 0 {
			garbage = append(garbage, envelopeKey(cur.id), bodyKey(cur.id))
			q.nMsgs--
			q.bytes -= int64(cur.size)
		}
		cur = nil
	}
	for ok := it.First(); ok; ok = it.Next() {
		id, n, valid := parseMessageKey(it.Key())
		if !valid {
			garbage = append(garbage, bytes.Clone(it.Key()))
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("queue: scan spool: %w", err)
		}
		if n < 0 { // an envelope: a new message
			endMessage()
			maxID = max(maxID, id)
			h, err := decodeEnvelopeHead(v)
			if err != nil {
				// Refuse rather than guess: a record this version cannot
				// read may be from a newer Tern, and must not be dropped.
				return fmt.Errorf("queue: scan spool: envelope %s: %w", id, err)
			}
			job, ok := jobs[string(h.job)]
			if !ok {
				job = string(h.job)
				jobs[job] = job
			}
			if h.received == 0 {
				h.received = int64(id)
			}
			cur = &msgInfo{id: id, received: h.received, job: job, size: uint32(min(h.size, 1<<32-1))}
			q.nMsgs++
			q.bytes += int64(cur.size)
			continue
		}
		if cur == nil || cur.id != id { // no envelope
			garbage = append(garbage, bytes.Clone(it.Key()))
			continue
		}
		h, err := decodeRecipientHead(v)
		if err != nil {
			return fmt.Errorf("queue: scan spool: recipient %s/%d: %w", id, n, err)
		}
		namebuf = append(append(append(namebuf[:0], h.domain...), 0), h.vmta...)
		k, ok := lookup[string(namebuf)]
		if !ok {
			k = q.getKeyLocked(Key{VMTA: string(h.vmta), Domain: string(h.domain)})
			lookup[string(namebuf)] = k
		}
		cur.live++
		r := ref{m: cur, n: uint32(n)}
		if h.next > now {
			k.deferred = append(k.deferred, deferral{at: h.next, ref: r})
			q.nDeferred++
		} else {
			k.ready.pushBack(r)
			q.nReady++
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("queue: scan spool: %w", err)
	}
	endMessage()
	for _, k := range q.keys {
		k.deferred.init()
		q.due.fix(k)
	}

	// Seed the ID generator above everything ever issued.
	hw := uint64(maxID)
	if v, c, err := q.db.Get(hwKey); err == nil {
		if len(v) == 8 {
			hw = max(hw, binary.BigEndian.Uint64(v))
		}
		c.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("queue: read id high-water mark: %w", err)
	}
	q.ids.seed(hw)

	if len(garbage) > 0 {
		b := q.db.NewBatch()
		for _, k := range garbage {
			_ = b.Delete(k, nil)
		}
		if err := commitSync(b); err != nil {
			return fmt.Errorf("queue: remove stale records: %w", err)
		}
		q.log.Warn("queue: removed stale records at open", "records", len(garbage))
	}
	return nil
}

// enter marks the start of an operation that uses pebble.
func (q *Queue) enter() error {
	q.closeMu.RLock()
	if q.closed {
		q.closeMu.RUnlock()
		return ErrClosed
	}
	if f := q.failed.Load(); f != nil {
		q.closeMu.RUnlock()
		return f.wrapped()
	}
	return nil
}

func (q *Queue) leave() { q.closeMu.RUnlock() }

func (f *failure) wrapped() error {
	return fmt.Errorf("queue: spool write failed earlier, reopen required: %w", f.err)
}

// fail records the first commit failure and wakes everyone waiting for a
// commit.
func (q *Queue) fail(err error) {
	q.mu.Lock()
	q.failLocked(err)
	q.mu.Unlock()
}

func (q *Queue) failLocked(err error) {
	if q.failed.Load() != nil {
		return
	}
	q.failed.Store(&failure{err})
	q.log.Error("queue: spool commit failed; refusing writes until reopened", "err", err)
	close(q.durableCh)
	q.durableCh = make(chan struct{})
}

// DiskUsage is the space the spool takes on disk: pebble's tables, logs
// and other files, which can exceed the queued messages' bytes (deleted
// data waits for compaction).
func (q *Queue) DiskUsage() uint64 {
	if err := q.enter(); err != nil {
		return 0
	}
	defer q.leave()
	return q.db.Metrics().DiskSpaceUsage()
}

// Failed returns the error that made the queue refuse writes (a failed
// commit, after which pebble's log is in an unknown state), or nil while
// it works. Only reopening the spool clears it.
func (q *Queue) Failed() error {
	if f := q.failed.Load(); f != nil {
		return f.err
	}
	return nil
}

// Put stores m and returns its queue ID once the envelope, body and
// recipients are durable (a synced pebble commit). ctx is checked before
// the commit starts; a commit in progress cannot be abandoned. Put fills in
// Received (now) and Size (len(Body)) when they are zero, derives a missing
// Recipient.Domain from the address and lower-cases domains. It keeps no
// reference to m.Body after returning.
func (q *Queue) Put(ctx context.Context, m Message) (ID, error) {
	return q.put(ctx, m, nil)
}

// put is Put, with the journal entries of PutJournaled.
func (q *Queue) put(ctx context.Context, m Message, entries func(dst [][]byte, id ID, m *Message) [][]byte) (ID, error) {
	p, err := prepare(&m)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := q.enter(); err != nil {
		return 0, err
	}
	defer q.leave()

	now := q.clock.Now()
	p.fill(now, len(m.Body))
	p.id = q.ids.next(now)
	b := q.db.NewBatchWithSize(len(m.Body) + 256 + 128*len(p.rcpts))
	p.write(b, m.Body)
	var run *journalRun
	if entries != nil {
		run = p.journal(b, &q.j, m.Body, entries)
	}
	err = commitSync(b)
	q.j.end(run)
	if err != nil {
		q.fail(err)
		return 0, fmt.Errorf("queue: put: %w", err)
	}
	q.index(p, m.Body)
	return p.id, nil
}

// maxFreshBytes bounds the bodies kept in memory for messages not leased
// yet; past it (delivery slower than intake, a paused queue), leases read
// from the spool.
const maxFreshBytes = 64 << 20

// prepared is a validated message on its way into the spool.
type prepared struct {
	id    ID
	env   Envelope
	rcpts []RecipientState
}

// prepare validates m and normalises its recipients.
func prepare(m *Message) (*prepared, error) {
	if len(m.Recipients) == 0 {
		return nil, fmt.Errorf("%w: message without recipients", ErrInvalid)
	}
	p := &prepared{env: m.Envelope, rcpts: make([]RecipientState, len(m.Recipients))}
	for i, r := range m.Recipients {
		if r.Address == "" {
			return nil, fmt.Errorf("%w: recipient %d has no address", ErrInvalid, i)
		}
		if r.Domain == "" {
			at := strings.LastIndexByte(r.Address, '@')
			if at < 0 || at == len(r.Address)-1 {
				return nil, fmt.Errorf("%w: recipient %q has no domain", ErrInvalid, r.Address)
			}
			r.Domain = r.Address[at+1:]
		}
		r.Domain = strings.ToLower(r.Domain)
		p.rcpts[i] = RecipientState{N: i, Recipient: r}
	}
	return p, nil
}

// fill sets the envelope defaults.
func (p *prepared) fill(now time.Time, bodyLen int) {
	if p.env.Received.IsZero() {
		p.env.Received = now
	}
	if p.env.Size == 0 {
		p.env.Size = int64(bodyLen)
	}
}

// write adds the message's records to b.
func (p *prepared) write(b *pebble.Batch, body []byte) {
	buf := appendEnvelope(make([]byte, 0, 256), &p.env, len(p.rcpts))
	_ = b.Set(envelopeKey(p.id), buf, nil)
	_ = b.Set(bodyKey(p.id), body, nil)
	var kb []byte
	for i := range p.rcpts {
		kb = appendRecipientKey(kb[:0], p.id, i)
		buf = appendRecipient(buf[:0], &p.rcpts[i])
		_ = b.Set(kb, buf, nil)
	}
	_ = b.Merge(hwKey, binary.BigEndian.AppendUint64(buf[:0], uint64(p.id)), nil)
}

// journal adds the journal entries that entries returns for the message to
// b, and returns their run of numbers, to be ended once b is committed (or
// failed); nil if there are none.
func (p *prepared) journal(b *pebble.Batch, j *journal, body []byte, entries func(dst [][]byte, id ID, m *Message) [][]byte) *journalRun {
	m := Message{Envelope: p.env, Recipients: make([]Recipient, len(p.rcpts)), Body: body}
	for i := range p.rcpts {
		m.Recipients[i] = p.rcpts[i].Recipient
	}
	list := entries(nil, p.id, &m)
	n := 0
	for _, e := range list {
		if len(e) > 0 {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	run, seq := j.begin(n)
	var kb []byte
	for _, e := range list {
		if len(e) > 0 {
			kb = appendJournalKey(kb[:0], seq)
			_ = b.Set(kb, e, nil)
			seq++
		}
	}
	return run
}

// index adds a committed message to the ready index, keeping it fresh for
// its first lease when body (nil: never) fits.
func (q *Queue) index(p *prepared, body []byte) {
	mi := &msgInfo{
		id:       p.id,
		received: p.env.Received.UnixNano(),
		job:      p.env.JobID,
		live:     int32(len(p.rcpts)),
		size:     uint32(min(max(p.env.Size, 0), 1<<32-1)),
	}
	// Room for the fresh copy is reserved first, so a backlog at the
	// bound costs no copy; the copy is made outside the lock.
	var f *freshMsg
	q.mu.Lock()
	if body != nil && q.freshBytes+int64(len(body)) <= maxFreshBytes {
		q.freshBytes += int64(len(body))
		f = &freshMsg{}
	}
	q.mu.Unlock()
	if f != nil {
		// Put's caller may reuse its buffer.
		f.env, f.rcpts, f.body = p.env, p.rcpts, bytes.Clone(body)
		// The time as the spool gives it back, without a monotonic reading.
		f.env.Received = time.Unix(0, f.env.Received.UnixNano())
		mi.fresh = f
	}
	var ready []Key
	q.mu.Lock()
	q.nMsgs++
	q.bytes += int64(mi.size)
	t := q.trafficLocked()
	t.MessagesIn++
	t.RecipientsIn += int64(len(p.rcpts))
	for i := range p.rcpts {
		k := q.getKeyLocked(p.rcpts[i].Key())
		was := k.leasable()
		k.ready.pushBack(ref{m: mi, n: uint32(i)})
		q.nReady++
		ready = q.signalLocked(k, was, ready)
	}
	q.mu.Unlock()
	q.notify(ready)
}

// Body returns a copy of the body of message id.
func (q *Queue) Body(id ID) ([]byte, error) {
	if err := q.enter(); err != nil {
		return nil, err
	}
	defer q.leave()
	v, c, err := q.db.Get(bodyKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: read body %s: %w", id, err)
	}
	body := bytes.Clone(v)
	c.Close()
	return body, nil
}

// Lookup returns the envelope and the recipients still queued of message
// id, as of the last commit (outcomes reported since the last commit may not
// be reflected yet; Flush first for that).
func (q *Queue) Lookup(id ID) (Entry, error) {
	if err := q.enter(); err != nil {
		return Entry{}, err
	}
	defer q.leave()
	lo, hi := messageBounds(id)
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return Entry{}, err
	}
	defer it.Close()
	if !it.First() || len(it.Key()) != envKeyLen {
		if err := it.Error(); err != nil {
			return Entry{}, err
		}
		return Entry{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return Entry{}, err
	}
	env, _, err := decodeEnvelope(v)
	if err != nil {
		return Entry{}, fmt.Errorf("queue: envelope %s: %w", id, err)
	}
	e := Entry{ID: id, Envelope: env}
	for it.Next() {
		_, n, ok := parseMessageKey(it.Key())
		if !ok || n < 0 {
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return Entry{}, err
		}
		r, err := decodeRecipient(v, n)
		if err != nil {
			return Entry{}, fmt.Errorf("queue: recipient %s/%d: %w", id, n, err)
		}
		e.Recipients = append(e.Recipients, r)
	}
	return e, it.Error()
}

// Flush waits until every outcome reported and every operation applied
// before the call is durable.
func (q *Queue) Flush(ctx context.Context) error {
	if err := q.enter(); err != nil {
		return err
	}
	defer q.leave()
	q.mu.Lock()
	target := q.pendGen
	if q.pendOps == 0 {
		target--
	}
	q.mu.Unlock()
	return q.waitDurable(ctx, target)
}

// waitDurable waits until batch generation gen has been committed.
func (q *Queue) waitDurable(ctx context.Context, gen uint64) error {
	for {
		q.mu.Lock()
		if f := q.failed.Load(); f != nil {
			q.mu.Unlock()
			return f.wrapped()
		}
		if q.durableGen >= gen {
			q.mu.Unlock()
			return nil
		}
		ch := q.durableCh
		q.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// defaultMinSyncInterval is Options.MinSyncInterval's default, the value
// pebble's documentation suggests; 250µs to 1ms measured about the same.
const defaultMinSyncInterval = 500 * time.Microsecond

// commitLoop is the outcome committer: it commits whatever has accumulated
// in pend with one synced write, so outcomes from all workers share fsyncs
// no matter how few arrive at a time.
func (q *Queue) commitLoop() {
	defer close(q.commitDone)
	for {
		q.mu.Lock()
		for q.pendOps == 0 && !q.stopping {
			q.mu.Unlock()
			<-q.kick
			q.mu.Lock()
		}
		if q.failed.Load() != nil && q.pendOps > 0 {
			// Nothing more can be committed; drop what is pending (it
			// stays in effect in memory only) and wait for Close.
			_ = q.pend.Close()
			q.pend = q.db.NewBatch()
			q.pendOps = 0
			q.j.end(q.pendRun)
			q.pendRun = nil
		}
		if q.pendOps == 0 {
			q.mu.Unlock()
			if q.stopping {
				return
			}
			continue
		}
		b, gen, run := q.pend, q.pendGen, q.pendRun
		q.pend = q.db.NewBatch()
		q.pendOps = 0
		q.pendGen++
		q.pendRun = nil
		q.mu.Unlock()

		err := commitSync(b)
		q.j.end(run)

		q.mu.Lock()
		if err != nil {
			q.failLocked(err)
		} else {
			q.durableGen = gen
			close(q.durableCh)
			q.durableCh = make(chan struct{})
		}
		q.mu.Unlock()
	}
}

func (q *Queue) kickCommitter() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// finalLocked records that recipient r left the queue for good: its record
// is deleted, and the envelope and body with the last one.
func (q *Queue) finalLocked(r ref) {
	m := r.m
	q.kbuf = appendRecipientKey(q.kbuf[:0], m.id, int(r.n))
	_ = q.pend.Delete(q.kbuf, nil)
	m.live--
	if m.live == 0 {
		q.kbuf = append(append(q.kbuf[:0], prefixMessage, '/'), 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint64(q.kbuf[2:], uint64(m.id))
		_ = q.pend.Delete(q.kbuf, nil)
		q.kbuf[0] = prefixBody
		_ = q.pend.Delete(q.kbuf, nil)
		q.nMsgs--
		q.bytes -= int64(m.size)
		q.trafficLocked().MessagesOut++
		q.dropFreshLocked(m)
	}
	m.pend = q.pendGen
	q.pendOps++
}

// dropFreshLocked forgets m's fresh copy; q.mu must be held.
func (q *Queue) dropFreshLocked(m *msgInfo) *freshMsg {
	f := m.fresh
	if f != nil {
		m.fresh = nil
		q.freshBytes -= int64(len(f.body))
	}
	return f
}

// Close waits for operations in progress, commits the outcomes reported so
// far and closes the spool. Leases still outstanding are abandoned: their
// recipients are due again at the next Open.
func (q *Queue) Close() error {
	q.closeMu.Lock()
	if q.closed {
		q.closeMu.Unlock()
		return ErrClosed
	}
	q.closed = true
	q.closeMu.Unlock()

	q.mu.Lock()
	q.shut = true
	q.stopping = true
	if q.timer != nil {
		q.timer.Stop()
		q.timer = nil
	}
	q.timerGen++
	for _, k := range q.keys {
		if k.wake != nil {
			close(k.wake)
			k.wake = nil
		}
	}
	q.mu.Unlock()
	q.kickCommitter()
	<-q.commitDone
	q.mu.Lock()
	_ = q.pend.Close()
	q.j.end(q.pendRun) // nothing left to commit: the committer took all
	q.pendRun = nil
	q.mu.Unlock()
	err := q.db.Close()
	if f := q.failed.Load(); f != nil && err == nil {
		err = f.wrapped()
	}
	return err
}

// getKeyLocked returns the index of key, creating it (paused if a pause
// rule matches) if needed.
func (q *Queue) getKeyLocked(key Key) *keyQueue {
	k := q.keys[key]
	if k == nil {
		k = &keyQueue{key: key, dueIdx: -1, paused: q.rulePausedLocked(key)}
		q.keys[key] = k
	}
	return k
}

func (q *Queue) rulePausedLocked(key Key) bool {
	for _, r := range q.rules {
		if r.MatchesKey(key) {
			return true
		}
	}
	return false
}

// dropIfIdleLocked forgets a key that holds nothing, unless forgetting it
// would lose state (waiters, or a pause state that differs from what the
// rules would give a new key).
func (q *Queue) dropIfIdleLocked(k *keyQueue) {
	if k.empty() && k.waiters == 0 && k.paused == q.rulePausedLocked(k.key) && q.keys[k.key] == k {
		delete(q.keys, k.key)
	}
}

// signalLocked is called after k's ready FIFO or pause state changed; was is
// k.leasable() from before the change. On a transition to leasable it wakes
// Wait callers and appends the key to out for OnReady.
func (q *Queue) signalLocked(k *keyQueue, was bool, out []Key) []Key {
	if was || !k.leasable() {
		return out
	}
	if k.wake != nil {
		close(k.wake)
		k.wake = nil
	}
	if q.opts.OnReady != nil {
		out = append(out, k.key)
	}
	return out
}

func (q *Queue) notify(keys []Key) {
	for _, k := range keys {
		q.opts.OnReady(k)
	}
}

// rearmLocked makes sure the timer fires no later than the earliest
// deferral.
func (q *Queue) rearmLocked() {
	if q.shut {
		return
	}
	if len(q.due) == 0 {
		if q.timer != nil {
			q.timer.Stop()
			q.timer, q.timerAt = nil, 0
			q.timerGen++
		}
		return
	}
	at := q.due[0].deferred[0].at
	if q.timer != nil && q.timerAt <= at {
		return // fires first and re-arms
	}
	if q.timer != nil {
		q.timer.Stop()
	}
	q.timerGen++
	gen := q.timerGen
	q.timerAt = at
	d := time.Duration(at - q.clock.Now().UnixNano())
	q.timer = q.clock.AfterFunc(max(d, 0), func() { q.onTimer(gen) })
}

func (q *Queue) onTimer(gen uint64) {
	q.mu.Lock()
	if gen != q.timerGen || q.shut {
		q.mu.Unlock()
		return
	}
	q.timer, q.timerAt = nil, 0
	ready := q.promoteLocked(q.clock.Now().UnixNano(), nil)
	q.rearmLocked()
	q.mu.Unlock()
	q.notify(ready)
}

// promoteLocked moves every deferral due at now into its key's FIFO.
func (q *Queue) promoteLocked(now int64, ready []Key) []Key {
	for len(q.due) > 0 && q.due[0].deferred[0].at <= now {
		k := q.due[0]
		was := k.leasable()
		for len(k.deferred) > 0 && k.deferred[0].at <= now {
			d := k.deferred.pop()
			k.ready.pushBack(d.ref)
			q.nDeferred--
			q.nReady++
		}
		q.due.fix(k)
		ready = q.signalLocked(k, was, ready)
	}
	return ready
}

// Wait blocks until key has recipients that Lease would hand out (due and
// not paused), ctx is done, or the queue is closed.
func (q *Queue) Wait(ctx context.Context, key Key) error {
	key.Domain = strings.ToLower(key.Domain)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shut {
		return ErrClosed
	}
	k := q.getKeyLocked(key)
	defer q.dropIfIdleLocked(k)
	for !k.leasable() {
		if k.wake == nil {
			k.wake = make(chan struct{})
		}
		ch := k.wake
		k.waiters++
		q.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		q.mu.Lock()
		k.waiters--
		if q.shut {
			return ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// pebbleLogger routes pebble's logs to slog.
//
// Pebble calls Fatalf when it cannot go on, and expects it not to return;
// its default logger exits the process. This one panics with a
// *fatalError instead. In pebble's background goroutines that still ends
// the process, as pebble intends, but commitSync recovers it: a failed WAL
// write or sync during a commit (pebble's "fatal commit error") then
// becomes an error from Put, and the queue refuses further writes until it
// is reopened, instead of the whole daemon dying while other sessions are
// mid-transaction.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.l.Enabled(context.Background(), slog.LevelDebug) {
		p.l.Debug("pebble: " + fmt.Sprintf(format, args...))
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error("pebble: " + fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	fe := &fatalError{msg: "pebble: " + fmt.Sprintf(format, args...)}
	for _, a := range args {
		if err, ok := a.(error); ok {
			fe.err = err
			break
		}
	}
	p.l.Error(fe.msg)
	panic(fe)
}

// fatalError is the panic value of pebbleLogger.Fatalf.
type fatalError struct {
	msg string
	err error
}

func (e *fatalError) Error() string { return e.msg }
func (e *fatalError) Unwrap() error { return e.err }

// commitSync commits b with a synced WAL write and closes it, turning
// pebble's fatal commit error into an error (see pebbleLogger).
func commitSync(b *pebble.Batch) error { return commitWith(b, pebble.Sync) }

// commitWith is commitSync with the write options given.
func commitWith(b *pebble.Batch, opts *pebble.WriteOptions) (err error) {
	defer func() {
		if r := recover(); r != nil {
			fe, ok := r.(*fatalError)
			if !ok {
				panic(r)
			}
			err = fe
		}
		_ = b.Close()
	}()
	return b.Commit(opts)
}

// hwMerger keeps the maximum of 8-byte big-endian operands. Every Put
// merges its ID into s/hw, so the spool remembers the highest ID ever
// issued even after those messages are gone, without Puts having to agree
// on an order.
var hwMerger = &pebble.Merger{
	Name: "tern.queue.max64",
	Merge: func(key, value []byte) (pebble.ValueMerger, error) {
		m := &maxMerger{}
		return m, m.MergeNewer(value)
	},
}

type maxMerger struct{ v [8]byte }

func (m *maxMerger) MergeNewer(value []byte) error {
	if len(value) == 8 && bytes.Compare(value, m.v[:]) > 0 {
		copy(m.v[:], value)
	}
	return nil
}

func (m *maxMerger) MergeOlder(value []byte) error { return m.MergeNewer(value) }

func (m *maxMerger) Finish(bool) ([]byte, io.Closer, error) { return m.v[:], nil, nil }
