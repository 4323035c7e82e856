package main

// End-to-end tests of the whole pipeline in tern serve: SMTP in, the spool,
// and delivery through each VMTA's source IP and host name, over loopback
// sockets only. Tern runs as a child process (see ternCmd), DNS answers come
// from a delivery/dnstest server named by the config's name-server, and
// delivered mail lands in delivery/smtptest sinks on 127.0.0.25. Tests wait
// on log lines and sink records with deadlines, never by sleeping.

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
	"github.com/ternmta/tern/queue"
)

// Deadlines. Generous against a loaded 2-core machine running the race
// detector; a passing run takes a fraction of them.
const (
	startTimeout   = 20 * time.Second // until tern serve is ready
	deliverTimeout = 20 * time.Second // until mail reaches a sink
	exitTimeout    = 20 * time.Second // until tern serve exits after SIGTERM
)

// sinkIP is where the sinks listen: the MX hosts of the test domains. The
// delivery package's tests, which may run at the same time, keep their sinks
// on other addresses, so a port reserved here while its sink is down cannot
// be taken by one of theirs.
const sinkIP = "127.0.0.25"

// ternProc is a running tern serve with its log (stderr and stdout, one
// line each) collected as it is written.
type ternProc struct {
	cmd  *exec.Cmd
	conf string

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced when a line arrives
	eof     chan struct{} // closed when the output ends (the process is gone)
	exited  chan struct{} // closed when Wait returned
	waitErr error
}

// startTern starts tern serve -c conf and waits until it serves: listeners
// open and signal handling installed ("running with" is printed after both).
func startTern(t *testing.T, conf string) *ternProc {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &ternProc{
		cmd: ternCmd(t, "serve", "-c", conf), conf: conf,
		changed: make(chan struct{}), eof: make(chan struct{}), exited: make(chan struct{}),
	}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	go func() {
		defer close(p.eof)
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
	}()
	go func() {
		err := p.cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
		<-p.eof
		if t.Failed() {
			t.Logf("log of tern serve -c %s (pid %d):\n%s", conf, p.cmd.Process.Pid, p.log())
		}
	})
	p.waitLog(t, 0, startTimeout, "tern serve running", func(l string) bool {
		return strings.HasPrefix(l, "tern serve: running with")
	})
	return p
}

// log returns everything logged so far.
func (p *ternProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// mark returns the number of lines logged so far, for waitLog to look only
// at what comes after it.
func (p *ternProc) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// waitLog waits until a line from index from on satisfies match and returns
// it; it fails the test, naming what, after timeout or when the process
// ends without such a line. match sees each line once, in order, so it may
// also collect from the lines it rejects.
func (p *ternProc) waitLog(t *testing.T, from int, timeout time.Duration, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		for i := from; i < len(p.lines); i++ {
			if match(p.lines[i]) {
				l := p.lines[i]
				p.mu.Unlock()
				return l
			}
		}
		from = len(p.lines)
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.eof:
			p.mu.Lock()
			n := len(p.lines)
			p.mu.Unlock()
			if n == from {
				t.Fatalf("tern serve ended without logging %s", what)
			}
		case <-deadline.C:
			t.Fatalf("tern serve logged no %s within %v", what, timeout)
		}
	}
}

func (p *ternProc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *ternProc) stop(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(exitTimeout):
		t.Fatalf("tern serve did not exit within %v of SIGTERM", exitTimeout)
	}
	<-p.eof
	p.mu.Lock()
	err := p.waitErr
	p.mu.Unlock()
	if err != nil {
		t.Fatalf("tern serve did not exit cleanly after SIGTERM: %v", err)
	}
}

// kill sends SIGKILL and waits until the process is gone.
func (p *ternProc) kill(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(exitTimeout):
		t.Fatalf("tern serve did not die within %v of SIGKILL", exitTimeout)
	}
	<-p.eof
}

