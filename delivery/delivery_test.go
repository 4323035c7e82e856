package delivery_test

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

// Each VMTA sends from its own address and greets with its own name, and
// never with the other's.
func TestVMTASourceAddressAndName(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	h := newHarness(t, baseConfig(sink.Port(), ""), dnstest.Zones{
		"example.test":    {MX: []dnstest.MX{{Pref: 10, Host: "mx.example.test"}}},
		"mx.example.test": {A: []string{mx1}},
	})
	h.run()
	for i := range 5 {
		h.put("mta1", fmt.Sprintf("one%d@example.test", i))
		h.put("mta2", fmt.Sprintf("two%d@example.test", i))
	}
	msgs := sink.WaitMessages(t, 10, wait)
	h.waitEmpty()

	want := map[string]struct{ ip, ehlo string }{
		"one": {ip1, "mta1.tern.test"},
		"two": {ip2, "mta2.tern.test"}, // host-name overrides the source host's name
	}
	for _, m := range msgs {
		if len(m.Rcpts) != 1 {
			t.Fatalf("message with recipients %v", m.Rcpts)
		}
		w := want[m.Rcpts[0][:3]]
		if m.Remote.String() != w.ip || m.EHLO != w.ehlo {
			t.Errorf("%s arrived from %s as %q, want from %s as %q", m.Rcpts[0], m.Remote, m.EHLO, w.ip, w.ehlo)
		}
	}
	for _, c := range sink.Connections() {
		ip := c.Remote.Addr().String()
		if ip != ip1 && ip != ip2 {
			t.Errorf("connection %d from %s, not a VMTA address", c.ID, ip)
		}
		for _, e := range c.EHLOs {
			if (ip == ip1 && e != "mta1.tern.test") || (ip == ip2 && e != "mta2.tern.test") {
				t.Errorf("connection %d from %s greeted as %q", c.ID, ip, e)
			}
		}
	}
	for i := range 5 {
		h.expectOutcomes(fmt.Sprintf("one%d@example.test", i), "delivered")
		h.expectOutcomes(fmt.Sprintf("two%d@example.test", i), "delivered")
	}
}

// A VMTA with two smtp-source-host lines uses them round robin, each with
// its own name.
func TestSourceRoundRobin(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	h := newHarness(t, baseConfig(sink.Port(), `
<virtual-mta rr>
    smtp-source-host `+ipRR1+` rr-a.tern.test
    smtp-source-host `+ipRR2+` rr-b.tern.test
    <domain rr.test>
        max-smtp-out 1
        max-msg-per-connection 1
    </domain>
</virtual-mta>
`), dnstest.Zones{"rr.test": {A: []string{mx1}}})
	for i := range 6 {
		h.put("rr", fmt.Sprintf("u%d@rr.test", i))
	}
	h.run()
	sink.WaitMessages(t, 6, wait)
	h.waitEmpty()

	conns := sink.Connections()
	if len(conns) != 6 {
		t.Fatalf("%d connections, want 6 (one message each)", len(conns))
	}
	for i, c := range conns {
		wantIP, wantName := ipRR1, "rr-a.tern.test"
		if i%2 == 1 {
			wantIP, wantName = ipRR2, "rr-b.tern.test"
		}
		if c.Remote.Addr().String() != wantIP || c.EHLO != wantName {
			t.Errorf("connection %d from %s as %q, want %s as %q", c.ID, c.Remote.Addr(), c.EHLO, wantIP, wantName)
		}
	}
}

