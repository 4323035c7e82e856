package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/smtptest/world"
)

// TestRealReceivers runs tern serve against a small simulated Internet over
// real sockets: a provider of 20 domains behind two MX hosts that takes 3
// connections per client IP and answers slowly, a domain whose only MX
// resets every connection, and one whose MX accepts TCP and never greets.
// Tern must deliver everything deliverable exactly once while staying
// under the provider's cap (finding it costs a refusal or two), dial the
// dead host a bounded number of times, and hold few connections to the
// black hole however much mail waits for it.
func TestRealReceivers(t *testing.T) {
	t.Parallel()
	w := world.StartT(t, world.Spec{Seed: 7, Providers: []world.Provider{
		{Name: "capped", Domains: 20, Hosts: []world.Host{{}, {}}, ConnCapPerIP: 3, ReplyDelay: 20 * time.Millisecond, Weight: 1},
		{Name: "deadmx", Names: []string{"dead.test"}, Hosts: []world.Host{{Kind: world.Dead}}},
		{Name: "hole", Names: []string{"hole.test"}, Hosts: []world.Host{{Kind: world.BlackHole}}},
		{Name: "sender", Names: []string{"sender.test"}, Sender: true},
	}})
	dir := t.TempDir()
	smtpPort := freePort(t)
	p := startTern(t, writeConf(t, dir, baseConf(dir, smtpPort, w.DNSAddr(), w.Port(), `    retry-after 1m
    max-smtp-out 20
`)))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	var capped []string
	for _, d := range w.Domains() {
		if d.Provider == "capped" {
			capped = append(capped, d.Name)
		}
	}
	const n = 120
	for i := range n {
		rcpt := fmt.Sprintf("u%d@%s", i, capped[i%len(capped)])
		mustInject(t, addr, rcpt, fmt.Sprintf("m%d", i), fmt.Sprintf("Message-ID: <m%d@world.test>", i))
	}
	for i := range 10 {
		mustInject(t, addr, fmt.Sprintf("d%d@dead.test", i), fmt.Sprintf("d%d", i), fmt.Sprintf("Message-ID: <d%d@world.test>", i))
		mustInject(t, addr, fmt.Sprintf("h%d@hole.test", i), fmt.Sprintf("h%d", i), fmt.Sprintf("Message-ID: <h%d@world.test>", i))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	snap, err := w.WaitFor(ctx, func(s *world.Snapshot) bool {
		return s.Provider("capped").Recipients == n && s.Provider("hole").Held > 0
	})
	if err != nil {
		t.Fatalf("waiting for the deliveries: %v (capped delivered %d of %d)", err, snap.Provider("capped").Recipients, n)
	}
	// The dead host's recipients were deferred without more dials: wait
	// for tern to log them all.
	deferred := map[string]bool{}
	p.waitLog(t, 0, deliverTimeout, "the dead domain's recipients deferred", func(l string) bool {
		if strings.Contains(l, `msg="delivery attempt"`) && logField(l, "outcome") == "deferred" && strings.HasSuffix(logField(l, "rcpt"), "@dead.test") {
			deferred[logField(l, "rcpt")] = true
		}
		return len(deferred) == 10
	})
	snap = w.Snapshot()
	c := snap.Provider("capped")
	t.Logf("capped: %d connections, %d refused at the banner, peak %d per IP", c.Connections, c.Refused, c.PeakPerIP())
	if c.Duplicates != 0 {
		t.Errorf("%d duplicate deliveries", c.Duplicates)
	}
	if c.PeakPerIP() > 3 {
		t.Errorf("peak of %d connections from one IP to a provider that takes 3", c.PeakPerIP())
	}
	if c.Refused > 2 {
		t.Errorf("%d connections refused at the banner; the window should find the cap with one or two", c.Refused)
	}
	if d := snap.Provider("deadmx").DeadDials; d < 1 || d > 3 {
		t.Errorf("%d dials to the dead host for 10 recipients, want host-down-after (2), at most one more", d)
	}
	if h := snap.Provider("hole").PeakHeld; h > 2 {
		t.Errorf("%d connections held by the black hole at once for 10 recipients, want at most initial-smtp-out (2)", h)
	}
}
