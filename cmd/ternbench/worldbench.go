package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ternmta/tern/delivery/smtptest/world"
)

// Source addresses of the MTAs in the world benchmark: one each, so that
// the world's per-client-IP counters are per MTA.
const (
	ternWorldSource    = "127.0.0.2"
	postfixWorldSource = "127.0.0.3"
)

// dsnGrace is how long a pass waits after its window for the bounce
// reports of recipients the MTA had already bounced.
const dsnGrace = 30 * time.Second

// worldMTA is a mail server run in the simulated world.
type worldMTA interface {
	// start runs it in dir, listening on 127.0.0.1:port for the injector,
	// resolving through the world's DNS server at dnsAddr and delivering
	// to port mxPort of the MX hosts.
	start(ctx context.Context, dir string, port int, dnsAddr string, mxPort int) error
	// bounced lists the recipients it has bounced so far, from its
	// accounting file (Tern) or its log (Postfix).
	bounced() ([]string, error)
	// cpu is the CPU time its processes have used.
	cpu() time.Duration
	stop()
}

// runWorld starts the world of `make bench-world`, then for each round
// runs the same load through each MTA in turn, resetting the world
// between passes, and prints the figures side by side.
func runWorld(ctx context.Context, o options) error {
	spec := world.BenchSpec()
	spec.Port = o.WorldPort
	spec.DNSAddr = o.WorldDNS
	w, err := world.Start(spec)
	if err != nil {
		return err
	}
	defer w.Close()
	load := w.Load(o.N)
	exp := expectations(w, load)
	fmt.Fprintf(o.Log, "ternbench: world of %d domains and %d hosts on port %d, DNS on %s; %d messages, %d recipients\n",
		len(w.Domains()), len(w.Hosts()), w.Port(), w.DNSAddr(), len(load), exp.recipients)

	// The JSON lines go to the file, or, without one, before the tables.
	jsonl := o.Out
	if o.JSONL != "" {
		if err := os.MkdirAll(filepath.Dir(o.JSONL), 0o755); err != nil {
			return err
		}
		f, err := os.Create(o.JSONL)
		if err != nil {
			return err
		}
		defer f.Close()
		jsonl = f
	}
	for round := 1; round <= o.Rounds; round++ {
		var results []worldResult
		for _, name := range o.MTAs {
			w.Reset()
			r, err := worldPass(ctx, o, w, load, exp, name, round)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round, name, err)
			}
			b, _ := json.Marshal(r)
			fmt.Fprintln(jsonl, string(b))
			results = append(results, r)
		}
		printWorld(o.Out, spec, exp, results, round, o)
	}
	return nil
}

// expected is what the load asks of each provider.
type expected struct {
	recipients    int
	deliverable   map[string]int
	bounce        map[string]int
	undeliverable map[string]int
	// bounceAddrs are the recipients that should bounce.
	bounceAddrs []string
}

func expectations(w *world.World, load []world.Message) expected {
	e := expected{deliverable: map[string]int{}, bounce: map[string]int{}, undeliverable: map[string]int{}}
	for _, m := range load {
		for _, r := range m.To {
			e.recipients++
			switch r.Fate {
			case world.Deliverable:
				e.deliverable[r.Provider]++
			case world.Bounce:
				e.bounce[r.Provider]++
				e.bounceAddrs = append(e.bounceAddrs, r.Addr)
			case world.Undeliverable:
				e.undeliverable[r.Provider]++
			}
		}
	}
	return e
}