// MX hosts are tried by preference; when the preferred one refuses
// connections the next one gets the mail.
func TestMXPreferenceAndFallback(t *testing.T) {
	t.Parallel()
	first := startSink(t, mx1, 0, smtptest.Options{Hostname: "mx1"})
	port := first.Port()
	second := startSink(t, mx2, port, smtptest.Options{Hostname: "mx2"})
	down := startSink(t, mx3, port, smtptest.Options{Hostname: "down"})
	down.Close() // refuses connections from now on
	busy := startSink(t, mx4, port, smtptest.Options{Hostname: "busy"})
	busy.ScriptGreeting(smtptest.R(421, "too busy"))

	h := newHarness(t, baseConfig(port, ""), dnstest.Zones{
		// Listed out of order: preference decides, not the answer order.
		"pref.test":      {MX: []dnstest.MX{{Pref: 20, Host: "mx2.pref.test"}, {Pref: 10, Host: "mx1.pref.test"}}},
		"mx1.pref.test":  {A: []string{mx1}},
		"mx2.pref.test":  {A: []string{mx2}},
		"fall.test":      {MX: []dnstest.MX{{Pref: 10, Host: "down.fall.test"}, {Pref: 20, Host: "mx2.fall.test"}}},
		"down.fall.test": {A: []string{mx3}},
		"mx2.fall.test":  {A: []string{mx2}},
		"busy.test":      {MX: []dnstest.MX{{Pref: 10, Host: "mx1.busy.test"}, {Pref: 20, Host: "mx2.busy.test"}}},
		"mx1.busy.test":  {A: []string{mx4}},
		"mx2.busy.test":  {A: []string{mx2}},
	})
	h.run()
	h.put("mta1", "a@pref.test", "b@pref.test")
	h.put("mta1", "c@fall.test")
	h.put("mta1", "d@busy.test")
	h.waitEmpty()

	if got := first.Messages(); len(got) != 1 || !slices.Equal(got[0].Rcpts, []string{"a@pref.test", "b@pref.test"}) {
		t.Errorf("preferred MX got %v, want the pref.test message", rcptsOf(got))
	}
	if got := rcptsOf(second.Messages()); len(got) != 2 || !slices.ContainsFunc(got, func(r []string) bool { return slices.Equal(r, []string{"c@fall.test"}) }) ||
		!slices.ContainsFunc(got, func(r []string) bool { return slices.Equal(r, []string{"d@busy.test"}) }) {
		t.Errorf("second MX got %v, want the fall.test and busy.test messages", got)
	}
	if n := busy.Conns(); n != 1 {
		t.Errorf("the MX answering 421 had %d connections, want 1", n)
	}
	h.expectOutcomes("c@fall.test", "delivered")
	h.expectOutcomes("d@busy.test", "delivered")
	if e := h.logs.attempts("c@fall.test"); len(e) == 1 && e[0].attrs["host"] != "mx2.fall.test" {
		t.Errorf("delivered through %q, want mx2.fall.test", e[0].attrs["host"])
	}
	if len(h.logs.find("connection failed; trying the next host")) == 0 {
		t.Error("the refused connection to the first MX was not logged")
	}
}

// DNS outcomes: a domain without MX gets its A record; a null MX and a
// domain that does not exist bounce without a connection; SERVFAIL defers.
func TestDNSOutcomes(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	h := newHarness(t, baseConfig(sink.Port(), ""), dnstest.Zones{
		"a-only.test":   {A: []string{mx1}},
		"null-mx.test":  {MX: []dnstest.MX{{Pref: 0, Host: "."}}, A: []string{mx1}},
		"nx.test":       {NXDOMAIN: true},
		"servfail.test": {ServFail: true},
		// No MX, A or AAAA: deferred, unless bounce-upon-no-mx.
		"nomx.test":   {TXT: []string{"v=spf1 -all"}},
		"nomx-b.test": {TXT: []string{"v=spf1 -all"}},
	})
	h.setConfig(baseConfig(sink.Port(), "<domain nomx-b.test>\n    bounce-upon-no-mx yes\n</domain>\n"))
	h.run()
	h.put("mta1", "a@a-only.test")
	h.put("mta1", "n@null-mx.test")
	h.put("mta1", "x@nx.test")
	h.put("mta1", "s@servfail.test")
	h.put("mta1", "e@nomx.test")
	h.put("mta1", "b@nomx-b.test")

	for _, r := range []string{"a@a-only.test", "n@null-mx.test", "x@nx.test", "s@servfail.test", "e@nomx.test", "b@nomx-b.test"} {
		h.waitOutcome(r, 1)
	}
	h.waitFor("only the SERVFAIL and no-MX recipients left", wait, func() bool {
		tot := h.q.Totals()
		return tot.Recipients == 2 && tot.Deferred == 2
	})
	for _, d := range []string{"servfail.test", "nomx.test"} {
		if st := h.q.Stats(key("mta1", d)); st.Deferred != 1 {
			t.Errorf("%s: %+v, want 1 deferred", d, st)
		}
	}
	checkAttempt(t, h, "e@nomx.test", "deferred", "no MX, A or AAAA")
	checkAttempt(t, h, "b@nomx-b.test", "bounced", "5.1.2", "no MX, A or AAAA")

	msgs := sink.Messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].Rcpts, []string{"a@a-only.test"}) {
		t.Errorf("sink got %v, want only a@a-only.test", rcptsOf(msgs))
	}
	checkAttempt(t, h, "a@a-only.test", "delivered", "250 ")
	checkAttempt(t, h, "n@null-mx.test", "bounced", "5.1.10", "null MX")
	checkAttempt(t, h, "x@nx.test", "bounced", "5.1.2", "does not exist")
	checkAttempt(t, h, "s@servfail.test", "deferred", "SERVFAIL")
	if n := sink.Conns(); n != 1 {
		t.Errorf("%d connections, want 1 (bounces need none)", n)
	}
}

