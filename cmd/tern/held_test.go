package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// TestPipelineZeroRateHoldsUntilReload runs tern serve with max-msg-rate 0
// for one domain: its mail is queued and held (the queue view and tern
// queues say why), its MX sees no connection while another domain's mail
// is delivered, and a reload that gives the domain a rate delivers it.
func TestPipelineZeroRateHoldsUntilReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	z := dnstest.Zones{
		"mx.sink.test":      {A: []string{sinkIP}},
		"mx-held.sink.test": {A: []string{sinkIP}},
		"held.test":         {MX: []dnstest.MX{{Pref: 10, Host: "mx-held.sink.test"}}},
		"free.test":         {MX: []dnstest.MX{{Pref: 10, Host: "mx.sink.test"}}},
	}
	dns := dnstest.Start(t, z)
	heldSink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	freeSink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort, adminPort := freePort(t), freePort(t)
	conf := func(heldRate string) string {
		return fmt.Sprintf(`
host-name tern.test
spool %s
smtp-listener 127.0.0.1:%d
name-server %s
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 monitor
<source 127.0.0.1>
    always-allow-relaying yes
    default-virtual-mta mta1
</source>
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.tern.test
</virtual-mta>
<domain held.test>
    default-smtp-port %d
    %s
</domain>
<domain free.test>
    default-smtp-port %d
</domain>
`, filepath.Join(dir, "spool"), smtpPort, dns.Addr(), adminPort, heldSink.Port(), heldRate, freeSink.Port())
	}
	body := conf("max-msg-rate 0")
	p := startTern(t, writeConf(t, dir, body))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	api := fmt.Sprintf("http://127.0.0.1:%d/api/", adminPort)

	mark := p.mark()
	for i := range 3 {
		mustInject(t, addr, fmt.Sprintf("h%d@held.test", i), fmt.Sprintf("held-%d", i))
	}
	p.waitLog(t, mark, deliverTimeout, "the hold of held.test/mta1", func(l string) bool {
		return strings.Contains(l, `msg="queue held:`) && logField(l, "queue") == "held.test/mta1"
	})
	for i := range 2 {
		mustInject(t, addr, fmt.Sprintf("f%d@free.test", i), fmt.Sprintf("free-%d", i))
	}
	freeSink.WaitMessages(t, 2, deliverTimeout)
	if n := heldSink.Conns(); n != 0 {
		t.Fatalf("the held domain's MX got %d connections, want none", n)
	}

	row := queueRows(t, api, "domain=held.test")["held.test/mta1"]
	want := fmt.Sprintf("max-msg-rate 0 at %s:%d:5", p.conf, lineOf(t, body, "max-msg-rate 0"))
	if row == nil || row["held"] != want || row["ready"] != float64(3) || row["paused"] != false {
		t.Fatalf("queue view of held.test/mta1 = %v, want held %q and 3 ready", row, want)
	}
	if r := queueRows(t, api, "domain=free.test")["free.test/mta1"]; r != nil && r["held"] != nil {
		t.Errorf("free.test/mta1 shows held: %v", r)
	}
	apiFlags := []string{"--api", fmt.Sprintf("http://127.0.0.1:%d", adminPort)}
	res := cliRun(t, nil, append([]string{"queues"}, apiFlags...)...)
	res.want(t, "tern queues", 0, "held.test/mta1")
	if row := tableRow(res.stdout, "held.test/mta1"); !strings.Contains(strings.Join(row, " "), "held: max-msg-rate 0") {
		t.Errorf("tern queues row %q does not say held: max-msg-rate 0\n%s", row, res.stdout)
	}
	res = cliRun(t, nil, append(append([]string{"queues"}, apiFlags...), "held.test/mta1")...)
	res.want(t, "tern queues held.test/mta1", 0, "held: max-msg-rate 0", want)

	// A reload that makes the rate unlimited releases the queue.
	reloadConf(t, p, conf("max-msg-rate unlimited"))
	got := byMarker(t, heldSink.WaitMessages(t, 3, deliverTimeout))
	for i := range 3 {
		m, ok := got[fmt.Sprintf("held-%d", i)]
		if !ok {
			t.Errorf("held-%d was not delivered", i)
			continue
		}
		checkFrom(t, fmt.Sprintf("held-%d", i), m, mta1)
	}
	waitUntil(t, deliverTimeout, "held.test/mta1 empty", func() bool {
		return queueRows(t, api, "domain=held.test")["held.test/mta1"] == nil
	})
	p.stop(t)
}
