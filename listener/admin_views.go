package listener

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// QueueActivity is what delivery knows of one queue right now. The caller
// fills it from the scheduler (the listener does not import delivery).
type QueueActivity struct {
	Connections         int
	DeliveredLastMinute int
	LastError           string
	LastErrorAt         time.Time
	Events              []QueueEvent // newest first
	// Held says why delivery holds the queue's mail without sending it
	// (max-msg-rate 0); empty when it does not.
	Held string
}

// QueueEvent is one recipient outcome in a queue's detail view.
type QueueEvent struct {
	Time       time.Time `json:"time"`
	ID         string    `json:"id"`
	Recipient  string    `json:"recipient"`
	Kind       string    `json:"kind"`
	Reply      string    `json:"reply"`
	RemoteHost string    `json:"remote_host,omitempty"`
	RemoteIP   string    `json:"remote_ip,omitempty"`
	SourceIP   string    `json:"source_ip,omitempty"`
}

// queueView is one row of GET /api/queues.
type queueView struct {
	Queue            string     `json:"queue"`
	VMTA             string     `json:"vmta"`
	Domain           string     `json:"domain"`
	Provider         string     `json:"provider,omitempty"` // its provider queue; none before delivery routed it
	Ready            int        `json:"ready"`
	Deferred         int        `json:"deferred"`
	Leased           int        `json:"leased"`
	Total            int        `json:"total"`
	Paused           bool       `json:"paused"`
	Mode             string     `json:"mode"`
	BackoffSince     *time.Time `json:"backoff_since,omitempty"`
	Oldest           *time.Time `json:"oldest,omitempty"`
	OldestAgeSeconds int64      `json:"oldest_age_seconds"`
	NextAttempt      *time.Time `json:"next_attempt,omitempty"`
	Connections      int        `json:"connections"`
	RatePerMinute    int        `json:"rate_per_minute"`
	LastError        string     `json:"last_error,omitempty"`
	LastErrorAt      *time.Time `json:"last_error_at,omitempty"`
	// Orphaned is set when the queue's VMTA is not in the running
	// configuration: its mail waits for the VMTA to return or an operator
	// to delete it.
	Orphaned bool `json:"orphaned"`
	// Held says why delivery holds the queue's mail without sending it,
	// as an operator's pause would ("max-msg-rate 0 at tern.conf:12:5");
	// absent when it does not.
	Held string `json:"held,omitempty"`
}

// queueDetail is the answer of GET /api/queue.
type queueDetail struct {
	queueView
	Events []QueueEvent `json:"events"`
}

// activity asks delivery about key; nothing is known without a source.
func (a *Admin) activity(key queue.Key, events int) QueueActivity {
	if a.opts.Activity == nil {
		return QueueActivity{}
	}
	return a.opts.Activity(key, events)
}

// configured reports whether the running configuration has the VMTA.
func (a *Admin) configured(reg *vmta.Registry, name string) bool {
	if reg == nil {
		return true // no registry to ask: nothing is called orphaned
	}
	_, ok := reg.VMTA(name)
	return ok
}

// registry is the running configuration snapshot, or nil.
func (a *Admin) registry() *vmta.Registry {
	if a.opts.Registry == nil {
		return nil
	}
	return a.opts.Registry()
}

// view builds the row of one queue; act is its activity.
func (a *Admin) view(st queue.KeyStats, act QueueActivity, reg *vmta.Registry, now time.Time) queueView {
	v := queueView{Queue: st.Key.String(), VMTA: st.Key.VMTA, Domain: st.Key.Domain,
		Ready: st.Ready, Deferred: st.Deferred, Leased: st.Leased, Total: st.Total(), Paused: st.Paused, Mode: "normal",
		Connections: act.Connections, RatePerMinute: act.DeliveredLastMinute, LastError: act.LastError,
		Orphaned: !a.configured(reg, st.Key.VMTA), Held: act.Held}
	if a.opts.ProviderOf != nil {
		v.Provider = a.opts.ProviderOf(st.Key)
	}
	if a.opts.Mode != nil {
		if on, since := a.opts.Mode(st.Key); on {
			v.Mode, v.BackoffSince = "backoff", &since
		}
	}
	if !st.Oldest.IsZero() {
		v.Oldest = &st.Oldest
		v.OldestAgeSeconds = int64(now.Sub(st.Oldest) / time.Second)
	}
	if !st.NextAttempt.IsZero() {
		v.NextAttempt = &st.NextAttempt
	}
	if !act.LastErrorAt.IsZero() {
		v.LastErrorAt = &act.LastErrorAt
	}
	return v
}

