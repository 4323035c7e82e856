package vmta

import (
	"github.com/ternmta/tern/config"
)

// MessageInfo is what a pattern list looks at in a message.
type MessageInfo struct {
	// MailFrom is the envelope sender as given to MAIL FROM, without the
	// angle brackets; empty for the null sender.
	MailFrom string
	// RcptTo are the envelope recipients, without angle brackets.
	RcptTo []string
	// Header returns every value of the named header field, unfolded, and
	// must match the name case-insensitively: textproto.MIMEHeader's Values
	// method (a method value such as hdr.Values) is such a function. Nil
	// means the message has no headers to match.
	Header func(name string) []string
}

// PatternList is a compiled <pattern-list>: rules that route a message to a
// VMTA or pool by its sender, its recipients or a header.
type PatternList struct {
	// Name is the name as written in the file.
	Name string
	// Config is the <pattern-list> block.
	Config *config.PatternList

	// targets[i] is what rule i's virtual-mta= resolves to.
	targets []target
}

// Match returns the virtual-mta= name of the first rule that matches msg.
// A mail-from rule matches the envelope sender, a rcpt-to rule matches when
// any recipient matches, a header rule when any value of its header
// matches. The regexes are case-insensitive unless written with (?-i), and
// match anywhere in the text unless anchored.
func (pl *PatternList) Match(msg MessageInfo) (vmtaName string, ok bool) {
	i := pl.match(msg)
	if i < 0 {
		return "", false
	}
	return pl.Config.Rules[i].VirtualMTA, true
}

// match returns the index of the first matching rule, or -1.
func (pl *PatternList) match(msg MessageInfo) int {
	for i := range pl.Config.Rules {
		rule := &pl.Config.Rules[i]
		switch rule.Field {
		case config.MatchMailFrom:
			if rule.Regexp.MatchString(msg.MailFrom) {
				return i
			}
		case config.MatchRcptTo:
			for _, rcpt := range msg.RcptTo {
				if rule.Regexp.MatchString(rcpt) {
					return i
				}
			}
		case config.MatchHeader:
			if msg.Header == nil {
				continue
			}
			for _, v := range msg.Header(rule.Header) {
				if rule.Regexp.MatchString(v) {
					return i
				}
			}
		}
	}
	return -1
}
