package main

// Acceptance tests of reloading (issue #7) through the real tern serve:
// SIGHUP and POST /api/reload add a listener and a VMTA, change a
// domain's max-smtp-out, remove a VMTA that has queued mail, refuse a
// broken file without touching what runs, and keep every message exactly
// once while reloads come in the middle of a load. They use the harness of
// pipeline_test.go (startTern, baseConf, zones, sinks on sinkIP).

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/miekg/dns"
	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// reloadTimeout bounds the wait for tern to log the outcome of a SIGHUP.
const reloadTimeout = 20 * time.Second

// hup sends SIGHUP and returns the first line that says how the reload
// ended: "configuration reloaded" or "reload refused".
func hup(t *testing.T, p *ternProc) string {
	t.Helper()
	mark := p.mark()
	p.signal(t, syscall.SIGHUP)
	return p.waitLog(t, mark, reloadTimeout, "the outcome of the reload", func(l string) bool {
		return strings.Contains(l, `msg="configuration reloaded"`) || strings.Contains(l, `msg="reload refused"`)
	})
}

// reloadConf writes body as the configuration of p and reloads it; the
// reload must succeed.
func reloadConf(t *testing.T, p *ternProc, body string) {
	t.Helper()
	if err := os.WriteFile(p.conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if l := hup(t, p); !strings.Contains(l, `msg="configuration reloaded"`) {
		t.Fatalf("reload refused: %s", l)
	}
}

// lineOf returns the 1-based number of the first line of body containing
// s, so that a test names the line of an error it planted.
func lineOf(t *testing.T, body, s string) int {
	t.Helper()
	i := strings.Index(body, s)
	if i < 0 {
		t.Fatalf("%q is not in the configuration", s)
	}
	return strings.Count(body[:i], "\n") + 1
}

// waitUntil polls cond until it holds, failing the test after timeout. It
// is for state only an API answers (the admin API, counters); log lines and
// sink records have their own notifying waits.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not %s within %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// queueRows returns GET /api/queues?filter of the admin API at base
// ("http://127.0.0.1:PORT/api/") by queue name.
func queueRows(t *testing.T, base, filter string) map[string]map[string]any {
	t.Helper()
	var rows []map[string]any
	if code := adminCall(t, "GET", base+"queues?"+filter, "", &rows); code != http.StatusOK {
		t.Fatalf("GET /api/queues?%s: %d", filter, code)
	}
	out := map[string]map[string]any{}
	for _, r := range rows {
		name, _ := r["queue"].(string)
		out[name] = r
	}
	return out
}

// acctRecords reads every accounting file in dir (the current one and any
// rotated) and returns the records as column -> value.
func acctRecords(t *testing.T, dir string) []map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]string
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := csv.NewReader(f).ReadAll()
		f.Close()
		if err != nil {
			t.Fatalf("accounting file %s does not parse: %v", name, err)
		}
		if len(rows) == 0 {
			continue
		}
		for _, r := range rows[1:] {
			rec := map[string]string{}
			for i, c := range rows[0] {
				rec[c] = r[i]
			}
			out = append(out, rec)
		}
	}
	return out
}

// refusedWith fails the test unless err is an SMTP refusal with code.
func refusedWith(t *testing.T, what string, err error, code int) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != code {
		t.Errorf("%s: %v, want a %d refusal", what, err, code)
	}
}

