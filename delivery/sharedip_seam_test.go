package delivery

import (
	"fmt"
	"testing"
	"time"
)

// sharedConf adds mta3, which sends from mta1's address 127.0.0.2 with a
// name of its own.
const sharedConf = `
<virtual-mta mta3>
    smtp-source-host 127.0.0.2 mta3.tern.test
</virtual-mta>
`

// source-ip-max-smtp-out counts the connections from one address to a
// provider over every VMTA sending from it, as the provider counts them:
// two VMTAs on 127.0.0.2 hold 2 sessions together, not 2 each, while each
// could open 5.
func TestSourceIPMaxSMTPOutSharedByVMTAs(t *testing.T) {
	w := newWorld(t, sharedConf+`
<domain *>
    max-smtp-out 5
    adaptive-smtp-out no
    max-rcpt-per-transaction 1
    source-ip-max-smtp-out 2
</domain>
`)
	doms := w.provider("big", 4, &fakeHost{delay: time.Second})
	for i := range 40 {
		w.put("mta1", fmt.Sprintf("a%d@%s", i, doms[i%len(doms)]))
		w.put("mta3", fmt.Sprintf("b%d@%s", i, doms[i%len(doms)]))
	}
	w.run()
	w.drive("every delivery", 100*time.Millisecond, func() bool { return w.q.Totals().Recipients == 0 })
	w.net.stat(func() {
		if p := w.net.peak["127.0.0.2 big"]; p != 2 {
			t.Errorf("peak of %d sessions from 127.0.0.2 over both VMTAs, want source-ip-max-smtp-out 2", p)
		}
		if n := len(w.net.got); n != 80 {
			t.Errorf("%d recipients delivered, want 80", n)
		}
	})
}

// source-ip-max-msg-rate is one bucket per (address, provider) over every
// VMTA sending from the address: 20 recipients from two VMTAs at 60/m
// take 19 seconds or more, not half as long.
func TestSourceIPMaxMsgRateSharedByVMTAs(t *testing.T) {
	w := newWorld(t, sharedConf+`
<domain *>
    source-ip-max-msg-rate 60/m
    max-rcpt-per-transaction 1
</domain>
`)
	doms := w.provider("rated", 2, &fakeHost{})
	for i := range 10 {
		w.put("mta1", fmt.Sprintf("a%d@%s", i, doms[0]))
		w.put("mta3", fmt.Sprintf("b%d@%s", i, doms[1]))
	}
	start := w.clock.Now()
	w.run()
	w.drive("every delivery", 250*time.Millisecond, func() bool { return w.q.Totals().Recipients == 0 })
	if took := w.clock.Now().Sub(start); took < 19*time.Second {
		t.Errorf("20 recipients from 127.0.0.2 at 60/m took %s, want at least 19s", took)
	}
	w.net.stat(func() {
		if n := len(w.net.got); n != 20 {
			t.Errorf("%d recipients delivered, want 20", n)
		}
	})
}
