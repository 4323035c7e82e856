package listener

import (
	"crypto/sha256"
	_ "embed" // the status page is compiled in
	"encoding/base64"
	"io"
	"net/http"
	"net/netip"
	"strings"

	"github.com/ternmta/tern/config"
)

// statusPageHTML is the status page served at GET /: one file with its
// style and script inline, so that it needs nothing but the admin port and
// works on a host without Internet access.
//
//go:embed statuspage.html
var statusPageHTML string

// statusPage serves the status page. The page itself holds no data: its
// script reads GET /api/status, /api/queues, /api/providers and /api/shaping
// every few seconds.
func (a *Admin) statusPage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// no-cache, not no-store: the browser may keep the page but must ask
	// again, so that an upgraded Tern serves its own page.
	h.Set("Cache-Control", "no-cache")
	h.Set("Content-Security-Policy", statusPageCSP(statusPageHTML))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	io.WriteString(w, statusPageHTML)
}

// statusPageCSP is the Content-Security-Policy of page: nothing may load
// but the inline style and script blocks whose hashes it lists (an injected
// one would not match), calls to this origin, and the empty data: icon that
// spares a request for /favicon.ico. Hashes rather than 'unsafe-inline', so
// that even a flaw in the page's escaping could not run a script. It is
// computed per request, not kept in a variable: the page is fetched once per
// visit, and hashing it takes microseconds.
func statusPageCSP(page string) string {
	return "default-src 'none'; " +
		"script-src " + inlineHashes(page, "script") + "; " +
		"style-src " + inlineHashes(page, "style") + "; " +
		"connect-src 'self'; img-src data:; " +
		"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}

// inlineHashes lists the CSP source expressions ('sha256-…') of the
// contents of every <tag>…</tag> element of page. The page writes these
// tags without attributes, which keeps this plain string search exact.
func inlineHashes(page, tag string) string {
	open, end := "<"+tag+">", "</"+tag+">"
	var out []string
	for {
		i := strings.Index(page, open)
		if i < 0 {
			break
		}
		page = page[i+len(open):]
		j := strings.Index(page, end)
		if j < 0 {
			break
		}
		sum := sha256.Sum256([]byte(page[:j]))
		out = append(out, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
		page = page[j+len(end):]
	}
	if len(out) == 0 {
		return "'none'"
	}
	return strings.Join(out, " ")
}

// guardByAddress admits a request whose client address http-access gives
// at least level, and runs h through admit. Unlike guard it does not ask
// for http-api-key: a browser opening a page sends no Authorization
// header, so with a key set guard would keep out the very page that asks
// for the key. What it guards must therefore hold no data; the status page
// does not (its calls to the API send the key and go through guard), nor
// do the 404 and 405 answers.
func (a *Admin) guardByAddress(level config.AccessLevel, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ip, granted := clientAccess(a.cfg.Load(), r)
		if granted < level {
			a.opts.Logger.Warn("admin API refused", "client", ip.String(), "path", r.URL.Path, "level", granted.String())
			writeError(w, http.StatusForbidden, "access denied")
			return
		}
		a.admit(w, r, h)
	}
}

// clientAccess is the address of r's client and the level that the first
// http-access rule of cfg matching it gives (AccessNone without one).
func clientAccess(cfg *config.Config, r *http.Request) (netip.Addr, config.AccessLevel) {
	ip := netip.Addr{}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		ip = ap.Addr().Unmap()
	}
	return ip, addrAccess(cfg, ip)
}

// addrAccess is the level that the first http-access rule of cfg matching
// ip gives (AccessNone without one).
func addrAccess(cfg *config.Config, ip netip.Addr) config.AccessLevel {
	for _, rule := range cfg.HTTPAccess {
		if rule.Prefix.Contains(ip) {
			return rule.Level
		}
	}
	return config.AccessNone
}