// TestReloadAddsListenerAndVMTA adds a listener and a VMTA with SIGHUP.
// The new port accepts mail, mail naming the new VMTA (refused before)
// leaves from its IP with its name, and a client connected to the kept
// listener before the reload finishes its transaction after it: a reload
// drops no session.
func TestReloadAddsListenerAndVMTA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort, newPort := freePort(t), freePort(t)
	base := baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "")
	p := startTern(t, writeConf(t, dir, base))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	newAddr := fmt.Sprintf("127.0.0.1:%d", newPort)

	if c, err := net.Dial("tcp", newAddr); err == nil {
		c.Close()
		t.Fatalf("%s accepts connections before the reload adds it", newAddr)
	}
	_, err := inject(addr, "a@dest.test", "before", "X-Virtual-MTA: mta3")
	refusedWith(t, "X-Virtual-MTA naming mta3 before the reload", err, 550)

	// A session on the kept listener, in the middle of a transaction.
	held, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := held.Mail("app@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := held.Rcpt("held@dest.test", nil); err != nil {
		t.Fatal(err)
	}

	mark := p.mark()
	reloadConf(t, p, base+fmt.Sprintf(`
smtp-listener 127.0.0.1:%d
<virtual-mta mta3>
    smtp-source-host 127.0.0.4 mta3.tern.test
</virtual-mta>
`, newPort))
	p.waitLog(t, mark, reloadTimeout, "the new listener open", func(l string) bool {
		return strings.Contains(l, `msg="smtp listener open"`) && logField(l, "addr") == newAddr
	})

	// The session from before the reload finishes its transaction.
	w, err := held.Data()
	if err != nil {
		t.Fatalf("DATA on a session opened before the reload: %v", err)
	}
	if _, err := io.WriteString(w, "Subject: held\r\nX-Test-Marker: held\r\n\r\nbody\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA on a session opened before the reload: %v", err)
	}
	if err := held.Quit(); err != nil {
		t.Errorf("QUIT on a session opened before the reload: %v", err)
	}

	mustInject(t, newAddr, "b@dest.test", "new-listener-mta3", "X-Virtual-MTA: mta3")
	mustInject(t, addr, "c@dest.test", "old-listener-mta3", "X-Virtual-MTA: mta3")
	mustInject(t, addr, "d@dest.test", "old-listener-mta1", "X-Virtual-MTA: mta1")
	got := byMarker(t, sink.WaitMessages(t, 4, deliverTimeout))
	checkFrom(t, "held", got["held"], mta2) // the source's default VMTA
	checkFrom(t, "new-listener-mta3", got["new-listener-mta3"], mta3)
	checkFrom(t, "old-listener-mta3", got["old-listener-mta3"], mta3)
	checkFrom(t, "old-listener-mta1", got["old-listener-mta1"], mta1)
	p.stop(t)
}

// TestReloadChangesMaxSMTPOut reloads a domain's max-smtp-out from 1 to 4.
// The sink holds new sessions at EHLO, so that mail queues up behind the
// connections open and every new message asks for another connection
// (max-rcpt-per-transaction 1 makes every lease full, which asks too):
// only the cap keeps their number down. A connection that is already past
// EHLO would deliver the whole queue alone, so each phase starts with none
// (connection-idle-timeout 1s closes the one left from before).
func TestReloadChangesMaxSMTPOut(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("cap.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	conf := func(maxOut int) string {
		return baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "") + fmt.Sprintf(`
<domain cap.test>
    max-smtp-out %d
    max-rcpt-per-transaction 1
    connection-idle-timeout 1s
    # Held sessions never succeed, so an adaptive window would not
    # grow: the test is about max-smtp-out.
    adaptive-smtp-out no
</domain>
`, maxOut)
	}
	p := startTern(t, writeConf(t, dir, conf(1)))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	const n = 20
	injectAll := func(prefix string) {
		for i := range n {
			mustInject(t, addr, fmt.Sprintf("%s%d@cap.test", prefix, i), fmt.Sprintf("%s%d", prefix, i), "X-Virtual-MTA: mta1")
			if i == 0 {
				// The first connection is held at EHLO before the rest
				// is queued behind it, each message asking for more.
				sink.WaitActive(t, 1, deliverTimeout)
			}
		}
	}

	release := sink.Hold()
	injectAll("one")
	release()
	sink.WaitMessages(t, n, deliverTimeout)
	if peak := sink.PeakConns(); peak != 1 {
		t.Errorf("with max-smtp-out 1, the sink saw %d connections at once", peak)
	}

	reloadConf(t, p, conf(4))
	sink.WaitActive(t, 0, deliverTimeout)
	release = sink.Hold()
	injectAll("four")
	sink.WaitActive(t, 4, deliverTimeout)
	release()
	got := byMarker(t, sink.WaitMessages(t, 2*n, deliverTimeout))
	if len(got) != 2*n {
		t.Errorf("the sink got %d distinct messages, want %d", len(got), 2*n)
	}
	if peak := sink.PeakConns(); peak != 4 {
		t.Errorf("with max-smtp-out 4, the sink saw at most %d connections at once, want 4", peak)
	}
	p.stop(t)
}

