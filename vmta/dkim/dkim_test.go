package dkim_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/vmta/dkim"
)

// conf has keys at every level: global keys for example.com (RSA) and
// example.org (Ed25519), a pool key and a VMTA key for example.com, and a
// more specific global key for news.example.net next to its parent's.
const conf = `
<domain *>
    dkim-sign yes
    domain-key global,example.com,{dir}/rsa.pem
    domain-key ed,example.org,{dir}/ed.pem
    domain-key parent,example.net,{dir}/rsa.pem
</domain>
<domain nosign.test>
    dkim-sign no
</domain>
<domain [*.]gmail.test>
    domain-key news,news.example.net,{dir}/ed.pem
</domain>
<virtual-mta mta1>
    <domain other.test>
        domain-key vmta,example.com,{dir}/ed.pem
    </domain>
</virtual-mta>
<virtual-mta mta2>
</virtual-mta>
<virtual-mta-pool pool1>
    virtual-mta mta1
    virtual-mta mta2
    <domain *>
        domain-key pool,example.com,{dir}/rsa2.pem
    </domain>
</virtual-mta-pool>
`

// TestSignVerify signs with each key type and checks the signature with
// go-msgauth's verifier, and the tags it carries.
func TestSignVerify(t *testing.T) {
	reg := build(t, conf)
	d := publish(t, reg)
	for _, c := range []struct {
		from, domain, selector, algo string
	}{
		{"news@example.com", "example.com", "global", "rsa-sha256"},
		{"news@example.org", "example.org", "ed", "ed25519-sha256"},
	} {
		t.Run(c.algo, func(t *testing.T) {
			msg := message(c.from)
			orig := bytes.Clone(msg)
			signed, key, err := dkim.SignFor(reg, "mta2", "", "dest.example", msg, dkim.Options{})
			if err != nil || key == nil {
				t.Fatalf("SignFor: key %v, err %v", key, err)
			}
			if !bytes.Equal(msg, orig) {
				t.Error("SignFor modified its input")
			}
			if key.Selector != c.selector || key.Domain != c.domain {
				t.Errorf("signed with %s,%s, want %s,%s", key.Selector, key.Domain, c.selector, c.domain)
			}
			if !bytes.HasPrefix(signed, []byte("DKIM-Signature:")) || !bytes.HasSuffix(signed, msg) {
				t.Fatalf("the signature is not prepended to the message:\n%s", signed)
			}
			d.verifyOne(t, signed, c.domain)
			for name, want := range map[string]string{
				"a": c.algo, "c": "relaxed/relaxed", "d": c.domain, "s": c.selector, "v": "1",
				"h": "From:From:To:Subject:Subject:Date:Message-ID:Reply-To:MIME-Version:Content-Type:List-Unsubscribe",
				"x": "", "l": "",
			} {
				if got := tag(t, signed, name); got != want {
					t.Errorf("%s=%q, want %q", name, got, want)
				}
			}
			ts, err := strconv.ParseInt(tag(t, signed, "t"), 10, 64)
			if err != nil || time.Since(time.Unix(ts, 0)).Abs() > time.Minute {
				t.Errorf("t=%s is not now", tag(t, signed, "t"))
			}
		})
	}
}