// worldResult is one MTA's pass: the JSON line printed for it.
type worldResult struct {
	MTA          string  `json:"mta"`
	Round        int     `json:"round"`
	Messages     int     `json:"messages"`
	Recipients   int     `json:"recipients"`
	WindowSecs   float64 `json:"window_s"`
	Injected     int     `json:"injected"`
	InjectFailed int     `json:"inject_failed"`
	InjectSecs   float64 `json:"inject_s"`
	Deliverable  int     `json:"deliverable"`
	Delivered    int64   `json:"delivered"`
	Share        float64 `json:"delivered_share"`
	Duplicates   int64   `json:"duplicates"`
	// BounceExpected are the recipients the load means to bounce;
	// Bounced those the MTA bounced by the end of the window (Tern's b
	// records, Postfix's status=bounced log lines); DSNNamed those named
	// as failed by the reports at the sender domain;
	// BouncedWithoutDSN those bounced but named by no report dsnGrace
	// after the window.
	BounceExpected    int   `json:"bounce_expected"`
	Bounced           int   `json:"bounced"`
	DSNReports        int64 `json:"dsn_reports"`
	DSNNamed          int   `json:"dsn_named"`
	BouncedWithoutDSN int   `json:"bounced_without_dsn"`
	// ClientIPs are the source addresses the world saw.
	ClientIPs []string `json:"client_ips"`
	CPUSecs   float64  `json:"cpu_s"`
	// HarnessCPUSecs is the CPU time of this process (the world and the
	// injector) over the window, to see that the harness left the MTA
	// the machine.
	HarnessCPUSecs float64          `json:"harness_cpu_s"`
	Providers      []providerResult `json:"providers"`
}

// providerResult is one provider's figures in a pass.
type providerResult struct {
	Name            string  `json:"name"`
	Cap             int     `json:"cap,omitempty"`
	Deliverable     int     `json:"deliverable"`
	Delivered       int64   `json:"delivered"`
	Share           float64 `json:"delivered_share"`
	Duplicates      int64   `json:"duplicates"`
	Undeliverable   int     `json:"undeliverable,omitempty"`
	BounceExpected  int     `json:"bounce_expected"`
	Bounced         int     `json:"bounced"`
	DSNNamed        int     `json:"dsn_named"`
	Connections     int64   `json:"connections"`
	PeakPerIP       int64   `json:"peak_per_ip"`
	RefusedShare    float64 `json:"refused_share"`
	Transactions    int64   `json:"transactions"`
	RateLimited     int64   `json:"rate_limited"`
	Greylisted      int64   `json:"greylisted"`
	UnknownUser     int64   `json:"unknown_user"`
	TooManyMessages int64   `json:"too_many_messages,omitempty"`
	DeadDials       int64   `json:"dead_dials,omitempty"`
	HoleDials       int64   `json:"blackhole_dials,omitempty"`
	PeakHeld        int64   `json:"peak_held,omitempty"`
}

