package delivery

import (
	"math"
	"net/netip"
	"time"
)

// This file holds what the scheduler learns about receivers, per source
// address: each MX host's health (hostState) and each provider's appetite
// for connections (window). Both are shared by every VMTA and queue that
// sends from the same address, since that is how receivers count: per
// client IP. They are plain state machines driven with explicit times, and
// are guarded by Scheduler.mu.

// hostKey is one MX host address as seen from one source address.
type hostKey struct {
	src netip.Addr
	dst netip.AddrPort
}

// hostState is the health of one host from one source address.
type hostState struct {
	conns   int // sessions open
	pending int // sessions being opened: dialing or waiting for the banner
	// failures counts consecutive failures to open a session (no TCP, a
	// reset, no banner, a 5xx banner); host-down-after of them mark the
	// host down.
	failures int
	// downUntil is when a down host may be probed again; zero while up.
	downUntil time.Time
	// probing: the one probe of a down host is under way.
	probing bool
	lastErr string
	// name is the host's name (the MX or smart host it was dialed as).
	name string
	// changed is closed and replaced when a pending open ends or a
	// session closes: connects waiting for room at this host look again.
	changed chan struct{}
	// waiting counts the connects waiting for room at this host's
	// mx-connection-limit: a session that falls idle here then closes
	// rather than keep the place (see Scheduler.idle).
	waiting int
}

// admission is the answer to "may a session to this host be opened now".
type admission int

const (
	admitted admission = iota
	admitProbe
	hostDown // down, and its probe is not due or already running
	hostBusy // enough sessions are being opened, or mx-connection-limit
)

// admit decides whether a session may be opened at now. maxPending caps
// the sessions waiting for a banner: at least initial (so a new host is
// not opened one connection at a time), and otherwise as many as are
// already open, so a host that greets slowly but works can be opened in
// parallel while a black hole (a host that accepts TCP and never greets)
// holds at most initial connections. limit is mx-connection-limit (0: no
// limit). An admitted open must end with opened, failed or refused.
func (h *hostState) admit(now time.Time, initial, limit int) admission {
	probe := false
	if !h.downUntil.IsZero() {
		if h.probing || now.Before(h.downUntil) {
			return hostDown
		}
		probe = true
	}
	if h.pending >= max(initial, h.conns, 1) {
		return hostBusy
	}
	if limit > 0 && h.conns+h.pending >= limit {
		return hostBusy
	}
	h.pending++
	if probe {
		h.probing = true
		return admitProbe
	}
	return admitted
}

// opened records a session that opened: the host is up.
func (h *hostState) opened() {
	h.pending--
	h.conns++
	h.failures, h.downUntil, h.probing, h.lastErr = 0, time.Time{}, false, ""
	h.notify()
}

// refused records a 4xx banner: the host is up but refuses more
// connections; it does not count toward down.
func (h *hostState) refused(reason string) {
	h.pending--
	h.failures, h.downUntil, h.probing, h.lastErr = 0, time.Time{}, false, reason
	h.notify()
}

// failed records a failure to open a session. After downAfter consecutive
// ones the host is down until now+probe, then probed once. It reports
// whether the host went down (or stayed down after a failed probe).
func (h *hostState) failed(now time.Time, reason string, downAfter int, probe time.Duration) bool {
	h.pending--
	h.failures++
	h.lastErr = reason
	wasProbe := h.probing
	h.probing = false
	defer h.notify()
	if wasProbe || h.failures >= max(downAfter, 1) {
		h.downUntil = now.Add(probe)
		return true
	}
	return false
}

// released records a failure that says nothing about the host (the open
// was cancelled, or a local problem).
func (h *hostState) released() {
	h.pending--
	h.probing = false
	h.notify()
}

// closed records the end of an open session.
func (h *hostState) closed() {
	h.conns--
	h.notify()
}

func (h *hostState) notify() {
	if h.changed != nil {
		close(h.changed)
		h.changed = nil
	}
}

