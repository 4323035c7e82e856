package listener

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/ternmta/tern/config"
)

// This file holds the limits that keep one client, or many, from taking
// the inbound side for themselves (docs/operations.md, Limits and abuse): who gets a
// connection slot (admission), and how much memory messages being
// received may hold (memBudget). The per-session limits (the deadline
// before MAIL, the budget of commands without mail) are in smtpd.go.

// slotKind is how a connection is counted by the admission rules.
type slotKind uint8

const (
	// slotFree: counted in total-max-smtp-in only. A connection from a
	// source that may relay, or one that has authenticated.
	slotFree slotKind = iota
	// slotShared: untrusted and not authenticated, in the share of the
	// slots such connections may use (total minus the reserve).
	slotShared
	// slotLent: untrusted and not authenticated, lent a reserved slot
	// because the share was full; it must authenticate within
	// Options.ReservedAuthTimeout or is closed.
	slotLent
)

// admission counts the connections that are neither from a source that
// may relay nor authenticated ("untrusted"): in total, and by client.
//
// Such a session can do nothing but authenticate (every RCPT is refused
// until it does), so it is what a flood of idle or slow connections is
// made of. The rules, applied at accept when the client is untrusted:
//
//   - at most PerIP of them from one address (IPv6: one /64, which one
//     subscriber gets) at a time;
//   - at most Total-Reserved of them hold slots as of right (shared);
//   - when those are taken, up to Reserved/2 more are lent a reserved
//     slot, on condition they authenticate soon;
//   - the rest of the reserve, at least half, is never used by them:
//     trusted and authenticated clients always find room there.
//
// A connection that authenticates stops counting here (and toward its
// address's cap): it is a known user from then on.
//
// A client is what the admin API's per-client cap counts too (clientKey):
// an IPv4 address, or an IPv6 /64.
type admission struct {
	mu     sync.Mutex
	byIP   map[netip.Prefix]int
	shared int
	lent   int
}

// admitResult is admission's verdict on an untrusted connection.
type admitResult uint8

const (
	admitted admitResult = iota
	refusedPerIP
	refusedFull
)

// admit decides whether an untrusted connection from ip gets a slot under
// lim, and counts it in cc when it does.
func (a *admission) admit(cc *countedConn, ip netip.Addr, lim config.InboundLimits) admitResult {
	key := clientKey(ip)
	a.mu.Lock()
	defer a.mu.Unlock()
	if lim.PerIP > 0 && a.byIP[key] >= lim.PerIP {
		return refusedPerIP
	}
	switch {
	case a.shared < lim.Total-lim.Reserved:
		a.shared++
		cc.slot = slotShared
	case a.lent < lim.Reserved/2:
		a.lent++
		cc.slot = slotLent
	default:
		return refusedFull
	}
	if a.byIP == nil {
		a.byIP = map[netip.Prefix]int{}
	}
	a.byIP[key]++
	cc.key = key
	return admitted
}

// release stops counting cc: it closed, or it authenticated. Calling it
// again does nothing.
func (a *admission) release(cc *countedConn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch cc.slot {
	case slotFree:
		return
	case slotShared:
		a.shared--
	case slotLent:
		a.lent--
	}
	cc.slot = slotFree
	if n := a.byIP[cc.key]; n <= 1 {
		delete(a.byIP, cc.key)
	} else {
		a.byIP[cc.key] = n - 1
	}
}

// largeMessage is the charge past which a message is large for the
// memory budget: 1 MiB, a message of about half that (charge counts the
// buffer and the copy made to spool it).
const largeMessage = 1 << 20

// memBudget counts the bytes held by messages being received over all
// sessions, against max-inbound-buffer. A message takes its share before
// its buffer grows, and gives it back when its transaction ends, however
// it ends.
//
// Large messages (charged past largeMessage) may only take room while the total
// stays within seven eighths of the limit: the last eighth is kept for
// messages of ordinary size, so a few clients sending huge messages, or
// holding them open without ending them, cannot stop everyone's mail.
type memBudget struct {
	used atomic.Int64
}

// take reserves n more bytes for a message that holds held bytes already,
// under limit (config.Unlimited: no limit). It reports false, reserving
// nothing, when there is no room.
func (b *memBudget) take(n, held int64, limit config.Size) bool {
	if limit == config.Unlimited {
		b.used.Add(n)
		return true
	}
	lim := int64(limit)
	if held+n > largeMessage {
		lim -= lim / 8
	}
	for {
		cur := b.used.Load()
		if cur+n > lim {
			return false
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// force reserves n bytes whatever the limit: memory already allocated,
// which must be counted to be given back.
func (b *memBudget) force(n int64) { b.used.Add(n) }

// give returns n bytes.
func (b *memBudget) give(n int64) { b.used.Add(-n) }

// InboundBuffered is the number of bytes messages being received hold in
// memory now, as counted against max-inbound-buffer.
func (s *Server) InboundBuffered() int64 { return s.mem.used.Load() }
