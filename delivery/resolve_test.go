package delivery

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ternmta/tern/delivery/dnstest"
)

// resolveWait bounds anything in these tests that should happen at once.
const resolveWait = 20 * time.Second

// zonesOf returns zones in which resolve.test has one MX, mx<n>.resolve.test,
// with address 192.0.2.<n>, and an A record of its own, 198.51.100.<n>: two
// servers built with different n answer the same questions differently. The
// TTL is an hour, so only a dropped cache explains a changed answer.
func zonesOf(n int) dnstest.Zones {
	mx := fmt.Sprintf("mx%d.resolve.test", n)
	return dnstest.Zones{
		"resolve.test": {
			MX:  []dnstest.MX{{Pref: uint16(n), Host: mx}},
			A:   []string{fmt.Sprintf("198.51.100.%d", n)},
			TTL: 3600,
		},
		mx: {A: []string{fmt.Sprintf("192.0.2.%d", n)}, TTL: 3600},
	}
}

// answer is what one server says about resolve.test: its MX host and its
// address.
type answer struct {
	mx   string
	addr string
}

func wantAnswer(n int) answer {
	return answer{fmt.Sprintf("mx%d.resolve.test.", n), fmt.Sprintf("198.51.100.%d", n)}
}

// lookup asks r for resolve.test's MX and address.
func lookup(r *DNSResolver) (answer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), resolveWait)
	defer cancel()
	mxs, err := r.LookupMX(ctx, "resolve.test")
	if err != nil {
		return answer{}, err
	}
	addrs, err := r.LookupAddr(ctx, "resolve.test")
	if err != nil {
		return answer{}, err
	}
	if len(mxs) != 1 || len(addrs) != 1 {
		return answer{}, fmt.Errorf("got MX %v and addresses %v, want one of each", mxs, addrs)
	}
	return answer{mxs[0].Host, addrs[0].String()}, nil
}

func mustLookup(t *testing.T, r *DNSResolver, want answer) {
	t.Helper()
	got, err := lookup(r)
	if err != nil {
		t.Fatalf("lookup: %v", err)
	}
	if got != want {
		t.Fatalf("lookup = %+v, want %+v", got, want)
	}
}

// asked returns how many questions about resolve.test s has received (MX, A
// and AAAA).
func asked(s *dnstest.Server) int {
	return s.Queries("resolve.test", dns.TypeMX) + s.Queries("resolve.test", dns.TypeA) +
		s.Queries("resolve.test", dns.TypeAAAA)
}

// newTestResolver returns a resolver for servers whose clock stands still,
// so that no cached answer expires during a test.
func newTestResolver(t *testing.T, servers ...string) *DNSResolver {
	t.Helper()
	r, err := NewDNSResolver(servers)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.Now = func() time.Time { return now }
	return r
}

// A new server list applies to the next lookup, although the old server's
// answer is cached for an hour.
func TestSetServersDropsCache(t *testing.T) {
	t.Parallel()
	s1 := dnstest.Start(t, zonesOf(1))
	s2 := dnstest.Start(t, zonesOf(2))
	r := newTestResolver(t, s1.Addr())

	mustLookup(t, r, wantAnswer(1))
	mustLookup(t, r, wantAnswer(1))
	if n := asked(s1); n != 3 {
		t.Fatalf("server 1 asked %d questions, want 3 (MX, A, AAAA once: the second lookup is cached)", n)
	}

	changed, err := r.SetServers([]string{s2.Addr()})
	if err != nil || !changed {
		t.Fatalf("SetServers(server 2) = %v, %v; want true, nil", changed, err)
	}
	if got := r.Servers(); !slices.Equal(got, []string{s2.Addr()}) {
		t.Errorf("Servers() = %v, want [%s]", got, s2.Addr())
	}
	mustLookup(t, r, wantAnswer(2))
	if n1, n2 := asked(s1), asked(s2); n1 != 3 || n2 != 3 {
		t.Errorf("servers asked %d and %d questions, want 3 and 3", n1, n2)
	}

	// And back: server 1's earlier answers were dropped, not kept aside.
	if changed, err := r.SetServers([]string{s1.Addr()}); err != nil || !changed {
		t.Fatalf("SetServers(server 1) = %v, %v; want true, nil", changed, err)
	}
	mustLookup(t, r, wantAnswer(1))
	if n := asked(s1); n != 6 {
		t.Errorf("server 1 asked %d questions, want 6", n)
	}
}

