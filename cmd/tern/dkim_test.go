package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// TestPipelineDKIM runs tern serve with an RSA and an Ed25519 domain-key:
// mail is signed when it is spooled, and what reaches the sink verifies
// with go-msgauth against the public keys that dnstest serves.
func TestPipelineDKIM(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	writeKey := func(name string, key any) string {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	rsaPub, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	z := zones("dkim.test")
	z["rsa._domainkey.example.org"] = dnstest.Records{TXT: []string{"v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(rsaPub)}}
	z["ed._domainkey.ed.example"] = dnstest.Records{TXT: []string{"v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(edPub)}}
	dnsSrv := dnstest.Start(t, z)
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	extra := fmt.Sprintf("    dkim-sign yes\n    domain-key rsa,example.org,%s\n    domain-key ed,ed.example,%s\n",
		writeKey("rsa.pem", rsaKey), writeKey("ed.pem", edKey))
	p := startTern(t, writeConf(t, dir, baseConf(dir, smtpPort, dnsSrv.Addr(), sink.Port(), extra)))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	for _, from := range []string{"app@example.org", "news@ed.example"} {
		c, err := smtp.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		msg := "From: " + from + "\r\nTo: r@dkim.test\r\nSubject: signed by " + from + "\r\n\r\nHello.\r\n"
		if err := c.SendMail(from, []string{"r@dkim.test"}, strings.NewReader(msg)); err != nil {
			t.Fatalf("sending from %s: %v", from, err)
		}
		c.Quit()
	}
	msgs := sink.WaitMessages(t, 2, deliverTimeout)
	p.stop(t)

	lookup := func(name string) ([]string, error) {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
		in, err := dns.Exchange(m, dnsSrv.Addr())
		if err != nil {
			return nil, err
		}
		var out []string
		for _, rr := range in.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				out = append(out, strings.Join(txt.Txt, ""))
			}
		}
		return out, nil
	}
	want := map[string]string{"app@example.org": "rsa-sha256", "news@ed.example": "ed25519-sha256"}
	for _, m := range msgs {
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{LookupTXT: lookup})
		if err != nil {
			t.Fatalf("verifying the message from %s: %v", m.From, err)
		}
		if len(vs) != 1 || vs[0].Err != nil {
			t.Fatalf("message from %s: verifications %+v, want one valid signature\n%s", m.From, vs, m.Data)
		}
		if !bytes.Contains(m.Data, []byte("a="+want[m.From])) {
			t.Errorf("message from %s not signed with %s:\n%s", m.From, want[m.From], m.Data)
		}
	}
}
