package queue

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// Lease is a set of due recipients of one queue key handed to one delivery
// worker. No other worker gets them until the lease reports their outcome
// or releases them. A Lease is meant for one goroutine; its methods are safe
// to call concurrently with anything else in the queue.
type Lease struct {
	q *Queue
	k *keyQueue

	// Key is the queue key all recipients belong to.
	Key Key
	// Messages holds the leased recipients grouped by message, messages in
	// the order their first recipient was due, so that one SMTP
	// transaction can carry all recipients of an Entry.
	Messages []Entry

	slots []leaseSlot     // the recipients in the order they were due
	index map[slotKey]int // slot by recipient, for large leases
	// bodies are the bodies of fresh messages, taken from the index with
	// their envelopes: Body serves them without reading the spool.
	bodies map[ID][]byte
	open   int  // slots still held; guarded by q.mu
	done   bool // all slots reported, gone or released; guarded by q.mu
}

// Slot states, guarded by q.mu.
const (
	slotHeld     = iota // leased, outcome pending
	slotReported        // outcome recorded
	slotGone            // removed by Delete while leased
	slotReleased        // handed back by Release
)

type slotKey struct {
	id ID
	n  uint32
}

type leaseSlot struct {
	ref
	state uint8
	rec   *RecipientState // in Messages
}

// Lease hands out up to max due recipients of key, grouped by message, and
// reads their envelopes and recipient records from the spool. It returns a
// nil Lease and no error when the key has nothing due or is paused; use
// Wait to block until it has.
func (q *Queue) Lease(ctx context.Context, key Key, max int) (*Lease, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: lease of %d recipients", ErrInvalid, max)
	}
	if err := q.enter(); err != nil {
		return nil, err
	}
	defer q.leave()
	key.Domain = strings.ToLower(key.Domain)

	q.mu.Lock()
	k := q.keys[key]
	if k == nil || !k.leasable() {
		q.mu.Unlock()
		return nil, nil
	}
	n := min(max, k.ready.len())
	l := &Lease{q: q, k: k, Key: key, slots: make([]leaseSlot, 0, n), open: n}
	var need uint64
	for range n {
		r := k.ready.popFront()
		l.slots = append(l.slots, leaseSlot{ref: r})
		need = maxU64(need, r.m.pend)
	}
	k.leased += n
	q.nReady -= n
	q.nLeased += n
	if k.leases == nil {
		k.leases = make(map[*Lease]struct{})
	}
	k.leases[l] = struct{}{}
	durable := q.durableGen
	q.mu.Unlock()
	return l.start(ctx, need, durable)
}

// start reads the records of a lease whose slots were just taken from the
// index: after the commit holding the newest of them (need) when that was
// not yet durable (durable).
func (l *Lease) start(ctx context.Context, need, durable uint64) (*Lease, error) {
	// A recipient deferred a moment ago may have its new record still in the
	// committer's batch; read only after that batch is durable.
	if need > durable {
		if err := l.q.waitDurable(ctx, need); err != nil {
			l.Release()
			return nil, err
		}
	}
	if err := l.load(); err != nil {
		l.Release()
		return nil, err
	}
	if len(l.slots) == 0 {
		return nil, nil
	}
	return l, nil
}

