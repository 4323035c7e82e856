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

// TestPipelineDKIMAnyDomainInVMTA runs tern serve with a key written in a
// <virtual-mta> with * as its domain: mail sent through that VMTA is
// signed with d= its From domain and s= the key's selector, and verifies
// against the public key published there; mail through another VMTA,
// which has no key, is not signed.
func TestPipelineDKIMAnyDomainInVMTA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	z := zones("dkim.test")
	z["s1._domainkey.brand.example"] = dnstest.Records{TXT: []string{"v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pub)}}
	dnsSrv := dnstest.Start(t, z)
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	conf := fmt.Sprintf(`
host-name tern.test
spool %s
smtp-listener 127.0.0.1:%d
name-server %s
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-virtual-mta yes
    default-virtual-mta mta2
</source>
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.tern.test
    domain-key s1,*,%s
</virtual-mta>
<virtual-mta mta2>
    smtp-source-host 127.0.0.3 mta2.tern.test
</virtual-mta>
<domain *>
    default-smtp-port %d
    dkim-sign yes
</domain>
`, filepath.Join(dir, "spool"), smtpPort, dnsSrv.Addr(), keyFile, sink.Port())
	p := startTern(t, writeConf(t, dir, conf))
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)
	for _, c := range []struct{ vmta, marker string }{{"mta1", "signed"}, {"mta2", "unsigned"}} {
		cl, err := smtp.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		msg := "From: News <news@Brand.Example>\r\nTo: r@dkim.test\r\nSubject: " + c.marker + "\r\n" +
			"X-Virtual-MTA: " + c.vmta + "\r\nX-Test-Marker: " + c.marker + "\r\n\r\nHello.\r\n"
		if err := cl.SendMail("bounces@brand.example", []string{"r@dkim.test"}, strings.NewReader(msg)); err != nil {
			t.Fatalf("sending through %s: %v", c.vmta, err)
		}
		cl.Quit()
	}
	got := byMarker(t, sink.WaitMessages(t, 2, deliverTimeout))
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
	signed := got["signed"]
	checkFrom(t, "the signed message", signed, mta1)
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(signed.Data), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatalf("verifying: %v", err)
	}
	if len(vs) != 1 || vs[0].Err != nil {
		t.Fatalf("verifications %+v, want one valid signature\n%s", vs, signed.Data)
	}
	if vs[0].Domain != "brand.example" {
		t.Errorf("signed with d=%s, want the From domain brand.example", vs[0].Domain)
	}
	if !bytes.Contains(signed.Data, []byte("s=s1;")) {
		t.Errorf("not signed with selector s1:\n%s", signed.Data)
	}
	if bytes.Contains(got["unsigned"].Data, []byte("DKIM-Signature")) {
		t.Errorf("mail through mta2, which has no key, was signed:\n%s", got["unsigned"].Data)
	}
}