// The same list keeps the cache: with its server stopped, the cached
// answer is still served. (Other spellings of one list are
// TestServerListNormalised's.)
func TestSetServersSameListKeepsCache(t *testing.T) {
	t.Parallel()
	s1 := dnstest.Start(t, zonesOf(1))
	r := newTestResolver(t, s1.Addr())
	mustLookup(t, r, wantAnswer(1))

	changed, err := r.SetServers([]string{s1.Addr()})
	if err != nil || changed {
		t.Fatalf("SetServers(same list) = %v, %v; want false, nil", changed, err)
	}

	s1.Stop()
	mustLookup(t, r, wantAnswer(1))
	// The server really is gone: what is not cached fails.
	ctx, cancel := context.WithTimeout(context.Background(), resolveWait)
	defer cancel()
	if _, err := r.LookupMX(ctx, "uncached.resolve.test"); err == nil {
		t.Error("lookup of an uncached name succeeded with the server stopped")
	}
}

// An invalid list is refused whole: the resolver keeps its servers and
// its cache.
func TestSetServersInvalidKeepsOld(t *testing.T) {
	t.Parallel()
	s1 := dnstest.Start(t, zonesOf(1))
	s2 := dnstest.Start(t, zonesOf(2))
	r := newTestResolver(t, s1.Addr())
	mustLookup(t, r, wantAnswer(1))

	for _, list := range [][]string{
		{s2.Addr(), "dns.example"},
		{"dns.example:53"},
		{s2.Addr(), ""},
		{"127.0.0.1:0"},
	} {
		changed, err := r.SetServers(list)
		if err == nil || changed {
			t.Errorf("SetServers(%q) = %v, %v; want false and an error", list, changed, err)
		}
	}
	if got := r.Servers(); !slices.Equal(got, []string{s1.Addr()}) {
		t.Errorf("Servers() = %v, want [%s]", got, s1.Addr())
	}

	mustLookup(t, r, wantAnswer(1))
	if n := asked(s1); n != 3 {
		t.Errorf("server 1 asked %d questions, want 3 (the cache was kept)", n)
	}
	// A name not cached yet is still asked of server 1.
	s1.Set("new.resolve.test", dnstest.Records{A: []string{"192.0.2.99"}})
	ctx, cancel := context.WithTimeout(context.Background(), resolveWait)
	defer cancel()
	addrs, err := r.LookupAddr(ctx, "new.resolve.test")
	if err != nil || len(addrs) != 1 || addrs[0].String() != "192.0.2.99" {
		t.Errorf("LookupAddr(new.resolve.test) = %v, %v; want [192.0.2.99]", addrs, err)
	}
	if n := s1.Queries("new.resolve.test", dns.TypeA); n != 1 {
		t.Errorf("server 1 asked %d times for new.resolve.test, want 1", n)
	}
	if n := s2.TotalQueries(); n != 0 {
		t.Errorf("server 2 asked %d questions, want none", n)
	}
}

// The constructor and SetServers read a list the same way.
func TestServerListNormalised(t *testing.T) {
	t.Parallel()
	good := []struct{ in, want string }{
		{"192.0.2.53", "192.0.2.53:53"},
		{"192.0.2.53:5353", "192.0.2.53:5353"},
		{"2001:db8::53", "[2001:db8::53]:53"},
		{"[2001:db8:0::53]:54", "[2001:db8::53]:54"},
		{"fe80::1%eth0", "[fe80::1%eth0]:53"},
	}
	var in, want []string
	for _, g := range good {
		in = append(in, g.in)
		want = append(want, g.want)
	}
	r, err := NewDNSResolver(in)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Servers(); !slices.Equal(got, want) {
		t.Errorf("NewDNSResolver(%q).Servers() = %q, want %q", in, got, want)
	}
	// The same list spelt as Servers returns it is no change.
	if changed, err := r.SetServers(want); err != nil || changed {
		t.Errorf("SetServers(%q) = %v, %v; want false, nil", want, changed, err)
	}
	// Order matters: servers are tried in order.
	rev := slices.Clone(want)
	slices.Reverse(rev)
	if changed, err := r.SetServers(rev); err != nil || !changed {
		t.Errorf("SetServers(%q) = %v, %v; want true, nil", rev, changed, err)
	}

	for _, bad := range []string{"dns.example", "dns.example:53", "", "192.0.2.53:0", "192.0.2.53:65536", "[2001:db8::53]", "192.0.2.53:dns"} {
		if _, err := NewDNSResolver([]string{bad}); err == nil {
			t.Errorf("NewDNSResolver([%q]) succeeded", bad)
		}
	}
}

