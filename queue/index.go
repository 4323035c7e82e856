package queue

// The ready index.
//
// It holds only what scheduling needs: per message one msgInfo (48 bytes:
// ID, received time, job, size, live-recipient count and the committer
// generation of its last pending write), and per queued recipient one slot
// in its key's FIFO (16 bytes: message pointer and recipient index) or
// deferral heap (24 bytes: plus the next-attempt time). Addresses, envelopes
// and bodies stay in the spool and are read when a recipient is leased.
//
// With one recipient per message (the worst case) that is 48 + 16 = 64
// bytes for a due recipient and 72 for a deferred one, plus the slack of
// slices that grow by doubling. BenchmarkReopen1M measures 74 bytes per
// recipient for 1M one-recipient messages, a fifth of them deferred. With
// several recipients per message the msgInfo is shared and the cost per
// recipient falls towards 16-24 bytes.

// msgInfo is the in-memory state of one queued message, shared by all its
// recipients in whatever keys they are queued.
type msgInfo struct {
	id       ID
	received int64  // Unix nanoseconds
	job      string // JobID, for Delete and views by job
	pend     uint64 // committer generation of the last write queued for this message
	live     int32  // recipients not yet final
	size     uint32 // Envelope.Size, for Totals.Bytes
	// fresh holds what Put wrote, until the message's first lease takes
	// it (guarded by Queue.mu): most messages are leased moments after
	// they are spooled, and reading them back from pebble would cost more
	// than keeping them.
	fresh *freshMsg
}

// freshMsg is a spooled message's envelope, recipient records and body,
// as Put wrote them.
type freshMsg struct {
	env   Envelope
	rcpts []RecipientState
	body  []byte
}

// ref names one recipient: its message and its index within it.
type ref struct {
	m *msgInfo
	n uint32
}

// deferral is a ref waiting for its next attempt (Unix nanoseconds).
type deferral struct {
	at int64
	ref
}

func (a deferral) less(b deferral) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	if a.m.id != b.m.id {
		return a.m.id < b.m.id
	}
	return a.n < b.n
}

// deque is a ring buffer of refs: a FIFO that can also take back released
// recipients at its front. It shrinks when mostly empty so that a drained
// key does not pin the memory of its peak.
type deque struct {
	buf  []ref // len is zero or a power of two
	head int
	n    int
}

func (d *deque) len() int { return d.n }

func (d *deque) at(i int) ref { return d.buf[(d.head+i)&(len(d.buf)-1)] }

func (d *deque) resize(c int) {
	nb := make([]ref, c)
	for i := 0; i < d.n; i++ {
		nb[i] = d.at(i)
	}
	d.buf, d.head = nb, 0
}

func (d *deque) grow() {
	if d.n == len(d.buf) {
		d.resize(max(16, 2*len(d.buf)))
	}
}

func (d *deque) pushBack(r ref) {
	d.grow()
	d.buf[(d.head+d.n)&(len(d.buf)-1)] = r
	d.n++
}

func (d *deque) pushFront(r ref) {
	d.grow()
	d.head = (d.head - 1) & (len(d.buf) - 1)
	d.buf[d.head] = r
	d.n++
}

func (d *deque) popFront() ref {
	r := d.buf[d.head]
	d.buf[d.head] = ref{}
	d.head = (d.head + 1) & (len(d.buf) - 1)
	d.n--
	d.shrink()
	return r
}

func (d *deque) shrink() {
	if d.n == 0 && len(d.buf) > 16 {
		d.buf, d.head = nil, 0
	} else if len(d.buf) > 64 && d.n < len(d.buf)/4 {
		d.resize(len(d.buf) / 2)
	}
}

// filter keeps, in order, the refs for which keep returns true.
func (d *deque) filter(keep func(ref) bool) {
	mask := len(d.buf) - 1
	w := 0
	for i := 0; i < d.n; i++ {
		r := d.buf[(d.head+i)&mask]
		if keep(r) {
			d.buf[(d.head+w)&mask] = r
			w++
		}
	}
	for i := w; i < d.n; i++ {
		d.buf[(d.head+i)&mask] = ref{}
	}
	d.n = w
	d.shrink()
}

// deferralHeap is a min-heap of deferrals by time. It is hand-written rather
// than container/heap to avoid boxing every element in an interface.
type deferralHeap []deferral

func (h *deferralHeap) push(x deferral) {
	*h = append(*h, x)
	h.up(len(*h) - 1)
}

func (h *deferralHeap) pop() deferral {
	old := *h
	x := old[0]
	last := len(old) - 1
	old[0] = old[last]
	old[last] = deferral{}
	*h = old[:last]
	if last > 0 {
		h.down(0)
	}
	if cap(*h) > 64 && len(*h) < cap(*h)/4 {
		*h = append(deferralHeap(nil), *h...)
	}
	return x
}

func (h deferralHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			return
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (h deferralHeap) down(i int) {
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h[r].less(h[l]) {
			m = r
		}
		if !h[m].less(h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

func (h deferralHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

// filter keeps the deferrals for which keep returns true and restores the
// heap order.
func (h *deferralHeap) filter(keep func(deferral) bool) {
	old := *h
	w := 0
	for _, x := range old {
		if keep(x) {
			old[w] = x
			w++
		}
	}
	clear(old[w:])
	*h = old[:w]
	if cap(*h) > 64 && w < cap(*h)/4 {
		*h = append(deferralHeap(nil), *h...)
	}
	h.init()
}

// keyQueue is the index of one queue key.
type keyQueue struct {
	key      Key
	ready    deque        // due recipients, FIFO
	deferred deferralHeap // deferred recipients by next attempt
	leased   int          // recipients held by leases
	leases   map[*Lease]struct{}
	paused   bool
	waiters  int           // goroutines in Wait
	wake     chan struct{} // closed when the key becomes ready; nil if nobody waits
	dueIdx   int           // index in Queue.due, -1 if no deferrals
}

// leasable reports whether Lease would hand out recipients.
func (k *keyQueue) leasable() bool { return !k.paused && k.ready.len() > 0 }

func (k *keyQueue) empty() bool {
	return k.ready.len() == 0 && len(k.deferred) == 0 && k.leased == 0 && len(k.leases) == 0
}

// dueHeap orders the keys that have deferrals by their earliest one, so one
// timer serves every key.
type dueHeap []*keyQueue

func (h dueHeap) less(i, j int) bool { return h[i].deferred[0].less(h[j].deferred[0]) }

func (h dueHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].dueIdx = i
	h[j].dueIdx = j
}

func (h dueHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h dueHeap) down(i int) bool {
	i0 := i
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			break
		}
		h.swap(i, m)
		i = m
	}
	return i > i0
}

// fix puts k where it belongs after its deferrals changed: in the heap at
// the right place if it has any, out of it otherwise.
func (h *dueHeap) fix(k *keyQueue) {
	switch {
	case len(k.deferred) > 0 && k.dueIdx < 0:
		k.dueIdx = len(*h)
		*h = append(*h, k)
		h.up(k.dueIdx)
	case len(k.deferred) > 0:
		if !h.down(k.dueIdx) {
			h.up(k.dueIdx)
		}
	case k.dueIdx >= 0:
		i, last := k.dueIdx, len(*h)-1
		if i != last {
			h.swap(i, last)
		}
		(*h)[last] = nil
		*h = (*h)[:last]
		k.dueIdx = -1
		if i != last {
			if !h.down(i) {
				h.up(i)
			}
		}
	}
}
