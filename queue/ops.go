package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Pause stops leases for every key sel matches, now and for keys that
// appear later (a paused VMTA stays paused for new domains). Mail keeps
// arriving and deferrals keep coming due; they wait. Leases already out
// are unaffected. sel.JobID must be empty. It returns the number of
// existing keys that were not paused before. Pause state lives in memory
// only: a restart resumes everything.
func (q *Queue) Pause(sel Selector) (int, error) {
	if sel.JobID != "" {
		return 0, fmt.Errorf("%w: pause by job is not supported", ErrInvalid)
	}
	sel = sel.normalize()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shut {
		return 0, ErrClosed
	}
	if !slices.Contains(q.rules, sel) {
		q.rules = append(q.rules, sel)
	}
	n := 0
	for _, k := range q.keys {
		if sel.MatchesKey(k.key) && !k.paused {
			k.paused = true
			n++
		}
	}
	return n, nil
}

// Resume undoes Pause for every key sel matches, and drops the pause rules
// that sel covers. A key resumed individually while a broader rule remains
// (resume example.com/mta1 after pausing VMTA mta1) is resumed, but a key
// that appears later still starts paused under the broader rule. It
// returns the number of keys resumed.
func (q *Queue) Resume(sel Selector) (int, error) {
	if sel.JobID != "" {
		return 0, fmt.Errorf("%w: resume by job is not supported", ErrInvalid)
	}
	sel = sel.normalize()
	q.mu.Lock()
	if q.shut {
		q.mu.Unlock()
		return 0, ErrClosed
	}
	q.rules = slices.DeleteFunc(q.rules, sel.covers)
	n := 0
	var ready []Key
	for _, k := range q.keys {
		if !sel.MatchesKey(k.key) || !k.paused {
			continue
		}
		k.paused = false
		n++
		ready = q.signalLocked(k, false, ready)
		q.dropIfIdleLocked(k)
	}
	q.mu.Unlock()
	q.notify(ready)
	return n, nil
}

// RetryNow makes every deferred recipient that sel matches due at once, in
// the order of their next attempts, and returns how many it moved. The
// change is in memory only: after a restart the recorded next attempt
// applies again.
func (q *Queue) RetryNow(sel Selector) (int, error) {
	sel = sel.normalize()
	q.mu.Lock()
	if q.shut {
		q.mu.Unlock()
		return 0, ErrClosed
	}
	n := 0
	var ready []Key
	var moved []deferral
	for _, k := range q.keys {
		if !sel.MatchesKey(k.key) || len(k.deferred) == 0 {
			continue
		}
		moved = moved[:0]
		k.deferred.filter(func(d deferral) bool {
			if sel.JobID == "" || d.m.job == sel.JobID {
				moved = append(moved, d)
				return false
			}
			return true
		})
		slices.SortFunc(moved, func(a, b deferral) int {
			if a.less(b) {
				return -1
			}
			return 1
		})
		was := k.leasable()
		for _, d := range moved {
			k.ready.pushBack(d.ref)
		}
		n += len(moved)
		q.nDeferred -= len(moved)
		q.nReady += len(moved)
		q.due.fix(k)
		ready = q.signalLocked(k, was, ready)
	}
	q.rearmLocked()
	q.mu.Unlock()
	q.notify(ready)
	return n, nil
}

// Delete removes every recipient that sel matches: ready, deferred and
// leased ones (a worker's later outcome for a deleted recipient is
// ignored; Lease.Live tells it in advance). report, if not nil, is called
// with each removed recipient after its removal is durable; an entry that
// Options.RemovalJournal returns for it is committed with the removal.
// ctx is checked before anything is removed; once started, Delete
// finishes. It returns the number of recipients removed. Note the zero
// Selector matches everything.
func (q *Queue) Delete(ctx context.Context, sel Selector, report func(Removal)) (int, error) {
	return q.remove(ctx, sel, Deleted, 0, report)
}

// Expire removes every ready or deferred recipient that sel matches whose
// message was received more than maxAge ago; leased recipients are left to
// their worker. report, if not nil, is called with each, as for Delete; a
// Removal's Recipient.LastReply is the last diagnostic, for the bounce. It
// returns the number of recipients removed.
func (q *Queue) Expire(ctx context.Context, maxAge time.Duration, sel Selector, report func(Removal)) (int, error) {
	if maxAge < 0 {
		return 0, fmt.Errorf("%w: negative age", ErrInvalid)
	}
	cutoff := q.clock.Now().Add(-maxAge).UnixNano()
	return q.remove(ctx, sel, Expired, cutoff, report)
}

// removeChunk bounds how many removals are read and committed at a time,
// so a huge Delete neither holds everything in memory nor makes one giant
// batch.
const removeChunk = 4096