// checkAttempt checks the only logged attempt of rcpt: its outcome and
// pieces of its reply.
func checkAttempt(t *testing.T, h *harness, rcpt, outcome string, reply ...string) {
	t.Helper()
	got := h.logs.attempts(rcpt)
	if len(got) != 1 {
		t.Errorf("%s: %d attempts logged, want 1", rcpt, len(got))
		return
	}
	if got[0].attrs["outcome"] != outcome {
		t.Errorf("%s: outcome %s (%q), want %s", rcpt, got[0].attrs["outcome"], got[0].attrs["reply"], outcome)
	}
	for _, r := range reply {
		if !strings.Contains(got[0].attrs["reply"], r) {
			t.Errorf("%s: reply %q does not contain %q", rcpt, got[0].attrs["reply"], r)
		}
	}
}

func rcptsOf(msgs []smtptest.Message) [][]string {
	var out [][]string
	for _, m := range msgs {
		out = append(out, m.Rcpts)
	}
	return out
}

// smtp-hosts sends to fixed hosts instead of the MX, by name or as an
// [ip]:port literal.
func TestSMTPHostsOverrideMX(t *testing.T) {
	t.Parallel()
	mxSink := startSink(t, mx1, 0, smtptest.Options{Hostname: "mx"})
	port := mxSink.Port()
	relay := startSink(t, mx2, port, smtptest.Options{Hostname: "relay"})
	literal := startSink(t, rnd1, 0, smtptest.Options{Hostname: "literal"})
	h := newHarness(t, baseConfig(port, fmt.Sprintf(`
<domain named.test>
    smtp-hosts relay.test
</domain>
<domain literal.test>
    route [%s]:%d
</domain>
`, rnd1, literal.Port())), dnstest.Zones{
		"named.test":   {MX: []dnstest.MX{{Pref: 10, Host: "mx.test"}}},
		"literal.test": {MX: []dnstest.MX{{Pref: 10, Host: "mx.test"}}},
		"other.test":   {MX: []dnstest.MX{{Pref: 10, Host: "mx.test"}}},
		"mx.test":      {A: []string{mx1}},
		"relay.test":   {A: []string{mx2}},
	})
	h.run()
	h.put("mta1", "a@named.test")
	h.put("mta1", "b@literal.test")
	h.put("mta1", "c@other.test")
	h.waitEmpty()

	for _, c := range []struct {
		sink *smtptest.Sink
		want string
	}{{relay, "a@named.test"}, {literal, "b@literal.test"}, {mxSink, "c@other.test"}} {
		if got := c.sink.Messages(); len(got) != 1 || !slices.Equal(got[0].Rcpts, []string{c.want}) {
			t.Errorf("sink %s got %v, want only %s", c.sink.Addr(), rcptsOf(got), c.want)
		}
	}
}

