package main

// Tests of the provider views through the real binary: tern serve with a
// sink whose 451 4.7.1 at RCPT triggers a suspension, and a domain whose MX
// host does not listen; the CLI shows both, and lift ends the suspension.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// TestCLIProvidersShapingHosts: a reply matched by a suspend rule shows in
// tern shaping with its end, in tern providers as the provider's state,
// and tern lift --provider ends it (count 1) so that tern shaping is empty
// again; lift without a filter is refused, by the CLI and by the API. A
// domain whose MX host refuses connections shows in tern hosts as down,
// with its next probe. tern queues names each queue's provider.
func TestCLIProvidersShapingHosts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	z := zones("shape.test")
	z["dead.test"] = dnstest.Records{MX: []dnstest.MX{{Pref: 10, Host: "mx.dead.test"}}}
	z["mx.dead.test"] = dnstest.Records{A: []string{sinkIP}}
	dns := dnstest.Start(t, z)
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	sink.ScriptRcpt("r@shape.test", smtptest.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 1}, Message: "Try again later"})
	deadPort := freePortOn(t, sinkIP) // nothing listens: mx.dead.test refuses connections
	smtpPort, adminPort := freePort(t), freePort(t)
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "")+fmt.Sprintf(`
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 admin
http-api-key k3y
<smtp-pattern-list limits>
    reply /^451 4\.7\.1/ suspend for=10m
</smtp-pattern-list>
<domain shape.test>
    smtp-pattern-list limits
</domain>
<domain dead.test>
    default-smtp-port %d
    host-down-after 1
</domain>
`, adminPort, deadPort))
	apiURL := fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	s := &cliServer{proc: startTern(t, conf), conf: conf, smtpAddr: fmt.Sprintf("127.0.0.1:%d", smtpPort),
		api: []string{"--api", apiURL, "--key", "k3y"}, apiURL: apiURL}
	injected := time.Now()
	mustInject(t, s.smtpAddr, "r@shape.test", "shaped", "X-Virtual-MTA: mta1")
	mustInject(t, s.smtpAddr, "d@dead.test", "dead", "X-Virtual-MTA: mta1")
	// Both domains have been routed and tried once these are logged.
	s.proc.waitLog(t, 0, deliverTimeout, "the suspension", func(l string) bool {
		return strings.Contains(l, "traffic shaping in force") && strings.Contains(l, "action=suspend")
	})
	s.proc.waitLog(t, 0, deliverTimeout, "the host going down", func(l string) bool {
		return strings.Contains(l, "host is down")
	})

	// The suspension, as tern shaping --json shows it.
	var states []shapingRow
	waitUntil(t, deliverTimeout, "the suspension in tern shaping --json", func() bool {
		states = nil
		s.run(t, "shaping", "--json").decode(t, "shaping --json", &states)
		return len(states) > 0
	})
	st := states[0]
	if len(states) != 1 || st.Action != "suspend" || st.VMTA != "mta1" || st.Provider != "mx.sink.test" ||
		!strings.Contains(st.Reply, "451 4.7.1 Try again later") || !strings.Contains(st.Rule, `/^451 4\.7\.1/`) ||
		!strings.HasPrefix(st.Rule, conf+":") {
		t.Fatalf("shaping states %+v, want the suspension of mx.sink.test/mta1 by the rule of %s", states, conf)
	}
	if st.Until == nil || !st.Until.Equal(st.Since.Add(10*time.Minute)) || st.Since.Before(injected) ||
		st.ExpiresInSeconds == nil || *st.ExpiresInSeconds <= 0 || *st.ExpiresInSeconds > 600 {
		t.Errorf("suspension %+v, want it to end 10m after it began, in the future", st)
	}
	r := s.run(t, "shaping")
	r.want(t, "shaping", 0, "PROVIDER", "ENDS", "RULE", `/^451 4\.7\.1/`, "451 4.7.1 Try again later")
	if f := tableRow(r.stdout, "mx.sink.test"); len(f) < 5 || f[1] != "mta1" || f[2] != "suspend" || !strings.Contains(r.stdout, "(in ") {
		t.Errorf("shaping: row %q, want the suspension of mx.sink.test/mta1 with its end\n%s", f, r.stdout)
	}
	t.Logf("tern shaping:\n%s", r.stdout)

	// tern providers: the provider with its domain and state.
	r = s.run(t, "providers")
	r.want(t, "providers", 0, "PROVIDER", "VMTA", "DOMAINS", "WINDOW", "MODE", "STATE")
	f := tableRow(r.stdout, "mx.sink.test")
	if len(f) < 8 || f[1] != "mta1" || f[2] != "1" || f[3] != "1" || !strings.Contains(strings.Join(f, " "), "suspend until ") {
		t.Errorf("providers: row %q, want mx.sink.test mta1 with 1 domain, 1 recipient, suspended\n%s", f, r.stdout)
	}
	if f := tableRow(r.stdout, "mx.dead.test"); len(f) < 4 || f[1] != "mta1" || f[2] != "1" {
		t.Errorf("providers: row %q, want mx.dead.test mta1 with 1 domain\n%s", f, r.stdout)
	}
	t.Logf("tern providers:\n%s", r.stdout)
	var provs []providerRow
	s.run(t, "providers", "--provider", "MX.SINK.test", "--json").decode(t, "providers --provider --json", &provs)
	if len(provs) != 1 || provs[0].Provider != "mx.sink.test" || strings.Join(provs[0].Domains, ",") != "shape.test" ||
		provs[0].HeldUntil == nil || len(provs[0].Shaping) != 1 || provs[0].Shaping[0].Action != "suspend" {
		t.Errorf("providers --provider mx.sink.test --json: %+v", provs)
	}

	// tern queues names the provider of each queue.
	r = s.run(t, "queues")
	r.want(t, "queues", 0, "QUEUE", "PROVIDER")
	if f := tableRow(r.stdout, "shape.test/mta1"); len(f) < 3 || f[1] != "mx.sink.test" || f[2] != "1" {
		t.Errorf("queues: row %q, want provider mx.sink.test and 1 recipient\n%s", f, r.stdout)
	}
	var rows []queueRow
	s.run(t, "queues", "--provider", "mx.dead.test", "--json").decode(t, "queues --provider --json", &rows)
	if len(rows) != 1 || rows[0].Queue != "dead.test/mta1" || rows[0].Provider != "mx.dead.test" {
		t.Errorf("queues --provider mx.dead.test --json: %+v", rows)
	}

	// Lifting without a filter is refused before anything is sent, and by
	// the API too; so is an unknown action.
	s.run(t, "lift").want(t, "lift without a filter", exitUsage, "stderr:--all")
	s.run(t, "lift", "--all", "--provider", "mx.sink.test").want(t, "lift --all with a filter", exitUsage, "stderr:not both")
	s.run(t, "lift", "--action", "pause").want(t, "lift of an unknown action", exitUsage, "stderr:suspend")
	var refusal struct {
		Error string `json:"error"`
	}
	if code := adminCall(t, "POST", apiURL+"/api/lift-shaping", "k3y", &refusal); code != 400 || !strings.Contains(refusal.Error, "all=yes") {
		t.Errorf("POST /api/lift-shaping without a filter: %d %q, want 400 asking for all=yes", code, refusal.Error)
	}
	s.run(t, "lift", "--provider", "mx.dead.test").want(t, "lift of a provider without a state", 0,
		"lift: 0 shaping states lifted; none matched")
	r = s.run(t, "lift", "--provider", "mx.sink.test")
	r.want(t, "lift --provider", 0, "lift: 1 shaping state lifted; matched suspend of mx.sink.test/mta1")
	t.Logf("tern lift --provider mx.sink.test:\n%s", r.stdout)
	s.run(t, "shaping").want(t, "shaping after the lift", 0, "no traffic-shaping state in force")
	states = nil
	s.run(t, "shaping", "--json").decode(t, "shaping --json after the lift", &states)
	if len(states) != 0 {
		t.Errorf("shaping --json after the lift: %+v, want none", states)
	}
	s.proc.waitLog(t, 0, deliverTimeout, "the lift", func(l string) bool {
		return strings.Contains(l, "traffic shaping lifted") && strings.Contains(l, "lifted by an operator")
	})

	// The dead host, down with its next probe.
	host := fmt.Sprintf("%s:%d", sinkIP, deadPort)
	type hostRow struct {
		Host           string     `json:"host"`
		Source         string     `json:"source"`
		Failures       int        `json:"failures"`
		Down           bool       `json:"down"`
		DownUntil      *time.Time `json:"down_until"`
		ProbeInSeconds *int64     `json:"probe_in_seconds"`
		LastError      string     `json:"last_error"`
	}
	var h hostRow
	waitUntil(t, deliverTimeout, "the dead host in tern hosts --json", func() bool {
		var hosts []hostRow
		s.run(t, "hosts", "--json").decode(t, "hosts --json", &hosts)
		for _, r := range hosts {
			if r.Host == host {
				h = r
				return true
			}
		}
		return false
	})
	if h.Source != mta1.ip || !h.Down || h.Failures < 1 ||
		h.DownUntil == nil || !h.DownUntil.After(injected) || h.ProbeInSeconds == nil || *h.ProbeInSeconds <= 0 ||
		!strings.Contains(h.LastError, "refused") {
		t.Errorf("hosts --json: %+v, want %s down from %s with a probe to come after a refused connection", h, host, mta1.ip)
	}
	r = s.run(t, "hosts")
	r.want(t, "hosts", 0, "HOST", "NEXT PROBE")
	if f := tableRow(r.stdout, host); len(f) < 6 || f[1] != "mx.dead.test" || f[2] != mta1.ip || f[3] != "down" || !strings.Contains(r.stdout, "(in ") {
		t.Errorf("hosts: row %q, want %s (mx.dead.test) down from %s with its next probe\n%s", f, host, mta1.ip, r.stdout)
	}
	t.Logf("tern hosts:\n%s", r.stdout)
	s.proc.stop(t)
}
