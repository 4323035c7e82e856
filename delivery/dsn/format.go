package dsn

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// maxLine is the longest line RFC 5322 allows, without its CRLF.
const maxLine = 998

// foldLen is the length past which header fields are folded when they can
// be, at whitespace.
const foldLen = 78

// foldField formats "name: value" ending with CRLF, folded at spaces to
// keep lines short. Line breaks in value become spaces; a word too long for
// a line is split (which adds a space to the unfolded value, the only way
// to stay within the line length limit).
func foldField(name, value string) string {
	value = strings.NewReplacer("\r\n", " ", "\r", " ", "\n", " ").Replace(value)
	var s strings.Builder
	s.WriteString(name)
	s.WriteByte(':')
	n := len(name) + 1 // length of the current line
	content := false   // the current line has something but the indent
	for _, w := range strings.Split(value, " ") {
		if content && w != "" && n+1+len(w) > foldLen {
			s.WriteString("\r\n")
			n, content = 0, false
		}
		s.WriteByte(' ')
		n++
		for n+len(w) > maxLine {
			cut := maxLine - n
			s.WriteString(w[:cut])
			s.WriteString("\r\n ")
			w = w[cut:]
			n = 1
		}
		s.WriteString(w)
		n += len(w)
		content = content || w != ""
	}
	s.WriteString("\r\n")
	return s.String()
}

