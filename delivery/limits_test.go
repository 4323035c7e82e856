package delivery_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// max-smtp-out caps the connections of a queue. The sink holds sessions at
// EHLO until the scheduler has opened all it may; with one recipient per
// transaction every full lease asks for another connection, so the
// scheduler would use more than the cap if it let itself (the run with 5
// shows that it does when allowed).
func TestMaxSMTPOut(t *testing.T) {
	t.Parallel()
	for _, limit := range []int{2, 5} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			t.Parallel()
			sink := startSink(t, mx1, 0, smtptest.Options{})
			release := sink.Hold()
			dials := &dialCounter{}
			h := newHarness(t, baseConfig(sink.Port(), fmt.Sprintf(`
<domain cap.test>
    max-smtp-out %d
    max-rcpt-per-transaction 1
    # The held sessions never succeed: an adaptive window would stay at
    # its start. This test is about the cap alone.
    adaptive-smtp-out no
</domain>
`, limit)), dnstest.Zones{"cap.test": {A: []string{mx1}}}, dials.option)
			for i := range 50 {
				h.put("mta1", fmt.Sprintf("u%02d@cap.test", i))
			}
			h.run()
			sink.WaitActive(t, limit, wait)
			if st := h.q.Stats(key("mta1", "cap.test")); st.Leased > limit {
				t.Errorf("%d recipients leased by %d connections", st.Leased, limit)
			}
			release()
			sink.WaitMessages(t, 50, wait)
			h.waitEmpty()
			if p := sink.PeakConns(); p != limit {
				t.Errorf("peak of %d connections at once at the sink, want max-smtp-out %d", p, limit)
			}
			if _, p, _ := dials.stats(); p != limit {
				t.Errorf("the scheduler had up to %d connections at once, want max-smtp-out %d", p, limit)
			}
		})
	}
}

// max-msg-rate 20/s spreads 60 messages over at least 59/20 s.
func TestMaxMsgRate(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	h := newHarness(t, baseConfig(sink.Port(), `
<domain rate.test>
    max-msg-rate 20/s
</domain>
`), dnstest.Zones{"rate.test": {A: []string{mx1}}})
	for i := range 60 {
		h.put("mta1", fmt.Sprintf("u%02d@rate.test", i))
	}
	h.run()
	msgs := sink.WaitMessages(t, 60, wait)
	h.waitEmpty()
	elapsed := time.Since(h.start)
	span := msgs[len(msgs)-1].Received.Sub(msgs[0].Received)
	t.Logf("60 messages in %s (first to last at the sink: %s)", elapsed.Round(time.Millisecond), span.Round(time.Millisecond))
	if span < 2500*time.Millisecond {
		t.Errorf("60 messages at 20/s arrived within %s, want at least 2.5s", span)
	}
}

// max-msg-per-connection 5: 100 messages take 20 connections of 5
// transactions each (one connection at a time, so that none closes early
// for want of mail).
func TestMaxMsgPerConnection(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	h := newHarness(t, baseConfig(sink.Port(), `
<domain per.test>
    max-msg-per-connection 5
    max-smtp-out 1
</domain>
`), dnstest.Zones{"per.test": {A: []string{mx1}}})
	for i := range 100 {
		h.put("mta1", fmt.Sprintf("u%03d@per.test", i))
	}
	h.run()
	msgs := sink.WaitMessages(t, 100, wait)
	h.waitEmpty()
	if n := sink.Conns(); n != 20 {
		t.Errorf("%d connections for 100 messages, want 20", n)
	}
	perConn := map[int]int{}
	for _, m := range msgs {
		perConn[m.ConnID]++
	}
	for id, n := range perConn {
		if n != 5 {
			t.Errorf("connection %d carried %d messages, want 5", id, n)
		}
	}
}