// boolFilter reads a yes/no query parameter; "" means no filter.
func boolFilter(r *http.Request, name string) (want, on bool, err error) {
	s := r.URL.Query().Get(name)
	switch strings.ToLower(s) {
	case "":
		return false, false, nil
	case "yes", "true", "1":
		return true, true, nil
	case "no", "false", "0":
		return false, true, nil
	}
	return false, false, fmt.Errorf("%s=%q: want yes or no", name, s)
}

// queues lists every non-empty queue, largest first. ?vmta= and ?domain=
// select exactly; ?provider= (whatever its case), ?mode=, ?paused= and
// ?orphaned= filter the rows.
func (a *Admin) queues(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	mode := strings.ToLower(q.Get("mode"))
	if mode != "" && mode != "normal" && mode != "backoff" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("mode=%q: want normal or backoff", q.Get("mode")))
		return
	}
	paused, byPaused, err := boolFilter(r, "paused")
	if err == nil {
		var orphaned, byOrphaned bool
		orphaned, byOrphaned, err = boolFilter(r, "orphaned")
		if err == nil {
			sel := queue.Selector{VMTA: q.Get("vmta"), Domain: strings.ToLower(q.Get("domain"))}
			provider := q.Get("provider")
			reg, now := a.registry(), time.Now()
			out := []queueView{}
			for _, st := range a.opts.Queue.Keys(sel) {
				v := a.view(st, a.activity(st.Key, 0), reg, now)
				if (mode != "" && v.Mode != mode) || (byPaused && v.Paused != paused) || (byOrphaned && v.Orphaned != orphaned) ||
					(provider != "" && !strings.EqualFold(v.Provider, provider)) {
					continue
				}
				out = append(out, v)
			}
			writeJSON(w, http.StatusOK, out)
			return
		}
	}
	writeError(w, http.StatusBadRequest, err.Error())
}

// maxEvents bounds ?events= of GET /api/queue.
const maxEvents = 100

// queueOne is one queue with its recent outcomes (GET /api/queue).
func (a *Admin) queueOne(w http.ResponseWriter, r *http.Request) {
	key, err := parseExactQueue(r.URL.Query().Get("queue"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n := 20
	if s := r.URL.Query().Get("events"); s != "" {
		if n, err = strconv.Atoi(s); err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("events=%q: want a number from 0 to %d", s, maxEvents))
			return
		}
		n = min(n, maxEvents)
	}
	st := a.opts.Queue.Stats(key)
	act := a.activity(key, max(n, 1)) // one event at least, to tell an idle queue from none
	if st.Total() == 0 && !st.Paused && len(act.Events) == 0 {
		writeError(w, http.StatusNotFound, fmt.Sprintf("queue %s holds no mail and has no recent deliveries", key))
		return
	}
	d := queueDetail{queueView: a.view(st, act, a.registry(), time.Now()), Events: act.Events[:min(n, len(act.Events))]}
	if d.Events == nil {
		d.Events = []QueueEvent{}
	}
	writeJSON(w, http.StatusOK, d)
}

// vmtaView is one row of GET /api/vmtas.
type vmtaView struct {
	Name        string   `json:"name"`
	HostName    string   `json:"host_name,omitempty"`
	SourceIPs   []string `json:"source_ips"`
	Pools       []string `json:"pools"`
	Configured  bool     `json:"configured"`
	MaxSMTPOut  int      `json:"max_smtp_out"`
	Queues      int      `json:"queues"`
	Recipients  int      `json:"recipients"`
	Connections int      `json:"connections"`
}

