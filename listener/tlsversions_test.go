package listener_test

import (
	"crypto/tls"
	"testing"

	"github.com/emersion/go-smtp"
)

// tlsVersionsConf is a STARTTLS listener (2525) and an implicit-TLS one
// (465) with the version directives given in extra.
func tlsVersionsConf(extra string) string {
	return `
smtp-listener 127.0.0.1:{{.Port2525}}
smtp-listener 127.0.0.1:{{.Port465}} tls=yes
smtp-server-tls-certificate {{.CertFile}} {{.KeyFile}}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
` + extra
}

// versionClient is clientTLS limited to exactly version v.
func versionClient(t *testing.T, v uint16) *tls.Config {
	c := clientTLS(t)
	c.MinVersion, c.MaxVersion = v, v
	return c
}

// tryStartTLS connects to addr and runs STARTTLS with cfg, then sends one
// message. It returns the negotiated version, or the error of the
// handshake (the server then ends the session).
func tryStartTLS(t *testing.T, addr string, cfg *tls.Config) (uint16, error) {
	t.Helper()
	c, err := smtp.NewClientStartTLS(dialConn(t, "", addr), cfg)
	if err != nil {
		return 0, err
	}
	c.CommandTimeout, c.SubmissionTimeout = clientTimeout, clientTimeout
	t.Cleanup(func() { c.Close() })
	// The handshake happens with the first command over TLS.
	if err := c.Hello("client.example"); err != nil {
		return 0, err
	}
	st, ok := c.TLSConnectionState()
	if !ok {
		t.Fatal("no TLS state after STARTTLS")
	}
	mustSend(t, c, "a@b.example", []string{"x@example.com"}, message())
	return st.Version, nil
}

// tryImplicitTLS connects to an implicit-TLS listener with cfg and sends
// one message; it returns the negotiated version or the handshake's error.
func tryImplicitTLS(t *testing.T, addr string, cfg *tls.Config) (uint16, error) {
	t.Helper()
	conn := tls.Client(dialConn(t, "", addr), cfg)
	if err := conn.Handshake(); err != nil {
		return 0, err
	}
	c := newClient(t, conn)
	mustSend(t, c, "a@b.example", []string{"x@example.com"}, message())
	return conn.ConnectionState().Version, nil
}

// TestInboundTLSVersions: by default STARTTLS and implicit TLS take TLS 1.2
// and 1.3 and refuse a client that speaks only TLS 1.1 (or 1.0);
// smtp-server-tls-allow-tlsv1.1 yes, applied by a reload, lets that client
// in, and smtp-server-tls-allow-tlsv1.3 no caps the version at 1.2. Go's
// TLS stack serves 1.0 and 1.1 when asked explicitly, without GODEBUG.
func TestInboundTLSVersions(t *testing.T) {
	t.Parallel()
	ts := startServer(t, tlsVersionsConf(""))
	try := map[string]func(*testing.T, string, *tls.Config) (uint16, error){
		"STARTTLS": tryStartTLS, "implicit TLS": tryImplicitTLS,
	}
	port := map[string]string{"STARTTLS": "2525", "implicit TLS": "465"}
	check := func(stage string, v uint16, want bool, wantVersion uint16) {
		t.Helper()
		for how, f := range try {
			got, err := f(t, ts.Addr(port[how]), versionClient(t, v))
			switch {
			case want && err != nil:
				t.Errorf("%s: %s with %s only refused: %v", stage, how, tls.VersionName(v), err)
			case want && got != wantVersion:
				t.Errorf("%s: %s with %s negotiated %s", stage, how, tls.VersionName(v), tls.VersionName(got))
			case !want && err == nil:
				t.Errorf("%s: %s with %s only was accepted", stage, how, tls.VersionName(v))
			}
		}
	}
	check("defaults", tls.VersionTLS10, false, 0)
	check("defaults", tls.VersionTLS11, false, 0)
	check("defaults", tls.VersionTLS12, true, tls.VersionTLS12)
	check("defaults", tls.VersionTLS13, true, tls.VersionTLS13)

	// A refused handshake leaves the listener serving: a client without
	// limits still gets TLS 1.3.
	if v, err := tryStartTLS(t, ts.Addr("2525"), clientTLS(t)); err != nil || v != tls.VersionTLS13 {
		t.Errorf("after refusals: STARTTLS gave %s, %v; want TLS 1.3", tls.VersionName(v), err)
	}

	ts.Apply(t, tlsVersionsConf("smtp-server-tls-allow-tlsv1.1 yes\n"))
	check("with tlsv1.1", tls.VersionTLS10, false, 0)
	check("with tlsv1.1", tls.VersionTLS11, true, tls.VersionTLS11)
	check("with tlsv1.1", tls.VersionTLS13, true, tls.VersionTLS13)

	ts.Apply(t, tlsVersionsConf("smtp-server-tls-allow-tlsv1 yes\nsmtp-server-tls-allow-tlsv1.3 no\n"))
	check("with tlsv1, without tlsv1.3", tls.VersionTLS10, true, tls.VersionTLS10)
	check("with tlsv1, without tlsv1.3", tls.VersionTLS11, true, tls.VersionTLS11)
	check("with tlsv1, without tlsv1.3", tls.VersionTLS13, false, 0)
	if v, err := tryStartTLS(t, ts.Addr("2525"), clientTLS(t)); err != nil || v != tls.VersionTLS12 {
		t.Errorf("without tlsv1.3: STARTTLS gave %s, %v; want TLS 1.2", tls.VersionName(v), err)
	}

	// Back to the defaults: TLS 1.1 is refused again.
	ts.Apply(t, tlsVersionsConf(""))
	check("defaults again", tls.VersionTLS11, false, 0)
}
