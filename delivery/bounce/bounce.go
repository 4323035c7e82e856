// Package bounce classifies SMTP failure replies into bounce categories.
//
// Classify maps a reply — its basic code, the RFC 3463 enhanced status code
// if the text carries one, and the text itself — to one of the categories
// PowerMTA uses in its accounting files (bad-mailbox, spam-related, ...), so
// that operators can tell a dead address from a reputation problem.
//
// # Precedence
//
// Classify decides in this order; the first step that yields a category
// wins:
//
//  1. Local diagnostics. A reply with no SMTP code and no enhanced code, or
//     one starting with "connection failed:" (Tern's own prefix for a
//     failure that produced no reply), is matched against the local table:
//     configuration problems (STARTTLS required but not offered), DNS
//     routing failures, refused/reset/EOF/TLS failures (bad-connection) and
//     timeouts/unreachable hosts (no-answer-from-host).
//  2. Definitive enhanced codes. Codes whose meaning leaves no doubt —
//     x.1.1, x.1.2, x.1.3, x.1.6, x.1.7, x.1.8, x.2.2, x.3.1, x.3.4, x.4.2,
//     x.4.6, x.4.7, x.7.20–x.7.27 — decide on their own, even
//     if the text mentions spam (Gmail's x.7.26 DMARC reply does).
//  3. Reply text. Generic or overloaded codes (x.0.0, x.X.0, x.1.10, x.2.1,
//     x.4.1, x.4.4, x.5.x, x.6.x, x.7.0, x.7.1, x.7.8–x.7.11 and other x.7.x, or no
//     enhanced code at all) let the text decide, through an ordered table:
//     virus, message expiry, spam/blocklist/reputation, greylisting, quota,
//     relaying, invalid sender, inactive mailbox, bad domain, bad mailbox,
//     content, authentication policy, configuration, routing loops, generic
//     policy, protocol. Earlier entries are the more specific signals, so
//     Gmail's "550-5.7.1 ... likely unsolicited mail" is spam-related, not
//     policy-related, and Postfix's "Recipient address rejected:
//     Greylisted" is policy-related, not bad-mailbox.
//  4. The generic code's own category (x.7.x policy-related, x.5.x
//     protocol-errors, x.4.x routing-errors, ...).
//  5. The basic reply code (500–504 protocol-errors, 552 quota-issues, 530
//     bad-configuration).
//  6. Other.
//
// The rules are data: ordered tables of regular expressions compiled once
// at package initialisation and never modified, so Classify is safe for
// concurrent use. Text is matched in lower case and only its first
// MaxText bytes are examined. Each text rule is run as its top-level
// alternatives, each skipped unless the text contains one of the literals
// any of its matches must contain, so a call costs a few microseconds.
package bounce

import (
	"strings"
)

// Category is a bounce category, named as in PowerMTA's accounting files.
type Category string

// The bounce categories.
const (
	BadMailbox       Category = "bad-mailbox"         // the address does not exist
	InactiveMailbox  Category = "inactive-mailbox"    // the address exists but is disabled, suspended or moved
	BadDomain        Category = "bad-domain"          // the domain does not exist or accepts no mail
	QuotaIssues      Category = "quota-issues"        // mailbox full or over its quota
	SpamRelated      Category = "spam-related"        // rejected as spam, for a blocklisting or for reputation
	VirusRelated     Category = "virus-related"       // the message carries a virus
	ContentRelated   Category = "content-related"     // size, attachments or other content rejected
	PolicyRelated    Category = "policy-related"      // a local policy (authentication, rate, greylisting) refused it
	RelayingIssues   Category = "relaying-issues"     // the server refuses to relay
	RoutingErrors    Category = "routing-errors"      // no route, mail loop, DNS failure on the way
	ProtocolErrors   Category = "protocol-errors"     // SMTP syntax or sequence errors
	NoAnswerFromHost Category = "no-answer-from-host" // the host did not answer (timeout, unreachable)
	BadConnection    Category = "bad-connection"      // the connection was refused, reset or failed TLS
	BadConfiguration Category = "bad-configuration"   // a configuration mismatch (TLS or AUTH required)
	MessageExpired   Category = "message-expired"     // the message stayed in the queue too long
	InvalidSender    Category = "invalid-sender"      // the sender address was rejected
	Other            Category = "other"               // nothing more specific matched
)

// Categories lists every category, in the order of the constants.
func Categories() []Category {
	return []Category{
		BadMailbox, InactiveMailbox, BadDomain, QuotaIssues, SpamRelated,
		VirusRelated, ContentRelated, PolicyRelated, RelayingIssues,
		RoutingErrors, ProtocolErrors, NoAnswerFromHost, BadConnection,
		BadConfiguration, MessageExpired, InvalidSender, Other,
	}
}

// String returns the category's name, as written in accounting files.
func (c Category) String() string { return string(c) }

