package listener

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// getPage fetches path of the admin API with client (nil for the default)
// and returns the response, whose body is read into the returned string.
func getPage(t *testing.T, client *http.Client, url string) (*http.Response, string) {
	t.Helper()
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestStatusPageServed(t *testing.T) {
	e := startAdminTest(t, config.AccessMonitor, "")
	resp, body := getPage(t, nil, e.url+"/")
	if resp.StatusCode != 200 {
		t.Fatalf("GET /: %s %q", resp.Status, body)
	}
	if body != statusPageHTML {
		t.Error("GET / does not serve the embedded page as it is")
	}
	for name, want := range map[string]string{
		"Content-Type":           "text/html; charset=utf-8",
		"Cache-Control":          "no-cache",
		"X-Content-Type-Options": "nosniff",
	} {
		if got := resp.Header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "script-src 'sha256-", "style-src 'sha256-", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("Content-Security-Policy %q allows unsafe sources", csp)
	}
	// Only the root is the page; other paths are still the API's 404.
	if resp, body := getPage(t, nil, e.url+"/index.html"); resp.StatusCode != 404 || !strings.Contains(body, `"error"`) {
		t.Errorf("GET /index.html: %s %q, want the JSON 404", resp.Status, body)
	}
}

func TestStatusPageAccess(t *testing.T) {
	e := startAdminTest(t, config.AccessMonitor, "s3cret")
	if resp, body := getPage(t, fromIP("127.0.0.9"), e.url+"/"); resp.StatusCode != 403 || strings.Contains(body, "<html") {
		t.Errorf("GET / from outside http-access: %s, want 403 without the page", resp.Status)
	}
	// With http-api-key set, a client with monitor access gets the page
	// without the key (a browser cannot send it when it opens the page)...
	if resp, _ := getPage(t, nil, e.url+"/"); resp.StatusCode != 200 {
		t.Errorf("GET / without the key: %s, want 200", resp.Status)
	}
	// ...but not the data, which the page asks for with the key.
	if code, _ := e.errorOf(t, nil, "GET", "/api/status", "", ""); code != 403 {
		t.Errorf("GET /api/status without the key: %d, want 403", code)
	}
	if code := e.do(t, nil, "GET", "/api/queues", "s3cret", "", nil); code != 200 {
		t.Errorf("GET /api/queues with the key: %d, want 200", code)
	}
}

// TestStatusPageSelfContained checks the page's source for what would load
// something from elsewhere or break its Content-Security-Policy.
func TestStatusPageSelfContained(t *testing.T) {
	page := statusPageHTML
	external := regexp.MustCompile(`(?i)(\b(src|href|action|srcset|poster|data)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?\s*(https?:)?//|@import|https?://)`)
	if m := external.FindString(page); m != "" {
		t.Errorf("the page refers to an external resource: %q", m)
	}
	// Text from the API is set with textContent only; a style attribute
	// would be refused by the policy's style-src.
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", " style=", "<script src", "<link rel=\"stylesheet\""} {
		if strings.Contains(page, bad) {
			t.Errorf("the page uses %q", bad)
		}
	}
	// statusPageCSP hashes what stands between bare tags: each block must
	// be found, once.
	for _, tag := range []string{"script", "style"} {
		if n := strings.Count(inlineHashes(page, tag), "'sha256-"); n != 1 {
			t.Errorf("%d hashed %s blocks, want 1", n, tag)
		}
		if n := strings.Count(page, "<"+tag); n != 1 {
			t.Errorf("%d <%s tags, want 1 without attributes", n, tag)
		}
	}
	for _, id := range []string{`<table id="queues">`, `<table id="providers">`, `<table id="shaping">`, `id="chart"`, `id="st-recipients"`} {
		if !strings.Contains(page, id) {
			t.Errorf("the page lacks %s", id)
		}
	}
}