// logField returns the value of key in a slog text line ("" if absent).
// Values written without quotes are enough for ids, names and positions.
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// freePortOn returns a TCP port free on ip at the time of the call.
func freePortOn(t *testing.T, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// inject sends one message over SMTP to addr from 127.0.0.1 and returns the
// queue id from the 250 reply. headers are extra header lines ("Name:
// value"); the message carries marker in X-Test-Marker.
func inject(addr, rcpt, marker string, headers ...string) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Mail("app@example.org", nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	var msg strings.Builder
	msg.WriteString("From: app@example.org\r\nTo: " + rcpt + "\r\nSubject: test " + marker + "\r\n")
	for _, h := range headers {
		msg.WriteString(h + "\r\n")
	}
	msg.WriteString("X-Test-Marker: " + marker + "\r\n\r\nbody of " + marker + "\r\n")
	if _, err := w.Write([]byte(msg.String())); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	c.Quit()
	// "2.0.0 OK <queue id>"
	_, id, ok := strings.Cut(resp.StatusText, "OK ")
	if !ok || id == "" {
		return "", fmt.Errorf("250 reply without a queue id: %q", resp.StatusText)
	}
	return id, nil
}

func mustInject(t *testing.T, addr, rcpt, marker string, headers ...string) string {
	t.Helper()
	id, err := inject(addr, rcpt, marker, headers...)
	if err != nil {
		t.Fatalf("injecting %s: %v", marker, err)
	}
	return id
}

var markerRE = regexp.MustCompile(`(?m)^X-Test-Marker: (\S+)\r?$`)

// marker returns the X-Test-Marker of a delivered message.
func marker(m smtptest.Message) string {
	if s := markerRE.FindSubmatch(m.Data); s != nil {
		return string(s[1])
	}
	return ""
}

// byMarker indexes delivered messages by marker and fails the test on a
// message without one or on a marker delivered twice.
func byMarker(t *testing.T, msgs []smtptest.Message) map[string]smtptest.Message {
	t.Helper()
	out := map[string]smtptest.Message{}
	for _, m := range msgs {
		k := marker(m)
		if k == "" {
			t.Errorf("delivered message without a marker:\n%s", m.Data)
			continue
		}
		if _, dup := out[k]; dup {
			t.Errorf("message %s delivered twice", k)
		}
		out[k] = m
	}
	return out
}

// zones answers MX for the test domains with mx.sink.test at sinkIP.
func zones(domains ...string) dnstest.Zones {
	z := dnstest.Zones{"mx.sink.test": {A: []string{sinkIP}}}
	for _, d := range domains {
		z[d] = dnstest.Records{MX: []dnstest.MX{{Pref: 10, Host: "mx.sink.test"}}}
	}
	return z
}

// identity is who a VMTA sends as.
type identity struct {
	ip, ehlo string
}

var (
	mta1 = identity{"127.0.0.2", "mta1.tern.test"}
	mta2 = identity{"127.0.0.3", "mta2.tern.test"}
	mta3 = identity{"127.0.0.4", "mta3.tern.test"}
)

// checkFrom fails the test unless m came from who, greeting with its name.
func checkFrom(t *testing.T, what string, m smtptest.Message, who identity) {
	t.Helper()
	if m.Remote.String() != who.ip || m.EHLO != who.ehlo {
		t.Errorf("%s arrived from %s greeting as %q, want %s as %q", what, m.Remote, m.EHLO, who.ip, who.ehlo)
	}
}

// baseConf is a configuration with the two VMTAs of the acceptance tests,
// a pool of both, and a catch-all domain sending to the sink's port.
// extra is added at the end.
func baseConf(dir string, smtpPort int, dns string, sinkPort int, extra string) string {
	return fmt.Sprintf(`
host-name tern.test
# The tests read the per-message lines (message accepted, delivery attempt).
log-level debug
spool %s
smtp-listener 127.0.0.1:%d
name-server %s
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-virtual-mta yes
    # Not the first VMTA of the file, so the default is not a fallback.
    default-virtual-mta mta2
</source>
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.tern.test
</virtual-mta>
<virtual-mta mta2>
    smtp-source-host 127.0.0.3 mta2.tern.test
</virtual-mta>
<virtual-mta-pool both>
    virtual-mta mta1
    virtual-mta mta2
</virtual-mta-pool>
<domain *>
    default-smtp-port %d
%s</domain>
`, filepath.Join(dir, "spool"), smtpPort, dns, sinkPort, extra)
}

// TestPipelineVMTASelection injects mail selected by X-Virtual-MTA (each
// VMTA, and the pool) and by the source's default, and checks that each
// message reaches the sink from its VMTA's IP with its host name, and
// without the X-Virtual-MTA header.
func TestPipelineVMTASelection(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test", "other.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sink.Port(), ""))
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	want := map[string]identity{} // marker -> who must deliver it
	mustInject(t, addr, "a@dest.test", "hdr-mta1", "X-Virtual-MTA: mta1")
	want["hdr-mta1"] = mta1
	mustInject(t, addr, "b@other.test", "hdr-mta2", "X-Virtual-MTA: mta2")
	want["hdr-mta2"] = mta2
	mustInject(t, addr, "c@dest.test", "default")
	want["default"] = mta2
	const poolN = 6
	poolIDs := map[string]string{} // queue id -> marker
	for i := range poolN {
		m := fmt.Sprintf("pool-%d", i)
		poolIDs[mustInject(t, addr, fmt.Sprintf("p%d@dest.test", i), m, "X-Virtual-MTA: both")] = m
	}

	// Which member the listener chose for each pool message, from its log.
	poolVia := map[string]string{} // marker -> VMTA
	p.waitLog(t, 0, deliverTimeout, "message accepted for every pool message", func(l string) bool {
		if strings.Contains(l, `msg="message accepted"`) {
			if m, ok := poolIDs[logField(l, "id")]; ok {
				poolVia[m] = logField(l, "vmta")
			}
		}
		return len(poolVia) == poolN
	})
	members := map[string]bool{}
	for m, v := range poolVia {
		switch v {
		case "mta1":
			want[m] = mta1
		case "mta2":
			want[m] = mta2
		default:
			t.Fatalf("pool message %s went to VMTA %q, not a member of the pool", m, v)
		}
		members[v] = true
	}
	if len(members) != 2 {
		t.Errorf("the pool used only %v for %d messages, want both members", members, poolN)
	}

	got := byMarker(t, sink.WaitMessages(t, len(want), deliverTimeout))
	for m, who := range want {
		msg, ok := got[m]
		if !ok {
			t.Errorf("message %s did not arrive", m)
			continue
		}
		checkFrom(t, m, msg, who)
		if strings.Contains(strings.ToLower(string(msg.Data)), "x-virtual-mta") {
			t.Errorf("message %s arrived with the X-Virtual-MTA header:\n%s", m, msg.Data)
		}
	}
	if len(got) != len(want) {
		t.Errorf("the sink got %d messages, want %d", len(got), len(want))
	}
	// Every connection, not only those that carried mail, came from one of
	// the two identities as a whole.
	for _, c := range sink.Connections() {
		ip := c.Remote.Addr().String()
		if (ip == mta1.ip && c.EHLO != mta1.ehlo) || (ip == mta2.ip && c.EHLO != mta2.ehlo) ||
			(ip != mta1.ip && ip != mta2.ip) {
			t.Errorf("connection %d from %s greeted as %q", c.ID, ip, c.EHLO)
		}
	}
	p.stop(t)
}

