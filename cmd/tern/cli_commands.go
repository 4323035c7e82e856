package main

// The CLI commands over the admin API (see api-contract in docs/operations.md,
// "CLI"): views (status, queues, vmtas, domains, settings) and operations
// (pause, resume, retry, delete, set-mode, reload). Each prints a table, or
// with --json the server's answer as it came. The provider views and lift
// are in cli_providers.go.

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ternmta/tern/listener"
)

// --- status -------------------------------------------------------------

// trafficCounts is one window of GET /api/status's traffic.
type trafficCounts struct {
	MessagesIn   int64 `json:"messages_in"`
	RecipientsIn int64 `json:"recipients_in"`
	Delivered    int64 `json:"delivered"`
	Deferred     int64 `json:"deferred"`
	Bounced      int64 `json:"bounced"`
	Removed      int64 `json:"removed"`
	MessagesOut  int64 `json:"messages_out"`
}

// statusAnswer is what the CLI reads of GET /api/status; fields a server
// does not send stay empty and are left out of the summary.
type statusAnswer struct {
	Started        time.Time `json:"started"`
	Uptime         string    `json:"uptime"`
	UptimeSeconds  int64     `json:"uptime_seconds"`
	Version        string    `json:"version"`
	Config         string    `json:"config"`
	Spool          string    `json:"spool"`
	SpoolFreeBytes *int64    `json:"spool_free_bytes"`
	SpoolDiskBytes *int64    `json:"spool_disk_bytes"`
	SpoolError     string    `json:"spool_error"`
	Totals         struct {
		Queues     int   `json:"queues"`
		Messages   int   `json:"messages"`
		Recipients int   `json:"recipients"`
		Ready      int   `json:"ready"`
		Deferred   int   `json:"deferred"`
		Leased     int   `json:"leased"`
		Bytes      int64 `json:"bytes"`
	} `json:"totals"`
	Connections *struct {
		Inbound  int `json:"inbound"`
		Outbound int `json:"outbound"`
	} `json:"connections"`
	Traffic *struct {
		LastMinute trafficCounts `json:"last_minute"`
		LastHour   trafficCounts `json:"last_hour"`
	} `json:"traffic"`
	FileDescriptors *struct {
		Limit    int  `json:"limit"`
		Open     int  `json:"open"`
		Spool    int  `json:"spool"`
		Admin    int  `json:"admin"`
		Inbound  int  `json:"inbound"`
		Outbound int  `json:"outbound"`
		Lowered  bool `json:"lowered"`
	} `json:"file_descriptors"`
}

// runStatus prints the server's summary: uptime, spool, queue totals,
// connections and recent traffic.
func runStatus(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("status", "usage: tern status [flags]\n\nprints a summary of the running server: uptime, spool, queued mail, connections and traffic.\n", stderr)
	c, code := startAPICommand(fs, f, args, 0, 0, stdout, stderr)
	if c == nil {
		return code
	}
	var st statusAnswer
	if code, done := c.view("/api/status", nil, &st); done {
		return code
	}
	printStatus(stdout, &st)
	return exitOK
}