// MaxText is how many bytes of a reply Classify examines; the rest of a
// long multi-line reply is ignored, bounding the cost of a call.
const MaxText = 2048

// Classify returns the bounce category of an SMTP reply. code is the basic
// reply code (0 when there was no reply, as for a connection failure); reply
// is the reply text as received, with or without the code and enhanced code
// in front, possibly multi-line. Classify is meant for failure replies; a
// success reply comes out as Other. See the package documentation for the
// order in which the code, the enhanced code and the text are consulted.
func Classify(code int, reply string) Category {
	if len(reply) > MaxText {
		reply = reply[:MaxText]
	}
	if code == 0 {
		code = leadingCode(reply)
	}
	ec, hasEC := parseEnhanced(reply)
	text := strings.ToLower(reply)

	// 1. Local diagnostics.
	if strings.HasPrefix(text, "connection failed:") || (code == 0 && !hasEC) {
		if c, ok := matchText(localRules, text); ok {
			return c
		}
	}
	// 2. Definitive enhanced codes.
	var fallback Category
	if hasEC {
		if r, ok := lookupEnhanced(ec); ok {
			if !r.refine {
				return r.cat
			}
			fallback = r.cat
		}
	}
	// 3. Reply text.
	if c, ok := matchText(textRules, text); ok {
		return c
	}
	// 4. The generic enhanced code's category.
	if fallback != "" {
		return fallback
	}
	// 5. The basic reply code.
	for _, r := range basicRules {
		if code >= r.lo && code <= r.hi {
			return r.cat
		}
	}
	return Other
}

// Enhanced is an RFC 3463 enhanced status code, class.subject.detail.
type Enhanced struct {
	Class, Subject, Detail int
}

// ParseEnhanced returns the enhanced status code at the start of a line of
// reply — after an optional "smtp;" (as in a DSN's Diagnostic-Code), an
// optional basic code and its separator, and an optional "#" — and whether
// there was one. The first such line wins.
func ParseEnhanced(reply string) (Enhanced, bool) {
	if len(reply) > MaxText {
		reply = reply[:MaxText]
	}
	return parseEnhanced(reply)
}

func parseEnhanced(reply string) (Enhanced, bool) {
	for line := range strings.Lines(reply) {
		if e, ok := enhancedInLine(line); ok {
			return e, true
		}
	}
	return Enhanced{}, false
}

// enhancedInLine parses "[smtp;] [NNN[- ]] [#]C.S.D" at the start of line,
// by hand: this runs on every call and a regexp would dominate its cost.
func enhancedInLine(s string) (Enhanced, bool) {
	s = strings.TrimLeft(s, " \t")
	if len(s) >= 5 && strings.EqualFold(s[:5], "smtp;") {
		s = strings.TrimLeft(s[5:], " \t")
	}
	if len(s) >= 4 && isDigit(s[0]) && isDigit(s[1]) && isDigit(s[2]) && (s[3] == ' ' || s[3] == '-') {
		s = strings.TrimLeft(s[4:], " \t")
	}
	s = strings.TrimPrefix(s, "#")
	if len(s) < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.' {
		return Enhanced{}, false
	}
	e := Enhanced{Class: int(s[0] - '0')}
	s = s[2:]
	var ok bool
	if e.Subject, s, ok = number(s); !ok || len(s) == 0 || s[0] != '.' {
		return Enhanced{}, false
	}
	if e.Detail, s, ok = number(s[1:]); !ok {
		return Enhanced{}, false
	}
	// The code must end here: "5.1.1.2" is an address, not a status.
	if len(s) > 0 && (isDigit(s[0]) || s[0] == '.' && len(s) > 1 && isDigit(s[1])) {
		return Enhanced{}, false
	}
	return e, true
}

// number parses one to three digits at the start of s.
func number(s string) (int, string, bool) {
	n, i := 0, 0
	for i < len(s) && i < 4 && isDigit(s[i]) {
		n = n*10 + int(s[i]-'0')
		i++
	}
	if i == 0 || i > 3 {
		return 0, s, false
	}
	return n, s[i:], true
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// leadingCode returns the basic reply code at the start of reply, or 0.
func leadingCode(reply string) int {
	s := strings.TrimLeft(reply, " \t")
	if len(s) >= 3 && s[0] >= '2' && s[0] <= '5' && isDigit(s[1]) && isDigit(s[2]) &&
		(len(s) == 3 || s[3] == ' ' || s[3] == '-' || s[3] == '\r' || s[3] == '\n') {
		return int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0')
	}
	return 0
}

func lookupEnhanced(e Enhanced) (enhancedRule, bool) {
	for _, r := range enhancedRules {
		if r.matches(e) {
			return r, true
		}
	}
	return enhancedRule{}, false
}

func matchText(rules []textRule, text string) (Category, bool) {
	for i := range rules {
		if r := &rules[i]; r.match(text) {
			return r.cat, true
		}
	}
	return "", false
}