// worldPass runs the load through one MTA for the window.
func worldPass(ctx context.Context, o options, w *world.World, load []world.Message, exp expected, name string, roundNo int) (worldResult, error) {
	res := worldResult{MTA: name, Round: roundNo, Messages: len(load), Recipients: exp.recipients, WindowSecs: o.Window.Seconds()}
	dir, err := os.MkdirTemp("", "ternbench-world-"+name+"-")
	if err != nil {
		return res, err
	}
	if o.Keep {
		fmt.Fprintf(o.Log, "ternbench: %s world pass in %s\n", name, dir)
	} else {
		defer os.RemoveAll(dir)
	}
	port, err := freePort()
	if err != nil {
		return res, err
	}
	var m worldMTA
	switch name {
	case "tern":
		m = &ternWorld{bin: o.Tern, log: o.Log}
	case "postfix":
		m = &postfixWorld{srv: postfixServer{bin: o.Postfix}}
	default:
		return res, fmt.Errorf("unknown MTA %q", name)
	}
	pctx, cancel := context.WithTimeout(ctx, o.Window+5*time.Minute)
	defer cancel()
	if err := m.start(pctx, dir, port, w.DNSAddr(), w.Port()); err != nil {
		m.stop()
		return res, err
	}
	defer m.stop()
	cpu0, self0 := m.cpu(), procCPU(os.Getpid(), false)
	fmt.Fprintf(o.Log, "ternbench: %s: injecting %d messages, window %s\n", name, len(load), o.Window)
	begin := time.Now()
	ictx, icancel := context.WithDeadline(pctx, begin.Add(o.Window))
	inj := inject(ictx, fmt.Sprintf("127.0.0.1:%d", port), load, o.Sessions)
	icancel()
	res.Injected, res.InjectFailed = inj.Accepted, len(load)-inj.Accepted
	res.InjectSecs = round(inj.Elapsed.Seconds(), 2)
	fmt.Fprintf(o.Log, "ternbench: %s: %d messages accepted in %.1fs", name, inj.Accepted, inj.Elapsed.Seconds())
	if inj.FirstErr != nil {
		fmt.Fprintf(o.Log, "; %d refused, the first: %v", inj.Failed, inj.FirstErr)
	}
	fmt.Fprintln(o.Log)

	// The window runs from the start of the injection.
	select {
	case <-time.After(time.Until(begin.Add(o.Window))):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	snap := w.Snapshot()
	res.CPUSecs = round((m.cpu() - cpu0).Seconds(), 1)
	res.HarnessCPUSecs = round((procCPU(os.Getpid(), false) - self0).Seconds(), 1)
	bounced, err := m.bounced()
	if err != nil {
		return res, err
	}
	// Reports of the last bounces may still be on their way.
	gctx, gcancel := context.WithTimeout(ctx, dsnGrace)
	after, _ := w.WaitFor(gctx, func(s *world.Snapshot) bool { return len(s.DSN.Missing(bounced)) == 0 })
	gcancel()
	m.stop()

	res.Bounced = len(bounced)
	res.BouncedWithoutDSN = len(after.DSN.Missing(bounced))
	res.DSNReports = snap.DSN.Reports
	fillProviders(&res, w, snap, exp, load, inj.Refused, bounced)
	return res, nil
}

// fillProviders computes the per-provider figures of a pass from the
// snapshot taken at the end of its window.
func fillProviders(res *worldResult, w *world.World, snap world.Snapshot, exp expected, load []world.Message, refused map[int]bool, bounced []string) {
	spec := w.Spec()
	providerOf := func(addr string) string { return w.ProviderOf(addr[strings.LastIndexByte(addr, '@')+1:]) }
	dsnNamed, bouncedBy := map[string]int{}, map[string]int{}
	for addr := range snap.DSN.Recipients {
		dsnNamed[providerOf(addr)]++
	}
	for _, addr := range bounced {
		bouncedBy[providerOf(addr)]++
	}
	// Messages the MTA refused at injection cannot be delivered: they
	// leave the expectations.
	deliverable, bounce := map[string]int{}, map[string]int{}
	for _, m := range load {
		if refused[m.Seq] {
			continue
		}
		for _, r := range m.To {
			switch r.Fate {
			case world.Deliverable:
				deliverable[r.Provider]++
			case world.Bounce:
				bounce[r.Provider]++
			}
		}
	}
	ips := map[string]bool{}
	for _, p := range spec.Providers {
		if p.Sender {
			continue
		}
		ps := snap.Provider(p.Name)
		pr := providerResult{
			Name: p.Name, Cap: p.ConnCapPerIP,
			Deliverable: deliverable[p.Name], Delivered: ps.Recipients, Duplicates: ps.Duplicates,
			Undeliverable: exp.undeliverable[p.Name], BounceExpected: bounce[p.Name], Bounced: bouncedBy[p.Name], DSNNamed: dsnNamed[p.Name],
			Connections: ps.Connections, PeakPerIP: ps.PeakPerIP(), RefusedShare: round(ps.RefusedShare(), 3),
			Transactions: ps.Transactions, RateLimited: ps.RateLimited, Greylisted: ps.Greylisted,
			UnknownUser: ps.UnknownUser, TooManyMessages: ps.TooManyMessages,
			DeadDials: ps.DeadDials, PeakHeld: ps.PeakHeld,
		}
		for _, n := range ps.Dials {
			pr.HoleDials += n
		}
		pr.HoleDials -= ps.DeadDials
		if pr.Deliverable > 0 {
			pr.Share = round(float64(pr.Delivered)/float64(pr.Deliverable), 3)
		}
		for ip := range ps.Clients {
			ips[ip] = true
		}
		for ip := range ps.Dials {
			ips[ip] = true
		}
		res.Deliverable += pr.Deliverable
		res.Delivered += pr.Delivered
		res.Duplicates += pr.Duplicates
		res.BounceExpected += pr.BounceExpected
		res.DSNNamed += pr.DSNNamed
		res.Providers = append(res.Providers, pr)
	}
	if res.Deliverable > 0 {
		res.Share = round(float64(res.Delivered)/float64(res.Deliverable), 3)
	}
	for ip := range ips {
		res.ClientIPs = append(res.ClientIPs, ip)
	}
	sort.Strings(res.ClientIPs)
}

// printWorld prints a round's passes side by side: one table of
// deliveries and bounces, one of connections and replies.
func printWorld(out io.Writer, spec world.Spec, exp expected, rs []worldResult, roundNo int, o options) {
	fmt.Fprintf(out, "\nworld round %d: %d messages (%d recipients) of %d bytes from %d sessions; window %s from the start of injection\n",
		roundNo, o.N, exp.recipients, world.LoadSize, o.Sessions, o.Window)
	for _, r := range rs {
		fmt.Fprintf(out, "%s: injected %d in %.1fs (%d refused), source IPs seen %v, CPU %.1fs (harness %.1fs); bounced %d of %d expected, bounce reports %d naming %d, bounced without a report %s later %d\n",
			r.MTA, r.Injected, r.InjectSecs, r.InjectFailed, r.ClientIPs, r.CPUSecs, r.HarnessCPUSecs, r.Bounced, r.BounceExpected, r.DSNReports, r.DSNNamed, dsnGrace, r.BouncedWithoutDSN)
	}
	names := make([]string, len(rs))
	for i, r := range rs {
		names[i] = r.MTA
	}
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', tabwriter.AlignRight)
	head := "provider\tdeliverable\t"
	for _, n := range names {
		head += n + " delivered\tshare\t"
	}
	if len(rs) == 2 {
		head += rs[1].MTA + "/" + rs[0].MTA + "\t"
	}
	for _, n := range names {
		head += n + " dup\t"
	}
	head += "bounce exp\t"
	for _, n := range names {
		head += n + " bounced\t"
	}
	for _, n := range names {
		head += n + " DSN\t"
	}
	head += "undeliverable\t"
	fmt.Fprintln(tw, head)
	row := func(name string, deliverable int, get func(r worldResult) (providerResult, bool)) {
		line := fmt.Sprintf("%s\t%d\t", name, deliverable)
		var dl []int64
		bexp := 0
		for _, r := range rs {
			p, _ := get(r)
			line += fmt.Sprintf("%d\t%.1f%%\t", p.Delivered, 100*p.Share)
			dl = append(dl, p.Delivered)
			bexp = p.BounceExpected
		}
		if len(rs) == 2 {
			line += ratio(dl[1], dl[0]) + "\t"
		}
		for _, r := range rs {
			p, _ := get(r)
			line += fmt.Sprintf("%d\t", p.Duplicates)
		}
		line += fmt.Sprintf("%d\t", bexp)
		for _, r := range rs {
			p, _ := get(r)
			line += fmt.Sprintf("%d\t", p.Bounced)
		}
		undeliverable := 0
		for _, r := range rs {
			p, _ := get(r)
			line += fmt.Sprintf("%d\t", p.DSNNamed)
			undeliverable = p.Undeliverable
		}
		fmt.Fprintln(tw, line+fmt.Sprintf("%d\t", undeliverable))
	}
	for _, p := range spec.Providers {
		if p.Sender {
			continue
		}
		row(p.Name, exp.deliverable[p.Name], func(r worldResult) (providerResult, bool) { return findProvider(r, p.Name) })
	}
	row("total", totalOf(exp.deliverable), func(r worldResult) (providerResult, bool) {
		return providerResult{Delivered: r.Delivered, Share: r.Share, Duplicates: r.Duplicates,
			BounceExpected: r.BounceExpected, Bounced: r.Bounced, DSNNamed: r.DSNNamed, Undeliverable: totalOf(exp.undeliverable)}, true
	})
	tw.Flush()

	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 2, 8, 2, ' ', tabwriter.AlignRight)
	head = "provider\tcap/IP\t"
	for _, n := range names {
		head += n + " peak/IP\tconns\trefused\trate-limited\tgreylisted\tdead dials\thole dials\theld\t"
	}
	fmt.Fprintln(tw, head)
	for _, p := range spec.Providers {
		if p.Sender || p.Nonexistent {
			continue
		}
		line := fmt.Sprintf("%s\t%s\t", p.Name, capString(p.ConnCapPerIP, p.HostPerDomain))
		for _, r := range rs {
			pr, _ := findProvider(r, p.Name)
			line += fmt.Sprintf("%d\t%d\t%.1f%%\t%d\t%d\t%d\t%d\t%d\t", pr.PeakPerIP, pr.Connections, 100*pr.RefusedShare,
				pr.RateLimited, pr.Greylisted, pr.DeadDials, pr.HoleDials, pr.PeakHeld)
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
}

func findProvider(r worldResult, name string) (providerResult, bool) {
	for _, p := range r.Providers {
		if p.Name == name {
			return p, true
		}
	}
	return providerResult{}, false
}

func totalOf(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func capString(c int, perDomain bool) string {
	switch {
	case c == 0:
		return "-"
	case perDomain:
		return fmt.Sprintf("%d/dom", c)
	}
	return fmt.Sprint(c)
}

func ratio(a, b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", float64(a)/float64(b))
}

// ---- Tern in the world ----

// ternWorld is tern serve configured by worldTernConfig.
type ternWorld struct {
	bin     string
	log     io.Writer
	srv     ternServer
	dir     string
	stopped bool
}

// worldTernConfig is the configuration of Tern in the world benchmark:
// one VMTA sending from ternWorldSource, the world's DNS server, a retry
// every minute (so greylisted mail is retried within the window, as
// Postfix's is), an accounting file with d, b and t records, and the MX
// hosts' port (25 unless -world-port says otherwise). Every other
// directive is Tern's default. Rollup and adaptive-connection directives
// belong here once Tern has them.
func worldTernConfig(dir string, port, adminPort int, dnsAddr string, mxPort int) string {
	return fmt.Sprintf(`host-name tern.bench.test
postmaster postmaster@tern.bench.test
spool %[1]s/spool
log-file %[1]s/tern.log
smtp-listener 127.0.0.1:%[2]d
http-mgmt-port 127.0.0.1:%[3]d
http-access 127.0.0.1 admin
name-server %[4]s
<acct-file %[1]s/acct.csv>
    records d,b,t
</acct-file>
<source 127.0.0.1>
    always-allow-relaying yes
    default-virtual-mta world
</source>
<virtual-mta world>
    smtp-source-host %[5]s tern.bench.test
</virtual-mta>
<domain *>
    retry-after 1m
    default-smtp-port %[6]d
</domain>
`, dir, port, adminPort, dnsAddr, ternWorldSource, mxPort)
}

func (t *ternWorld) start(ctx context.Context, dir string, port int, dnsAddr string, mxPort int) error {
	adminPort, err := freePort()
	if err != nil {
		return err
	}
	t.dir = dir
	conf := filepath.Join(dir, "tern.conf")
	if err := os.WriteFile(conf, []byte(worldTernConfig(dir, port, adminPort, dnsAddr, mxPort)), 0o644); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, t.bin, "check", conf).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tern check %s: %v: %s", conf, err, out)
	}
	if first, _, _ := strings.Cut(string(out), "\n"); !strings.Contains(first, "(0 warnings)") {
		fmt.Fprintf(t.log, "ternbench: tern check %s:\n%s", conf, out)
	}
	t.srv = ternServer{bin: t.bin, admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort)}
	return t.srv.launch(ctx, conf, port)
}

