package delivery_test

import (
	"strings"
	"testing"

	"github.com/ternmta/tern/delivery/smtptest"
	"github.com/ternmta/tern/queue"
)

// Activity shows a queue's recent outcomes newest first, its last error
// and its deliveries of the last minute.
func TestActivity(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx3, 0, smtptest.Options{})
	sink.ScriptRcpt("a@backoff.pat.test", smtptest.R(450, "4.2.0 mailbox busy"), smtptest.R(250))
	h := newHarness(t, baseConfig(sink.Port(), patternConfig), patternZones())
	k := key("mta1", "backoff.pat.test")
	if a := h.sched.Activity(k, 10); a.Connections != 0 || len(a.Events) != 0 || a.LastError != "" {
		t.Fatalf("activity before any work: %+v", a)
	}
	h.run()
	h.put("mta1", "a@backoff.pat.test")
	h.put("mta1", "b@backoff.pat.test")
	h.waitOutcome("a@backoff.pat.test", 2)
	h.waitEmpty()

	a := h.sched.Activity(k, 10)
	if len(a.Events) != 3 {
		t.Fatalf("events = %+v, want 3 (a deferred, b delivered, a delivered)", a.Events)
	}
	if last := a.Events[0]; last.Recipient != "a@backoff.pat.test" || last.Kind != queue.Delivered {
		t.Errorf("newest event = %+v, want a@ delivered", last)
	}
	if !strings.Contains(a.LastError, "mailbox busy") || a.LastErrorAt.IsZero() {
		t.Errorf("last error = %q at %v", a.LastError, a.LastErrorAt)
	}
	if a.DeliveredLastMinute != 2 {
		t.Errorf("delivered last minute = %d, want 2", a.DeliveredLastMinute)
	}
	if a.Events[0].RemoteIP.String() != mx3 || !a.Events[0].SourceIP.IsValid() {
		t.Errorf("event addresses = %+v", a.Events[0])
	}
	if n := len(h.sched.Activity(k, 1).Events); n != 1 {
		t.Errorf("Activity(k, 1) gave %d events", n)
	}
}

// SetMode switches queues that hold mail, by selector, and reports how
// many changed.
func TestSetMode(t *testing.T) {
	t.Parallel()
	h := newHarness(t, baseConfig(1, ""), patternZones())
	if _, err := h.q.Pause(queue.Selector{}); err != nil { // keep the mail queued
		t.Fatal(err)
	}
	h.put("mta1", "a@backoff.pat.test")
	h.put("mta1", "b@bounce.pat.test")
	h.put("mta2", "c@backoff.pat.test")
	if n := h.sched.SetMode(queue.Selector{VMTA: "mta1"}, true); n != 2 {
		t.Fatalf("SetMode(*/mta1, backoff) = %d, want 2", n)
	}
	if n := h.sched.SetMode(queue.Selector{VMTA: "mta1"}, true); n != 0 {
		t.Fatalf("SetMode again = %d, want 0", n)
	}
	for k, want := range map[queue.Key]bool{
		key("mta1", "backoff.pat.test"): true, key("mta1", "bounce.pat.test"): true, key("mta2", "backoff.pat.test"): false,
	} {
		if on, _ := h.sched.Mode(k); on != want {
			t.Errorf("%s backoff = %v, want %v", k, on, want)
		}
	}
	if n := h.sched.SetMode(queue.Selector{Domain: "bounce.pat.test"}, false); n != 1 {
		t.Fatalf("SetMode(bounce.pat.test/*, normal) = %d, want 1", n)
	}
	// backoff.pat.test and bounce.pat.test share their MX host: one
	// provider, one mode, so the first call logs one change.
	if len(h.logs.find("queue mode changed")) != 2 {
		t.Errorf("mode changes logged:\n%s", h.logs.dump())
	}
}
