package main

import (
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
	"github.com/ternmta/tern/queue"
)

// TestPipelineTypeDiscard runs tern serve with a <domain> of type discard
// beside a normal one, both with MX hosts at the sink: the normal domain's
// mail reaches the sink; the discarded domain's is never looked up in DNS
// nor given to the sink (not even a RCPT), even in a message shared with
// the normal domain, and gets d records that say it was discarded. A
// reload back to type smtp delivers the domain's mail again. The spool is
// empty afterwards.
func TestPipelineTypeDiscard(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dnsSrv := dnstest.Start(t, zones("kept.test", "discard.example"))
	var mu sync.Mutex
	var rcpts []string // every RCPT the sink was given
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0", Reply: func(ev smtptest.Event) *smtptest.Reply {
		if ev.Stage == smtptest.StageRcpt {
			mu.Lock()
			rcpts = append(rcpts, ev.Rcpt)
			mu.Unlock()
		}
		return nil
	}})
	smtpPort := freePort(t)
	acctPath := filepath.Join(dir, "acct.csv")
	acctConf := fmt.Sprintf(`
<acct-file %s>
    records d,b
</acct-file>
`, acctPath)
	smtpConf := baseConf(dir, smtpPort, dnsSrv.Addr(), sink.Port(), "") + acctConf
	conf := smtpConf + `
<domain discard.example>
    type discard
</domain>
`
	p := startTern(t, writeConf(t, dir, conf))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	mustInject(t, addr, "ok@kept.test", "kept")
	mustInject(t, addr, "gone@discard.example", "gone")
	// One message for both domains: its two queues go their own ways.
	injectBoth(t, addr, "both@kept.test", "both@discard.example")

	discarded := map[string]bool{}
	p.waitLog(t, 0, deliverTimeout, "the two discards", func(l string) bool {
		if strings.Contains(l, `msg="delivery attempt"`) && logField(l, "outcome") == "delivered" &&
			strings.HasSuffix(logField(l, "rcpt"), "@discard.example") && strings.Contains(l, `reply="discarded (type discard)"`) {
			discarded[logField(l, "rcpt")] = true
		}
		return len(discarded) == 2
	})
	got := byMarker(t, sink.WaitMessages(t, 2, deliverTimeout))
	if _, ok := got["kept"]; !ok {
		t.Errorf("the kept.test message did not reach the sink: %v", got)
	}
	if m, ok := got["both"]; !ok || strings.Join(m.Rcpts, ",") != "both@kept.test" {
		t.Errorf("the message for both domains reached the sink for %v, want both@kept.test alone", m.Rcpts)
	}
	for _, m := range sink.Attempts() {
		for _, r := range m.Rcpts {
			if strings.HasSuffix(r, "@discard.example") {
				t.Errorf("the sink got a transaction for %s", r)
			}
		}
	}
	mu.Lock()
	for _, r := range rcpts {
		if strings.HasSuffix(r, "@discard.example") {
			t.Errorf("the sink was given RCPT TO:<%s>", r)
		}
	}
	mu.Unlock()
	for _, qt := range []uint16{dns.TypeMX, dns.TypeA, dns.TypeAAAA} {
		if n := dnsSrv.Queries("discard.example", qt); n != 0 {
			t.Errorf("%d %s queries for discard.example, want none", n, dns.TypeToString[qt])
		}
	}
	if dnsSrv.Queries("kept.test", dns.TypeMX) == 0 {
		t.Errorf("kept.test was never looked up: the DNS server is not the one tern asks")
	}

	// Back to smtp: the domain's mail is delivered again.
	reloadConf(t, p, smtpConf)
	mustInject(t, addr, "back@discard.example", "back")
	if got := byMarker(t, sink.WaitMessages(t, 3, deliverTimeout)); got["back"].Rcpts == nil {
		t.Errorf("back@discard.example did not reach the sink after the reload to smtp")
	}
	p.stop(t) // flushes the accounting file and the spool

	f, err := os.Open(acctPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("the accounting file does not parse: %v", err)
	}
	col := map[string]int{}
	for i, c := range rows[0] {
		col[c] = i
	}
	byRcpt := map[string][][]string{}
	for _, r := range rows[1:] {
		byRcpt[r[col["rcpt"]]] = append(byRcpt[r[col["rcpt"]]], r)
	}
	for _, rcpt := range []string{"gone@discard.example", "both@discard.example"} {
		recs := byRcpt[rcpt]
		if len(recs) != 1 {
			t.Errorf("%s has %d accounting records, want 1: %v", rcpt, len(recs), recs)
			continue
		}
		for field, want := range map[string]string{
			"type": "d", "dsnAction": "delivered", "dsnStatus": "2.0.0", "dsnDiag": "discarded (type discard)",
			"dsnMta": "", "dlvType": "discard", "dlvDestinationIp": "", "dlvSourceIp": "", "queue": "discard.example/mta2",
		} {
			if got := recs[0][col[field]]; got != want {
				t.Errorf("%s: %s = %q, want %q", rcpt, field, got, want)
			}
		}
	}
	for _, rcpt := range []string{"ok@kept.test", "both@kept.test", "back@discard.example"} {
		if recs := byRcpt[rcpt]; len(recs) != 1 || recs[0][col["type"]] != "d" || recs[0][col["dlvType"]] != "smtp" ||
			recs[0][col["dlvDestinationIp"]] != sinkIP {
			t.Errorf("%s: accounting records %v, want one d record of a delivery to %s", rcpt, recs, sinkIP)
		}
	}

	q, err := queue.Open(queue.Options{Dir: filepath.Join(dir, "spool")})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if tot := q.Totals(); tot.Recipients != 0 {
		t.Errorf("the spool holds %+v after the deliveries and discards, want nothing", tot)
	}
}

// injectBoth sends one message, marked "both", to rcpts.
func injectBoth(t *testing.T, addr string, rcpts ...string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("app@example.org", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("From: app@example.org\r\nSubject: both\r\nX-Test-Marker: both\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	c.Quit()
}
