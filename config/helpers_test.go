package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// testHostname is the Options.Hostname of every test, so that defaults
// derived from it (host-name, postmaster) do not depend on the machine.
const testHostname = "test.example"

// testHash is a valid bcrypt hash (of "tern-demo"); bcrypt.Cost only parses
// it, so no test pays for hashing.
const testHash = "$2a$10$EB6So3JwPcYAekUuWeU2JuNR.OCxZJfynZ9z6A/HMh0P7ofu.lF3W"

// memFS serves files from memory through Options.Open and Options.Glob,
// so a test can describe a whole tree of includes and keys without touching
// the disk. Names are cleaned with filepath.Clean before lookup.
type memFS map[string][]byte

func (m memFS) open(name string) (fs.File, error) {
	if b, ok := m[filepath.Clean(name)]; ok {
		return &memFile{Reader: bytes.NewReader(b), name: name, size: int64(len(b))}, nil
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

// memFile is a file of a memFS, or one a test makes to be something else
// than a regular file (mode) or to hold more than its size says.
type memFile struct {
	io.Reader
	name string
	size int64
	mode fs.FileMode
}

func (f *memFile) Stat() (fs.FileInfo, error) { return memInfo{f}, nil }
func (f *memFile) Close() error               { return nil }

// memInfo is the fs.FileInfo of a memFile.
type memInfo struct{ f *memFile }

func (i memInfo) Name() string       { return filepath.Base(i.f.name) }
func (i memInfo) Size() int64        { return i.f.size }
func (i memInfo) Mode() fs.FileMode  { return i.f.mode }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return i.f.mode.IsDir() }
func (i memInfo) Sys() any           { return nil }

func (m memFS) glob(pattern string) ([]string, error) {
	if _, err := filepath.Match(pattern, ""); err != nil {
		return nil, err
	}
	var out []string
	for name := range m {
		if ok, _ := filepath.Match(filepath.Clean(pattern), name); ok {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// options returns Options serving the files of m and nothing from disk.
func (m memFS) options() Options {
	return Options{Hostname: testHostname, Open: m.open, Glob: m.glob}
}

// noFiles are Options that serve no file at all: includes, certificates and
// keys all fail with "does not exist".
func noFiles() Options { return memFS{}.options() }

// parseOK parses src and fails the test on any error. It returns the config.
func parseOK(t testing.TB, name, src string, opts Options) *Config {
	t.Helper()
	cfg, err := Parse(name, []byte(src), opts)
	if err != nil {
		t.Fatalf("Parse(%s) failed:\n%v\nconfig:\n%s", name, err, numbered(src))
	}
	return cfg
}

// parseErr parses src, which must be refused, and returns the diagnostics.
func parseErr(t testing.TB, name, src string, opts Options) *ErrorList {
	t.Helper()
	cfg, err := Parse(name, []byte(src), opts)
	if err == nil {
		t.Fatalf("Parse(%s) succeeded, want an error; config:\n%s", name, numbered(src))
	}
	if cfg != nil {
		t.Errorf("Parse(%s) returned a Config together with an error", name)
	}
	var el *ErrorList
	if !errors.As(err, &el) {
		t.Fatalf("Parse(%s) error is %T, want *ErrorList", name, err)
	}
	return el
}

// numbered prefixes each line of src with its number, for failure messages.
func numbered(src string) string {
	var b strings.Builder
	for i, l := range strings.Split(strings.TrimSuffix(src, "\n"), "\n") {
		fmt.Fprintf(&b, "%3d  %s\n", i+1, l)
	}
	return b.String()
}

// diagStrings formats diagnostics one per line, as in ErrorList.Error.
func diagStrings(ds []Diagnostic) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = d.String()
	}
	return strings.Join(s, "\n")
}

// hasDiag reports whether ds holds a diagnostic in file at line whose
// message contains substr.
func hasDiag(ds []Diagnostic, file string, line int, substr string) bool {
	for _, d := range ds {
		if d.Pos.File == file && d.Pos.Line == line && d.Pos.Column >= 1 && strings.Contains(d.Message, substr) {
			return true
		}
	}
	return false
}

// keyMaterial is the PEM data of the keys and certificates tests load. It is
// generated once per test binary: an RSA key takes a noticeable moment.
type keyMaterial struct {
	rsaPKCS1, rsaPKCS8, ed25519PKCS8, ecPKCS8 []byte
	cert, certKey                             []byte
}

var testKeys = sync.OnceValue(func() keyMaterial {
	var km keyMaterial
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	km.rsaPKCS1 = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)})
	km.rsaPKCS8 = pkcs8PEM(rk)
	_, ek, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	km.ed25519PKCS8 = pkcs8PEM(ek)
	ck, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	km.ecPKCS8 = pkcs8PEM(ck)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mx.test.example"},
		DNSNames:     []string{"mx.test.example"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ck.PublicKey, ck)
	if err != nil {
		panic(err)
	}
	km.cert = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	km.certKey = km.ecPKCS8
	return km
})

func pkcs8PEM(key any) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// writeFixtures writes the test keys, certificates and include files into a
// fresh temporary directory and returns it:
//
//	cert.pem, key.pem    a self-signed certificate and its (ECDSA) key
//	both.pem             the two in one file
//	rsa.pem, rsa8.pem    an RSA DKIM key, PKCS#1 and PKCS#8
//	ed25519.pem          an Ed25519 DKIM key
//	ec.pem               an ECDSA key (not usable for DKIM)
//	garbage.pem          not PEM at all
//	inc-*.conf           one small file per scope include is allowed in
func writeFixtures(t testing.TB) string {
	t.Helper()
	km := testKeys()
	dir := t.TempDir()
	files := map[string][]byte{
		"cert.pem":        km.cert,
		"key.pem":         km.certKey,
		"both.pem":        append(append([]byte(nil), km.cert...), km.certKey...),
		"rsa.pem":         km.rsaPKCS1,
		"rsa8.pem":        km.rsaPKCS8,
		"ed25519.pem":     km.ed25519PKCS8,
		"ec.pem":          km.ecPKCS8,
		"garbage.pem":     []byte("this is not a key\n"),
		"inc-top.conf":    []byte("total-max-smtp-in 42\n"),
		"inc-source.conf": []byte("max-rcpt-per-message 7\n"),
		"inc-vmta.conf":   []byte("max-smtp-out 9\n"),
		"inc-domain.conf": []byte("queue-priority 77\n"),
		"inc-spl.conf":    []byte("reply /^421 / mode=backoff\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
