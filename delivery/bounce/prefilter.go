package bounce

import (
	"regexp/syntax"
	"strings"
)

// A prefilter is a set of literals at least one of which occurs in every
// text its regexp matches. Checking them with strings.Contains is much
// cheaper than running the regexp, which most replies would fail anyway.
// A nil prefilter means no such set was found: always run the regexp.

// alternatives splits pattern into its top-level alternatives, as
// patterns; a pattern that is no alternation is its own sole alternative.
func alternatives(pattern string) []string {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil || re.Op != syntax.OpAlternate {
		return []string{pattern}
	}
	alts := make([]string, len(re.Sub))
	for i, sub := range re.Sub {
		alts[i] = sub.String()
	}
	return alts
}

// maxLiterals caps a prefilter's size; beyond it the regexp runs as is.
const maxLiterals = 64

// prefilterOf derives the prefilter of a (lower-case) pattern.
func prefilterOf(pattern string) []string {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil // regexp.MustCompile reports it
	}
	lits := required(re.Simplify())
	if len(lits) > maxLiterals {
		return nil
	}
	return lits
}

// required returns literals one of which any match of re contains, or nil.
func required(re *syntax.Regexp) []string {
	switch re.Op {
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			return nil
		}
		return []string{string(re.Rune)}
	case syntax.OpCapture:
		return required(re.Sub[0])
	case syntax.OpPlus:
		return required(re.Sub[0])
	case syntax.OpRepeat:
		if re.Min >= 1 {
			return required(re.Sub[0])
		}
		return nil
	case syntax.OpCharClass:
		// A small class such as [ae] or [psx] expands to its letters.
		var lits []string
		for i := 0; i+1 < len(re.Rune); i += 2 {
			for r := re.Rune[i]; r <= re.Rune[i+1]; r++ {
				if len(lits) == 4 {
					return nil
				}
				lits = append(lits, string(r))
			}
		}
		return lits
	case syntax.OpAlternate:
		var lits []string
		for _, sub := range re.Sub {
			l := required(sub)
			if l == nil {
				return nil
			}
			lits = append(lits, l...)
		}
		return dedupe(lits)
	case syntax.OpConcat:
		return requiredConcat(re.Sub)
	}
	return nil
}

// requiredConcat picks, for a concatenation, the best run of adjacent
// parts that each have a prefilter, joining them into longer literals
// (cross product) while the set stays small; failing that, the single part
// whose shortest literal is longest.
func requiredConcat(subs []*syntax.Regexp) []string {
	var best []string
	score := func(l []string) int {
		if l == nil {
			return -1
		}
		m := -1
		for _, s := range l {
			if m < 0 || len(s) < m {
				m = len(s)
			}
		}
		return m
	}
	for i := range subs {
		cur := required(subs[i])
		if cur == nil {
			continue
		}
		// Extend with following parts only while they are literal-like
		// (each match of the part is one of its literals exactly).
		for j := i + 1; exactLits(subs[j-1]) && j < len(subs) && exactLits(subs[j]); j++ {
			next := required(subs[j])
			if next == nil || len(cur)*len(next) > maxLiterals {
				break
			}
			var joined []string
			for _, a := range cur {
				for _, b := range next {
					joined = append(joined, a+b)
				}
			}
			cur = joined
		}
		if score(cur) > score(best) {
			best = cur
		}
	}
	return best
}

// exactLits reports whether every match of re is exactly one of the
// literals required returns for it, so literals of adjacent parts may be
// joined.
func exactLits(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpLiteral:
		return re.Flags&syntax.FoldCase == 0
	case syntax.OpCapture:
		return exactLits(re.Sub[0])
	case syntax.OpCharClass:
		return required(re) != nil
	case syntax.OpAlternate:
		for _, sub := range re.Sub {
			if !exactLits(sub) {
				return false
			}
		}
		return true
	case syntax.OpConcat:
		for _, sub := range re.Sub {
			if !exactLits(sub) {
				return false
			}
		}
		return true
	}
	return false
}

func dedupe(lits []string) []string {
	out := lits[:0:0]
	seen := map[string]bool{}
	for _, l := range lits {
		if !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return out
}

// mayMatch reports whether text contains one of the prefilter's literals;
// true for a nil prefilter.
func mayMatch(lits []string, text string) bool {
	if lits == nil {
		return true
	}
	for _, l := range lits {
		if strings.Contains(text, l) {
			return true
		}
	}
	return false
}
