package listener

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// viewsConf is the running configuration of the views tests: mta1 and mta2
// in a pool, and a domain block that sets two directives.
const viewsConf = `smtp-listener 127.0.0.1:2525
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.tern.test
    <domain slow.test>
        max-smtp-out 3
    </domain>
</virtual-mta>
<virtual-mta mta2>
    smtp-source-host 127.0.0.3 mta2.tern.test
</virtual-mta>
<virtual-mta-pool pool1>
    virtual-mta mta1
    virtual-mta mta2
</virtual-mta-pool>
<domain slow.test>
    retry-after 5m
    max-smtp-out 9
</domain>
`

// fakeDelivery stands in for the scheduler behind the admin API.
type fakeDelivery struct {
	mu       sync.Mutex
	act      map[queue.Key]QueueActivity
	backoff  map[queue.Key]bool
	reloads  int
	reloadFn func() ([]config.Diagnostic, error)
}

func (f *fakeDelivery) options(t *testing.T) func(*AdminOptions) {
	cfg, err := config.Parse("views.conf", []byte(viewsConf), config.Options{Hostname: "tern.test"})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := vmta.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return func(o *AdminOptions) {
		o.Registry = func() *vmta.Registry { return reg }
		o.Activity = func(k queue.Key, n int) QueueActivity {
			f.mu.Lock()
			defer f.mu.Unlock()
			a := f.act[k]
			a.Events = a.Events[:min(n, len(a.Events))]
			return a
		}
		o.Mode = func(k queue.Key) (bool, time.Time) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.backoff[k], time.Unix(1700000000, 0)
		}
		o.SetMode = func(sel queue.Selector, on bool) int {
			f.mu.Lock()
			defer f.mu.Unlock()
			n := 0
			for _, st := range o.Queue.Keys(sel) {
				if f.backoff[st.Key] != on {
					f.backoff[st.Key] = on
					n++
				}
			}
			return n
		}
		o.Reload = func() (*config.Config, []config.Diagnostic, error) {
			f.mu.Lock()
			f.reloads++
			f.mu.Unlock()
			w, err := f.reloadFn()
			return nil, w, err
		}
		o.InboundConnections = func() int { return 4 }
		o.OutboundConnections = func() int { return 7 }
		o.FreeSpace = func() (uint64, error) { return 123456789, nil }
		o.ConfigPath = "/etc/tern/tern.conf"
		o.Version = "test"
	}
}

func newFake() *fakeDelivery {
	return &fakeDelivery{act: map[queue.Key]QueueActivity{}, backoff: map[queue.Key]bool{}}
}

func TestAdminQueuesView(t *testing.T) {
	f := newFake()
	errAt := time.Unix(1700000100, 0).UTC()
	f.act[queue.Key{VMTA: "mta1", Domain: "slow.test"}] = QueueActivity{Connections: 2, DeliveredLastMinute: 5,
		LastError: "421 4.7.0 try later", LastErrorAt: errAt}
	f.backoff[queue.Key{VMTA: "mta1", Domain: "slow.test"}] = true
	e := startAdminTest(t, config.AccessMonitor, "", f.options(t))
	e.put(t, "", "a@slow.test mta1", "b@slow.test mta1", "c@fast.test mta2")
	e.put(t, "", "d@slow.test gone")
	if _, err := e.q.Pause(queue.Selector{VMTA: "mta2"}); err != nil {
		t.Fatal(err)
	}

	var rows []queueView
	if code := e.do(t, nil, "GET", "/api/queues", "", "", &rows); code != 200 || len(rows) != 3 {
		t.Fatalf("GET /api/queues: %d %+v", code, rows)
	}
	byName := map[string]queueView{}
	for _, r := range rows {
		byName[r.Queue] = r
	}
	slow := byName["slow.test/mta1"]
	if slow.Total != 2 || slow.Ready != 2 || slow.Connections != 2 || slow.RatePerMinute != 5 ||
		slow.LastError != "421 4.7.0 try later" || slow.LastErrorAt == nil || !slow.LastErrorAt.Equal(errAt) ||
		slow.Mode != "backoff" || slow.Orphaned || slow.Oldest == nil || rows[0].Queue != "slow.test/mta1" {
		t.Errorf("slow.test/mta1 row = %+v (rows %+v)", slow, rows)
	}
	if g := byName["slow.test/gone"]; !g.Orphaned || g.Total != 1 {
		t.Errorf("slow.test/gone row = %+v, want orphaned with 1 recipient", g)
	}
	if p := byName["fast.test/mta2"]; !p.Paused || p.Orphaned || p.Mode != "normal" {
		t.Errorf("fast.test/mta2 row = %+v", p)
	}
	for query, want := range map[string][]string{
		"?orphaned=yes":               {"slow.test/gone"},
		"?paused=yes":                 {"fast.test/mta2"},
		"?paused=no&orphaned=no":      {"slow.test/mta1"},
		"?mode=backoff":               {"slow.test/mta1"},
		"?domain=SLOW.test&vmta=mta1": {"slow.test/mta1"},
		"?vmta=nobody":                {},
	} {
		var got []queueView
		if code := e.do(t, nil, "GET", "/api/queues"+query, "", "", &got); code != 200 {
			t.Fatalf("GET /api/queues%s: %d", query, code)
		}
		var names []string
		for _, r := range got {
			names = append(names, r.Queue)
		}
		if strings.Join(names, ",") != strings.Join(want, ",") {
			t.Errorf("GET /api/queues%s = %v, want %v", query, names, want)
		}
	}
	for _, query := range []string{"?mode=fast", "?paused=maybe", "?orphaned=2x"} {
		if code, msg := e.errorOf(t, nil, "GET", "/api/queues"+query, "", ""); code != 400 {
			t.Errorf("GET /api/queues%s: %d %q, want 400", query, code, msg)
		}
	}
}