// wait returns a channel closed at the host's next change.
func (h *hostState) wait() <-chan struct{} {
	if h.changed == nil {
		h.changed = make(chan struct{})
	}
	return h.changed
}

// idle reports whether the state holds nothing worth keeping.
func (h *hostState) idle() bool {
	return h.conns == 0 && h.pending == 0 && h.downUntil.IsZero() && h.failures == 0 && h.changed == nil && h.waiting == 0
}

// siteKey is one provider as seen from one source address.
type siteKey struct {
	src      netip.Addr
	provider string
}

// ceilingHold is how long a connection cap learned from a refusal holds
// before the window probes for more again: long enough that a provider
// capping connections sees a refusal only every few minutes from each
// source address, short enough that a raised cap is found.
const ceilingHold = 10 * time.Minute

// window is the adaptive connection window of a provider from one source
// address, after Postfix's concurrency scheduler: it starts at a few
// connections and opens more only while deliveries succeed; a refusal at
// the banner (421, too many connections) fixes it at the connections
// that were working, for ceilingHold; a failure to connect shrinks it.
// Below the window, max-smtp-out and the other caps still apply.
type window struct {
	// open counts connection workers holding a slot: sessions open or
	// being opened, over all the VMTAs that send from this address.
	open int
	// est counts the sessions actually open (past the banner).
	est int
	// size is the window; it grows by one per success in slow start, by
	// 1/size per success after the first refusal or failure.
	size      float64
	slowStart bool
	// ceiling caps size until ceilingUntil, after a refusal.
	ceiling      int
	ceilingUntil time.Time
	lastRefusal  time.Time
	refusals     int // refusals at the banner, ever
	// waiters are the runners that found the window full.
	waiters map[*runner]bool
	// conn and msg are source-ip-max-connect-rate and
	// source-ip-max-msg-rate: like the window, one bucket per (source
	// address, provider) over every VMTA sending from the address.
	conn, msg limiter
}

// newWindow returns a window starting at initial connections.
func newWindow(initial int) *window {
	return &window{size: float64(max(initial, 1)), slowStart: true}
}

// limit is how many slots the window allows at now.
func (w *window) limit(now time.Time) int {
	n := int(math.Floor(w.size))
	if w.ceiling > 0 {
		if now.Before(w.ceilingUntil) {
			n = min(n, w.ceiling)
		} else {
			w.ceiling = 0
		}
	}
	return max(n, 1)
}

// room reports whether one more slot fits at now.
func (w *window) room(now time.Time) bool { return w.open < w.limit(now) }

// success grows the window after a delivery, but only while it is in use
// up to its size (a window that is not the constraint learns nothing),
// while few of its slots are still opening their sessions (so that a
// burst of successes cannot open many connections beyond a cap not yet
// found: a quarter of those open, at least one), and never beyond max
// (the max-smtp-out of the queue asking).
func (w *window) success(now time.Time, max int) {
	if w.open < w.limit(now) || w.size >= float64(max) || w.open-w.est >= maxOpening(w.est) {
		return
	}
	if w.slowStart {
		w.size++
	} else {
		w.size += 1 / w.size
	}
	if w.ceiling > 0 && now.Before(w.ceilingUntil) && w.size > float64(w.ceiling) {
		w.size = float64(w.ceiling)
	}
	w.size = math.Min(w.size, float64(max))
}

// maxOpening is how many slots of a window may be opening at once for it
// to grow.
func maxOpening(est int) int { return max(1, est/4) }

// refused records a 4xx banner: the provider takes no more connections
// from this address than the ones open, for ceilingHold.
func (w *window) refused(now time.Time) {
	c := max(w.est, 1)
	w.ceiling, w.ceilingUntil = c, now.Add(ceilingHold)
	w.size = float64(c)
	w.slowStart = false
	w.lastRefusal = now
	w.refusals++
}

// failed records a failure to connect: one connection fewer.
func (w *window) failed() {
	w.size = math.Max(1, w.size-1)
	w.slowStart = false
}
