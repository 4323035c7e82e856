package delivery

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// runner delivers one VMTA's mail to one provider: the queue keys of the
// provider's domains (members) share its connection workers, its limits
// and its mode. Its fields are guarded by Scheduler.mu unless said
// otherwise.
type runner struct {
	key provKey
	// rollup is the <mx-rollup-list> name of the provider, when it came
	// from one: its connection settings are then <domain ROLLUP-NAME>'s.
	// Set when the runner is made, never changed.
	rollup  string
	members map[queue.Key]bool
	// ready lists member keys believed to have due recipients, each once
	// (inReady), in the order workers take them: a worker leases from the
	// front key and puts it back at the end while it still has due mail,
	// so the provider's domains take turns.
	ready   []queue.Key
	inReady map[queue.Key]bool
	// wake is closed (and replaced) when a key is added to ready, for the
	// workers idling on an open connection.
	wake chan struct{}

	workers  int                // connection workers running
	bySource map[netip.Addr]int // workers per source address
	pool     string             // the pool of the last leased mail, for the queue's policy
	// lead is the domain of the last leased mail: the policy of a
	// provider that is not a rollup is that of the domain at hand.
	lead string
	// orphaned are the member keys logged as having no configured VMTA
	// (each once, until the VMTA is back).
	orphaned map[queue.Key]bool
	// idle counts workers keeping a connection open while they wait for
	// mail: new mail goes to them rather than to a new connection.
	idle int
	// holdUntil stops new workers: after a failed lease (a spool that
	// cannot be written), or a defer-queue rule.
	holdUntil time.Time
	mode      modeState
	// skipHost is an MX host a skip-mx rule sent away from, tried last
	// until skipUntil.
	skipHost  string
	skipUntil time.Time
	conn, msg limiter
	// poolBlocked is the pool whose max-smtp-out stopped the queue's last
	// worker: no worker starts until that pool has a free slot.
	poolBlocked string
	// msgsPerConn is what the provider accepts per connection, learned
	// from a 421 at MAIL after that many transactions; 0 while unknown.
	msgsPerConn atomic.Int32
}

func newRunner(k provKey) *runner {
	return &runner{key: k, members: map[queue.Key]bool{}, inReady: map[queue.Key]bool{},
		bySource: map[netip.Addr]int{}}
}

// pushReadyLocked adds key to the runner's ready list (once) and wakes its
// idle workers.
func (s *Scheduler) pushReadyLocked(r *runner, key queue.Key) {
	if r.inReady[key] {
		return
	}
	r.inReady[key] = true
	r.ready = append(r.ready, key)
	if r.wake != nil {
		close(r.wake)
		r.wake = nil
	}
}

// popReady takes the front key of the ready list.
func (s *Scheduler) popReady(r *runner) (queue.Key, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(r.ready) == 0 {
		return queue.Key{}, false
	}
	k := r.ready[0]
	r.ready[0] = queue.Key{}
	r.ready = r.ready[1:]
	delete(r.inReady, k)
	if len(r.ready) == 0 {
		r.ready = nil // let the backing array go
	}
	return k, true
}

// dropLocked forgets key (it moved to another provider).
func (r *runner) dropLocked(key queue.Key) {
	delete(r.members, key)
	if r.inReady[key] {
		delete(r.inReady, key)
		for i, k := range r.ready {
			if k == key {
				r.ready = append(r.ready[:i], r.ready[i+1:]...)
				break
			}
		}
	}
}

// idler is a worker waiting for mail with its connection open.
type idler struct {
	vmta  string
	pool  string  // the pool it is counted under, "" for none
	site  siteKey // the window its connection counts in
	host  hostKey // the host its connection is open to
	close context.CancelFunc
}

// connPolicy is the policy for the provider's connections: that of
// <domain ROLLUP-NAME> for a rollup, else that of domain (the mail at
// hand), with the runner's mode applied.
func (s *Scheduler) connPolicy(reg *vmta.Registry, r *runner, pool, domain string) *config.DomainSettings {
	if r.rollup != "" {
		domain = r.rollup
	}
	if domain == "" {
		domain = r.key.Provider
	}
	return s.withMode(r, &reg.Policy(r.key.VMTA, pool, domain).Settings)
}

// msgPolicy is the policy of one message's delivery to domain (retries,
// expiry, TLS, routes), with the runner's mode applied.
func (s *Scheduler) msgPolicy(reg *vmta.Registry, r *runner, pool, domain string) *config.DomainSettings {
	return s.withMode(r, &reg.Policy(r.key.VMTA, pool, domain).Settings)
}