// spoolTotals opens the spool of a stopped tern and returns its totals.
func spoolTotals(t *testing.T, dir string) queue.Totals {
	t.Helper()
	q, err := queue.Open(queue.Options{Dir: filepath.Join(dir, "spool")})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	return q.Totals()
}

// TestPipelineRestartDeliversSpool injects mail while the MX is down,
// stops tern with SIGTERM, brings the MX up and starts tern again: the
// recovered spool is delivered, each message exactly once.
func TestPipelineRestartDeliversSpool(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sinkPort := freePortOn(t, sinkIP) // nothing listens there yet: the MX is down
	smtpPort := freePort(t)
	// A short retry-after so that mail deferred before the restart is due
	// again right after it.
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sinkPort, "    retry-after 1s\n"))
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	const n = 12
	ids := map[string]bool{}
	for i := range n {
		via := "X-Virtual-MTA: mta1"
		if i%2 == 1 {
			via = "X-Virtual-MTA: both"
		}
		ids[mustInject(t, addr, fmt.Sprintf("r%d@dest.test", i), fmt.Sprintf("m%d", i), via)] = true
	}
	// Every message was tried and deferred (the MX refuses connections)
	// before tern stops.
	deferred := map[string]bool{}
	p.waitLog(t, 0, deliverTimeout, "a deferral of every message", func(l string) bool {
		if strings.Contains(l, `msg="delivery attempt"`) && logField(l, "outcome") == "deferred" && ids[logField(l, "id")] {
			deferred[logField(l, "id")] = true
		}
		return len(deferred) == n
	})
	p.stop(t)
	if tot := spoolTotals(t, dir); tot.Messages != n {
		t.Fatalf("spool after SIGTERM holds %+v, want %d messages", tot, n)
	}

	sink := smtptest.Start(t, smtptest.Options{Addr: fmt.Sprintf("%s:%d", sinkIP, sinkPort)})
	p = startTern(t, conf)
	got := byMarker(t, sink.WaitMessages(t, n, deliverTimeout))
	p.stop(t)
	for i := range n {
		m := fmt.Sprintf("m%d", i)
		msg, ok := got[m]
		if !ok {
			t.Errorf("message %s did not arrive", m)
			continue
		}
		if i%2 == 0 {
			checkFrom(t, m, msg, mta1)
		} else if msg.Remote.String() != mta1.ip && msg.Remote.String() != mta2.ip {
			t.Errorf("pool message %s arrived from %s", m, msg.Remote)
		}
	}
	if all := sink.Messages(); len(all) != n {
		t.Errorf("the sink got %d messages, want %d: a message was delivered twice", len(all), n)
	}
	if tot := spoolTotals(t, dir); tot.Messages != 0 || tot.Recipients != 0 {
		t.Errorf("spool after delivery holds %+v, want nothing", tot)
	}
}

