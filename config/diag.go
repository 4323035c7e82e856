package config

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Position is where a node of the configuration starts: file, 1-based line
// and 1-based column (in characters).
type Position struct {
	File   string
	Line   int
	Column int
}

// String formats the position as file:line:col, the form editors and
// terminals recognise.
func (p Position) String() string {
	switch {
	case p.File == "" && p.Line == 0:
		return "-"
	case p.Line == 0:
		return p.File
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
}

// IsValid reports whether the position points into a file.
func (p Position) IsValid() bool { return p.Line > 0 }

// Diagnostic is one located error or warning.
type Diagnostic struct {
	Pos     Position
	Message string
}

// String formats the diagnostic as "file:line:col: message".
func (d Diagnostic) String() string { return d.Pos.String() + ": " + d.Message }

// ErrorList is the error returned when a configuration is refused. It holds
// every error found in the file (not just the first), sorted by position, and
// the warnings found along the way so a caller can show both.
type ErrorList struct {
	Errors   []Diagnostic
	Warnings []Diagnostic
	// Migration is what the load read of each directive before it
	// stopped (see Config.Migration), so a migration report can be
	// written for a file that does not load yet.
	Migration []MigrationItem
}

// Error formats every error on its own line.
func (e *ErrorList) Error() string {
	var b strings.Builder
	for i, d := range e.Errors {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(d.String())
	}
	return b.String()
}

// sortDiagnostics orders diagnostics by file, line and column, keeping the
// order of discovery for diagnostics at the same place.
func sortDiagnostics(ds []Diagnostic) {
	sort.SliceStable(ds, func(i, j int) bool {
		a, b := ds[i].Pos, ds[j].Pos
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// suggest returns the candidate closest to word when it is close enough to be
// a plausible typo, or "" when none is.
func suggest(word string, candidates []string) string {
	word = strings.ToLower(word)
	best, bestDist := "", -1
	for _, c := range candidates {
		d := editDistance(word, c)
		if bestDist < 0 || d < bestDist || (d == bestDist && c < best) {
			best, bestDist = c, d
		}
	}
	limit := len(word) / 3
	if limit < 2 {
		limit = 2
	}
	// A candidate that shares nothing with the word is no hint: "1" or "on"
	// must not suggest "no".
	if bestDist < 0 || bestDist > limit || bestDist >= len(word) {
		return ""
	}
	return best
}

// didYouMean formats the hint suffix for an unknown word, or "" if no
// candidate is close.
func didYouMean(word string, candidates []string, format string) string {
	s := suggest(word, candidates)
	if s == "" {
		return ""
	}
	return " (did you mean " + fmt.Sprintf(format, s) + "?)"
}

// editDistance is the Levenshtein distance between a and b, counted in bytes;
// directive names are ASCII.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// maxExcerpt is how many characters of a value a message quotes. A message
// needs a few words to say which value is wrong; the position says where the
// rest is. More could copy a secret into a log: a password hash, a key, a
// line of a file that was never meant to be configuration.
const maxExcerpt = 40

// excerpt returns s, or its first maxExcerpt characters and "…" when it is
// longer.
func excerpt(s string) string {
	if utf8.RuneCountInString(s) <= maxExcerpt {
		return s
	}
	i := 0
	for range maxExcerpt {
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	return s[:i] + "…"
}

// shortenQuoted shortens every Go-quoted string in msg (what %q writes)
// whose content is longer than maxExcerpt. It is applied to every message,
// so no check in the builder has to remember to: values reach messages
// through %q in many places, and through errors of the value parsers.
// Text that is not a well-formed quoted string is left as it is.
func shortenQuoted(msg string) string {
	if !strings.Contains(msg, `"`) {
		return msg
	}
	var b strings.Builder
	for i := 0; i < len(msg); {
		j := strings.IndexByte(msg[i:], '"')
		if j < 0 {
			b.WriteString(msg[i:])
			break
		}
		b.WriteString(msg[i : i+j])
		i += j
		q, err := strconv.QuotedPrefix(msg[i:])
		if err != nil {
			b.WriteByte('"')
			i++
			continue
		}
		i += len(q)
		if s, err := strconv.Unquote(q); err == nil && utf8.RuneCountInString(s) > maxExcerpt {
			q = strconv.Quote(excerpt(s))
		}
		b.WriteString(q)
	}
	return b.String()
}

// nameLike matches what could be a misspelt directive or block name.
var nameLike = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

// looksLikeName reports whether a directive or block name read from a file
// (lower-cased) could be a typo of a real one, and so may be quoted in a
// message. `root:$y$j9T$…:19000:0:99999:7:::` from /etc/shadow cannot, nor
// can a line of base64 (too long), nor `-----BEGIN` from a key file.
func looksLikeName(name string) bool {
	return len(name) <= maxExcerpt && nameLike.MatchString(name)
}

// withhold replaces the diagnostics located in each file of opaque by one,
// at the first of them, that quotes nothing and says why (the file's entry
// in opaque). Those files are unlikely to be configuration at all (they are
// not UTF-8 text, or their first line is no directive), so their lines may
// be anything, secrets too; the file and line are enough to find the
// mistake, which is usually the include that names the file. ds must be
// sorted; kind ("error" or "warning") is what the count says.
func withhold(ds []Diagnostic, opaque map[string]string, kind string) []Diagnostic {
	if len(opaque) == 0 {
		return ds
	}
	count := map[string]int{}
	for _, d := range ds {
		if _, ok := opaque[d.Pos.File]; ok {
			count[d.Pos.File]++
		}
	}
	if len(count) == 0 {
		return ds
	}
	out := make([]Diagnostic, 0, len(ds))
	for _, d := range ds {
		reason, ok := opaque[d.Pos.File]
		if !ok {
			out = append(out, d)
			continue
		}
		n := count[d.Pos.File]
		if n == 0 {
			continue // already summed up
		}
		count[d.Pos.File] = 0
		what := "1 " + kind
		if n > 1 {
			what = strconv.Itoa(n) + " " + kind + "s"
		}
		out = append(out, Diagnostic{Pos: d.Pos, Message: what + " in this file, not shown: " + reason + ", so none of its lines is quoted"})
	}
	return out
}

// dedupe drops repeated diagnostics from the sorted ds. A file included
// twice reports its own mistakes twice, word for word at the same place;
// and an include refused for its depth is refused again each time the file
// holding it is read, which an include fan-out does hundreds of times.
func dedupe(ds []Diagnostic) []Diagnostic {
	seen := make(map[Diagnostic]bool, len(ds))
	out := ds[:0]
	for _, d := range ds {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out
}
