package delivery_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery"
	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
	"github.com/ternmta/tern/queue"
)

// OnOutcome sees every recipient's outcome once, with the connection it
// went over: what accounting and bounce reports are built from.
func TestOnOutcomeReportsEveryRecipient(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx2, 0, smtptest.Options{})
	sink.ScriptRcpt("bad@hook.test", smtptest.R(550, "no such user"))
	var (
		mu     sync.Mutex
		events = map[string][]delivery.Event{}
	)
	h := newHarness(t, baseConfig(sink.Port(), ""), dnstest.Zones{
		"hook.test":    {MX: []dnstest.MX{{Pref: 10, Host: "mx.hook.test"}}},
		"mx.hook.test": {A: []string{mx2}},
		"null.test":    {MX: []dnstest.MX{{Pref: 0, Host: "."}}},
	}, func(o *delivery.Options) {
		o.OnOutcome = func(ev delivery.Event) {
			mu.Lock()
			events[ev.Recipient.Address] = append(events[ev.Recipient.Address], ev)
			mu.Unlock()
		}
	})
	h.run()
	id := h.put("mta1", "good@hook.test", "bad@hook.test")
	h.put("mta2", "who@null.test")
	h.waitEmpty()

	mu.Lock()
	defer mu.Unlock()
	check := func(rcpt string, kind queue.Kind, viaConn bool) delivery.Event {
		t.Helper()
		evs := events[rcpt]
		if len(evs) != 1 {
			t.Fatalf("%s: %d events, want 1: %+v", rcpt, len(evs), evs)
		}
		ev := evs[0]
		if ev.Kind != kind {
			t.Errorf("%s: kind %v, want %v (reply %q)", rcpt, ev.Kind, kind, ev.Reply)
		}
		if viaConn && (ev.SourceIP.String() != ip1 || ev.RemoteIP.String() != mx2 || ev.RemoteHost != "mx.hook.test") {
			t.Errorf("%s: connection %s -> %s (%s), want %s -> %s (mx.hook.test)", rcpt, ev.SourceIP, ev.RemoteIP, ev.RemoteHost, ip1, mx2)
		}
		if !viaConn && ev.RemoteIP.IsValid() {
			t.Errorf("%s: bounced without a connection but names remote %s", rcpt, ev.RemoteIP)
		}
		return ev
	}
	good := check("good@hook.test", queue.Delivered, true)
	if good.ID != id || good.Size == 0 || good.Envelope.Sender == "" {
		t.Errorf("delivered event lacks message data: %+v", good)
	}
	bad := check("bad@hook.test", queue.Bounced, true)
	if bad.Reply == "" || bad.Reply[:3] != "550" {
		t.Errorf("bounce reply %q, want the remote 550", bad.Reply)
	}
	null := check("who@null.test", queue.Bounced, false)
	if want := "5.1.10"; len(null.Reply) < len(want) || null.Reply[:len(want)] != want {
		t.Errorf("null MX reply %q, want it to start with %s", null.Reply, want)
	}
}

