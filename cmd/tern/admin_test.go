package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// TestPipelineBackoffInQueueView: a 421 [TS01] reply matched by a
// mode=backoff rule puts the queue in backoff, and the admin API's queue
// view shows it, to a client that http-access admits and that sends the
// key; others get 403.
func TestPipelineBackoffInQueueView(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("tsq.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	sink.ScriptRcpt("r@tsq.test", smtptest.R(421, "4.7.0 [TS01] Messages from 127.0.0.2 temporarily deferred"))
	smtpPort, adminPort := freePort(t), freePort(t)
	conf := baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "") + fmt.Sprintf(`
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 monitor
http-api-key s3cret
<smtp-pattern-list yahoo>
    reply /\[TS01\]/ mode=backoff
</smtp-pattern-list>
<domain tsq.test>
    smtp-pattern-list yahoo
    backoff-retry-after 1h
</domain>
`, adminPort)
	p := startTern(t, writeConf(t, dir, conf))
	mustInject(t, fmt.Sprintf("127.0.0.1:%d", smtpPort), "r@tsq.test", "ts01", "X-Virtual-MTA: mta1")
	p.waitLog(t, 0, deliverTimeout, "the backoff", func(l string) bool {
		return strings.Contains(l, "queue mode changed") && strings.Contains(l, "mode=backoff")
	})

	url := fmt.Sprintf("http://127.0.0.1:%d/api/queues", adminPort)
	get := func(client *http.Client, token string) (*http.Response, []map[string]any) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rows []map[string]any
		if resp.StatusCode == 200 {
			if err := json.NewDecoder(resp.Body).Decode(&rows); err != nil {
				t.Fatal(err)
			}
		}
		return resp, rows
	}
	// The mode changes as the reply is matched, a moment before the
	// recipient's deferral is recorded: wait for both.
	var row map[string]any
	waitUntil(t, deliverTimeout, "tsq.test/mta1 in backoff with 1 deferred", func() bool {
		resp, rows := get(http.DefaultClient, "s3cret")
		if resp.StatusCode != 200 {
			t.Fatalf("GET /api/queues: %s", resp.Status)
		}
		for _, r := range rows {
			if r["queue"] == "tsq.test/mta1" {
				row = r
			}
		}
		return row != nil && row["mode"] == "backoff" && row["deferred"] == float64(1)
	})
	if resp, _ := get(http.DefaultClient, "wrong"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("wrong key: %s, want 403", resp.Status)
	}

	// The same outcome shows in /metrics.
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/metrics", adminPort), nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	mresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`tern_recipients_received_total{vmta="mta1"} 1`,
		`outcome="deferred",vmta="mta1"} 1`,
		"tern_queue_recipients 1",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	stranger := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}, Timeout: 5 * time.Second}).DialContext}}
	if resp, _ := get(stranger, "s3cret"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("client outside http-access: %s, want 403", resp.Status)
	}
	p.stop(t)
}

// adminCall sends an admin API request with token and decodes the JSON
// answer into out (when not nil); it returns the status code.
func adminCall(t *testing.T, method, url, token string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: %s, answer does not decode: %v", method, url, resp.Status, err)
		}
	}
	return resp.StatusCode
}

