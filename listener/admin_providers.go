package listener

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ternmta/tern/queue"
)

// The provider views of the admin API: delivery runs one queue per (VMTA,
// provider), where a provider is the set of domains that share MX hosts or
// an <mx-rollup-list> entry. These endpoints show those provider queues,
// the traffic-shaping states that hold them, and the MX hosts found dead;
// POST /api/lift-shaping ends shaping states. The caller fills the types
// below from the scheduler (the listener does not import delivery).

// ProviderInfo is one provider queue: one VMTA's mail to one provider.
type ProviderInfo struct {
	VMTA     string
	Provider string
	// Rollup is the <mx-rollup-list> name the provider came from, if any.
	Rollup string
	// Domains are the domains whose queues are routed to it, sorted.
	Domains []string
	// Connections counts its connections, open or being opened.
	Connections int
	// Backoff and BackoffSince are its mode.
	Backoff      bool
	BackoffSince time.Time
	// HeldUntil is when a suspension or a defer-queue rule stops holding
	// it; zero when nothing holds it.
	HeldUntil time.Time
	// MsgsPerConnection is the number of transactions per connection
	// learned from the provider's replies; 0 when none was learned.
	MsgsPerConnection int
	// Windows are its connection windows, one per source address.
	Windows []ProviderWindow
	// Shaping are the traffic-shaping states in force for it.
	Shaping []ShapingState
}

// ProviderWindow is the adaptive connection window of a provider from one
// source address.
type ProviderWindow struct {
	Source string
	// Limit is how many connections the window allows now; Open counts
	// those held (open or opening), Established those past the banner.
	Limit, Open, Established int
	// Ceiling caps the window until CeilingUntil, after a refusal at the
	// banner; 0 when there is none.
	Ceiling      int
	CeilingUntil time.Time
	// Refusals counts refusals at the banner; LastRefusal is the latest.
	Refusals    int
	LastRefusal time.Time
}

// ShapingState is one traffic-shaping state in force.
type ShapingState struct {
	VMTA     string
	Provider string
	Rollup   string
	// Action is backoff, suspend, disable-source-ip, reroute or
	// bounce-queue.
	Action string
	// Source is the address disabled (disable-source-ip); Reroute the VMTA
	// or pool the mail goes through instead (reroute).
	Source  string
	Reroute string
	Since   time.Time
	// Until is when it ends by itself; zero for a backoff that ends at a
	// delivery or when lifted.
	Until time.Time
	// Rule is the rule that triggered it ("file:line:col /regex/"), and
	// Reply the reply it matched.
	Rule  string
	Reply string
}

// ShapingFilter selects shaping states; an empty field matches every
// state. VMTA and Provider match whatever their case.
type ShapingFilter struct {
	VMTA, Provider, Action string
}

// empty reports whether f selects every state.
func (f ShapingFilter) empty() bool { return f.VMTA == "" && f.Provider == "" && f.Action == "" }

// matches reports whether f selects st.
func (f ShapingFilter) matches(st ShapingState) bool {
	return f.selects(st.VMTA, st.Provider) && (f.Action == "" || f.Action == st.Action)
}

// selects reports whether f's VMTA and provider select a provider queue.
func (f ShapingFilter) selects(vmta, provider string) bool {
	return (f.VMTA == "" || strings.EqualFold(f.VMTA, vmta)) &&
		(f.Provider == "" || strings.EqualFold(f.Provider, provider))
}

// HostInfo is an MX host address that failed from a source address.
type HostInfo struct {
	Source string
	// Name is the MX (or smart host) name the address was dialed as.
	Name string
	// Host is the address and port, as "192.0.2.1:25" or "[2001:db8::1]:25".
	Host string
	// Failures counts consecutive failures to open a session.
	Failures int
	// DownUntil is when its next probe is due; zero while it is not down
	// (it failed fewer times than host-down-after).
	DownUntil time.Time
	LastError string
	// Open counts its sessions open now.
	Open int
}

// shapingActions are the actions a shaping state can have.
var shapingActions = []string{"backoff", "suspend", "disable-source-ip", "reroute", "bounce-queue"}

// optTime is t for JSON: nil (left out) when zero.
func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// secondsUntil is the whole seconds from now to t, at least 0; nil when t
// is zero.
func secondsUntil(t, now time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	s := max(int64(t.Sub(now)/time.Second), 0)
	return &s
}

// shapingView is a shaping state in GET /api/shaping and /api/providers.
type shapingView struct {
	VMTA     string     `json:"vmta"`
	Provider string     `json:"provider"`
	Rollup   string     `json:"rollup,omitempty"`
	Action   string     `json:"action"`
	Source   string     `json:"source,omitempty"`
	Reroute  string     `json:"reroute,omitempty"`
	Since    time.Time  `json:"since"`
	Until    *time.Time `json:"until,omitempty"`
	// ExpiresInSeconds is the time left, by the server's clock.
	ExpiresInSeconds *int64 `json:"expires_in_seconds,omitempty"`
	Rule             string `json:"rule"`
	Reply            string `json:"reply,omitempty"`
}

