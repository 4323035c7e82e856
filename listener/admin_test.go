package listener

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// adminEnv is an admin API on 127.0.0.1:0 over a fresh queue.
type adminEnv struct {
	q   *queue.Queue
	a   *Admin
	url string

	mu      sync.Mutex
	removed []queue.Removal
}

// startAdminTest starts an admin API whose http-access gives 127.0.0.1 the
// level, 127.0.0.2 monitor, and whose key is key (none when empty).
// Each of opts may set more AdminOptions.
func startAdminTest(t *testing.T, level config.AccessLevel, key string, opts ...func(*AdminOptions)) *adminEnv {
	t.Helper()
	q, err := queue.Open(queue.Options{Dir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	cfg := &config.Config{}
	cfg.Spool.Dir.Value = "/var/spool/tern"
	cfg.HTTPAPIKey.Value = key
	cfg.HTTPAccess = []*config.HTTPAccess{
		{Prefix: netip.MustParsePrefix("127.0.0.2/32"), Level: config.AccessMonitor},
		{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Level: level},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &adminEnv{q: q}
	o := AdminOptions{Queue: q, Listener: ln, Logger: slog.New(slog.DiscardHandler),
		OnRemoved: func(r queue.Removal) {
			e.mu.Lock()
			e.removed = append(e.removed, r)
			e.mu.Unlock()
		}}
	for _, f := range opts {
		f(&o)
	}
	e.a, err = StartAdmin(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.a.Shutdown(context.Background()) })
	e.url = "http://" + e.a.Addr().String()
	return e
}

// put queues one message from job to rcpts, each "address vmta".
func (e *adminEnv) put(t *testing.T, job string, rcpts ...string) queue.ID {
	t.Helper()
	m := queue.Message{Envelope: queue.Envelope{Sender: "s@example.org", JobID: job}, Body: []byte("Subject: x\r\n\r\nx\r\n")}
	for _, r := range rcpts {
		addr, vmta, _ := strings.Cut(r, " ")
		m.Recipients = append(m.Recipients, queue.Recipient{Address: addr, VMTA: vmta})
	}
	id, err := e.q.Put(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// do sends a request and decodes the JSON answer into out (if not nil).
func (e *adminEnv) do(t *testing.T, client *http.Client, method, path, token, body string, out any) int {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %s: answer %q does not decode: %v", method, path, resp.Status, data, err)
		}
	}
	return resp.StatusCode
}

// errorOf sends a request expected to fail and returns its status and message.
func (e *adminEnv) errorOf(t *testing.T, client *http.Client, method, path, token, body string) (int, string) {
	t.Helper()
	var out struct {
		Error string `json:"error"`
	}
	code := e.do(t, client, method, path, token, body, &out)
	if out.Error == "" {
		t.Errorf("%s %s: %d without an error message", method, path, code)
	}
	return code, out.Error
}

// fromIP is a client whose connections come from ip.
func fromIP(ip string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}).DialContext}}
}

func TestAdminStatus(t *testing.T) {
	e := startAdminTest(t, config.AccessMonitor, "")
	e.put(t, "", "a@one.test mta1", "b@two.test mta1")
	var st struct {
		Uptime        string `json:"uptime"`
		UptimeSeconds *int64 `json:"uptime_seconds"`
		Spool         string `json:"spool"`
		Totals        struct {
			Queues, Messages, Recipients, Ready int
		} `json:"totals"`
	}
	if code := e.do(t, nil, "GET", "/api/status", "", "", &st); code != 200 {
		t.Fatalf("GET /api/status: %d", code)
	}
	if st.Spool != "/var/spool/tern" || st.Uptime == "" || st.UptimeSeconds == nil {
		t.Errorf("status %+v", st)
	}
	if st.Totals.Queues != 2 || st.Totals.Messages != 1 || st.Totals.Recipients != 2 || st.Totals.Ready != 2 {
		t.Errorf("totals %+v, want 2 queues, 1 message, 2 recipients ready", st.Totals)
	}
}

// opAnswer is the answer of pause, resume, retry and delete.
type opAnswer struct {
	Queue   string   `json:"queue"`
	Count   int      `json:"count"`
	Matched []string `json:"matched"`
}