// TestReloadRemovesVMTAWithQueuedMail removes a VMTA that has deferred mail
// (its MX is down). The mail stays in the spool, also across a restart, and
// is shown orphaned by GET /api/queues; the MX comes up but nothing is
// sent for the missing VMTA. One orphaned queue is deleted through the
// API, with a b record for each recipient; when a reload brings the VMTA
// back, the other queue is delivered from its IP.
func TestReloadRemovesVMTAWithQueuedMail(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("keep.test", "drop.test", "ctl.test"))
	sinkPort := freePortOn(t, sinkIP) // the MX is down until the VMTA is gone
	smtpPort, adminPort := freePort(t), freePort(t)
	acctDir := filepath.Join(dir, "acct")
	without := baseConf(dir, smtpPort, dns.Addr(), sinkPort, "    retry-after 1s\n") + fmt.Sprintf(`
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 operator
<acct-file %s>
    records d,b
</acct-file>
`, adminPort, filepath.Join(acctDir, "acct.csv"))
	with := without + "<virtual-mta mta3>\n    smtp-source-host 127.0.0.4 mta3.tern.test\n</virtual-mta>\n"
	conf := writeConf(t, dir, with)
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	api := fmt.Sprintf("http://127.0.0.1:%d/api/", adminPort)

	ids := map[string]bool{}
	for _, m := range []string{"keep0", "keep1"} {
		ids[mustInject(t, addr, m+"@keep.test", m, "X-Virtual-MTA: mta3")] = true
	}
	for _, m := range []string{"drop0", "drop1"} {
		ids[mustInject(t, addr, m+"@drop.test", m, "X-Virtual-MTA: mta3")] = true
	}
	deferred := map[string]bool{}
	p.waitLog(t, 0, deliverTimeout, "a deferral of every message", func(l string) bool {
		if strings.Contains(l, `msg="delivery attempt"`) && logField(l, "outcome") == "deferred" && ids[logField(l, "id")] {
			deferred[logField(l, "id")] = true
		}
		return len(deferred) == len(ids)
	})

	mark := p.mark()
	reloadConf(t, p, without)
	// The next attempt (retry-after 1s) finds no VMTA and leaves the mail.
	orphans := map[string]bool{}
	p.waitLog(t, mark, deliverTimeout, "both queues found without their VMTA", func(l string) bool {
		if strings.Contains(l, "queue has no configured virtual MTA") {
			orphans[logField(l, "queue")] = true
		}
		return orphans["keep.test/mta3"] && orphans["drop.test/mta3"]
	})
	sink := smtptest.Start(t, smtptest.Options{Addr: fmt.Sprintf("%s:%d", sinkIP, sinkPort)})
	// Mail for a configured VMTA goes out meanwhile; by the time it has
	// arrived the orphaned queues have had their chance to misbehave too.
	mustInject(t, addr, "ctl@ctl.test", "control", "X-Virtual-MTA: mta1")
	sink.WaitMessages(t, 1, deliverTimeout)

	rows := queueRows(t, api, "orphaned=yes")
	if len(rows) != 2 {
		t.Errorf("GET /api/queues?orphaned=yes lists %d queues, want keep.test/mta3 and drop.test/mta3: %v", len(rows), rows)
	}
	for _, q := range []string{"keep.test/mta3", "drop.test/mta3"} {
		r := rows[q]
		if r == nil {
			t.Fatalf("orphaned queue %s is not in GET /api/queues: %v", q, rows)
		}
		if r["orphaned"] != true {
			t.Errorf("GET /api/queues row %s: orphaned = %v, want true (row %v)", q, r["orphaned"], r)
		}
		n := 0.0
		for _, k := range []string{"ready", "deferred", "leased"} {
			v, _ := r[k].(float64)
			n += v
		}
		if n != 2 {
			t.Errorf("GET /api/queues row %s holds %v recipients, want 2", q, n)
		}
	}

	var del struct {
		Count int `json:"count"`
	}
	if code := adminCall(t, "POST", api+"delete?queue=drop.test/mta3", "", &del); code != http.StatusOK || del.Count != 2 {
		t.Fatalf("POST /api/delete?queue=drop.test/mta3: %d, count %d; want 200 and 2", code, del.Count)
	}
	if r := queueRows(t, api, "")["drop.test/mta3"]; r != nil {
		t.Errorf("drop.test/mta3 still listed after its deletion: %v", r)
	}

	// The orphaned mail is on disk, not only in memory, and survives a
	// restart without its VMTA.
	p.stop(t)
	if tot := spoolTotals(t, dir); tot.Messages != 2 || tot.Recipients != 2 {
		t.Fatalf("spool with mta3 removed holds %+v, want keep0 and keep1", tot)
	}
	p = startTern(t, conf)
	reloadConf(t, p, with)
	got := byMarker(t, sink.WaitMessages(t, 3, deliverTimeout))
	checkFrom(t, "keep0", got["keep0"], mta3)
	checkFrom(t, "keep1", got["keep1"], mta3)
	p.stop(t)
	for m := range got {
		if strings.HasPrefix(m, "drop") {
			t.Errorf("deleted message %s was delivered", m)
		}
	}
	if tot := spoolTotals(t, dir); tot.Messages != 0 {
		t.Errorf("spool after delivery holds %+v, want nothing", tot)
	}

	kinds := map[string]string{} // rcpt -> record types
	for _, r := range acctRecords(t, acctDir) {
		kinds[r["rcpt"]] += r["type"]
		if r["type"] == "b" && r["dsnDiag"] != "deleted by administrator" {
			t.Errorf("b record for %s says %q, want deleted by administrator", r["rcpt"], r["dsnDiag"])
		}
	}
	for rcpt, want := range map[string]string{
		"keep0@keep.test": "d", "keep1@keep.test": "d", "drop0@drop.test": "b", "drop1@drop.test": "b", "ctl@ctl.test": "d",
	} {
		if kinds[rcpt] != want {
			t.Errorf("accounting records of %s: %q, want %q", rcpt, kinds[rcpt], want)
		}
	}
}

