package delivery

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/acct"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

// checkDiscarded fails unless ev is the outcome of a discarded recipient,
// with the d record that says so.
func checkDiscarded(t *testing.T, ev Event) {
	t.Helper()
	if ev.Kind != queue.Delivered || !ev.Discarded || ev.Reply != discardReply || ev.RemoteIP.IsValid() || ev.SourceIP.IsValid() {
		t.Errorf("%s: outcome %s discarded=%v reply %q remote %v source %v, want delivered, discarded, %q, no connection",
			ev.Recipient.Address, ev.Kind, ev.Discarded, ev.Reply, ev.RemoteIP, ev.SourceIP, discardReply)
	}
	rec := ev.AcctRecord()
	if rec.Type != acct.TypeDelivered || rec.DSNAction != "delivered" || rec.DSNStatus != "2.0.0" ||
		rec.DSNDiag != discardReply || rec.DlvType != "discard" || rec.DSNMta != "" || rec.DlvDestinationIP != "" {
		t.Errorf("%s: accounting record %+v, want a d record, 2.0.0, diagnostic %q, dlvType discard, no remote MTA",
			ev.Recipient.Address, rec, discardReply)
	}
}

// byRcpt indexes outcomes by recipient; a recipient with two outcomes
// fails the test.
func byRcpt(t *testing.T, evs []Event) map[string]Event {
	t.Helper()
	out := map[string]Event{}
	for _, ev := range evs {
		if _, dup := out[ev.Recipient.Address]; dup {
			t.Errorf("%s has two outcomes", ev.Recipient.Address)
		}
		out[ev.Recipient.Address] = ev
	}
	return out
}

// A type discard domain whose MX hosts belong to a rolled-up provider is
// discarded alone: it is never looked up (so never rolled up), nothing
// is sent for it, its rate and connection limits do not hold it back (the
// clock never moves here, so a rate of 1/h would), and the provider's
// other domains, in the same messages too, are delivered.
func TestDiscardNeverLooksUpOrConnects(t *testing.T) {
	w := newWorld(t, `
<mx-rollup-list>
    mx *.big.example big.rollup
</mx-rollup-list>
<domain *>
    retry-after 1m
</domain>
<domain big1.test>
    type discard
    max-msg-rate 1/h
    max-smtp-out 1
</domain>
`)
	doms := w.provider("big", 3, &fakeHost{})
	var kept, dropped []string
	for i := range 30 {
		rcpt := fmt.Sprintf("u%d@%s", i, doms[i%3])
		w.put("mta1", rcpt)
		if i%3 == 1 {
			dropped = append(dropped, rcpt)
		} else {
			kept = append(kept, rcpt)
		}
	}
	for i := range 5 { // one message, one recipient per domain
		w.put("mta1", fmt.Sprintf("m%d@%s", i, doms[0]), fmt.Sprintf("m%d@%s", i, doms[1]), fmt.Sprintf("m%d@%s", i, doms[2]))
		kept = append(kept, fmt.Sprintf("m%d@%s", i, doms[0]), fmt.Sprintf("m%d@%s", i, doms[2]))
		dropped = append(dropped, fmt.Sprintf("m%d@%s", i, doms[1]))
	}
	w.run()
	w.waitFor("every recipient delivered or discarded", func() bool { return w.q.Totals().Recipients == 0 })

	if n := w.res.lookups(doms[1]); n != 0 {
		t.Errorf("%d DNS lookups for the discarded domain %s, want none", n, doms[1])
	}
	evs := byRcpt(t, w.outcomes())
	w.net.stat(func() {
		for _, r := range dropped {
			if w.net.got[r] != 0 {
				t.Errorf("%s was sent to the provider; its domain is type discard", r)
			}
			checkDiscarded(t, evs[r])
		}
		for _, r := range kept {
			if w.net.got[r] != 1 {
				t.Errorf("%s delivered %d times, want once", r, w.net.got[r])
			}
			if ev := evs[r]; ev.Discarded || ev.Kind != queue.Delivered {
				t.Errorf("%s: outcome %s discarded=%v, want a delivery", r, ev.Kind, ev.Discarded)
			}
		}
		for id, ds := range w.net.doms {
			if ds[doms[1]] {
				t.Errorf("session %d carried mail for the discarded domain", id)
			}
		}
	})
	if got := w.s.ProviderOf(queue.Key{VMTA: "mta1", Domain: doms[0]}); got != "big.rollup" {
		t.Errorf("%s routed to %q, want the rollup big.rollup", doms[0], got)
	}
	for _, p := range w.s.Providers() {
		if p.Provider == "big.rollup" && strings.Contains(strings.Join(p.Domains, ","), doms[1]) {
			t.Errorf("the discarded domain is a member of the rollup: %v", p.Domains)
		}
	}
}

