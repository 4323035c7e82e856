package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// TestPipelineVMTAsShareASourceIP runs tern serve with two VMTAs on
// 127.0.0.2, each with its own smtp-source-host name, and mail for both to
// one domain: every message arrives over a connection greeted with its own
// VMTA's name, no connection carries both VMTAs' mail, and the views keyed
// by address show the address under both.
func TestPipelineVMTAsShareASourceIP(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("shared.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort, adminPort := freePort(t), freePort(t)
	conf := fmt.Sprintf(`
host-name tern.test
spool %s
smtp-listener 127.0.0.1:%d
name-server %s
http-mgmt-port 127.0.0.1:%d
http-access 127.0.0.1 monitor
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-virtual-mta yes
    default-virtual-mta blue
</source>
<virtual-mta blue>
    smtp-source-host 127.0.0.2 blue.tern.test
</virtual-mta>
<virtual-mta green>
    smtp-source-host 127.0.0.2 green.tern.test
</virtual-mta>
<domain shared.test>
    default-smtp-port %d
    # A few transactions per connection, so that each VMTA opens several.
    max-msg-per-connection 3
</domain>
`, filepath.Join(dir, "spool"), smtpPort, dns.Addr(), adminPort, sink.Port())
	p := startTern(t, writeConf(t, dir, conf))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	const n = 10
	want := map[string]identity{}
	for i := range n {
		for _, v := range []string{"blue", "green"} {
			m := fmt.Sprintf("%s-%d", v, i)
			mustInject(t, addr, fmt.Sprintf("%s%d@shared.test", v, i), m, "X-Virtual-MTA: "+v)
			want[m] = identity{"127.0.0.2", v + ".tern.test"}
		}
	}
	got := byMarker(t, sink.WaitMessages(t, 2*n, deliverTimeout))
	carried := map[int]string{} // connection → the VMTA whose mail it carried
	for m, who := range want {
		msg, ok := got[m]
		if !ok {
			t.Errorf("message %s did not arrive", m)
			continue
		}
		checkFrom(t, m, msg, who)
		v, _, _ := strings.Cut(m, "-")
		if prev, ok := carried[msg.ConnID]; ok && prev != v {
			t.Errorf("connection %d carried mail of both %s and %s", msg.ConnID, prev, v)
		}
		carried[msg.ConnID] = v
	}
	for _, c := range sink.Connections() {
		if c.Remote.Addr().String() != "127.0.0.2" {
			t.Errorf("connection %d from %s", c.ID, c.Remote.Addr())
		}
		for _, e := range c.EHLOs {
			if v, ok := carried[c.ID]; (ok && e != v+".tern.test") || (e != "blue.tern.test" && e != "green.tern.test") {
				t.Errorf("connection %d greeted as %v carried %q's mail", c.ID, c.EHLOs, carried[c.ID])
			}
		}
	}

	api := fmt.Sprintf("http://127.0.0.1:%d/api/", adminPort)
	var vmtas []struct {
		Name      string   `json:"name"`
		HostName  string   `json:"host_name"`
		SourceIPs []string `json:"source_ips"`
	}
	if code := adminCall(t, "GET", api+"vmtas", "", &vmtas); code != http.StatusOK {
		t.Fatalf("GET /api/vmtas: %d", code)
	}
	for _, v := range vmtas {
		if (v.Name == "blue" || v.Name == "green") && (!slices.Equal(v.SourceIPs, []string{"127.0.0.2"}) || v.HostName != v.Name+".tern.test") {
			t.Errorf("/api/vmtas row %+v", v)
		}
	}
	var provs []struct {
		VMTA    string `json:"vmta"`
		Windows []struct {
			Source string `json:"source"`
		} `json:"windows"`
	}
	if code := adminCall(t, "GET", api+"providers", "", &provs); code != http.StatusOK {
		t.Fatalf("GET /api/providers: %d", code)
	}
	withWindow := map[string]bool{}
	for _, pv := range provs {
		for _, w := range pv.Windows {
			if w.Source == "127.0.0.2" {
				withWindow[pv.VMTA] = true
			}
		}
	}
	if !withWindow["blue"] || !withWindow["green"] {
		t.Errorf("/api/providers: the window of 127.0.0.2 is shown for %v, want blue and green", withWindow)
	}
	p.stop(t)
}