// TestReloadRefusesBrokenFile plants an error at a known line in a file
// that also adds a listener and a VMTA. SIGHUP logs "reload refused" with
// that file:line and changes nothing: the old listener and VMTAs serve,
// the new ones do not exist. POST /api/reload refuses a broken file with
// 422 naming the line, needs admin access, and applies a valid one.
func TestReloadRefusesBrokenFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort, newPort, adminPort := freePort(t), freePort(t), freePort(t)
	good := baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "") + fmt.Sprintf(`
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 admin
http-access 127.0.0.9 operator
`, adminPort)
	conf := writeConf(t, dir, good)
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	newAddr := fmt.Sprintf("127.0.0.1:%d", newPort)
	additions := fmt.Sprintf(`
smtp-listener 127.0.0.1:%d
<virtual-mta mta3>
    smtp-source-host 127.0.0.4 mta3.tern.test
</virtual-mta>
`, newPort)

	// notApplied checks that the running configuration is still good's.
	notApplied := func(when string) {
		t.Helper()
		if c, err := net.Dial("tcp", newAddr); err == nil {
			c.Close()
			t.Errorf("%s: the listener of the refused file accepts connections", when)
		}
		_, err := inject(addr, "x@dest.test", "refused-vmta", "X-Virtual-MTA: mta3")
		refusedWith(t, when+": X-Virtual-MTA naming the refused file's VMTA", err, 550)
	}

	// A value out of range (a semantic error) at a known line.
	broken := good + additions + "<domain dest.test>\n    max-smtp-out 0\n</domain>\n"
	writeConf(t, dir, broken)
	l := hup(t, p)
	at := fmt.Sprintf("%s:%d:", conf, lineOf(t, broken, "max-smtp-out 0"))
	if !strings.Contains(l, `msg="reload refused"`) || !strings.HasPrefix(logField(l, "at"), at) || !strings.Contains(l, "out of range") {
		t.Fatalf("SIGHUP with max-smtp-out 0 logged %q, want reload refused at=%s… naming the range", l, at)
	}
	notApplied("after SIGHUP")
	mustInject(t, addr, "a@dest.test", "after-refusal-mta1", "X-Virtual-MTA: mta1")
	mustInject(t, addr, "b@dest.test", "after-refusal-default")
	got := byMarker(t, sink.WaitMessages(t, 2, deliverTimeout))
	checkFrom(t, "after-refusal-mta1", got["after-refusal-mta1"], mta1)
	checkFrom(t, "after-refusal-default", got["after-refusal-default"], mta2)

	// The same through the admin API, with an unknown directive (a
	// syntax error) this time.
	api := fmt.Sprintf("http://127.0.0.1:%d/api/reload", adminPort)
	broken = good + additions + "max-smpt-out 3\n"
	writeConf(t, dir, broken)
	var refusal struct {
		Error  string   `json:"error"`
		Errors []string `json:"errors"`
	}
	code := adminCall(t, "POST", api, "", &refusal)
	if code == http.StatusNotFound {
		t.Fatalf("POST /api/reload: 404, the endpoint does not exist")
	}
	at = fmt.Sprintf("%s:%d:", conf, lineOf(t, broken, "max-smpt-out"))
	if code != http.StatusUnprocessableEntity || len(refusal.Errors) == 0 || !strings.HasPrefix(refusal.Errors[0], at) {
		t.Fatalf("POST /api/reload of a broken file: %d %+v, want 422 with an error at %s…", code, refusal, at)
	}
	notApplied("after POST /api/reload")

	// Reloading is for admins: an operator is refused, and nothing changes.
	writeConf(t, dir, good+additions)
	operator := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}, Timeout: 5 * time.Second}).DialContext}}
	resp, err := operator.Post(api, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST /api/reload from an operator: %s, want 403", resp.Status)
	}
	notApplied("after an operator's POST /api/reload")

	var ok struct {
		Reloaded bool   `json:"reloaded"`
		File     string `json:"file"`
	}
	if code := adminCall(t, "POST", api, "", &ok); code != http.StatusOK || !ok.Reloaded {
		t.Fatalf("POST /api/reload of a valid file: %d %+v, want 200 reloaded", code, ok)
	}
	mustInject(t, newAddr, "c@dest.test", "api-reloaded", "X-Virtual-MTA: mta3")
	got = byMarker(t, sink.WaitMessages(t, 3, deliverTimeout))
	checkFrom(t, "api-reloaded", got["api-reloaded"], mta3)
	p.stop(t)
}