// vmtas lists the configured VMTAs and those that still hold mail after a
// reload removed them, by name, with their queued mail and connections.
func (a *Admin) vmtas(w http.ResponseWriter, r *http.Request) {
	rows := map[string]*vmtaView{}
	if reg := a.registry(); reg != nil {
		for _, v := range reg.VMTAs() {
			row := &vmtaView{Name: v.Name, Configured: true, MaxSMTPOut: v.MaxSMTPOut, SourceIPs: []string{}, Pools: []string{}}
			for _, sh := range v.SourceHosts {
				if sh.IP.IsValid() {
					row.SourceIPs = append(row.SourceIPs, sh.IP.String())
				}
				row.HostName = cmp.Or(row.HostName, sh.HostName)
			}
			rows[v.Name] = row
		}
		for _, p := range reg.Pools() {
			for _, m := range p.Members {
				if row := rows[m.Name]; row != nil {
					row.Pools = append(row.Pools, p.Name)
				}
			}
		}
	}
	for _, st := range a.opts.Queue.Keys(queue.Selector{}) {
		row := rows[st.Key.VMTA]
		if row == nil {
			row = &vmtaView{Name: st.Key.VMTA, Configured: a.opts.Registry == nil, SourceIPs: []string{}, Pools: []string{}}
			rows[st.Key.VMTA] = row
		}
		row.Queues++
		row.Recipients += st.Total()
		if a.opts.VMTAConnections == nil {
			row.Connections += a.activity(st.Key, 0).Connections
		}
	}
	if a.opts.VMTAConnections != nil {
		// Counted by the scheduler, so that connections kept open for a
		// queue that has just emptied count too.
		for name, n := range a.opts.VMTAConnections() {
			if row := rows[name]; row != nil {
				row.Connections = n
			}
		}
	}
	out := make([]*vmtaView, 0, len(rows))
	for _, row := range rows {
		out = append(out, row)
	}
	slices.SortFunc(out, func(x, y *vmtaView) int { return strings.Compare(x.Name, y.Name) })
	writeJSON(w, http.StatusOK, out)
}

// domainView is one row of GET /api/domains.
type domainView struct {
	Domain      string     `json:"domain"`
	Recipients  int        `json:"recipients"`
	Ready       int        `json:"ready"`
	Deferred    int        `json:"deferred"`
	Leased      int        `json:"leased"`
	Queues      int        `json:"queues"`
	Connections int        `json:"connections"`
	Oldest      *time.Time `json:"oldest,omitempty"`
}

// domains lists the destination domains with the most queued recipients,
// over all VMTAs (GET /api/domains?top=N, 20 by default).
func (a *Admin) domains(w http.ResponseWriter, r *http.Request) {
	top := 20
	if s := r.URL.Query().Get("top"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("top=%q: want a positive number", s))
			return
		}
		top = n
	}
	rows := map[string]*domainView{}
	for _, st := range a.opts.Queue.Keys(queue.Selector{}) {
		row := rows[st.Key.Domain]
		if row == nil {
			row = &domainView{Domain: st.Key.Domain}
			rows[st.Key.Domain] = row
		}
		row.Recipients += st.Total()
		row.Ready += st.Ready
		row.Deferred += st.Deferred
		row.Leased += st.Leased
		row.Queues++
		row.Connections += a.activity(st.Key, 0).Connections
		if !st.Oldest.IsZero() && (row.Oldest == nil || st.Oldest.Before(*row.Oldest)) {
			oldest := st.Oldest
			row.Oldest = &oldest
		}
	}
	out := make([]*domainView, 0, len(rows))
	for _, row := range rows {
		out = append(out, row)
	}
	slices.SortFunc(out, func(x, y *domainView) int {
		return cmp.Or(cmp.Compare(y.Recipients, x.Recipients), strings.Compare(x.Domain, y.Domain))
	})
	writeJSON(w, http.StatusOK, out[:min(top, len(out))])
}

// settingView is one directive of GET /api/settings.
type settingView struct {
	Directive string `json:"directive"`
	Value     string `json:"value"`
	SetAt     string `json:"set_at"`
	Default   bool   `json:"default"`
}

// settingsView is the answer of GET /api/settings.
type settingsView struct {
	Queue    string        `json:"queue"`
	VMTA     string        `json:"vmta"`
	Domain   string        `json:"domain"`
	Pool     string        `json:"pool,omitempty"`
	Blocks   []string      `json:"blocks"`
	Settings []settingView `json:"settings"`
}