func TestAdminPauseResume(t *testing.T) {
	e := startAdminTest(t, config.AccessOperator, "")
	e.put(t, "", "a@one.test mta1", "b@two.test mta1", "c@one.test mta2")
	paused := func() []string {
		var out []string
		for _, st := range e.q.Keys(queue.Selector{}) {
			if st.Paused {
				out = append(out, st.Key.String())
			}
		}
		return out
	}
	var ans opAnswer
	if code := e.do(t, nil, "POST", "/api/pause?queue=one.test/mta1", "", "", &ans); code != 200 {
		t.Fatalf("pause: %d", code)
	}
	if ans.Count != 1 || strings.Join(ans.Matched, ",") != "one.test/mta1" {
		t.Errorf("pause one.test/mta1 answered %+v", ans)
	}
	if got := strings.Join(paused(), ","); got != "one.test/mta1" {
		t.Errorf("paused %q", got)
	}
	// JSON body, */vmta.
	ans = opAnswer{}
	if code := e.do(t, nil, "POST", "/api/pause", "", `{"queue": "*/mta1"}`, &ans); code != 200 {
		t.Fatalf("pause */mta1: %d", code)
	}
	if ans.Count != 1 || len(ans.Matched) != 2 {
		t.Errorf("pause */mta1 answered %+v, want 1 newly paused of 2 matched", ans)
	}
	// domain/*
	ans = opAnswer{}
	if code := e.do(t, nil, "POST", "/api/resume", "", `{"queue": "ONE.test/*"}`, &ans); code != 200 {
		t.Fatalf("resume one.test/*: %d", code)
	}
	if ans.Count != 1 || len(ans.Matched) != 2 {
		t.Errorf("resume one.test/* answered %+v", ans)
	}
	if got := strings.Join(paused(), ","); got != "two.test/mta1" {
		t.Errorf("paused after resume %q, want two.test/mta1", got)
	}
	// */* needs all=yes.
	if code, msg := e.errorOf(t, nil, "POST", "/api/pause?queue=*/*", "", ""); code != 400 || !strings.Contains(msg, "all=yes") {
		t.Errorf("pause */*: %d %q, want 400 asking for all=yes", code, msg)
	}
	ans = opAnswer{}
	if code := e.do(t, nil, "POST", "/api/pause", "", `{"queue": "*/*", "all": "yes"}`, &ans); code != 200 || len(ans.Matched) != 3 {
		t.Errorf("pause */* all=yes: %d %+v", code, ans)
	}
	if code := e.do(t, nil, "POST", "/api/resume?queue=*/*&all=yes", "", "", &ans); code != 200 || len(paused()) != 0 {
		t.Errorf("resume */* all=yes: %d, still paused %v", code, paused())
	}
}

func TestAdminBadInput(t *testing.T) {
	e := startAdminTest(t, config.AccessAdmin, "")
	for _, c := range []struct{ path, body string }{
		{"/api/pause", ""},
		{"/api/pause?queue=one.test", ""},
		{"/api/pause?queue=/mta1", ""},
		{"/api/pause?queue=a/b/c", ""},
		{"/api/pause?job=j1", ""},
		{"/api/resume", `{"queue": 5}`},
		{"/api/retry", `{"queue": "x/y", "extra": 1}`},
		{"/api/retry", `not json`},
		{"/api/delete", ""},
		{"/api/delete", `{"queue": "*/*"}`},
		{"/api/delete", `{"queue": "*/*", "all": 3}`},
	} {
		if code, _ := e.errorOf(t, nil, "POST", c.path, "", c.body); code != 400 {
			t.Errorf("POST %s %s: %d, want 400", c.path, c.body, code)
		}
	}
	if code, _ := e.errorOf(t, nil, "GET", "/api/nothing", "", ""); code != 404 {
		t.Errorf("unknown path: %d, want 404", code)
	}
	if code, _ := e.errorOf(t, nil, "GET", "/api/pause", "", ""); code != 405 {
		t.Errorf("GET /api/pause: %d, want 405", code)
	}
}

