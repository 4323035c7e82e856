package delivery_test

import (
	"slices"
	"testing"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// Internationalised recipients through the whole scheduler, to a sink
// without SMTPUTF8: the U-label domain is routed and looked up by its
// A-labels and an ASCII local part there is delivered to the A-label
// address; a non-ASCII local part bounces with Tern's 553 5.6.7 without
// being sent; a domain that is no valid IDN bounces with 5.1.2 without a
// lookup.
func TestInternationalisedRecipients(t *testing.T) {
	t.Parallel()
	sink := startSink(t, mx1, 0, smtptest.Options{})
	h := newHarness(t, baseConfig(sink.Port(), ""), dnstest.Zones{
		"xn--bcher-kva.test":    {MX: []dnstest.MX{{Pref: 10, Host: "mx.xn--bcher-kva.test"}}},
		"mx.xn--bcher-kva.test": {A: []string{mx1}},
	})
	h.run()
	h.put("mta1", "a@bücher.test", "jörg@bücher.test")
	h.put("mta1", "x@b\ufffdcher.test")
	for _, r := range []string{"a@bücher.test", "jörg@bücher.test", "x@b\ufffdcher.test"} {
		h.waitOutcome(r, 1)
	}
	msgs := sink.Messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].Rcpts, []string{"a@xn--bcher-kva.test"}) {
		t.Errorf("sink got %v, want only a@xn--bcher-kva.test", rcptsOf(msgs))
	}
	checkAttempt(t, h, "a@bücher.test", "delivered", "250 ")
	checkAttempt(t, h, "jörg@bücher.test", "bounced", "553 5.6.7", "does not support SMTPUTF8")
	checkAttempt(t, h, "x@b\ufffdcher.test", "bounced", "5.1.2", "not a valid internationalised domain name")
}