// TestChooseKey: VMTA keys before the pool's before the global ones, whatever
// the pattern of the block they are written in; the longest aligned key
// within a level; parent-domain alignment on whole labels only.
func TestChooseKey(t *testing.T) {
	reg := build(t, conf)
	for _, c := range []struct {
		vmta, pool, from string
		want             string // selector,domain or "" for none
	}{
		{"mta1", "", "example.com", "vmta,example.com"},
		{"MTA1", "", "EXAMPLE.COM.", "vmta,example.com"},
		{"mta1", "pool1", "example.com", "vmta,example.com"},
		{"mta2", "pool1", "example.com", "pool,example.com"},
		{"mta2", "", "example.com", "global,example.com"},
		{"{default}", "", "example.com", "global,example.com"},
		{"gone", "gone-pool", "example.com", "global,example.com"},
		{"mta1", "", "news.example.com", "vmta,example.com"},
		{"mta2", "", "a.b.example.com", "global,example.com"},
		{"mta2", "", "example.org", "ed,example.org"},
		{"mta2", "", "news.example.net", "news,news.example.net"},
		{"mta2", "", "x.news.example.net", "news,news.example.net"},
		{"mta2", "", "other.example.net", "parent,example.net"},
		{"mta2", "", "notexample.com", ""},
		{"mta2", "", "com", ""},
		{"mta2", "", "", ""},
		{"mta1", "", "example.co", ""},
	} {
		k, ok := dkim.ChooseKey(reg, c.vmta, c.pool, c.from)
		got := ""
		if ok {
			got = k.Selector + "," + k.Domain
			if k.Signer == nil {
				t.Errorf("%+v: key without a signer", c)
			}
		}
		if got != c.want {
			t.Errorf("ChooseKey(%q, %q, %q) = %q, want %q", c.vmta, c.pool, c.from, got, c.want)
		}
	}
}

// TestSignForPrecedence signs through each level and verifies: the VMTA's
// Ed25519 key, the pool's RSA key, and the parent domain's key for a
// subdomain From.
func TestSignForPrecedence(t *testing.T) {
	reg := build(t, conf)
	d := publish(t, reg)
	for _, c := range []struct {
		vmta, pool, from, selector, domain string
	}{
		{"mta1", "pool1", "a@example.com", "vmta", "example.com"},
		{"mta2", "pool1", "a@example.com", "pool", "example.com"},
		{"mta2", "", "a@news.example.com", "global", "example.com"},
		{"mta2", "", "a@deep.news.example.net", "news", "news.example.net"},
	} {
		signed, key, err := dkim.SignFor(reg, c.vmta, c.pool, "dest.example", message(c.from), dkim.Options{})
		if err != nil || key == nil {
			t.Fatalf("%+v: key %v, err %v", c, key, err)
		}
		if key.Selector != c.selector {
			t.Errorf("%+v: signed by %s", c, key.Selector)
		}
		d.verifyOne(t, signed, c.domain)
		if got := tag(t, signed, "s"); got != c.selector {
			t.Errorf("%+v: s=%s", c, got)
		}
	}
}

// TestSignForOff: the message comes back as is, with no key and no error,
// when dkim-sign is off for the recipient's queue or no key aligns with From.
func TestSignForOff(t *testing.T) {
	reg := build(t, conf)
	for _, c := range []struct {
		vmta, rcptDomain, from, why string
	}{
		{"mta2", "nosign.test", "a@example.com", "dkim-sign no for the recipient domain"},
		{"mta1", "NOSIGN.test.", "a@example.com", "recipient domain normalized"},
		{"mta2", "dest.example", "a@other.example", "no key for the From domain"},
		{"mta2", "dest.example", "a@notexample.com", "suffix on a label boundary only"},
	} {
		msg := message(c.from)
		signed, key, err := dkim.SignFor(reg, c.vmta, "", c.rcptDomain, msg, dkim.Options{})
		if err != nil || key != nil || &signed[0] != &msg[0] || len(signed) != len(msg) {
			t.Errorf("%s: key %v, err %v, changed %v", c.why, key, err, !bytes.Equal(signed, msg))
		}
	}
	if dkim.Enabled(reg, "mta2", "", "nosign.test") || !dkim.Enabled(reg, "mta2", "", "dest.example") {
		t.Error("Enabled disagrees with dkim-sign")
	}

	// Without any dkim-sign, a configured key signs nothing.
	reg = build(t, "<domain *>\n domain-key s,example.com,{dir}/rsa.pem\n</domain>\n")
	msg := message("a@example.com")
	if signed, key, err := dkim.SignFor(reg, "{default}", "", "dest.example", msg, dkim.Options{}); key != nil || err != nil || !bytes.Equal(signed, msg) {
		t.Errorf("dkim-sign unset: key %v, err %v", key, err)
	}
}