// kick starts one more connection worker for r if it has due mail and
// every cap allows it.
func (s *Scheduler) kick(r *runner) {
	if s.ctx.Err() != nil {
		return
	}
	reg := s.opts.Registry()
	now := s.clock.Now()
	_, ok := reg.VMTA(r.key.VMTA)
	v, _ := s.effectiveVMTA(reg, r)
	s.mu.Lock()
	if !ok {
		// Mail for a VMTA a reload removed waits, never bounces: it is
		// delivered when the VMTA comes back, or deleted by an operator.
		for _, k := range r.ready {
			if !r.orphaned[k] {
				if r.orphaned == nil {
					r.orphaned = map[queue.Key]bool{}
				}
				r.orphaned[k] = true
				s.log.Warn("queue has no configured virtual MTA; its mail waits", "queue", k.String())
			}
		}
		s.mu.Unlock()
		return
	}
	r.orphaned = nil
	heldKeys, heldWhy := s.dropHeldLocked(reg, r)
	if len(heldKeys) > 0 {
		s.mu.Unlock()
		for i, k := range heldKeys {
			s.holdKey(r, k, heldWhy[i])
		}
		s.mu.Lock()
	}
	if now.Before(r.holdUntil) || r.idle > 0 || len(r.ready) == 0 {
		s.mu.Unlock()
		return
	}
	lead := r.lead
	if lead == "" {
		lead = r.ready[0].Domain
	}
	pol := s.connPolicy(reg, r, r.pool, lead)
	if r.workers >= pol.MaxSMTPOut.Value {
		s.mu.Unlock()
		return
	}
	vmtaFull := v.MaxSMTPOut > 0 && s.perVMTA[v.Name] >= v.MaxSMTPOut
	if s.total >= s.maxConnections(reg) || vmtaFull {
		s.waiting[r] = true
		// A connection idling for another queue must not hold the slot
		// until its connection-idle-timeout: it closes, and its release
		// hands the slot to the waiting queues.
		s.closeIdlerLocked(func(id *idler) bool { return !vmtaFull || id.vmta == v.Name })
		s.mu.Unlock()
		return
	}
	if pb := r.poolBlocked; pb != "" {
		if p, ok := reg.Pool(pb); ok && p.MaxSMTPOut > 0 && s.perPool[pb] >= p.MaxSMTPOut {
			s.waiting[r] = true
			s.closeIdlerLocked(func(id *idler) bool { return id.pool == pb })
			s.mu.Unlock()
			return
		}
		r.poolBlocked = ""
	}
	src, ok := s.pickSourceLocked(r, v, pol, now)
	if !ok {
		s.mu.Unlock()
		return
	}
	delete(s.waiting, r)
	r.workers++
	r.bySource[src.IP]++
	s.total++
	s.perVMTA[v.Name]++
	s.siteLocked(src.IP, r.key.Provider, pol).open++
	s.mu.Unlock()
	s.wg.Add(1)
	go s.work(r, v.Name, src)
}

// maxConnections is total-max-smtp-out, within the daemon's file
// descriptor budget for outbound connections.
func (s *Scheduler) maxConnections(reg *vmta.Registry) int {
	n := reg.Config().TotalMaxSMTPOut.Value
	if m := s.opts.MaxConnections; m > 0 && m < n {
		return m
	}
	return n
}

// pickSourceLocked chooses the source address of a new worker: the VMTA's
// addresses in turn, skipping those at their source-ip-max-smtp-out or
// whose connection window to the provider is full. When none has room
// the runner waits for a window slot; an idle connection of another VMTA
// in a full window is closed to make one.
func (s *Scheduler) pickSourceLocked(r *runner, v *vmta.VMTA, pol *config.DomainSettings, now time.Time) (vmta.SourceHost, bool) {
	c := s.sources[v.Name]
	if c == nil {
		c = new(atomic.Uint64)
		s.sources[v.Name] = c
	}
	n := len(v.SourceHosts)
	start := int(c.Load() % uint64(n))
	var full []*window
	for i := range n {
		src := v.SourceHosts[(start+i)%n]
		w, ok := s.roomLocked(r, src.IP, pol, now)
		if !ok {
			if w != nil {
				full = append(full, w)
			}
			continue
		}
		c.Add(uint64(i + 1))
		return src, true
	}
	for _, w := range full {
		if w.waiters == nil {
			w.waiters = map[*runner]bool{}
		}
		w.waiters[r] = true
	}
	if len(full) > 0 {
		s.closeIdlerLocked(func(id *idler) bool {
			return id.site.provider == r.key.Provider && slices.Contains(full, s.sites[id.site])
		})
	}
	return vmta.SourceHost{}, false
}

