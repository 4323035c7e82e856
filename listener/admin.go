package listener

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// AdminOptions configure the admin HTTP API. Queue is required.
type AdminOptions struct {
	Queue *queue.Queue
	// Mode reports whether a queue key is in backoff mode and since when;
	// the scheduler answers it (the listener does not import delivery).
	Mode func(queue.Key) (backoff bool, since time.Time)
	// OnRemoved, if not nil, is called with each recipient that
	// POST /api/delete removed, once its removal is durable, so that the
	// caller can account for it (the listener does not import delivery).
	OnRemoved func(queue.Removal)
	// Listener, if not nil, is used instead of opening cfg.HTTPMgmtAddr;
	// StartAdmin takes ownership of it. Tests pass one on 127.0.0.1:0.
	Listener net.Listener
	// Started is when the process started, for the uptime in
	// GET /api/status; zero means when StartAdmin was called.
	Started time.Time
	// Metrics, if not nil, serves GET /metrics (Prometheus text format) to
	// clients with monitor access.
	Metrics http.Handler
	// Registry, if not nil, returns the running configuration snapshot:
	// the VMTAs view, effective settings, and which queues are orphaned.
	Registry func() *vmta.Registry
	// Activity, if not nil, reports a queue's connections, delivery rate,
	// last error and up to events recent outcomes (from the scheduler).
	Activity func(key queue.Key, events int) QueueActivity
	// SetMode, if not nil, switches the queues sel matches to backoff or
	// normal mode and returns how many changed.
	SetMode func(sel queue.Selector, backoff bool) int
	// ProviderOf, if not nil, names the provider a queue key is routed to
	// ("" before it is routed), for the provider of GET /api/queues.
	ProviderOf func(queue.Key) string
	// Providers, if not nil, lists the provider queues (GET
	// /api/providers).
	Providers func() []ProviderInfo
	// Shaping, if not nil, lists the traffic-shaping states in force (GET
	// /api/shaping).
	Shaping func() []ShapingState
	// LiftShaping, if not nil, ends the shaping states f selects and
	// returns how many it ended (POST /api/lift-shaping).
	LiftShaping func(f ShapingFilter) int
	// FileDescriptors, if not nil, reports the file-descriptor budget for
	// the status view.
	FileDescriptors func() FileDescriptors
	// HostsDown, if not nil, lists the MX host addresses down or failing
	// (GET /api/hosts).
	HostsDown func() []HostInfo
	// Reload, if not nil, reloads the configuration file (POST
	// /api/reload). It returns the new configuration and its warnings, or
	// an error (a *config.ErrorList for a refused file) when the running
	// configuration stays.
	Reload func() (cfg *config.Config, warnings []config.Diagnostic, err error)
	// InboundConnections and OutboundConnections, if not nil, count the
	// open SMTP connections for GET /api/status.
	InboundConnections  func() int
	OutboundConnections func() int
	// VMTAConnections, if not nil, counts the outbound connections per
	// VMTA for GET /api/vmtas; without it they are summed over the queues
	// that hold mail.
	VMTAConnections func() map[string]int
	// FreeSpace, if not nil, reports the free bytes where the spool lives.
	FreeSpace func() (uint64, error)
	// ConfigPath and Version are shown by GET /api/status, with SpoolDir,
	// the spool in use (a reload cannot move it), if set.
	ConfigPath string
	SpoolDir   string
	Version    string
	Logger     *slog.Logger
	// Limits bound the connections, timeouts and header size of the admin
	// port; the zero value gives the defaults (see AdminLimits).
	Limits AdminLimits
}

// Admin is the HTTP admin API on http-mgmt-port. Access follows
// http-access (the first rule matching the client's address gives its
// level; no rule, no access) and, when http-api-key is set, a bearer token.
type Admin struct {
	opts   AdminOptions
	limits AdminLimits // opts.Limits with the defaults filled in
	cfg    atomic.Pointer[config.Config]
	srv    *http.Server
	ln     *connLimiter
}

