package delivery

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestHostDownAndProbe(t *testing.T) {
	var h hostState
	// Two failures (host-down-after 2) mark it down for the probe interval.
	for i := range 2 {
		if a := h.admit(t0, 2, 0); a != admitted {
			t.Fatalf("attempt %d: %v, want admitted", i, a)
		}
		if down := h.failed(t0, "refused", 2, time.Minute); down != (i == 1) {
			t.Fatalf("failure %d: down = %v", i, down)
		}
	}
	if a := h.admit(t0.Add(59*time.Second), 2, 0); a != hostDown {
		t.Fatalf("before the probe is due: %v, want hostDown", a)
	}
	// One probe when due; a second asker meanwhile is turned away.
	if a := h.admit(t0.Add(time.Minute), 2, 0); a != admitProbe {
		t.Fatalf("probe due: %v, want admitProbe", a)
	}
	if a := h.admit(t0.Add(time.Minute), 2, 0); a != hostDown {
		t.Fatalf("during the probe: %v, want hostDown", a)
	}
	// A failed probe keeps it down for another interval.
	if !h.failed(t0.Add(time.Minute), "refused", 2, time.Minute) {
		t.Fatal("a failed probe did not keep the host down")
	}
	if a := h.admit(t0.Add(90*time.Second), 2, 0); a != hostDown {
		t.Fatalf("after a failed probe: %v, want hostDown", a)
	}
	// A successful probe brings it back.
	if a := h.admit(t0.Add(2*time.Minute), 2, 0); a != admitProbe {
		t.Fatalf("second probe: %v", a)
	}
	h.opened()
	if !h.downUntil.IsZero() || h.failures != 0 {
		t.Fatalf("after a good probe: %+v", h)
	}
	if a := h.admit(t0.Add(2*time.Minute), 2, 0); a != admitted {
		t.Fatalf("up again: %v", a)
	}
}

func TestHostPendingCap(t *testing.T) {
	var h hostState
	// A host nobody has reached yet takes `initial` opens at once: a
	// black hole holds at most that many.
	for range 2 {
		if a := h.admit(t0, 2, 0); a != admitted {
			t.Fatal(a)
		}
	}
	if a := h.admit(t0, 2, 0); a != hostBusy {
		t.Fatalf("third open while two wait for a banner: %v, want hostBusy", a)
	}
	// Once sessions work, as many opens may wait as sessions are open.
	h.opened()
	h.opened()
	for range 2 {
		if a := h.admit(t0, 2, 0); a != admitted {
			t.Fatal(a)
		}
	}
	if a := h.admit(t0, 2, 0); a != hostBusy {
		t.Fatalf("%v, want hostBusy", a)
	}
	// mx-connection-limit counts open and opening sessions.
	h.released()
	if a := h.admit(t0, 2, 3); a != hostBusy {
		t.Fatalf("at mx-connection-limit 3: %v, want hostBusy", a)
	}
	// A 421 banner is no failure: the host is up.
	h.refused("421 too many")
	if h.failures != 0 || !h.downUntil.IsZero() {
		t.Fatalf("after a refusal: %+v", h)
	}
}

func TestWindowSlowStartThenCeiling(t *testing.T) {
	w := newWindow(2)
	if w.limit(t0) != 2 {
		t.Fatalf("start %d, want 2", w.limit(t0))
	}
	// Slow start: one more slot per success while the window is full
	// and its sessions are open.
	w.open, w.est = 2, 1
	w.success(t0, 20)
	if w.limit(t0) != 2 {
		t.Fatalf("grew while a slot was still opening its session: %d", w.limit(t0))
	}
	w.est = 2
	w.success(t0, 20)
	if w.limit(t0) != 3 {
		t.Fatalf("after a success in a full window: %d, want 3", w.limit(t0))
	}
	// A success while the window is not the constraint teaches nothing.
	w.open, w.est = 1, 1
	w.success(t0, 20)
	if w.limit(t0) != 3 {
		t.Fatalf("after a success in a window not in use: %d, want 3", w.limit(t0))
	}
	for w.open = 3; w.limit(t0) < 11; w.open = w.limit(t0) {
		w.est = w.open
		w.success(t0, 20)
	}
	// The provider refuses the 12th with 10 open: the window holds at
	// 10 for ceilingHold, whatever succeeds.
	w.est, w.open = 10, 11
	w.refused(t0)
	if w.limit(t0) != 10 {
		t.Fatalf("after a refusal with 10 open: %d, want 10", w.limit(t0))
	}
	w.open = 10
	for range 100 {
		w.success(t0.Add(time.Minute), 20)
	}
	if w.limit(t0.Add(time.Minute)) != 10 {
		t.Fatalf("the ceiling did not hold: %d", w.limit(t0.Add(time.Minute)))
	}
	// After the hold, growth resumes, slowly (1/size per success: about
	// one slot per window's worth of successes).
	later := t0.Add(ceilingHold + time.Second)
	for range 5 {
		w.success(later, 20)
	}
	if l := w.limit(later); l != 10 {
		t.Fatalf("five successes after the hold: %d, want still 10", l)
	}
	for range 7 {
		w.success(later, 20)
	}
	if l := w.limit(later); l != 11 {
		t.Fatalf("twelve successes after the hold: %d, want 11", l)
	}
	// Never past max-smtp-out.
	for range 1000 {
		w.open = w.limit(later)
		w.est = w.open
		w.success(later, 12)
	}
	if l := w.limit(later); l != 12 {
		t.Fatalf("window %d, want max 12", l)
	}
	// A connection failure shrinks it by one.
	w.failed()
	if l := w.limit(later); l != 11 {
		t.Fatalf("after a failure: %d, want 11", l)
	}
}
