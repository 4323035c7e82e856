package delivery

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/vmta"
)

// busyPoll bounds a wait for room at a busy host: the wait ends earlier
// when the host's state changes, but a worker waiting on one host of
// several also looks at the others now and then.
const busyPoll = 2 * time.Second

// hostsDownError is the failure of a connect that found every host of the
// destination down from this source address: no host was dialed.
type hostsDownError struct {
	domain  string
	source  netip.Addr
	lastErr string
	probe   time.Time // the earliest probe due
}

func (e *hostsDownError) Error() string {
	msg := fmt.Sprintf("4.4.1 every MX host of %s is down from %s; next probe at %s", e.domain, sourceName(e.source), e.probe.Format(time.RFC3339))
	if e.lastErr != "" {
		msg += " (last error: " + e.lastErr + ")"
	}
	return msg
}

// connect opens a session for the worker: resolve the domain's hosts, then
// try them in order from the worker's source address, within the hosts'
// state: a host that is down is skipped until its probe is due (one
// worker probes it), a host with enough connections being opened (or at
// mx-connection-limit) is waited for, and at most mx-connection-attempts
// addresses are dialed.
func (s *Scheduler) connect(w *worker, v *vmta.VMTA, domain string, pol, cpol *config.DomainSettings) error {
	r := w.r
	s.mu.Lock()
	disabled := s.sourceDisabledLocked(r, w.src.IP)
	s.mu.Unlock()
	if disabled {
		// A rule disabled this address for the provider: the mail goes
		// back to the queue for the workers on other addresses.
		return &capacityError{err: fmt.Errorf("source %s is disabled for %s by traffic shaping", w.src.IP, r.key.Provider)}
	}
	targets, err := destinations(s.ctx, s.opts.Resolver, domain, pol)
	if err != nil {
		return err
	}
	src := w.src
	targets, src, err = matchFamily(targets, src, v)
	if err != nil {
		return err
	}
	if err := r.conn.wait(s.ctx, s.clock, cpol.MaxConnectRate.Value); err != nil {
		return err
	}
	if rt, ok := sourceIPMaxConnectRate(cpol, w.src.IP); ok {
		if err := s.site(w.src.IP, r.key.Provider, cpol).conn.wait(s.ctx, s.clock, rt); err != nil {
			return err
		}
	}
	s.mu.Lock()
	skip, until := r.skipHost, r.skipUntil
	s.mu.Unlock()
	if skip != "" && s.clock.Now().Before(until) {
		kept := make([]target, 0, len(targets))
		var last []target
		for _, t := range targets {
			if t.host == skip {
				last = append(last, t)
			} else {
				kept = append(kept, t)
			}
		}
		targets = append(kept, last...)
	}
	// Without the adaptive window, a host may have as many connections
	// being opened as max-smtp-out allows; with it, the window's start.
	initial, limit := initialSMTPOut(cpol), mxConnectionLimit(s.opts.Registry().Config())
	if !adaptiveSMTPOut(cpol) {
		initial = max(initial, cpol.MaxSMTPOut.Value)
	}
	attempts, maxAttempts := 0, mxConnectionAttempts(cpol)
	var lastErr error
	var down *hostsDownError
	// waitingAt are the hosts this connect counts itself waiting at,
	// until its wait for room ends.
	var waitingAt []hostKey
	unwait := func() {
		if len(waitingAt) == 0 {
			return
		}
		s.mu.Lock()
		for _, hk := range waitingAt {
			if h := s.hosts[hk]; h != nil && h.waiting > 0 {
				h.waiting--
			}
		}
		s.mu.Unlock()
		waitingAt = waitingAt[:0]
	}
	defer unwait()
	for {
		var busy <-chan struct{}
		down = &hostsDownError{domain: domain, source: src.IP}
		for _, t := range targets {
			if attempts >= maxAttempts {
				break
			}
			hk := hostKey{src: src.IP, dst: netip.AddrPortFrom(t.ip, uint16(t.port))}
			now := s.clock.Now()
			s.mu.Lock()
			h := s.hostLocked(hk)
			h.name = t.host
			adm := h.admit(now, initial, limit)
			switch adm {
			case hostBusy:
				if busy == nil {
					busy = h.wait()
				}
				// A connection idling at this host for another queue from
				// the same address gives its place up; at
				// mx-connection-limit, also one that falls idle while
				// this connect waits.
				if limit > 0 && h.conns+h.pending >= limit {
					h.waiting++
					waitingAt = append(waitingAt, hk)
				}
				s.closeIdlerLocked(func(id *idler) bool { return id.host == hk })
			case hostDown:
				if down.probe.IsZero() || h.downUntil.Before(down.probe) {
					down.probe = h.downUntil
				}
				if down.lastErr == "" {
					down.lastErr = h.lastErr
				}
			}
			s.mu.Unlock()
			if adm == hostBusy || adm == hostDown {
				continue
			}
			attempts++
			if adm == admitProbe {
				s.log.Info("probing a host that was down", "queue", r.key.String(), "host", t.host, "ip", t.ip.String(), "source", sourceName(src.IP))
			}
			sess, err := s.open(w, t, src, pol, cpol, hk)
			if err == nil {
				w.sess, w.host, w.class = sess, hk, classOf(pol)
				w.opened++
				return nil
			}
			lastErr = err
			if s.ctx.Err() != nil {
				return err
			}
			if judgeOpen(err, false).refused && s.establishedTo(w) > 0 {
				// A provider counts connections per client address over
				// all its hosts: the next host would refuse as well.
				break
			}
		}
		if lastErr != nil || busy == nil || attempts >= maxAttempts {
			break
		}
		// Every host left is busy: wait for room at one of them.
		ctx, cancel := withTimeout(s.ctx, s.clock, busyPoll)
		select {
		case <-busy:
		case <-ctx.Done():
		}
		cancel()
		unwait()
		if s.ctx.Err() != nil {
			return s.ctx.Err()
		}
	}
	if lastErr != nil {
		var oe *openError
		if errors.As(lastErr, &oe) && judgeOpen(lastErr, false).refused && s.establishedTo(w) > 0 {
			// The provider takes no more connections from this address
			// than it has: the mail stays with the connections that work.
			return &capacityError{err: lastErr}
		}
		return lastErr
	}
	return down
}