// StartAdmin opens the admin listener of cfg.
func StartAdmin(cfg *config.Config, opts AdminOptions) (*Admin, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Started.IsZero() {
		opts.Started = time.Now()
	}
	ln := opts.Listener
	if ln == nil {
		var err error
		ln, err = net.Listen("tcp", cfg.HTTPMgmtAddr.Value)
		if err != nil {
			return nil, fmt.Errorf("http-mgmt-port %s: %w", cfg.HTTPMgmtAddr.Value, err)
		}
	}
	a := &Admin{opts: opts, limits: opts.Limits.withDefaults()}
	a.cfg.Store(cfg)
	a.ln = newConnLimiter(ln, a.limits, a.anyAccess, opts.Logger)
	a.srv = &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: a.limits.ReadHeaderTimeout,
		ReadTimeout:       a.limits.ReadTimeout,
		// admit moves the write deadline of an admitted request to when
		// its handler starts answering; this one bounds the rest (a
		// refusal, a 404, net/http's own error answers).
		WriteTimeout:   a.limits.WriteTimeout,
		IdleTimeout:    a.limits.IdleTimeout,
		MaxHeaderBytes: a.limits.MaxHeaderBytes,
		// net/http logs a failed accept or a handler's panic here; the
		// admin API logs through its own logger.
		ErrorLog: slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := a.srv.Serve(a.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			opts.Logger.Error("admin API stopped", "err", err)
		}
	}()
	opts.Logger.Info("admin API open", "addr", ln.Addr().String())
	return a, nil
}

// Addr is the address the admin API listens on.
func (a *Admin) Addr() net.Addr { return a.ln.Addr() }

// SetConfig applies a reloaded configuration's access rules and key.
func (a *Admin) SetConfig(cfg *config.Config) { a.cfg.Store(cfg) }

// Shutdown stops the admin API.
func (a *Admin) Shutdown(ctx context.Context) error { return a.srv.Shutdown(ctx) }

// guard admits a request whose client has at least level and, when a key is
// configured, sends it as a bearer token, and runs h through admit.
// Refusals are 403 with a JSON message and never say which check failed to
// a stranger; the connection is closed after them (see writeError).
func (a *Admin) guard(level config.AccessLevel, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cfg := a.cfg.Load()
		ip, granted := clientAccess(cfg, r)
		if granted < level || !keyAccepted(cfg.APIKeys(), r) {
			a.opts.Logger.Warn("admin API refused", "client", ip.String(), "path", r.URL.Path, "level", granted.String())
			writeError(w, http.StatusForbidden, "access denied")
			return
		}
		a.admit(w, r, h)
	}
}

// keyAccepted reports whether r sends one of keys, as `Authorization:
// Bearer KEY` or as PowerMTA's `X-API-Key: KEY`; with no key configured,
// every request does. Every key is compared in constant time, so the
// answer's timing says nothing about which key came close.
func keyAccepted(keys []string, r *http.Request) bool {
	if len(keys) == 0 {
		return true
	}
	token, bearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !bearer {
		token = r.Header.Get("X-API-Key")
	}
	ok := 0
	for _, k := range keys {
		ok |= subtle.ConstantTimeCompare([]byte(token), []byte(k))
	}
	return ok == 1
}

// writeError answers with a JSON {"error": msg}. A 401 or 403 also closes
// the connection: a client that was refused has no use for it, and one
// kept open would let a refused client hold a descriptor until the idle
// timeout.
func writeError(w http.ResponseWriter, code int, msg string) {
	if code == http.StatusUnauthorized || code == http.StatusForbidden {
		w.Header().Set("Connection", "close")
	}
	writeJSON(w, code, map[string]string{"error": msg})
}

// writeJSON answers with v encoded as JSON.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// adminRoute is one endpoint of the admin API.
type adminRoute struct {
	method, path string
	level        config.AccessLevel
	handler      func(*Admin, http.ResponseWriter, *http.Request)
}

// adminRoutes lists every endpoint with the access level it needs.
var adminRoutes = []adminRoute{
	{"GET", "/api/queues", config.AccessMonitor, (*Admin).queues},
	{"GET", "/api/status", config.AccessMonitor, (*Admin).status},
	{"GET", "/api/queue", config.AccessMonitor, (*Admin).queueOne},
	{"GET", "/api/vmtas", config.AccessMonitor, (*Admin).vmtas},
	{"GET", "/api/domains", config.AccessMonitor, (*Admin).domains},
	{"GET", "/api/settings", config.AccessMonitor, (*Admin).settings},
	{"GET", "/api/providers", config.AccessMonitor, (*Admin).providers},
	{"GET", "/api/shaping", config.AccessMonitor, (*Admin).shapingStates},
	{"GET", "/api/hosts", config.AccessMonitor, (*Admin).hosts},
	{"POST", "/api/pause", config.AccessOperator, (*Admin).pause},
	{"POST", "/api/resume", config.AccessOperator, (*Admin).resume},
	{"POST", "/api/retry", config.AccessOperator, (*Admin).retry},
	{"POST", "/api/delete", config.AccessOperator, (*Admin).delete},
	{"POST", "/api/set-mode", config.AccessOperator, (*Admin).setMode},
	{"POST", "/api/lift-shaping", config.AccessOperator, (*Admin).liftShaping},
	{"POST", "/api/reload", config.AccessAdmin, (*Admin).reload},
	{"GET", "/debug/pprof/{name}", config.AccessAdmin, (*Admin).profile},
}

