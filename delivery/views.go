package delivery

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ternmta/tern/queue"
)

// ProviderView is one provider queue (a VMTA's mail to one provider) as
// the operator's views show it.
type ProviderView struct {
	VMTA     string
	Provider string
	// Rollup is the <mx-rollup-list> name the provider came from, if any.
	Rollup string
	// Domains are the queue keys' domains routed to it that the scheduler
	// knows of, sorted.
	Domains []string
	// Connections counts its connection workers (open or opening).
	Connections int
	// Backoff and BackoffSince: the provider queue's mode.
	Backoff      bool
	BackoffSince time.Time
	// HeldUntil is when a suspension or a defer-queue rule ends; zero
	// when none holds it.
	HeldUntil time.Time
	// MsgsPerConnection is the transactions per connection learned from
	// the provider's 421s; 0 when none was learned.
	MsgsPerConnection int
	// Windows are its connection windows, one per source address used.
	Windows []WindowView
	// Shaping are the traffic-shaping states in force for it.
	Shaping []Shaping
}

// WindowView is the adaptive connection window of a provider from one
// source address (shared by every VMTA sending from that address).
type WindowView struct {
	Source netip.Addr
	// Limit is how many connections the window allows now; Open counts
	// those held (open or opening), Established those past the banner.
	Limit, Open, Established int
	// Ceiling caps the window until CeilingUntil after a refusal at the
	// banner; 0 when none.
	Ceiling      int
	CeilingUntil time.Time
	// Refusals counts 421s (or other 4xx) at the banner, ever.
	Refusals    int
	LastRefusal time.Time
}

// HostView is a host the scheduler found down from a source address.
type HostView struct {
	Source netip.Addr
	// Name is the MX (or smart host) name the address was dialed as.
	Name string
	Host netip.AddrPort
	// Failures counts consecutive failures to open a session.
	Failures int
	// DownUntil is when its next probe is due; zero while up.
	DownUntil time.Time
	LastError string
	Open      int // sessions open
}

// Providers lists the provider queues, by provider then VMTA.
func (s *Scheduler) Providers() []ProviderView {
	now := s.clock.Now()
	s.mu.Lock()
	doms := map[*runner][]string{}
	for k, ki := range s.keys {
		if ki.runner != nil {
			doms[ki.runner] = append(doms[ki.runner], k.Domain)
		}
	}
	out := make([]ProviderView, 0, len(s.runners))
	for pk, r := range s.runners {
		pv := ProviderView{VMTA: pk.VMTA, Provider: pk.Provider, Rollup: r.rollup, Domains: doms[r],
			Connections: r.workers, MsgsPerConnection: int(r.msgsPerConn.Load())}
		slices.Sort(pv.Domains)
		if now.Before(r.holdUntil) {
			pv.HeldUntil = r.holdUntil
		}
		if r.mode.on.Load() {
			pv.Backoff, pv.BackoffSince = true, time.Unix(0, r.mode.since.Load())
		}
		for sk, w := range s.sites {
			if sk.provider == pk.Provider && (r.bySource[sk.src] > 0 || s.usesSourceLocked(pk.VMTA, sk.src)) {
				pv.Windows = append(pv.Windows, WindowView{Source: sk.src, Limit: w.limit(now), Open: w.open,
					Established: w.est, Ceiling: w.ceiling, CeilingUntil: w.ceilingUntil, Refusals: w.refusals,
					LastRefusal: w.lastRefusal})
			}
		}
		slices.SortFunc(pv.Windows, func(a, b WindowView) int { return a.Source.Compare(b.Source) })
		for k, st := range s.shapes {
			if k.prov == pk {
				pv.Shaping = append(pv.Shaping, *st)
			}
		}
		out = append(out, pv)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b ProviderView) int {
		if c := strings.Compare(a.Provider, b.Provider); c != 0 {
			return c
		}
		return strings.Compare(a.VMTA, b.VMTA)
	})
	return out
}

// usesSourceLocked reports whether the VMTA named vmta sends from src in
// the running configuration.
func (s *Scheduler) usesSourceLocked(vmtaName string, src netip.Addr) bool {
	v, ok := s.opts.Registry().VMTA(vmtaName)
	if !ok {
		return false
	}
	for _, sh := range v.SourceHosts {
		if sh.IP == src {
			return true
		}
	}
	return false
}

