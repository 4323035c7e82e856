package listener

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// AdminOptions configure the admin HTTP API. Queue is required.
type AdminOptions struct {
	Queue *queue.Queue
	// Mode reports whether a queue key is in backoff mode and since when;
	// the scheduler answers it (the listener does not import delivery).
	Mode   func(queue.Key) (backoff bool, since time.Time)
	Logger *slog.Logger
}

// Admin is the HTTP admin API on http-mgmt-port. Access follows
// http-access (the first rule matching the client's address gives its
// level; no rule, no access) and, when http-api-key is set, a bearer token.
type Admin struct {
	opts AdminOptions
	cfg  atomic.Pointer[config.Config]
	srv  *http.Server
	ln   net.Listener
}

// StartAdmin opens the admin listener of cfg.
func StartAdmin(cfg *config.Config, opts AdminOptions) (*Admin, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ln, err := net.Listen("tcp", cfg.HTTPMgmtAddr.Value)
	if err != nil {
		return nil, fmt.Errorf("http-mgmt-port %s: %w", cfg.HTTPMgmtAddr.Value, err)
	}
	a := &Admin{opts: opts, ln: ln}
	a.cfg.Store(cfg)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/queues", a.guard(config.AccessMonitor, a.queues))
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
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
// configured, sends it as a bearer token. Refusals are 403 with a JSON
// message and never say which check failed to a stranger.
func (a *Admin) guard(level config.AccessLevel, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cfg := a.cfg.Load()
		ip := netip.Addr{}
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			ip = ap.Addr().Unmap()
		}
		granted := config.AccessNone
		for _, rule := range cfg.HTTPAccess {
			if rule.Prefix.Contains(ip) {
				granted = rule.Level
				break
			}
		}
		key := cfg.HTTPAPIKey.Value
		token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if granted < level || (key != "" && subtle.ConstantTimeCompare([]byte(token), []byte(key)) != 1) {
			a.opts.Logger.Info("admin API refused", "client", ip.String(), "path", r.URL.Path, "level", granted.String())
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "access denied"})
			return
		}
		h(w, r)
	}
}

// queueView is one row of GET /api/queues.
type queueView struct {
	Queue        string     `json:"queue"`
	VMTA         string     `json:"vmta"`
	Domain       string     `json:"domain"`
	Ready        int        `json:"ready"`
	Deferred     int        `json:"deferred"`
	Leased       int        `json:"leased"`
	Paused       bool       `json:"paused"`
	Mode         string     `json:"mode"`
	BackoffSince *time.Time `json:"backoff_since,omitempty"`
	Oldest       *time.Time `json:"oldest,omitempty"`
	NextAttempt  *time.Time `json:"next_attempt,omitempty"`
}

// queues lists every non-empty queue, largest first; ?vmta= and ?domain=
// filter.
func (a *Admin) queues(w http.ResponseWriter, r *http.Request) {
	sel := queue.Selector{VMTA: r.URL.Query().Get("vmta"), Domain: r.URL.Query().Get("domain")}
	stats := a.opts.Queue.Keys(sel)
	out := make([]queueView, 0, len(stats))
	for _, st := range stats {
		v := queueView{Queue: st.Key.String(), VMTA: st.Key.VMTA, Domain: st.Key.Domain,
			Ready: st.Ready, Deferred: st.Deferred, Leased: st.Leased, Paused: st.Paused, Mode: "normal"}
		if a.opts.Mode != nil {
			if on, since := a.opts.Mode(st.Key); on {
				v.Mode, v.BackoffSince = "backoff", &since
			}
		}
		if !st.Oldest.IsZero() {
			v.Oldest = &st.Oldest
		}
		if !st.NextAttempt.IsZero() {
			v.NextAttempt = &st.NextAttempt
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, out)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