func maxU64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// load groups the slots by message and reads their records with one
// iterator, in key order (a message's envelope sits right before its
// recipients, so each read is a short forward seek). Recipients whose
// records are missing cannot be delivered; they are logged and dropped
// from the queue.
func (l *Lease) load() error {
	q := l.q
	// Only the refs of the slots are read here: their state may change
	// under q.mu (Delete) while this runs.
	slots := l.slots
	groups := make(map[*msgInfo]int, len(slots))
	order := make([]*msgInfo, 0, len(slots))
	counts := make([]int, 0, len(slots))
	for i := range slots {
		m := slots[i].m
		g, ok := groups[m]
		if !ok {
			g = len(order)
			groups[m] = g
			order = append(order, m)
			counts = append(counts, 0)
		}
		counts[g]++
	}
	l.Messages = make([]Entry, len(order))
	recs := make([]RecipientState, len(slots))
	off := 0
	for i, m := range order {
		l.Messages[i] = Entry{ID: m.id, Recipients: recs[off : off : off+counts[i]]}
		off += counts[i]
	}

	// Messages still fresh from Put need no reads: take their copies
	// (a message is fresh for its first lease only, as later outcomes
	// change its records).
	fresh := make([]*freshMsg, len(order))
	nFresh := 0
	q.mu.Lock()
	for i, m := range order {
		if fresh[i] = q.dropFreshLocked(m); fresh[i] != nil {
			nFresh++
		}
	}
	q.mu.Unlock()
	envRead := make([]bool, len(order))
	envOK := make([]bool, len(order))
	found := make([]RecipientState, len(slots))
	ok := make([]bool, len(slots))
	if nFresh > 0 {
		l.bodies = make(map[ID][]byte, nFresh)
		for i, f := range fresh {
			if f != nil {
				l.Messages[i].Envelope = f.env
				envRead[i], envOK[i] = true, true
				l.bodies[order[i].id] = f.body
			}
		}
		for si := range slots {
			if f := fresh[groups[slots[si].m]]; f != nil && int(slots[si].n) < len(f.rcpts) {
				found[si], ok[si] = f.rcpts[slots[si].n], true
			}
		}
	}

	// Read the others in key order.
	byKey := make([]int, len(slots))
	for i := range byKey {
		byKey[i] = i
	}
	slices.SortFunc(byKey, func(a, b int) int {
		if c := cmp.Compare(slots[a].m.id, slots[b].m.id); c != 0 {
			return c
		}
		return cmp.Compare(slots[a].n, slots[b].n)
	})
	if nFresh == len(order) {
		byKey = byKey[:0]
	}
	var it *pebble.Iterator
	if len(byKey) > 0 {
		var err error
		if it, err = q.db.NewIter(&pebble.IterOptions{LowerBound: []byte("m/"), UpperBound: []byte("m0")}); err != nil {
			return err
		}
		defer it.Close()
	}
	seek := func(key []byte) ([]byte, bool, error) {
		if !it.SeekGE(key) || !bytes.Equal(it.Key(), key) {
			return nil, false, it.Error()
		}
		v, err := it.ValueAndErr()
		return v, err == nil, err
	}
	kb := make([]byte, 0, rcptKeyLen)
	for _, si := range byKey {
		s := slots[si].ref
		g := groups[s.m]
		if fresh[g] != nil {
			continue
		}
		if !envRead[g] {
			envRead[g] = true
			kb = append(append(kb[:0], prefixMessage, '/'), 0, 0, 0, 0, 0, 0, 0, 0)
			binary.BigEndian.PutUint64(kb[2:], uint64(s.m.id))
			v, present, err := seek(kb)
			if err != nil {
				return fmt.Errorf("queue: read envelope %s: %w", s.m.id, err)
			}
			if present {
				if l.Messages[g].Envelope, _, err = decodeEnvelope(v); err != nil {
					return fmt.Errorf("queue: envelope %s: %w", s.m.id, err)
				}
				envOK[g] = true
			}
		}
		if !envOK[g] {
			continue
		}
		kb = appendRecipientKey(kb[:0], s.m.id, int(s.n))
		v, present, err := seek(kb)
		if err != nil {
			return fmt.Errorf("queue: read recipient %s/%d: %w", s.m.id, s.n, err)
		}
		if present {
			if found[si], err = decodeRecipient(v, int(s.n)); err != nil {
				return fmt.Errorf("queue: recipient %s/%d: %w", s.m.id, s.n, err)
			}
			ok[si] = true
		}
	}

	// Assemble in the order the recipients were due, into a copy of the
	// slots: until the swap below, Delete may look at (and mark) l.slots
	// under q.mu.
	var lost []int
	kept := make([]leaseSlot, 0, len(slots))
	from := make([]int, 0, len(slots))
	for si := range slots {
		if !ok[si] {
			lost = append(lost, si)
			continue
		}
		s := leaseSlot{ref: slots[si].ref}
		e := &l.Messages[groups[s.m]]
		e.Recipients = append(e.Recipients, found[si])
		s.rec = &e.Recipients[len(e.Recipients)-1]
		kept = append(kept, s)
		from = append(from, si)
	}

	q.mu.Lock()
	for _, si := range lost {
		s := &slots[si]
		if s.state != slotHeld {
			continue // deleted meanwhile; Delete has finalized it
		}
		q.log.Error("queue: recipient record missing; dropped", "id", s.m.id, "n", s.n)
		s.state = slotGone
		l.k.leased--
		q.nLeased--
		l.open--
		q.finalLocked(s.ref)
	}
	for j := range kept {
		kept[j].state = slots[from[j]].state
	}
	l.slots = kept
	l.finishIfDoneLocked()
	q.mu.Unlock()
	if len(lost) > 0 {
		q.kickCommitter()
		msgs := l.Messages[:0]
		for _, e := range l.Messages {
			if len(e.Recipients) > 0 {
				msgs = append(msgs, e)
			}
		}
		l.Messages = msgs
	}
	if len(l.slots) > 32 {
		l.index = make(map[slotKey]int, len(l.slots))
		for i, s := range l.slots {
			l.index[slotKey{s.m.id, s.n}] = i
		}
	}
	return nil
}

