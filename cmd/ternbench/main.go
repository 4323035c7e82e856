// Command ternbench measures Tern end to end on loopback, alone or against a
// throw-away Postfix, with Postfix's smtp-source as the injector and
// smtp-sink as the destination.
//
//	ternbench e2e  [flags]   Tern alone: one JSON line per pass
//	ternbench peer [flags]   Postfix then Tern, alternating, for -rounds
//	                         rounds; each figure as a Tern/Postfix ratio
//	ternbench backlog        queue -n recipients with the destination down;
//	                         Tern's peak RSS, and its restart time with them
//	ternbench world  [flags] a simulated Internet (package
//	                         delivery/smtptest/world) on port 25: the same
//	                         load through Postfix then Tern, what each
//	                         delivered per provider within -window
//
// Every process it starts is stopped by PID when it ends, also on a timeout
// or an interrupt. Only 127.0.0.0/8 is used.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// options are the load and the tools of a run.
type options struct {
	N        int           // messages per pass
	Size     int           // payload bytes per message
	Sessions int           // parallel smtp-source sessions
	Rounds   int           // peer rounds
	Rcpts    int           // recipients per message (backlog)
	Tern     string        // the tern binary
	Timeout  time.Duration // bound on one pass
	Passes   []string      // "new" (a connection per message) and/or "reuse"
	Keep     bool          // keep the work directory
	SinkBin  string
	Source   string
	Postfix  string
	Profile  string // directory for CPU and heap profiles of tern serve
	// world mode
	Window    time.Duration // measured from the start of injection
	MTAs      []string      // in the order run
	JSONL     string        // where the JSON lines go too
	WorldPort int           // the port of every MX host
	WorldDNS  string        // the world's DNS server, IP:53
	Out       io.Writer
	Log       io.Writer
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || !slices.Contains([]string{"e2e", "peer", "backlog", "world"}, args[0]) {
		fmt.Fprintln(stderr, "usage: ternbench e2e|peer|backlog|world [flags]; ternbench e2e -h lists the flags")
		return 2
	}
	mode := args[0]
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := options{Out: stdout, Log: stderr}
	defN := 20000
	if mode == "backlog" {
		defN = 1000000
	}
	fs.IntVar(&o.N, "n", defN, "messages per pass (backlog: recipients to queue)")
	fs.IntVar(&o.Rcpts, "rcpts", 100, "recipients per message (backlog)")
	fs.IntVar(&o.Size, "size", 4096, "message payload in bytes")
	fs.IntVar(&o.Sessions, "sessions", 20, "parallel injecting sessions")
	defRounds := 3
	if mode == "world" {
		defRounds = 1
	}
	fs.IntVar(&o.Rounds, "rounds", defRounds, "rounds of Postfix then Tern (peer, world)")
	fs.StringVar(&o.Tern, "tern", "bin/tern", "the tern binary")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "bound on one pass")
	passes := fs.String("passes", "new,reuse", "injection passes: new (a connection per message), reuse (connections reused)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the work directory (logs, configs)")
	fs.StringVar(&o.SinkBin, "smtp-sink", "/usr/sbin/smtp-sink", "Postfix's smtp-sink")
	fs.StringVar(&o.Source, "smtp-source", "/usr/sbin/smtp-source", "Postfix's smtp-source")
	fs.StringVar(&o.Postfix, "postfix", "/usr/sbin/postfix", "Postfix's postfix command (peer)")
	fs.StringVar(&o.Profile, "profile", "", "write CPU and heap profiles of tern serve to this directory (e2e)")
	fs.DurationVar(&o.Window, "window", 2*time.Minute, "how long after the start of injection the world is measured (world)")
	mtas := fs.String("mtas", "postfix,tern", "the MTAs run, in order (world)")
	fs.StringVar(&o.JSONL, "jsonl", "bench/out/world.jsonl", "also write the JSON lines here (world; empty: nowhere)")
	fs.IntVar(&o.WorldPort, "world-port", 25, "the port of every MX host of the world (world)")
	fs.StringVar(&o.WorldDNS, "world-dns", "127.0.1.53:53", "the world's DNS server; Postfix needs port 53 (world)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var err error
	if o.Passes, err = parsePasses(*passes); err != nil || o.N < 1 || o.Size < 1 || o.Sessions < 1 || o.Rounds < 1 || o.Rcpts < 1 {
		fmt.Fprintf(stderr, "ternbench: bad flags: %v\n", err)
		return 2
	}
	if o.MTAs, err = parseMTAs(*mtas); err != nil || o.Window <= 0 {
		fmt.Fprintf(stderr, "ternbench: bad flags: %v\n", err)
		return 2
	}
	bins := []string{o.SinkBin, o.Source, o.Tern}
	if mode == "world" {
		bins = nil
		if slices.Contains(o.MTAs, "tern") {
			bins = append(bins, o.Tern)
		}
		if slices.Contains(o.MTAs, "postfix") {
			bins = append(bins, o.Postfix)
		}
	}
	for _, bin := range bins {
		if _, err := os.Stat(bin); err != nil {
			fmt.Fprintf(stderr, "ternbench: %v (make bench-e2e installs Postfix's tools and builds tern)\n", err)
			return 2
		}
	}
	if o.Tern, err = filepath.Abs(o.Tern); err != nil {
		fmt.Fprintln(stderr, "ternbench:", err)
		return 2
	}
	// An interrupt cancels the run; the deferred cleanups stop every
	// process started so far.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch mode {
	case "e2e":
		err = runE2E(ctx, o)
	case "peer":
		err = runPeer(ctx, o)
	case "world":
		err = runWorld(ctx, o)
	default:
		err = runBacklog(ctx, o)
	}
	if err != nil {
		fmt.Fprintln(stderr, "ternbench:", err)
		return 1
	}
	return 0
}

func parsePasses(s string) ([]string, error) {
	var out []string
	for _, p := range splitComma(s) {
		if p != "new" && p != "reuse" {
			return nil, fmt.Errorf("pass %q: want new or reuse", p)
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("no pass")
	}
	return out, nil
}

// result is one pass of one MTA: the JSON line printed for it.
type result struct {
	MTA          string  `json:"mta"`
	Pass         string  `json:"pass"`
	Messages     int     `json:"messages"`
	Size         int     `json:"size"`
	Sessions     int     `json:"sessions"`
	AcceptedPerS float64 `json:"accepted_per_s"`
	DeliveredPS  float64 `json:"delivered_per_s"`
	InjectSecs   float64 `json:"inject_s"`
	EndToEndSecs float64 `json:"end_to_end_s"`
	Delivered    int     `json:"delivered"`
	Deferred     int64   `json:"deferred"`
	// PeakRSSMB is the peak resident memory: for one process (tern serve)
	// its VmHWM, for a group (Postfix) the peak of the sum of their PSS.
	PeakRSSMB float64 `json:"peak_rss_mb"`
	CPUSecs   float64 `json:"cpu_s"`
}

func (r result) print(w io.Writer) {
	b, _ := json.Marshal(r)
	fmt.Fprintln(w, string(b))
}

// runE2E runs each pass against Tern alone.
func runE2E(ctx context.Context, o options) error {
	for _, pass := range o.Passes {
		r, err := onePass(ctx, o, ternMTA, pass, o.Profile)
		if err != nil {
			return err
		}
		r.print(o.Out)
	}
	return nil
}
