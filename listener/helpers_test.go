package listener_test

// The test harness of package listener, shared by the end-to-end tests
// (e2e_test.go) and the durability tests (durability_test.go). Everything
// here talks to a real Server over real loopback sockets.
//
// Typical use:
//
//	ts := startServer(t, `
//	smtp-listener 127.0.0.1:{{.Port2525}}
//	<source 127.0.0.1>
//	    always-allow-relaying yes
//	</source>`)
//	c := dial(t, ts.Addr("2525"))
//	id, err := send(c, "a@b.example", []string{"x@example.com"}, message())
//	m := ts.spooled(t, id)
//
// A config is a text/template over *confVars: {{.Port25}}, {{.Port465}},
// {{.Port587}}, {{.Port2525}} or {{.Port "any-name"}} give free loopback
// ports (ts.Port/ts.Addr return the same ones), {{.CertFile}} and
// {{.KeyFile}} write the test certificate and key into the test's temporary
// directory and give their paths, {{.Dir}} is that directory and
// {{.PasswordHash "secret"}} is a bcrypt hash for password-hash.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/template"
	"time"

	mtextproto "github.com/emersion/go-message/textproto"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/listener"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

const (
	// testHostname is the host-name of every test server (config.Options
	// Hostname) and a name in the test certificate.
	testHostname = "tern.test"
	// clientTimeout bounds every client command and every wait on the
	// server, so a hung test fails instead of stalling the package.
	clientTimeout = 20 * time.Second
	// shutdownTimeout bounds the cleanup's Server.Shutdown.
	shutdownTimeout = 10 * time.Second
)

// serverOpts are the optional inputs of startServerWith. The zero value is
// what startServer uses.
type serverOpts struct {
	// Spool replaces the queue; testServer.Queue is then nil.
	Spool listener.Spooler
	// SpoolDir is where the queue lives; "" means a new t.TempDir().
	// Ignored when Spool is set.
	SpoolDir string
	// FreeSpace, Now, CommandTimeout and WriteTimeout are passed to
	// listener.Options as they are.
	FreeSpace      func() (uint64, error)
	Now            func() time.Time
	CommandTimeout time.Duration
	WriteTimeout   time.Duration
	// MailTimeout and ReservedAuthTimeout are passed on too; zero is the
	// server's default (30 s and 10 s).
	MailTimeout         time.Duration
	ReservedAuthTimeout time.Duration
}

// testServer is a running listener.Server with its queue.
type testServer struct {
	Server *listener.Server
	// Queue is the spool (nil when serverOpts.Spool was given); SpoolDir is
	// its directory.
	Queue    *queue.Queue
	SpoolDir string
	// Config and Registry are what the last Apply got.
	Config   *config.Config
	Registry *vmta.Registry

	vars     *confVars
	logs     *syncBuffer
	stopOnce sync.Once
}

// startServer starts a server on the config template conf with a fresh
// queue in a temporary directory; see the file comment for the template.
// Cleanup shuts the server down and closes the queue.
func startServer(t testing.TB, conf string) *testServer {
	t.Helper()
	return startServerWith(t, conf, serverOpts{})
}

// startServerWith is startServer with options.
func startServerWith(t testing.TB, conf string, o serverOpts) *testServer {
	t.Helper()
	ts := &testServer{vars: &confVars{t: t, dir: t.TempDir()}, logs: &syncBuffer{}}
	// Registered first, so it runs last: the server's log, when the test
	// failed.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", ts.Logs())
		}
	})
	logger := slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	spool := o.Spool
	if spool == nil {
		ts.SpoolDir = o.SpoolDir
		if ts.SpoolDir == "" {
			ts.SpoolDir = t.TempDir()
		}
		ts.Queue = openSpoolLogged(t, ts.SpoolDir, logger)
		spool = ts.Queue
	}
	ts.Server = listener.New(listener.Options{
		Spool:          spool,
		Logger:         logger,
		FreeSpace:      o.FreeSpace,
		Now:            o.Now,
		CommandTimeout: o.CommandTimeout,
		WriteTimeout:   o.WriteTimeout,

		MailTimeout:         o.MailTimeout,
		ReservedAuthTimeout: o.ReservedAuthTimeout,
	})
	t.Cleanup(ts.Stop)

	// A port picked free may be taken before Apply binds it: pick new
	// ones and try again.
	for attempt := 1; ; attempt++ {
		err := ts.apply(conf)
		if err == nil {
			return ts
		}
		if errors.Is(err, syscall.EADDRINUSE) && attempt < 5 {
			ts.vars.resetPorts()
			continue
		}
		t.Fatalf("start server: %v", err)
	}
}

