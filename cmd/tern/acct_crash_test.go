package main

// Accounting across kill -9 through the real tern serve (issue #14,
// finding 7): every message that got 250 has exactly one r record, and
// every recipient the sink received exactly one d record, although tern
// was killed while it accepted and delivered.

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
)

// TestAcctKillWhileDelivering injects messages over 8 sessions to a sink
// that is up, and kills tern with SIGKILL once half of them got 250 and a
// quarter arrived: tern is then accepting, delivering and writing
// accounting all at once. The accounting file is small (max-size), so it
// rotates several times on the way. Tern starts again and delivers the
// rest; after a clean stop the accounting files (the current one and the
// rotated ones) hold, per recipient, exactly one r record if the message
// was spooled and exactly one d record if the sink received it (a second
// delivery, of a message whose outcome the kill lost, has one d record:
// the outcome the spool kept).
func TestAcctKillWhileDelivering(t *testing.T) {
	const total, sessions = 3000, 8
	const loadTimeout = 120 * time.Second
	dir := t.TempDir()
	domains := []string{"acrash1.test", "acrash2.test"}
	dns := dnstest.Start(t, zones(domains...))
	sink := startCountingSink(t, sinkIP+":0")
	smtpPort := freePort(t)
	acctDir := filepath.Join(dir, "acct")
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "    retry-after 1s\n")+fmt.Sprintf(`
<acct-file %s>
    records r,d,b,t
    max-size 128K
</acct-file>
`, filepath.Join(acctDir, "acct.csv")))
	p := startTern(t, conf)

	res := injectSessions(fmt.Sprintf("127.0.0.1:%d", smtpPort), "K", total, sessions, domains, "X-Virtual-MTA: both")
	waitUntil(t, loadTimeout, "half the messages accepted and a quarter delivered", func() bool {
		select {
		case <-res.done:
			return true // all accepted before the kill: the test still holds, it proves less
		default:
			return res.n.Load() >= total/2 && sink.arrived.Load() >= total/4
		}
	})
	p.kill(t)
	select {
	case <-res.done: // the sessions end with the process
	case <-time.After(loadTimeout):
		t.Fatal("the injecting sessions did not end after the kill")
	}
	res.mu.Lock()
	acked := maps.Clone(res.acked)
	res.mu.Unlock()
	killedAt := len(acked)

	p = startTern(t, conf)
	// Wait for what was acknowledged and for whatever else has an r record
	// (spooled, but the kill came before its 250 reached the client).
	waitUntil(t, loadTimeout, "every spooled message delivered", func() bool {
		got := markersArrived(sink)
		for m := range acked {
			if !got[m] {
				return false
			}
		}
		for _, r := range acctRecords(t, acctDir) {
			if r["type"] == "r" && !got[localPart(r["rcpt"])] {
				return false
			}
		}
		return true
	})
	replayed := "no records left from before the kill"
	for _, l := range strings.Split(p.log(), "\n") {
		if strings.Contains(l, "accounting records of the last run written out") {
			replayed = "records written out at the restart: " + logField(l, "records")
		}
	}
	p.stop(t)
	t.Logf("killed after %d of %d messages got 250; the sink received %d messages, %d distinct; %s",
		killedAt, total, len(sink.Attempts()), len(markersArrived(sink)), replayed)

	if tot := spoolTotals(t, dir); tot.Messages != 0 {
		t.Errorf("spool after delivery holds %+v, want nothing", tot)
	}
	files, _ := filepath.Glob(filepath.Join(acctDir, "*"))
	if len(files) < 3 {
		t.Errorf("accounting files %v: want the current one and at least two rotated ones", files)
	}
	kinds := map[string]string{} // marker -> record types, in file order
	for _, r := range acctRecords(t, acctDir) {
		kinds[localPart(r["rcpt"])] += r["type"]
	}
	arrived := markersArrived(sink)
	var bad []string
	for m := range acked {
		if strings.Count(kinds[m], "r") != 1 {
			bad = append(bad, fmt.Sprintf("%s got 250; records %q, want one r", m, kinds[m]))
		}
	}
	for m := range arrived {
		if k := kinds[m]; strings.Count(k, "r") != 1 || strings.Count(k, "d") != 1 {
			bad = append(bad, fmt.Sprintf("%s arrived; records %q, want one r and one d", m, k))
		}
	}
	for m, k := range kinds {
		if !arrived[m] {
			bad = append(bad, fmt.Sprintf("%s never arrived; records %q", m, k))
		}
	}
	slices.Sort(bad)
	for i, b := range bad {
		if i == 20 {
			t.Errorf("… and %d more", len(bad)-i)
			break
		}
		t.Error(b)
	}
}

// markersArrived is the set of markers the sink has received.
func markersArrived(s *countingSink) map[string]bool {
	out := map[string]bool{}
	for _, m := range s.Messages() {
		out[marker(m)] = true
	}
	return out
}

// localPart is the part of an address before its @: the marker of the
// load's messages.
func localPart(addr string) string {
	local, _, _ := strings.Cut(addr, "@")
	return local
}