// With no servers, the resolv.conf is read at construction and read again
// by each SetServers, which keeps the old list when the file is unusable.
func TestServersFromResolvConf(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "resolv.conf")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("# generated\nsearch example.net\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions ndots:2\n")
	r, err := newDNSResolver(nil, path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.53:53", "[2001:db8::53]:53"}
	if got := r.Servers(); !slices.Equal(got, want) {
		t.Fatalf("Servers() = %q, want %q", got, want)
	}

	if changed, err := r.SetServers(nil); err != nil || changed {
		t.Errorf("SetServers(nil), resolv.conf unchanged = %v, %v; want false, nil", changed, err)
	}

	write("nameserver 192.0.2.54\n")
	if changed, err := r.SetServers(nil); err != nil || !changed {
		t.Errorf("SetServers(nil), resolv.conf changed = %v, %v; want true, nil", changed, err)
	}
	want = []string{"192.0.2.54:53"}
	if got := r.Servers(); !slices.Equal(got, want) {
		t.Fatalf("Servers() = %q, want %q", got, want)
	}

	for _, content := range []string{
		"search example.net\n",         // no nameserver line
		"nameserver dns.example.net\n", // not an IP
	} {
		write(content)
		if changed, err := r.SetServers(nil); err == nil || changed {
			t.Errorf("SetServers(nil) with resolv.conf %q = %v, %v; want false and an error", content, changed, err)
		}
		if _, err := newDNSResolver(nil, path); err == nil {
			t.Errorf("newDNSResolver(nil) with resolv.conf %q succeeded", content)
		}
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if changed, err := r.SetServers(nil); err == nil || changed {
		t.Errorf("SetServers(nil) without resolv.conf = %v, %v; want false and an error", changed, err)
	}
	if got := r.Servers(); !slices.Equal(got, want) {
		t.Errorf("after the failed SetServers, Servers() = %q, want %q", got, want)
	}

	// An explicit list does not read the file at all.
	if changed, err := r.SetServers([]string{"192.0.2.55"}); err != nil || !changed {
		t.Errorf("SetServers([192.0.2.55]) without resolv.conf = %v, %v; want true, nil", changed, err)
	}
}

// blockingServer is a DNS server on loopback that answers every MX query
// for resolve.test with mx<n>.resolve.test, but only once release is
// closed; it reports each query it holds on held.
type blockingServer struct {
	addr    string
	held    chan struct{}
	release chan struct{}
}

func startBlocking(t *testing.T, n int) *blockingServer {
	t.Helper()
	b := &blockingServer{held: make(chan struct{}, 16), release: make(chan struct{})}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = pc.LocalAddr().String()
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) }}
	srv.Handler = dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		b.held <- struct{}{}
		<-b.release
		m := new(dns.Msg)
		m.SetReply(req)
		m.Answer = []dns.RR{&dns.MX{
			Hdr:        dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: 3600},
			Preference: uint16(n), Mx: fmt.Sprintf("mx%d.resolve.test.", n),
		}}
		_ = w.WriteMsg(m)
	})
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() {
		// Unblock a handler still waiting, or Shutdown waits for it.
		select {
		case <-b.release:
		default:
			close(b.release)
		}
		_ = srv.Shutdown()
	})
	return b
}