// roomLocked reports whether r may start one more connection from src: the
// provider has fewer than source-ip-max-smtp-out connections from src
// (counted over every VMTA sending from it, as the provider counts them),
// the address is not disabled for the provider, and the provider's window
// from it has room. When only the window is full, that window is returned.
func (s *Scheduler) roomLocked(r *runner, src netip.Addr, pol *config.DomainSettings, now time.Time) (*window, bool) {
	if lim, ok := sourceIPMaxSMTPOut(pol, src); ok && s.siteLocked(src, r.key.Provider, pol).open >= lim {
		return nil, false
	}
	if s.sourceDisabledLocked(r, src) {
		return nil, false // kicked again when the state ends
	}
	w := s.siteLocked(src, r.key.Provider, pol)
	if adaptiveSMTPOut(pol) && !w.room(now) {
		return w, false
	}
	return w, true
}

// siteLocked returns the window of provider from src, made on first use.
func (s *Scheduler) siteLocked(src netip.Addr, provider string, pol *config.DomainSettings) *window {
	k := siteKey{src: src, provider: provider}
	w := s.sites[k]
	if w == nil {
		w = newWindow(initialSMTPOut(pol))
		s.sites[k] = w
	}
	return w
}

// site is siteLocked for callers without the lock.
func (s *Scheduler) site(src netip.Addr, provider string, pol *config.DomainSettings) *window {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.siteLocked(src, provider, pol)
}

// release gives back a worker's slot and hands it on: to this runner if
// it still has due mail (a worker leaving must not strand mail that
// arrived while it held the last slot), to the runners waiting on the
// same connection window, and to the runners waiting on a VMTA-wide or
// global cap, by priority.
func (s *Scheduler) release(r *runner, vmtaName string, src netip.Addr) {
	s.mu.Lock()
	r.workers--
	if r.bySource[src]--; r.bySource[src] <= 0 {
		delete(r.bySource, src)
	}
	s.total--
	s.perVMTA[vmtaName]--
	var siteWaiters []*runner
	if w := s.sites[siteKey{src: src, provider: r.key.Provider}]; w != nil {
		w.open--
		for wr := range w.waiters {
			siteWaiters = append(siteWaiters, wr)
		}
		w.waiters = nil
	}
	waiting := make([]*runner, 0, len(s.waiting))
	for w := range s.waiting {
		waiting = append(waiting, w)
	}
	s.mu.Unlock()
	s.kick(r)
	for _, w := range siteWaiters {
		if w != r {
			s.kick(w)
		}
	}
	if len(waiting) == 0 {
		return
	}
	reg := s.opts.Registry()
	prio := make(map[*runner]int, len(waiting))
	s.mu.Lock()
	for _, w := range waiting {
		prio[w] = s.connPolicy(reg, w, w.pool, w.lead).QueuePriority.Value
	}
	s.mu.Unlock()
	sort.Slice(waiting, func(i, j int) bool { return prio[waiting[i]] > prio[waiting[j]] })
	for _, w := range waiting {
		s.kick(w)
	}
}

// work is one connection worker, sending from src: it leases due
// recipients of the runner's domains in turn and sends them over one
// connection, reused up to max-msg-per-connection, and leaves when the
// provider has been idle for connection-idle-timeout.
func (s *Scheduler) work(r *runner, vmtaName string, src vmta.SourceHost) {
	defer s.wg.Done()
	defer s.release(r, vmtaName, src.IP)
	// poolSlot is the pool this worker is counted under: that of the mail
	// it carries now. It is given back after the connection closes and
	// before release hands slots on.
	poolSlot := ""
	defer func() { s.movePoolSlot(poolSlot, "") }()
	w := &worker{r: r, src: src}
	// carry is a lease taken while the previous one's last message was
	// being sent, and ahead its first message when that went out behind
	// it (deliver's next).
	var carry *queue.Lease
	var ahead *txn
	defer func() {
		if carry != nil {
			carry.Release()
		}
		s.endSession(w)
	}()
	for s.ctx.Err() == nil {
		reg := s.opts.Registry()
		if _, ok := reg.VMTA(r.key.VMTA); !ok {
			return
		}
		v, _ := s.effectiveVMTA(reg, r)
		if v.Name != vmtaName {
			return // rerouted, or back: the worker's slot is counted under the other VMTA
		}
		now := s.clock.Now()
		s.mu.Lock()
		pool := r.pool // written by the runner's other workers
		held := now.Before(r.holdUntil)
		s.mu.Unlock()
		if held {
			return // a defer-queue rule or a failing spool: kicked again when the hold ends
		}
		lease := carry
		carry = nil
		if lease == nil {
			var err error
			if lease, err = s.leaseNext(reg, r, pool); err != nil {
				return
			}
		}
		if lease == nil {
			if w.sess == nil || !s.idle(w, reg, pool, vmtaName, poolSlot) {
				return
			}
			continue
		}
		if n := len(lease.Messages); n > 0 && len(lease.Messages[0].Recipients) > 0 {
			p := lease.Messages[0].Recipients[0].Pool
			s.mu.Lock()
			r.pool, r.lead = p, lease.Key.Domain
			s.mu.Unlock()
			if p != poolSlot {
				if !s.takePoolSlot(reg, r, poolSlot, p) {
					// The pool is at its max-smtp-out: the mail waits for
					// one of its connections to end.
					lease.Release()
					return
				}
				poolSlot = p
			}
		}
		carry, ahead = s.deliver(reg, v, w, lease, ahead)
		lease.Release()
		if w.leave {
			return
		}
	}
}