func shapingViewOf(st ShapingState, now time.Time) shapingView {
	return shapingView{VMTA: st.VMTA, Provider: st.Provider, Rollup: st.Rollup, Action: st.Action, Source: st.Source,
		Reroute: st.Reroute, Since: st.Since, Until: optTime(st.Until), ExpiresInSeconds: secondsUntil(st.Until, now),
		Rule: st.Rule, Reply: st.Reply}
}

// windowView is one connection window in GET /api/providers.
type windowView struct {
	Source       string     `json:"source"`
	Limit        int        `json:"limit"`
	Open         int        `json:"open"`
	Established  int        `json:"established"`
	Ceiling      int        `json:"ceiling,omitempty"`
	CeilingUntil *time.Time `json:"ceiling_until,omitempty"`
	Refusals     int        `json:"refusals"`
	LastRefusal  *time.Time `json:"last_refusal,omitempty"`
}

// providerView is one row of GET /api/providers.
type providerView struct {
	Provider string `json:"provider"`
	VMTA     string `json:"vmta"`
	Rollup   string `json:"rollup,omitempty"`
	// DomainCount counts the domains routed to it; Domains lists the
	// first of them (see ?domains=), DomainsMore counts the rest.
	DomainCount int      `json:"domain_count"`
	Domains     []string `json:"domains"`
	DomainsMore int      `json:"domains_more"`
	// Recipients counts the recipients queued for its domains.
	Recipients        int           `json:"recipients"`
	Connections       int           `json:"connections"`
	Mode              string        `json:"mode"`
	BackoffSince      *time.Time    `json:"backoff_since,omitempty"`
	HeldUntil         *time.Time    `json:"held_until,omitempty"`
	MsgsPerConnection int           `json:"msgs_per_connection"`
	Windows           []windowView  `json:"windows"`
	Shaping           []shapingView `json:"shaping"`
}

// defaultListedDomains and maxListedDomains bound ?domains= of GET
// /api/providers: a rollup such as a big provider's can hold tens of
// thousands of domains.
const (
	defaultListedDomains = 100
	maxListedDomains     = 1000
)

// providers lists the provider queues, by provider then VMTA (GET
// /api/providers). ?vmta= and ?provider= select them (whatever the case);
// ?domains=N lists at most N domain names per row (100 by default).
func (a *Admin) providers(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	listed := defaultListedDomains
	if s := q.Get("domains"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > maxListedDomains {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("domains=%q: want a number from 0 to %d", s, maxListedDomains))
			return
		}
		listed = n
	}
	filter := ShapingFilter{VMTA: q.Get("vmta"), Provider: q.Get("provider")}
	out := []providerView{}
	if a.opts.Providers == nil {
		writeJSON(w, http.StatusOK, out)
		return
	}
	now := time.Now()
	for _, p := range a.opts.Providers() {
		if !filter.selects(p.VMTA, p.Provider) {
			continue
		}
		v := providerView{Provider: p.Provider, VMTA: p.VMTA, Rollup: p.Rollup, DomainCount: len(p.Domains),
			Domains: slices.Clone(p.Domains[:min(listed, len(p.Domains))]), Connections: p.Connections, Mode: "normal",
			HeldUntil: optTime(p.HeldUntil), MsgsPerConnection: p.MsgsPerConnection,
			Windows: []windowView{}, Shaping: []shapingView{}}
		if v.Domains == nil {
			v.Domains = []string{}
		}
		v.DomainsMore = v.DomainCount - len(v.Domains)
		for _, d := range p.Domains {
			v.Recipients += a.opts.Queue.Stats(queue.Key{VMTA: p.VMTA, Domain: d}).Total()
		}
		if p.Backoff {
			v.Mode, v.BackoffSince = "backoff", optTime(p.BackoffSince)
		}
		for _, win := range p.Windows {
			v.Windows = append(v.Windows, windowView{Source: win.Source, Limit: win.Limit, Open: win.Open,
				Established: win.Established, Ceiling: win.Ceiling, CeilingUntil: optTime(win.CeilingUntil),
				Refusals: win.Refusals, LastRefusal: optTime(win.LastRefusal)})
		}
		for _, st := range p.Shaping {
			v.Shaping = append(v.Shaping, shapingViewOf(st, now))
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, out)
}

// shapingFilterOf reads ?vmta=, ?provider= and ?action= of a view.
func shapingFilterOf(r *http.Request) (ShapingFilter, error) {
	q := r.URL.Query()
	f := ShapingFilter{VMTA: q.Get("vmta"), Provider: q.Get("provider"), Action: q.Get("action")}
	return f, checkAction(f.Action)
}

// checkAction refuses an action no shaping state has.
func checkAction(action string) error {
	if action != "" && !slices.Contains(shapingActions, action) {
		return fmt.Errorf("action %q: want one of %s", action, strings.Join(shapingActions, ", "))
	}
	return nil
}