// capacityError is a connect refused at the banner while other sessions
// to the same provider from the same address work: the provider's cap, not
// a failure of the mail. The lease goes back to the queue, no attempt
// counted, and the worker leaves.
type capacityError struct{ err error }

func (e *capacityError) Error() string { return e.err.Error() }
func (e *capacityError) Unwrap() error { return e.err }

// establishedTo counts the sessions open from the worker's address to its
// provider.
func (s *Scheduler) establishedTo(w *worker) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if win := s.sites[siteKey{src: w.src.IP, provider: w.r.key.Provider}]; win != nil {
		return win.est
	}
	return 0
}

// open dials one host, within an admission already granted, and records
// what the attempt says about the host and the provider's window.
func (s *Scheduler) open(w *worker, t target, src vmta.SourceHost, pol, cpol *config.DomainSettings, hk hostKey) (session, error) {
	r := w.r
	o := connOptions{source: src.IP, ehlo: src.HostName, pol: pol,
		wantTLS: pol.UseStartTLS.Value || pol.RequireStartTLS.Value}
	if pol.ReuseSSLSession.Value {
		o.sessions = s.tlsSessionCache(src.IP)
	}
	sess, err := s.tr.open(s.ctx, t, o)
	if err != nil && judgeOpen(err, pol.RequireStartTLS.Value).plaintext {
		// Opportunistic TLS failed: the same host in plaintext.
		s.log.Info("STARTTLS failed; retrying in plaintext", "queue", r.key.String(), "host", t.host, "err", err)
		o.wantTLS = false
		sess, err = s.tr.open(s.ctx, t, o)
	}
	now := s.clock.Now()
	site := siteKey{src: w.src.IP, provider: r.key.Provider}
	s.mu.Lock()
	h := s.hostLocked(hk)
	win := s.sites[site]
	if err == nil {
		h.opened()
		if win != nil {
			win.est++
		}
		s.mu.Unlock()
		return sess, nil
	}
	v := judgeOpen(err, pol.RequireStartTLS.Value)
	wentDown := false
	switch {
	case s.ctx.Err() != nil:
		h.released()
	case v.refused:
		h.refused(err.Error())
		if win != nil {
			win.refused(now)
		}
	case v.hostFailure:
		wentDown = h.failed(now, err.Error(), hostDownAfter(cpol), s.probeInterval(cpol))
		if win != nil {
			win.failed()
		}
	default:
		h.released()
	}
	s.mu.Unlock()
	switch {
	case v.refused:
		s.log.Info("host refused the connection; fewer connections to its provider", "queue", r.key.String(),
			"host", t.host, "ip", t.ip.String(), "source", sourceName(src.IP), "err", err)
	case wentDown:
		s.log.Warn("host is down; it is probed once per retry interval", "queue", r.key.String(),
			"host", t.host, "ip", t.ip.String(), "source", sourceName(src.IP), "err", err)
	default:
		s.log.Info("connection failed; trying the next host", "queue", r.key.String(), "host", t.host,
			"ip", t.ip.String(), "source", sourceName(src.IP), "err", err)
	}
	var oe *openError
	if errors.As(err, &oe) && oe.reply() != nil {
		s.matchReply(s.opts.Registry(), r, cpol, oe.reply().Error(), src.IP)
	}
	return nil, err
}