// Apply renders conf with the ports and files of the running server (a port
// the first config did not use is picked now) and applies it, as a reload
// does.
func (ts *testServer) Apply(t testing.TB, conf string) {
	t.Helper()
	if err := ts.apply(conf); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

func (ts *testServer) apply(conf string) error {
	cfg, reg, err := ts.vars.build(conf)
	if err != nil {
		return err
	}
	if err := ts.Server.Apply(cfg, reg); err != nil {
		return err
	}
	ts.Config, ts.Registry = cfg, reg
	return nil
}

// Stop shuts the server down (sessions get shutdownTimeout to end, then are
// cut) and closes the queue. It is idempotent; cleanup calls it.
func (ts *testServer) Stop() {
	ts.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := ts.Server.Shutdown(ctx); err != nil {
			ts.vars.t.Logf("Shutdown: %v (sessions were still open after %v)", err, shutdownTimeout)
		}
		if ts.Queue != nil {
			if err := ts.Queue.Close(); err != nil && !errors.Is(err, queue.ErrClosed) {
				ts.vars.t.Errorf("queue Close: %v", err)
			}
		}
	})
}

// Port returns the port the config got for {{.PortNAME}} or {{.Port "NAME"}}.
func (ts *testServer) Port(name string) int {
	ts.vars.mu.Lock()
	defer ts.vars.mu.Unlock()
	p, ok := ts.vars.ports[name]
	if !ok {
		ts.vars.t.Fatalf("the config has no port %q", name)
	}
	return p
}

// Addr returns 127.0.0.1:Port(name).
func (ts *testServer) Addr(name string) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ts.Port(name)))
}

// Logs returns what the server has logged so far (slog text format).
func (ts *testServer) Logs() string { return ts.logs.String() }

// spooled reads message id back from the server's queue.
func (ts *testServer) spooled(t testing.TB, id queue.ID) spooledMessage {
	t.Helper()
	if ts.Queue == nil {
		t.Fatal("spooled: this server has no queue (serverOpts.Spool was set)")
	}
	return readSpooled(t, ts.Queue, id)
}

// confVars is the data of a config template. Ports and the certificate are
// made when the template first asks for them.
type confVars struct {
	t   testing.TB
	dir string

	mu    sync.Mutex
	ports map[string]int
	cert  string
	key   string
}

func (v *confVars) Port25() int   { return v.Port("25") }
func (v *confVars) Port465() int  { return v.Port("465") }
func (v *confVars) Port587() int  { return v.Port("587") }
func (v *confVars) Port2525() int { return v.Port("2525") }

// Port returns the free loopback port named name, picking it on first use.
func (v *confVars) Port(name string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	if p, ok := v.ports[name]; ok {
		return p
	}
	if v.ports == nil {
		v.ports = map[string]int{}
	}
	p := freePort(v.t)
	v.ports[name] = p
	return p
}

func (v *confVars) resetPorts() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.ports = nil
}

// CertFile writes the test certificate (PEM) into the test directory and
// returns its path.
func (v *confVars) CertFile() string {
	v.writeCert()
	return v.cert
}

// KeyFile writes the test certificate's private key (PEM) and returns its
// path.
func (v *confVars) KeyFile() string {
	v.writeCert()
	return v.key
}

// Dir is the test's temporary directory the config files go to.
func (v *confVars) Dir() string { return v.dir }

// PasswordHash returns a bcrypt hash of password for password-hash, at the
// minimum cost so that AUTH stays fast under the race detector.
func (v *confVars) PasswordHash(password string) string {
	if h, ok := hashes.Load(password); ok {
		return h.(string)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		v.t.Fatalf("bcrypt: %v", err)
	}
	hashes.Store(password, string(h))
	return string(h)
}

var hashes sync.Map // password → bcrypt hash

