package queue

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// LeaseExpired is Lease for the due recipients of key whose message was
// received before cutoff, wherever they stand in the key's FIFO; the
// others keep their places. It is how delivery bounces the expired mail
// of a queue it holds without sending (max-msg-rate 0): the FIFO's front
// may be younger mail that must stay. Deferred recipients are not
// considered: a deferral never lasts past the message's expiry, so an
// expired recipient is due. It returns a nil Lease and no error when no
// such recipient is due, or the key is paused.
func (q *Queue) LeaseExpired(ctx context.Context, key Key, cutoff time.Time, max int) (*Lease, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: lease of %d recipients", ErrInvalid, max)
	}
	if err := q.enter(); err != nil {
		return nil, err
	}
	defer q.leave()
	key.Domain = strings.ToLower(key.Domain)
	before := cutoff.UnixNano()

	q.mu.Lock()
	k := q.keys[key]
	if k == nil || !k.leasable() {
		q.mu.Unlock()
		return nil, nil
	}
	l := &Lease{q: q, k: k, Key: key}
	var need uint64
	k.ready.filter(func(r ref) bool {
		if len(l.slots) < max && r.m.received < before {
			l.slots = append(l.slots, leaseSlot{ref: r})
			need = maxU64(need, r.m.pend)
			return false
		}
		return true
	})
	n := len(l.slots)
	if n == 0 {
		q.mu.Unlock()
		return nil, nil
	}
	l.open = n
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