// require-starttls defers when the server offers no STARTTLS; use-starttls
// delivers over TLS 1.2 or later when it does.
func TestStartTLSPolicy(t *testing.T) {
	t.Parallel()
	plain := startSink(t, mx1, 0, smtptest.Options{})
	port := plain.Port()
	tlsConf, _ := smtptest.SelfSigned(t, "mx.tls.test")
	secure := startSink(t, mx2, port, smtptest.Options{TLS: tlsConf})
	h := newHarness(t, baseConfig(port, `
<domain need.test>
    require-starttls yes
</domain>
<domain tls.test>
    use-starttls yes
</domain>
<domain notls.test>
    use-starttls no
</domain>
<domain verify.test>
    require-starttls yes
    tls-verify-certificate yes
</domain>
<domain verify-opt.test>
    use-starttls yes
    tls-verify-certificate yes
</domain>
`), dnstest.Zones{
		"verify.test":     {MX: []dnstest.MX{{Pref: 10, Host: "mx.tls.test"}}},
		"verify-opt.test": {MX: []dnstest.MX{{Pref: 10, Host: "mx.tls.test"}}},
		"need.test":       {MX: []dnstest.MX{{Pref: 10, Host: "mx.plain.test"}}},
		"tls.test":        {MX: []dnstest.MX{{Pref: 10, Host: "mx.tls.test"}}},
		"notls.test":      {MX: []dnstest.MX{{Pref: 10, Host: "mx.tls.test"}}},
		"mx.plain.test":   {A: []string{mx1}},
		"mx.tls.test":     {A: []string{mx2}},
	})
	h.run()
	h.put("mta1", "n@need.test")
	h.put("mta1", "t@tls.test")
	h.put("mta1", "p@notls.test")
	// The sink's certificate is self-signed: verification fails.
	h.put("mta1", "v@verify.test")
	h.put("mta1", "o@verify-opt.test")

	h.waitOutcome("n@need.test", 1)
	h.waitOutcome("v@verify.test", 1)
	h.waitFor("the TLS deliveries", wait, func() bool {
		return h.q.Totals().Recipients == 2 && h.q.Stats(key("mta1", "need.test")).Deferred == 1 &&
			h.q.Stats(key("mta1", "verify.test")).Deferred == 1
	})
	checkAttempt(t, h, "n@need.test", "deferred", "does not offer STARTTLS", "require-starttls")
	checkAttempt(t, h, "v@verify.test", "deferred", "TLS handshake", "certificate")
	if n := len(plain.Attempts()); n != 0 {
		t.Errorf("the server without STARTTLS got %d messages under require-starttls", n)
	}
	// Opportunistic TLS that fails verification falls back to plaintext.
	checkAttempt(t, h, "o@verify-opt.test", "delivered")
	if len(h.logs.find("STARTTLS failed; retrying in plaintext")) == 0 {
		t.Error("the plaintext fallback was not logged")
	}

	msgs := secure.Messages()
	if len(msgs) != 3 {
		t.Fatalf("TLS sink got %v, want 3 messages", rcptsOf(msgs))
	}
	for _, m := range msgs {
		switch m.Rcpts[0] {
		case "t@tls.test":
			if m.TLSVersion < tls.VersionTLS12 {
				t.Errorf("use-starttls: delivered with TLS version %#x, want TLS 1.2 or later", m.TLSVersion)
			}
		case "p@notls.test", "o@verify-opt.test":
			if m.TLSVersion != 0 {
				t.Errorf("%s: delivered over TLS %#x, want plaintext", m.Rcpts[0], m.TLSVersion)
			}
		}
	}
	if e := h.logs.attempts("t@tls.test"); len(e) != 1 || !strings.HasPrefix(e[0].attrs["tls"], "TLS1.") {
		t.Errorf("TLS delivery logged as %v", e)
	}
	// The name before STARTTLS is the VMTA's too, not a library default.
	for _, c := range secure.Connections() {
		for _, e := range c.EHLOs {
			if e != "mta1.tern.test" {
				t.Errorf("connection %d greeted as %q (all: %v)", c.ID, e, c.EHLOs)
			}
		}
	}
}

