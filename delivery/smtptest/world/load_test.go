package world_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/ternmta/tern/delivery/smtptest/world"
)

// The load is the same for the same spec, spread by weight, with about 2%
// unknown users and fates that follow the providers.
func TestLoad(t *testing.T) {
	spec := world.BenchSpec()
	const n = 20000
	a, err := world.NewLoad(spec, n)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := world.NewLoad(spec, n)
	if len(a) != n || !slices.EqualFunc(a, b, func(x, y world.Message) bool {
		return x.ID == y.ID && slices.Equal(x.To, y.To)
	}) {
		t.Fatal("two loads of the same spec differ")
	}
	ids := map[string]bool{}
	perProvider := map[string]int{}
	fates := map[world.Fate]int{}
	rcpts, nouser, multi := 0, 0, 0
	for _, m := range a {
		if ids[m.ID] {
			t.Fatalf("Message-ID %s twice", m.ID)
		}
		ids[m.ID] = true
		if m.From != world.BenchSender {
			t.Fatalf("sender %s", m.From)
		}
		if len(m.To) < 1 || len(m.To) > 5 {
			t.Fatalf("%d recipients", len(m.To))
		}
		if len(m.To) > 1 {
			multi++
		}
		for _, r := range m.To {
			if r.Domain != m.To[0].Domain {
				t.Fatalf("message %d mixes domains", m.Seq)
			}
			rcpts++
			perProvider[r.Provider]++
			fates[r.Fate]++
			if bytes.HasPrefix([]byte(r.Addr), []byte("nouser")) {
				nouser++
				if r.Fate == world.Deliverable {
					t.Errorf("%s is deliverable", r.Addr)
				}
			}
			switch r.Provider {
			case "nxdomain":
				if r.Fate != world.Bounce {
					t.Errorf("%s: %v", r.Addr, r.Fate)
				}
			case "deadmx", "blackhole":
				if r.Fate != world.Undeliverable {
					t.Errorf("%s: %v", r.Addr, r.Fate)
				}
			case "sender":
				t.Errorf("load to the sender domain: %s", r.Addr)
			}
		}
	}
	share := func(k int) float64 { return float64(k) / float64(rcpts) }
	if s := share(nouser); s < 0.015 || s > 0.025 {
		t.Errorf("unknown users %.3f, want about 0.02", s)
	}
	if s := share(perProvider["nxdomain"]); s < 0.005 || s > 0.015 {
		t.Errorf("nonexistent domains %.3f, want about 0.01", s)
	}
	if s := share(perProvider["bigmail"]); s < 0.35 || s > 0.45 {
		t.Errorf("bigmail %.3f, want about 0.40", s)
	}
	if s := float64(multi) / n; s < 0.12 || s > 0.18 {
		t.Errorf("multi-recipient messages %.3f, want about 0.15", s)
	}
	if fates[world.Undeliverable] == 0 || fates[world.Bounce] == 0 {
		t.Errorf("fates %v", fates)
	}
	data := a[0].Data()
	if len(data) < world.LoadSize || len(data) > world.LoadSize+200 || !bytes.Contains(data, []byte("Message-ID: "+a[0].ID+"\r\n")) {
		t.Errorf("data of %d bytes:\n%.300s", len(data), data)
	}
	if !bytes.Equal(data, a[0].Data()) || bytes.Contains(data, []byte("\n.")) {
		t.Error("data not stable or has a line starting with a dot")
	}
}

// The benchmark world has at least 2,000 domains with the shape the
// benchmark relies on.
func TestBenchSpec(t *testing.T) {
	spec := world.BenchSpec()
	spec.Port = 0
	spec.DNSAddr = ""
	w := world.StartT(t, spec)
	if n := len(w.Domains()); n < 2000 {
		t.Errorf("%d domains", n)
	}
	kinds := map[world.HostKind]int{}
	for _, h := range w.Hosts() {
		kinds[h.Kind]++
	}
	if kinds[world.Dead] != 50 || kinds[world.BlackHole] != 20 {
		t.Errorf("host kinds %v", kinds)
	}
	if got := w.ProviderOf("bench-sender.test"); got != "sender" {
		t.Errorf("sender domain served by %q", got)
	}
}
