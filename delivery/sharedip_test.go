package delivery_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// Two VMTAs on one source address, with their own host names: every
// connection carries the mail of the VMTA it was opened (and greeted) for,
// never the other's; mx-connection-limit 1 counts the connections of both
// together, since the receiver sees one client address; and the views
// keyed by address show the one window both share.
func TestSharedSourceIPKeepsVMTAsApart(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	dials := &dialCounter{}
	h := newHarness(t, baseConfig(sink.Port(), fmt.Sprintf(`
mx-connection-limit 1
<virtual-mta blue>
    smtp-source-host %s blue.tern.test
</virtual-mta>
<virtual-mta green>
    smtp-source-host %s green.tern.test
</virtual-mta>
<domain shared.test>
    # Short connections, so that both VMTAs take turns at the host.
    max-msg-per-connection 3
    max-rcpt-per-transaction 1
</domain>
`, ip1, ip1)), dnstest.Zones{
		"shared.test":    {MX: []dnstest.MX{{Pref: 10, Host: "mx.shared.test"}}},
		"mx.shared.test": {A: []string{mx1}},
	}, dials.option)
	const n = 20
	for i := range n {
		h.put("blue", fmt.Sprintf("blue%02d@shared.test", i))
		h.put("green", fmt.Sprintf("green%02d@shared.test", i))
	}
	h.run()
	msgs := sink.WaitMessages(t, 2*n, wait)
	h.waitEmpty()

	names := map[string]string{"blue": "blue.tern.test", "green": "green.tern.test"}
	connOf := map[int]string{} // connection → the VMTA whose mail it carried
	for _, m := range msgs {
		if len(m.Rcpts) != 1 {
			t.Fatalf("message with recipients %v", m.Rcpts)
		}
		who := strings.TrimRight(m.Rcpts[0][:strings.IndexByte(m.Rcpts[0], '@')], "0123456789")
		if m.Remote.String() != ip1 || m.EHLO != names[who] {
			t.Errorf("%s arrived from %s over a connection greeted as %q, want %s as %q", m.Rcpts[0], m.Remote, m.EHLO, ip1, names[who])
		}
		if prev, ok := connOf[m.ConnID]; ok && prev != who {
			t.Errorf("connection %d carried mail of both %s and %s", m.ConnID, prev, who)
		}
		connOf[m.ConnID] = who
	}
	for _, c := range sink.Connections() {
		for _, e := range c.EHLOs {
			if e != c.EHLOs[0] {
				t.Errorf("connection %d greeted as %v", c.ID, c.EHLOs)
			}
		}
		if who, ok := connOf[c.ID]; ok && c.EHLO != names[who] {
			t.Errorf("connection %d greeted as %q carried %s's mail", c.ID, c.EHLO, who)
		}
	}
	if _, peak, total := dials.stats(); peak != 1 || total < 2 {
		t.Errorf("%d connections at once (%d in all) from %s to the host, want mx-connection-limit 1 over both VMTAs", peak, total, ip1)
	}

	// Each VMTA's provider queue shows the window of the address both
	// send from.
	src := netip.MustParseAddr(ip1)
	seen := map[string]bool{}
	for _, pv := range h.sched.Providers() {
		for _, w := range pv.Windows {
			if w.Source == src {
				seen[pv.VMTA] = true
			}
		}
	}
	if !seen["blue"] || !seen["green"] {
		t.Errorf("provider views with the window of %s: %v, want blue and green", ip1, seen)
	}
}
