package dkim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/vmta"
)

// ErrNoFrom is wrapped by the errors of FromDomain (and so of SignFor): the
// message has no From header, several, or one without a usable address.
// A caller may choose to spool such a message unsigned.
var ErrNoFrom = errors.New("dkim: no usable From address")

// addressParser decodes encoded words in any charset as raw bytes: only the
// address matters here, and a display name in an unknown charset must not
// make it unreadable.
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, input io.Reader) (io.Reader, error) { return input, nil },
}}

// FromDomain returns the domain of the author in the From header of msg,
// lower-cased and without a trailing dot. From must appear once; it may list
// several mailboxes only when they all share one domain.
func FromDomain(msg []byte) (string, error) {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoFrom, err)
	}
	values := m.Header["From"]
	switch len(values) {
	case 0:
		return "", fmt.Errorf("%w: no From header", ErrNoFrom)
	case 1:
	default:
		return "", fmt.Errorf("%w: %d From headers", ErrNoFrom, len(values))
	}
	addrs, err := addressParser.ParseList(values[0])
	if err != nil {
		return "", fmt.Errorf("%w: From %q: %v", ErrNoFrom, values[0], err)
	}
	domain := ""
	for _, a := range addrs {
		at := strings.LastIndexByte(a.Address, '@')
		if at < 0 {
			return "", fmt.Errorf("%w: From address %q has no domain", ErrNoFrom, a.Address)
		}
		d := normalize(a.Address[at+1:])
		if domain != "" && d != domain {
			return "", fmt.Errorf("%w: From lists several domains (%s, %s)", ErrNoFrom, domain, d)
		}
		domain = d
	}
	if domain == "" {
		return "", fmt.Errorf("%w: From %q names no address", ErrNoFrom, values[0])
	}
	return domain, nil
}

func normalize(domain string) string {
	return strings.ToLower(strings.TrimSuffix(domain, "."))
}

// Enabled reports whether mail to rcptDomain sent by the VMTA vmtaName,
// selected through pool ("" when chosen directly), is to be signed: whether
// the queue's effective policy has dkim-sign yes.
func Enabled(reg *vmta.Registry, vmtaName, pool, rcptDomain string) bool {
	return reg.Policy(vmtaName, pool, rcptDomain).Settings.DKIMSign.Value
}

// ChooseKey returns the key that signs mail From fromDomain sent by the VMTA
// vmtaName selected through pool ("" when chosen directly).
//
// A key qualifies when its domain is fromDomain or a parent of it
// (compared case-insensitively, on whole labels), or when its domain is
// config.AnyDomain (`domain-key SELECTOR,*,FILE`): such a key signs for the
// From domain itself, and the returned key carries fromDomain (lower-cased)
// as its Domain, the d= of the signature.
//
// The keys are searched level by level, and the first level holding a
// qualifying key decides:
//
//  1. the keys of the VMTA's <domain> blocks, then those of the pool's,
//     then those of the global <domain> blocks, whatever their patterns;
//  2. the VMTA's own domain-key lines (in <virtual-mta>);
//  3. the pool's own domain-key lines (in <virtual-mta-pool>), when the
//     mail was selected through a pool;
//  4. the top-level domain-key lines.
//
// Within a level an aligned key wins over a * key; among aligned keys the
// longest domain wins, then file order; among * keys, file order. Names
// the registry does not know contribute nothing.
func ChooseKey(reg *vmta.Registry, vmtaName, pool, fromDomain string) (config.DomainKey, bool) {
	from := normalize(fromDomain)
	if from == "" {
		return config.DomainKey{}, false
	}
	var v *config.VirtualMTA
	if m, ok := reg.VMTA(vmtaName); ok {
		v = m.Config
	}
	var p *config.Pool
	if pool != "" {
		if m, ok := reg.Pool(pool); ok {
			p = m.Config
		}
	}
	cfg := reg.Config()
	var levels [][]config.DomainKey
	// 1. The <domain> blocks: the VMTA's, the pool's, the global ones.
	if v != nil {
		levels = append(levels, blockKeys(v.Domains))
	}
	if p != nil {
		levels = append(levels, blockKeys(p.Domains))
	}
	if cfg != nil {
		levels = append(levels, blockKeys(cfg.Domains))
	}
	// 2-4. The keys written outside <domain>.
	if v != nil {
		levels = append(levels, v.DomainKeys.Value)
	}
	if p != nil {
		levels = append(levels, p.DomainKeys.Value)
	}
	if cfg != nil {
		levels = append(levels, cfg.DomainKeys.Value)
	}
	for _, keys := range levels {
		if k, ok := bestKey(keys, from); ok {
			return k, true
		}
	}
	return config.DomainKey{}, false
}

// blockKeys lists the keys of blocks, in file order.
func blockKeys(blocks []*config.Domain) []config.DomainKey {
	var out []config.DomainKey
	for _, b := range blocks {
		out = append(out, b.Settings.DomainKeys.Value...)
	}
	return out
}

// bestKey is the key of keys that signs mail From from: the most specific
// aligned key, else the first * key (with from as its domain).
func bestKey(keys []config.DomainKey, from string) (config.DomainKey, bool) {
	var best, wild config.DomainKey
	found, foundAny := false, false
	for _, k := range keys {
		if k.Signer == nil {
			continue
		}
		if k.Domain == config.AnyDomain {
			if !foundAny {
				wild, foundAny = k, true
			}
			continue
		}
		if !aligned(from, k.Domain) {
			continue
		}
		if !found || len(k.Domain) > len(best.Domain) {
			best, found = k, true
		}
	}
	switch {
	case found:
		return best, true
	case foundAny:
		wild.Domain = from
		return wild, true
	}
	return config.DomainKey{}, false
}

// aligned reports whether a signature by domain aligns with from: the same
// domain or a parent of it.
func aligned(from, domain string) bool {
	domain = normalize(domain)
	if domain == "" {
		return false
	}
	return from == domain || strings.HasSuffix(from, "."+domain)
}

// SignFor signs msg as mail to rcptDomain sent by the VMTA vmtaName selected
// through pool ("" when chosen directly), and returns the signed message and
// the key that signed it.
//
// It returns msg unchanged and a nil key when signing is off for the queue
// (see Enabled), when no key aligns with the From domain (see ChooseKey), or
// when msg already has a DKIM-Signature with the chosen key's d= and s= (see
// the package documentation). On an error, msg is returned unchanged with it,
// so the caller may spool it unsigned; a missing or unusable From header is
// an error wrapping ErrNoFrom.
//
// A message to several domains is spooled once: the listener decides which
// rcptDomain to ask for (Enabled tells it which queues want a signature).
func SignFor(reg *vmta.Registry, vmtaName, pool, rcptDomain string, msg []byte, opts Options) (signed []byte, signedWith *config.DomainKey, err error) {
	if !Enabled(reg, vmtaName, pool, rcptDomain) {
		return msg, nil, nil
	}
	from, err := FromDomain(msg)
	if err != nil {
		return msg, nil, err
	}
	key, ok := ChooseKey(reg, vmtaName, pool, from)
	if !ok {
		return msg, nil, nil
	}
	h, err := scanHeader(msg)
	if err != nil {
		return msg, nil, err
	}
	if hasSignature(h.fields, key.Domain, key.Selector) {
		return msg, nil, nil
	}
	out, err := Sign(msg, key, opts) // scans the header again: cheap next to signing
	if err != nil {
		return msg, nil, err
	}
	return out, &key, nil
}