// printStatus writes the status summary block.
func printStatus(w io.Writer, st *statusAnswer) {
	head := "tern"
	if st.Version != "" {
		head += " " + st.Version
	}
	fmt.Fprintf(w, "%s, up %s (since %s)\n", head, age(time.Duration(st.UptimeSeconds)*time.Second),
		st.Started.Local().Format("2006-01-02 15:04:05 MST"))
	t := newBlock(w)
	if st.Config != "" {
		t.row("config", st.Config)
	}
	spool := st.Spool
	if st.SpoolDiskBytes != nil {
		spool += fmt.Sprintf(", %s on disk", size(*st.SpoolDiskBytes))
	}
	if st.SpoolFreeBytes != nil {
		spool += fmt.Sprintf(" (%s free)", size(*st.SpoolFreeBytes))
	}
	t.row("spool", spool)
	if st.SpoolError != "" {
		t.row("SPOOL FAILED", st.SpoolError)
	}
	tot := st.Totals
	t.row("queued", fmt.Sprintf("%s in %s (%s), %s", plural(tot.Recipients, "recipient"), plural(tot.Messages, "message"),
		size(tot.Bytes), plural(tot.Queues, "queue")))
	t.row("", fmt.Sprintf("ready %d, deferred %d, leased %d", tot.Ready, tot.Deferred, tot.Leased))
	if st.Connections != nil {
		t.row("connections", fmt.Sprintf("inbound %d, outbound %d", st.Connections.Inbound, st.Connections.Outbound))
	}
	if fd := st.FileDescriptors; fd != nil {
		open := "?"
		if fd.Open >= 0 {
			open = strconv.Itoa(fd.Open)
		}
		line := fmt.Sprintf("%s open of %d; for spool %d, inbound %d, outbound %d (2 each), admin %d",
			open, fd.Limit, fd.Spool, fd.Inbound, fd.Outbound, fd.Admin)
		if fd.Lowered {
			line += " (lowered to fit the limit)"
		}
		t.row("file descriptors", line)
	}
	t.flush()
	if st.Traffic != nil {
		fmt.Fprintln(w)
		t := newTable(w, "TRAFFIC", "MESSAGES IN", "RECIPIENTS IN", "DELIVERED", "DEFERRED", "BOUNCED", "REMOVED", "MESSAGES OUT")
		for _, win := range []struct {
			name string
			c    trafficCounts
		}{{"last minute", st.Traffic.LastMinute}, {"last hour", st.Traffic.LastHour}} {
			c := win.c
			t.row(win.name, itoa(c.MessagesIn), itoa(c.RecipientsIn), itoa(c.Delivered), itoa(c.Deferred),
				itoa(c.Bounced), itoa(c.Removed), itoa(c.MessagesOut))
		}
		t.flush()
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// --- queues -------------------------------------------------------------

// queueRow is one row of GET /api/queues (and the head of GET /api/queue).
type queueRow struct {
	Queue            string     `json:"queue"`
	VMTA             string     `json:"vmta"`
	Domain           string     `json:"domain"`
	Provider         string     `json:"provider"`
	Ready            int        `json:"ready"`
	Deferred         int        `json:"deferred"`
	Leased           int        `json:"leased"`
	Total            *int       `json:"total"`
	Paused           bool       `json:"paused"`
	Mode             string     `json:"mode"`
	BackoffSince     *time.Time `json:"backoff_since"`
	Oldest           *time.Time `json:"oldest"`
	OldestAgeSeconds *float64   `json:"oldest_age_seconds"`
	NextAttempt      *time.Time `json:"next_attempt"`
	Connections      *int       `json:"connections"`
	RatePerMinute    *float64   `json:"rate_per_minute"`
	LastError        string     `json:"last_error"`
	LastErrorAt      *time.Time `json:"last_error_at"`
	Orphaned         bool       `json:"orphaned"`
	Held             string     `json:"held"`
}

// total is the row's recipient count, computed when the server omits it.
func (r *queueRow) total() int {
	if r.Total != nil {
		return *r.Total
	}
	return r.Ready + r.Deferred + r.Leased
}

// oldestAge prefers the server's own age, which does not depend on the two
// clocks agreeing.
func (r *queueRow) oldestAge(now time.Time) string {
	if r.OldestAgeSeconds != nil && r.Oldest != nil {
		return age(time.Duration(*r.OldestAgeSeconds * float64(time.Second)))
	}
	return ageSince(r.Oldest, now)
}

// state is "active", or "paused", "orphaned" and "held: REASON" as they
// apply; the reason of a hold without where it is written (the detail view
// has it whole).
func (r *queueRow) state() string {
	var s []string
	if r.Paused {
		s = append(s, "paused")
	}
	if r.Orphaned {
		s = append(s, "orphaned")
	}
	if r.Held != "" {
		why, _, _ := strings.Cut(r.Held, " at ")
		s = append(s, "held: "+why)
	}
	if len(s) == 0 {
		return "active"
	}
	return strings.Join(s, ",")
}

// mode is the mode, with how long a backoff has lasted.
func (r *queueRow) mode(now time.Time) string {
	if r.Mode == "backoff" && r.BackoffSince != nil {
		return "backoff " + ageSince(r.BackoffSince, now)
	}
	return r.Mode
}

func optInt(p *int) string {
	if p == nil {
		return ""
	}
	return strconv.Itoa(*p)
}

func optRate(p *float64) string {
	if p == nil {
		return ""
	}
	return strconv.FormatFloat(*p, 'f', -1, 64)
}

// runQueues lists the queues holding mail, or with a QUEUE argument shows
// one queue and its recent events.
func runQueues(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("queues", `usage: tern queues [flags]
       tern queues [flags] DOMAIN/VMTA

lists every queue holding mail, largest first; with DOMAIN/VMTA, shows that
queue and its recent delivery events.
`, stderr)
	vmtaF := fs.String("vmta", "", "only the queues of this `VMTA`")
	domainF := fs.String("domain", "", "only the queues of this `DOMAIN`")
	providerF := fs.String("provider", "", "only the queues routed to this `PROVIDER` (see tern providers)")
	modeF := fs.String("mode", "", "only queues in this `mode`: normal or backoff")
	pausedF := fs.String("paused", "", "only paused (yes) or unpaused (no) queues")
	orphanedF := fs.String("orphaned", "", "only queues whose VMTA is (yes) or is not (no) missing from the running configuration")
	events := fs.Int("events", 20, "with DOMAIN/VMTA, how many recent `events` to show (at most 100)")
	c, code := startAPICommand(fs, f, args, 0, 1, stdout, stderr)
	if c == nil {
		return code
	}
	if len(c.args) == 1 {
		if err := checkQueueName(c.args[0], false); err != nil {
			return usageError(fs, stderr, "%v", err)
		}
		if *events < 0 || *events > 100 {
			return usageError(fs, stderr, "--events must be 0 to 100")
		}
		return showQueue(c, c.args[0], *events)
	}
	q := url.Values{}
	for _, fl := range []struct {
		name, value string
		allowed     []string
	}{
		{"vmta", *vmtaF, nil}, {"domain", *domainF, nil}, {"provider", *providerF, nil},
		{"mode", *modeF, []string{"normal", "backoff"}},
		{"paused", *pausedF, []string{"yes", "no"}},
		{"orphaned", *orphanedF, []string{"yes", "no"}},
	} {
		if fl.value == "" {
			continue
		}
		if fl.allowed != nil && !slices.Contains(fl.allowed, fl.value) {
			return usageError(fs, stderr, "--%s %q: want %s", fl.name, fl.value, strings.Join(fl.allowed, " or "))
		}
		q.Set(fl.name, fl.value)
	}
	var rows []queueRow
	if code, done := c.view("/api/queues", q, &rows); done {
		return code
	}
	if len(rows) == 0 {
		fmt.Fprintln(stdout, "no queue holds mail")
		return exitOK
	}
	now := time.Now()
	t := newTable(stdout, "QUEUE", "PROVIDER", "TOTAL", "READY", "DEFERRED", "LEASED", "OLDEST", "NEXT ATTEMPT", "MODE", "STATE", "CONN", "RATE/MIN", "LAST ERROR")
	for _, r := range rows {
		t.row(r.Queue, clip(r.Provider, 32), strconv.Itoa(r.total()), strconv.Itoa(r.Ready), strconv.Itoa(r.Deferred),
			strconv.Itoa(r.Leased), r.oldestAge(now), until(r.NextAttempt, now), r.mode(now), r.state(),
			optInt(r.Connections), optRate(r.RatePerMinute), clip(r.LastError, 60))
	}
	t.flush()
	return exitOK
}

// showQueue prints one queue's counts and its recent events.
func showQueue(c *apiClient, name string, events int) int {
	var q struct {
		queueRow
		Events []listener.QueueEvent `json:"events"`
	}
	if code, done := c.view("/api/queue", url.Values{"queue": {name}, "events": {strconv.Itoa(events)}}, &q); done {
		return code
	}
	now := time.Now()
	t := newBlock(c.stdout)
	t.row("queue", q.Queue)
	t.row("provider", q.Provider)
	t.row("recipients", fmt.Sprintf("%d (ready %d, deferred %d, leased %d)", q.total(), q.Ready, q.Deferred, q.Leased))
	t.row("state", q.state())
	if q.Held != "" {
		t.row("held", q.Held+"; nothing is sent until a reload gives the queue a rate")
	}
	t.row("mode", q.mode(now))
	t.row("oldest", q.oldestAge(now))
	t.row("next attempt", until(q.NextAttempt, now))
	t.row("connections", optInt(q.Connections))
	t.row("rate/min", optRate(q.RatePerMinute))
	lastErr := q.LastError
	if lastErr != "" && q.LastErrorAt != nil {
		lastErr += " (" + ageSince(q.LastErrorAt, now) + " ago)"
	}
	t.row("last error", lastErr)
	t.flush()
	if len(q.Events) == 0 {
		return exitOK
	}
	fmt.Fprintln(c.stdout)
	t = newTable(c.stdout, "TIME", "KIND", "RECIPIENT", "ID", "HOST", "REPLY")
	for _, e := range q.Events {
		host := e.RemoteHost
		if e.RemoteIP != "" {
			host += " [" + e.RemoteIP + "]"
		}
		t.row(e.Time.Local().Format("15:04:05"), e.Kind, e.Recipient, e.ID, strings.TrimSpace(host), clip(e.Reply, 80))
	}
	t.flush()
	return exitOK
}

// --- vmtas, domains, settings ------------------------------------------

// runVMTAs lists the virtual MTAs with their queued mail.
func runVMTAs(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("vmtas", "usage: tern vmtas [flags]\n\nlists the virtual MTAs: source IPs, host name, pools and the mail they hold.\n", stderr)
	c, code := startAPICommand(fs, f, args, 0, 0, stdout, stderr)
	if c == nil {
		return code
	}
	var rows []struct {
		Name        string   `json:"name"`
		HostName    string   `json:"host_name"`
		SourceIPs   []string `json:"source_ips"`
		Pools       []string `json:"pools"`
		Configured  bool     `json:"configured"`
		Queues      int      `json:"queues"`
		Recipients  int      `json:"recipients"`
		Connections int      `json:"connections"`
	}
	if code, done := c.view("/api/vmtas", nil, &rows); done {
		return code
	}
	t := newTable(stdout, "VMTA", "SOURCE IPS", "HOST NAME", "POOLS", "QUEUES", "RECIPIENTS", "CONN", "CONFIGURED")
	for _, r := range rows {
		configured := "yes"
		if !r.Configured {
			configured = "no (holds mail)"
		}
		t.row(r.Name, strings.Join(r.SourceIPs, ","), r.HostName, strings.Join(r.Pools, ","), strconv.Itoa(r.Queues),
			strconv.Itoa(r.Recipients), strconv.Itoa(r.Connections), configured)
	}
	t.flush()
	return exitOK
}

// runDomains lists the destination domains holding the most mail.
func runDomains(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("domains", "usage: tern domains [flags]\n\nlists the destination domains holding the most mail, over all VMTAs.\n", stderr)
	top := fs.Int("top", 20, "show at most `N` domains")
	c, code := startAPICommand(fs, f, args, 0, 0, stdout, stderr)
	if c == nil {
		return code
	}
	if *top < 1 {
		return usageError(fs, stderr, "--top must be at least 1")
	}
	var rows []struct {
		Domain      string     `json:"domain"`
		Recipients  int        `json:"recipients"`
		Ready       int        `json:"ready"`
		Deferred    int        `json:"deferred"`
		Leased      int        `json:"leased"`
		Queues      int        `json:"queues"`
		Connections int        `json:"connections"`
		Oldest      *time.Time `json:"oldest"`
	}
	if code, done := c.view("/api/domains", url.Values{"top": {strconv.Itoa(*top)}}, &rows); done {
		return code
	}
	if len(rows) == 0 {
		fmt.Fprintln(stdout, "no queue holds mail")
		return exitOK
	}
	now := time.Now()
	t := newTable(stdout, "DOMAIN", "RECIPIENTS", "READY", "DEFERRED", "LEASED", "QUEUES", "CONN", "OLDEST")
	for _, r := range rows {
		t.row(r.Domain, strconv.Itoa(r.Recipients), strconv.Itoa(r.Ready), strconv.Itoa(r.Deferred), strconv.Itoa(r.Leased),
			strconv.Itoa(r.Queues), strconv.Itoa(r.Connections), ageSince(r.Oldest, now))
	}
	t.flush()
	return exitOK
}

// runSettings prints the effective delivery policy of a domain through a
// VMTA: each directive, its value, and where it was set.
func runSettings(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("settings", `usage: tern settings [flags] DOMAIN/VMTA

prints the delivery settings in effect for DOMAIN through VMTA: each
directive, its value and the file:line:col that set it ("default" when
nothing did), after the <domain> blocks that matched.
`, stderr)
	pool := fs.String("pool", "", "as for mail that chose VMTA through `POOL` (pool-level <domain> blocks apply)")
	c, code := startAPICommand(fs, f, args, 1, 1, stdout, stderr)
	if c == nil {
		return code
	}
	if err := checkQueueName(c.args[0], false); err != nil || strings.Contains(c.args[0], "*") {
		return usageError(fs, stderr, "want DOMAIN/VMTA without wildcards, not %q", c.args[0])
	}
	q := url.Values{"queue": {c.args[0]}}
	if *pool != "" {
		q.Set("pool", *pool)
	}
	var s struct {
		Queue    string   `json:"queue"`
		Pool     string   `json:"pool"`
		Blocks   []string `json:"blocks"`
		Settings []struct {
			Directive string `json:"directive"`
			Value     string `json:"value"`
			SetAt     string `json:"set_at"`
			Default   bool   `json:"default"`
		} `json:"settings"`
	}
	if code, done := c.view("/api/settings", q, &s); done {
		return code
	}
	via := ""
	if s.Pool != "" {
		via = " through pool " + s.Pool
	}
	fmt.Fprintf(stdout, "settings of %s%s\n", s.Queue, via)
	for _, b := range s.Blocks {
		fmt.Fprintf(stdout, "  matched %s\n", b)
	}
	fmt.Fprintln(stdout)
	t := newTable(stdout, "DIRECTIVE", "VALUE", "SET AT")
	for _, d := range s.Settings {
		at := d.SetAt
		if d.Default || at == "" {
			at = "default"
		}
		t.row(d.Directive, d.Value, at)
	}
	t.flush()
	return exitOK
}

// --- operations ----------------------------------------------------------

// queueOp describes one operation on queues: its endpoint and how to word
// its count.
type queueOp struct {
	name    string // command and endpoint
	summary string // what it does, for the usage
	counted string // what count counts, singular: "queue", "recipient"
	done    string // what happened to them: "paused", "deleted"
}

var (
	opPause  = queueOp{"pause", "stops delivery from the queues (mail is still accepted and kept)", "queue", "paused"}
	opResume = queueOp{"resume", "resumes delivery from paused queues", "queue", "resumed"}
	opRetry  = queueOp{"retry", "makes the deferred recipients of the queues due now", "recipient", "due now"}
)

// runPause, runResume and runRetry are the operations on queues that take
// only a queue.
func runPause(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	return runQueueOp(opPause, args, stdout, stderr)
}

func runResume(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	return runQueueOp(opResume, args, stdout, stderr)
}

func runRetry(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	return runQueueOp(opRetry, args, stdout, stderr)
}

// queueArgHelp explains QUEUE in the usage of the operations.
const queueArgHelp = `QUEUE is DOMAIN/VMTA, */VMTA (every domain of a VMTA) or DOMAIN/* (a
domain through every VMTA); --all means every queue (*/*).
`

// runQueueOp runs pause, resume or retry.
func runQueueOp(op queueOp, args []string, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet(op.name, fmt.Sprintf("usage: tern %s [flags] QUEUE\n       tern %s [flags] --all\n\n%s.\n%s",
		op.name, op.name, op.summary, queueArgHelp), stderr)
	all := fs.Bool("all", false, "every queue (*/*)")
	c, code := startAPICommand(fs, f, args, 0, 1, stdout, stderr)
	if c == nil {
		return code
	}
	params, ok := queueParams(fs, c.args, *all, false, stderr)
	if !ok {
		return exitUsage
	}
	return c.operate(op, params)
}

// runDelete removes recipients by queue and/or job.
func runDelete(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("delete", `usage: tern delete [flags] QUEUE
       tern delete [flags] --job JOB [QUEUE]
       tern delete [flags] --all

deletes queued recipients: those of QUEUE, of a job (X-Job), or both. Each
gets a b accounting record "deleted by administrator"; no bounce is sent.
`+queueArgHelp, stderr)
	all := fs.Bool("all", false, "every queue (*/*)")
	job := fs.String("job", "", "only the recipients of this `JOB`")
	c, code := startAPICommand(fs, f, args, 0, 1, stdout, stderr)
	if c == nil {
		return code
	}
	params, ok := queueParams(fs, c.args, *all, *job != "", stderr)
	if !ok {
		return exitUsage
	}
	if *job != "" {
		params["job"] = *job
	}
	return c.operate(queueOp{"delete", "", "recipient", "deleted"}, params)
}

// runSetMode puts queues into backoff mode or back to normal.
func runSetMode(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("set-mode", "usage: tern set-mode [flags] QUEUE backoff|normal\n       tern set-mode [flags] --all backoff|normal\n\nputs queues into backoff mode, or back to normal.\n"+queueArgHelp, stderr)
	all := fs.Bool("all", false, "every queue (*/*)")
	c, code := startAPICommand(fs, f, args, 1, 2, stdout, stderr)
	if c == nil {
		return code
	}
	mode := c.args[len(c.args)-1]
	if mode != "backoff" && mode != "normal" {
		return usageError(fs, stderr, "mode %q: want backoff or normal", mode)
	}
	params, ok := queueParams(fs, c.args[:len(c.args)-1], *all, false, stderr)
	if !ok {
		return exitUsage
	}
	params["mode"] = mode
	return c.operate(queueOp{"set-mode", "", "queue", "set to " + mode}, params)
}

// queueParams checks the QUEUE argument and --all of an operation and
// returns the request's parameters. jobGiven allows no queue at all.
func queueParams(fs *flag.FlagSet, args []string, all, jobGiven bool, stderr io.Writer) (map[string]any, bool) {
	params := map[string]any{}
	switch {
	case all && len(args) > 0:
		usageError(fs, stderr, "give QUEUE or --all, not both")
		return nil, false
	case all:
		params["queue"], params["all"] = "*/*", true
	case len(args) == 0 && jobGiven:
	case len(args) == 0:
		usageError(fs, stderr, "missing QUEUE (or --all)")
		return nil, false
	default:
		if err := checkQueueName(args[0], jobGiven); err != nil {
			usageError(fs, stderr, "%v", err)
			return nil, false
		}
		params["queue"] = args[0]
	}
	return params, true
}

// checkQueueName checks a QUEUE argument before it is sent: DOMAIN/VMTA,
// */VMTA or DOMAIN/*; */* only when allAllowed (a job narrows it).
func checkQueueName(s string, allAllowed bool) error {
	domain, vmta, ok := strings.Cut(s, "/")
	if !ok || domain == "" || vmta == "" || strings.Contains(vmta, "/") {
		return fmt.Errorf("queue %q: want DOMAIN/VMTA, */VMTA or DOMAIN/*", s)
	}
	if domain == "*" && vmta == "*" && !allAllowed {
		return fmt.Errorf("queue */* means every queue; say --all")
	}
	return nil
}

// operate posts an operation and prints what the server did: the count and
// the queues matched.
func (c *apiClient) operate(op queueOp, params map[string]any) int {
	ans, code := c.call("POST", "/api/"+op.name, nil, params)
	if code >= 0 {
		return code
	}
	var r struct {
		Count   int      `json:"count"`
		Matched []string `json:"matched"`
	}
	if code, done := c.decode(ans, &r); done {
		return code
	}
	matched := "no queue matched"
	if len(r.Matched) > 0 {
		matched = fmt.Sprintf("matched %s: %s", plural(len(r.Matched), "queue"), list(r.Matched))
	}
	fmt.Fprintf(c.stdout, "%s: %s %s; %s\n", op.name, plural(r.Count, op.counted), op.done, matched)
	return exitOK
}

// runReload asks the server to read its configuration file again.
func runReload(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs, f := apiFlagSet("reload", `usage: tern reload [flags]

makes the server read its configuration file again, as SIGHUP does. A file
with errors is refused (exit 1) and each error is printed as
FILE:LINE:COL: message; the server goes on with the configuration it had.
`, stderr)
	c, code := startAPICommand(fs, f, args, 0, 0, stdout, stderr)
	if c == nil {
		return code
	}
	ans, code := c.call("POST", "/api/reload", nil, nil)
	if code >= 0 {
		return code
	}
	var r struct {
		File     string   `json:"file"`
		Warnings []string `json:"warnings"`
	}
	if code, done := c.decode(ans, &r); done {
		return code
	}
	for _, w := range r.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	fmt.Fprintf(stdout, "reloaded %s (%s)\n", r.File, plural(len(r.Warnings), "warning"))
	return exitOK
}

// startAPICommand parses an API command's arguments, checks their number
// (min to max positional arguments) and builds its client. A nil client
// comes with the exit code to end with.
func startAPICommand(fs *flag.FlagSet, f *apiFlags, args []string, minArgs, maxArgs int, stdout, stderr io.Writer) (*apiClient, int) {
	pos, code := parseArgs(fs, args)
	if code >= 0 {
		return nil, code
	}
	if len(pos) < minArgs {
		return nil, usageError(fs, stderr, "missing arguments")
	}
	if len(pos) > maxArgs {
		return nil, usageError(fs, stderr, "unexpected arguments: %s", strings.Join(pos[maxArgs:], " "))
	}
	c, ok := newAPIClient(fs, f, stdout, stderr)
	if !ok {
		return nil, exitUsage
	}
	c.args = pos
	return c, -1
}