// A server that drops the connection after the data, before its reply,
// sees the message again later; the recipient stays queued until a 250.
func TestDropAfterDataRedelivers(t *testing.T) {
	t.Parallel()
	var h *harness
	var mu sync.Mutex
	datas := 0
	var queuedAtData []int // recipients in the queue at each end of DATA
	sink := startSink(t, mx1, 0, smtptest.Options{Reply: func(ev smtptest.Event) *smtptest.Reply {
		if ev.Stage != smtptest.StageData {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		datas++
		queuedAtData = append(queuedAtData, h.q.Totals().Recipients)
		if datas == 1 {
			return &smtptest.Drop
		}
		return nil
	}})
	h = newHarness(t, baseConfig(sink.Port(), `
<domain drop.test>
    retry-after 1s
</domain>
`), dnstest.Zones{"drop.test": {A: []string{mx1}}})
	h.run()
	h.put("mta1", "d@drop.test")

	first := h.waitOutcome("d@drop.test", 1)
	if first.attrs["outcome"] != "deferred" {
		t.Fatalf("after a dropped connection: %v", first.attrs)
	}
	sink.WaitMessages(t, 1, wait)
	h.waitEmpty()
	h.expectOutcomes("d@drop.test", "deferred", "delivered")

	att := sink.Attempts()
	if len(att) != 2 || att[0].Code != 0 || att[1].Code != 250 {
		t.Fatalf("sink attempts: %+v", att)
	}
	if gap := att[1].Received.Sub(att[0].Received); gap < time.Second {
		t.Errorf("second attempt %s after the first, want at least retry-after 1s", gap)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(queuedAtData, []int{1, 1}) {
		t.Errorf("recipients queued at each end of DATA: %v, want [1 1] (nothing final before the reply)", queuedAtData)
	}
}

// Recipients of one message to one domain share a transaction, up to
// max-rcpt-per-transaction; other domains get their own.
func TestRecipientsShareTransaction(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	h := newHarness(t, baseConfig(sink.Port(), `
<domain split.test>
    max-rcpt-per-transaction 2
</domain>
`), dnstest.Zones{
		"split.test": {A: []string{mx1}},
		"whole.test": {A: []string{mx1}},
		"other.test": {A: []string{mx1}},
	})
	var rcpts []string
	for i := range 5 {
		rcpts = append(rcpts, fmt.Sprintf("s%d@split.test", i))
	}
	h.put("mta1", rcpts...)
	h.put("mta1", "w0@whole.test", "o0@other.test", "w1@whole.test", "w2@whole.test")
	h.run()
	h.waitEmpty()

	sizes := map[string][]int{}
	seen := map[string]int{}
	for _, m := range sink.Messages() {
		d := m.Rcpts[0][strings.IndexByte(m.Rcpts[0], '@')+1:]
		for _, r := range m.Rcpts {
			if !strings.HasSuffix(r, "@"+d) {
				t.Errorf("one transaction for two domains: %v", m.Rcpts)
			}
			seen[r]++
		}
		sizes[d] = append(sizes[d], len(m.Rcpts))
	}
	for d := range sizes {
		slices.Sort(sizes[d])
	}
	want := map[string][]int{"split.test": {1, 2, 2}, "whole.test": {3}, "other.test": {1}}
	for d, w := range want {
		if !slices.Equal(sizes[d], w) {
			t.Errorf("%s: transactions of %v recipients, want %v", d, sizes[d], w)
		}
	}
	if len(seen) != 9 {
		t.Errorf("%d distinct recipients delivered, want 9", len(seen))
	}
	for r, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", r, n)
		}
	}
}

// One connection carries the queued messages, stays open while idle for
// the next one, and is replaced when the server closed it meanwhile,
// without deferring the message.
func TestConnectionReuse(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	port := sink.Port()
	h := newHarness(t, baseConfig(port, ""), dnstest.Zones{"reuse.test": {A: []string{mx1}}})
	for i := range 10 {
		h.put("mta1", fmt.Sprintf("u%d@reuse.test", i))
	}
	h.run()
	sink.WaitMessages(t, 10, wait)
	h.waitEmpty()
	if n := sink.Conns(); n != 1 {
		t.Errorf("10 queued messages took %d connections, want 1", n)
	}

	// Mail arriving one message at a time goes over the idle connection.
	for i := range 5 {
		h.put("mta1", fmt.Sprintf("later%d@reuse.test", i))
		sink.WaitMessages(t, 11+i, wait)
		h.waitEmpty()
	}
	if n := sink.Conns(); n != 1 {
		t.Errorf("after 5 more messages one at a time: %d connections, want 1 (the idle one reused)", n)
	}

	// The server goes away and comes back: the idle connection is dead.
	sink.Close()
	again := startSink(t, mx1, port, smtptest.Options{})
	h.put("mta1", "after@reuse.test")
	again.WaitMessages(t, 1, wait)
	h.waitEmpty()
	h.expectOutcomes("after@reuse.test", "delivered")
}

