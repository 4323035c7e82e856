package queue

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	for _, e := range []Envelope{
		{},
		{Sender: "a@b", Received: time.Unix(0, 1_700_000_000_123456789), SourceIP: netip.MustParseAddr("10.1.2.3"),
			AuthUser: "u", JobID: "job", EnvID: "env", DSNRet: RetFull, Size: 1 << 40},
		{SourceIP: netip.MustParseAddr("2001:db8::1"), Received: time.Unix(-5, 0)},
	} {
		v := appendEnvelope(nil, &e, 7)
		got, n, err := decodeEnvelope(v)
		if err != nil || n != 7 {
			t.Fatalf("decode %+v: %v, n=%d", e, err, n)
		}
		if !got.Received.Equal(e.Received) {
			t.Fatalf("received %v, want %v", got.Received, e.Received)
		}
		got.Received = e.Received
		if got != e {
			t.Fatalf("got %+v, want %+v", got, e)
		}
		h, err := decodeEnvelopeHead(v)
		if err != nil || string(h.job) != e.JobID || h.size != uint64(e.Size) || h.nrcpt != 7 {
			t.Fatalf("head %+v, %v", h, err)
		}
	}
}

func TestRecipientRoundTrip(t *testing.T) {
	r := RecipientState{
		N:           3,
		Recipient:   Recipient{Address: "x@y.example", Domain: "y.example", VMTA: "v", Pool: "p", ORcpt: "rfc822;x@y.example", Notify: NotifySuccess | NotifyFailure},
		Attempts:    4,
		NextAttempt: time.Unix(0, 1_800_000_000_000000001),
		LastAttempt: time.Unix(0, 1_799_000_000_000000000),
		LastReply:   "451 4.7.1 greylisted",
	}
	v := appendRecipient(nil, &r)
	got, err := decodeRecipient(v, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !got.NextAttempt.Equal(r.NextAttempt) || !got.LastAttempt.Equal(r.LastAttempt) {
		t.Fatalf("times %v %v", got.NextAttempt, got.LastAttempt)
	}
	got.NextAttempt, got.LastAttempt = r.NextAttempt, r.LastAttempt
	if got != r {
		t.Fatalf("got %+v\nwant %+v", got, r)
	}
	h, err := decodeRecipientHead(v)
	if err != nil || h.next != r.NextAttempt.UnixNano() || string(h.domain) != "y.example" || string(h.vmta) != "v" {
		t.Fatalf("head %+v, %v", h, err)
	}
	// Every truncation is an error, never a panic.
	for i := range len(v) {
		if _, err := decodeRecipient(v[:i], 0); err == nil {
			t.Fatalf("truncated at %d decoded", i)
		}
	}
	v[0] = 9
	if _, err := decodeRecipient(v, 0); err == nil {
		t.Fatal("unknown version decoded")
	}
}

func TestKeys(t *testing.T) {
	id := ID(0x0102030405060708)
	k := recipientKey(id, 258)
	gid, n, ok := parseMessageKey(k)
	if !ok || gid != id || n != 258 || string(k[:2]) != "m/" || k[10] != '/' {
		t.Fatalf("recipient key %q -> %v %d %v", k, gid, n, ok)
	}
	if g, n, ok := parseMessageKey(envelopeKey(id)); !ok || g != id || n != -1 {
		t.Fatal("envelope key")
	}
	if _, _, ok := parseMessageKey(bodyKey(id)); ok {
		t.Fatal("body key parsed as a message key")
	}
	// An envelope sorts right before its recipients, recipients by index,
	// and all of it inside messageBounds.
	lo, hi := messageBounds(1)
	keys := []string{string(envelopeKey(1)), string(recipientKey(1, 2)), string(recipientKey(1, 300)), string(envelopeKey(2))}
	if !slices.IsSorted(keys) {
		t.Fatal("keys out of order")
	}
	if string(lo) > keys[0] || keys[2] >= string(hi) || keys[3] < string(hi) {
		t.Fatal("messageBounds wrong")
	}
}

func FuzzDecode(f *testing.F) {
	e := Envelope{Sender: "a@b", JobID: "j", SourceIP: netip.MustParseAddr("10.0.0.1")}
	f.Add(appendEnvelope(nil, &e, 2))
	f.Add(appendRecipient(nil, &RecipientState{Recipient: Recipient{Address: "x@y", Domain: "y"}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = decodeEnvelope(b)
		_, _ = decodeEnvelopeHead(b)
		_, _ = decodeRecipient(b, 0)
		_, _ = decodeRecipientHead(b)
	})
}

// TestDequeModel checks the ring buffer against a slice.
func TestDequeModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	msgs := make([]*msgInfo, 1000)
	for i := range msgs {
		msgs[i] = &msgInfo{id: ID(i)}
	}
	var d deque
	var model []ref
	for step := range 20000 {
		switch op := rng.IntN(10); {
		case op < 5:
			r := ref{m: msgs[rng.IntN(len(msgs))], n: uint32(step)}
			d.pushBack(r)
			model = append(model, r)
		case op < 6:
			r := ref{m: msgs[rng.IntN(len(msgs))], n: uint32(step)}
			d.pushFront(r)
			model = append([]ref{r}, model...)
		case op < 9:
			if len(model) > 0 {
				if got := d.popFront(); got != model[0] {
					t.Fatalf("step %d: pop %v, want %v", step, got, model[0])
				}
				model = model[1:]
			}
		default:
			odd := func(r ref) bool { return r.m.id%2 == 1 || rng.IntN(3) == 0 }
			var keep []bool
			for range model {
				keep = append(keep, false)
			}
			i := 0
			d.filter(func(r ref) bool {
				keep[i] = odd(r)
				i++
				return keep[i-1]
			})
			var nm []ref
			for j, r := range model {
				if keep[j] {
					nm = append(nm, r)
				}
			}
			model = nm
		}
		if d.len() != len(model) {
			t.Fatalf("step %d: len %d, want %d", step, d.len(), len(model))
		}
	}
	for i, r := range model {
		if d.at(i) != r {
			t.Fatalf("at(%d) = %v, want %v", i, d.at(i), r)
		}
	}
}

// TestHeapsModel checks the deferral heap and the due heap of keys.
func TestHeapsModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	keys := make([]*keyQueue, 20)
	for i := range keys {
		keys[i] = &keyQueue{dueIdx: -1}
	}
	var due dueHeap
	for step := range 20000 {
		k := keys[rng.IntN(len(keys))]
		switch op := rng.IntN(10); {
		case op < 6:
			k.deferred.push(deferral{at: rng.Int64N(1000), ref: ref{m: &msgInfo{id: ID(step)}}})
		case op < 9:
			if len(k.deferred) > 0 {
				min := slices.MinFunc(k.deferred, func(a, b deferral) int {
					if a.less(b) {
						return -1
					}
					return 1
				})
				if got := k.deferred.pop(); got != min {
					t.Fatalf("pop %v, want %v", got, min)
				}
			}
		default:
			k.deferred.filter(func(d deferral) bool { return d.at%3 != 0 })
		}
		due.fix(k)
		// The due heap's top is the key with the earliest deferral.
		var best *keyQueue
		for _, kk := range keys {
			if len(kk.deferred) > 0 && (best == nil || kk.deferred[0].less(best.deferred[0])) {
				best = kk
			}
			if (len(kk.deferred) > 0) != (kk.dueIdx >= 0) {
				t.Fatalf("step %d: key in due heap = %v with %d deferrals", step, kk.dueIdx >= 0, len(kk.deferred))
			}
		}
		if best != nil && due[0] != best {
			t.Fatalf("step %d: due top is not the earliest key", step)
		}
	}
}
