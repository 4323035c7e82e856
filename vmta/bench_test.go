package vmta_test

import (
	"net/netip"
	"testing"

	"github.com/ternmta/tern/vmta"
)

// BenchmarkPolicy measures a cached policy lookup, as a delivery runner
// makes it: a VMTA selected through a pool, a subdomain that matches blocks
// at every level.
func BenchmarkPolicy(b *testing.B) {
	r := load(b, "precedence.conf")
	r.Policy("mta1", "pool1", "mx.a.sub.example.com") // fill the cache
	b.ReportAllocs()
	for b.Loop() {
		if r.Policy("mta1", "pool1", "mx.a.sub.example.com") == nil {
			b.Fatal("nil policy")
		}
	}
}

// BenchmarkPolicyParallel is BenchmarkPolicy from all CPUs at once.
func BenchmarkPolicyParallel(b *testing.B) {
	r := load(b, "precedence.conf")
	r.Policy("mta1", "pool1", "mx.a.sub.example.com")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Policy("mta1", "pool1", "mx.a.sub.example.com")
		}
	})
}

// BenchmarkSelect measures selection for a message that falls through the
// header (not present) and the pattern list (no rule matches) to the
// source's default pool: the longest common path.
func BenchmarkSelect(b *testing.B) {
	r := build(b, selectConf)
	in := vmta.SelectInput{
		Source:  r.Source(netip.MustParseAddr("203.0.113.9")),
		Message: vmta.MessageInfo{MailFrom: "", RcptTo: []string{"a@yahoo.com", "b@hotmail.com"}},
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Select(in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSelectHeader measures selection by X-Virtual-MTA naming a pool.
func BenchmarkSelectHeader(b *testing.B) {
	r := build(b, selectConf)
	in := vmta.SelectInput{Header: "pool1", HasHeader: true, Source: r.Source(netip.MustParseAddr("203.0.113.9"))}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Select(in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSource measures the per-session source merge.
func BenchmarkSource(b *testing.B) {
	r := build(b, sourcesConf)
	ip := netip.MustParseAddr("10.1.2.3")
	b.ReportAllocs()
	for b.Loop() {
		r.Source(ip, "bulk")
	}
}