func TestAdminAccess(t *testing.T) {
	e := startAdminTest(t, config.AccessOperator, "s3cret")
	e.put(t, "", "a@one.test mta1")
	monitor := fromIP("127.0.0.2")
	if code, _ := e.errorOf(t, monitor, "POST", "/api/pause?queue=one.test/mta1", "s3cret", ""); code != 403 {
		t.Errorf("monitor pausing: %d, want 403", code)
	}
	if code := e.do(t, monitor, "GET", "/api/status", "s3cret", "", nil); code != 200 {
		t.Errorf("monitor reading the status: %d, want 200", code)
	}
	if code, _ := e.errorOf(t, nil, "POST", "/api/pause?queue=one.test/mta1", "wrong", ""); code != 403 {
		t.Errorf("wrong token: %d, want 403", code)
	}
	if code, _ := e.errorOf(t, nil, "GET", "/api/status", "", ""); code != 403 {
		t.Errorf("no token: %d, want 403", code)
	}
	if code, _ := e.errorOf(t, fromIP("127.0.0.9"), "GET", "/api/status", "s3cret", ""); code != 403 {
		t.Errorf("client outside http-access: %d, want 403", code)
	}
	if st := e.q.Stats(queue.Key{VMTA: "mta1", Domain: "one.test"}); st.Paused {
		t.Error("a refused pause paused the queue")
	}
	if code := e.do(t, nil, "POST", "/api/pause?queue=one.test/mta1", "s3cret", "", nil); code != 200 {
		t.Errorf("operator with the key: %d, want 200", code)
	}
}

func TestAdminRetry(t *testing.T) {
	e := startAdminTest(t, config.AccessOperator, "")
	e.put(t, "", "a@one.test mta1", "b@one.test mta1")
	key := queue.Key{VMTA: "mta1", Domain: "one.test"}
	l, err := e.q.Lease(context.Background(), key, 10)
	if err != nil {
		t.Fatal(err)
	}
	var outs []queue.Outcome
	for _, m := range l.Messages {
		for _, r := range m.Recipients {
			outs = append(outs, queue.Outcome{ID: m.ID, N: r.N, Kind: queue.Deferred, Until: time.Now().Add(time.Hour), Reply: "451 later"})
		}
	}
	if err := l.Report(outs...); err != nil {
		t.Fatal(err)
	}
	l.Release()
	if st := e.q.Stats(key); st.Deferred != 2 {
		t.Fatalf("stats %+v, want 2 deferred", st)
	}
	var ans opAnswer
	if code := e.do(t, nil, "POST", "/api/retry", "", `{"queue":"one.test/mta1"}`, &ans); code != 200 || ans.Count != 2 {
		t.Fatalf("retry: %d %+v, want 2 retried", code, ans)
	}
	if st := e.q.Stats(key); st.Ready != 2 || st.Deferred != 0 {
		t.Errorf("stats after retry %+v, want 2 ready", st)
	}
}

func TestAdminDelete(t *testing.T) {
	e := startAdminTest(t, config.AccessOperator, "")
	e.put(t, "spring", "a@one.test mta1", "b@two.test mta1")
	e.put(t, "summer", "c@one.test mta1")
	e.put(t, "", "d@one.test mta2")
	var ans opAnswer
	if code := e.do(t, nil, "POST", "/api/delete?job=spring", "", "", &ans); code != 200 || ans.Count != 2 {
		t.Fatalf("delete job spring: %d %+v, want 2 deleted", code, ans)
	}
	e.mu.Lock()
	got := map[string]string{}
	for _, r := range e.removed {
		got[r.Recipient.Address] = r.Envelope.JobID
		if r.Kind != queue.Deleted {
			t.Errorf("removal of %s is %v, want deleted", r.Recipient.Address, r.Kind)
		}
	}
	e.mu.Unlock()
	if len(got) != 2 || got["a@one.test"] != "spring" || got["b@two.test"] != "spring" {
		t.Errorf("OnRemoved saw %v, want a@one.test and b@two.test of spring", got)
	}
	ans = opAnswer{}
	if code := e.do(t, nil, "POST", "/api/delete", "", `{"queue": "one.test/*"}`, &ans); code != 200 || ans.Count != 2 {
		t.Fatalf("delete one.test/*: %d %+v, want 2 deleted", code, ans)
	}
	if tot := e.q.Totals(); tot.Recipients != 0 {
		t.Errorf("totals after deleting everything %+v", tot)
	}
	e.mu.Lock()
	n := len(e.removed)
	e.mu.Unlock()
	if n != 4 {
		t.Errorf("OnRemoved called %d times, want 4", n)
	}
	if code := e.do(t, nil, "POST", "/api/delete", "", `{"queue": "*/*", "all": true}`, &ans); code != 200 || ans.Count != 0 {
		t.Errorf("delete */* of an empty queue: %d %+v", code, ans)
	}
}