func (v *confVars) writeCert() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cert != "" {
		return
	}
	tc := getTestCert(v.t)
	v.cert, v.key = filepath.Join(v.dir, "cert.pem"), filepath.Join(v.dir, "key.pem")
	if err := os.WriteFile(v.cert, tc.certPEM, 0o600); err != nil {
		v.t.Fatal(err)
	}
	if err := os.WriteFile(v.key, tc.keyPEM, 0o600); err != nil {
		v.t.Fatal(err)
	}
}

// build renders conf and parses and builds it.
func (v *confVars) build(conf string) (*config.Config, *vmta.Registry, error) {
	tmpl, err := template.New("tern.conf").Option("missingkey=error").Parse(conf)
	if err != nil {
		return nil, nil, fmt.Errorf("config template: %w", err)
	}
	var src bytes.Buffer
	if err := tmpl.Execute(&src, v); err != nil {
		return nil, nil, fmt.Errorf("config template: %w", err)
	}
	cfg, err := config.Parse(filepath.Join(v.dir, "tern.conf"), src.Bytes(), config.Options{Hostname: testHostname})
	if err != nil {
		return nil, nil, fmt.Errorf("config.Parse:\n%v\nconfig:\n%s", err, src.String())
	}
	reg, err := vmta.Build(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("vmta.Build: %w", err)
	}
	return cfg, reg, nil
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// freePort returns a loopback port that was free a moment ago and that no
// other test of this process got.
func freePort(t testing.TB) int {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		portsMu.Lock()
		used := portsUsed[p]
		portsUsed[p] = true
		portsMu.Unlock()
		if !used {
			return p
		}
	}
	t.Fatal("free port: no unused port after 100 tries")
	return 0
}

// testCert is a self-signed ECDSA certificate for tern.test, localhost and
// 127.0.0.1, made once per test binary.
type testCert struct {
	certPEM, keyPEM []byte
	pool            *x509.CertPool
}

var (
	certOnce sync.Once
	certVal  testCert
	certErr  error
)

func getTestCert(t testing.TB) testCert {
	certOnce.Do(func() { certVal, certErr = makeTestCert() })
	if certErr != nil {
		t.Fatalf("test certificate: %v", certErr)
	}
	return certVal
}

func makeTestCert() (testCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return testCert{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: testHostname},
		DNSNames:              []string{testHostname, "localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return testCert{}, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return testCert{}, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return testCert{}, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return testCert{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
		pool:    pool,
	}, nil
}

// clientTLS is a client TLS config that trusts the test certificate and
// checks the name tern.test.
func clientTLS(t testing.TB) *tls.Config {
	return &tls.Config{RootCAs: getTestCert(t).pool, ServerName: testHostname}
}