// Mail queued for a VMTA the configuration does not have waits: it is
// neither bounced nor sent, and goes out once the VMTA exists.
func TestOrphanedVMTAWaits(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	src := baseConfig(sink.Port(), "")
	h := newHarness(t, src, dnstest.Zones{"orphan.test": {A: []string{mx1}}})
	h.put("ghost", "g@orphan.test")
	h.run()
	h.put("mta1", "m@orphan.test")
	sink.WaitMessages(t, 1, wait)
	h.waitFor("mta1's delivery", wait, func() bool { return h.q.Stats(key("mta1", "orphan.test")).Total() == 0 })
	h.waitFor("the orphan warning", wait, func() bool {
		return len(h.logs.find("queue has no configured virtual MTA; its mail waits")) > 0
	})
	if st := h.q.Stats(key("ghost", "orphan.test")); st.Ready != 1 {
		t.Errorf("orphaned queue: %+v, want 1 ready", st)
	}
	if a := h.logs.attempts("g@orphan.test"); len(a) != 0 {
		t.Errorf("orphaned recipient attempted: %v", a)
	}
	if n := len(sink.Messages()); n != 1 {
		t.Errorf("sink got %d messages, want 1 (mta1's)", n)
	}

	// A reload that defines the VMTA; the daemon tells the scheduler about
	// the ready keys again (Start, as after a restart).
	h.setConfig(src + "<virtual-mta ghost>\n    smtp-source-host " + ip3 + " ghost.tern.test\n</virtual-mta>\n")
	h.sched.Start()
	msgs := sink.WaitMessages(t, 2, wait)
	h.waitEmpty()
	if m := msgs[1]; m.Rcpts[0] != "g@orphan.test" || m.Remote.String() != ip3 || m.EHLO != "ghost.tern.test" {
		t.Errorf("orphan delivered as %v from %s (%s)", m.Rcpts, m.Remote, m.EHLO)
	}
}

// An idle connection closes after connection-idle-timeout.
func TestConnectionIdleTimeout(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	h := newHarness(t, baseConfig(sink.Port(), `
<domain idle.test>
    connection-idle-timeout 1s
</domain>
`), dnstest.Zones{"idle.test": {A: []string{mx1}}})
	h.run()
	h.put("mta1", "i@idle.test")
	msgs := sink.WaitMessages(t, 1, wait)
	sink.WaitFor(t, wait, "the idle connection to close", func() bool { return sink.ActiveConns() == 0 })
	c := sink.Connections()[0]
	if idle := c.Closed.Sub(msgs[0].Received); idle < time.Second {
		t.Errorf("connection closed %s after its last message, want connection-idle-timeout 1s", idle)
	}
}

// A VMTA-wide max-smtp-out is shared by its queues, total-max-smtp-out by
// all: a connection idling for one domain must not keep another domain's
// mail waiting for its connection-idle-timeout (30s).
func TestSharedConnectionCaps(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, extra  string
		vmtaA, vmtaB string
	}{
		{"vmta", "<virtual-mta capped>\n    smtp-source-host " + ip3 + " capped.tern.test\n    max-smtp-out 1\n</virtual-mta>\n", "capped", "capped"},
		{"total", "total-max-smtp-out 1\n", "mta1", "mta2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			sink := startSink(t, mx1, 0, smtptest.Options{})
			dials := &dialCounter{}
			h := newHarness(t, baseConfig(sink.Port(), c.extra),
				dnstest.Zones{"first.test": {A: []string{mx1}}, "second.test": {A: []string{mx1}}}, dials.option)
			h.run()
			h.put(c.vmtaA, "a@first.test")
			sink.WaitMessages(t, 1, wait)
			h.waitEmpty()
			// The first connection now idles; the second domain needs the
			// only slot.
			h.put(c.vmtaB, "b@second.test")
			sink.WaitMessages(t, 2, 10*time.Second)
			h.waitEmpty()
			// The sink may see the old connection a moment longer than the
			// scheduler holds it; the scheduler's own count is the test.
			if _, peak, total := dials.stats(); peak != 1 || total != 2 {
				t.Errorf("%d connections, at most %d at once; want 2, one at a time", total, peak)
			}
			sink.WaitFor(t, wait, "the first connection to close", func() bool {
				c := sink.Connections()
				return len(c) == 2 && !c[0].Closed.IsZero()
			})
		})
	}
}