// remove implements Delete and Expire in three steps: detach the
// candidates from the index (so no worker can lease them, while their
// message's live count still includes them, so no sibling's outcome
// deletes the envelope under us); read their records for the report; then
// commit their removal like final outcomes.
func (q *Queue) remove(ctx context.Context, sel Selector, kind Kind, cutoff int64, report func(Removal)) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := q.enter(); err != nil {
		return 0, err
	}
	defer q.leave()
	sel = sel.normalize()
	match := func(m *msgInfo) bool {
		return (sel.JobID == "" || m.job == sel.JobID) && (kind != Expired || m.received < cutoff)
	}

	var cands []ref
	q.mu.Lock()
	for _, k := range q.keys {
		if !sel.MatchesKey(k.key) {
			continue
		}
		n0 := len(cands)
		k.ready.filter(func(r ref) bool {
			if match(r.m) {
				cands = append(cands, r)
				return false
			}
			return true
		})
		q.nReady -= len(cands) - n0
		n0 = len(cands)
		if len(k.deferred) > 0 {
			k.deferred.filter(func(d deferral) bool {
				if match(d.m) {
					cands = append(cands, d.ref)
					return false
				}
				return true
			})
			q.nDeferred -= len(cands) - n0
			q.due.fix(k)
		}
		if kind == Deleted {
			for l := range k.leases {
				for i := range l.slots {
					s := &l.slots[i]
					if s.state == slotHeld && match(s.m) {
						s.state = slotGone
						l.open--
						k.leased--
						q.nLeased--
						cands = append(cands, s.ref)
					}
				}
				l.finishIfDoneLocked()
			}
		}
		q.dropIfIdleLocked(k)
	}
	q.rearmLocked()
	var need uint64
	for _, r := range cands {
		need = maxU64(need, r.m.pend)
	}
	q.mu.Unlock()
	if len(cands) == 0 {
		return 0, nil
	}
	// From here on the candidates are out of the index; finish regardless
	// of ctx so they do not linger half-removed.
	bg := context.WithoutCancel(ctx)
	if err := q.waitDurable(bg, need); err != nil {
		return 0, err
	}
	done := 0
	for off := 0; off < len(cands); off += removeChunk {
		chunk := cands[off:min(off+removeChunk, len(cands))]
		removals, err := q.readRemovals(chunk, kind)
		if err != nil {
			return done, err
		}
		var entries [][]byte
		if q.opts.RemovalJournal != nil {
			entries = make([][]byte, len(removals))
			for i, rm := range removals {
				entries[i] = q.opts.RemovalJournal(rm)
			}
		}
		q.mu.Lock()
		for _, r := range chunk {
			q.finalLocked(r)
		}
		for _, e := range entries {
			if len(e) > 0 {
				q.journalLocked(e)
			}
		}
		q.trafficLocked().Removed += int64(len(chunk))
		gen := q.pendGen
		q.mu.Unlock()
		q.kickCommitter()
		if err := q.waitDurable(bg, gen); err != nil {
			return done, err
		}
		if report != nil {
			for _, rm := range removals {
				report(rm)
			}
		}
		done += len(chunk)
	}
	return done, nil
}

// readRemovals reads the envelopes and records of refs for reporting.
func (q *Queue) readRemovals(refs []ref, kind Kind) ([]Removal, error) {
	out := make([]Removal, 0, len(refs))
	envs := make(map[*msgInfo]Envelope)
	kb := make([]byte, 0, 15)
	for _, r := range refs {
		env, ok := envs[r.m]
		if !ok {
			v, c, err := q.db.Get(envelopeKey(r.m.id))
			switch {
			case err == nil:
				env, _, err = decodeEnvelope(v)
				c.Close()
				if err != nil {
					return nil, fmt.Errorf("queue: envelope %s: %w", r.m.id, err)
				}
			case errors.Is(err, pebble.ErrNotFound):
				q.log.Error("queue: envelope missing for removed recipient", "id", r.m.id)
			default:
				return nil, fmt.Errorf("queue: read envelope %s: %w", r.m.id, err)
			}
			envs[r.m] = env
		}
		rm := Removal{Kind: kind, ID: r.m.id, Envelope: env, Recipient: RecipientState{N: int(r.n)}}
		kb = appendRecipientKey(kb[:0], r.m.id, int(r.n))
		v, c, err := q.db.Get(kb)
		switch {
		case err == nil:
			rm.Recipient, err = decodeRecipient(v, int(r.n))
			c.Close()
			if err != nil {
				return nil, fmt.Errorf("queue: recipient %s/%d: %w", r.m.id, r.n, err)
			}
		case errors.Is(err, pebble.ErrNotFound):
			q.log.Error("queue: record missing for removed recipient", "id", r.m.id, "n", r.n)
		default:
			return nil, fmt.Errorf("queue: read recipient %s/%d: %w", r.m.id, r.n, err)
		}
		out = append(out, rm)
	}
	return out, nil
}