// settings shows the effective delivery policy of a queue: every
// directive, its value, and the line that set it (GET
// /api/settings?queue=domain/vmta[&pool=P]).
func (a *Admin) settings(w http.ResponseWriter, r *http.Request) {
	key, err := parseExactQueue(r.URL.Query().Get("queue"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	reg := a.registry()
	if reg == nil {
		writeError(w, http.StatusNotFound, "no configuration to ask")
		return
	}
	if _, ok := reg.VMTA(key.VMTA); !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("virtual-mta %q is not configured", key.VMTA))
		return
	}
	pool := r.URL.Query().Get("pool")
	if _, ok := reg.Pool(pool); pool != "" && !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("virtual-mta-pool %q is not configured", pool))
		return
	}
	pol := reg.Policy(key.VMTA, pool, key.Domain)
	out := settingsView{Queue: key.String(), VMTA: key.VMTA, Domain: key.Domain, Pool: pool, Blocks: []string{}}
	for _, m := range pol.Matched {
		where := "top level"
		switch m.Level {
		case vmta.LevelVMTA:
			where = "<virtual-mta " + m.Owner + ">"
		case vmta.LevelPool:
			where = "<virtual-mta-pool " + m.Owner + ">"
		}
		out.Blocks = append(out.Blocks, fmt.Sprintf("<domain %s> in %s at %s", m.Block.Pattern, where, m.Block.Pos))
	}
	for _, d := range pol.Settings.Directives() {
		sv := settingView{Directive: d.Name, Value: d.Value, Default: !d.Set}
		if d.Set {
			sv.SetAt = d.Pos.String()
		}
		out.Settings = append(out.Settings, sv)
	}
	writeJSON(w, http.StatusOK, out)
}

// trafficView is the traffic of one window in GET /api/status.
type trafficView struct {
	MessagesIn   int64 `json:"messages_in"`
	RecipientsIn int64 `json:"recipients_in"`
	Delivered    int64 `json:"delivered"`
	Deferred     int64 `json:"deferred"`
	Bounced      int64 `json:"bounced"`
	Removed      int64 `json:"removed"`
	MessagesOut  int64 `json:"messages_out"`
}

func trafficOf(t queue.Traffic) trafficView {
	return trafficView{MessagesIn: t.MessagesIn, RecipientsIn: t.RecipientsIn, Delivered: t.Delivered,
		Deferred: t.Deferred, Bounced: t.Bounced, Removed: t.Removed, MessagesOut: t.MessagesOut}
}

// totalsView is the queue summary in GET /api/status.
type totalsView struct {
	Keys       int   `json:"queues"`
	Messages   int   `json:"messages"`
	Recipients int   `json:"recipients"`
	Ready      int   `json:"ready"`
	Deferred   int   `json:"deferred"`
	Leased     int   `json:"leased"`
	Bytes      int64 `json:"bytes"`
}

// statusView is the answer of GET /api/status.
type statusView struct {
	Started        time.Time `json:"started"`
	Uptime         string    `json:"uptime"`
	UptimeSeconds  int64     `json:"uptime_seconds"`
	Version        string    `json:"version,omitempty"`
	Config         string    `json:"config,omitempty"`
	Spool          string    `json:"spool"`
	SpoolFreeBytes *uint64   `json:"spool_free_bytes,omitempty"`
	SpoolDiskBytes uint64    `json:"spool_disk_bytes"`
	// SpoolError is set once a spool write failed: the queue then refuses
	// all mail (451) until tern serve is restarted.
	SpoolError  string     `json:"spool_error,omitempty"`
	Totals      totalsView `json:"totals"`
	Connections struct {
		Inbound  int `json:"inbound"`
		Outbound int `json:"outbound"`
	} `json:"connections"`
	Traffic struct {
		LastMinute trafficView `json:"last_minute"`
		LastHour   trafficView `json:"last_hour"`
	} `json:"traffic"`
	// FileDescriptors is the process's file-descriptor budget and use,
	// when the daemon gives it.
	FileDescriptors *FileDescriptors `json:"file_descriptors,omitempty"`
}

// FileDescriptors is how the process's file descriptors are shared out,
// and how many are open.
type FileDescriptors struct {
	Limit int `json:"limit"`
	Open  int `json:"open"`
	// The shares: the spool's, the admin API's connection cap, inbound
	// and outbound SMTP connections (each outbound one counts two: its
	// socket and a DNS socket).
	Spool    int `json:"spool"`
	Admin    int `json:"admin"`
	Inbound  int `json:"inbound"`
	Outbound int `json:"outbound"`
	// Lowered says the limit was too low for total-max-smtp-in and
	// total-max-smtp-out, which were lowered to fit.
	Lowered bool `json:"lowered,omitempty"`
}