// A lookup in flight across SetServers finishes on the old server, and its
// answer does not land in the new servers' cache.
func TestSetServersInFlightLookup(t *testing.T) {
	t.Parallel()
	old := startBlocking(t, 1)
	s2 := dnstest.Start(t, zonesOf(2))
	r := newTestResolver(t, old.addr)

	type result struct {
		mxs []*net.MX
		err error
	}
	got := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), resolveWait)
		defer cancel()
		mxs, err := r.LookupMX(ctx, "resolve.test")
		got <- result{mxs, err}
	}()
	select {
	case <-old.held:
	case <-time.After(resolveWait):
		t.Fatal("the old server never got the query")
	}

	if changed, err := r.SetServers([]string{s2.Addr()}); err != nil || !changed {
		t.Fatalf("SetServers = %v, %v; want true, nil", changed, err)
	}
	close(old.release)
	res := <-got
	if res.err != nil || len(res.mxs) != 1 || res.mxs[0].Host != "mx1.resolve.test." {
		t.Fatalf("in-flight lookup = %v, %v; want the old server's mx1.resolve.test", res.mxs, res.err)
	}

	mustLookup(t, r, wantAnswer(2))
	if n := s2.Queries("resolve.test", dns.TypeMX); n != 1 {
		t.Errorf("server 2 asked %d times for the MX, want 1", n)
	}
}

// Lookups from many goroutines while SetServers alternates between two
// servers: no lookup fails, every record is one of the servers', and once
// the swapping stops lookups get the last server's answer. Run with -race.
func TestSetServersConcurrentLookups(t *testing.T) {
	t.Parallel()
	s1 := dnstest.Start(t, zonesOf(1))
	s2 := dnstest.Start(t, zonesOf(2))
	r := newTestResolver(t, s1.Addr())
	lists := [][]string{{s1.Addr()}, {s2.Addr()}}

	// The workers do a fixed number of lookups and SetServers swaps
	// until they are done, so the two overlap however fast either is.
	const workers, perWorker = 8, 50
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for n := range perWorker {
				got, err := lookup(r)
				// MX and address are separate lookups, so a
				// swap between them may pair one server's MX
				// with the other's address; each part must
				// still be some server's.
				if err == nil && !(validMX(got.mx) && validAddr(got.addr)) {
					err = fmt.Errorf("answer %+v is neither server's", got)
				}
				if err != nil {
					errs <- fmt.Errorf("lookup %d: %w", n, err)
					return
				}
				_ = r.Servers()
			}
		})
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()

	var swaps, changes int
swapping:
	for i := 1; ; i++ {
		select {
		case <-done:
			break swapping
		default:
		}
		changed, err := r.SetServers(lists[i%2])
		if err != nil {
			t.Fatal(err)
		}
		swaps++
		if changed {
			changes++
		}
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if changes != swaps {
		t.Errorf("%d of %d alternating SetServers reported a change", changes, swaps)
	}
	t.Logf("%d lookups during %d swaps", workers*perWorker, swaps)

	if _, err := r.SetServers(lists[1]); err != nil {
		t.Fatal(err)
	}
	mustLookup(t, r, wantAnswer(2))
}

func validMX(h string) bool   { return h == wantAnswer(1).mx || h == wantAnswer(2).mx }
func validAddr(a string) bool { return a == wantAnswer(1).addr || a == wantAnswer(2).addr }

// TestCacheSweepsExpired fills the cache with answers, lets them expire,
// and checks that the store which completes a sweep interval drops them
// while a fresh answer stays: the cache holds about the last hour's names,
// not every name ever asked.
func TestCacheSweepsExpired(t *testing.T) {
	srv := dnstest.Start(t, dnstest.Zones{})
	r, err := NewDNSResolver([]string{srv.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.Now = func() time.Time { return now }
	ctx := context.Background()
	ask := func(name string) {
		t.Helper()
		// Every name is unknown: the "no such domain" answer is cached too.
		if _, err := r.query(ctx, name, dns.TypeA); err == nil {
			t.Fatalf("%s resolved; the test server knows no names", name)
		}
	}
	size := func() int {
		g := r.current()
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.cache)
	}
	for i := range sweepEvery - 2 {
		ask(fmt.Sprintf("old%d.test", i))
	}
	if n := size(); n != sweepEvery-2 {
		t.Fatalf("cache holds %d answers, want %d", n, sweepEvery-2)
	}
	now = now.Add(2 * time.Hour) // past the longest TTL kept
	ask("fresh1.test")
	if n := size(); n != sweepEvery-1 {
		t.Fatalf("before the sweep the cache holds %d answers, want %d", n, sweepEvery-1)
	}
	ask("fresh2.test") // the sweepEvery-th store sweeps
	if n := size(); n != 2 {
		t.Fatalf("after the sweep the cache holds %d answers, want the 2 fresh ones", n)
	}
}