// tlsSessionsPerSource bounds the TLS sessions kept per source address:
// the least recently used goes first.
const tlsSessionsPerSource = 1024

// tlsSessionCache returns the TLS session cache of the source address src,
// made on first use. Each source address has its own, so a session is
// only ever resumed from the address that made it: a receiver must not
// be able to tie two source IPs together by the session one resumes.
// VMTAs sharing an address share its cache, as they share its reputation.
func (s *Scheduler) tlsSessionCache(src netip.Addr) tls.ClientSessionCache {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.tlsSessions[src]
	if c == nil {
		c = tls.NewLRUClientSessionCache(tlsSessionsPerSource)
		s.tlsSessions[src] = c
	}
	return c
}

// probeInterval is how long a down host waits for its probe: the first
// retry interval of the provider's policy, plus jitter.
func (s *Scheduler) probeInterval(cpol *config.DomainSettings) time.Duration {
	d := cpol.RetryAfter.Value[0]
	return d + s.jitter(d)
}

// hostLocked returns the state of hk, made on first use.
func (s *Scheduler) hostLocked(hk hostKey) *hostState {
	h := s.hosts[hk]
	if h == nil {
		h = &hostState{}
		s.hosts[hk] = h
	}
	return h
}

// endSession closes the worker's session, if any, and gives back its
// place at the host and in the window.
func (s *Scheduler) endSession(w *worker) {
	if w.sess == nil {
		return
	}
	w.sess.close()
	w.sess = nil
	s.mu.Lock()
	if h := s.hosts[w.host]; h != nil {
		h.closed()
		if h.idle() {
			delete(s.hosts, w.host)
		}
	}
	if win := s.sites[siteKey{src: w.src.IP, provider: w.r.key.Provider}]; win != nil {
		win.est--
	}
	s.mu.Unlock()
}

// windowSuccess feeds a delivery back to the worker's window, and starts
// another worker when the window grew.
func (s *Scheduler) windowSuccess(w *worker, cpol *config.DomainSettings) {
	if !adaptiveSMTPOut(cpol) {
		return
	}
	now := s.clock.Now()
	s.mu.Lock()
	win := s.sites[siteKey{src: w.src.IP, provider: w.r.key.Provider}]
	grew := false
	if win != nil {
		before := win.limit(now)
		win.success(now, cpol.MaxSMTPOut.Value)
		grew = win.limit(now) > before
	}
	s.mu.Unlock()
	if grew {
		s.kick(w.r)
	}
}

// matchFamily keeps the targets of the source address's family: an IPv4
// source cannot reach an IPv6 host and the other way round. When none is
// left, another source of the VMTA of the other family is used, if it
// has one. A source without an address (the system's choice) keeps all.
func matchFamily(targets []target, src vmta.SourceHost, v *vmta.VMTA) ([]target, vmta.SourceHost, error) {
	if !src.IP.IsValid() {
		return targets, src, nil
	}
	kept := make([]target, 0, len(targets))
	for _, t := range targets {
		if t.ip.Unmap().Is4() == src.IP.Unmap().Is4() {
			kept = append(kept, t)
		}
	}
	if len(kept) > 0 {
		return kept, src, nil
	}
	for _, alt := range v.SourceHosts {
		if alt.IP.IsValid() && alt.IP.Unmap().Is4() != src.IP.Unmap().Is4() {
			return targets, alt, nil
		}
	}
	fam := "IPv6"
	if src.IP.Unmap().Is4() {
		fam = "IPv4"
	}
	hosts := make([]string, 0, len(targets))
	for _, t := range targets {
		hosts = append(hosts, t.ip.String())
	}
	return nil, src, fmt.Errorf("4.4.4 virtual MTA %s has only %s source addresses, and the hosts have none (%s)", v.Name, fam, strings.Join(hosts, ", "))
}