// bounced reads the b records of the accounting file (flushed every
// second).
func (t *ternWorld) bounced() ([]string, error) {
	f, err := os.Open(filepath.Join(t.dir, "acct.csv"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	var out []string
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			// The last line may be half written.
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				continue
			}
			return out, err
		}
		if len(rec) > 4 && rec[0] == "b" {
			out = append(out, rec[4])
		}
	}
	return out, nil
}

func (t *ternWorld) cpu() time.Duration { return t.srv.cpu() }

// ternStopGrace is how long tern serve gets to drain after SIGTERM before
// SIGKILL: more than its own drain bound (30 s), which connections held
// by black holes can use up.
const ternStopGrace = 45 * time.Second

func (t *ternWorld) stop() {
	if t.srv.cmd != nil && !t.stopped {
		t.stopped = true
		stopProcess(t.srv.cmd, t.srv.done, ternStopGrace)
	}
}

// ---- Postfix in the world ----

// postfixWorld is the throw-away Postfix of the peer benchmark,
// configured by worldPostfixConfig.
type postfixWorld struct {
	srv     postfixServer
	stopped bool
}

// worldPostfixConfig is the main.cf of Postfix in the world benchmark:
// Debian's defaults, its own directories, no local delivery, smtp(8)
// bound to postfixWorldSource, and retries about once a minute like
// Tern's retry-after 1m (minimal and maximal backoff 60s, the deferred
// queue scanned every 15s, so a deferred recipient is retried 60 to 75 s
// later). smtp(8) runs chrooted in the queue directory, where its
// resolv.conf points the C library's resolver at the world's DNS server
// (which must therefore be on port 53); the MX port (mxPort) is numeric
// so that no /etc/services is needed there. It logs to DIR/maillog, which
// is where its bounces are counted.
func worldPostfixConfig(dir string, mxPort int) []byte {
	return fmt.Appendf(nil, `compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_bind_address = %[2]s
smtp_tcp_port = %[3]d
minimal_backoff_time = 60s
maximal_backoff_time = 60s
queue_run_delay = 15s
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
`, dir, postfixWorldSource, mxPort)
}