// A panic in a delivery (here from the outcome hook, for one recipient,
// once) does not end the scheduler: it is logged with its stack, the
// recipients without an outcome are deferred by the retry schedule with
// Tern's internal-error reply, and the same worker goes on delivering.
func TestPanicInDeliveryIsContained(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx2, 0, smtptest.Options{})
	var (
		mu       sync.Mutex
		panicked bool
		kinds    = map[string][]queue.Kind{}
	)
	h := newHarness(t, baseConfig(sink.Port(), ""), dnstest.Zones{
		"hook.test":    {MX: []dnstest.MX{{Pref: 10, Host: "mx.hook.test"}}},
		"mx.hook.test": {A: []string{mx2}},
	}, func(o *delivery.Options) {
		o.OnOutcome = func(ev delivery.Event) {
			mu.Lock()
			first := !panicked && ev.Recipient.Address == "poison@hook.test"
			panicked = panicked || first
			kinds[ev.Recipient.Address] = append(kinds[ev.Recipient.Address], ev.Kind)
			mu.Unlock()
			if first {
				panic("hook failure")
			}
		}
	})
	h.run()
	id := h.put("mta1", "poison@hook.test")
	// The panic came after the sink took the message, so it has it once;
	// the recipient waits for its retry (10m in baseConfig).
	sink.WaitMessages(t, 1, wait)
	h.waitFor("the poison recipient deferred", wait, func() bool {
		l := h.logs.attempts("poison@hook.test")
		return len(l) == 1 && l[0].attrs["outcome"] == "deferred"
	})
	if got := h.logs.attempts("poison@hook.test")[0].attrs["reply"]; !strings.Contains(got, "internal error") {
		t.Errorf("deferred with reply %q, want Tern's internal error", got)
	}
	logged := h.logs.find("delivery panicked; its recipients are deferred")
	if len(logged) != 1 || !strings.Contains(logged[0].attrs["panic"], "hook failure") || !strings.Contains(logged[0].attrs["stack"], "goroutine") {
		t.Fatalf("want one panic line with the panic and its stack, got %+v", logged)
	}
	e, err := h.q.Lookup(id)
	if err != nil || len(e.Recipients) != 1 || e.Recipients[0].Attempts != 1 || !strings.Contains(e.Recipients[0].LastReply, "internal error") {
		t.Fatalf("the spool holds %+v (%v), want the recipient deferred after one attempt", e, err)
	}

	// The scheduler still delivers.
	h.put("mta1", "next@hook.test")
	sink.WaitMessages(t, 2, wait)
	h.waitFor("next delivered", wait, func() bool {
		mu.Lock()
		defer mu.Unlock()
		k := kinds["next@hook.test"]
		return len(k) == 1 && k[0] == queue.Delivered
	})
}

// A hook that panics for a recipient every time also panics when contain
// defers it: the recipient is still deferred by the retry schedule, in the
// spool alone, rather than released to be due again at once, which would
// have the worker deliver, panic and retry it in a tight loop.
func TestPanicWhileDeferringAfterPanic(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx2, 0, smtptest.Options{})
	var (
		mu       sync.Mutex
		panics   int
		next     []queue.Kind
		poisoned = "poison@hook.test"
	)
	h := newHarness(t, baseConfig(sink.Port(), ""), dnstest.Zones{
		"hook.test":    {MX: []dnstest.MX{{Pref: 10, Host: "mx.hook.test"}}},
		"mx.hook.test": {A: []string{mx2}},
	}, func(o *delivery.Options) {
		o.OnOutcome = func(ev delivery.Event) {
			mu.Lock()
			defer mu.Unlock()
			switch ev.Recipient.Address {
			case poisoned:
				panics++
				panic("hook failure, every time")
			case "next@hook.test":
				next = append(next, ev.Kind)
			}
		}
	})
	h.run()
	id := h.put("mta1", poisoned)
	h.waitFor("the poison recipient deferred in the spool", wait, func() bool {
		e, err := h.q.Lookup(id)
		return err == nil && len(e.Recipients) == 1 && e.Recipients[0].Attempts > 0
	})
	e, err := h.q.Lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	if rc := e.Recipients[0]; rc.Attempts != 1 || !strings.Contains(rc.LastReply, "internal error") || !rc.NextAttempt.After(time.Now()) {
		t.Fatalf("the spool holds %+v, want one attempt, Tern's internal error and a retry later", rc)
	}
	if n := len(h.logs.find("deferring after a delivery panic panicked too; the recipients are deferred without outcome records")); n != 1 {
		t.Errorf("%d lines about the second panic, want 1", n)
	}

	// The worker goes on, and the poison recipient is not tried again
	// before its retry: the one message reached the sink once.
	h.put("mta1", "next@hook.test")
	sink.WaitMessages(t, 2, wait)
	h.waitFor("next delivered", wait, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(next) == 1 && next[0] == queue.Delivered
	})
	mu.Lock()
	defer mu.Unlock()
	if panics != 2 {
		t.Errorf("the hook panicked %d times, want 2 (the delivery, then its deferral)", panics)
	}
}