// A recipient answered 451 twice and then 250 is delivered at the third
// attempt, the attempts spaced by retry-after (1s, then 2s).
func TestRetryAfterSchedule(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var rcptTimes []time.Time
	sink := startSink(t, mx1, 0, smtptest.Options{Reply: func(ev smtptest.Event) *smtptest.Reply {
		if ev.Stage == smtptest.StageRcpt && ev.Rcpt == "r@retry.test" {
			mu.Lock()
			rcptTimes = append(rcptTimes, time.Now())
			mu.Unlock()
		}
		return nil
	}})
	sink.ScriptRcpt("r@retry.test", smtptest.R(451, "try later"), smtptest.R(451, "try later"), smtptest.R(250))
	h := newHarness(t, baseConfig(sink.Port(), `
<domain retry.test>
    retry-after 1s,2s
</domain>
`), dnstest.Zones{"retry.test": {A: []string{mx1}}})
	h.run()
	h.put("mta1", "r@retry.test")

	first := h.waitOutcome("r@retry.test", 1)
	if first.attrs["outcome"] != "deferred" || !strings.HasPrefix(first.attrs["reply"], "451") {
		t.Fatalf("first attempt: %v", first.attrs)
	}
	if st := h.q.Stats(key("mta1", "retry.test")); st.Total() != 1 {
		t.Errorf("after a 451 the recipient is not queued: %+v", st)
	}
	sink.WaitMessages(t, 1, wait)
	h.waitEmpty()
	h.expectOutcomes("r@retry.test", "deferred", "deferred", "delivered")

	mu.Lock()
	defer mu.Unlock()
	if len(rcptTimes) != 3 {
		t.Fatalf("%d RCPT attempts, want 3", len(rcptTimes))
	}
	for i, want := range []time.Duration{time.Second, 2 * time.Second} {
		if gap := rcptTimes[i+1].Sub(rcptTimes[i]); gap < want {
			t.Errorf("attempt %d came %s after attempt %d, want at least %s", i+2, gap, i+1, want)
		} else {
			t.Logf("attempt %d: %s after the previous one (retry-after %s)", i+2, gap.Round(time.Millisecond), want)
		}
	}
}

// 550 bounces at once; in a transaction with another recipient, only the
// refused one bounces.
func TestPermanentFailureBounces(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	sink.ScriptRcpt("bad@perm.test", smtptest.R(550, "no such user"))
	h := newHarness(t, baseConfig(sink.Port(), ""), dnstest.Zones{"perm.test": {A: []string{mx1}}})
	h.run()
	h.put("mta1", "bad@perm.test")
	h.put("mta1", "bad@perm.test", "good@perm.test")
	h.waitEmpty()

	got := h.logs.attempts("bad@perm.test")
	if len(got) != 2 {
		t.Fatalf("%d attempts for bad@perm.test, want 2 (one per message)", len(got))
	}
	for _, e := range got {
		if e.attrs["outcome"] != "bounced" || !strings.HasPrefix(e.attrs["reply"], "550") || !strings.Contains(e.attrs["reply"], "no such user") {
			t.Errorf("bad@perm.test: %v", e.attrs)
		}
	}
	h.expectOutcomes("good@perm.test", "delivered")
	msgs := sink.Messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].Rcpts, []string{"good@perm.test"}) {
		t.Errorf("sink got %v, want one message to good@perm.test", rcptsOf(msgs))
	}
}