// TestSignForNoFrom: an unusable From is an error wrapping ErrNoFrom, and
// the message comes back unchanged so it may be spooled unsigned.
func TestSignForNoFrom(t *testing.T) {
	reg := build(t, conf)
	for _, msg := range []string{
		"To: a@b.example\r\nSubject: x\r\n\r\nbody\r\n",
		"From: a@example.com\r\nFrom: b@example.com\r\n\r\nbody\r\n",
		"From: undisclosed\r\n\r\nbody\r\n",
		"From: a@example.com, b@example.org\r\n\r\nbody\r\n",
	} {
		signed, key, err := dkim.SignFor(reg, "mta2", "", "dest.example", []byte(msg), dkim.Options{})
		if !errors.Is(err, dkim.ErrNoFrom) || key != nil || string(signed) != msg {
			t.Errorf("%q: key %v, err %v", msg, key, err)
		}
	}
	msg := "From: a@example.com\r\n" // no end of header: an error too
	if signed, key, err := dkim.SignFor(reg, "mta2", "", "dest.example", []byte(msg), dkim.Options{}); err == nil || key != nil || string(signed) != msg {
		t.Errorf("%q: key %v, err %v", msg, key, err)
	}
}

func TestFromDomain(t *testing.T) {
	for _, c := range []struct {
		header, want string
	}{
		{"From: a@example.com", "example.com"},
		{"From: \"A B\" <a@News.Example.COM>", "news.example.com"},
		{"from: <a@example.com>", "example.com"},
		{"From: =?koi8-r?B?8NLJ18XU?= <a@example.com>", "example.com"},
		{"From: =?utf-8?q?Caf=C3=A9?= <a@example.com>", "example.com"},
		{"From: \"a@evil.example\" <a@example.com>", "example.com"},
		{"From: a@example.com, b@EXAMPLE.com", "example.com"},
		{"From: Team: a@example.com, b@example.com;", "example.com"},
		{"From: A\r\n <a@example.com>", "example.com"},
		{"From: \"q@x\"@example.com", "example.com"},
	} {
		got, err := dkim.FromDomain([]byte(c.header + "\r\nTo: x@y\r\n\r\nbody"))
		if err != nil || got != c.want {
			t.Errorf("%q: %q, %v; want %q", c.header, got, err, c.want)
		}
	}
	if got, err := dkim.FromDomain([]byte("From: a@example.com\n\nbody\n")); err != nil || got != "example.com" {
		t.Errorf("LF message: %q, %v", got, err)
	}
}

// TestRelaxed: the signature survives what relaxed canonicalization
// forgives in transit, and not a change of content.
func TestRelaxed(t *testing.T) {
	reg := build(t, conf)
	d := publish(t, reg)
	for _, from := range []string{"a@example.com", "a@example.org"} {
		signed, key, err := dkim.SignFor(reg, "mta2", "", "dest.example", message(from), dkim.Options{})
		if err != nil || key == nil {
			t.Fatalf("SignFor: %v %v", key, err)
		}
		ok := []struct{ why, old, new string }{
			{"header name case", "\r\nSubject: Hello there\r\n", "\r\nSUBJECT: Hello there\r\n"},
			{"header white space", "\r\nSubject: Hello there\r\n", "\r\nSubject:   Hello \t there  \r\n"},
			{"header folded", "\r\nTo: rcpt@dest.example\r\n", "\r\nTo:\r\n\trcpt@dest.example\r\n"},
			{"body white space", "Hello,  world.\r\n", "Hello, \t world. \r\n"},
			{"trailing empty lines", "Second line.\r\n", "Second line.\r\n\r\n\r\n"},
			{"unsigned header changed", "X-Mailer: test", "X-Mailer: other"},
			{"trace header added", "DKIM-Signature:", "Received: from relay.example\r\nDKIM-Signature:"},
		}
		for _, c := range ok {
			mod := replaceOnce(t, signed, c.old, c.new)
			if vs := d.verify(t, mod); len(vs) != 1 || vs[0].Err != nil {
				t.Errorf("%s, %s: %v", from, c.why, vs[0].Err)
			}
		}
		bad := []struct{ why, old, new string }{
			{"body word", "Hello,", "Hallo,"},
			{"body line added", "Second line.\r\n", "Second line.\r\nThird.\r\n"},
			{"subject", "Subject: Hello there", "Subject: Hello here"},
			{"From added on top (oversigned)", "Received:", "From: ceo@example.com\r\nReceived:"},
			{"Reply-To added (oversigned)", "X-Mailer:", "Reply-To: evil@evil.example\r\nX-Mailer:"},
			{"Subject added (oversigned)", "X-Mailer:", "Subject: urgent\r\nX-Mailer:"},
		}
		for _, c := range bad {
			mod := replaceOnce(t, signed, c.old, c.new)
			if vs := d.verify(t, mod); len(vs) != 1 || vs[0].Err == nil {
				t.Errorf("%s, %s: still verifies", from, c.why)
			}
		}
	}
}

