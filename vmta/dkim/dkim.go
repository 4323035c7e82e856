package dkim

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/ternmta/tern/config"
)

// Options tune a signature.
type Options struct {
	// Now is the clock Expiration counts from; nil means time.Now. The t=
	// tag is always the wall clock: go-msgauth takes it from time.Now.
	Now func() time.Time
	// Expiration is how long the signature stays valid (the x= tag is
	// Now()+Expiration); 0 means it does not expire. It must outlast the
	// retries of the message: a signature made at spool time and expired at
	// the last attempt fails verification.
	Expiration time.Duration
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// signedHeaders are the header fields signed when the message has them.
var signedHeaders = []string{
	"From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To",
	"In-Reply-To", "References", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "List-Unsubscribe", "List-Unsubscribe-Post",
	"Feedback-ID",
}

// overSigned are listed in h= once more than the message has them.
var overSigned = map[string]bool{"From": true, "Reply-To": true, "Subject": true}

// SignedHeaders returns the names of the header fields Sign signs when the
// message has them, in the order h= lists them. The slice is the caller's.
func SignedHeaders() []string {
	return append([]string(nil), signedHeaders...)
}

// Sign signs msg with key and returns the message with the DKIM-Signature
// header field prepended; msg itself is not modified. msg is a whole RFC 5322
// message, header and body, with CRLF line endings as spooled (a message with
// bare LF endings gets an LF-terminated signature field); its header must
// end with an empty line.
//
// Sign does not check that key.Domain aligns with the From header: ChooseKey
// does. It is safe for concurrent use with the same key.
func Sign(msg []byte, key config.DomainKey, opts Options) ([]byte, error) {
	if key.Signer == nil {
		return nil, fmt.Errorf("dkim: key %s has no private key", keyName(key))
	}
	switch key.Signer.Public().(type) {
	case *rsa.PublicKey, ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("dkim: key %s: unsupported key type %T", keyName(key), key.Signer.Public())
	}
	if opts.Expiration < 0 {
		return nil, fmt.Errorf("dkim: negative expiration %v", opts.Expiration)
	}
	h, err := scanHeader(msg)
	if err != nil {
		return nil, err
	}
	return sign(msg, h, key, opts)
}

// sign is Sign once the key and options are checked and the header scanned.
func sign(msg []byte, h header, key config.DomainKey, opts Options) ([]byte, error) {
	so := &msgauth.SignOptions{
		Domain:                 key.Domain,
		Selector:               key.Selector,
		Signer:                 key.Signer,
		Hash:                   crypto.SHA256,
		HeaderCanonicalization: msgauth.CanonicalizationRelaxed,
		BodyCanonicalization:   msgauth.CanonicalizationRelaxed,
		HeaderKeys:             headerKeys(h.fields),
	}
	if opts.Expiration > 0 {
		so.Expiration = opts.now().Add(opts.Expiration)
	}
	s, err := msgauth.NewSigner(so)
	if err != nil {
		return nil, fmt.Errorf("dkim: key %s: %w", keyName(key), err)
	}
	if _, err := s.Write(msg); err != nil {
		s.Close()
		return nil, fmt.Errorf("dkim: key %s: %w", keyName(key), err)
	}
	if err := s.Close(); err != nil {
		return nil, fmt.Errorf("dkim: key %s: %w", keyName(key), err)
	}
	sig := s.Signature()
	if h.eol == "\n" {
		sig = strings.ReplaceAll(sig, "\r\n", "\n")
	}
	out := make([]byte, 0, len(sig)+len(msg))
	out = append(out, sig...)
	return append(out, msg...), nil
}

// keyName names a key as its DNS record: selector._domainkey.domain.
func keyName(k config.DomainKey) string {
	return k.Selector + "._domainkey." + k.Domain
}

// headerKeys builds h=: each signed field as many times as the message has
// it, plus once for the oversigned ones. From is always listed (go-msgauth and
// RFC 6376 require it), even when the message has none.
func headerKeys(fields []field) []string {
	count := make(map[string]int, len(signedHeaders))
	for _, f := range fields {
		for _, name := range signedHeaders {
			if strings.EqualFold(f.name, name) {
				count[name]++
				break
			}
		}
	}
	var keys []string
	for _, name := range signedHeaders {
		n := count[name]
		if overSigned[name] {
			n++
		}
		for range n {
			keys = append(keys, name)
		}
	}
	return keys
}

// field is one header field: its name and its raw value, folding included.
type field struct {
	name  string
	value []byte
}

// header is a message's header as scanned by scanHeader.
type header struct {
	fields []field
	// eol is the message's line ending: "\r\n" or "\n", as its first line.
	eol string
}

var errNoHeaderEnd = errors.New("dkim: the message header does not end with an empty line")

// scanHeader splits the header of msg into fields without interpreting them.
// A line without a colon is kept with an empty name: it is not ours to judge.
func scanHeader(msg []byte) (header, error) {
	h := header{eol: "\r\n"}
	if i := bytes.IndexByte(msg, '\n'); i >= 0 && (i == 0 || msg[i-1] != '\r') {
		h.eol = "\n"
	}
	rest := msg
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		line := rest[:i+1]
		rest = rest[i+1:]
		content := bytes.TrimRight(line, "\r\n")
		if len(content) == 0 {
			return h, nil
		}
		if (content[0] == ' ' || content[0] == '\t') && len(h.fields) > 0 {
			last := &h.fields[len(h.fields)-1]
			last.value = append(last.value, line...)
			continue
		}
		name, value, _ := bytes.Cut(content, []byte(":"))
		h.fields = append(h.fields, field{
			name:  string(bytes.TrimSpace(name)),
			value: append(append([]byte(nil), value...), line[len(content):]...),
		})
	}
	return h, errNoHeaderEnd
}

// hasSignature reports whether the header has a DKIM-Signature with d= domain
// and s= selector (both compared case-insensitively, as DNS names are).
func hasSignature(fields []field, domain, selector string) bool {
	for _, f := range fields {
		if !strings.EqualFold(f.name, "DKIM-Signature") {
			continue
		}
		var d, s string
		for _, tag := range strings.Split(string(f.value), ";") {
			k, v, ok := strings.Cut(tag, "=")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "d":
				d = stripFWS(v)
			case "s":
				s = stripFWS(v)
			}
		}
		if strings.EqualFold(strings.TrimSuffix(d, "."), domain) && strings.EqualFold(s, selector) {
			return true
		}
	}
	return false
}

// stripFWS removes the folding white space a tag value may contain.
func stripFWS(v string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, v)
}