func TestAdminQueueDetail(t *testing.T) {
	f := newFake()
	k := queue.Key{VMTA: "mta1", Domain: "slow.test"}
	for i := range 30 {
		f.act[k] = QueueActivity{Events: append(f.act[k].Events,
			QueueEvent{Time: time.Unix(int64(1700000000-i), 0), Recipient: "r@slow.test", Kind: "deferred", Reply: "451 4.3.0 later"})}
	}
	e := startAdminTest(t, config.AccessMonitor, "", f.options(t))
	e.put(t, "", "a@slow.test mta1")

	var d queueDetail
	if code := e.do(t, nil, "GET", "/api/queue?queue=slow.test/mta1", "", "", &d); code != 200 {
		t.Fatalf("GET /api/queue: %d", code)
	}
	if d.Queue != "slow.test/mta1" || d.Total != 1 || len(d.Events) != 20 || d.Events[0].Reply != "451 4.3.0 later" {
		t.Errorf("detail = %+v with %d events, want the queue and 20 events", d.queueView, len(d.Events))
	}
	if e.do(t, nil, "GET", "/api/queue?queue=SLOW.test/mta1&events=3", "", "", &d); len(d.Events) != 3 {
		t.Errorf("events=3 gave %d events", len(d.Events))
	}
	if code, msg := e.errorOf(t, nil, "GET", "/api/queue?queue=empty.test/mta1", "", ""); code != 404 || !strings.Contains(msg, "empty.test/mta1") {
		t.Errorf("unknown queue: %d %q, want 404 naming it", code, msg)
	}
	for _, q := range []string{"", "?queue=slow.test", "?queue=*/mta1", "?queue=slow.test/", "?queue=slow.test/mta1&events=-1", "?queue=slow.test/mta1&events=x"} {
		if code, _ := e.errorOf(t, nil, "GET", "/api/queue"+q, "", ""); code != 400 {
			t.Errorf("GET /api/queue%s: %d, want 400", q, code)
		}
	}
}