// status reports uptime, the queue totals, connections, traffic and the
// spool with its free space.
func (a *Admin) status(w http.ResponseWriter, r *http.Request) {
	up := time.Since(a.opts.Started)
	t := a.opts.Queue.Totals()
	v := statusView{
		Started:       a.opts.Started,
		Uptime:        up.Truncate(time.Second).String(),
		UptimeSeconds: int64(up / time.Second),
		Version:       a.opts.Version,
		Config:        a.opts.ConfigPath,
		Spool:         cmp.Or(a.opts.SpoolDir, a.cfg.Load().Spool.Dir.Value),
		Totals: totalsView{Keys: t.Keys, Messages: t.Messages, Recipients: t.Recipients,
			Ready: t.Ready, Deferred: t.Deferred, Leased: t.Leased, Bytes: t.Bytes},
	}
	v.SpoolDiskBytes = a.opts.Queue.DiskUsage()
	if err := a.opts.Queue.Failed(); err != nil {
		v.SpoolError = err.Error() + "; mail is refused until tern serve is restarted"
	}
	if a.opts.FreeSpace != nil {
		if free, err := a.opts.FreeSpace(); err == nil {
			v.SpoolFreeBytes = &free
		}
	}
	if a.opts.InboundConnections != nil {
		v.Connections.Inbound = a.opts.InboundConnections()
	}
	if a.opts.OutboundConnections != nil {
		v.Connections.Outbound = a.opts.OutboundConnections()
	}
	if a.opts.FileDescriptors != nil {
		fd := a.opts.FileDescriptors()
		v.FileDescriptors = &fd
	}
	v.Traffic.LastMinute = trafficOf(a.opts.Queue.Traffic(time.Minute))
	v.Traffic.LastHour = trafficOf(a.opts.Queue.Traffic(time.Hour))
	writeJSON(w, http.StatusOK, v)
}

// setMode puts the queues of the queue parameter in backoff or normal mode
// (POST /api/set-mode); count is how many changed.
func (a *Admin) setMode(w http.ResponseWriter, r *http.Request) {
	sel, p, err := selectorOf(r, false)
	if err == nil && p.Mode != "backoff" && p.Mode != "normal" {
		err = fmt.Errorf("mode %q: want backoff or normal", p.Mode)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if a.opts.SetMode == nil {
		writeError(w, http.StatusNotImplemented, "no delivery scheduler to set the mode of")
		return
	}
	n := a.opts.SetMode(sel, p.Mode == "backoff")
	a.opts.Logger.Info("admin set-mode", "queue", p.Queue, "mode", p.Mode, "count", n, "client", r.RemoteAddr)
	writeJSON(w, http.StatusOK, struct {
		opResult
		Mode string `json:"mode"`
	}{opResult{Queue: p.Queue, Count: n, Matched: a.matched(sel)}, p.Mode})
}

// reloadView is the answer of POST /api/reload.
type reloadView struct {
	Reloaded bool     `json:"reloaded"`
	File     string   `json:"file,omitempty"`
	Warnings []string `json:"warnings"`
	Error    string   `json:"error,omitempty"`
	Errors   []string `json:"errors,omitempty"`
}

// reload reloads the configuration file (POST /api/reload): 200 with the
// warnings, or 422 with every error when the file is refused and the
// running configuration stays.
func (a *Admin) reload(w http.ResponseWriter, r *http.Request) {
	if a.opts.Reload == nil {
		writeError(w, http.StatusNotImplemented, "reload is not available")
		return
	}
	a.opts.Logger.Info("admin reload", "client", r.RemoteAddr)
	cfg, warnings, err := a.opts.Reload()
	v := reloadView{File: a.opts.ConfigPath, Warnings: diagStrings(warnings)}
	if err != nil {
		v.Error = "configuration refused"
		var list *config.ErrorList
		if errors.As(err, &list) {
			v.Errors = diagStrings(list.Errors)
		} else {
			v.Errors = []string{err.Error()}
		}
		writeJSON(w, http.StatusUnprocessableEntity, v)
		return
	}
	v.Reloaded = true
	if cfg != nil {
		// The reloader applies the new access rules too, but only once it
		// knows this API; a reload in the moment after start must not
		// leave the old rules in place.
		a.SetConfig(cfg)
	}
	writeJSON(w, http.StatusOK, v)
}

func diagStrings(ds []config.Diagnostic) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.String())
	}
	return out
}