// type discard in a pool's <domain> applies to the mail selected through
// that pool only: in the same queue, mail sent through the VMTA alone is
// delivered. The domain leaves its rollup all the same.
func TestDiscardPerPool(t *testing.T) {
	w := newWorld(t, `
<mx-rollup-list>
    mx *.pp.example pp.rollup
</mx-rollup-list>
<virtual-mta-pool quiet>
    virtual-mta mta1
    <domain pp0.test>
        type discard
    </domain>
</virtual-mta-pool>
`)
	doms := w.provider("pp", 1, &fakeHost{})
	for i := range 10 {
		m := queuetest.Message("mta1", fmt.Sprintf("u%d@%s", i, doms[0]))
		if i%2 == 0 {
			m.Recipients[0].Pool = "quiet"
		}
		if _, err := w.q.Put(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	w.run()
	w.waitFor("every recipient delivered or discarded", func() bool { return w.q.Totals().Recipients == 0 })
	evs := byRcpt(t, w.outcomes())
	w.net.stat(func() {
		for i := range 10 {
			r := fmt.Sprintf("u%d@%s", i, doms[0])
			if i%2 == 0 {
				if w.net.got[r] != 0 {
					t.Errorf("%s (pool quiet, type discard) was sent", r)
				}
				checkDiscarded(t, evs[r])
			} else if w.net.got[r] != 1 || evs[r].Discarded {
				t.Errorf("%s (no pool) delivered %d times, discarded=%v; want one delivery", r, w.net.got[r], evs[r].Discarded)
			}
		}
	})
	if got := w.s.ProviderOf(queue.Key{VMTA: "mta1", Domain: doms[0]}); got != doms[0] {
		t.Errorf("%s routed to %q, want a queue of its own (type discard is never rolled up)", doms[0], got)
	}
}

// A reload to type discard discards what is queued at its next attempt,
// without another transaction; a reload back to smtp delivers again.
func TestDiscardReload(t *testing.T) {
	const smtpConf = `
<domain *>
    retry-after 1m
</domain>
`
	w := newWorld(t, smtpConf)
	var accept atomic.Bool
	doms := w.provider("rl", 1, &fakeHost{rcpt: func(string) (int, string) {
		if accept.Load() {
			return 0, ""
		}
		return 451, "4.7.1 try later"
	}})
	for i := range 5 {
		w.put("mta1", fmt.Sprintf("u%d@%s", i, doms[0]))
	}
	w.run()
	w.waitFor("the deferrals", func() bool { st := w.q.Totals(); return st.Deferred == 5 && st.Leased == 0 })
	var txns int
	w.net.stat(func() { txns = len(w.net.mails[w.hostIP("mx1.rl.example")]) })

	w.reload(smtpConf + `
<domain ` + doms[0] + `>
    type discard
</domain>
`)
	lookups := w.res.lookups(doms[0])
	w.clock.Advance(2 * time.Minute)
	w.waitFor("the queued mail discarded", func() bool { return w.q.Totals().Recipients == 0 })
	discarded := 0
	for _, ev := range w.outcomes() {
		if ev.Kind == queue.Delivered {
			checkDiscarded(t, ev)
			discarded++
		}
	}
	if discarded != 5 {
		t.Errorf("%d recipients discarded, want 5", discarded)
	}
	w.net.stat(func() {
		if n := len(w.net.mails[w.hostIP("mx1.rl.example")]); n != txns {
			t.Errorf("%d transactions after the reload to type discard, want none", n-txns)
		}
	})
	if n := w.res.lookups(doms[0]); n != lookups {
		t.Errorf("%d lookups of %s after the reload to type discard, want none", n-lookups, doms[0])
	}
	for _, p := range w.s.Providers() {
		for _, d := range p.Domains {
			if d == doms[0] {
				t.Errorf("the discarded domain still belongs to provider %s", p.Provider)
			}
		}
	}

	w.reload(smtpConf)
	accept.Store(true)
	w.put("mta1", "back@"+doms[0])
	w.waitFor("the delivery after the reload back", func() bool { return w.q.Totals().Recipients == 0 })
	w.net.stat(func() {
		if w.net.got["back@"+doms[0]] != 1 {
			t.Errorf("back@%s delivered %d times after the reload back to smtp, want once", doms[0], w.net.got["back@"+doms[0]])
		}
	})
	for _, ev := range w.outcomes() {
		if ev.Recipient.Address == "back@"+doms[0] && ev.Discarded {
			t.Errorf("back@%s discarded after the reload back to smtp", doms[0])
		}
	}
}

// Discarding takes no connection slot: with total-max-smtp-out's only
// connection held by a black hole, a type discard domain's mail is
// discarded all the same.
func TestDiscardTakesNoConnectionSlot(t *testing.T) {
	w := newWorld(t, `
total-max-smtp-out 1
<domain gone.test>
    type discard
</domain>
`)
	hole := w.provider("hole", 1, &fakeHost{blackHole: true})
	w.put("mta1", "stuck@"+hole[0])
	w.run()
	w.waitFor("the black hole to hold the only connection", func() bool {
		held := 0
		w.net.stat(func() { held = w.net.held[w.hostIP("mx1.hole.example")] })
		return held == 1 && w.s.Connections() == 1
	})
	for i := range 10 {
		w.put("mta1", fmt.Sprintf("u%d@gone.test", i))
	}
	w.waitFor("the discards", func() bool {
		return w.q.Stats(queue.Key{VMTA: "mta1", Domain: "gone.test"}).Total() == 0
	})
	n := 0
	for _, ev := range w.outcomes() {
		if strings.HasSuffix(ev.Recipient.Address, "@gone.test") {
			checkDiscarded(t, ev)
			n++
		}
	}
	if n != 10 {
		t.Errorf("%d outcomes for gone.test, want 10", n)
	}
	if w.res.lookups("gone.test") != 0 {
		t.Errorf("gone.test was looked up")
	}
}