func replaceOnce(t *testing.T, msg []byte, old, new string) []byte {
	t.Helper()
	if bytes.Count(msg, []byte(old)) != 1 {
		t.Fatalf("%q occurs %d times", old, bytes.Count(msg, []byte(old)))
	}
	return bytes.Replace(msg, []byte(old), []byte(new), 1)
}

// TestSignForOnce: a message already signed with the chosen key's d= and s=
// is not signed again (whatever the case and folding of those tags); one
// signed by another selector or domain gets Tern's signature on top.
func TestSignForOnce(t *testing.T) {
	reg := build(t, conf)
	d := publish(t, reg)
	first, key, err := dkim.SignFor(reg, "mta2", "", "dest.example", message("a@example.com"), dkim.Options{})
	if err != nil || key == nil {
		t.Fatalf("SignFor: %v %v", key, err)
	}
	again, key, err := dkim.SignFor(reg, "mta2", "", "dest.example", first, dkim.Options{})
	if err != nil || key != nil || !bytes.Equal(again, first) {
		t.Errorf("signed twice: key %v, err %v", key, err)
	}
	d.verifyOne(t, again, "example.com")

	for _, sig := range []string{
		"DKIM-Signature: v=1; a=rsa-sha256; d=EXAMPLE.com; s=Global; b=x\r\n",
		"dkim-signature:v=1;d=exam\r\n ple.com;\r\n\ts = global;b=x\r\n",
	} {
		msg := append([]byte(sig), message("a@example.com")...)
		if out, key, err := dkim.SignFor(reg, "mta2", "", "dest.example", msg, dkim.Options{}); key != nil || err != nil || !bytes.Equal(out, msg) {
			t.Errorf("%q: signed again (key %v, err %v)", sig, key, err)
		}
	}

	// Another selector of the same domain is somebody else's signature:
	// the pool's key signs on top of the global one's, and both verify.
	signedTwice, key, err := dkim.SignFor(reg, "mta2", "pool1", "dest.example", first, dkim.Options{})
	if err != nil || key == nil || key.Selector != "pool" {
		t.Fatalf("pool key over global signature: key %v, err %v", key, err)
	}
	vs := d.verify(t, signedTwice)
	if len(vs) != 2 || vs[0].Err != nil || vs[1].Err != nil {
		t.Errorf("two signatures: %d, %v", len(vs), vs)
	}
	if tag(t, signedTwice, "s") != "pool" {
		t.Error("the new signature is not on top")
	}

	// The same selector of another domain is another key too.
	msg := append([]byte("DKIM-Signature: v=1; d=example.org; s=global; b=x\r\n"), message("a@example.com")...)
	if _, key, err := dkim.SignFor(reg, "mta2", "", "dest.example", msg, dkim.Options{}); key == nil || err != nil {
		t.Errorf("s=global of example.org stopped example.com's: key %v, err %v", key, err)
	}
}

