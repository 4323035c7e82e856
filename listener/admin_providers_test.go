package listener

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// fakeProviders stands in for the scheduler's provider views behind the
// admin API: two provider queues (one in backoff with a window under a
// ceiling, one suspended), their shaping states, a down and a failing
// host, and the routes of the queues. LiftShaping records its filters and
// ends the states they select.
type fakeProviders struct {
	mu     sync.Mutex
	until  time.Time // the suspension's end
	states []ShapingState
	lifts  []ShapingFilter
}

func newFakeProviders() *fakeProviders {
	now := time.Now().Truncate(time.Second)
	f := &fakeProviders{until: now.Add(10 * time.Minute)}
	f.states = []ShapingState{
		{VMTA: "mta1", Provider: "gmail.rollup", Rollup: "gmail.rollup", Action: "backoff", Since: now.Add(-time.Minute),
			Rule: "tern.conf:40:5 /^421 4\\.7\\.28/", Reply: "421 4.7.28 slow down"},
		{VMTA: "mta2", Provider: "mx.example.net", Action: "suspend", Since: now, Until: f.until,
			Rule: "tern.conf:41:5 /^451 4\\.7\\.1/", Reply: "451 4.7.1 try later"},
		{VMTA: "mta2", Provider: "mx.example.net", Action: "disable-source-ip", Source: "127.0.0.3", Since: now,
			Until: now.Add(time.Hour), Rule: "tern.conf:42:5 /blocked/", Reply: "550 5.7.1 blocked"},
	}
	return f
}

func (f *fakeProviders) options(o *AdminOptions) {
	o.ProviderOf = func(k queue.Key) string {
		switch k.Domain {
		case "gmail.test", "googlemail.test":
			return "gmail.rollup"
		case "example.net":
			return "mx.example.net"
		}
		return ""
	}
	o.Providers = func() []ProviderInfo {
		f.mu.Lock()
		defer f.mu.Unlock()
		gmail := ProviderInfo{VMTA: "mta1", Provider: "gmail.rollup", Rollup: "gmail.rollup", Connections: 3,
			Backoff: true, BackoffSince: time.Unix(1700000000, 0), MsgsPerConnection: 20,
			Windows: []ProviderWindow{
				{Source: "127.0.0.2", Limit: 5, Open: 3, Established: 2, Ceiling: 5, CeilingUntil: f.until,
					Refusals: 2, LastRefusal: time.Unix(1700000100, 0)},
			}}
		// 150 domains: the view lists 100 of them unless asked otherwise.
		gmail.Domains = []string{"gmail.test", "googlemail.test"}
		for i := range 148 {
			gmail.Domains = append(gmail.Domains, fmt.Sprintf("d%03d.gmail.test", i))
		}
		slices.Sort(gmail.Domains)
		net := ProviderInfo{VMTA: "mta2", Provider: "mx.example.net", Domains: []string{"example.net"}, HeldUntil: f.until,
			Windows: []ProviderWindow{{Source: "127.0.0.3", Limit: 1}}}
		for _, st := range f.states {
			switch st.Provider {
			case gmail.Provider:
				gmail.Shaping = append(gmail.Shaping, st)
			case net.Provider:
				net.Shaping = append(net.Shaping, st)
			}
		}
		return []ProviderInfo{gmail, net}
	}
	o.Shaping = func() []ShapingState {
		f.mu.Lock()
		defer f.mu.Unlock()
		return slices.Clone(f.states)
	}
	o.LiftShaping = func(sel ShapingFilter) int {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.lifts = append(f.lifts, sel)
		n := len(f.states)
		f.states = slices.DeleteFunc(f.states, sel.matches)
		return n - len(f.states)
	}
	o.HostsDown = func() []HostInfo {
		return []HostInfo{
			{Source: "127.0.0.2", Host: "192.0.2.25:25", Failures: 3, DownUntil: f.until, LastError: "connection refused"},
			{Source: "127.0.0.3", Host: "[2001:db8::25]:25", Failures: 1, LastError: "i/o timeout", Open: 1},
		}
	}
}

