package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/delivery/smtptest/world"
)

// The generated Tern configuration loads without errors or warnings.
func TestWorldTernConfig(t *testing.T) {
	dir := t.TempDir()
	src := worldTernConfig(dir, 2525, 8081, "127.0.1.53:53", 25)
	cfg, err := config.Parse(filepath.Join(dir, "tern.conf"), []byte(src), config.Options{Hostname: "bench.test"})
	if err != nil {
		t.Fatalf("the world's tern.conf is refused: %v\n%s", err, src)
	}
	if len(cfg.Warnings) > 0 {
		t.Errorf("warnings: %v", cfg.Warnings)
	}
	for _, want := range []string{"smtp-source-host 127.0.0.2 ", "name-server 127.0.1.53:53", "records d,b,t", "retry-after 1m", "default-smtp-port 25"} {
		if !strings.Contains(src, want) {
			t.Errorf("config lacks %q", want)
		}
	}
}

// Postfix's smtp client runs chrooted (to read the world's resolv.conf),
// smtpd listens on the benchmark's port, the rest is not chrooted.
func TestWorldMasterCf(t *testing.T) {
	in := `smtp      inet  n       -       y       -       -       smtpd
pickup    unix  n       -       y       60      1       pickup
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       y       -       -       smtp
#smtp      unix  -       -       n       -       -       smtp
`
	out := string(worldMasterCf([]byte(in), 2626))
	for _, want := range []string{
		"127.0.0.1:2626 inet n - n - - smtpd\n",
		"pickup unix n - n 60 1 pickup\n",
		"smtp unix - - y - - smtp\n",
		"relay unix - - n - - smtp\n",
		"#smtp      unix  -       -       n       -       -       smtp\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("master.cf lacks %q:\n%s", want, out)
		}
	}
	main := string(worldPostfixConfig("/x", 25))
	for _, want := range []string{"smtp_bind_address = 127.0.0.3\n", "smtp_tcp_port = 25\n", "minimal_backoff_time = 60s\n", "maillog_file = /x/maillog\n"} {
		if !strings.Contains(main, want) {
			t.Errorf("main.cf lacks %q", want)
		}
	}
}

// Bounced recipients come from Tern's b records and Postfix's
// status=bounced lines.
func TestBouncedRecipients(t *testing.T) {
	dir := t.TempDir()
	acct := "type,timeLogged,timeQueued,orig,rcpt,orcpt\n" +
		"d,2026-03-02T09:00:00Z,,bench@bench-sender.test,u1@d0001.bigmail.test,\n" +
		"b,2026-03-02T09:00:00Z,,bench@bench-sender.test,nouser1@d0001.bigmail.test,\n" +
		"b,2026-03-02T09:00:01Z,,bench@bench-sender.test,\"u2@d0002.nxdomain.test\",\n" +
		"b,2026-03-02T09:00:01Z,,bench@bench-s"
	if err := os.WriteFile(filepath.Join(dir, "acct.csv"), []byte(acct), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := (&ternWorld{dir: dir}).bounced()
	if err != nil || !slices.Equal(got, []string{"nouser1@d0001.bigmail.test", "u2@d0002.nxdomain.test"}) {
		t.Errorf("tern bounced = %v, %v", got, err)
	}
	log := `Mar  2 09:00:00 peer postfix/smtp[1]: 1A2B: to=<nouser3@d0003.softmail.test>, relay=mx1.softmail.test[127.11.0.1]:25, delay=0.1, dsn=5.1.1, status=bounced (host said: 550 5.1.1 no such user)
Mar  2 09:00:00 peer postfix/smtp[1]: 1A2C: to=<u4@d0004.softmail.test>, relay=mx1.softmail.test[127.11.0.1]:25, delay=0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued)
Mar  2 09:00:00 peer postfix/smtp[1]: 1A2D: to=<u5@d0005.nxdomain.test>, relay=none, delay=0, dsn=5.4.4, status=bounced (Host or domain name not found)
`
	if err := os.WriteFile(filepath.Join(dir, "maillog"), []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err = (&postfixWorld{srv: postfixServer{dir: dir}}).bounced()
	if err != nil || !slices.Equal(got, []string{"nouser3@d0003.softmail.test", "u5@d0005.nxdomain.test"}) {
		t.Errorf("postfix bounced = %v, %v", got, err)
	}
	if got, err := (&ternWorld{dir: t.TempDir()}).bounced(); err != nil || got != nil {
		t.Errorf("no acct file: %v, %v", got, err)
	}
}

func TestParseMTAs(t *testing.T) {
	if m, err := parseMTAs("postfix, tern"); err != nil || !slices.Equal(m, []string{"postfix", "tern"}) {
		t.Errorf("parseMTAs = %v, %v", m, err)
	}
	for _, bad := range []string{"", "exim", "tern,tern"} {
		if _, err := parseMTAs(bad); err == nil {
			t.Errorf("parseMTAs(%q) accepted", bad)
		}
	}
}

// The injector delivers a world's load straight to a provider's MX host:
// every message without an unknown user is accepted, once, and the
// per-provider figures add up.
func TestInjectIntoWorld(t *testing.T) {
	spec := world.Spec{Seed: 3, Providers: []world.Provider{
		{Name: "only", Domains: 5, Weight: 1},
		{Name: "sender", Names: []string{"bench-sender.test"}, Sender: true},
	}}
	w := world.StartT(t, spec)
	load := w.Load(300)
	var host string
	for _, h := range w.Hosts() {
		if h.Provider == "only" {
			host = h.IP
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := inject(ctx, fmt.Sprintf("%s:%d", host, w.Port()), load, 4)
	wantOK, wantRcpts := 0, 0
	for _, m := range load {
		ok := true
		for _, r := range m.To {
			ok = ok && r.Fate == world.Deliverable
		}
		if ok {
			wantOK++
			wantRcpts += len(m.To)
		}
		if res.Refused[m.Seq] == ok {
			t.Errorf("message %d: refused %v", m.Seq, res.Refused[m.Seq])
		}
	}
	if res.Accepted != wantOK || res.Accepted+res.Failed != len(load) {
		t.Errorf("accepted %d, failed %d; want %d accepted of %d", res.Accepted, res.Failed, wantOK, len(load))
	}
	s := w.Snapshot()
	p := s.Provider("only")
	if p.Recipients != int64(wantRcpts) || p.Duplicates != 0 || p.Messages != int64(wantOK) {
		t.Errorf("world saw %+v, want %d recipients in %d messages", p, wantRcpts, wantOK)
	}

	exp := expectations(w, load)
	var r worldResult
	fillProviders(&r, w, s, exp, load, res.Refused, nil)
	pr, _ := findProvider(r, "only")
	if pr.Delivered != int64(wantRcpts) || r.Delivered != pr.Delivered || len(r.ClientIPs) != 1 || r.ClientIPs[0] != "127.0.0.1" {
		t.Errorf("result %+v", r)
	}
	var out strings.Builder
	printWorld(&out, spec, exp, []worldResult{r, r}, 1, options{N: 300, Sessions: 4, Window: time.Minute})
	if !strings.Contains(out.String(), "1.00×") {
		t.Errorf("table without a ratio:\n%s", out.String())
	}
}