// shapingStates lists the traffic-shaping states in force, which
// ?vmta=, ?provider= and ?action= may narrow (GET /api/shaping).
func (a *Admin) shapingStates(w http.ResponseWriter, r *http.Request) {
	f, err := shapingFilterOf(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, a.shapingMatching(f, time.Now()))
}

// shapingMatching is the views of the states in force that f selects.
func (a *Admin) shapingMatching(f ShapingFilter, now time.Time) []shapingView {
	out := []shapingView{}
	if a.opts.Shaping == nil {
		return out
	}
	for _, st := range a.opts.Shaping() {
		if f.matches(st) {
			out = append(out, shapingViewOf(st, now))
		}
	}
	return out
}

// liftResult is the answer of POST /api/lift-shaping.
type liftResult struct {
	VMTA     string `json:"vmta,omitempty"`
	Provider string `json:"provider,omitempty"`
	Action   string `json:"action,omitempty"`
	// Count is how many states were lifted; Matched the states the filter
	// selected just before.
	Count   int           `json:"count"`
	Matched []shapingView `json:"matched"`
}

// readLiftParams reads vmta, provider, action and all of POST
// /api/lift-shaping from the query string or a JSON body (whose fields
// win), as readParams does for the queue operations.
func readLiftParams(r *http.Request) (ShapingFilter, bool, error) {
	q := r.URL.Query()
	f := ShapingFilter{VMTA: q.Get("vmta"), Provider: q.Get("provider"), Action: q.Get("action")}
	all := isYes(q.Get("all"))
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxAdminBody))
	if err != nil {
		return f, all, fmt.Errorf("reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) > 0 {
		var j struct {
			VMTA     *string          `json:"vmta"`
			Provider *string          `json:"provider"`
			Action   *string          `json:"action"`
			All      *json.RawMessage `json:"all"`
		}
		if err := decodeObject(body, &j); err != nil {
			return f, all, fmt.Errorf("the request body is not a JSON object of vmta, provider, action and all: %v", err)
		}
		for _, p := range []struct {
			dst *string
			src *string
		}{{&f.VMTA, j.VMTA}, {&f.Provider, j.Provider}, {&f.Action, j.Action}} {
			if p.src != nil {
				*p.dst = *p.src
			}
		}
		if j.All != nil {
			if all, err = jsonYes(*j.All); err != nil {
				return f, all, err
			}
		}
	}
	return f, all, checkAction(f.Action)
}

// liftShaping ends the shaping states that vmta, provider and action
// select (POST /api/lift-shaping). Without any of them it would end them
// all, so that takes all=yes too: a mistyped parameter name must not lift
// every suspension at once.
func (a *Admin) liftShaping(w http.ResponseWriter, r *http.Request) {
	f, all, err := readLiftParams(r)
	if err == nil && f.empty() && !all {
		err = errors.New("no vmta, provider or action given: that lifts every shaping state; add all=yes to mean it")
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if a.opts.LiftShaping == nil {
		writeError(w, http.StatusNotImplemented, "no delivery scheduler to lift shaping states of")
		return
	}
	matched := a.shapingMatching(f, time.Now())
	n := a.opts.LiftShaping(f)
	a.opts.Logger.Info("admin lift-shaping", "vmta", f.VMTA, "provider", f.Provider, "action", f.Action,
		"count", n, "client", r.RemoteAddr)
	writeJSON(w, http.StatusOK, liftResult{VMTA: f.VMTA, Provider: f.Provider, Action: f.Action, Count: n, Matched: matched})
}

// hostView is one row of GET /api/hosts.
type hostView struct {
	Host      string     `json:"host"`
	Name      string     `json:"name,omitempty"`
	Source    string     `json:"source"`
	Failures  int        `json:"failures"`
	Down      bool       `json:"down"`
	DownUntil *time.Time `json:"down_until,omitempty"`
	// ProbeInSeconds is the time until its next probe, by the server's
	// clock; 0 when it is due.
	ProbeInSeconds *int64 `json:"probe_in_seconds,omitempty"`
	LastError      string `json:"last_error,omitempty"`
	Open           int    `json:"open"`
}

// hosts lists the MX host addresses down or failing from a source
// address (GET /api/hosts).
func (a *Admin) hosts(w http.ResponseWriter, r *http.Request) {
	out := []hostView{}
	if a.opts.HostsDown != nil {
		now := time.Now()
		for _, h := range a.opts.HostsDown() {
			out = append(out, hostView{Host: h.Host, Name: h.Name, Source: h.Source, Failures: h.Failures, Down: !h.DownUntil.IsZero(),
				DownUntil: optTime(h.DownUntil), ProbeInSeconds: secondsUntil(h.DownUntil, now),
				LastError: h.LastError, Open: h.Open})
		}
	}
	writeJSON(w, http.StatusOK, out)
}