// sendOn sends one message with marker over an open session c; nil means
// the message got 250.
func sendOn(c *smtp.Client, rcpt, marker string, headers ...string) error {
	msg := "Subject: " + marker + "\r\nX-Test-Marker: " + marker + "\r\n"
	for _, h := range headers {
		msg += h + "\r\n"
	}
	return c.SendMail("app@example.org", []string{rcpt}, strings.NewReader(msg+"\r\nbody\r\n"))
}

// loadResult is what a run of injectSessions got.
type loadResult struct {
	mu    sync.Mutex
	acked map[string]bool // markers answered 250
	err   error           // the first failure, if any
	done  chan struct{}   // closed when every session has ended
	n     atomic.Int64    // len(acked), readable without mu
}

// injectSessions sends total messages over sessions concurrent persistent
// SMTP sessions to addr, in the background. Message i of session g has
// the marker and recipient local part prefix-g-i, for domains[i%len]. A
// session stops at its first failure.
func injectSessions(addr, prefix string, total, sessions int, domains []string, headers ...string) *loadResult {
	res := &loadResult{acked: map[string]bool{}, done: make(chan struct{})}
	var wg sync.WaitGroup
	for g := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(err error) {
				res.mu.Lock()
				if res.err == nil {
					res.err = err
				}
				res.mu.Unlock()
			}
			c, err := smtp.Dial(addr)
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			for i := g; i < total; i += sessions {
				m := fmt.Sprintf("%s-%d-%d", prefix, g, i)
				if err := sendOn(c, m+"@"+domains[i%len(domains)], m, headers...); err != nil {
					fail(fmt.Errorf("message %s: %w", m, err))
					return
				}
				res.mu.Lock()
				res.acked[m] = true
				res.mu.Unlock()
				res.n.Add(1)
			}
			c.Quit()
		}()
	}
	go func() { wg.Wait(); close(res.done) }()
	return res
}