// liftCalls returns the filters LiftShaping was called with.
func (f *fakeProviders) liftCalls() []ShapingFilter {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.lifts)
}

func TestAdminProviders(t *testing.T) {
	f := newFakeProviders()
	e := startAdminTest(t, config.AccessMonitor, "", f.options)
	e.put(t, "", "a@gmail.test mta1", "b@d007.gmail.test mta1", "c@example.net mta2", "d@gmail.test mta2")

	var rows []providerView
	if code := e.do(t, nil, "GET", "/api/providers", "", "", &rows); code != 200 || len(rows) != 2 {
		t.Fatalf("GET /api/providers: %d %+v", code, rows)
	}
	g, n := rows[0], rows[1]
	if g.Provider != "gmail.rollup" || g.VMTA != "mta1" || g.Rollup != "gmail.rollup" || g.DomainCount != 150 ||
		len(g.Domains) != 100 || g.DomainsMore != 50 || g.Domains[0] != "d000.gmail.test" || g.Connections != 3 ||
		g.Mode != "backoff" || g.BackoffSince == nil || g.HeldUntil != nil || g.MsgsPerConnection != 20 {
		t.Errorf("gmail.rollup row = %+v", g)
	}
	// Recipients of mta1 for its domains; d@gmail.test goes out via mta2.
	if g.Recipients != 2 {
		t.Errorf("gmail.rollup/mta1 recipients = %d, want 2", g.Recipients)
	}
	if len(g.Windows) != 1 {
		t.Fatalf("gmail.rollup windows = %+v", g.Windows)
	}
	if w := g.Windows[0]; w.Source != "127.0.0.2" || w.Limit != 5 || w.Open != 3 || w.Established != 2 || w.Ceiling != 5 ||
		w.CeilingUntil == nil || !w.CeilingUntil.Equal(f.until) || w.Refusals != 2 || w.LastRefusal == nil {
		t.Errorf("gmail.rollup window = %+v", w)
	}
	if len(g.Shaping) != 1 || g.Shaping[0].Action != "backoff" || g.Shaping[0].Until != nil || g.Shaping[0].ExpiresInSeconds != nil {
		t.Errorf("gmail.rollup shaping = %+v, want a backoff without an end", g.Shaping)
	}
	if n.Provider != "mx.example.net" || n.Mode != "normal" || n.HeldUntil == nil || !n.HeldUntil.Equal(f.until) ||
		n.DomainCount != 1 || n.DomainsMore != 0 || n.Recipients != 1 || len(n.Shaping) != 2 {
		t.Errorf("mx.example.net row = %+v", n)
	}
	for _, st := range n.Shaping {
		if st.Until == nil || st.ExpiresInSeconds == nil || *st.ExpiresInSeconds <= 0 {
			t.Errorf("mx.example.net state %+v, want its end and the time left", st)
		}
	}

	for query, want := range map[string]string{
		"?vmta=MTA2":                       "mx.example.net/mta2",
		"?provider=GMAIL.rollup":           "gmail.rollup/mta1",
		"?provider=gmail.rollup&vmta=mta2": "",
		"?vmta=nobody":                     "",
	} {
		var got []providerView
		if code := e.do(t, nil, "GET", "/api/providers"+query, "", "", &got); code != 200 {
			t.Fatalf("GET /api/providers%s: %d", query, code)
		}
		var names []string
		for _, r := range got {
			names = append(names, r.Provider+"/"+r.VMTA)
		}
		if strings.Join(names, ",") != want {
			t.Errorf("GET /api/providers%s = %v, want %q", query, names, want)
		}
	}
	// ?domains= caps the names listed, not the count.
	var capped []providerView
	if code := e.do(t, nil, "GET", "/api/providers?domains=0", "", "", &capped); code != 200 || len(capped) != 2 ||
		len(capped[0].Domains) != 0 || capped[0].Domains == nil || capped[0].DomainCount != 150 || capped[0].DomainsMore != 150 {
		t.Errorf("GET /api/providers?domains=0: %d %+v", code, capped)
	}
	if code := e.do(t, nil, "GET", "/api/providers?domains=1000", "", "", &capped); code != 200 ||
		len(capped[0].Domains) != 150 || capped[0].DomainsMore != 0 {
		t.Errorf("GET /api/providers?domains=1000: %d, %d listed", code, len(capped[0].Domains))
	}
	for _, q := range []string{"?domains=-1", "?domains=1001", "?domains=all"} {
		if code, _ := e.errorOf(t, nil, "GET", "/api/providers"+q, "", ""); code != 400 {
			t.Errorf("GET /api/providers%s: %d, want 400", q, code)
		}
	}
}

