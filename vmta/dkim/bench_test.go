package dkim_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ternmta/tern/vmta/dkim"
)

// benchMessage is a typical bulk message: the usual headers and a 10 KB
// body.
func benchMessage(from string) []byte {
	msg := message(from)
	return append(msg, []byte(strings.Repeat(crlf("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"), 140))...)
}

// BenchmarkSign measures Sign alone (one goroutine) for each key type, in
// signatures per second.
func BenchmarkSign(b *testing.B) {
	reg := build(b, conf)
	for _, c := range []struct{ name, from string }{
		{"rsa2048", "a@example.com"},
		{"ed25519", "a@example.org"},
	} {
		b.Run(c.name, func(b *testing.B) {
			key, ok := dkim.ChooseKey(reg, "mta2", "", c.from[strings.IndexByte(c.from, '@')+1:])
			if !ok {
				b.Fatal("no key")
			}
			msg := benchMessage(c.from)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := dkim.Sign(msg, key, dkim.Options{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
		})
	}
}

// BenchmarkSignFor is the listener's call: policy, From parsing, key choice
// and the already-signed check around Sign, on all CPUs.
func BenchmarkSignFor(b *testing.B) {
	reg := build(b, conf)
	for _, c := range []struct{ name, from string }{
		{"rsa2048", "a@example.com"},
		{"ed25519", "a@example.org"},
	} {
		b.Run(c.name, func(b *testing.B) {
			msg := benchMessage(c.from)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					out, key, err := dkim.SignFor(reg, "mta2", "", "dest.example", msg, dkim.Options{})
					if err != nil || key == nil || !bytes.HasSuffix(out, msg) {
						b.Fatal(key, err)
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
		})
	}
}