// A message older than bounce-after bounces as expired without a
// connection; one that expires while deferred bounces when it expires,
// not at the next retry-after.
func TestBounceAfterExpiry(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	sink.ScriptRcpt("late@soon.test", smtptest.R(451, "busy"))
	h := newHarness(t, baseConfig(sink.Port(), `
<domain old.test>
    bounce-after 1d
</domain>
<domain soon.test>
    bounce-after 1h
    retry-after 1h
</domain>
`), dnstest.Zones{"old.test": {A: []string{mx1}}, "soon.test": {A: []string{mx1}}})
	h.run()

	h.putMsgWithAge(48*time.Hour, "mta1", "o@old.test")
	h.putMsgWithAge(time.Hour-1500*time.Millisecond, "mta1", "late@soon.test")

	e := h.waitOutcome("o@old.test", 1)
	if e.attrs["outcome"] != "bounced" || !strings.Contains(e.attrs["reply"], "5.4.7") || !strings.Contains(e.attrs["reply"], "expired") {
		t.Errorf("old message: %v", e.attrs)
	}
	h.waitEmpty()
	h.expectOutcomes("late@soon.test", "deferred", "bounced")
	if e := h.logs.attempts("late@soon.test"); len(e) == 2 && !strings.Contains(e[1].attrs["reply"], "5.4.7") {
		t.Errorf("expiry after a deferral: %v", e[1].attrs)
	}
	for _, m := range sink.Attempts() {
		t.Errorf("sink got data for %v", m.Rcpts)
	}
	for _, c := range sink.Connections() {
		if c.Remote.Addr() != netip.MustParseAddr(ip1) {
			t.Errorf("connection from %s", c.Remote)
		}
	}
}

// putMsgWithAge queues a message received age ago.
func (h *harness) putMsgWithAge(age time.Duration, vmtaName string, rcpts ...string) queue.ID {
	h.t.Helper()
	m := queuetest.Message(vmtaName, rcpts...)
	m.Received = time.Now().Add(-age)
	return h.putMsg(m)
}

// The reply at the end of DATA decides: 4xx defers, 5xx bounces, and a 250
// only then delivers.
func TestDataReplies(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{Reply: func(ev smtptest.Event) *smtptest.Reply {
		if ev.Stage != smtptest.StageData {
			return nil
		}
		switch {
		case slices.Contains(ev.Rcpts, "tmp@data.test"):
			r := smtptest.R(452, "out of space")
			return &r
		case slices.Contains(ev.Rcpts, "perm@data.test"):
			r := smtptest.R(554, "content rejected")
			return &r
		}
		return nil
	}})
	h := newHarness(t, baseConfig(sink.Port(), ""), dnstest.Zones{"data.test": {A: []string{mx1}}})
	h.run()
	h.put("mta1", "tmp@data.test", "tmp2@data.test")
	h.put("mta1", "perm@data.test")
	h.put("mta1", "ok@data.test")
	for _, r := range []string{"tmp@data.test", "tmp2@data.test", "perm@data.test", "ok@data.test"} {
		h.waitOutcome(r, 1)
	}
	h.waitFor("the deferred message alone in the queue", wait, func() bool {
		tot := h.q.Totals()
		return tot.Recipients == 2 && tot.Deferred == 2
	})
	checkAttempt(t, h, "tmp@data.test", "deferred", "452", "out of space")
	checkAttempt(t, h, "tmp2@data.test", "deferred", "452", "out of space")
	checkAttempt(t, h, "perm@data.test", "bounced", "554", "content rejected")
	checkAttempt(t, h, "ok@data.test", "delivered", "250")
	if got := rcptsOf(sink.Messages()); len(got) != 1 || !slices.Equal(got[0], []string{"ok@data.test"}) {
		t.Errorf("accepted messages %v, want only ok@data.test's", got)
	}
}

