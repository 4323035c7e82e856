package queue

import "time"

// Traffic counts what went through the queue during a recent window: the
// operator's "how much per minute, per hour" without a metrics server.
type Traffic struct {
	MessagesIn   int64 // messages stored by Put
	RecipientsIn int64 // their recipients
	Delivered    int64 // recipients reported Delivered
	Deferred     int64 // deferrals reported (one recipient can count more than once)
	Bounced      int64 // recipients reported Bounced
	Removed      int64 // recipients deleted or expired by an operator
	MessagesOut  int64 // messages whose last recipient left the queue
}

func (t *Traffic) add(o *Traffic) {
	t.MessagesIn += o.MessagesIn
	t.RecipientsIn += o.RecipientsIn
	t.Delivered += o.Delivered
	t.Deferred += o.Deferred
	t.Bounced += o.Bounced
	t.Removed += o.Removed
	t.MessagesOut += o.MessagesOut
}

// trafficSpan is the longest window Traffic can answer for.
const trafficSpan = 3600

// trafficRing holds one Traffic per second of the last hour. A bucket is
// reset when a new second lands on it, so no timer sweeps it.
type trafficRing struct {
	sec [trafficSpan]int64
	b   [trafficSpan]Traffic
}

// at is the bucket of the Unix second now.
func (r *trafficRing) at(now int64) *Traffic {
	i := now % trafficSpan
	if r.sec[i] != now {
		r.sec[i], r.b[i] = now, Traffic{}
	}
	return &r.b[i]
}

// sum adds the buckets of the last secs seconds up to now.
func (r *trafficRing) sum(now int64, secs int64) Traffic {
	var t Traffic
	for s := now - secs + 1; s <= now; s++ {
		if i := s % trafficSpan; s >= 0 && r.sec[i] == s {
			t.add(&r.b[i])
		}
	}
	return t
}

// trafficLocked is the current second's bucket; q.mu must be held.
func (q *Queue) trafficLocked() *Traffic {
	return q.traffic.at(q.clock.Now().Unix())
}

// Traffic reports what went through the queue in the last window (rounded
// to whole seconds, at most an hour) since this Open.
func (q *Queue) Traffic(window time.Duration) Traffic {
	secs := int64(window / time.Second)
	secs = min(max(secs, 1), trafficSpan)
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.traffic.sum(q.clock.Now().Unix(), secs)
}