// chromiumBinary is the headless browser of the browser test; the test is
// skipped without one (.ci/run installs Debian's chromium, so CI runs it).
func chromiumBinary(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium or chromium-browser on PATH (apt-get install chromium; .ci/run installs it): skipping the browser test")
	return ""
}

// chromiumTimeout bounds one run of chromium. A cold start on a loaded
// two-core machine takes seconds, so it is generous.
const chromiumTimeout = 60 * time.Second

// runChromium runs headless chromium once with args (which end with the
// URL) and returns its standard output. Each run gets its own HOME and
// profile in a temporary directory, and its whole process group is killed
// when it ends, so that no renderer or zygote outlives the test.
func runChromium(t *testing.T, bin string, args ...string) ([]byte, error) {
	t.Helper()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), chromiumTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--user-data-dir=" + filepath.Join(home, "profile"),
		"--no-first-run", "--no-default-browser-check", "--no-proxy-server",
		"--disable-extensions", "--disable-sync", "--disable-background-networking",
		"--disable-component-update", "--hide-scrollbars", "--mute-audio",
	}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		// chromium's stderr is mostly noise (D-Bus, GPU); its end says why.
		msg := stderr.String()
		if len(msg) > 3000 {
			msg = "…" + msg[len(msg)-3000:]
		}
		return stdout.Bytes(), fmt.Errorf("chromium %s: %v (ctx: %v)\n%s", strings.Join(args, " "), err, ctx.Err(), msg)
	}
	return stdout.Bytes(), nil
}

// dumpDOMUntil loads url in chromium and returns its DOM once ok accepts
// it. --virtual-time-budget lets the page's timers and fetches run before
// the DOM is dumped; should a slow machine cut that short, the page is
// loaded again until the deadline.
func dumpDOMUntil(t *testing.T, bin, url string, ok func(dom string) bool) string {
	t.Helper()
	deadline := time.Now().Add(2 * chromiumTimeout)
	for attempt := 1; ; attempt++ {
		out, err := runChromium(t, bin, "--virtual-time-budget=5000", "--dump-dom", url)
		dom := string(out)
		if err == nil && ok(dom) {
			t.Logf("DOM as expected after %d chromium run(s)", attempt)
			return dom
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("%d chromium runs; the last: %v", attempt, err)
			}
			t.Fatalf("after %d chromium runs the DOM still lacks what the test waits for:\n%s", attempt, dom)
		}
		time.Sleep(time.Second)
	}
}

// domRow is the <tr data-queue="name"> element of dom, "" if none.
func domRow(dom, name string) string { return domRowBy(dom, "queue", name) }

// domRowBy is the <tr data-ATTR="name"> element of dom, "" if none.
func domRowBy(dom, attr, name string) string {
	i := strings.Index(dom, `<tr data-`+attr+`="`+name+`"`)
	if i < 0 {
		return ""
	}
	row := dom[i:]
	if j := strings.Index(row, "</tr>"); j >= 0 {
		row = row[:j]
	}
	return row
}

// domCell is the text of the cell of column col in row, as the page's
// data-col attributes name them.
func domCell(row, col string) string {
	m := regexp.MustCompile(`<t[dh][^>]*\bdata-col="` + col + `"[^>]*>(?:<span[^>]*>)?([^<]*)<`).FindStringSubmatch(row)
	if m == nil {
		return ""
	}
	return m[1]
}