// worker is one connection worker's state: its runner, its source address
// and its session.
type worker struct {
	r    *runner
	src  vmta.SourceHost
	sess session
	// host is the session's host state key.
	host hostKey
	// opened counts the sessions the worker opened.
	opened int
	// leave: the worker must go once its lease is released (its provider
	// refused it a connection while others work).
	leave bool
	// class is what the session was opened for (TLS, AUTH): it carries
	// only mail whose policy asks for the same.
	class connClass
}

// connClass is the part of a policy that shapes a session when it is
// opened. A provider's domains share sessions only where it agrees: a
// session opened for a domain that verifies certificates must not carry
// mail for one that forbids TLS, and the other way round.
type connClass struct {
	tls, requireTLS, verify, plainAuth bool
	authUser, authPass                 string
}

func classOf(pol *config.DomainSettings) connClass {
	return connClass{tls: pol.UseStartTLS.Value || pol.RequireStartTLS.Value, requireTLS: pol.RequireStartTLS.Value,
		verify: pol.TLSVerifyCertificate.Value, plainAuth: pol.UseUnencryptedPlainAuth.Value,
		authUser: pol.AuthUsername.Value, authPass: pol.AuthPassword.Value}
}

// reseat moves a worker about to open a new connection to the VMTA's next
// source address that has room, so that successive connections take the
// addresses in turn (a worker keeps its address while its connection
// lasts).
func (s *Scheduler) reseat(w *worker, v *vmta.VMTA, pol *config.DomainSettings) {
	if len(v.SourceHosts) < 2 || w.opened == 0 {
		return // the first connection takes the address the worker started with
	}
	r := w.r
	now := s.clock.Now()
	s.mu.Lock()
	c := s.sources[v.Name]
	if c == nil {
		s.mu.Unlock()
		return
	}
	n := len(v.SourceHosts)
	start := int(c.Load() % uint64(n))
	old := s.siteLocked(w.src.IP, r.key.Provider, pol)
	var freed *window
	for i := range n {
		src := v.SourceHosts[(start+i)%n]
		if src.IP == w.src.IP {
			c.Add(uint64(i + 1))
			break
		}
		nw, ok := s.roomLocked(r, src.IP, pol, now)
		if !ok {
			continue
		}
		c.Add(uint64(i + 1))
		old.open--
		nw.open++
		if r.bySource[w.src.IP]--; r.bySource[w.src.IP] <= 0 {
			delete(r.bySource, w.src.IP)
		}
		r.bySource[src.IP]++
		w.src = src
		freed = old
		break
	}
	var waiters []*runner
	if freed != nil {
		for wr := range freed.waiters {
			waiters = append(waiters, wr)
		}
		freed.waiters = nil
	}
	s.mu.Unlock()
	for _, wr := range waiters {
		s.kick(wr)
	}
}

