package delivery_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
	"github.com/ternmta/tern/queue/queuetest"
)

// poolConfig is a pool over mta1 and mta2 with the given pool directives,
// and one recipient per transaction for pool.test, so every full lease
// asks for another connection.
func poolConfig(port int, directives string) string {
	return baseConfig(port, fmt.Sprintf(`
<virtual-mta-pool both>
    virtual-mta mta1
    virtual-mta mta2
%s
</virtual-mta-pool>
<domain pool.test>
    max-rcpt-per-transaction 1
    # Held sessions never succeed, so an adaptive window would stay at
    # its start; these tests are about the caps alone.
    adaptive-smtp-out no
</domain>
`, directives))
}

// putPool queues n messages selected through pool "both", alternating its
// members as the pool's round robin would.
func putPool(h *harness, n int) {
	for i := range n {
		vmtaName := []string{"mta1", "mta2"}[i%2]
		m := queuetest.Message(vmtaName, fmt.Sprintf("u%02d@pool.test", i))
		m.Recipients[0].Pool = "both"
		h.putMsg(m)
	}
}

// A pool's max-smtp-out caps the connections over all the queues of mail
// selected through it: two queues (one per member), each allowed 20,
// share the pool's cap.
func TestPoolMaxSMTPOut(t *testing.T) {
	t.Parallel()
	for _, limit := range []int{2, 5} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			t.Parallel()
			sink := startSink(t, mx1, 0, smtptest.Options{})
			release := sink.Hold()
			dials := &dialCounter{}
			h := newHarness(t, poolConfig(sink.Port(), fmt.Sprintf("    max-smtp-out %d", limit)),
				dnstest.Zones{"pool.test": {A: []string{mx1}}}, dials.option)
			putPool(h, 40)
			h.run()
			// (Unlike a queue's own cap, the pool's cannot bound what is
			// leased: a worker learns the pool of its mail from its lease,
			// and hands the lease back when the pool is full.)
			sink.WaitActive(t, limit, wait)
			release()
			sink.WaitMessages(t, 40, wait)
			h.waitEmpty()
			// Counted on the scheduler's side: the sink may still count a
			// connection the scheduler has closed (its workers come and
			// go as the pool's slot moves between the two queues).
			if _, p, _ := dials.stats(); p != limit {
				t.Errorf("the scheduler had up to %d connections at once, want %d", p, limit)
			}
		})
	}
}

// A pool's max-smtp-msg-rate spreads the messages of all its queues:
// 40 messages over two members at 20/s take at least 39/20 s.
func TestPoolMaxSMTPMsgRate(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	h := newHarness(t, poolConfig(sink.Port(), "    max-smtp-msg-rate 20/s"), dnstest.Zones{"pool.test": {A: []string{mx1}}})
	putPool(h, 40)
	h.run()
	msgs := sink.WaitMessages(t, 40, wait)
	h.waitEmpty()
	span := msgs[len(msgs)-1].Received.Sub(msgs[0].Received)
	if span < 1800*time.Millisecond {
		t.Errorf("40 messages at 20/s over the pool arrived within %s, want at least 1.8s", span)
	}
}