// dialConn opens a TCP connection to addr, from localIP when it is not
// empty (any 127/8 address works on Linux loopback). Cleanup closes it.
func dialConn(t testing.TB, localIP, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: clientTimeout}
	if localIP != "" {
		ip := net.ParseIP(localIP)
		if ip == nil {
			t.Fatalf("dial: bad local IP %q", localIP)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %q: %v", addr, localIP, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// newClient wraps conn in a go-smtp client with short timeouts. Cleanup
// closes it.
func newClient(t testing.TB, conn net.Conn) *smtp.Client {
	c := smtp.NewClient(conn)
	c.CommandTimeout = clientTimeout
	c.SubmissionTimeout = clientTimeout
	t.Cleanup(func() { c.Close() })
	return c
}

// dial connects a plaintext go-smtp client to addr. It has not said EHLO
// yet: the first command does (as "localhost"), or call Hello.
func dial(t testing.TB, addr string) *smtp.Client {
	t.Helper()
	return newClient(t, dialConn(t, "", addr))
}

// dialFrom is dial from the local address localIP (such as "127.0.0.9").
func dialFrom(t testing.TB, localIP, addr string) *smtp.Client {
	t.Helper()
	return newClient(t, dialConn(t, localIP, addr))
}

// dialStartTLS connects, says EHLO and runs STARTTLS with cfg (nil:
// clientTLS), failing the test if any step fails. The handshake itself
// happens with the next command.
func dialStartTLS(t testing.TB, addr string, cfg *tls.Config) *smtp.Client {
	t.Helper()
	if cfg == nil {
		cfg = clientTLS(t)
	}
	conn := dialConn(t, "", addr)
	c, err := smtp.NewClientStartTLS(conn, cfg)
	if err != nil {
		t.Fatalf("STARTTLS to %s: %v", addr, err)
	}
	c.CommandTimeout = clientTimeout
	c.SubmissionTimeout = clientTimeout
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.example"); err != nil {
		t.Fatalf("EHLO after STARTTLS: %v", err)
	}
	if _, ok := c.TLSConnectionState(); !ok {
		t.Fatal("no TLS after STARTTLS")
	}
	return c
}

// dialTLS connects to an implicit-TLS listener with cfg (nil: clientTLS).
func dialTLS(t testing.TB, addr string, cfg *tls.Config) *smtp.Client {
	t.Helper()
	if cfg == nil {
		cfg = clientTLS(t)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: clientTimeout}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return newClient(t, conn)
}

// Stages of a transaction, the prefixes of send's errors.
const (
	stageMail    = "MAIL FROM"
	stageRcpt    = "RCPT TO"
	stageData    = "DATA"
	stageDataEnd = "end of DATA"
)

var acceptedRE = regexp.MustCompile(`^2\.0\.0 OK ([0-9a-f]{16})$`)

// send runs one transaction (MAIL, each RCPT, DATA with msg) and returns the
// queue ID of the 250 reply, which must read "2.0.0 OK <16 hex digits>".
// A refusal is returned as an error prefixed with the stage (stageMail...)
// that wraps the server's *smtp.SMTPError; see wantRefusal. After a refused
// RCPT the transaction is reset (RSET).
func send(c *smtp.Client, from string, to []string, msg string) (queue.ID, error) {
	return sendWith(c, from, nil, to, nil, msg)
}

// sendWith is send with MAIL and RCPT parameters (either may be nil).
func sendWith(c *smtp.Client, from string, mailOpts *smtp.MailOptions, to []string, rcptOpts *smtp.RcptOptions, msg string) (queue.ID, error) {
	if err := c.Mail(from, mailOpts); err != nil {
		return 0, fmt.Errorf("%s:<%s>: %w", stageMail, from, err)
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, rcptOpts); err != nil {
			c.Reset()
			return 0, fmt.Errorf("%s:<%s>: %w", stageRcpt, rcpt, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", stageData, err)
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return 0, fmt.Errorf("%s: writing: %w", stageData, err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", stageDataEnd, err)
	}
	m := acceptedRE.FindStringSubmatch(resp.StatusText)
	if m == nil {
		return 0, fmt.Errorf("%s: 250 reply %q does not carry a queue id as 2.0.0 OK <16 hex>", stageDataEnd, resp.StatusText)
	}
	id, err := queue.ParseID(m[1])
	if err != nil {
		return 0, fmt.Errorf("%s: queue id %q: %w", stageDataEnd, m[1], err)
	}
	return id, nil
}

// mustSend is send that fails the test unless the message is accepted.
func mustSend(t testing.TB, c *smtp.Client, from string, to []string, msg string) queue.ID {
	t.Helper()
	id, err := send(c, from, to, msg)
	if err != nil {
		t.Fatalf("send from <%s> to %v: %v", from, to, err)
	}
	return id
}

// wantRefusal fails the test unless err is the server's reply code with
// enhanced code enh, given at stage (one of the stage constants; "" for
// any). It returns the reply.
func wantRefusal(t testing.TB, err error, stage string, code int, enh smtp.EnhancedCode) *smtp.SMTPError {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("want reply %d %d.%d.%d at %s, got %v", code, enh[0], enh[1], enh[2], stageName(stage), err)
	}
	if se.Code != code || se.EnhancedCode != enh {
		t.Fatalf("want reply %d %d.%d.%d at %s, got %d %d.%d.%d %s (%v)", code, enh[0], enh[1], enh[2], stageName(stage),
			se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message, err)
	}
	if stage != "" && !strings.HasPrefix(err.Error(), stage) {
		t.Fatalf("want the refusal at %s, got it at: %v", stage, err)
	}
	return se
}

func stageName(s string) string {
	if s == "" {
		return "any stage"
	}
	return s
}

// message returns a small RFC 5322 message: From, To, Subject, Message-ID,
// then the header lines in extra (each "Name: value", no CRLF), a blank
// line and a one-line body.
func message(extra ...string) string {
	var b strings.Builder
	b.WriteString("From: Sender <a@b.example>\r\nTo: <x@example.com>\r\nSubject: test\r\n")
	fmt.Fprintf(&b, "Message-ID: <%d@b.example>\r\n", msgSeq.Add(1))
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\nHello from the listener tests.\r\n")
	return b.String()
}

var msgSeq atomic.Int64

// messageOfSize returns a message of exactly size bytes (at least 80), as
// the server counts it: CRLF line ends, no line starting with a dot.
func messageOfSize(size int) string {
	head := "From: <a@b.example>\r\nTo: <x@example.com>\r\nSubject: big\r\n\r\n"
	n := size - len(head)
	if n%80 == 1 { // no line of one byte: move it into the header
		head = strings.Replace(head, "big", "big!", 1)
		n--
	}
	var b strings.Builder
	b.WriteString(head)
	for ; n >= 80; n -= 80 {
		b.WriteString(strings.Repeat("x", 78) + "\r\n")
	}
	if n > 0 {
		b.WriteString(strings.Repeat("y", n-2) + "\r\n")
	}
	return b.String()
}

// spooledMessage is a message as the queue holds it.
type spooledMessage struct {
	ID         queue.ID
	Envelope   queue.Envelope
	Recipients []queue.RecipientState
	Body       []byte
	// Header is the parsed header of Body.
	Header mtextproto.Header
}

// Values returns every value of header field name, top first.
func (m spooledMessage) Values(name string) []string {
	var vals []string
	for f := m.Header.FieldsByKey(name); f.Next(); {
		vals = append(vals, f.Value())
	}
	return vals
}

// FieldNames returns the names of the header fields, top first.
func (m spooledMessage) FieldNames() []string {
	var names []string
	for f := m.Header.Fields(); f.Next(); {
		names = append(names, f.Key())
	}
	return names
}

// readSpooled reads message id (envelope, queued recipients, body) from q,
// failing the test if it is not there.
func readSpooled(t testing.TB, q *queue.Queue, id queue.ID) spooledMessage {
	t.Helper()
	e, err := q.Lookup(id)
	if err != nil {
		t.Fatalf("message %s not in the spool: %v", id, err)
	}
	body, err := q.Body(id)
	if err != nil {
		t.Fatalf("body of %s: %v", id, err)
	}
	hdr, err := mtextproto.ReadHeader(bufio.NewReader(bytes.NewReader(body)))
	if err != nil {
		t.Fatalf("header of spooled message %s: %v\n%s", id, err, body)
	}
	return spooledMessage{ID: id, Envelope: e.Envelope, Recipients: e.Recipients, Body: body, Header: hdr}
}

// allSpooled returns every message with recipients due in q, oldest first.
// It leases each key's recipients and releases them again, which leaves
// them due at once: use it on a queue no delivery worker is using.
func allSpooled(t testing.TB, q *queue.Queue) []spooledMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	seen := map[queue.ID]bool{}
	var ids []queue.ID
	for _, ks := range q.Keys(queue.Selector{}) {
		l, err := q.Lease(ctx, ks.Key, ks.Total()+1)
		if err != nil {
			t.Fatalf("lease %s: %v", ks.Key, err)
		}
		if l == nil {
			continue
		}
		for _, e := range l.Messages {
			if !seen[e.ID] {
				seen[e.ID] = true
				ids = append(ids, e.ID)
			}
		}
		l.Release()
	}
	slices.Sort(ids)
	out := make([]spooledMessage, len(ids))
	for i, id := range ids {
		out[i] = readSpooled(t, q, id)
	}
	return out
}

// openSpool opens the queue in dir, for example to read back what a stopped
// server spooled. Cleanup closes it (closing it earlier is fine).
func openSpool(t testing.TB, dir string) *queue.Queue {
	t.Helper()
	return openSpoolLogged(t, dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func openSpoolLogged(t testing.TB, dir string, logger *slog.Logger) *queue.Queue {
	t.Helper()
	q, err := queue.Open(queue.Options{Dir: dir, Logger: logger, CacheSize: 8 << 20, MemTableSize: 4 << 20})
	if err != nil {
		t.Fatalf("queue.Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil && !errors.Is(err, queue.ErrClosed) {
			t.Errorf("queue Close: %v", err)
		}
	})
	return q
}

// failingSpool is a Spooler whose Put always fails with Err.
type failingSpool struct {
	Err   error
	calls atomic.Int64
}

func (f *failingSpool) Put(ctx context.Context, m queue.Message) (queue.ID, error) {
	f.calls.Add(1)
	return 0, f.Err
}

// Calls returns how many times Put was called.
func (f *failingSpool) Calls() int64 { return f.calls.Load() }

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for delay := time.Millisecond; !cond(); delay = min(2*delay, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(delay)
	}
}

// rawConn is a line-level SMTP client for exchanges the go-smtp client does
// not allow (or hides): raw commands, reading exactly what the server says,
// seeing the server close.
type rawConn struct {
	t    testing.TB
	conn net.Conn
	text *textproto.Conn
}

// dialRaw connects (from localIP when not empty) without reading anything.
func dialRaw(t testing.TB, localIP, addr string) *rawConn {
	t.Helper()
	conn := dialConn(t, localIP, addr)
	return &rawConn{t: t, conn: conn, text: textproto.NewConn(conn)}
}

// reply reads one (possibly multi-line) reply and returns its code and its
// lines joined by "\n" (without the codes).
func (r *rawConn) reply() (int, string, error) {
	r.conn.SetReadDeadline(time.Now().Add(clientTimeout))
	code, msg, err := r.text.ReadResponse(0)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return pe.Code, pe.Msg, nil
	}
	return code, msg, err
}