// wait waits until every session has ended and fails the test unless every
// message got 250.
func (r *loadResult) wait(t *testing.T, total int, timeout time.Duration) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(timeout):
		t.Fatalf("injection not done within %v: %d of %d messages accepted", timeout, r.n.Load(), total)
	}
	if r.err != nil || len(r.acked) != total {
		t.Fatalf("%d of %d messages got 250; first failure: %v", len(r.acked), total, r.err)
	}
}

// countingSink is a sink that counts messages as they arrive, so that
// waiting for thousands of them does not copy its records at every
// message as WaitMessages does.
type countingSink struct {
	*smtptest.Sink
	arrived atomic.Int64
}

func startCountingSink(t *testing.T, addr string) *countingSink {
	s := &countingSink{}
	s.Sink = smtptest.Start(t, smtptest.Options{Addr: addr, Reply: func(ev smtptest.Event) *smtptest.Reply {
		if ev.Stage == smtptest.StageData {
			s.arrived.Add(1)
		}
		return nil // the usual reply
	}})
	return s
}

// waitArrived waits until the sink has accepted at least n messages.
func (s *countingSink) waitArrived(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	s.WaitFor(t, timeout, fmt.Sprintf("%d messages", n), func() bool {
		// The count runs just ahead of the records: a message is
		// recorded after the hook has seen it.
		return s.arrived.Load() >= int64(n) && len(s.Messages()) >= n
	})
}

// TestReloadUnderLoad injects 5,000 messages over 8 sessions while tern is
// reloaded ten times, alternating a change of max-smtp-out with a change of
// a comment. Every message gets 250, arrives at the sink exactly once, and
// has exactly one r and one d accounting record.
func TestReloadUnderLoad(t *testing.T) {
	const total, sessions, reloads = 5000, 8, 10
	const loadTimeout = 120 * time.Second // the whole run; it takes a fraction
	dir := t.TempDir()
	domains := []string{"load1.test", "load2.test", "load3.test"}
	dns := dnstest.Start(t, zones(domains...))
	sink := startCountingSink(t, sinkIP+":0")
	smtpPort := freePort(t)
	acctDir := filepath.Join(dir, "acct")
	conf := func(i int) string {
		// Even reloads change max-smtp-out, odd ones only the comment.
		extra := fmt.Sprintf("    # reload %d\n    max-smtp-out %d\n", i, 4+i-i%2)
		return baseConf(dir, smtpPort, dns.Addr(), sink.Port(), extra) + fmt.Sprintf(`
<acct-file %s>
    records d,r
</acct-file>
`, filepath.Join(acctDir, "acct.csv"))
	}
	p := startTern(t, writeConf(t, dir, conf(0)))
	start := time.Now()

	res := injectSessions(fmt.Sprintf("127.0.0.1:%d", smtpPort), "L", total, sessions, domains, "X-Virtual-MTA: both")
	// Reload i comes once i/(reloads+1) of the load is accepted, so every
	// reload lands in the middle of the injection.
	for i := 1; i <= reloads; i++ {
		waitUntil(t, loadTimeout, fmt.Sprintf("%d messages accepted before reload %d", i*total/(reloads+1), i), func() bool {
			select {
			case <-res.done:
				return true // finished or failed: res.wait says which
			default:
				return res.n.Load() >= int64(i*total/(reloads+1))
			}
		})
		reloadConf(t, p, conf(i))
	}
	res.wait(t, total, loadTimeout)
	injected := time.Since(start)

	sink.waitArrived(t, total, loadTimeout)
	delivered := time.Since(start)
	p.stop(t) // no more deliveries; flushes the accounting file
	t.Logf("%d messages injected in %v, delivered in %v, %d reloads", total, injected.Round(time.Millisecond), delivered.Round(time.Millisecond), reloads)

	got := byMarker(t, sink.Messages()) // fails on a duplicate
	for m := range res.acked {
		if _, ok := got[m]; !ok {
			t.Errorf("message %s got 250 but did not arrive", m)
		}
	}
	if all := sink.Attempts(); len(all) != total {
		t.Errorf("the sink received %d messages, want %d", len(all), total)
	}
	if tot := spoolTotals(t, dir); tot.Messages != 0 {
		t.Errorf("spool after delivery holds %+v, want nothing", tot)
	}

	// One r and one d record per message (each has its own recipient).
	kinds := map[string]string{}
	for _, r := range acctRecords(t, acctDir) {
		kinds[strings.Split(r["rcpt"], "@")[0]] += r["type"]
	}
	bad := 0
	for m := range res.acked {
		if k := kinds[m]; k != "rd" && k != "dr" {
			if bad++; bad <= 10 {
				t.Errorf("accounting records of %s: %q, want one r and one d", m, k)
			}
		}
		delete(kinds, m)
	}
	if bad > 10 {
		t.Errorf("… and %d more messages with wrong accounting records", bad-10)
	}
	if len(kinds) != 0 {
		t.Errorf("accounting records for recipients never sent: %v", kinds)
	}
}

