package main

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-message"
	"github.com/emersion/go-smtp"

	"github.com/ternmta/tern/delivery/acct"
	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// TestPipelineAccounting runs tern serve with an accounting file: a
// delivered recipient gets a d line with both IPs, the VMTA, the job id
// from X-Job and the queue domain/vmta; a refused one a b line with its
// bounce category, and its sender a bounce report (multipart/report).
func TestPipelineAccounting(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("acct.test", "example.org")) // example.org: the sender, for the DSN
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	sink.ScriptRcpt("gone@acct.test", smtptest.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1},
		Message: "The email account that you tried to reach does not exist"})
	smtpPort := freePort(t)
	acctPath := filepath.Join(dir, "acct", "acct.csv")
	conf := baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "") + fmt.Sprintf(`
<source 127.0.0.1>
    process-x-job yes
</source>
<acct-file %s>
    records d,b,r
</acct-file>
`, acctPath)
	// The second <source 127.0.0.1> merges with baseConf's.
	p := startTern(t, writeConf(t, dir, conf))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	mustInject(t, addr, "ok@acct.test", "acct-ok", "X-Virtual-MTA: mta1", "X-Job: spring-sale")
	mustInject(t, addr, "gone@acct.test", "acct-gone", "X-Virtual-MTA: mta1")
	msgs := sink.WaitMessages(t, 2, deliverTimeout) // the delivery and the DSN
	p.stop(t)                                       // flushes the accounting file

	var report *smtptest.Message
	for i, m := range msgs {
		if len(m.Rcpts) == 1 && m.Rcpts[0] == "app@example.org" {
			report = &msgs[i]
		}
	}
	if report == nil {
		t.Fatalf("no bounce report reached the sender; got %d messages", len(msgs))
	}
	if report.From != "" {
		t.Errorf("bounce report sent from %q, want the null sender", report.From)
	}
	ent, err := message.Read(bytes.NewReader(report.Data))
	if err != nil {
		t.Fatalf("bounce report does not parse: %v", err)
	}
	mt, params, _ := ent.Header.ContentType()
	if mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("bounce report is %s %v, want multipart/report; report-type=delivery-status", mt, params)
	}
	var parts []string
	status := ""
	mr := ent.MultipartReader()
	for {
		part, err := mr.NextPart()
		if err != nil {
			break
		}
		pt, _, _ := part.Header.ContentType()
		parts = append(parts, pt)
		if pt == "message/delivery-status" {
			b, _ := io.ReadAll(part.Body)
			status = string(b)
		}
	}
	if len(parts) != 3 || parts[1] != "message/delivery-status" {
		t.Errorf("bounce report parts %v, want text, delivery-status, original", parts)
	}
	for _, want := range []string{"Final-Recipient: rfc822; gone@acct.test", "Action: failed", "Status: 5.1.1"} {
		if !strings.Contains(status, want) {
			t.Errorf("delivery-status lacks %q:\n%s", want, status)
		}
	}

	f, err := os.Open(acctPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("the accounting file does not parse: %v", err)
	}
	// The header, two r lines, the d and b lines, and the d line of the
	// bounce report.
	if len(rows) != 6 || strings.Join(rows[0], ",") != strings.Join(acct.Columns, ",") {
		t.Fatalf("accounting file: %d rows, header %v\n%v", len(rows), rows[0], rows)
	}
	col := map[string]int{}
	for i, c := range rows[0] {
		col[c] = i
	}
	byRcpt := map[string][]string{}
	var received [][]string
	for _, r := range rows[1:] {
		if r[col["type"]] == "r" {
			received = append(received, r)
			continue
		}
		byRcpt[r[col["rcpt"]]] = r
	}
	if len(received) != 2 || received[0][col["rcpt"]] != "ok@acct.test" || received[0][col["vmta"]] != "mta1" ||
		received[0][col["jobId"]] != "spring-sale" || received[0][col["srcMta"]] != "127.0.0.1" || received[0][col["timeQueued"]] == "" {
		t.Errorf("r records: %v", received)
	}
	d, b := byRcpt["ok@acct.test"], byRcpt["gone@acct.test"]
	if d == nil || b == nil {
		t.Fatalf("missing records: %v", rows)
	}
	for field, want := range map[string]string{
		"type": "d", "orig": "app@example.org", "dlvSourceIp": mta1.ip, "dlvDestinationIp": sinkIP,
		"vmta": "mta1", "jobId": "spring-sale", "queue": "acct.test/mta1", "dsnAction": "delivered",
	} {
		if got := d[col[field]]; got != want {
			t.Errorf("d record %s = %q, want %q", field, got, want)
		}
	}
	for field, want := range map[string]string{
		"type": "b", "bounceCat": "bad-mailbox", "dsnStatus": "5.1.1", "dsnAction": "failed", "queue": "acct.test/mta1",
	} {
		if got := b[col[field]]; got != want {
			t.Errorf("b record %s = %q, want %q", field, got, want)
		}
	}
	if !strings.Contains(b[col["dsnDiag"]], "does not exist") {
		t.Errorf("b record dsnDiag = %q, want the remote reply", b[col["dsnDiag"]])
	}
}