// worldMasterCf is Debian's master.cf with smtpd on 127.0.0.1:port, the
// smtp client (smtp unix) chrooted and every other service not.
func worldMasterCf(orig []byte, port int) []byte {
	var out bytes.Buffer
	for _, line := range strings.Split(string(masterCf(orig, port)), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && f[0] == "smtp" && f[1] == "unix" && !strings.HasPrefix(line, "#") {
			f[4] = "y"
			line = strings.Join(f, " ")
		}
		out.WriteString(line + "\n")
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n"))
}

func (p *postfixWorld) start(ctx context.Context, dir string, port int, dnsAddr string, mxPort int) error {
	host, dnsPort, err := net.SplitHostPort(dnsAddr)
	if err != nil {
		return err
	}
	if dnsPort != "53" {
		return fmt.Errorf("Postfix's resolver needs the world's DNS on port 53, not %s (-world-dns)", dnsAddr)
	}
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"queue/etc/resolv.conf": fmt.Appendf(nil, "nameserver %s\noptions timeout:2 attempts:2\n", host),
		"queue/etc/hosts":       []byte("127.0.0.1 localhost\n"),
	}
	if tz, err := os.ReadFile("/etc/localtime"); err == nil {
		files["queue/etc/localtime"] = tz
	}
	return p.srv.startWith(ctx, dir, port, worldPostfixConfig(dir, mxPort), worldMasterCf(master, port), files)
}

// bounced reads the recipients of the status=bounced lines of the log.
func (p *postfixWorld) bounced() ([]string, error) {
	f, err := os.Open(filepath.Join(p.srv.dir, "maillog"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, "status=bounced") {
			continue
		}
		if _, rest, ok := strings.Cut(l, " to=<"); ok {
			if addr, _, ok := strings.Cut(rest, ">"); ok {
				out = append(out, addr)
			}
		}
	}
	return out, sc.Err()
}

func (p *postfixWorld) cpu() time.Duration { return p.srv.cpu() }

func (p *postfixWorld) stop() {
	if !p.stopped {
		p.stopped = true
		_ = p.srv.stop()
	}
}

// parseMTAs checks the -mtas list.
func parseMTAs(s string) ([]string, error) {
	var out []string
	for _, m := range splitComma(s) {
		if m != "postfix" && m != "tern" {
			return nil, fmt.Errorf("MTA %q: want postfix or tern", m)
		}
		if slices.Contains(out, m) {
			return nil, fmt.Errorf("MTA %q twice", m)
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, errors.New("no MTA")
	}
	return out, nil
}
