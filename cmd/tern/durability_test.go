package main

// Durability acceptance test of issue #7 through the real tern serve: what
// got 250 survives SIGKILL and is delivered after a restart, exactly once.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
)

// TestDurabilityKillWhileSinkDown injects 2,000 messages over 8 sessions
// while the MX is down, so each is deferred and none is in flight, then
// kills tern with SIGKILL right after the last 250: no clean close of the
// spool. The spool opened afterwards holds all 2,000. Tern starts again,
// the MX comes up, and every acknowledged message arrives exactly once.
func TestDurabilityKillWhileSinkDown(t *testing.T) {
	const total, sessions = 2000, 8
	const loadTimeout = 120 * time.Second // the whole run; it takes a fraction
	dir := t.TempDir()
	domains := []string{"dur1.test", "dur2.test"}
	dns := dnstest.Start(t, zones(domains...))
	sinkPort := freePortOn(t, sinkIP) // nothing listens there yet: the MX is down
	smtpPort := freePort(t)
	// retry-after 1s: mail deferred before the kill is due again soon
	// after the MX comes up.
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sinkPort, "    retry-after 1s\n"))
	p := startTern(t, conf)
	start := time.Now()

	res := injectSessions(fmt.Sprintf("127.0.0.1:%d", smtpPort), "D", total, sessions, domains, "X-Virtual-MTA: both")
	res.wait(t, total, loadTimeout)
	injected := time.Since(start)
	p.kill(t)

	if tot := spoolTotals(t, dir); tot.Messages != total || tot.Recipients != total {
		t.Fatalf("spool after SIGKILL holds %+v, want the %d acknowledged messages", tot, total)
	}

	p = startTern(t, conf)
	sink := startCountingSink(t, fmt.Sprintf("%s:%d", sinkIP, sinkPort))
	sink.waitArrived(t, total, loadTimeout)
	delivered := time.Since(start)
	p.stop(t) // no more deliveries after this
	t.Logf("%d messages injected in %v, delivered after the restart in %v in all", total,
		injected.Round(time.Millisecond), delivered.Round(time.Millisecond))

	got := byMarker(t, sink.Messages()) // fails on a duplicate
	missing := 0
	for m := range res.acked {
		if _, ok := got[m]; !ok {
			if missing++; missing <= 10 {
				t.Errorf("message %s got 250 but did not arrive", m)
			}
		}
	}
	if missing > 10 {
		t.Errorf("… and %d more acknowledged messages missing", missing-10)
	}
	for m := range got {
		if !res.acked[m] || !strings.HasPrefix(m, "D-") {
			t.Errorf("message %s arrived but was never acknowledged", m)
		}
	}
	if all := sink.Attempts(); len(all) != total {
		t.Errorf("the sink received %d messages, want %d", len(all), total)
	}
	if tot := spoolTotals(t, dir); tot.Messages != 0 {
		t.Errorf("spool after delivery holds %+v, want nothing", tot)
	}
}