// routes builds the handler of the admin API: the endpoints, 405 for a
// known path with another method and 404 for anything else, both JSON.
func (a *Admin) routes() http.Handler {
	mux := http.NewServeMux()
	methods := map[string]string{}
	for _, rt := range adminRoutes {
		h := rt.handler
		mux.HandleFunc(rt.method+" "+rt.path, a.guard(rt.level, func(w http.ResponseWriter, r *http.Request) { h(a, w, r) }))
		methods[rt.path] = rt.method
	}
	if a.opts.Metrics != nil {
		mux.HandleFunc("GET /metrics", a.guard(config.AccessMonitor, a.opts.Metrics.ServeHTTP))
		methods["/metrics"] = "GET"
	}
	mux.HandleFunc("GET /{$}", a.guardByAddress(config.AccessMonitor, a.statusPage))
	methods["/"] = "GET"
	// An address without access learns nothing of the paths: it gets the
	// same 403 everywhere.
	mux.HandleFunc("/", a.guardByAddress(config.AccessMonitor, func(w http.ResponseWriter, r *http.Request) {
		m, ok := methods[r.URL.Path]
		if !ok && strings.HasPrefix(r.URL.Path, "/debug/pprof/") {
			m, ok = "GET", true
		}
		if ok {
			w.Header().Set("Allow", m)
			writeError(w, http.StatusMethodNotAllowed, "method not allowed; use "+m)
			return
		}
		writeError(w, http.StatusNotFound, "not found")
	}))
	return mux
}

// opParams are the parameters of the POST operations, from the query
// string or a JSON body (whose fields win).
type opParams struct {
	Queue string `json:"queue"`
	Job   string `json:"job"`
	Mode  string `json:"mode"`
	All   bool   `json:"-"`
}

// maxAdminBody bounds the body of a request (admit reads it whole); the
// operations' JSON objects are a few hundred bytes.
const maxAdminBody = 64 << 10

// readParams reads the operation parameters of r. all is "yes" (or "true")
// in the query, yes/true or a JSON boolean in a body.
func readParams(r *http.Request) (opParams, error) {
	q := r.URL.Query()
	p := opParams{Queue: q.Get("queue"), Job: q.Get("job"), Mode: q.Get("mode"), All: isYes(q.Get("all"))}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxAdminBody))
	if err != nil {
		return p, fmt.Errorf("reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return p, nil
	}
	var j struct {
		Queue *string          `json:"queue"`
		Job   *string          `json:"job"`
		Mode  *string          `json:"mode"`
		All   *json.RawMessage `json:"all"`
	}
	if err := decodeObject(body, &j); err != nil {
		return p, fmt.Errorf("the request body is not a JSON object of queue, job, mode and all: %v", err)
	}
	if j.Queue != nil {
		p.Queue = *j.Queue
	}
	if j.Job != nil {
		p.Job = *j.Job
	}
	if j.Mode != nil {
		p.Mode = *j.Mode
	}
	if j.All != nil {
		if p.All, err = jsonYes(*j.All); err != nil {
			return p, err
		}
	}
	return p, nil
}

// decodeObject decodes body, one JSON object of the fields of v and
// nothing else, into v.
func decodeObject(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	// Decode stops after the first value. What follows it (a second
	// object, stray text) must be refused, not ignored: a client that sent
	// two objects meant something the first alone does not say.
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("more data after the JSON object; send one object only")
	}
	return nil
}

// jsonYes reads "all" of a JSON body: a boolean, or a string that isYes
// judges.
func jsonYes(raw json.RawMessage) (bool, error) {
	var b bool
	var s string
	switch {
	case json.Unmarshal(raw, &b) == nil:
		return b, nil
	case json.Unmarshal(raw, &s) == nil:
		return isYes(s), nil
	}
	return false, errors.New(`"all" must be yes, no, true or false`)
}

// isYes reports whether s is a yes value of a parameter.
func isYes(s string) bool {
	switch strings.ToLower(s) {
	case "yes", "true", "1":
		return true
	}
	return false
}

// parseQueue maps a queue parameter (domain/vmta, */vmta, domain/* or,
// with all, */*) to a Selector.
func parseQueue(s string, all bool) (queue.Selector, error) {
	domain, vmta, ok := strings.Cut(s, "/")
	if !ok || domain == "" || vmta == "" || strings.Contains(vmta, "/") {
		return queue.Selector{}, fmt.Errorf("queue %q: want domain/vmta, */vmta or domain/*", s)
	}
	var sel queue.Selector
	if domain != "*" {
		sel.Domain = strings.ToLower(domain)
	}
	if vmta != "*" {
		sel.VMTA = vmta
	}
	if sel.Domain == "" && sel.VMTA == "" && !all {
		return sel, errors.New("queue */* selects every queue; add all=yes to mean it")
	}
	return sel, nil
}

