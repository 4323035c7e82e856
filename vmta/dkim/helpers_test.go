package dkim_test

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
	"sync"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/vmta"
)

// Keys are made once per test binary: RSA-2048 generation is slow.
var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	edKey    ed25519.PrivateKey
	rsaKey2  *rsa.PrivateKey
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if _, edKey, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
}

// writeKeys writes rsa.pem (PKCS#1), rsa2.pem and ed.pem (PKCS#8) to a
// temporary directory and returns it.
func writeKeys(t testing.TB) string {
	t.Helper()
	testKeys(t)
	dir := t.TempDir()
	write := func(name, typ string, der []byte) {
		data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("rsa.pem", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))
	der, err := x509.MarshalPKCS8PrivateKey(rsaKey2)
	if err != nil {
		t.Fatal(err)
	}
	write("rsa2.pem", "PRIVATE KEY", der)
	if der, err = x509.MarshalPKCS8PrivateKey(edKey); err != nil {
		t.Fatal(err)
	}
	write("ed.pem", "PRIVATE KEY", der)
	return dir
}

// build parses src, with {dir} replaced by the key directory, and builds
// its registry. The config file is named inside that directory, by an
// absolute path.
func build(t testing.TB, src string) *vmta.Registry {
	t.Helper()
	dir := writeKeys(t)
	src = "host-name test.example\nsmtp-listener 127.0.0.1:2525\n" + strings.ReplaceAll(src, "{dir}", dir)
	cfg, err := config.Parse(filepath.Join(dir, "tern.conf"), []byte(src), config.Options{Hostname: "test.example"})
	if err != nil {
		t.Fatalf("config.Parse:\n%v", err)
	}
	reg, err := vmta.Build(cfg)
	if err != nil {
		t.Fatalf("vmta.Build: %v", err)
	}
	return reg
}

// dns publishes the public half of every key of a registry, as TXT
// records at selector._domainkey.domain.
type dns map[string]string

func publish(t testing.TB, reg *vmta.Registry) dns {
	t.Helper()
	cfg := reg.Config()
	blocks := append([]*config.Domain(nil), cfg.Domains...)
	for _, v := range cfg.VMTAs {
		blocks = append(blocks, v.Domains...)
	}
	for _, p := range cfg.Pools {
		blocks = append(blocks, p.Domains...)
	}
	d := dns{}
	for _, b := range blocks {
		for _, k := range b.Settings.DomainKeys.Value {
			d.add(t, k)
		}
	}
	return d
}

func (d dns) add(t testing.TB, k config.DomainKey) {
	t.Helper()
	var rec string
	switch pub := k.Signer.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		rec = "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	case ed25519.PublicKey:
		rec = "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	default:
		t.Fatalf("key type %T", pub)
	}
	d[k.Selector+"._domainkey."+k.Domain] = rec
}

func (d dns) lookupTXT(name string) ([]string, error) {
	if rec, ok := d[strings.ToLower(name)]; ok {
		return []string{rec}, nil
	}
	return nil, fmt.Errorf("no TXT record for %s", name)
}

// verify checks every signature of msg and returns the verifications.
func (d dns) verify(t testing.TB, msg []byte) []*msgauth.Verification {
	t.Helper()
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(msg), &msgauth.VerifyOptions{LookupTXT: d.lookupTXT})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return vs
}

// verifyOne checks that msg has exactly one signature, by domain, and that
// it verifies.
func (d dns) verifyOne(t testing.TB, msg []byte, domain string) *msgauth.Verification {
	t.Helper()
	vs := d.verify(t, msg)
	if len(vs) != 1 {
		t.Fatalf("%d signatures, want 1:\n%s", len(vs), msg)
	}
	if vs[0].Err != nil {
		t.Fatalf("signature does not verify: %v\n%s", vs[0].Err, msg)
	}
	if vs[0].Domain != domain {
		t.Errorf("d=%s, want %s", vs[0].Domain, domain)
	}
	return vs[0]
}

// message builds a CRLF message From from, with a typical set of headers.
func message(from string) []byte {
	return []byte(crlf(`Received: from client.example ([192.0.2.1]) by test.example
From: "News" <` + from + `>
To: rcpt@dest.example
Subject: Hello there
Date: Mon, 02 Jan 2006 15:04:05 +0000
Message-ID: <1@` + from[strings.IndexByte(from, '@')+1:] + `>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
List-Unsubscribe: <mailto:unsub@example.com>
X-Mailer: test

Hello,  world.
Second line.
`))
}

func crlf(s string) string {
	return strings.ReplaceAll(s, "\n", "\r\n")
}

// tag returns the value of tag name in the message's first DKIM-Signature,
// folding white space removed.
func tag(t testing.TB, msg []byte, name string) string {
	t.Helper()
	head, _, _ := strings.Cut(string(msg), "\r\n\r\n")
	head = strings.NewReplacer("\r\n ", " ", "\r\n\t", " ").Replace(head) // unfold
	for _, line := range strings.Split(head, "\r\n") {
		k, v, _ := strings.Cut(line, ":")
		if !strings.EqualFold(k, "DKIM-Signature") {
			continue
		}
		for _, kv := range strings.Split(v, ";") {
			k, v, _ := strings.Cut(kv, "=")
			if strings.TrimSpace(k) == name {
				return strings.Join(strings.Fields(v), "")
			}
		}
		return ""
	}
	t.Fatalf("no DKIM-Signature in\n%s", msg)
	return ""
}

// verifyConcurrent is verify without testing.TB, for goroutines.
func (d dns) verifyConcurrent(msg []byte) ([]*msgauth.Verification, error) {
	return msgauth.VerifyWithOptions(bytes.NewReader(msg), &msgauth.VerifyOptions{LookupTXT: d.lookupTXT})
}