func TestAdminQueuesProvider(t *testing.T) {
	f := newFakeProviders()
	e := startAdminTest(t, config.AccessMonitor, "", f.options)
	e.put(t, "", "a@gmail.test mta1", "b@googlemail.test mta1", "c@example.net mta2", "d@new.test mta2")
	var rows []queueView
	if code := e.do(t, nil, "GET", "/api/queues", "", "", &rows); code != 200 || len(rows) != 4 {
		t.Fatalf("GET /api/queues: %d %+v", code, rows)
	}
	got := map[string]string{}
	for _, r := range rows {
		got[r.Queue] = r.Provider
	}
	want := map[string]string{"gmail.test/mta1": "gmail.rollup", "googlemail.test/mta1": "gmail.rollup",
		"example.net/mta2": "mx.example.net", "new.test/mta2": ""}
	for q, p := range want {
		if got[q] != p {
			t.Errorf("provider of %s = %q, want %q", q, got[q], p)
		}
	}
	if code := e.do(t, nil, "GET", "/api/queues?provider=Gmail.Rollup", "", "", &rows); code != 200 || len(rows) != 2 ||
		rows[0].Provider != "gmail.rollup" || rows[1].Provider != "gmail.rollup" {
		t.Errorf("GET /api/queues?provider=Gmail.Rollup: %d %+v", code, rows)
	}
	var d queueDetail
	if code := e.do(t, nil, "GET", "/api/queue?queue=example.net/mta2", "", "", &d); code != 200 || d.Provider != "mx.example.net" {
		t.Errorf("GET /api/queue: %d provider %q", code, d.Provider)
	}
	// The raw JSON leaves the field out before a queue is routed.
	resp, body := getPage(t, nil, e.url+"/api/queues?domain=new.test")
	if resp.StatusCode != 200 || strings.Contains(body, `"provider"`) {
		t.Errorf("GET /api/queues?domain=new.test: %s %s, want no provider field", resp.Status, body)
	}
}