// mustReply reads one reply and fails the test unless its code is code.
func (r *rawConn) mustReply(code int) string {
	r.t.Helper()
	got, msg, err := r.reply()
	if err != nil {
		r.t.Fatalf("want a %d reply: %v", code, err)
	}
	if got != code {
		r.t.Fatalf("want a %d reply, got %d %s", code, got, msg)
	}
	return msg
}

// cmd sends one command line and returns the reply.
func (r *rawConn) cmd(format string, args ...any) (int, string) {
	r.t.Helper()
	r.conn.SetWriteDeadline(time.Now().Add(clientTimeout))
	if err := r.text.PrintfLine(format, args...); err != nil {
		r.t.Fatalf("send %q: %v", fmt.Sprintf(format, args...), err)
	}
	code, msg, err := r.reply()
	if err != nil {
		r.t.Fatalf("reply to %q: %v", fmt.Sprintf(format, args...), err)
	}
	return code, msg
}

// mustCmd is cmd that fails the test unless the reply code is code.
func (r *rawConn) mustCmd(code int, format string, args ...any) string {
	r.t.Helper()
	got, msg := r.cmd(format, args...)
	if got != code {
		r.t.Fatalf("%q: want %d, got %d %s", fmt.Sprintf(format, args...), code, got, msg)
	}
	return msg
}

// waitClosed fails the test unless the server closes the connection (the
// next read ends with EOF or a reset) within clientTimeout, with nothing
// more said.
func (r *rawConn) waitClosed() {
	r.t.Helper()
	r.conn.SetReadDeadline(time.Now().Add(clientTimeout))
	line, err := r.text.ReadLine()
	if err == nil {
		r.t.Fatalf("want the server to close the connection, it said %q", line)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		r.t.Fatalf("the server did not close the connection within %v", clientTimeout)
	}
}

// swaksPath returns the swaks binary, skipping the test when it is not
// installed (.ci/run installs it, so CI never skips).
func swaksPath(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("swaks")
	if err != nil {
		t.Skip("swaks is not installed (apt-get install swaks; .ci/run installs it): skipping the swaks test")
	}
	return p
}

// runSwaks runs swaks with args and returns its combined output and exit
// code.
func runSwaks(t testing.TB, args ...string) (string, int) {
	t.Helper()
	bin := swaksPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*clientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--timeout", "20"}, args...)...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("swaks %v: timed out\n%s", args, out)
	}
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("swaks %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

// loopbackIP parses a 127/8 address for comparisons with Envelope.SourceIP.
func loopbackIP(s string) netip.Addr { return netip.MustParseAddr(s) }

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