// TestReloadReopensLogFile rotates the log file the way logrotate does
// (move it aside, then reload): the old lines stay in the moved file and
// the reload's lines go to a new file at the configured path. A reload to
// another path says so at the end of the old file and the start of the new
// one, and a changed spool directory, which only a restart applies, is a
// warning.
func TestReloadReopensLogFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logA, logB := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	port := freePort(t)
	conf := func(logFile, spool string) string {
		return fmt.Sprintf(`
host-name tern.test
log-file %s
spool %s
smtp-listener 127.0.0.1:%d
http-mgmt-port 127.0.0.1:%d
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.tern.test
</virtual-mta>
`, logFile, filepath.Join(dir, spool), port, freePort(t))
	}
	first := conf(logA, "spool")
	path := writeConf(t, dir, first)
	p := startTern(t, path)
	has := func(file, s string) func() bool {
		return func() bool { return strings.Contains(readOr(t, file), s) }
	}
	waitUntil(t, reloadTimeout, "the start logged in a.log", has(logA, `msg="smtp listener open"`))

	rotated := logA + ".1"
	if err := os.Rename(logA, rotated); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	waitUntil(t, reloadTimeout, "the reload logged in a new a.log", has(logA, `msg="configuration reloaded"`))
	if old := readOr(t, rotated); !strings.Contains(old, `msg="smtp listener open"`) || strings.Contains(old, "configuration reloaded") {
		t.Fatalf("the moved log should hold the lines from before the reload and none after:\n%s", old)
	}

	// Another path, and another spool directory.
	if err := os.WriteFile(path, []byte(conf(logB, "spool2")), 0o644); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	waitUntil(t, reloadTimeout, "the reload logged in b.log", has(logB, `msg="configuration reloaded"`))
	change := fmt.Sprintf(`msg="log file changed" from=%s to=%s`, logA, logB)
	if !strings.Contains(readOr(t, logA), change) || !strings.Contains(readOr(t, logB), change) {
		t.Fatalf("want %q at the end of a.log and in b.log;\na.log:\n%s\nb.log:\n%s", change, readOr(t, logA), readOr(t, logB))
	}
	if b := readOr(t, logB); !strings.Contains(b, `spool changed from`) || !strings.Contains(b, "next restart") {
		t.Fatalf("a changed spool directory should be warned about as restart-only:\n%s", b)
	}

	// A log file that cannot be opened refuses the reload; b.log stays.
	if err := os.WriteFile(path, []byte(conf(filepath.Join(dir, "missing", "c.log"), "spool2")), 0o644); err != nil {
		t.Fatal(err)
	}
	p.signal(t, syscall.SIGHUP)
	waitUntil(t, reloadTimeout, "the refusal logged in b.log", has(logB, `msg="reload refused"`))
	if b := readOr(t, logB); !strings.Contains(b, "log-file") || !strings.Contains(b, "no such file") {
		t.Fatalf("the refusal should name log-file and the reason:\n%s", b)
	}
	p.stop(t)
}