// A smart host with AUTH: over STARTTLS, or in plaintext only with
// use-unencrypted-plain-auth; otherwise the mail waits.
func TestSmartHostAuth(t *testing.T) {
	t.Parallel()
	tlsConf, _ := smtptest.SelfSigned(t, mx1)
	users := map[string]string{"tern": "s3cret"}
	secure := startSink(t, mx1, 0, smtptest.Options{TLS: tlsConf, Users: users})
	plain := startSink(t, rnd2, 0, smtptest.Options{Users: users})
	h := newHarness(t, baseConfig(secure.Port(), fmt.Sprintf(`
<domain tls-auth.test>
    smtp-hosts [%s]:%d
    auth-username tern
    auth-password s3cret
</domain>
<domain plain-auth.test>
    smtp-hosts [%s]:%d
    auth-username tern
    auth-password s3cret
    use-unencrypted-plain-auth yes
</domain>
<domain refused-auth.test>
    smtp-hosts [%s]:%d
    auth-username tern
    auth-password s3cret
</domain>
`, mx1, secure.Port(), rnd2, plain.Port(), rnd2, plain.Port())), dnstest.Zones{})
	h.run()
	h.put("mta1", "a@tls-auth.test")
	h.put("mta1", "b@plain-auth.test")
	h.put("mta1", "c@refused-auth.test")
	for _, r := range []string{"a@tls-auth.test", "b@plain-auth.test", "c@refused-auth.test"} {
		h.waitOutcome(r, 1)
	}
	checkAttempt(t, h, "a@tls-auth.test", "delivered")
	checkAttempt(t, h, "b@plain-auth.test", "delivered")
	checkAttempt(t, h, "c@refused-auth.test", "deferred", "needs TLS")
	if m := secure.Messages(); len(m) != 1 || m[0].TLSVersion < tls.VersionTLS12 {
		t.Errorf("TLS smart host got %+v", m)
	}
	if m := plain.Messages(); len(m) != 1 || m[0].Rcpts[0] != "b@plain-auth.test" {
		t.Errorf("plaintext smart host got %v", rcptsOf(m))
	}
	if c := secure.Connections(); len(c) != 1 || c[0].AuthUser != "tern" {
		t.Errorf("TLS smart host connections: %+v", c)
	}
	authed := 0
	for _, c := range plain.Connections() {
		if c.AuthUser == "tern" {
			authed++
		}
	}
	if authed != 1 {
		t.Errorf("%d authenticated plaintext connections, want 1", authed)
	}
}

// Messages of one lease go out pipelined one behind the other on one
// connection (each message's MAIL, RCPT and DATA in the write of the
// message before). Every message is answered on its own: a refused one
// in the middle bounces or defers alone, and every other arrives exactly
// once.
func TestPipelinedMessagesOfALease(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{Reply: func(ev smtptest.Event) *smtptest.Reply {
		if ev.Stage != smtptest.StageData {
			return nil
		}
		switch {
		case slices.Contains(ev.Rcpts, "m10@chain.test"):
			r := smtptest.R(554, "content rejected")
			return &r
		case slices.Contains(ev.Rcpts, "m20@chain.test"):
			r := smtptest.R(452, "try later")
			return &r
		}
		return nil
	}})
	dials := &dialCounter{}
	h := newHarness(t, baseConfig(sink.Port(), `
<domain chain.test>
    max-smtp-out 1
</domain>
`), dnstest.Zones{"chain.test": {A: []string{mx1}}}, dials.option)
	const n = 30
	for i := range n {
		h.put("mta1", fmt.Sprintf("m%02d@chain.test", i))
	}
	h.run()
	for i := range n {
		h.waitOutcome(fmt.Sprintf("m%02d@chain.test", i), 1)
	}
	checkAttempt(t, h, "m10@chain.test", "bounced", "554", "content rejected")
	checkAttempt(t, h, "m20@chain.test", "deferred", "452", "try later")
	seen := map[string]int{}
	for _, m := range sink.Messages() {
		for _, r := range m.Rcpts {
			seen[r]++
		}
	}
	for i := range n {
		r := fmt.Sprintf("m%02d@chain.test", i)
		want := 1
		if i == 10 || i == 20 {
			want = 0
		}
		if seen[r] != want {
			t.Errorf("%s arrived %d times, want %d", r, seen[r], want)
		}
		if i != 10 && i != 20 {
			checkAttempt(t, h, r, "delivered", "250")
		}
	}
	if _, _, total := dials.stats(); total != 1 {
		t.Errorf("%d connections for one lease, want 1", total)
	}
}