// parseExactQueue reads the name of one queue, domain/vmta, without
// wildcards.
func parseExactQueue(s string) (queue.Key, error) {
	sel, err := parseQueue(s, true)
	if err != nil || sel.Domain == "" || sel.VMTA == "" {
		return queue.Key{}, fmt.Errorf("queue %q: want domain/vmta", s)
	}
	return queue.Key{VMTA: sel.VMTA, Domain: sel.Domain}, nil
}

// selectorOf reads the queue selector of an operation; job is allowed only
// when jobOK, and then either suffices.
func selectorOf(r *http.Request, jobOK bool) (queue.Selector, opParams, error) {
	p, err := readParams(r)
	if err != nil {
		return queue.Selector{}, p, err
	}
	if p.Job != "" && !jobOK {
		return queue.Selector{}, p, errors.New("job is not supported by this operation")
	}
	if p.Queue == "" {
		if p.Job != "" {
			return queue.Selector{JobID: p.Job}, p, nil
		}
		if jobOK {
			return queue.Selector{}, p, errors.New("missing queue or job")
		}
		return queue.Selector{}, p, errors.New("missing queue")
	}
	// A job narrows */* enough to need no all=yes.
	sel, err := parseQueue(p.Queue, p.All || p.Job != "")
	sel.JobID = p.Job
	return sel, p, err
}

// opResult is the answer of a queue operation.
type opResult struct {
	Queue   string   `json:"queue,omitempty"`
	Job     string   `json:"job,omitempty"`
	Count   int      `json:"count"`
	Matched []string `json:"matched"`
}

// matched names the existing queue keys sel matches (with a job, those
// holding some of its recipients).
func (a *Admin) matched(sel queue.Selector) []string {
	out := []string{}
	for _, st := range a.opts.Queue.Keys(sel) {
		out = append(out, st.Key.String())
	}
	return out
}

// keyOp runs a selector operation that does not take a job: pause, resume
// or retry. Count is what op returned; Matched the queues sel matches.
func (a *Admin) keyOp(w http.ResponseWriter, r *http.Request, name string, op func(queue.Selector) (int, error)) {
	sel, p, err := selectorOf(r, false)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n, err := op(sel)
	if err != nil {
		a.opError(w, name, err)
		return
	}
	a.opts.Logger.Info("admin "+name, "queue", p.Queue, "count", n, "client", r.RemoteAddr)
	writeJSON(w, http.StatusOK, opResult{Queue: p.Queue, Count: n, Matched: a.matched(sel)})
}

// opError answers a failed queue operation: 400 for an invalid argument,
// 500 otherwise.
func (a *Admin) opError(w http.ResponseWriter, name string, err error) {
	if errors.Is(err, queue.ErrInvalid) {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	a.opts.Logger.Error("admin "+name+" failed", "err", err)
	writeError(w, http.StatusInternalServerError, name+" failed: "+err.Error())
}

// pause pauses the queues of the queue parameter (POST /api/pause); count
// is the number of queues that were not paused before.
func (a *Admin) pause(w http.ResponseWriter, r *http.Request) {
	a.keyOp(w, r, "pause", a.opts.Queue.Pause)
}

// resume resumes the queues of the queue parameter (POST /api/resume);
// count is the number of queues resumed.
func (a *Admin) resume(w http.ResponseWriter, r *http.Request) {
	a.keyOp(w, r, "resume", a.opts.Queue.Resume)
}

// retry makes the deferred recipients of the queue parameter due now
// (POST /api/retry); count is the number of recipients moved.
func (a *Admin) retry(w http.ResponseWriter, r *http.Request) {
	a.keyOp(w, r, "retry", a.opts.Queue.RetryNow)
}

// delete removes the recipients of the queue and/or job parameters
// (POST /api/delete), reporting each through OnRemoved; count is the number
// removed.
func (a *Admin) delete(w http.ResponseWriter, r *http.Request) {
	sel, p, err := selectorOf(r, true)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	matched := a.matched(sel)
	n, err := a.opts.Queue.Delete(r.Context(), sel, a.opts.OnRemoved)
	if err != nil {
		a.opError(w, "delete", err)
		return
	}
	a.opts.Logger.Info("admin delete", "queue", p.Queue, "job", p.Job, "count", n, "client", r.RemoteAddr)
	writeJSON(w, http.StatusOK, opResult{Queue: p.Queue, Job: p.Job, Count: n, Matched: matched})
}
