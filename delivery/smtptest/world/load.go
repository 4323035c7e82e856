package world

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
)

// Fate is what should become of a recipient of a generated message.
type Fate int

const (
	// Deliverable recipients are accepted by their domain's hosts,
	// perhaps only after deferrals (rate limits, greylisting, caps).
	Deliverable Fate = iota
	// Bounce recipients are refused for good: an unknown user (550 5.1.1)
	// or a nonexistent domain (NXDOMAIN). Their sender should get a bounce
	// report.
	Bounce
	// Undeliverable recipients are at domains whose every host is dead or
	// a black hole: they stay queued for the whole benchmark window.
	Undeliverable
)

// String returns "deliverable", "bounce" or "undeliverable".
func (f Fate) String() string {
	switch f {
	case Deliverable:
		return "deliverable"
	case Bounce:
		return "bounce"
	case Undeliverable:
		return "undeliverable"
	}
	return fmt.Sprintf("Fate(%d)", int(f))
}

// MarshalText makes a Fate read as its name in JSON.
func (f Fate) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// Recipient is one recipient of a generated message.
type Recipient struct {
	// Addr is the address; Domain and Provider where it goes.
	Addr     string
	Domain   string
	Provider string
	// Fate is what should become of it.
	Fate Fate
}

// Message is one generated message: one SMTP transaction.
type Message struct {
	// Seq numbers the messages of a load from 0.
	Seq int
	// ID is the Message-ID header's value, angle brackets included; unique
	// within the load.
	ID string
	// From is the envelope sender (and From header).
	From string
	// To are the recipients, all of one domain.
	To []Recipient
	// Size is the approximate size of Data in bytes (LoadSize); it may be
	// changed before calling Data.
	Size int
}

// LoadSize is the size of generated messages.
const LoadSize = 4096

// Data is the message: a header with its Message-ID and a plain-text body
// padding it to about Size bytes, with CRLF line ends and no line starting
// with a dot. The same message always gives the same bytes.
func (m *Message) Data() []byte {
	var b bytes.Buffer
	b.Grow(m.Size + 256)
	to := make([]string, len(m.To))
	for i, r := range m.To {
		to[i] = r.Addr
	}
	fmt.Fprintf(&b, "From: <%s>\r\nTo: %s\r\nSubject: world load message %d\r\n", m.From, strings.Join(to, ", "), m.Seq)
	fmt.Fprintf(&b, "Date: Mon, 02 Mar 2026 09:00:00 +0000\r\nMessage-ID: %s\r\n", m.ID)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	const filler = "The quick brown fox jumps over the lazy dog while the mail queue drains. "
	for line := 0; b.Len() < m.Size; line++ {
		fmt.Fprintf(&b, "%05d %s\r\n", line, filler)
	}
	return b.Bytes()
}

// NewLoad generates n messages for the world of spec, the same for the
// same spec (its Seed) and n. Providers are chosen by Weight (providers
// with none get nothing; if no provider has a weight, every one but the
// senders weighs the same), and a domain of the provider uniformly. About
// 85% of messages have one recipient, the others two to five of the same
// domain; about 2% of recipients are unknown users (local part "nouser…").
// The sender is "bench@" the first domain of the first Sender provider.
func NewLoad(spec Spec, n int) ([]Message, error) {
	lay, err := spec.expand()
	if err != nil {
		return nil, err
	}
	return generate(&spec, lay, n), nil
}

// generate is NewLoad for an expanded spec.
func generate(spec *Spec, lay *layout, n int) []Message {
	rng := rand.New(rand.NewPCG(uint64(spec.Seed), 0x776f726c64))
	from, senderDomain := "bench@world.test", "world.test"
	var weights []float64
	total := 0.0
	for i, p := range spec.Providers {
		w := p.Weight
		if p.Sender {
			w = 0
			if senderDomain == "world.test" {
				senderDomain = lay.domains[lay.provDomains[i][0]].Name
				from = "bench@" + senderDomain
			}
		}
		weights = append(weights, w)
		total += w
	}
	if total == 0 {
		for i, p := range spec.Providers {
			if !p.Sender {
				weights[i] = 1
				total++
			}
		}
	}
	if total == 0 {
		return nil
	}
	reachable := make([]bool, len(spec.Providers))
	for i, p := range spec.Providers {
		hosts := p.Hosts
		if len(hosts) == 0 {
			hosts = []Host{{}}
		}
		for _, h := range hosts {
			reachable[i] = reachable[i] || h.Kind == Normal
		}
	}
	msgs := make([]Message, 0, n)
	for seq := range n {
		x := rng.Float64() * total
		pi := -1
		for i, w := range weights {
			if w <= 0 {
				continue
			}
			pi = i // the last weighted one if rounding leaves x past the end
			if x < w {
				break
			}
			x -= w
		}
		doms := lay.provDomains[pi]
		d := lay.domains[doms[rng.IntN(len(doms))]]
		count := 1
		if rng.Float64() >= 0.85 {
			count = 2 + rng.IntN(4)
		}
		m := Message{Seq: seq, ID: fmt.Sprintf("<w%d.%07d@%s>", spec.Seed, seq, senderDomain), From: from, Size: LoadSize}
		for k := range count {
			local := fmt.Sprintf("u%07d.%d", seq, k)
			nouser := rng.Float64() < 0.02
			if nouser {
				local = "nouser" + local[1:]
			}
			r := Recipient{Addr: local + "@" + d.Name, Domain: d.Name, Provider: d.Provider}
			switch {
			case d.Nonexistent:
				r.Fate = Bounce
			case !reachable[pi]:
				r.Fate = Undeliverable
			case nouser:
				r.Fate = Bounce
			}
			m.To = append(m.To, r)
		}
		msgs = append(msgs, m)
	}
	return msgs
}
