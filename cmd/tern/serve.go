package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/delivery"
	"github.com/ternmta/tern/delivery/acct"
	"github.com/ternmta/tern/delivery/dsn"
	"github.com/ternmta/tern/listener"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// drainTimeout bounds how long SIGTERM waits for open SMTP transactions.
const drainTimeout = 30 * time.Second

// runServe is the daemon: load the config, open the spool, open the
// listeners, and run until SIGTERM or SIGINT. SIGHUP reloads the config.
func runServe(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "/etc/tern/tern.conf", "configuration file")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tern serve [-c FILE]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return 2
	}

	// Signals are caught from the start: a SIGHUP or SIGTERM that comes
	// while the spool and listeners open waits for the loop below instead
	// of killing the process (the default action of both).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	cfg, reg, ok := loadConfig(*path, stderr)
	if !ok {
		return 1
	}
	// The level is a variable so that a reload can change it.
	var level slog.LevelVar
	level.Set(cfg.LogLevel.Value)
	logOut, err := newLogOutput(cfg.LogFile.Value, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "tern serve: %v\n", err)
		return 1
	}
	defer logOut.Close()
	log := newLogger(logOut, &level)
	for _, w := range cfg.Warnings {
		log.Warn("config", "at", w.Pos.String(), "warning", w.Message)
	}
	fds := planFDs(raiseNoFile(), adminConnCap, cfg)
	if fds.Lowered {
		log.Warn("file descriptor limit too low for total-max-smtp-in and total-max-smtp-out; using less",
			"limit", fds.Limit, "inbound", fds.Inbound, "outbound", fds.Outbound,
			"configured_in", cfg.TotalMaxSMTPIn.Value, "configured_out", cfg.TotalMaxSMTPOut.Value)
	} else {
		log.Info("file descriptors", "limit", fds.Limit, "spool", fds.Spool, "admin", fds.Admin,
			"inbound", fds.Inbound, "outbound", fds.Outbound)
	}

	// The queue tells the scheduler when a queue key becomes ready; the
	// scheduler needs the queue, so it is plugged in once both exist.
	var sched atomic.Pointer[delivery.Scheduler]
	// The accounting journal, for the b records of removals, committed with
	// them; it is set before the admin API can remove anything.
	var journal atomic.Pointer[acct.Journal]
	q, err := openSpool(queue.Options{
		Dir:    cfg.Spool.Dir.Value,
		Logger: log.With("component", "queue"),
		// The spool's share of the file descriptor budget.
		Pebble: func(o *pebble.Options) { o.MaxOpenFiles = fdSpool - 16 },
		OnReady: func(k queue.Key) {
			if s := sched.Load(); s != nil {
				s.Notify(k)
			}
		},
		RemovalJournal: func(r queue.Removal) []byte {
			return journal.Load().Entry(delivery.RemovalRecord(r, time.Now()))
		},
	}, sigs, log)
	if err != nil {
		log.Error("cannot open the spool", "dir", cfg.Spool.Dir.Value, "err", err)
		fmt.Fprintf(stderr, "tern serve: cannot open the spool %s: %v\n", cfg.Spool.Dir.Value, err)
		return 1
	}
	defer q.Close()
	log.Info("spool open", "dir", cfg.Spool.Dir.Value)

	resolver, err := delivery.NewDNSResolver(nameServers(cfg))
	if err != nil {
		fmt.Fprintf(stderr, "tern serve: %v\n", err)
		return 1
	}
	// A reload applies <acct-file> changes through accounts.Prepare.
	accounts, err := acct.OpenAll(cfg, acct.Options{Logger: log.With("component", "acct"), Journaled: true})
	if err != nil {
		fmt.Fprintf(stderr, "tern serve: %v\n", err)
		return 1
	}
	defer accounts.Close()
	// Records reach the files through the spool's journal, committed with
	// what they record; what the last run left there is written out now,
	// before anything adds to it.
	jr, err := acct.StartJournal(q, accounts, acct.JournalOptions{Logger: log.With("component", "acct")})
	if err != nil {
		fmt.Fprintf(stderr, "tern serve: %v\n", err)
		return 1
	}
	defer jr.Close()
	journal.Store(jr)
	mets := newMetrics(q)
	mets.pipes(accounts)
	var current atomic.Pointer[vmta.Registry]
	current.Store(reg)
	sch := delivery.New(delivery.Options{
		Queue:          q,
		Registry:       current.Load,
		Resolver:       resolver,
		MaxConnections: fds.Outbound,
		Logger:         log.With("component", "delivery"),
		Journal: func(ev delivery.Event) []byte {
			rec := ev.AcctRecord() // classifies the reply once, for the metrics too
			mets.outcome(ev, rec.BounceCat)
			return jr.Entry(rec)
		},
		OnBounce: func(env queue.Envelope, bounced []delivery.Event, body []byte) {
			sendDSN(q, current.Load().Config(), env, bounced, body, dsn.ActionFailed, log)
		},
		OnDelay: func(env queue.Envelope, delayed []delivery.Event, body []byte) {
			sendDSN(q, current.Load().Config(), env, delayed, body, dsn.ActionDelayed, log)
		},
	})
	sched.Store(sch)
	sch.Start()

	spoolDir := cfg.Spool.Dir.Value
	free := &freeSpaceCache{dir: spoolDir}
	srv := listener.New(listener.Options{
		Spool:          journaledSpool{q, jr}, // with the r records
		MaxConnections: fds.Inbound,
		Logger:         log.With("component", "smtp"),
		FreeSpace:      free.get,
		OnAccepted: func(_ queue.ID, m *queue.Message) {
			mets.accepted(m) // the r records went with the message
		},
	})
	if err := srv.Apply(cfg, reg); err != nil {
		log.Error("cannot open the listeners", "err", err)
		fmt.Fprintf(stderr, "tern serve: %v\n", err)
		return 1
	}
	mets.connections(srv.Connections, sch.Connections)
	rl := &reloader{path: *path, srv: srv, sch: sch, current: &current, log: log, level: &level,
		logOut: logOut, started: cfg, resolver: resolver, accounts: accounts}
	// The admin API is for operators; mail service does not depend on it, so
	// a port that cannot be bound is logged and serving goes on.
	admin, err := listener.StartAdmin(cfg, listener.AdminOptions{
		Queue: q, Mode: sch.Mode, Logger: log.With("component", "admin"), Metrics: mets.handler(),
		OnRemoved:           mets.removal, // the b record went with the removal (RemovalJournal)
		Registry:            current.Load,
		Activity:            func(k queue.Key, n int) listener.QueueActivity { return activityView(sch.Activity(k, n)) },
		SetMode:             sch.SetMode,
		ProviderOf:          sch.ProviderOf,
		Providers:           func() []listener.ProviderInfo { return providersView(sch.Providers()) },
		Shaping:             func() []listener.ShapingState { return shapingView(sch.ShapingStates()) },
		HostsDown:           func() []listener.HostInfo { return hostsView(sch.HostsDown()) },
		FileDescriptors:     fds.view,
		Reload:              func() (*config.Config, []config.Diagnostic, error) { return rl.reload("admin API") },
		InboundConnections:  srv.Connections,
		OutboundConnections: sch.Connections,
		VMTAConnections:     sch.ConnectionsByVMTA,
		FreeSpace:           free.get,
		ConfigPath:          absPath(*path),
		SpoolDir:            absPath(spoolDir),
		Version:             version,
		LiftShaping: func(f listener.ShapingFilter) int {
			return sch.LiftShaping(delivery.ShapingSelector{VMTA: f.VMTA, Provider: f.Provider, Action: f.Action})
		},
	})
	if err != nil {
		log.Error("admin API not available", "err", err)
	} else {
		rl.setAdmin(admin)
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			admin.Shutdown(ctx)
			cancel()
		}()
	}
	fmt.Fprintf(stdout, "tern serve: running with %s (pid %d)\n", *path, os.Getpid())

	for sig := range sigs {
		if sig == syscall.SIGHUP {
			// A reload runs beside this loop, so that SIGTERM is always
			// heard, even while a reload is stuck.
			rl.reloadInBackground("SIGHUP")
			continue
		}
		log.Info("shutting down", "signal", sig.String(), "drain_timeout", drainTimeout.String())
		ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
		err := srv.Shutdown(ctx)
		cancel()
		if err != nil {
			log.Warn("drain timed out; open transactions were cut (not acknowledged, so clients retry)")
		}
		ctx, cancel = context.WithTimeout(context.Background(), drainTimeout)
		if err := sch.Stop(ctx); err != nil {
			log.Warn("deliveries still in flight at shutdown; their recipients are due again at the next start")
		}
		cancel()
		break
	}
	if err := jr.Close(); err != nil {
		log.Error("writing out the accounting journal; the records are written at the next start", "err", err)
	}
	if err := accounts.Close(); err != nil {
		log.Error("closing the accounting files", "err", err)
	}
	if err := q.Close(); err != nil {
		log.Error("closing the spool", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// loadConfig loads and builds a configuration, printing every diagnostic.
func loadConfig(path string, stderr io.Writer) (*config.Config, *vmta.Registry, bool) {
	cfg, err := config.Load(path, config.Options{})
	if err != nil {
		var list *config.ErrorList
		if errors.As(err, &list) {
			printDiagnostics(stderr, "warning: ", list.Warnings)
			printDiagnostics(stderr, "", list.Errors)
			fmt.Fprintf(stderr, "%s: %s, %s; the configuration is refused\n", path,
				plural(len(list.Errors), "error"), plural(len(list.Warnings), "warning"))
		} else {
			fmt.Fprintf(stderr, "%s: %v\n", path, err)
		}
		return nil, nil, false
	}
	reg, err := vmta.Build(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", path, err)
		return nil, nil, false
	}
	return cfg, reg, true
}

// reloader applies the configuration file again, for SIGHUP and for
// POST /api/reload alike; one reload runs at a time.
type reloader struct {
	mu sync.Mutex
	// busy is set while a reload started by a signal runs.
	busy    atomic.Bool
	path    string
	srv     *listener.Server
	sch     *delivery.Scheduler
	current *atomic.Pointer[vmta.Registry]
	admin   *listener.Admin // nil when the admin API could not start
	log     *slog.Logger
	level   *slog.LevelVar // the logger's level, which log-level sets
	logOut  *logOutput     // the log's destination, which log-file sets
	// resolver is the DNS resolver, whose servers name-server sets.
	resolver *delivery.DNSResolver
	accounts *acct.Set // the accounting files, which <acct-file> sets
	// started is the configuration tern started with, for the settings
	// only a restart applies.
	started *config.Config
}

// reloadInBackground runs a reload on its own goroutine, unless one
// started this way is still running: then the request is logged and
// dropped (the file is read again by the running one anyway, or by the
// next request).
func (rl *reloader) reloadInBackground(trigger string) {
	if !rl.busy.CompareAndSwap(false, true) {
		rl.log.Warn("a reload is still running; this one is skipped", "trigger", trigger)
		return
	}
	go func() {
		defer rl.busy.Store(false)
		rl.reload(trigger)
	}()
}

// setAdmin tells the reloader about the admin API, whose access rules a
// reload replaces.
func (rl *reloader) setAdmin(a *listener.Admin) {
	rl.mu.Lock()
	rl.admin = a
	rl.mu.Unlock()
}

// reload loads, validates and applies the file. A broken file is refused
// with every error (a *config.ErrorList) and the running configuration
// stays; otherwise the new registry replaces the old one atomically and
// the new configuration and its warnings are returned.
func (rl *reloader) reload(trigger string) (*config.Config, []config.Diagnostic, error) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	cfg, err := config.Load(rl.path, config.Options{})
	if err != nil {
		var list *config.ErrorList
		if errors.As(err, &list) {
			for _, d := range list.Errors {
				rl.log.Error("reload refused", "trigger", trigger, "at", d.Pos.String(), "error", d.Message)
			}
		} else {
			rl.log.Error("reload refused", "trigger", trigger, "err", err)
		}
		return nil, nil, err
	}
	reg, err := vmta.Build(cfg)
	// The log file and new accounting files are opened before anything
	// changes: one that cannot be opened refuses the reload, as a broken
	// file does.
	var logFile *os.File
	var accts *acct.Change
	if err == nil {
		logFile, err = openLogFile(cfg.LogFile.Value)
	}
	if err == nil {
		accts, err = rl.accounts.Prepare(cfg)
	}
	if err == nil {
		err = rl.srv.Apply(cfg, reg)
	}
	if err != nil {
		if logFile != nil {
			logFile.Close()
		}
		if accts != nil {
			accts.Abort()
		}
		rl.log.Error("reload refused", "trigger", trigger, "err", err)
		return nil, nil, err
	}
	rl.current.Store(reg)
	accts.Commit()
	if opened, closed, updated := accts.Summary(); len(opened)+len(closed)+len(updated) > 0 {
		rl.log.Info("accounting files changed", "opened", strings.Join(opened, ","), "closed", strings.Join(closed, ","),
			"updated", strings.Join(updated, ","))
	}
	rl.switchLog(cfg.LogFile.Value, logFile)
	setLogLevel(rl.log, rl.level, cfg.LogLevel.Value)
	if rl.admin != nil {
		rl.admin.SetConfig(cfg)
	}
	// Queues whose VMTA the reload brought back (or whose limits rose)
	// have due mail but will not be notified again: start them now.
	rl.sch.Start()
	warnings := append(cfg.Warnings[:len(cfg.Warnings):len(cfg.Warnings)], restartOnly(rl.path, rl.started, cfg)...)
	// The name servers change last: the list was checked by the config,
	// and only a /etc/resolv.conf that cannot be read fails here, which
	// keeps the servers in use rather than refusing the applied reload.
	if changed, err := rl.resolver.SetServers(nameServers(cfg)); err != nil {
		warnings = append(warnings, config.Diagnostic{Pos: config.Position{File: rl.path},
			Message: fmt.Sprintf("name servers unchanged (%s): %v", strings.Join(rl.resolver.Servers(), ", "), err)})
	} else if changed {
		rl.log.Info("name servers changed", "servers", strings.Join(rl.resolver.Servers(), ", "))
	}
	for _, w := range warnings {
		rl.log.Warn("config", "at", w.Pos.String(), "warning", w.Message)
	}
	rl.log.Info("configuration reloaded", "file", rl.path, "trigger", trigger, "warnings", len(warnings))
	return cfg, warnings, nil
}

// switchLog makes f, opened at path (nil for standard error), the log's
// output. It is called on every reload, even when the path is the same:
// moving the file aside and reloading is how it is rotated. A change of
// path is told at the end of the old log, for whoever reads it, and at the
// start of the new one.
func (rl *reloader) switchLog(path string, f *os.File) {
	old := rl.logOut.Path()
	moved := func() {
		if old != path {
			rl.log.Info("log file changed", "from", logName(old), "to", logName(path))
		}
	}
	moved()
	if err := rl.logOut.swap(path, f); err != nil {
		rl.log.Error("closing the previous log file", "file", old, "err", err)
	}
	moved()
}

// setLogLevel sets level, the level of log, to now, and logs the change at
// the more verbose of the two levels (and info at most), so that the line
// shows whichever way the level moves. The line goes to the handler
// directly, past the level check: lowering the level for it instead would,
// for that moment, let through the lines of every other goroutine at the
// lower level (info lines while moving from warning to error, say).
func setLogLevel(log *slog.Logger, level *slog.LevelVar, now slog.Level) {
	old := level.Level()
	if old == now {
		return
	}
	level.Set(now)
	r := slog.NewRecord(time.Now(), min(old, now, slog.LevelInfo), "log level changed", 0)
	r.AddAttrs(slog.String("from", old.String()), slog.String("to", now.String()))
	_ = log.Handler().Handle(context.Background(), r)
}

// nameServers is the name-server list of cfg; empty for /etc/resolv.conf.
func nameServers(cfg *config.Config) []string {
	var out []string
	for _, ns := range cfg.NameServers {
		out = append(out, ns.Value)
	}
	return out
}

// logName names a log destination for a log line.
func logName(path string) string {
	if path == "" {
		return "standard error"
	}
	return path
}

// restartOnly warns about each setting that differs between the running
// configuration (the one tern started with) and next but that only a
// restart applies, so that an operator is not left believing it took
// effect.
func restartOnly(file string, running, next *config.Config) []config.Diagnostic {
	var out []config.Diagnostic
	warn := func(pos config.Position, directive, was, now string) {
		if !pos.IsValid() {
			pos = config.Position{File: file}
		}
		out = append(out, config.Diagnostic{Pos: pos, Message: fmt.Sprintf(
			"%s changed from %q to %q: it takes effect at the next restart; tern keeps using %q", directive, was, now, was)})
	}
	if a, b := running.Spool.Dir, next.Spool.Dir; a.Value != b.Value {
		warn(b.Pos, "spool", a.Value, b.Value)
	}
	if a, b := running.HTTPMgmtAddr, next.HTTPMgmtAddr; a.Value != b.Value {
		warn(b.Pos, "http-mgmt-port", a.Value, b.Value)
	}
	return out
}

// activityView converts the scheduler's view of a queue for the admin API
// (the listener does not import delivery).
func activityView(a delivery.QueueActivity) listener.QueueActivity {
	out := listener.QueueActivity{Connections: a.Connections, DeliveredLastMinute: a.DeliveredLastMinute,
		LastError: a.LastError, LastErrorAt: a.LastErrorAt, Held: a.Held, Events: make([]listener.QueueEvent, 0, len(a.Events))}
	for _, ev := range a.Events {
		e := listener.QueueEvent{Time: ev.Time, ID: ev.ID.String(), Recipient: ev.Recipient, Kind: ev.Kind.String(),
			Reply: ev.Reply, RemoteHost: ev.RemoteHost}
		if ev.RemoteIP.IsValid() {
			e.RemoteIP = ev.RemoteIP.String()
		}
		if ev.SourceIP.IsValid() {
			e.SourceIP = ev.SourceIP.String()
		}
		out.Events = append(out.Events, e)
	}
	return out
}

// providersView converts the scheduler's provider queues for the admin
// API.
func providersView(ps []delivery.ProviderView) []listener.ProviderInfo {
	out := make([]listener.ProviderInfo, 0, len(ps))
	for _, p := range ps {
		v := listener.ProviderInfo{VMTA: p.VMTA, Provider: p.Provider, Rollup: p.Rollup, Domains: p.Domains,
			Connections: p.Connections, Backoff: p.Backoff, BackoffSince: p.BackoffSince, HeldUntil: p.HeldUntil,
			MsgsPerConnection: p.MsgsPerConnection, Shaping: shapingView(p.Shaping)}
		for _, w := range p.Windows {
			v.Windows = append(v.Windows, listener.ProviderWindow{Source: addrString(w.Source), Limit: w.Limit,
				Open: w.Open, Established: w.Established, Ceiling: w.Ceiling, CeilingUntil: w.CeilingUntil,
				Refusals: w.Refusals, LastRefusal: w.LastRefusal})
		}
		out = append(out, v)
	}
	return out
}

// shapingView converts the scheduler's traffic-shaping states for the
// admin API.
func shapingView(sts []delivery.Shaping) []listener.ShapingState {
	out := make([]listener.ShapingState, 0, len(sts))
	for _, st := range sts {
		out = append(out, listener.ShapingState{VMTA: st.VMTA, Provider: st.Provider, Rollup: st.Rollup,
			Action: st.Action, Source: addrString(st.Source), Reroute: st.Reroute, Since: st.Since, Until: st.Until,
			Rule: st.Rule, Reply: st.Reply})
	}
	return out
}

// hostsView converts the scheduler's failing hosts for the admin API.
func hostsView(hs []delivery.HostView) []listener.HostInfo {
	out := make([]listener.HostInfo, 0, len(hs))
	for _, h := range hs {
		host := ""
		if h.Host.IsValid() {
			host = h.Host.String()
		}
		out = append(out, listener.HostInfo{Source: addrString(h.Source), Name: h.Name, Host: host, Failures: h.Failures,
			DownUntil: h.DownUntil, LastError: h.LastError, Open: h.Open})
	}
	return out
}

// addrString is a's text, "" for the zero address.
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// absPath is path made absolute, for messages that outlive the working
// directory; path itself if that fails.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

// freeSpaceCache answers the free space of the spool's disk, measured at
// most every freeSpaceTTL: the listener asks at MAIL and at DATA of every
// message, and a statfs per question is wasted at high rates.
type freeSpaceCache struct {
	dir  string
	mu   sync.Mutex
	at   time.Time
	free uint64
	err  error
}

// freeSpaceTTL bounds how stale the answer may be; a disk does not fill
// from min-free-space to nothing in that time.
const freeSpaceTTL = 250 * time.Millisecond

func (c *freeSpaceCache) get() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.Sub(c.at) >= freeSpaceTTL {
		c.free, c.err = freeSpace(c.dir)
		c.at = now
	}
	return c.free, c.err
}