// domText is the text of the element of dom with the id, "" if none.
func domText(dom, id string) string {
	m := regexp.MustCompile(`\bid="` + id + `"[^>]*>([^<]*)<`).FindStringSubmatch(dom)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestStatusPageChromium loads the status page in headless Chromium, waits
// for the queue table to show the queue holding mail, checks the providers
// and traffic-shaping tables (from fakes), and saves a screenshot in the test's temporary directory (set
// TERN_STATUSPAGE_SCREENSHOT to a file name to keep a copy).
func TestStatusPageChromium(t *testing.T) {
	bin := chromiumBinary(t)
	fp := newFakeProviders()
	e := startAdminTest(t, config.AccessMonitor, "", fp.options)
	e.put(t, "", "a@example.com mta1", "b@example.com mta1", "c@example.net mta2")
	e.put(t, "", "d@example.com mta1")
	e.put(t, "", "e@example.org mta2")
	if _, err := e.q.Pause(queue.Selector{VMTA: "mta2", Domain: "example.net"}); err != nil {
		t.Fatal(err)
	}
	// A deferred recipient, for a next retry in the table.
	l, err := e.q.Lease(context.Background(), queue.Key{VMTA: "mta2", Domain: "example.org"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	var outs []queue.Outcome
	for _, m := range l.Messages {
		for _, r := range m.Recipients {
			outs = append(outs, queue.Outcome{ID: m.ID, N: r.N, Kind: queue.Deferred, Until: time.Now().Add(15 * time.Minute), Reply: "451 4.7.1 try later"})
		}
	}
	if err := l.Report(outs...); err != nil {
		t.Fatal(err)
	}
	l.Release()

	url := e.url + "/?refresh=1"
	dom := dumpDOMUntil(t, bin, url, func(dom string) bool {
		return domCell(domRow(dom, "example.com/mta1"), "ready") == "3"
	})
	row := domRow(dom, "example.com/mta1")
	for col, want := range map[string]string{"queue": "example.com/mta1", "vmta": "mta1", "domain": "example.com", "ready": "3", "deferred": "0", "total": "3", "paused": "no"} {
		if got := domCell(row, col); got != want {
			t.Errorf("example.com/mta1 %s: %q, want %q\n%s", col, got, want, row)
		}
	}
	if got := domCell(domRow(dom, "example.net/mta2"), "paused"); got != "paused" {
		t.Errorf("example.net/mta2 paused: %q, want paused", got)
	}
	if got := domCell(domRow(dom, "example.org/mta2"), "next"); !strings.HasPrefix(got, "in ") {
		t.Errorf("example.org/mta2 next retry: %q, want in 14m…", got)
	}
	for id, want := range map[string]string{"st-recipients": "5", "st-messages": "3", "st-queues": "3", "live": "Live"} {
		if got := domText(dom, id); !strings.HasPrefix(got, want) {
			t.Errorf("#%s: %q, want %s", id, got, want)
		}
	}
	if got := domCell(domRow(dom, "example.net/mta2"), "queue"); got != "example.net/mta2" {
		t.Errorf("example.net/mta2 row: %q", got)
	}

	// The providers: counts, the window with its ceiling, the mode and
	// the shaping states with their ends.
	gmail := domRowBy(dom, "provider", "gmail.rollup/mta1")
	for col, want := range map[string]string{"provider": "gmail.rollup", "vmta": "mta1", "domains": "150", "queued": "0", "connections": "3"} {
		if got := domCell(gmail, col); got != want {
			t.Errorf("provider gmail.rollup/mta1 %s: %q, want %q\n%s", col, got, want, gmail)
		}
	}
	if got := domCell(gmail, "window"); !strings.HasPrefix(got, "127.0.0.2 3/5 (ceiling 5 until ") {
		t.Errorf("provider gmail.rollup/mta1 window: %q", got)
	}
	if got := domCell(gmail, "state"); got != "backoff (no set end)" {
		t.Errorf("provider gmail.rollup/mta1 state: %q, want the backoff", got)
	}
	net := domRowBy(dom, "provider", "mx.example.net/mta2")
	// The fake's suspension ends 10 minutes after it was made; however
	// slow chromium is, some minutes are left.
	left := regexp.MustCompile(`\(in \d+m \d+s\)`)
	if got := domCell(net, "state"); !strings.HasPrefix(got, "suspend until ") || !left.MatchString(got) ||
		!strings.Contains(got, "; disable-source-ip 127.0.0.3 until ") || !strings.Contains(net, `class="badge bad"`) {
		t.Errorf("provider mx.example.net/mta2 state: %q, want the suspension and the disabled source with their ends\n%s", got, net)
	}
	if got := domCell(net, "queued"); got != "1" {
		t.Errorf("provider mx.example.net/mta2 queued: %q, want 1", got)
	}
	suspend := domRowBy(dom, "state", "mx.example.net/mta2/suspend/")
	for col, want := range map[string]string{"provider": "mx.example.net", "vmta": "mta2", "action": "suspend",
		"rule": `tern.conf:41:5 /^451 4\.7\.1/`, "reply": "451 4.7.1 try later"} {
		if got := domCell(suspend, col); got != want {
			t.Errorf("shaping state suspend %s: %q, want %q\n%s", col, got, want, suspend)
		}
	}
	if got := domCell(suspend, "ends"); !left.MatchString(got) {
		t.Errorf("shaping state suspend ends: %q, want the time left", got)
	}
	if got := domText(dom, "shaping-count"); got != "3 states in force" {
		t.Errorf("#shaping-count: %q", got)
	}
	if strings.Contains(dom, `id="alert" role="alert">`) { // no hidden attribute
		t.Errorf("the page shows an error:\n%s", domText(dom, "alert"))
	}
	if strings.Contains(dom, `id="spool-alert" role="alert">`) {
		t.Errorf("the page reports a spool failure:\n%s", domText(dom, "spool-alert"))
	}

	shot := filepath.Join(t.TempDir(), "status.png")
	if _, err := runChromium(t, bin, "--virtual-time-budget=5000", "--window-size=1280,900", "--screenshot="+shot, url); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	pc, err := png.DecodeConfig(f)
	if err != nil {
		t.Fatalf("the screenshot %s is not a PNG: %v", shot, err)
	}
	if pc.Width != 1280 || pc.Height != 900 {
		t.Errorf("screenshot %dx%d, want 1280x900", pc.Width, pc.Height)
	}
	t.Logf("screenshot: %s", shot)
	if keep := os.Getenv("TERN_STATUSPAGE_SCREENSHOT"); keep != "" {
		data, err := os.ReadFile(shot)
		if err == nil {
			err = os.WriteFile(keep, data, 0o644)
		}
		if err != nil {
			t.Errorf("keeping the screenshot: %v", err)
		}
	}
}

// TestStatusPageChromiumKeyRefused loads the page from a server with
// http-api-key set: the page loads, the API refuses it, and it says so and
// offers the key form.
func TestStatusPageChromiumKeyRefused(t *testing.T) {
	bin := chromiumBinary(t)
	e := startAdminTest(t, config.AccessMonitor, "s3cret")
	dom := dumpDOMUntil(t, bin, e.url+"/?refresh=1", func(dom string) bool {
		return strings.HasPrefix(domText(dom, "alert"), "Access denied")
	})
	if got := domText(dom, "live"); got != "Access denied" {
		t.Errorf("#live: %q, want Access denied", got)
	}
	if strings.Contains(dom, `id="key-form" hidden`) {
		t.Error("the key form stays hidden after a 403")
	}
}

// TestStatusPageChromiumSpoolFailure: after a failed spool write the page
// says on top that mail is refused until a restart.
func TestStatusPageChromiumSpoolFailure(t *testing.T) {
	bin := chromiumBinary(t)
	q := failedQueue(t)
	e := startAdminTest(t, config.AccessMonitor, "", func(o *AdminOptions) { o.Queue = q })
	dom := dumpDOMUntil(t, bin, e.url+"/?refresh=1", func(dom string) bool {
		return strings.HasPrefix(domText(dom, "spool-alert"), "The spool failed")
	})
	if got := domText(dom, "spool-alert"); !strings.Contains(got, "restarted") {
		t.Errorf("#spool-alert: %q, want what to do about it", got)
	}
}
