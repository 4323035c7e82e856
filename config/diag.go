package config

import (
	"fmt"
	"sort"
	"strings"
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