// TestPipelineKillDeliversAcknowledged injects mail from several sessions
// while the MX is down and kills tern with SIGKILL in the middle of it:
// after a restart with the MX up, every message that got 250 arrives, and
// nothing arrives twice (nothing was being delivered at the kill).
func TestPipelineKillDeliversAcknowledged(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sinkPort := freePortOn(t, sinkIP)
	smtpPort := freePort(t)
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sinkPort, "    retry-after 1s\n"))
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	// Injectors run until the kill cuts them off; acked are the markers
	// that got 250, sent every marker that was tried.
	const injectors, atLeast = 4, 24
	var (
		mu      sync.Mutex
		acked   = map[string]bool{}
		sent    = map[string]bool{}
		lastErr error // why an injector stopped
		wg      sync.WaitGroup
	)
	enough := make(chan struct{})
	var once sync.Once
	for g := range injectors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				m := fmt.Sprintf("g%d-%d", g, i)
				mu.Lock()
				sent[m] = true
				mu.Unlock()
				if _, err := inject(addr, fmt.Sprintf("r%d@dest.test", g), m, "X-Virtual-MTA: both"); err != nil {
					mu.Lock()
					lastErr = err
					mu.Unlock()
					return // the kill, or a failure reported below
				}
				mu.Lock()
				acked[m] = true
				if len(acked) >= atLeast {
					once.Do(func() { close(enough) })
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-enough:
	case <-time.After(deliverTimeout):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("fewer than %d messages accepted within %v (last error: %v)", atLeast, deliverTimeout, lastErr)
	}
	p.kill(t)
	wg.Wait()

	spooled := spoolTotals(t, dir).Messages
	if spooled < len(acked) {
		t.Fatalf("spool after SIGKILL holds %d messages, but %d got 250", spooled, len(acked))
	}
	t.Logf("%d messages acknowledged, %d in the spool after SIGKILL", len(acked), spooled)

	sink := smtptest.Start(t, smtptest.Options{Addr: fmt.Sprintf("%s:%d", sinkIP, sinkPort)})
	p = startTern(t, conf)
	// Everything spooled arrives: the acknowledged messages, and maybe one
	// per session whose 250 the kill cut off.
	got := byMarker(t, sink.WaitMessages(t, spooled, deliverTimeout))
	p.stop(t)
	for m := range acked {
		if _, ok := got[m]; !ok {
			t.Errorf("message %s got 250 but did not arrive", m)
		}
	}
	for m := range got {
		if !sent[m] {
			t.Errorf("message %s arrived but was never sent", m)
		}
	}
	if all := sink.Messages(); len(all) != spooled {
		t.Errorf("the sink got %d messages, want the %d spooled", len(all), spooled)
	}
	if tot := spoolTotals(t, dir); tot.Messages != 0 {
		t.Errorf("spool after delivery holds %+v, want nothing", tot)
	}
}

