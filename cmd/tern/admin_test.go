package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
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
	resp, rows := get(http.DefaultClient, "s3cret")
	if resp.StatusCode != 200 {
		t.Fatalf("GET /api/queues: %s", resp.Status)
	}
	found := false
	for _, r := range rows {
		if r["queue"] == "tsq.test/mta1" {
			found = true
			if r["mode"] != "backoff" || r["deferred"] != float64(1) {
				t.Errorf("queue view row %v, want mode backoff with 1 deferred", r)
			}
		}
	}
	if !found {
		t.Fatalf("queue tsq.test/mta1 not in the view: %v", rows)
	}
	if resp, _ := get(http.DefaultClient, "wrong"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("wrong key: %s, want 403", resp.Status)
	}
	stranger := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}, Timeout: 5 * time.Second}).DialContext}}
	if resp, _ := get(stranger, "s3cret"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("client outside http-access: %s, want 403", resp.Status)
	}
	p.stop(t)
}
