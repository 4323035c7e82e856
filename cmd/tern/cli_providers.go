package main

// The CLI commands of the provider views (see docs/operations.md, "CLI"):
// providers, shaping and hosts show how delivery stands with each
// provider queue, the traffic-shaping states in force and the MX hosts
// found dead; lift ends shaping states.

import (
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// shapingActions are the actions of traffic-shaping states, as the API
// names them.
var shapingActions = []string{"backoff", "suspend", "disable-source-ip", "reroute", "bounce-queue"}

// shapingRow is a traffic-shaping state of GET /api/shaping (and of the
// provider rows).
type shapingRow struct {
	VMTA             string     `json:"vmta"`
	Provider         string     `json:"provider"`
	Action           string     `json:"action"`
	Source           string     `json:"source"`
	Reroute          string     `json:"reroute"`
	Since            time.Time  `json:"since"`
	Until            *time.Time `json:"until"`
	ExpiresInSeconds *int64     `json:"expires_in_seconds"`
	Rule             string     `json:"rule"`
	Reply            string     `json:"reply"`
}

// what is the action with what it acts on: "suspend",
// "disable-source-ip 127.0.0.2", "reroute to mta2".
func (s *shapingRow) what() string {
	switch {
	case s.Source != "":
		return s.Action + " " + s.Source
	case s.Reroute != "":
		return s.Action + " to " + s.Reroute
	}
	return s.Action
}

// ends is when the state ends: "14:03 (in 9m12s)", or "no set end" for a
// backoff that ends at a delivery or when lifted.
func (s *shapingRow) ends(now time.Time) string {
	if s.Until == nil {
		return "no set end"
	}
	return clockTime(*s.Until, now) + " (" + inSeconds(s.Until, s.ExpiresInSeconds, now) + ")"
}

// withEnd is the state and its end: "suspend until 14:03 (in 9m12s)",
// "backoff (no set end)".
func (s *shapingRow) withEnd(now time.Time) string {
	if s.Until == nil {
		return s.what() + " (no set end)"
	}
	return s.what() + " until " + s.ends(now)
}

// clockTime is t as local wall-clock time: "14:03" today, with the date
// on another day.
func clockTime(t, now time.Time) string {
	t, now = t.Local(), now.Local()
	if y, m, d := t.Date(); y == now.Year() && m == now.Month() && d == now.Day() {
		return t.Format("15:04")
	}
	return t.Format("2006-01-02 15:04")
}

// inSeconds is the time left until t, "in 9m12s" or "due". It prefers the
// server's own count (secs), which does not depend on the two clocks
// agreeing.
func inSeconds(t *time.Time, secs *int64, now time.Time) string {
	if secs != nil {
		if *secs <= 0 {
			return "due"
		}
		return "in " + age(time.Duration(*secs)*time.Second)
	}
	return until(t, now)
}

// checkAction refuses an --action no shaping state has.
func checkAction(action string) error {
	if action != "" && !slices.Contains(shapingActions, action) {
		return fmt.Errorf("--action %q: want one of %s", action, strings.Join(shapingActions, ", "))
	}
	return nil
}

// --- providers -----------------------------------------------------------

// providerRow is one row of GET /api/providers.
type providerRow struct {
	Provider          string     `json:"provider"`
	VMTA              string     `json:"vmta"`
	Rollup            string     `json:"rollup"`
	DomainCount       int        `json:"domain_count"`
	Domains           []string   `json:"domains"`
	Recipients        int        `json:"recipients"`
	Connections       int        `json:"connections"`
	Mode              string     `json:"mode"`
	BackoffSince      *time.Time `json:"backoff_since"`
	HeldUntil         *time.Time `json:"held_until"`
	MsgsPerConnection int        `json:"msgs_per_connection"`
	Windows           []struct {
		Source       string     `json:"source"`
		Limit        int        `json:"limit"`
		Open         int        `json:"open"`
		Ceiling      int        `json:"ceiling"`
		CeilingUntil *time.Time `json:"ceiling_until"`
	} `json:"windows"`
	Shaping []shapingRow `json:"shaping"`
}

// windows is the connection window per source address: "127.0.0.2 3/5",
// open connections over the window, with a ceiling learned from a refusal
// while it holds: "127.0.0.2 5/5 (ceiling 5 until 14:03)".
func (p *providerRow) windows(now time.Time) string {
	var out []string
	for _, w := range p.Windows {
		s := fmt.Sprintf("%s %d/%d", w.Source, w.Open, w.Limit)
		if w.Ceiling > 0 && w.CeilingUntil != nil && w.CeilingUntil.After(now) {
			s += fmt.Sprintf(" (ceiling %d until %s)", w.Ceiling, clockTime(*w.CeilingUntil, now))
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// mode is the mode, with how long a backoff has lasted.
func (p *providerRow) mode(now time.Time) string {
	if p.Mode == "backoff" && p.BackoffSince != nil {
		return "backoff " + ageSince(p.BackoffSince, now)
	}
	return p.Mode
}

// state lists the shaping states in force with their expiry, and a hold
// that no suspension explains (a defer-queue rule).
func (p *providerRow) state(now time.Time) string {
	var out []string
	suspended := false
	for _, s := range p.Shaping {
		out = append(out, s.withEnd(now))
		suspended = suspended || s.Action == "suspend"
	}
	if p.HeldUntil != nil && !suspended && p.HeldUntil.After(now) {
		out = append(out, "held until "+clockTime(*p.HeldUntil, now)+" ("+until(p.HeldUntil, now)+")")
	}
	return strings.Join(out, "; ")
}

// runProviders lists the provider queues.
func runProviders(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("providers", `usage: tern providers [flags]

lists the provider queues: the mail of one VMTA to one provider, that is to
the domains sharing MX hosts or an <mx-rollup-list> entry. Each row shows
its domains, queued recipients, connections, the connection window per
source address (open/allowed), its mode, and the traffic-shaping states in
force with when they end. --json lists the domains too.
`, stderr)
	vmtaF := fs.String("vmta", "", "only the provider queues of this `VMTA`")
	providerF := fs.String("provider", "", "only this `PROVIDER` (as the PROVIDER column names it)")
	c, code := startAPICommand(fs, f, args, 0, 0, stdout, stderr)
	if c == nil {
		return code
	}
	q := url.Values{}
	if *vmtaF != "" {
		q.Set("vmta", *vmtaF)
	}
	if *providerF != "" {
		q.Set("provider", *providerF)
	}
	var rows []providerRow
	if code, done := c.view("/api/providers", q, &rows); done {
		return code
	}
	if len(rows) == 0 {
		fmt.Fprintln(stdout, "no provider queue")
		return exitOK
	}
	now := time.Now()
	t := newTable(stdout, "PROVIDER", "VMTA", "DOMAINS", "QUEUED", "CONN", "WINDOW", "MODE", "STATE")
	for _, p := range rows {
		t.row(clip(p.Provider, 40), p.VMTA, strconv.Itoa(p.DomainCount), strconv.Itoa(p.Recipients),
			strconv.Itoa(p.Connections), p.windows(now), p.mode(now), p.state(now))
	}
	t.flush()
	return exitOK
}

// --- shaping and lift ----------------------------------------------------

// shapingFilterFlags registers --vmta, --provider and --action.
func shapingFilterFlags(add func(name, value, usage string) *string) (vmtaF, providerF, actionF *string) {
	vmtaF = add("vmta", "", "only the states of this `VMTA`")
	providerF = add("provider", "", "only the states of this `PROVIDER`")
	actionF = add("action", "", "only the states of this `action`: "+strings.Join(shapingActions, ", "))
	return
}

// runShaping lists the traffic-shaping states in force.
func runShaping(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("shaping", `usage: tern shaping [flags]

lists the traffic-shaping states in force: a provider queue suspended,
backed off, rerouted, bounced, or a source address disabled for it by a
rule of an <smtp-pattern-list>, with the rule, the reply that triggered it
and when it ends. tern lift ends them early.
`, stderr)
	vmtaF, providerF, actionF := shapingFilterFlags(fs.String)
	c, code := startAPICommand(fs, f, args, 0, 0, stdout, stderr)
	if c == nil {
		return code
	}
	if err := checkAction(*actionF); err != nil {
		return usageError(fs, stderr, "%v", err)
	}
	q := url.Values{}
	for name, v := range map[string]string{"vmta": *vmtaF, "provider": *providerF, "action": *actionF} {
		if v != "" {
			q.Set(name, v)
		}
	}
	var rows []shapingRow
	if code, done := c.view("/api/shaping", q, &rows); done {
		return code
	}
	if len(rows) == 0 {
		fmt.Fprintln(stdout, "no traffic-shaping state in force")
		return exitOK
	}
	now := time.Now()
	t := newTable(stdout, "PROVIDER", "VMTA", "ACTION", "SINCE", "ENDS", "RULE", "REPLY")
	for _, s := range rows {
		t.row(clip(s.Provider, 40), s.VMTA, s.what(), clockTime(s.Since, now), s.ends(now),
			s.Rule, clip(s.Reply, 60))
	}
	t.flush()
	return exitOK
}

// runLift ends traffic-shaping states.
func runLift(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("lift", `usage: tern lift [flags] [--vmta VMTA] [--provider PROVIDER] [--action ACTION]
       tern lift [flags] --all

ends the traffic-shaping states that the filters select (all of them
together), as if their time were up: a suspended provider queue sends
again, a disabled source address is used again, a backoff returns to
normal. At least one filter, or --all for every state, is required.
tern shaping lists the states and the names to use.
`, stderr)
	vmtaF, providerF, actionF := shapingFilterFlags(fs.String)
	all := fs.Bool("all", false, "every shaping state in force")
	c, code := startAPICommand(fs, f, args, 0, 0, stdout, stderr)
	if c == nil {
		return code
	}
	if err := checkAction(*actionF); err != nil {
		return usageError(fs, stderr, "%v", err)
	}
	params := map[string]any{}
	for name, v := range map[string]string{"vmta": *vmtaF, "provider": *providerF, "action": *actionF} {
		if v != "" {
			params[name] = v
		}
	}
	switch {
	case *all && len(params) > 0:
		return usageError(fs, stderr, "give --vmta, --provider or --action, or --all, not both")
	case *all:
		params["all"] = true
	case len(params) == 0:
		return usageError(fs, stderr, "missing --vmta, --provider or --action (or --all to lift every state)")
	}
	ans, code := c.call("POST", "/api/lift-shaping", nil, params)
	if code >= 0 {
		return code
	}
	var r struct {
		Count   int          `json:"count"`
		Matched []shapingRow `json:"matched"`
	}
	if code, done := c.decode(ans, &r); done {
		return code
	}
	matched := "none matched"
	if len(r.Matched) > 0 {
		var names []string
		for _, s := range r.Matched {
			names = append(names, s.what()+" of "+s.Provider+"/"+s.VMTA)
		}
		matched = "matched " + list(names)
	}
	fmt.Fprintf(stdout, "lift: %s lifted; %s\n", plural(r.Count, "shaping state"), matched)
	return exitOK
}

// --- hosts ---------------------------------------------------------------

// runHosts lists the MX hosts down or failing.
func runHosts(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("hosts", `usage: tern hosts [flags]

lists the MX host addresses that failed from a source address: "down"
after host-down-after failures in a row (no connection is tried until
its next probe, one per retry interval), "failing" before that.
`, stderr)
	c, code := startAPICommand(fs, f, args, 0, 0, stdout, stderr)
	if c == nil {
		return code
	}
	var rows []struct {
		Host           string     `json:"host"`
		Name           string     `json:"name"`
		Source         string     `json:"source"`
		Failures       int        `json:"failures"`
		Down           bool       `json:"down"`
		DownUntil      *time.Time `json:"down_until"`
		ProbeInSeconds *int64     `json:"probe_in_seconds"`
		LastError      string     `json:"last_error"`
		Open           int        `json:"open"`
	}
	if code, done := c.view("/api/hosts", nil, &rows); done {
		return code
	}
	if len(rows) == 0 {
		fmt.Fprintln(stdout, "no host is down or failing")
		return exitOK
	}
	now := time.Now()
	t := newTable(stdout, "HOST", "NAME", "SOURCE", "STATE", "FAILURES", "NEXT PROBE", "OPEN", "LAST ERROR")
	for _, h := range rows {
		state, probe := "failing", ""
		if h.Down {
			state = "down"
			if h.DownUntil != nil {
				probe = clockTime(*h.DownUntil, now) + " (" + inSeconds(h.DownUntil, h.ProbeInSeconds, now) + ")"
			}
		}
		t.row(h.Host, h.Name, h.Source, state, strconv.Itoa(h.Failures), probe, strconv.Itoa(h.Open), clipStart(h.LastError, 60))
	}
	t.flush()
	return exitOK
}