// TestPipelineReload adds a VMTA to the file and sends SIGHUP: mail naming
// it is accepted and arrives from its IP. A broken file is then refused
// with its position in the log, and the running configuration keeps
// serving.
func TestPipelineReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	base := baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "")
	conf := writeConf(t, dir, base)
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	_, err := inject(addr, "a@dest.test", "before", "X-Virtual-MTA: mta3")
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 {
		t.Fatalf("X-Virtual-MTA naming a VMTA not yet configured: %v, want 550", err)
	}

	// Add mta3 on 127.0.0.4.
	withMTA3 := base + "<virtual-mta mta3>\n    smtp-source-host 127.0.0.4 mta3.tern.test\n</virtual-mta>\n"
	writeConf(t, dir, withMTA3)
	mark := p.mark()
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, mark, deliverTimeout, "configuration reloaded", func(l string) bool {
		return strings.Contains(l, `msg="configuration reloaded"`)
	})
	mustInject(t, addr, "b@dest.test", "after-reload", "X-Virtual-MTA: mta3")
	got := byMarker(t, sink.WaitMessages(t, 1, deliverTimeout))
	checkFrom(t, "after-reload", got["after-reload"], mta3)

	// A broken file: mta3 removed and a misspelt directive on the last
	// line. The reload is refused and mta3 still works.
	broken := base + "max-smpt-out 3\n"
	brokenLine := strings.Count(broken, "\n")
	writeConf(t, dir, broken)
	mark = p.mark()
	p.signal(t, syscall.SIGHUP)
	line := p.waitLog(t, mark, deliverTimeout, "reload refused", func(l string) bool {
		return strings.Contains(l, `msg="reload refused"`) || strings.Contains(l, `msg="configuration reloaded"`)
	})
	if at := fmt.Sprintf("at=%s:%d:", conf, brokenLine); !strings.Contains(line, `msg="reload refused"`) || !strings.Contains(line, at) {
		t.Fatalf("broken file on SIGHUP logged %q, want a refusal %s…", line, at)
	}
	mustInject(t, addr, "c@dest.test", "after-refusal", "X-Virtual-MTA: mta3")
	mustInject(t, addr, "d@dest.test", "after-refusal-mta1", "X-Virtual-MTA: mta1")
	got = byMarker(t, sink.WaitMessages(t, 3, deliverTimeout))
	checkFrom(t, "after-refusal", got["after-refusal"], mta3)
	checkFrom(t, "after-refusal-mta1", got["after-refusal-mta1"], mta1)
	p.stop(t)
}

// TestPipelineLogLevel checks what log-level lets through: at the default
// (info) neither the reception nor the delivery of a message is a log line,
// while a deferral is; after a reload to debug both appear, and a reload
// with a bad level is refused.
func TestPipelineLogLevel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	z := zones("dest.test")
	// down.test's MX is an address where nothing listens.
	z["down.test"] = dnstest.Records{MX: []dnstest.MX{{Pref: 10, Host: "mx.down.test"}}}
	z["mx.down.test"] = dnstest.Records{A: []string{"127.0.0.9"}}
	dns := dnstest.Start(t, z)
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	// The first two messages go to dest.test (the sink); those to
	// down.test find no server and are deferred.
	debug := baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "")
	info := strings.Replace(debug, "log-level debug\n", "", 1)
	if info == debug {
		t.Fatal("baseConf no longer sets log-level debug")
	}
	conf := writeConf(t, dir, info)
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	perMessage := func(l string) bool {
		return strings.Contains(l, `msg="message accepted"`) ||
			(strings.Contains(l, `msg="delivery attempt"`) && logField(l, "outcome") == "delivered")
	}

	// At info: a delivered message leaves no line, a deferred one does.
	// Stopping tern makes sure that every line it would write is written.
	mustInject(t, addr, "a@dest.test", "at-info", "X-Virtual-MTA: mta1")
	sink.WaitMessages(t, 1, deliverTimeout)
	downID := mustInject(t, addr, "a@down.test", "deferred-at-info", "X-Virtual-MTA: mta1")
	p.waitLog(t, 0, deliverTimeout, "the deferral, at info", func(l string) bool {
		return strings.Contains(l, `msg="delivery attempt"`) && logField(l, "id") == downID && logField(l, "outcome") == "deferred"
	})
	p.stop(t)
	for _, l := range strings.Split(p.log(), "\n") {
		if perMessage(l) {
			t.Fatalf("at the default log level, tern logged a per-message line: %s", l)
		}
	}

	// Restarted at info, then reloaded to debug: the change is logged, and
	// both lines appear.
	p = startTern(t, conf)
	reloadConf(t, p, debug)
	p.waitLog(t, 0, reloadTimeout, "the level change", func(l string) bool {
		return strings.Contains(l, `msg="log level changed"`) && logField(l, "from") == "INFO" && logField(l, "to") == "DEBUG"
	})
	mark := p.mark()
	id := mustInject(t, addr, "b@dest.test", "at-debug", "X-Virtual-MTA: mta1")
	p.waitLog(t, mark, deliverTimeout, "message accepted, at debug", func(l string) bool {
		return strings.Contains(l, `msg="message accepted"`) && logField(l, "id") == id
	})
	p.waitLog(t, mark, deliverTimeout, "the delivery, at debug", func(l string) bool {
		return strings.Contains(l, `msg="delivery attempt"`) && logField(l, "id") == id && logField(l, "outcome") == "delivered"
	})
	sink.WaitMessages(t, 2, deliverTimeout)

	// A bad level is refused with its position, and debug stays.
	bad := strings.Replace(debug, "log-level debug", "log-level loud", 1)
	if err := os.WriteFile(conf, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if l := hup(t, p); !strings.Contains(l, `msg="reload refused"`) || !strings.Contains(l, `unknown log level`) || !strings.Contains(l, conf+":") {
		t.Fatalf("log-level loud: reload logged %s, want a refusal naming the file and the level", l)
	}
	mark = p.mark()
	id = mustInject(t, addr, "c@dest.test", "still-debug", "X-Virtual-MTA: mta1")
	p.waitLog(t, mark, deliverTimeout, "message accepted after the refused reload", func(l string) bool {
		return strings.Contains(l, `msg="message accepted"`) && logField(l, "id") == id
	})
	sink.WaitMessages(t, 3, deliverTimeout)
	p.stop(t)
}

