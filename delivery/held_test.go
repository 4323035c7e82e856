package delivery

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

// heldConf holds held0.test with max-msg-rate 0; its mail expires after
// an hour.
const heldConf = `
<domain *>
    bounce-after 1h
    retry-after 10m
</domain>
<domain held0.test>
    max-msg-rate 0
</domain>
`

// A queue with max-msg-rate 0 sends nothing and opens no connection while
// the other queues deliver; its mail past bounce-after bounces (one report
// per message) while the younger mail waits; a reload that gives it a
// rate delivers the rest.
func TestZeroRateHoldsQueue(t *testing.T) {
	w := newWorld(t, heldConf)
	held := w.provider("held", 1, &fakeHost{})[0]
	free := w.provider("free", 1, &fakeHost{})[0]
	heldIP, freeIP := w.hostIP("mx1.held.example"), w.hostIP("mx1.free.example")
	for i := range 2 {
		w.put("mta1", fmt.Sprintf("old%d@%s", i, held))
	}
	w.run()
	w.clock.Advance(30 * time.Minute)
	for i := range 3 {
		w.put("mta1", fmt.Sprintf("young%d@%s", i, held))
		w.put("mta1", fmt.Sprintf("u%d@%s", i, free))
	}
	hk := queue.Key{VMTA: "mta1", Domain: held}
	w.waitFor("the other queue's deliveries", func() bool {
		return w.q.Stats(queue.Key{VMTA: "mta1", Domain: free}).Total() == 0
	})
	w.settle()
	w.net.stat(func() {
		if n := w.net.dials[heldIP]; n != 0 {
			t.Errorf("%d connections to the held queue's host, want none", n)
		}
		if n := w.net.dials[freeIP]; n == 0 {
			t.Error("no connection to the other queue's host")
		}
	})
	if st := w.q.Stats(hk); st.Ready != 5 || st.Total() != 5 {
		t.Errorf("held queue %+v, want its 5 recipients due and waiting", st)
	}
	if why := w.s.Held(hk); !strings.HasPrefix(why, "max-msg-rate 0 at t.conf:") {
		t.Errorf("Held = %q, want max-msg-rate 0 and where it is written", why)
	}
	if a := w.s.Activity(hk, 0); a.Held == "" || a.Connections != 0 {
		t.Errorf("activity %+v, want held and no connection", a)
	}
	if why := w.s.Held(queue.Key{VMTA: "mta1", Domain: free}); why != "" {
		t.Errorf("the other queue is held: %q", why)
	}

	// Past the old mail's expiry: it bounces without a connection.
	w.drive("the old mail's bounces", 5*time.Minute, func() bool { return w.bnc.Load() == 2 })
	w.settle()
	if st := w.q.Stats(hk); st.Total() != 3 {
		t.Errorf("after the expiry: held queue %+v, want the 3 younger recipients", st)
	}
	w.net.stat(func() {
		if n := w.net.dials[heldIP]; n != 0 {
			t.Errorf("%d connections to the held queue's host, want none", n)
		}
	})

	// A reload that gives the domain a rate releases it.
	w.reload(strings.Replace(heldConf, "max-msg-rate 0", "max-msg-rate 100/h", 1))
	w.drive("the released queue's deliveries", time.Minute, func() bool { return w.q.Stats(hk).Total() == 0 })
	w.net.stat(func() {
		for i := range 3 {
			if n := w.net.got[fmt.Sprintf("young%d@%s", i, held)]; n != 1 {
				t.Errorf("young%d delivered %d times, want once", i, n)
			}
		}
		for i := range 2 {
			if n := w.net.got[fmt.Sprintf("old%d@%s", i, held)]; n != 0 {
				t.Errorf("expired old%d delivered", i)
			}
		}
	})
	if w.s.Held(hk) != "" {
		t.Error("still held after the reload")
	}
	if n := w.bnc.Load(); n != 2 {
		t.Errorf("%d bounce reports, want 2", n)
	}
}

// A reload to max-msg-rate 0 holds a queue that was delivering: mail
// queued after it waits.
func TestZeroRateByReload(t *testing.T) {
	w := newWorld(t, strings.Replace(heldConf, "max-msg-rate 0", "max-msg-rate unlimited", 1))
	held := w.provider("held", 1, &fakeHost{})[0]
	hk := queue.Key{VMTA: "mta1", Domain: held}
	w.put("mta1", "first@"+held)
	w.run()
	w.waitFor("the first delivery", func() bool { return w.q.Stats(hk).Total() == 0 })
	w.reload(heldConf)
	for i := range 3 {
		w.put("mta1", fmt.Sprintf("later%d@%s", i, held))
	}
	w.waitFor("the held queue", func() bool { return w.s.Held(hk) != "" && w.q.Stats(hk).Ready == 3 })
	// The worker of the first delivery may still idle on its connection:
	// once it is gone the queue must still hold all three.
	w.drive("the idle connection's end", time.Minute, func() bool { return w.s.Connections() == 0 })
	w.settle()
	if st := w.q.Stats(hk); st.Ready != 3 {
		t.Errorf("held queue %+v, want 3 due and waiting", st)
	}
	w.net.stat(func() {
		if n := len(w.net.got); n != 1 {
			t.Errorf("%d recipients delivered, want only the one before the reload", n)
		}
	})
}

// A limiter never lets an event through at a Zero rate, not even the first
// (x/time/rate's burst), and says so at once.
func TestLimiterZeroRate(t *testing.T) {
	clock := queuetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	zero := config.Rate{Count: 0, Interval: time.Hour}
	if !zero.Zero() {
		t.Fatal("not a Zero rate")
	}
	var l limiter
	for i := range 3 {
		if err := l.wait(context.Background(), clock, zero); !errors.Is(err, errZeroRate) {
			t.Fatalf("wait %d at a Zero rate: %v, want errZeroRate", i, err)
		}
	}
	if l.allows(clock, zero) {
		t.Error("allows at a Zero rate")
	}
	// From a real rate to zero and back.
	if err := l.wait(context.Background(), clock, config.Rate{Count: 10, Interval: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := l.wait(context.Background(), clock, zero); !errors.Is(err, errZeroRate) {
		t.Fatalf("wait at a Zero rate after a real one: %v", err)
	}
	if err := l.wait(context.Background(), clock, config.Rate{}); err != nil {
		t.Fatalf("unlimited: %v", err)
	}
}