// minSpoolOpenFree is the least free space tern serve starts with: opening
// the spool writes (the write-ahead log replayed since the last flush
// becomes a table), and on a full disk pebble would retry that for ever.
const minSpoolOpenFree = 16 << 20

// openSpoolProgress is how often a slow spool open is logged.
const openSpoolProgress = 10 * time.Second

// openSpool opens the spool while still heeding signals: SIGTERM or SIGINT
// during a slow or stuck open ends tern serve at once (nothing is served
// yet, so nothing is cut), a slow open is logged every openSpoolProgress,
// and a disk with less than minSpoolOpenFree free is refused before
// anything is written.
func openSpool(opts queue.Options, sigs <-chan os.Signal, log *slog.Logger) (*queue.Queue, error) {
	if free, err := freeSpace(existingParent(opts.Dir)); err == nil && free < minSpoolOpenFree {
		return nil, fmt.Errorf("its disk has %s free, and opening it needs at least %s: make room and start again",
			humanBytes(free), humanBytes(minSpoolOpenFree))
	}
	type opened struct {
		q   *queue.Queue
		err error
	}
	done := make(chan opened, 1)
	go func() {
		q, err := queue.Open(opts)
		done <- opened{q, err}
	}()
	start := time.Now()
	tick := time.NewTicker(openSpoolProgress)
	defer tick.Stop()
	for {
		select {
		case o := <-done:
			return o.q, o.err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				log.Warn("reload ignored: the spool is still opening")
				continue
			}
			return nil, fmt.Errorf("%s while the spool was opening; stopped", sig)
		case <-tick.C:
			log.Warn("still opening the spool", "dir", opts.Dir, "elapsed", time.Since(start).Round(time.Second).String())
		}
	}
}