func TestAdminShaping(t *testing.T) {
	f := newFakeProviders()
	e := startAdminTest(t, config.AccessMonitor, "", f.options)
	var all []shapingView
	if code := e.do(t, nil, "GET", "/api/shaping", "", "", &all); code != 200 || len(all) != 3 {
		t.Fatalf("GET /api/shaping: %d %+v", code, all)
	}
	s := all[1]
	if s.VMTA != "mta2" || s.Provider != "mx.example.net" || s.Action != "suspend" || s.Until == nil || !s.Until.Equal(f.until) ||
		s.ExpiresInSeconds == nil || *s.ExpiresInSeconds < 500 || *s.ExpiresInSeconds > 600 ||
		s.Rule != `tern.conf:41:5 /^451 4\.7\.1/` || s.Reply != "451 4.7.1 try later" {
		t.Errorf("suspension = %+v", s)
	}
	if d := all[2]; d.Action != "disable-source-ip" || d.Source != "127.0.0.3" {
		t.Errorf("disabled source = %+v", d)
	}
	for query, want := range map[string]int{"?vmta=mta2": 2, "?provider=MX.example.net&action=suspend": 1, "?action=reroute": 0} {
		var got []shapingView
		if code := e.do(t, nil, "GET", "/api/shaping"+query, "", "", &got); code != 200 || len(got) != want {
			t.Errorf("GET /api/shaping%s: %d %+v, want %d states", query, code, got, want)
		}
	}
	if code, msg := e.errorOf(t, nil, "GET", "/api/shaping?action=pause", "", ""); code != 400 || !strings.Contains(msg, "suspend") {
		t.Errorf("GET /api/shaping?action=pause: %d %q, want 400 naming the actions", code, msg)
	}
	// Without a scheduler there is nothing in force.
	bare := startAdminTest(t, config.AccessMonitor, "")
	for _, path := range []string{"/api/shaping", "/api/providers", "/api/hosts"} {
		if resp, body := getPage(t, nil, bare.url+path); resp.StatusCode != 200 || strings.TrimSpace(body) != "[]" {
			t.Errorf("GET %s without a scheduler: %s %q, want []", path, resp.Status, body)
		}
	}
}

func TestAdminLiftShaping(t *testing.T) {
	f := newFakeProviders()
	e := startAdminTest(t, config.AccessOperator, "", f.options)
	// No filter at all would lift everything: refused without all=yes,
	// and whatever parameter a typo made up.
	for _, c := range []struct{ path, body string }{
		{"/api/lift-shaping", ""},
		{"/api/lift-shaping?provder=mx.example.net", ""},
		{"/api/lift-shaping", `{}`},
		{"/api/lift-shaping?all=no", ""},
		{"/api/lift-shaping", `{"all": false}`},
	} {
		if code, msg := e.errorOf(t, nil, "POST", c.path, "", c.body); code != 400 || !strings.Contains(msg, "all=yes") {
			t.Errorf("POST %s %s: %d %q, want 400 asking for all=yes", c.path, c.body, code, msg)
		}
	}
	for _, c := range []struct{ path, body string }{
		{"/api/lift-shaping?action=pause", ""},
		{"/api/lift-shaping", `{"provdier": "x"}`},
		{"/api/lift-shaping", `{"all": 3}`},
		{"/api/lift-shaping", `not json`},
	} {
		if code, _ := e.errorOf(t, nil, "POST", c.path, "", c.body); code != 400 {
			t.Errorf("POST %s %s: %d, want 400", c.path, c.body, code)
		}
	}
	if calls := f.liftCalls(); len(calls) != 0 {
		t.Fatalf("refused requests lifted %+v", calls)
	}
	if code, _ := e.errorOf(t, nil, "GET", "/api/lift-shaping?provider=x", "", ""); code != 405 {
		t.Errorf("GET /api/lift-shaping: %d, want 405", code)
	}

	var ans liftResult
	if code := e.do(t, nil, "POST", "/api/lift-shaping?provider=MX.EXAMPLE.NET&action=suspend", "", "", &ans); code != 200 ||
		ans.Count != 1 || len(ans.Matched) != 1 || ans.Matched[0].Action != "suspend" || ans.Provider != "MX.EXAMPLE.NET" {
		t.Errorf("lift the suspension: %d %+v", code, ans)
	}
	// The body's fields win over the query's.
	ans = liftResult{}
	if code := e.do(t, nil, "POST", "/api/lift-shaping?vmta=mta1", "", `{"vmta": "mta2"}`, &ans); code != 200 || ans.Count != 1 ||
		ans.Matched[0].Action != "disable-source-ip" {
		t.Errorf("lift by a JSON body: %d %+v", code, ans)
	}
	ans = liftResult{}
	if code := e.do(t, nil, "POST", "/api/lift-shaping?vmta=mta2", "", "", &ans); code != 200 || ans.Count != 0 ||
		ans.Matched == nil || len(ans.Matched) != 0 {
		t.Errorf("lift of nothing: %d %+v, want count 0 and no match", code, ans)
	}
	ans = liftResult{}
	if code := e.do(t, nil, "POST", "/api/lift-shaping", "", `{"all": "yes"}`, &ans); code != 200 || ans.Count != 1 {
		t.Errorf("lift all: %d %+v", code, ans)
	}
	want := []ShapingFilter{{Provider: "MX.EXAMPLE.NET", Action: "suspend"}, {VMTA: "mta2"}, {VMTA: "mta2"}, {}}
	if got := f.liftCalls(); !slices.Equal(got, want) {
		t.Errorf("LiftShaping called with %+v, want %+v", got, want)
	}

	// Without a scheduler, 501.
	bare := startAdminTest(t, config.AccessOperator, "")
	if code, _ := bare.errorOf(t, nil, "POST", "/api/lift-shaping?provider=x", "", ""); code != 501 {
		t.Errorf("lift without a scheduler: %d, want 501", code)
	}
}