// find returns the slot of recipient n of message id, or -1.
func (l *Lease) find(id ID, n int) int {
	if n < 0 {
		return -1
	}
	if l.index != nil {
		if i, ok := l.index[slotKey{id, uint32(n)}]; ok {
			return i
		}
		return -1
	}
	for i := range l.slots {
		if l.slots[i].m.id == id && int(l.slots[i].n) == n {
			return i
		}
	}
	return -1
}

// Body returns the body of message id; see Queue.Body. The body of a
// message leased fresh from Put comes from memory and is shared by the
// lease's callers: it must not be modified.
func (l *Lease) Body(id ID) ([]byte, error) {
	if b, ok := l.bodies[id]; ok {
		return b, nil
	}
	return l.q.Body(id)
}

// Live reports whether the lease still holds recipient n of message id,
// that is, its outcome is pending and no operator deleted it meanwhile. A
// worker can skip a transaction whose recipients are no longer live.
func (l *Lease) Live(id ID, n int) bool {
	i := l.find(id, n)
	if i < 0 {
		return false
	}
	l.q.mu.Lock()
	defer l.q.mu.Unlock()
	return l.slots[i].state == slotHeld
}

// Report records outcomes of leased recipients: Delivered and Bounced
// remove the recipient (and the message with its last recipient);
// Deferred keeps it with one more attempt, the reply and the next attempt
// at Until. The index changes at once; the spool changes, with each
// outcome's Journal entry, are committed by the background committer
// shortly after, together with other outcomes (use Queue.Flush to wait for
// durability). An outcome for a recipient deleted by an operator while
// leased is ignored, and so is its entry. Report fails, recording nothing,
// if any outcome names a recipient the lease does not hold or has an
// invalid kind.
func (l *Lease) Report(outs ...Outcome) error {
	q := l.q
	if err := q.enter(); err != nil {
		return err
	}
	defer q.leave()

	type prepared struct {
		slot    int
		kind    Kind
		at      int64
		val     []byte
		journal []byte
	}
	now := q.clock.Now()
	preps := make([]prepared, len(outs))
	for i, o := range outs {
		si := l.find(o.ID, o.N)
		if si < 0 {
			return fmt.Errorf("%w: %s/%d", ErrNotLeased, o.ID, o.N)
		}
		p := prepared{slot: si, kind: o.Kind, journal: o.Journal}
		switch o.Kind {
		case Delivered, Bounced:
		case Deferred:
			rs := *l.slots[si].rec
			rs.Attempts++
			rs.NextAttempt = o.Until
			rs.LastAttempt = now
			rs.LastReply = o.Reply
			p.val = appendRecipient(nil, &rs)
			p.at = o.Until.UnixNano()
			if o.Until.IsZero() {
				p.at = 0
			}
		default:
			return fmt.Errorf("%w: outcome kind %v cannot be reported", ErrInvalid, o.Kind)
		}
		preps[i] = p
	}

	var ready []Key
	q.mu.Lock()
	for q.pend.Len() > maxPendingBytes && q.failed.Load() == nil {
		ch := q.durableCh
		q.mu.Unlock()
		q.kickCommitter()
		<-ch
		q.mu.Lock()
	}
	if f := q.failed.Load(); f != nil {
		q.mu.Unlock()
		return f.wrapped()
	}
	// Validate states before changing anything.
	for i, p := range preps {
		switch l.slots[p.slot].state {
		case slotReported, slotReleased:
			q.mu.Unlock()
			return fmt.Errorf("%w: %s/%d", ErrNotLeased, outs[i].ID, outs[i].N)
		}
		for _, p2 := range preps[:i] {
			if p2.slot == p.slot {
				q.mu.Unlock()
				return fmt.Errorf("%w: %s/%d reported twice", ErrInvalid, outs[i].ID, outs[i].N)
			}
		}
	}
	k := l.k
	nowNs := now.UnixNano()
	was := k.leasable()
	deferred := false
	t := q.trafficLocked()
	for _, p := range preps {
		s := &l.slots[p.slot]
		if s.state == slotGone {
			s.state = slotReported
			continue
		}
		s.state = slotReported
		l.open--
		k.leased--
		q.nLeased--
		if len(p.journal) > 0 {
			q.journalLocked(p.journal)
		}
		if p.kind != Deferred {
			if p.kind == Delivered {
				t.Delivered++
			} else {
				t.Bounced++
			}
			q.finalLocked(s.ref)
			continue
		}
		t.Deferred++
		q.kbuf = appendRecipientKey(q.kbuf[:0], s.m.id, int(s.n))
		_ = q.pend.Set(q.kbuf, p.val, nil)
		s.m.pend = q.pendGen
		q.pendOps++
		if p.at <= nowNs {
			k.ready.pushBack(s.ref)
			q.nReady++
		} else {
			k.deferred.push(deferral{at: p.at, ref: s.ref})
			q.nDeferred++
			deferred = true
		}
	}
	if deferred {
		q.due.fix(k)
		q.rearmLocked()
	}
	ready = q.signalLocked(k, was, ready)
	l.finishIfDoneLocked()
	q.mu.Unlock()
	q.kickCommitter()
	q.notify(ready)
	return nil
}

// finishIfDoneLocked detaches a lease that holds nothing any more.
func (l *Lease) finishIfDoneLocked() {
	if l.open == 0 && !l.done {
		l.done = true
		delete(l.k.leases, l)
		l.q.dropIfIdleLocked(l.k)
	}
}

// Release hands the recipients whose outcome was not reported back to the
// front of their key's FIFO, due at once and with no attempt counted. It
// is safe to call more than once and after every outcome was reported, so
// workers can defer it.
func (l *Lease) Release() {
	q := l.q
	q.mu.Lock()
	if l.done || q.shut {
		q.mu.Unlock()
		return
	}
	k := l.k
	was := k.leasable()
	for i := len(l.slots) - 1; i >= 0; i-- {
		s := &l.slots[i]
		if s.state != slotHeld {
			continue
		}
		s.state = slotReleased
		k.ready.pushFront(s.ref)
		k.leased--
		q.nLeased--
		q.nReady++
	}
	l.open = 0
	ready := q.signalLocked(k, was, nil)
	l.finishIfDoneLocked()
	q.mu.Unlock()
	q.notify(ready)
}