// TestPipelineMXRestart restarts the MX between two messages: the
// connection tern keeps open after the first one is closed by the server,
// and the second message goes out on a new connection at once instead of
// being deferred.
func TestPipelineMXRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sinkPort := freePortOn(t, sinkIP)
	sinkAddr := fmt.Sprintf("%s:%d", sinkIP, sinkPort)
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkAddr})
	smtpPort := freePort(t)
	// The connection stays open between the two messages.
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sinkPort, "    connection-idle-timeout 1h\n"))
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	id := mustInject(t, addr, "a@dest.test", "first", "X-Virtual-MTA: mta1")
	// Tern has the 250 (the sink records a message before it replies).
	l := p.waitLog(t, 0, deliverTimeout, "the delivery of the first message", func(l string) bool {
		return strings.Contains(l, `msg="delivery attempt"`) && logField(l, "id") == id
	})
	if logField(l, "outcome") != "delivered" {
		t.Fatalf("the first message was not delivered: %s", l)
	}
	if n := sink.ActiveConns(); n != 1 {
		t.Fatalf("%d connections open after the first delivery, want 1 kept for reuse", n)
	}
	sink.Close()
	sink2 := smtptest.Start(t, smtptest.Options{Addr: sinkAddr})
	mustInject(t, addr, "b@dest.test", "second", "X-Virtual-MTA: mta1")
	got := byMarker(t, sink2.WaitMessages(t, 1, deliverTimeout))
	checkFrom(t, "second", got["second"], mta1)

	// The MX goes down for good: the third message is deferred, and the
	// reason logged is the failed connect, not the closed connection.
	l = p.waitLog(t, 0, deliverTimeout, "the delivery of the second message", func(l string) bool {
		return strings.Contains(l, `msg="delivery attempt"`) && strings.Contains(l, "rcpt=b@dest.test")
	})
	if logField(l, "outcome") != "delivered" {
		t.Fatalf("the second message was not delivered: %s", l)
	}
	sink2.Close()
	id = mustInject(t, addr, "c@dest.test", "third", "X-Virtual-MTA: mta1")
	l = p.waitLog(t, 0, deliverTimeout, "the attempt of the third message", func(l string) bool {
		return strings.Contains(l, `msg="delivery attempt"`) && logField(l, "id") == id
	})
	if logField(l, "outcome") != "deferred" || !strings.Contains(l, "connection refused") {
		t.Errorf("with the MX down, the third message's attempt logged %s; want deferred for the refused connection", l)
	}
	p.stop(t)
}
