package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// TestHostileReceivers: receivers that stream an endless reply (at the
// greeting, to EHLO, after the message) or a greeting without a line end
// cannot make tern serve grow: its resident memory rises by less than
// 16 MB while each of them offers as much as it can, the message is
// deferred with a reason that names the bound, and the daemon goes on
// delivering elsewhere.
func TestHostileReceivers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	z := zones("ok.test")
	type hostile struct {
		domain, ip string
		how        smtptest.Hostility
	}
	hostiles := []hostile{
		{"greeting.test", "127.0.0.31", smtptest.EndlessGreeting},
		{"nocrlf.test", "127.0.0.32", smtptest.NoCRLFGreeting},
		{"ehlo.test", "127.0.0.33", smtptest.EndlessEHLO},
		{"data.test", "127.0.0.34", smtptest.EndlessDataReply},
	}
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	port := sink.Port()
	var servers []*smtptest.Hostile
	for _, h := range hostiles {
		srv := smtptest.StartHostile(t, fmt.Sprintf("%s:%d", h.ip, port), h.how)
		servers = append(servers, srv)
		z["mx."+h.domain] = dnstest.Records{A: []string{h.ip}}
		z[h.domain] = dnstest.Records{MX: []dnstest.MX{{Pref: 10, Host: "mx." + h.domain}}}
	}
	dns := dnstest.Start(t, z)
	smtpPort := freePort(t)
	p := startTern(t, writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), port, "")))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	before := rssKB(t, p.cmd.Process.Pid)

	for i, h := range hostiles {
		mustInject(t, addr, "victim@"+h.domain, fmt.Sprintf("h%d", i), "X-Virtual-MTA: mta1")
	}
	deferred := map[string]string{}
	p.waitLog(t, 0, deliverTimeout, "a deferral for each hostile receiver", func(l string) bool {
		if strings.Contains(l, `msg="delivery attempt"`) && logField(l, "outcome") == "deferred" {
			deferred[logField(l, "rcpt")] = l
		}
		return len(deferred) == len(hostiles)
	})
	for _, h := range hostiles {
		line := deferred["victim@"+h.domain]
		if !strings.Contains(line, "exceeds") {
			t.Errorf("%s deferred as %s, want the bound it broke named", h.domain, line)
		}
	}
	after := rssKB(t, p.cmd.Process.Pid)
	var sent int64
	for _, s := range servers {
		sent += s.Sent()
	}
	t.Logf("RSS %d kB before, %d kB after; the hostile receivers wrote %d bytes", before, after, sent)
	if grew := after - before; grew > 16<<10 {
		t.Errorf("resident memory grew by %d kB, want under 16 MB", grew)
	}
	// The daemon is alive and delivers elsewhere.
	mustInject(t, addr, "fine@ok.test", "fine", "X-Virtual-MTA: mta1")
	sink.WaitMessages(t, 1, deliverTimeout)
}

// rssKB reads a process's peak resident set (VmHWM) in kB: the peak, so
// that a spike freed again by the time of the reading still counts.
func rssKB(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}

// TestAcceptAndCloseHost: a host that accepts TCP and closes at once is a
// failure to connect, not a reason to dial again for every message: after
// host-down-after such connections it is down, and the rest of the mail
// for it waits for the probe.
func TestAcceptAndCloseHost(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hostile := smtptest.StartHostile(t, "127.0.0.35:0", smtptest.AcceptAndClose)
	dns := dnstest.Start(t, dnstest.Zones{
		"mx.closing.test": {A: []string{"127.0.0.35"}},
		"closing.test":    {MX: []dnstest.MX{{Pref: 10, Host: "mx.closing.test"}}},
	})
	smtpPort := freePort(t)
	p := startTern(t, writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), hostile.Port(), "")))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	const n = 30
	for i := range n {
		mustInject(t, addr, fmt.Sprintf("r%d@closing.test", i), fmt.Sprintf("c%d", i), "X-Virtual-MTA: mta1")
	}
	deferred := map[string]bool{}
	p.waitLog(t, 0, deliverTimeout, "every recipient deferred", func(l string) bool {
		if strings.Contains(l, `msg="delivery attempt"`) && logField(l, "outcome") == "deferred" {
			deferred[logField(l, "rcpt")] = true
		}
		return len(deferred) == n
	})
	if c := hostile.Conns(); c > 3 {
		t.Errorf("%d connections to a host that accepts and closes, for %d messages; want host-down-after (2), or one more", c, n)
	}
}