// asciiText makes s printable US-ASCII for a message/delivery-status
// field: tabs become spaces, other control characters and non-ASCII
// characters become '?'.
func asciiText(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\t':
			b.WriteByte(' ')
		case r < 0x20 || r >= 0x7f:
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// oneLine joins the lines of a (multi-line) reply with single spaces.
func oneLine(s string) string {
	lines := replyLinesOf(s)
	return strings.Join(lines, " ")
}

// replyLinesOf splits a reply into its non-empty lines, trimmed.
func replyLinesOf(s string) []string {
	var out []string
	for l := range strings.SplitSeq(strings.ReplaceAll(s, "\r", "\n"), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// typedAddress formats an address for Final-Recipient or
// Original-Recipient: "addr-type; address". An address already carrying a
// type ("rfc822;a@b", as ORCPT is given on the wire) keeps it; a bare one
// is rfc822, or utf-8 (RFC 6533, with non-ASCII characters as \x{HEX})
// when it is not ASCII.
func typedAddress(a string) string {
	a = strings.TrimSpace(a)
	if typ, addr, ok := strings.Cut(a, ";"); ok && isAtom(strings.TrimSpace(typ)) {
		typ = strings.TrimSpace(typ)
		addr = strings.TrimSpace(addr)
		if strings.EqualFold(typ, "utf-8") {
			return "utf-8; " + utf8AddrText(addr)
		}
		return typ + "; " + asciiText(addr)
	}
	a = strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">")
	if isASCII([]byte(a)) {
		return "rfc822; " + asciiText(a)
	}
	return "utf-8; " + utf8AddrText(a)
}

// isAtom reports whether s can be an address type: letters, digits and
// hyphens.
func isAtom(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// utf8AddrText encodes an address as RFC 6533 utf-8-addr-xtext: printable
// ASCII but '+', '=' and '\' as is, everything else as \x{HEX}.
func utf8AddrText(a string) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(a, "\uFFFD") {
		if r > 0x20 && r < 0x7f && r != '+' && r != '=' && r != '\\' {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, `\x{%X}`, r)
		}
	}
	return b.String()
}

// isStatus reports whether s is an RFC 3463 status code: class 2, 4 or 5,
// subject and detail of one to three digits.
func isStatus(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || !strings.ContainsAny(parts[0], "245") {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// replyCode returns the reply code of an SMTP reply ("550 ...",
// "451-..."), and false when s does not start with one.
func replyCode(s string) (int, bool) {
	s = strings.TrimSpace(s)
	if len(s) < 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9' {
		return 0, false
	}
	if len(s) > 3 && s[3] != ' ' && s[3] != '-' && s[3] != '\r' && s[3] != '\n' {
		return 0, false
	}
	return int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0'), true
}

// Status returns the RFC 3463 status code of an SMTP reply: its enhanced
// status code ("550 5.1.1 user unknown" gives 5.1.1), else one made of
// its reply code's class ("554 delivery error" gives 5.0.0), else "" when
// reply does not start with a reply code.
func Status(reply string) string {
	code, ok := replyCode(reply)
	if !ok {
		return ""
	}
	rest := strings.TrimLeft(strings.TrimSpace(reply)[3:], " -")
	if i := strings.IndexAny(rest, " \t\r\n"); i >= 0 {
		rest = rest[:i]
	}
	// An enhanced code must agree with the reply code's class (RFC 2034).
	if isStatus(rest) && int(rest[0]-'0') == code/100 {
		return rest
	}
	return fmt.Sprintf("%d.0.0", code/100)
}

// statusOf returns the Status field of r.
func statusOf(r Recipient) string {
	if s := strings.TrimSpace(r.Status); isStatus(s) {
		return s
	}
	if s := Status(r.Diagnostic); s != "" {
		return s
	}
	switch r.action() {
	case ActionDelayed:
		return "4.0.0"
	case ActionDelivered, ActionRelayed, ActionExpanded:
		return "2.0.0"
	}
	return "5.0.0"
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// splitMessage splits a message at the blank line that ends its header
// section. body is nil when there is no such line (a message of headers
// only); headers is empty when the message starts with the blank line.
func splitMessage(m []byte) (headers, body []byte) {
	for i := 0; i < len(m); {
		j := bytes.IndexByte(m[i:], '\n')
		if j < 0 {
			break
		}
		line := m[i : i+j]
		if len(line) == 0 || len(line) == 1 && line[0] == '\r' {
			return m[:i], m[i+j+1:]
		}
		i += j + 1
	}
	return m, nil
}

// writeLines writes data to w with CRLF line endings (bare LF and bare CR
// become CRLF) and no line longer than maxLine: a longer header line is
// folded (CRLF and a space inserted), a longer body line broken. Headers
// end with a CRLF even when data does not.
func writeLines(w io.Writer, data []byte, header bool) error {
	var out bytes.Buffer
	out.Grow(len(data) + len(data)/64 + 2)
	n := 0 // length of the current output line
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch c {
		case '\r':
			if i+1 < len(data) && data[i+1] == '\n' {
				i++
			}
			fallthrough
		case '\n':
			out.WriteString("\r\n")
			n = 0
			continue
		}
		if n >= maxLine {
			if header {
				out.WriteString("\r\n ")
				n = 1
			} else {
				out.WriteString("\r\n")
				n = 0
			}
		}
		out.WriteByte(c)
		n++
	}
	if header && n > 0 {
		out.WriteString("\r\n")
	}
	_, err := w.Write(out.Bytes())
	return err
}

// wrapText appends text to b wrapped at width columns after indent; each
// line is ended by CRLF. A word too long for a line gets a line of its own
// (split at maxLine).
func wrapText(b *strings.Builder, text, indent string, width int) {
	n := 0
	for w := range strings.FieldsSeq(text) {
		if n > 0 && n+1+utf8.RuneCountInString(w) > width {
			b.WriteString("\r\n")
			n = 0
		}
		if n == 0 {
			b.WriteString(indent)
			n = len(indent)
		} else {
			b.WriteByte(' ')
			n++
		}
		for len(w) > maxLine-n {
			cut := maxLine - n
			for cut > 0 && !utf8.RuneStart(w[cut]) {
				cut--
			}
			b.WriteString(w[:cut])
			b.WriteString("\r\n")
			b.WriteString(indent)
			w = w[cut:]
			n = len(indent)
		}
		b.WriteString(w)
		n += utf8.RuneCountInString(w)
	}
	if n > 0 {
		b.WriteString("\r\n")
	}
}