// TestPipelineAdminOperations drives a running tern serve whose sink is
// down, so mail stays queued: pausing a queue shows paused: true in
// /api/queues, resuming clears it, and deleting a job removes its
// recipient with a b record "deleted by administrator" in the accounting
// file.
func TestPipelineAdminOperations(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("adm.test", "del.test"))
	sinkPort := freePortOn(t, sinkIP) // nothing listens: mail stays deferred
	smtpPort, adminPort := freePort(t), freePort(t)
	acctPath := filepath.Join(dir, "acct.csv")
	conf := baseConf(dir, smtpPort, dns.Addr(), sinkPort, "") + fmt.Sprintf(`
<source 127.0.0.1>
    process-x-job yes
</source>
<acct-file %s>
    records b
</acct-file>
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 operator
http-api-key k3y
http-api-key second-k3y
`, acctPath, adminPort)
	p := startTern(t, writeConf(t, dir, conf))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	mustInject(t, addr, "p@adm.test", "adm-pause", "X-Virtual-MTA: mta1", "X-Job: keep")
	mustInject(t, addr, "d@del.test", "adm-delete", "X-Virtual-MTA: mta1", "X-Job: doomed")

	base := fmt.Sprintf("http://127.0.0.1:%d/api/", adminPort)
	// row returns the /api/queues row of name, nil when absent.
	row := func(name string) map[string]any {
		var rows []map[string]any
		if code := adminCall(t, "GET", base+"queues", "k3y", &rows); code != 200 {
			t.Fatalf("GET /api/queues: %d", code)
		}
		for _, r := range rows {
			if r["queue"] == name {
				return r
			}
		}
		return nil
	}
	waitUntil(t, deliverTimeout, "adm.test/mta1 deferred", func() bool {
		r := row("adm.test/mta1")
		return r != nil && r["deferred"] == float64(1)
	})
	checkViews(t, base)
	// PowerMTA's header, with the second key; and a key that is neither.
	for key, want := range map[string]int{"second-k3y": 200, "k3y": 200, "k3": http.StatusForbidden} {
		req, _ := http.NewRequest("GET", base+"queues", nil)
		req.Header.Set("X-API-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("X-API-Key %s: %d, want %d", key, resp.StatusCode, want)
		}
	}

	var op struct {
		Count   int      `json:"count"`
		Matched []string `json:"matched"`
	}
	if code := adminCall(t, "POST", base+"pause?queue=adm.test/mta1", "k3y", &op); code != 200 ||
		op.Count != 1 || strings.Join(op.Matched, ",") != "adm.test/mta1" {
		t.Fatalf("pause: %d %+v", code, op)
	}
	if r := row("adm.test/mta1"); r == nil || r["paused"] != true {
		t.Errorf("after pause: %v, want paused: true", r)
	}
	if r := row("del.test/mta1"); r == nil || r["paused"] != false {
		t.Errorf("a queue not paused: %v, want paused: false", r)
	}
	if code := adminCall(t, "POST", base+"pause?queue=adm.test/mta1", "wrong", nil); code != http.StatusForbidden {
		t.Errorf("pause with a wrong key: %d, want 403", code)
	}
	if code := adminCall(t, "POST", base+"resume?queue=adm.test/mta1", "k3y", &op); code != 200 || op.Count != 1 {
		t.Fatalf("resume: %d %+v", code, op)
	}
	if r := row("adm.test/mta1"); r == nil || r["paused"] != false {
		t.Errorf("after resume: %v, want paused: false", r)
	}

	if code := adminCall(t, "POST", base+"delete?job=doomed", "k3y", &op); code != 200 || op.Count != 1 {
		t.Fatalf("delete job doomed: %d %+v, want 1 deleted", code, op)
	}
	// Prometheus counts the deletion.
	req, _ := http.NewRequest("GET", strings.TrimSuffix(base, "api/")+"metrics", nil)
	req.Header.Set("Authorization", "Bearer k3y")
	mresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	metricsText, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if want := `tern_recipients_removed_total{vmta="mta1"} 1`; !strings.Contains(string(metricsText), want) {
		t.Errorf("/metrics lacks %q:\n%s", want, metricsText)
	}
	if r := row("del.test/mta1"); r != nil {
		t.Errorf("del.test/mta1 still queued after the delete: %v", r)
	}
	if r := row("adm.test/mta1"); r == nil {
		t.Error("adm.test/mta1 (another job) went away with the delete")
	}
	var st struct {
		Totals struct {
			Recipients int `json:"recipients"`
		} `json:"totals"`
	}
	if code := adminCall(t, "GET", base+"status", "k3y", &st); code != 200 || st.Totals.Recipients != 1 {
		t.Errorf("status: %d %+v, want 1 recipient queued", code, st)
	}
	p.stop(t) // flushes the accounting file

	f, err := os.Open(acctPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil || len(rows) == 0 {
		t.Fatalf("the accounting file does not parse: %v", err)
	}
	col := map[string]int{}
	for i, c := range rows[0] {
		col[c] = i
	}
	var found []string
	for _, r := range rows[1:] {
		if r[col["type"]] == "b" && r[col["rcpt"]] == "d@del.test" {
			found = r
		}
	}
	if found == nil {
		t.Fatalf("no b record for d@del.test: %v", rows)
	}
	if found[col["dsnDiag"]] != "deleted by administrator" || found[col["jobId"]] != "doomed" {
		t.Errorf("b record dsnDiag %q jobId %q, want deleted by administrator of job doomed",
			found[col["dsnDiag"]], found[col["jobId"]])
	}
}

