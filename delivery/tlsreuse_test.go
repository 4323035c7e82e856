package delivery_test

import (
	"crypto/tls"
	"fmt"
	"testing"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// TestReuseSSLSession: with reuse-ssl-session yes (the default) a second
// connection to the same MX host from the same source address resumes the
// first one's TLS session (TLS 1.3 and TLS 1.2 alike); a connection from
// another source address never resumes a session another address made;
// with reuse-ssl-session no every handshake is a full one.
func TestReuseSSLSession(t *testing.T) {
	t.Parallel()
	tls13, _ := smtptest.SelfSigned(t, "mx.reuse.test")
	tls12, _ := smtptest.SelfSigned(t, "mx.reuse12.test")
	tls12.MaxVersion = tls.VersionTLS12
	sink13 := startSink(t, mx1, 0, smtptest.Options{TLS: tls13})
	sink12 := startSink(t, mx2, 0, smtptest.Options{TLS: tls12})
	h := newHarness(t, baseConfig(sink13.Port(), fmt.Sprintf(`
<domain [*.]test>
    use-starttls yes
    # One transaction per connection: each message opens a new one.
    max-msg-per-connection 1
    max-smtp-out 1
</domain>
<domain noreuse.test>
    reuse-ssl-session no
</domain>
<domain reuse12.test>
    default-smtp-port %d
</domain>
<domain noreuse12.test>
    default-smtp-port %d
    reuse-ssl-session no
</domain>
`, sink12.Port(), sink12.Port())), dnstest.Zones{
		"reuse.test":      {MX: []dnstest.MX{{Pref: 10, Host: "mx.reuse.test"}}},
		"noreuse.test":    {MX: []dnstest.MX{{Pref: 10, Host: "mx.noreuse.test"}}},
		"reuse12.test":    {MX: []dnstest.MX{{Pref: 10, Host: "mx.reuse12.test"}}},
		"noreuse12.test":  {MX: []dnstest.MX{{Pref: 10, Host: "mx.noreuse12.test"}}},
		"mx.reuse.test":   {A: []string{mx1}},
		"mx.noreuse.test": {A: []string{mx1}},
		// The TLS 1.2 sink.
		"mx.reuse12.test":   {A: []string{mx2}},
		"mx.noreuse12.test": {A: []string{mx2}},
	})
	h.run()
	// One message at a time, each delivered before the next is queued,
	// so each has a connection of its own after the previous one's.
	n := 0
	send := func(vmtaName, rcpt string) {
		t.Helper()
		h.put(vmtaName, rcpt)
		n++
		h.waitOutcome(rcpt, 1)
		h.waitFor("an empty queue", wait, func() bool { return h.q.Totals().Recipients == 0 })
		h.expectOutcomes(rcpt, "delivered")
	}
	for _, d := range []string{"reuse.test", "noreuse.test", "reuse12.test", "noreuse12.test"} {
		send("mta1", "a@"+d)
		send("mta1", "b@"+d)
		// mta2 sends from another address: mta1's sessions are not its own.
		send("mta2", "c@"+d)
		send("mta2", "d@"+d)
	}

	type conn struct {
		src     string
		resumed bool
		version uint16
	}
	byHost := map[string][]conn{} // SNI name → connections in order
	for _, s := range []*smtptest.Sink{sink13, sink12} {
		for _, c := range s.Connections() {
			byHost[c.TLSServerName] = append(byHost[c.TLSServerName], conn{c.Remote.Addr().String(), c.TLSResumed, c.TLSVersion})
		}
	}
	for host, want := range map[string][]conn{
		"mx.reuse.test":     {{ip1, false, tls.VersionTLS13}, {ip1, true, tls.VersionTLS13}, {ip2, false, tls.VersionTLS13}, {ip2, true, tls.VersionTLS13}},
		"mx.noreuse.test":   {{ip1, false, tls.VersionTLS13}, {ip1, false, tls.VersionTLS13}, {ip2, false, tls.VersionTLS13}, {ip2, false, tls.VersionTLS13}},
		"mx.reuse12.test":   {{ip1, false, tls.VersionTLS12}, {ip1, true, tls.VersionTLS12}, {ip2, false, tls.VersionTLS12}, {ip2, true, tls.VersionTLS12}},
		"mx.noreuse12.test": {{ip1, false, tls.VersionTLS12}, {ip1, false, tls.VersionTLS12}, {ip2, false, tls.VersionTLS12}, {ip2, false, tls.VersionTLS12}},
	} {
		got := byHost[host]
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: connections (source, resumed, version) %v, want %v", host, got, want)
		}
	}
	if got := len(sink13.Messages()) + len(sink12.Messages()); got != n {
		t.Errorf("the sinks got %d messages, want %d", got, n)
	}
}
