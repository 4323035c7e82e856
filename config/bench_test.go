package config

import (
	"fmt"
	"strings"
	"testing"
)

// largeConfig generates a config of the size a large sender runs: vmtas
// VMTAs, each with its own source IP (10.x.y.z) and host-name, pools of ten
// of them, and domains <domain> blocks, half of them global and half in
// VMTAs, with a few directives each. It returns the text and its line count.
func largeConfig(vmtas, domains int) (string, int) {
	var b strings.Builder
	b.WriteString("smtp-listener 0/0:25\nsmtp-listener 0/0:587 source=submission\nhost-name mta.example.com\n")
	b.WriteString("domain-macro tld com, net, org\n<source submission>\n    require-auth yes\n    allow-unencrypted-plain-auth yes\n</source>\n")
	b.WriteString("<source 10/8>\n    always-allow-relaying yes\n    process-x-virtual-mta yes\n    default-virtual-mta pool000\n</source>\n")
	perVMTA := domains / 2 / vmtas
	for i := range vmtas {
		fmt.Fprintf(&b, "<virtual-mta mta%03d>\n", i)
		ip := i + 1
		fmt.Fprintf(&b, "    smtp-source-host 10.%d.%d.%d mta%03d.example.com\n", ip>>16&255, ip>>8&255, ip&255, i)
		fmt.Fprintf(&b, "    host-name mta%03d.example.com\n", i)
		b.WriteString("    max-smtp-out 50\n")
		for j := range perVMTA {
			fmt.Fprintf(&b, "    <domain d%04d.example>\n        max-smtp-out %d\n    </domain>\n", (i*perVMTA+j)%(domains/2), 1+j)
		}
		b.WriteString("</virtual-mta>\n")
	}
	for p := 0; p*10 < vmtas; p++ {
		fmt.Fprintf(&b, "<virtual-mta-pool pool%03d>\n", p)
		for m := p * 10; m < min(vmtas, p*10+10); m++ {
			fmt.Fprintf(&b, "    virtual-mta mta%03d\n", m)
		}
		b.WriteString("</virtual-mta-pool>\n")
	}
	for d := range domains - perVMTA*vmtas {
		fmt.Fprintf(&b, "<domain d%04d.example>\n    max-smtp-out %d\n    retry-after 5m,15m,1h\n    max-msg-rate %d/h\n</domain>\n", d, 1+d%20, 100+d)
	}
	s := b.String()
	return s, strings.Count(s, "\n")
}

// BenchmarkParseLarge parses a generated config of about 10,000 lines with
// 500 VMTAs and 2,000 domain blocks.
func BenchmarkParseLarge(b *testing.B) {
	src, lines := largeConfig(500, 2000)
	data := []byte(src)
	opts := noFiles()
	// Check once that the config is valid and as large as announced.
	cfg, err := Parse("large.conf", data, opts)
	if err != nil {
		b.Fatal(err)
	}
	n := len(cfg.Domains)
	for _, v := range cfg.VMTAs {
		n += len(v.Domains)
	}
	if len(cfg.VMTAs) != 500 || n != 2000 {
		b.Fatalf("%d VMTAs, %d domain blocks", len(cfg.VMTAs), n)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("large.conf", data, opts); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(lines), "lines")
	b.ReportMetric(float64(lines)*float64(b.N)/b.Elapsed().Seconds(), "lines/s")
}

// BenchmarkParseSmall measures the fixed cost of a Parse: a five-line file.
func BenchmarkParseSmall(b *testing.B) {
	data := []byte("smtp-listener 127.0.0.1:2525\n<domain *>\n    max-smtp-out 5\n</domain>\n")
	opts := noFiles()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("small.conf", data, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLargeConfigParses keeps the benchmark's generator honest in normal
// test runs, on a smaller size.
func TestLargeConfigParses(t *testing.T) {
	src, _ := largeConfig(50, 200)
	cfg := parseOK(t, "large.conf", src, noFiles())
	if len(cfg.VMTAs) != 50 || len(cfg.Pools) != 5 || len(cfg.Domains) != 100 || len(cfg.VMTAs[0].Domains) != 2 {
		t.Errorf("%d VMTAs, %d pools, %d global domains", len(cfg.VMTAs), len(cfg.Pools), len(cfg.Domains))
	}
}