func TestAdminVMTAsAndDomains(t *testing.T) {
	f := newFake()
	f.act[queue.Key{VMTA: "mta1", Domain: "slow.test"}] = QueueActivity{Connections: 3}
	e := startAdminTest(t, config.AccessMonitor, "", f.options(t))
	e.put(t, "", "a@slow.test mta1", "b@slow.test mta1", "c@fast.test mta1", "d@slow.test mta2")
	e.put(t, "", "e@slow.test gone")

	var vs []vmtaView
	if code := e.do(t, nil, "GET", "/api/vmtas", "", "", &vs); code != 200 {
		t.Fatalf("GET /api/vmtas: %d", code)
	}
	byName := map[string]vmtaView{}
	var names []string
	for _, v := range vs {
		byName[v.Name], names = v, append(names, v.Name)
	}
	if got := strings.Join(names, ","); got != "gone,mta1,mta2,{default}" {
		t.Errorf("vmtas = %s, want gone,mta1,mta2,{default}", got)
	}
	m1 := byName["mta1"]
	if !m1.Configured || m1.HostName != "mta1.tern.test" || strings.Join(m1.SourceIPs, ",") != "127.0.0.2" ||
		strings.Join(m1.Pools, ",") != "pool1" || m1.Queues != 2 || m1.Recipients != 3 || m1.Connections != 3 {
		t.Errorf("mta1 = %+v", m1)
	}
	if g := byName["gone"]; g.Configured || g.Recipients != 1 {
		t.Errorf("gone = %+v, want not configured with 1 recipient", g)
	}

	var ds []domainView
	if code := e.do(t, nil, "GET", "/api/domains", "", "", &ds); code != 200 || len(ds) != 2 {
		t.Fatalf("GET /api/domains: %d %+v", code, ds)
	}
	if ds[0].Domain != "slow.test" || ds[0].Recipients != 4 || ds[0].Queues != 3 || ds[0].Connections != 3 || ds[0].Oldest == nil ||
		ds[1].Domain != "fast.test" || ds[1].Recipients != 1 {
		t.Errorf("domains = %+v", ds)
	}
	if e.do(t, nil, "GET", "/api/domains?top=1", "", "", &ds); len(ds) != 1 || ds[0].Domain != "slow.test" {
		t.Errorf("top=1 = %+v", ds)
	}
	if code, _ := e.errorOf(t, nil, "GET", "/api/domains?top=0", "", ""); code != 400 {
		t.Errorf("top=0: %d, want 400", code)
	}
}

func TestAdminSettings(t *testing.T) {
	e := startAdminTest(t, config.AccessMonitor, "", newFake().options(t))
	var s settingsView
	if code := e.do(t, nil, "GET", "/api/settings?queue=Slow.Test/mta1", "", "", &s); code != 200 {
		t.Fatalf("GET /api/settings: %d", code)
	}
	got := map[string]settingView{}
	for _, d := range s.Settings {
		got[d.Directive] = d
	}
	// max-smtp-out comes from the VMTA's block (line 5), retry-after from the
	// global one (line 10); bounce-after is the default.
	if d := got["max-smtp-out"]; d.Value != "3" || d.SetAt != "views.conf:5:9" || d.Default {
		t.Errorf("max-smtp-out = %+v, want 3 set at views.conf:5:9", d)
	}
	if d := got["retry-after"]; d.Value != "5m" || !strings.HasPrefix(d.SetAt, "views.conf:16:") {
		t.Errorf("retry-after = %+v, want 5m from line 16", d)
	}
	if d := got["bounce-after"]; !d.Default || d.SetAt != "" || d.Value != "4d12h" {
		t.Errorf("bounce-after = %+v, want the default", d)
	}
	if s.Queue != "slow.test/mta1" || len(s.Blocks) != 2 || !strings.Contains(s.Blocks[0], "<virtual-mta mta1>") {
		t.Errorf("settings header = %+v", s)
	}
	if code, msg := e.errorOf(t, nil, "GET", "/api/settings?queue=slow.test/nope", "", ""); code != 404 || !strings.Contains(msg, "nope") {
		t.Errorf("unknown VMTA: %d %q", code, msg)
	}
	if code, _ := e.errorOf(t, nil, "GET", "/api/settings?queue=slow.test/mta1&pool=nope", "", ""); code != 404 {
		t.Errorf("unknown pool: %d", code)
	}
	if code, _ := e.errorOf(t, nil, "GET", "/api/settings?queue=slow.test", "", ""); code != 400 {
		t.Errorf("bad queue: %d", code)
	}
}