// TestExpiration: x= is Now()+Expiration; an expired signature fails.
func TestExpiration(t *testing.T) {
	reg := build(t, conf)
	d := publish(t, reg)
	key, _ := dkim.ChooseKey(reg, "mta2", "", "example.org")
	now := time.Now().Truncate(time.Second)
	signed, err := dkim.Sign(message("a@example.org"), key, dkim.Options{Now: func() time.Time { return now }, Expiration: 4 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tag(t, signed, "x"), strconv.FormatInt(now.Add(4*24*time.Hour).Unix(), 10); got != want {
		t.Errorf("x=%s, want %s", got, want)
	}
	v := d.verifyOne(t, signed, "example.org")
	if !v.Expiration.Equal(now.Add(4 * 24 * time.Hour)) {
		t.Errorf("verified expiration %v", v.Expiration)
	}

	past := now.Add(-2 * time.Hour)
	signed, err = dkim.Sign(message("a@example.org"), key, dkim.Options{Now: func() time.Time { return past }, Expiration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if vs := d.verify(t, signed); len(vs) != 1 || vs[0].Err == nil || !strings.Contains(vs[0].Err.Error(), "expired") {
		t.Errorf("expired signature: %v", vs[0].Err)
	}
	// Without Now, x= counts from the wall clock.
	signed, err = dkim.Sign(message("a@example.org"), key, dkim.Options{Expiration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if v := d.verifyOne(t, signed, "example.org"); time.Until(v.Expiration) < 59*time.Minute || time.Until(v.Expiration) > time.Hour {
		t.Errorf("x= %v, want in an hour", v.Expiration)
	}
	if _, err := dkim.Sign(message("a@example.org"), key, dkim.Options{Expiration: -time.Second}); err == nil {
		t.Error("negative expiration accepted")
	}
}

// TestSignErrors: Sign refuses what it cannot sign.
func TestSignErrors(t *testing.T) {
	reg := build(t, conf)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := dkim.ChooseKey(reg, "mta2", "", "example.com")
	for _, c := range []struct {
		why string
		msg string
		key config.DomainKey
	}{
		{"no private key", string(message("a@example.com")), config.DomainKey{Selector: "s", Domain: "example.com"}},
		{"no end of header", "From: a@example.com\r\nSubject: x\r\n", key},
		{"no selector", string(message("a@example.com")), config.DomainKey{Domain: "example.com", Signer: key.Signer}},
		{"ECDSA key", string(message("a@example.com")), config.DomainKey{Selector: "s", Domain: "example.com", Signer: ecKey}},
	} {
		if out, err := dkim.Sign([]byte(c.msg), c.key, dkim.Options{}); err == nil {
			t.Errorf("%s: signed:\n%s", c.why, out)
		}
	}
}

// TestLF: a message with bare LF endings gets an LF signature field, and
// verifies (go-msgauth canonicalizes both endings alike).
func TestLF(t *testing.T) {
	reg := build(t, conf)
	d := publish(t, reg)
	msg := bytes.ReplaceAll(message("a@example.org"), []byte("\r\n"), []byte("\n"))
	signed, key, err := dkim.SignFor(reg, "mta2", "", "dest.example", msg, dkim.Options{})
	if err != nil || key == nil {
		t.Fatalf("SignFor: %v %v", key, err)
	}
	if bytes.Contains(signed, []byte("\r")) {
		t.Errorf("CR in an LF message:\n%q", signed)
	}
	d.verifyOne(t, signed, "example.org")
}

// TestConcurrent signs with shared keys from many goroutines (for -race).
func TestConcurrent(t *testing.T) {
	reg := build(t, conf)
	d := publish(t, reg)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			from := "a@example.org"
			if i%2 == 0 {
				from = "a@example.com"
			}
			for range 4 {
				signed, _, err := dkim.SignFor(reg, "mta2", "", "dest.example", message(from), dkim.Options{})
				if err != nil {
					t.Error(err)
					return
				}
				if vs, err := d.verifyConcurrent(signed); err != nil || len(vs) != 1 || vs[0].Err != nil {
					t.Errorf("verify: %v", err)
				}
			}
		})
	}
	wg.Wait()
}

func TestSignedHeaders(t *testing.T) {
	h := dkim.SignedHeaders()
	if len(h) == 0 || h[0] != "From" {
		t.Fatalf("SignedHeaders = %v", h)
	}
	h[0] = "X"
	if dkim.SignedHeaders()[0] != "From" {
		t.Error("SignedHeaders returned the package's slice")
	}
}