func TestAdminHosts(t *testing.T) {
	f := newFakeProviders()
	e := startAdminTest(t, config.AccessMonitor, "", f.options)
	var rows []hostView
	if code := e.do(t, nil, "GET", "/api/hosts", "", "", &rows); code != 200 || len(rows) != 2 {
		t.Fatalf("GET /api/hosts: %d %+v", code, rows)
	}
	if d := rows[0]; d.Host != "192.0.2.25:25" || d.Source != "127.0.0.2" || !d.Down || d.Failures != 3 ||
		d.DownUntil == nil || !d.DownUntil.Equal(f.until) || d.ProbeInSeconds == nil || *d.ProbeInSeconds <= 0 ||
		d.LastError != "connection refused" {
		t.Errorf("down host = %+v", d)
	}
	if g := rows[1]; g.Host != "[2001:db8::25]:25" || g.Down || g.DownUntil != nil || g.ProbeInSeconds != nil ||
		g.Failures != 1 || g.Open != 1 {
		t.Errorf("failing host = %+v", g)
	}
}

// TestAdminProviderAccess: the views need monitor access and the key, the
// lift operator access.
func TestAdminProviderAccess(t *testing.T) {
	f := newFakeProviders()
	e := startAdminTest(t, config.AccessOperator, "s3cret", f.options)
	monitor := fromIP("127.0.0.2")
	for _, path := range []string{"/api/providers", "/api/shaping", "/api/hosts", "/api/queues?provider=x"} {
		if code := e.do(t, monitor, "GET", path, "s3cret", "", nil); code != 200 {
			t.Errorf("monitor GET %s: %d, want 200", path, code)
		}
		if code, _ := e.errorOf(t, monitor, "GET", path, "", ""); code != 403 {
			t.Errorf("GET %s without the key: %d, want 403", path, code)
		}
		if code, _ := e.errorOf(t, fromIP("127.0.0.9"), "GET", path, "s3cret", ""); code != 403 {
			t.Errorf("GET %s from outside http-access: %d, want 403", path, code)
		}
	}
	if code, _ := e.errorOf(t, monitor, "POST", "/api/lift-shaping?provider=mx.example.net", "s3cret", ""); code != 403 {
		t.Errorf("monitor lifting: %d, want 403", code)
	}
	if code, _ := e.errorOf(t, nil, "POST", "/api/lift-shaping?provider=mx.example.net", "wrong", ""); code != 403 {
		t.Errorf("lifting with a wrong key: %d, want 403", code)
	}
	if calls := f.liftCalls(); len(calls) != 0 {
		t.Fatalf("refused lifts reached the scheduler: %+v", calls)
	}
	var ans liftResult
	if code := e.do(t, nil, "POST", "/api/lift-shaping?provider=mx.example.net", "s3cret", "", &ans); code != 200 || ans.Count != 2 {
		t.Errorf("operator lifting: %d %+v, want 2 lifted", code, ans)
	}
}