// checkViews checks the read-only views and set-mode of the running
// daemon of TestPipelineAdminOperations, whose adm.test/mta1 queue has one
// recipient deferred because its sink is down: the scheduler's activity
// reaches the API through tern serve's wiring.
func checkViews(t *testing.T, base string) {
	t.Helper()
	var q struct {
		Queue     string `json:"queue"`
		LastError string `json:"last_error"`
		Orphaned  bool   `json:"orphaned"`
		Events    []struct {
			Kind, Reply, Recipient string
		} `json:"events"`
	}
	if code := adminCall(t, "GET", base+"queue?queue=adm.test/mta1", "k3y", &q); code != 200 {
		t.Fatalf("GET /api/queue: %d", code)
	}
	if q.LastError == "" || q.Orphaned || len(q.Events) == 0 || q.Events[0].Kind != "deferred" || q.Events[0].Recipient != "p@adm.test" {
		t.Errorf("queue detail = %+v, want a deferral of p@adm.test and its error", q)
	}

	var s struct {
		Settings []struct {
			Directive, Value string
			Default          bool
		} `json:"settings"`
	}
	if code := adminCall(t, "GET", base+"settings?queue=adm.test/mta1", "k3y", &s); code != 200 || len(s.Settings) == 0 {
		t.Fatalf("GET /api/settings: %d %+v", code, s)
	}
	for _, d := range s.Settings {
		if d.Directive == "default-smtp-port" && (d.Default || d.Value == "25") {
			t.Errorf("default-smtp-port = %+v, want the sink's port set by the file", d)
		}
	}

	var vs []struct {
		Name       string `json:"name"`
		Configured bool   `json:"configured"`
		Recipients int    `json:"recipients"`
	}
	if code := adminCall(t, "GET", base+"vmtas", "k3y", &vs); code != 200 {
		t.Fatalf("GET /api/vmtas: %d", code)
	}
	found := false
	for _, v := range vs {
		if v.Name == "mta1" {
			found = v.Configured && v.Recipients == 2
		}
	}
	if !found {
		t.Errorf("vmtas = %+v, want mta1 configured with 2 recipients", vs)
	}

	var op struct {
		Count int    `json:"count"`
		Mode  string `json:"mode"`
	}
	if code := adminCall(t, "POST", base+"set-mode?queue=adm.test/mta1&mode=backoff", "k3y", &op); code != 200 || op.Count != 1 {
		t.Fatalf("set-mode backoff: %d %+v", code, op)
	}
	// The mode belongs to the provider: del.test shares adm.test's MX
	// host, so its queue is in backoff too.
	var rows []map[string]any
	adminCall(t, "GET", base+"queues?mode=backoff", "k3y", &rows)
	inBackoff := map[any]bool{}
	for _, r := range rows {
		inBackoff[r["queue"]] = true
	}
	if len(rows) != 2 || !inBackoff["adm.test/mta1"] || !inBackoff["del.test/mta1"] {
		t.Errorf("queues in backoff = %v, want adm.test/mta1 and del.test/mta1 (one provider)", rows)
	}
	if code := adminCall(t, "POST", base+"set-mode?queue=adm.test/mta1&mode=normal", "k3y", &op); code != 200 || op.Count != 1 {
		t.Fatalf("set-mode normal: %d %+v", code, op)
	}

	var st struct {
		Traffic struct {
			LastHour struct {
				MessagesIn int `json:"messages_in"`
				Deferred   int `json:"deferred"`
			} `json:"last_hour"`
		} `json:"traffic"`
		SpoolFree *uint64 `json:"spool_free_bytes"`
		Config    string  `json:"config"`
	}
	if code := adminCall(t, "GET", base+"status", "k3y", &st); code != 200 || st.Traffic.LastHour.MessagesIn != 2 ||
		st.Traffic.LastHour.Deferred < 1 || st.SpoolFree == nil || !filepath.IsAbs(st.Config) {
		t.Errorf("status: %d %+v", code, st)
	}
}