// leaseNext leases due recipients from the runner's next ready key,
// putting the key back at the end of the list while it still has due
// mail. It returns nil when no key has any. A lease error holds the
// runner for leaseRetry.
func (s *Scheduler) leaseNext(reg *vmta.Registry, r *runner, pool string) (*queue.Lease, error) {
	q := s.opts.Queue
	for s.ctx.Err() == nil {
		key, ok := s.popReady(r)
		if !ok {
			return nil, nil
		}
		if why := heldBy(reg, r, pool, key.Domain); why != "" {
			// max-msg-rate 0: the key's mail waits, off the ready list
			// until a reload notifies it again.
			s.holdKey(r, key, why)
			continue
		}
		s.unholdKey(key)
		max := s.msgPolicy(reg, r, pool, key.Domain).MaxRcptPerTransaction.Value
		lease, err := q.Lease(s.ctx, key, max)
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				s.log.Error("lease failed; the queue waits before trying again", "queue", key.String(), "err", err, "wait", leaseRetry.String())
				s.mu.Lock()
				s.pushReadyLocked(r, key)
				r.holdUntil = s.clock.Now().Add(leaseRetry)
				s.mu.Unlock()
				s.after(leaseRetry, func() { s.kick(r) })
			}
			return nil, err
		}
		if st := q.Stats(key); st.Ready > 0 && !st.Paused {
			s.mu.Lock()
			s.pushReadyLocked(r, key)
			s.mu.Unlock()
			if lease != nil && leaseSize(lease) >= max {
				s.kick(r) // a full lease: likely more due, open another connection
			}
		}
		if lease != nil {
			return lease, nil
		}
	}
	return nil, s.ctx.Err()
}

// idle keeps the worker's connection open for connection-idle-timeout in
// case more mail comes for the provider. It reports whether there may be
// mail now; false means the worker leaves.
func (s *Scheduler) idle(w *worker, reg *vmta.Registry, pool, vmtaName, poolSlot string) bool {
	r := w.r
	s.mu.Lock()
	if len(s.waiting) > 0 {
		// A queue held back by a cap gets this slot now rather than
		// after connection-idle-timeout.
		s.mu.Unlock()
		return false
	}
	if len(r.ready) > 0 {
		s.mu.Unlock()
		return true
	}
	if h := s.hosts[w.host]; h != nil && h.waiting > 0 {
		// Another connect waits for this connection's place at the
		// host's mx-connection-limit: it gets it now rather than after
		// connection-idle-timeout.
		s.mu.Unlock()
		return false
	}
	lead := r.lead
	s.mu.Unlock()
	pol := s.connPolicy(reg, r, pool, lead)
	ctx, cancel := withTimeout(s.ctx, s.clock, pol.ConnectionIdleTimeout.Value)
	defer cancel()
	id := &idler{vmta: vmtaName, pool: poolSlot, site: siteKey{src: w.src.IP, provider: r.key.Provider}, host: w.host, close: cancel}
	s.mu.Lock()
	if len(r.ready) > 0 {
		s.mu.Unlock()
		return true
	}
	if r.wake == nil {
		r.wake = make(chan struct{})
	}
	wake := r.wake
	r.idle++
	s.idlers[id] = true
	s.mu.Unlock()
	woken := false
	select {
	case <-wake:
		woken = true
	case <-ctx.Done():
	}
	s.mu.Lock()
	r.idle--
	delete(s.idlers, id)
	s.mu.Unlock()
	return woken
}

// takePoolSlot moves a worker of r from pool from to pool to, unless to is
// at its max-smtp-out: then r waits (poolBlocked) and false is returned,
// with the worker still counted under from (its caller leaves and gives
// that back).
func (s *Scheduler) takePoolSlot(reg *vmta.Registry, r *runner, from, to string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := reg.Pool(to); ok && p.MaxSMTPOut > 0 && s.perPool[to] >= p.MaxSMTPOut {
		r.poolBlocked = to
		s.waiting[r] = true
		s.closeIdlerLocked(func(id *idler) bool { return id.pool == to })
		return false
	}
	s.movePoolSlotLocked(from, to)
	return true
}

// closeIdlerLocked ends the wait of one idle worker that match accepts,
// so that its slot goes to a queue held back by a cap; s.mu must be held.
func (s *Scheduler) closeIdlerLocked(match func(*idler) bool) {
	for id := range s.idlers {
		if match(id) {
			delete(s.idlers, id)
			id.close()
			return
		}
	}
}

// movePoolSlot moves one worker's count from pool from to pool to ("" is
// no pool).
func (s *Scheduler) movePoolSlot(from, to string) {
	s.mu.Lock()
	s.movePoolSlotLocked(from, to)
	s.mu.Unlock()
}

func (s *Scheduler) movePoolSlotLocked(from, to string) {
	if from != "" {
		if s.perPool[from]--; s.perPool[from] <= 0 {
			delete(s.perPool, from)
		}
	}
	if to != "" {
		s.perPool[to]++
	}
}

// limiterFor returns the rate limiter of name in m (a VMTA's or a pool's),
// made on first use.
func limiterFor[K comparable](s *Scheduler, m map[K]*limiter, name K) *limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := m[name]
	if l == nil {
		l = &limiter{}
		m[name] = l
	}
	return l
}

func leaseSize(l *queue.Lease) int {
	n := 0
	for _, m := range l.Messages {
		n += len(m.Recipients)
	}
	return n
}
