package main

// Tests of tern inject: the binary submits .eml files to a running tern
// serve over its AUTH listener (in the clear and with STARTTLS), and the
// messages arrive at the sink; refusals, failures and usage errors get the
// exit codes the usage promises.

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// writeEML writes a message file for rcpt carrying marker (see marker) and
// returns its path. crlf chooses the line ends.
func writeEML(t *testing.T, dir, name, rcpt, marker string, crlf bool) string {
	t.Helper()
	msg := fmt.Sprintf("From: App <app@example.org>\nTo: %s\nSubject: inject %s\nX-Test-Marker: %s\n\nbody of %s\n",
		rcpt, marker, marker, marker)
	if crlf {
		msg = strings.ReplaceAll(msg, "\n", "\r\n")
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(msg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeCert writes a self-signed certificate for 127.0.0.1 and its key as
// PEM files in dir, for smtp-server-tls-certificate.
func writeCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	cfg, _ := smtptest.SelfSigned(t, "127.0.0.1")
	c := cfg.Certificates[0]
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for _, f := range []struct {
		path, kind string
		der        []byte
	}{{certFile, "CERTIFICATE", c.Certificate[0]}, {keyFile, "PRIVATE KEY", der}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.kind, Bytes: f.der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// TestInjectWithAuth submits a directory of .eml files over AUTH PLAIN in
// parallel and finds every message at the sink, sent through the VMTA
// that --vmta named; then one file over STARTTLS, a file with a refused
// recipient, and the refusals of a session without AUTH and of a wrong
// password.
func TestInjectWithAuth(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("inj.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort, subPort := freePort(t), freePort(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writeCert(t, dir)
	p := startTern(t, writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sink.Port(), "")+fmt.Sprintf(`
smtp-server-tls-certificate %s %s
smtp-listener 127.0.0.1:%d source=submission
<source submission>
    require-auth yes
    always-allow-relaying no
    allow-unencrypted-plain-auth yes
</source>
<source {auth}>
    always-allow-relaying yes
    process-x-virtual-mta yes
</source>
<smtp-user demo>
    password-hash %s
    source {auth}
</smtp-user>
`, certFile, keyFile, subPort, hash)))
	sub := fmt.Sprintf("127.0.0.1:%d", subPort)
	password := []string{"TERN_SMTP_PASSWORD=s3cret"}

	// A directory of 12 messages, with a file and a subdirectory that
	// inject must leave alone.
	mail := filepath.Join(dir, "mail")
	if err := os.MkdirAll(filepath.Join(mail, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	const n = 12
	for i := range n {
		writeEML(t, mail, fmt.Sprintf("m%02d.eml", i), fmt.Sprintf("r%d@inj.test", i), fmt.Sprintf("inj-%d", i), i%2 == 0)
	}
	writeEML(t, mail, "notes.txt", "x@inj.test", "not-eml", false)
	writeEML(t, filepath.Join(mail, "sub"), "deeper.eml", "x@inj.test", "deeper", false)

	r := cliRun(t, password, "inject", "--smtp", sub, "--user", "demo", "--concurrency", "4", "--vmta", "mta1", mail)
	r.want(t, "inject of the directory", 0, fmt.Sprintf("accepted %d, refused 0, failed 0 (%d files in ", n, n))
	if strings.Contains(r.stderr, "[#") {
		t.Errorf("a progress bar was drawn on a pipe:\n%s", r.stderr)
	}
	got := byMarker(t, sink.WaitMessages(t, n, deliverTimeout))
	for i := range n {
		m, ok := got[fmt.Sprintf("inj-%d", i)]
		if !ok {
			t.Errorf("inj-%d did not arrive; got %d messages", i, len(got))
			continue
		}
		checkFrom(t, fmt.Sprintf("inj-%d", i), m, mta1)
		if strings.Contains(string(m.Data), "X-Virtual-MTA") {
			t.Errorf("inj-%d arrived with the X-Virtual-MTA header", i)
		}
	}

	// STARTTLS with the test certificate, --json.
	one := writeEML(t, dir, "tls.eml", "tls@inj.test", "inj-tls", false)
	var sum injectSummary
	cliRun(t, password, "inject", "--smtp", sub, "--user", "demo", "--starttls", "--tls-insecure", "--json", one).
		decode(t, "inject --starttls --json", &sum)
	if sum.Accepted != 1 || len(sum.Files) != 1 || sum.Files[0].QueueID == "" ||
		sum.Files[0].Sender != "app@example.org" || strings.Join(sum.Files[0].Recipients, ",") != "tls@inj.test" {
		t.Errorf("inject --starttls --json: %+v", sum)
	}
	// The certificate is self-signed: without --tls-insecure it fails.
	r = cliRun(t, password, "inject", "--smtp", sub, "--user", "demo", "--starttls", one)
	r.want(t, "STARTTLS with an unverified certificate", exitFailed, "failed 1", "stderr:STARTTLS", "stderr:certificate")

	// One recipient refused, the other sent: the file counts as refused.
	part := writeEML(t, dir, "part.eml", "ignored@inj.test", "inj-part", true)
	r = cliRun(t, nil, "inject", "--smtp", fmt.Sprintf("127.0.0.1:%d", smtpPort), "--to", "part@inj.test,bad@inj..test", part)
	r.want(t, "a refused recipient", exitFailed, "accepted 0, refused 1", "stderr:<bad@inj..test>", "stderr:sent to the other 1 recipient")
	arrived := byMarker(t, sink.WaitMessages(t, n+2, deliverTimeout))
	if m, ok := arrived["inj-part"]; !ok || strings.Join(m.Rcpts, ",") != "part@inj.test" {
		t.Errorf("inj-part: arrived %v for %q, want only part@inj.test", ok, m.Rcpts)
	}
	if _, ok := arrived["inj-tls"]; !ok {
		t.Error("inj-tls (over STARTTLS) did not arrive")
	}

	// Without AUTH the submission listener refuses every file.
	var noAuth injectSummary
	r = cliRun(t, nil, "inject", "--smtp", sub, "--json", mail)
	if r.code != exitFailed || json.Unmarshal([]byte(r.stdout), &noAuth) != nil || noAuth.Refused != n ||
		!strings.HasPrefix(noAuth.Files[0].Reply, "MAIL: 530") {
		t.Errorf("inject without AUTH: %+v\n%s", noAuth, r)
	}
	// A wrong password: every file refused, with AUTH's reply, and the
	// run stops trying after the first refusals.
	r = cliRun(t, []string{"TERN_SMTP_PASSWORD=wrong"}, "inject", "--smtp", sub, "--user", "demo", "--concurrency", "2", mail)
	r.want(t, "a wrong password", exitFailed, fmt.Sprintf("accepted 0, refused %d, failed 0", n), "stderr:AUTH: 535")
	if len(sink.Messages()) != n+2 {
		t.Errorf("the sink holds %d messages after the refused runs, want %d", len(sink.Messages()), n+2)
	}
	p.stop(t)
}

// TestInjectUnreachable: a listener nobody runs is exit 3, with nothing
// sent.
func TestInjectUnreachable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := writeEML(t, dir, "a.eml", "a@inj.test", "a", false)
	writeEML(t, dir, "b.eml", "b@inj.test", "b", false)
	r := cliRun(t, nil, "inject", "--smtp", fmt.Sprintf("127.0.0.1:%d", freePort(t)), f, dir)
	r.want(t, "inject to a closed port", exitUnreachable, "accepted 0, refused 0, failed 3", "stderr:cannot connect")
}

// TestInjectUsage: usage errors exit 2 before anything is sent.
func TestInjectUsage(t *testing.T) {
	dir := t.TempDir()
	f := writeEML(t, dir, "a.eml", "a@inj.test", "a", false)
	empty := t.TempDir()
	for _, args := range [][]string{
		{},
		{filepath.Join(dir, "missing.eml")},
		{empty},
		{"--user", "demo", f},
		{"--password", "x", f},
		{"--concurrency", "0", f},
		{"--tls-insecure", f},
		{"--smtp", "nohost", f},
		{"--from", "nobody", f},
		{"--nope", f},
	} {
		code, _, errs := runTern(t, "", append([]string{"inject"}, args...)...)
		if code != exitUsage || !strings.Contains(errs, "usage: tern inject") {
			t.Errorf("inject %q: exit %d, want 2 with the usage\n%s", args, code, errs)
		}
	}
}

func TestInjectEnvelope(t *testing.T) {
	msg := []byte("From: A <a@example.org>\r\nSender: s@example.org\r\nTo: x@d.test, \"Y\" <y@d.test>\r\nCc: X@d.test, c@d.test\r\nBcc: b@d.test\r\n\r\nbody\r\n")
	from, to, err := envelope(msg, "", nil)
	if err != nil || from != "s@example.org" || strings.Join(to, " ") != "x@d.test y@d.test c@d.test b@d.test" {
		t.Errorf("envelope = %q %q %v, want Sender and To, Cc, Bcc without duplicates", from, to, err)
	}
	from, to, err = envelope(msg, "<>", []string{"z@d.test"})
	if err != nil || from != "" || strings.Join(to, " ") != "z@d.test" {
		t.Errorf("envelope with flags = %q %q %v", from, to, err)
	}
	for _, bad := range []string{"To: x@d.test\n\nno from\n", "From: a@example.org\n\nno recipient\n", "From: not an address\nTo: x@d.test\n\n"} {
		if _, _, err := envelope([]byte(bad), "", nil); err == nil {
			t.Errorf("envelope(%q) found an envelope", bad)
		}
	}
	if id := queueIDOf("2.0.0 OK 18eb5b55a47a9a0f"); id != "18eb5b55a47a9a0f" {
		t.Errorf("queueIDOf Tern's reply = %q", id)
	}
	if id := queueIDOf("2.0.0 Ok: queued as 4Zx1"); id != "4Zx1" {
		t.Errorf("queueIDOf Postfix's reply = %q", id)
	}
}