func TestAdminSetMode(t *testing.T) {
	f := newFake()
	e := startAdminTest(t, config.AccessOperator, "", f.options(t))
	e.put(t, "", "a@slow.test mta1", "b@fast.test mta1", "c@slow.test mta2")
	var ans struct {
		opAnswer
		Mode string `json:"mode"`
	}
	if code := e.do(t, nil, "POST", "/api/set-mode?queue=*/mta1&mode=backoff", "", "", &ans); code != 200 || ans.Count != 2 || ans.Mode != "backoff" || len(ans.Matched) != 2 {
		t.Fatalf("set-mode */mta1 backoff: %d %+v", code, ans)
	}
	if code := e.do(t, nil, "POST", "/api/set-mode", "", `{"queue":"slow.test/*","mode":"normal"}`, &ans); code != 200 || ans.Count != 1 {
		t.Fatalf("set-mode slow.test/* normal: %d %+v", code, ans)
	}
	var rows []queueView
	e.do(t, nil, "GET", "/api/queues?mode=backoff", "", "", &rows)
	if len(rows) != 1 || rows[0].Queue != "fast.test/mta1" {
		t.Errorf("queues in backoff = %+v, want fast.test/mta1", rows)
	}
	for _, path := range []string{"/api/set-mode?queue=*/mta1", "/api/set-mode?queue=*/mta1&mode=slow", "/api/set-mode?mode=normal"} {
		if code, _ := e.errorOf(t, nil, "POST", path, "", ""); code != 400 {
			t.Errorf("POST %s: %d, want 400", path, code)
		}
	}
	if code, _ := e.errorOf(t, fromIP("127.0.0.2"), "POST", "/api/set-mode?queue=*/mta1&mode=normal", "", ""); code != 403 {
		t.Errorf("monitor set-mode: %d, want 403", code)
	}
}

func TestAdminReload(t *testing.T) {
	f := newFake()
	e := startAdminTest(t, config.AccessAdmin, "k3y", f.options(t))
	f.reloadFn = func() ([]config.Diagnostic, error) {
		return []config.Diagnostic{{Pos: config.Position{File: "tern.conf", Line: 3, Column: 1}, Message: "old directive"}}, nil
	}
	var ok reloadView
	if code := e.do(t, nil, "POST", "/api/reload", "k3y", "", &ok); code != 200 || !ok.Reloaded ||
		ok.File != "/etc/tern/tern.conf" || len(ok.Warnings) != 1 || ok.Warnings[0] != "tern.conf:3:1: old directive" {
		t.Fatalf("reload: %d %+v", code, ok)
	}
	f.reloadFn = func() ([]config.Diagnostic, error) {
		return nil, &config.ErrorList{Errors: []config.Diagnostic{{Pos: config.Position{File: "tern.conf", Line: 7, Column: 5}, Message: "unknown directive"}}}
	}
	var bad reloadView
	if code := e.do(t, nil, "POST", "/api/reload", "k3y", "", &bad); code != 422 || bad.Reloaded || bad.Error == "" ||
		len(bad.Errors) != 1 || bad.Errors[0] != "tern.conf:7:5: unknown directive" {
		t.Fatalf("broken reload: %d %+v", code, bad)
	}
	f.reloadFn = func() ([]config.Diagnostic, error) { return nil, errors.New("listener 127.0.0.1:25: address in use") }
	if code := e.do(t, nil, "POST", "/api/reload", "k3y", "", &bad); code != 422 || len(bad.Errors) != 1 || !strings.Contains(bad.Errors[0], "address in use") {
		t.Fatalf("failed reload: %d %+v", code, bad)
	}
	// A monitor, or a wrong key, is refused before any reload happens.
	before := f.reloads
	if code, _ := e.errorOf(t, fromIP("127.0.0.2"), "POST", "/api/reload", "k3y", ""); code != 403 {
		t.Errorf("monitor reload: %d, want 403", code)
	}
	if code, _ := e.errorOf(t, nil, "POST", "/api/reload", "wrong", ""); code != 403 {
		t.Errorf("wrong key reload: %d, want 403", code)
	}
	if f.reloads != before {
		t.Errorf("refused requests reloaded %d times", f.reloads-before)
	}
}

func TestAdminStatusCounts(t *testing.T) {
	e := startAdminTest(t, config.AccessMonitor, "", newFake().options(t))
	e.put(t, "", "a@slow.test mta1", "b@fast.test mta1")
	var st statusView
	if code := e.do(t, nil, "GET", "/api/status", "", "", &st); code != 200 {
		t.Fatalf("GET /api/status: %d", code)
	}
	if st.Connections.Inbound != 4 || st.Connections.Outbound != 7 || st.SpoolFreeBytes == nil || *st.SpoolFreeBytes != 123456789 ||
		st.Config != "/etc/tern/tern.conf" || st.Version != "test" {
		t.Errorf("status = %+v", st)
	}
	if st.SpoolDiskBytes == 0 {
		t.Error("spool_disk_bytes is 0 with mail in the spool")
	}
	if tr := st.Traffic.LastMinute; tr.MessagesIn != 1 || tr.RecipientsIn != 2 || st.Traffic.LastHour != tr {
		t.Errorf("traffic = %+v", st.Traffic)
	}
}

