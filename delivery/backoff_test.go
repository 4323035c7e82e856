package delivery_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// patternConfig adds a reply pattern list to the base configuration and
// applies it to the test domains.
const patternConfig = `
<smtp-pattern-list replies>
    reply /\[TS01\]/ mode=backoff
    reply /\[BR\]/ bounce-rcpt
    reply /\[DQ\]/ defer-queue
</smtp-pattern-list>
<domain *.pat.test>
    smtp-pattern-list replies
    retry-after 1s
    backoff-retry-after 1s
    backoff-max-msg-rate 10/s
</domain>
`

func patternZones() dnstest.Zones {
	return dnstest.Zones{
		"backoff.pat.test": {MX: []dnstest.MX{{Pref: 10, Host: "mx.pat.test"}}},
		"bounce.pat.test":  {MX: []dnstest.MX{{Pref: 10, Host: "mx.pat.test"}}},
		"defer.pat.test":   {MX: []dnstest.MX{{Pref: 10, Host: "mx.pat.test"}}},
		"mx.pat.test":      {A: []string{mx3}},
	}
}

// A reply matching a mode=backoff rule puts the queue in backoff mode; the
// first delivery returns it to normal (backoff-to-normal-after-delivery).
func TestReplyPatternBackoffAndBackToNormal(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx3, 0, smtptest.Options{})
	sink.ScriptRcpt("a@backoff.pat.test",
		smtptest.R(421, "4.7.0 [TS01] Messages from 127.0.0.2 temporarily deferred"), smtptest.R(250))
	h := newHarness(t, baseConfig(sink.Port(), patternConfig), patternZones())
	h.run()
	h.put("mta1", "a@backoff.pat.test")

	first := h.waitOutcome("a@backoff.pat.test", 1)
	if first.attrs["outcome"] != "deferred" {
		t.Fatalf("first attempt: %v, want deferred", first.attrs)
	}
	h.waitFor("backoff mode", wait, func() bool {
		on, _ := h.sched.Mode(key("mta1", "backoff.pat.test"))
		return on || len(h.logs.attempts("a@backoff.pat.test")) > 1
	})
	if len(h.logs.find("queue mode changed")) == 0 {
		t.Fatalf("no mode change logged:\n%s", h.logs.dump())
	}
	h.waitOutcome("a@backoff.pat.test", 2)
	h.waitEmpty()
	h.expectOutcomes("a@backoff.pat.test", "deferred", "delivered")
	if on, _ := h.sched.Mode(key("mta1", "backoff.pat.test")); on {
		t.Error("the queue is still in backoff after a delivery")
	}
	var modes []string
	for _, e := range h.logs.find("queue mode changed") {
		modes = append(modes, e.attrs["mode"])
	}
	if len(modes) != 2 || modes[0] != "backoff" || modes[1] != "normal" {
		t.Errorf("mode changes %v, want [backoff normal]", modes)
	}
}

// bounce-rcpt makes a matching 4xx to RCPT permanent.
func TestReplyPatternBounceRcpt(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx3, 0, smtptest.Options{})
	sink.ScriptRcpt("gone@bounce.pat.test", smtptest.R(450, "4.2.1 [BR] mailbox disabled"))
	h := newHarness(t, baseConfig(sink.Port(), patternConfig), patternZones())
	h.run()
	h.put("mta1", "gone@bounce.pat.test", "ok@bounce.pat.test")
	h.waitEmpty()
	h.expectOutcomes("gone@bounce.pat.test", "bounced")
	h.expectOutcomes("ok@bounce.pat.test", "delivered")
}

// defer-queue stops the queue until its next retry: the other mail of the
// lease is deferred without being attempted.
func TestReplyPatternDeferQueue(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx3, 0, smtptest.Options{})
	sink.ScriptRcpt("first@defer.pat.test", smtptest.R(451, "4.7.1 [DQ] slow down"), smtptest.R(250))
	h := newHarness(t, baseConfig(sink.Port(), patternConfig+`
<domain defer.pat.test>
    max-rcpt-per-transaction 1
    max-smtp-out 1
</domain>
`), patternZones())
	h.put("mta1", "first@defer.pat.test")
	h.put("mta1", "second@defer.pat.test")
	h.run()
	h.waitEmpty()
	h.expectOutcomes("first@defer.pat.test", "deferred", "delivered")
	// Held with the queue, never attempted until the hold ended.
	h.expectOutcomes("second@defer.pat.test", "delivered")
	firstDeferred := h.waitOutcome("first@defer.pat.test", 1).time
	if second := h.waitOutcome("second@defer.pat.test", 1).time; second.Sub(firstDeferred) < 900*time.Millisecond {
		t.Errorf("second went out %v after the deferring reply; the queue should have waited its retry (1s)", second.Sub(firstDeferred))
	}
}

// In backoff mode the queue runs at backoff-max-msg-rate: here mail keeps
// the queue in backoff (no return to normal at delivery) and goes out at
// most 2 per second.
func TestBackoffModeLimitsRate(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx3, 0, smtptest.Options{})
	sink.ScriptRcpt("r0@backoff.pat.test", smtptest.R(421, "4.7.0 [TS01] Messages from 127.0.0.2 temporarily deferred"), smtptest.R(250))
	h := newHarness(t, baseConfig(sink.Port(), patternConfig+`
<domain backoff.pat.test>
    backoff-max-msg-rate 2/s
    backoff-to-normal-after-delivery no
    max-rcpt-per-transaction 1
</domain>
`), patternZones())
	h.run()
	h.put("mta1", "r0@backoff.pat.test")
	h.waitOutcome("r0@backoff.pat.test", 1)
	if on, _ := h.sched.Mode(key("mta1", "backoff.pat.test")); !on {
		t.Fatalf("not in backoff after the [TS01] reply:\n%s", h.logs.dump())
	}
	start := time.Now()
	for i := 1; i <= 4; i++ {
		h.put("mta1", fmt.Sprintf("r%d@backoff.pat.test", i))
	}
	for i := 1; i <= 4; i++ {
		h.waitOutcome(fmt.Sprintf("r%d@backoff.pat.test", i), 1)
	}
	// Four recipients at 2/s with a burst of one: at least 1.5 s.
	if took := time.Since(start); took < 1500*time.Millisecond {
		t.Errorf("4 recipients in backoff took %v, want at least 1.5s at 2/s", took)
	}
	if on, _ := h.sched.Mode(key("mta1", "backoff.pat.test")); !on {
		t.Error("the queue left backoff although backoff-to-normal-after-delivery is no")
	}
}