// Stats returns the state of one key. A key with nothing queued reports
// zero counts (and whether a pause rule covers it).
func (q *Queue) Stats(key Key) KeyStats {
	key.Domain = strings.ToLower(key.Domain)
	q.mu.Lock()
	defer q.mu.Unlock()
	if k := q.keys[key]; k != nil {
		return q.statsLocked(k, "")
	}
	return KeyStats{Key: key, Paused: q.rulePausedLocked(key)}
}

// Keys returns the stats of every non-empty or paused key that sel
// matches, largest first (ties by key name). With sel.JobID set, counts
// and ages cover only that job's recipients and keys without any are left
// out. It walks every queued recipient to find the oldest, so it costs
// O(recipients) (some milliseconds per million).
func (q *Queue) Keys(sel Selector) []KeyStats {
	sel = sel.normalize()
	q.mu.Lock()
	out := make([]KeyStats, 0, len(q.keys))
	for _, k := range q.keys {
		if !sel.MatchesKey(k.key) {
			continue
		}
		s := q.statsLocked(k, sel.JobID)
		if s.Total() > 0 || (sel.JobID == "" && s.Paused) {
			out = append(out, s)
		}
	}
	q.mu.Unlock()
	slices.SortFunc(out, func(a, b KeyStats) int {
		if c := cmp.Compare(b.Total(), a.Total()); c != 0 {
			return c
		}
		return cmp.Compare(a.Key.String(), b.Key.String())
	})
	return out
}

// statsLocked computes a key's stats, counting only job's recipients if job
// is not empty.
func (q *Queue) statsLocked(k *keyQueue, job string) KeyStats {
	s := KeyStats{Key: k.key, Paused: k.paused}
	oldest := int64(0)
	see := func(m *msgInfo) bool {
		if job != "" && m.job != job {
			return false
		}
		if oldest == 0 || m.received < oldest {
			oldest = m.received
		}
		return true
	}
	for i := 0; i < k.ready.len(); i++ {
		if see(k.ready.at(i).m) {
			s.Ready++
		}
	}
	next := int64(0)
	for _, d := range k.deferred {
		if see(d.m) {
			s.Deferred++
			if next == 0 || d.at < next {
				next = d.at
			}
		}
	}
	for l := range k.leases {
		for i := range l.slots {
			if l.slots[i].state == slotHeld && see(l.slots[i].m) {
				s.Leased++
			}
		}
	}
	if oldest != 0 {
		s.Oldest = time.Unix(0, oldest)
	}
	if next != 0 {
		s.NextAttempt = time.Unix(0, next)
	}
	return s
}

// Totals summarises the whole queue in constant time (plus a pass over the
// keys).
func (q *Queue) Totals() Totals {
	q.mu.Lock()
	defer q.mu.Unlock()
	t := Totals{
		Messages:   q.nMsgs,
		Ready:      q.nReady,
		Deferred:   q.nDeferred,
		Leased:     q.nLeased,
		Recipients: q.nReady + q.nDeferred + q.nLeased,
		Bytes:      q.bytes,
	}
	for _, k := range q.keys {
		if !k.empty() || k.paused {
			t.Keys++
		}
	}
	return t
}

// Ages counts the recipients that sel matches by the age of their message,
// a qshape-like view: with bounds b0 < b1 < ... the result has
// len(bounds)+1 buckets, bucket i counting ages in [b(i-1), b(i)) (from 0
// for the first) and the last counting ages of at least the last bound.
func (q *Queue) Ages(sel Selector, bounds []time.Duration) ([]int, error) {
	for i := 1; i < len(bounds); i++ {
		if bounds[i] <= bounds[i-1] {
			return nil, fmt.Errorf("%w: age bounds must increase", ErrInvalid)
		}
	}
	sel = sel.normalize()
	counts := make([]int, len(bounds)+1)
	now := q.clock.Now().UnixNano()
	add := func(m *msgInfo) {
		if sel.JobID != "" && m.job != sel.JobID {
			return
		}
		age := time.Duration(now - m.received)
		i, _ := slices.BinarySearch(bounds, age)
		if i < len(bounds) && bounds[i] == age {
			i++
		}
		counts[i]++
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, k := range q.keys {
		if !sel.MatchesKey(k.key) {
			continue
		}
		for i := 0; i < k.ready.len(); i++ {
			add(k.ready.at(i).m)
		}
		for _, d := range k.deferred {
			add(d.m)
		}
		for l := range k.leases {
			for i := range l.slots {
				if l.slots[i].state == slotHeld {
					add(l.slots[i].m)
				}
			}
		}
	}
	return counts, nil
}