// TestReloadChangesNameServers moves name-server from one DNS server to
// another: after the reload, mail for a domain only the new server knows
// is delivered, found through the new server.
func TestReloadChangesNameServers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns1 := dnstest.Start(t, zones("dest.test"))
	dns2 := dnstest.Start(t, zones("dest.test", "other.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns1.Addr(), sink.Port(), ""))
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	mustInject(t, addr, "a@dest.test", "before", "X-Virtual-MTA: mta1")
	sink.WaitMessages(t, 1, deliverTimeout)
	if n1, n2 := dns1.Queries("dest.test", dns.TypeMX), dns2.Queries("dest.test", dns.TypeMX); n1 == 0 || n2 != 0 {
		t.Fatalf("before the reload: %d MX queries at the first server and %d at the second, want some and none", n1, n2)
	}

	reloadConf(t, p, baseConf(dir, smtpPort, dns2.Addr(), sink.Port(), ""))
	p.waitLog(t, 0, reloadTimeout, "the change of name servers", func(l string) bool {
		return strings.Contains(l, `msg="name servers changed"`) && strings.Contains(l, dns2.Addr())
	})
	mustInject(t, addr, "b@other.test", "after", "X-Virtual-MTA: mta1")
	sink.WaitMessages(t, 2, deliverTimeout)
	if n1, n2 := dns1.Queries("other.test", dns.TypeMX), dns2.Queries("other.test", dns.TypeMX); n1 != 0 || n2 == 0 {
		t.Fatalf("after the reload: %d MX queries for other.test at the first server and %d at the second, want none and some", n1, n2)
	}
	p.stop(t)
}

// TestReloadAppliesAcctFiles adds an accounting file by reload, changes
// its record types, then replaces it with another: each delivery is
// recorded in the file configured when it happened.
func TestReloadAppliesAcctFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	base := baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "")
	acctA, acctB := filepath.Join(dir, "a.csv"), filepath.Join(dir, "b.csv")
	withAcct := func(path, records string) string {
		return base + fmt.Sprintf("<acct-file %s>\n    records %s\n</acct-file>\n", path, records)
	}
	conf := writeConf(t, dir, base)
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	// rcptIn reports whether the file has a record of type typ for rcpt.
	rcptIn := func(path, typ, rcpt string) bool {
		for _, l := range strings.Split(readOr(t, path), "\n") {
			if strings.HasPrefix(l, typ+",") && strings.Contains(l, ","+rcpt+",") {
				return true
			}
		}
		return false
	}
	deliver := func(rcpt string, n int) {
		t.Helper()
		mustInject(t, addr, rcpt, rcpt, "X-Virtual-MTA: mta1")
		sink.WaitMessages(t, n, deliverTimeout)
	}

	deliver("a@dest.test", 1)
	reloadConf(t, p, withAcct(acctA, "d"))
	p.waitLog(t, 0, reloadTimeout, "the new accounting file", func(l string) bool {
		return strings.Contains(l, `msg="accounting files changed"`) && strings.Contains(l, "opened="+acctA)
	})
	deliver("b@dest.test", 2)
	waitUntil(t, deliverTimeout, "b's d record in a.csv", func() bool { return rcptIn(acctA, "d", "b@dest.test") })

	// Receptions too: the next message has an r record as well.
	reloadConf(t, p, withAcct(acctA, "d,r"))
	deliver("c@dest.test", 3)
	waitUntil(t, deliverTimeout, "c's r and d records in a.csv", func() bool {
		return rcptIn(acctA, "r", "c@dest.test") && rcptIn(acctA, "d", "c@dest.test")
	})

	// Replaced: a.csv is closed with what it had, b.csv takes the next one.
	reloadConf(t, p, withAcct(acctB, "d"))
	deliver("d@dest.test", 4)
	waitUntil(t, deliverTimeout, "d's record in b.csv", func() bool { return rcptIn(acctB, "d", "d@dest.test") })
	if rcptIn(acctA, "d", "d@dest.test") || rcptIn(acctA, "d", "a@dest.test") || rcptIn(acctA, "r", "b@dest.test") {
		t.Fatalf("a.csv has records from when it was not configured (or of a type it did not record):\n%s", readOr(t, acctA))
	}
	p.stop(t)
}