// ProviderOf returns the provider a queue key is routed to ("" before it
// is routed).
func (s *Scheduler) ProviderOf(key queue.Key) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ki := s.keys[key]; ki != nil && ki.runner != nil {
		return ki.runner.key.Provider
	}
	return ""
}

// HostsDown lists the MX host addresses that are down from a source
// address, or failing towards it.
func (s *Scheduler) HostsDown() []HostView {
	s.mu.Lock()
	out := []HostView{}
	for hk, h := range s.hosts {
		if h.failures == 0 && h.downUntil.IsZero() {
			continue
		}
		out = append(out, HostView{Source: hk.src, Name: h.name, Host: hk.dst, Failures: h.failures, DownUntil: h.downUntil,
			LastError: h.lastErr, Open: h.conns})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b HostView) int {
		if c := a.Host.Compare(b.Host); c != 0 {
			return c
		}
		return a.Source.Compare(b.Source)
	})
	return out
}

// sweepInterval is how often the scheduler forgets what it keeps for queues
// and providers that have gone quiet.
const sweepInterval = 10 * time.Minute

// sweep forgets the queue keys that hold no mail (their route and recent
// outcomes), the runners left with no key, worker or state, the host
// states with nothing to remember, and the TLS sessions of source
// addresses no longer configured: a sender reaching a million domains a
// day must not keep them all. It rearms itself.
func (s *Scheduler) sweep() {
	empty := map[queue.Key]bool{}
	s.mu.Lock()
	keys := make([]queue.Key, 0, len(s.keys))
	for k, ki := range s.keys {
		if !ki.resolving {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	for _, k := range keys {
		if s.opts.Queue.Stats(k).Total() == 0 {
			empty[k] = true
		}
	}
	// The TLS sessions of the source addresses that no VMTA sends from any
	// more (a reload removed them) are of no use.
	used := map[netip.Addr]bool{}
	for _, v := range s.opts.Registry().VMTAs() {
		for _, sh := range v.SourceHosts {
			used[sh.IP] = true
		}
	}
	now := s.clock.Now()
	s.mu.Lock()
	for ip := range s.tlsSessions {
		if !used[ip] {
			delete(s.tlsSessions, ip)
		}
	}
	for k := range empty {
		ki := s.keys[k]
		if ki == nil || ki.resolving {
			continue
		}
		if r := ki.runner; r != nil {
			if r.inReady[k] {
				continue // mail arrived meanwhile
			}
			r.dropLocked(k)
		}
		delete(s.keys, k)
	}
	live := map[*runner]bool{}
	for _, ki := range s.keys {
		if ki.runner != nil {
			live[ki.runner] = true
		}
	}
	shaped := map[provKey]bool{}
	for k := range s.shapes {
		shaped[k.prov] = true
	}
	for pk, r := range s.runners {
		if !live[r] && r.workers == 0 && len(r.ready) == 0 && !shaped[pk] && !r.mode.on.Load() && !now.Before(r.holdUntil) {
			delete(s.runners, pk)
		}
	}
	for hk, h := range s.hosts {
		if h.idle() || (h.conns == 0 && h.pending == 0 && h.changed == nil && !h.downUntil.IsZero() && now.After(h.downUntil.Add(sweepInterval))) {
			delete(s.hosts, hk)
		}
	}
	for sk, w := range s.sites {
		if w.open == 0 && w.est == 0 && len(w.waiters) == 0 && !now.Before(w.ceilingUntil) && !s.hasProviderLocked(sk.provider) {
			delete(s.sites, sk)
		}
	}
	for k, ts := range s.thresh {
		if len(ts) == 0 || now.Sub(ts[len(ts)-1]) > sweepInterval {
			delete(s.thresh, k)
		}
	}
	s.mu.Unlock()
	s.after(sweepInterval, s.sweep)
}

// hasProviderLocked reports whether some runner delivers to provider.
func (s *Scheduler) hasProviderLocked(provider string) bool {
	for pk := range s.runners {
		if pk.Provider == provider {
			return true
		}
	}
	return false
}