func TestAdminProfiles(t *testing.T) {
	e := startAdminTest(t, config.AccessAdmin, "")
	for _, path := range []string{"/debug/pprof/allocs", "/debug/pprof/goroutine", "/debug/pprof/profile?seconds=1"} {
		resp, err := http.Get(e.url + path)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// A profile is gzipped protobuf.
		if resp.StatusCode != 200 || len(data) < 2 || data[0] != 0x1f || data[1] != 0x8b {
			t.Errorf("GET %s: %s, %d bytes", path, resp.Status, len(data))
		}
	}
	if code, _ := e.errorOf(t, nil, "GET", "/debug/pprof/nothing", "", ""); code != 404 {
		t.Errorf("unknown profile: %d, want 404", code)
	}
	if code, _ := e.errorOf(t, nil, "GET", "/debug/pprof/profile?seconds=0", "", ""); code != 400 {
		t.Errorf("seconds=0: %d, want 400", code)
	}
	if code, _ := e.errorOf(t, fromIP("127.0.0.2"), "GET", "/debug/pprof/heap", "", ""); code != 403 {
		t.Errorf("monitor profile: %d, want 403", code)
	}
	if code, _ := e.errorOf(t, nil, "POST", "/", "", ""); code != 405 {
		t.Errorf("POST /: %d, want 405", code)
	}
	if code, _ := e.errorOf(t, nil, "POST", "/debug/pprof/heap", "", ""); code != 405 {
		t.Errorf("POST /debug/pprof/heap: %d, want 405", code)
	}
}

// failedQueue is a queue whose spool write has failed: it refuses all
// mail until reopened.
func failedQueue(t *testing.T) *queue.Queue {
	t.Helper()
	inj := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			return errorfs.ErrInjected
		}
		return nil
	})}
	q, err := queue.Open(queue.Options{Dir: "spool", FS: errorfs.Wrap(vfs.NewMem(), inj), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	inj.On()
	if _, err := q.Put(context.Background(), queue.Message{Envelope: queue.Envelope{Sender: "s@example.org"},
		Recipients: []queue.Recipient{{Address: "a@x.test", VMTA: "mta1"}}, Body: []byte("x\r\n")}); err == nil {
		t.Fatal("Put with a failing sync succeeded")
	}
	return q
}

// After a failed spool write the status says so, since every message is
// then refused until a restart.
func TestAdminStatusSpoolFailure(t *testing.T) {
	e := startAdminTest(t, config.AccessMonitor, "")
	var st statusView
	if e.do(t, nil, "GET", "/api/status", "", "", &st); st.SpoolError != "" {
		t.Fatalf("spool_error %q before any failure", st.SpoolError)
	}
	e = startAdminTest(t, config.AccessMonitor, "", func(o *AdminOptions) { o.Queue = failedQueue(t) })
	if e.do(t, nil, "GET", "/api/status", "", "", &st); !strings.Contains(st.SpoolError, "restarted") {
		t.Errorf("spool_error = %q, want the failure and what to do", st.SpoolError)
	}
}

// With the scheduler's per-VMTA counts, /api/vmtas shows every open
// connection, also those kept for a queue that has just emptied.
func TestAdminVMTAConnections(t *testing.T) {
	f := newFake()
	f.act[queue.Key{VMTA: "mta1", Domain: "slow.test"}] = QueueActivity{Connections: 1}
	e := startAdminTest(t, config.AccessMonitor, "", f.options(t), func(o *AdminOptions) {
		o.VMTAConnections = func() map[string]int { return map[string]int{"mta1": 4, "mta2": 2} }
	})
	e.put(t, "", "a@slow.test mta1")
	var vs []vmtaView
	e.do(t, nil, "GET", "/api/vmtas", "", "", &vs)
	got := map[string]int{}
	for _, v := range vs {
		got[v.Name] = v.Connections
	}
	if got["mta1"] != 4 || got["mta2"] != 2 {
		t.Errorf("connections = %v, want mta1 4 and mta2 2", got)
	}
}