// existingParent is dir, or its nearest ancestor that exists (a new
// spool's directory is made by the open).
func existingParent(dir string) string {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
			return d
		}
	}
}

// humanBytes writes n in binary units, "16 MiB".
func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// freeSpace is the space left to unprivileged writers where dir lives.
func freeSpace(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// sendDSN spools one bounce report (RFC 3464) to the sender of a message
// for its bounced recipients. It goes out through {default} from the null
// sender, so a report that bounces never makes another report.
func sendDSN(q *queue.Queue, cfg *config.Config, env queue.Envelope, bounced []delivery.Event, body []byte, action dsn.Action, log *slog.Logger) {
	in := dsn.Input{
		ReportingMTA: cfg.HostName.Value,
		Postmaster:   cfg.Postmaster.Value,
		Sender:       env.Sender,
		EnvID:        env.EnvID,
		Ret:          env.DSNRet,
		Arrival:      env.Received,
		Original:     body,
	}
	for _, ev := range bounced {
		in.Recipients = append(in.Recipients, dsn.Recipient{
			Address:     ev.Recipient.Address,
			ORcpt:       ev.Recipient.ORcpt,
			Notify:      ev.Recipient.Notify,
			RemoteMTA:   ev.RemoteHost,
			Diagnostic:  ev.Reply,
			LastAttempt: ev.Time,
			Action:      action,
			RetryUntil:  ev.RetryUntil,
		})
	}
	msg, ok, err := dsn.Build(in)
	if err != nil {
		log.Error("building a bounce report failed", "to", env.Sender, "err", err)
		return
	}
	if !ok {
		return // null sender, or NOTIFY asked for no report
	}
	id, err := q.Put(context.Background(), queue.Message{
		Recipients: []queue.Recipient{{Address: env.Sender, VMTA: config.DefaultVMTA}},
		Body:       msg,
	})
	if err != nil {
		log.Error("spooling a bounce report failed", "to", env.Sender, "err", err)
		return
	}
	what := "bounce report queued"
	if action == dsn.ActionDelayed {
		what = "delay report queued"
	}
	log.Info(what, "id", id.String(), "to", env.Sender, "recipients", len(bounced))
}
