package config

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// already reports a directive set twice in one block.
func (b *builder) already(s interface{ isSet() bool }, prev Position, n *node) bool {
	if !s.isSet() {
		return false
	}
	b.errorf(n.Pos, "%s is already set at %s; remove one of the two lines", n.Name, shortPos(prev, n.Pos))
	return true
}

// shortPos writes p as "line N" when it is in the same file as from.
func shortPos(p, from Position) string {
	if p.File == from.File {
		return fmt.Sprintf("line %d", p.Line)
	}
	return p.String()
}

// single returns the directive's one value, reporting none or several.
func (b *builder) single(n *node) (arg, bool) {
	switch len(n.Args) {
	case 0:
		b.errorf(n.Pos, "%s needs a value", n.Name)
		return arg{}, false
	case 1:
		return n.Args[0], true
	}
	b.errorf(n.Args[1].Pos, "%s takes one value (quote a value with spaces)", n.Name)
	return arg{}, false
}

// setOne parses the directive's single value into s.
func setOne[T any](b *builder, s *Setting[T], n *node, parse func(string) (T, error)) {
	if b.already(s, s.Pos, n) {
		return
	}
	a, ok := b.single(n)
	if !ok {
		return
	}
	v, err := parse(a.Text)
	if err != nil {
		b.errorf(a.Pos, "%s: %v", n.Name, err)
		return
	}
	*s = Setting[T]{Value: v, Pos: n.Pos, Set: true}
}

// setList parses all of the directive's values, joined, into s: for lists
// written with spaces after their commas.
func setList[T any](b *builder, s *Setting[T], n *node, parse func(string) (T, error)) {
	if b.already(s, s.Pos, n) {
		return
	}
	if len(n.Args) == 0 {
		b.errorf(n.Pos, "%s needs a value", n.Name)
		return
	}
	v, err := parse(n.argText())
	if err != nil {
		b.errorf(n.Args[0].Pos, "%s: %v", n.Name, err)
		return
	}
	*s = Setting[T]{Value: v, Pos: n.Pos, Set: true}
}

func intRange(lo, hi int) func(string) (int, error) {
	return func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, fmt.Errorf("%q is not a whole number", s)
		}
		if n < lo || n > hi {
			return 0, fmt.Errorf("%d is out of range (%d to %d)", n, lo, hi)
		}
		return n, nil
	}
}

// countOrUnlimited reads a count where 0 or `unlimited` means no limit.
func countOrUnlimited(s string) (int, error) {
	if strings.EqualFold(s, "unlimited") {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a whole number or unlimited", s)
	}
	return n, nil
}

func positiveDuration(s string) (time.Duration, error) {
	d, err := parseDuration(s)
	if err == nil && d <= 0 {
		err = fmt.Errorf("%q must be longer than 0", s)
	}
	return d, err
}

func durationOrNever(s string) (time.Duration, error) {
	if strings.EqualFold(s, "never") {
		return Never, nil
	}
	return positiveDuration(s)
}

// logLevel reads debug, info, warning (or warn) and error.
func logLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warning", "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q (debug, info, warning or error)", s)
}

func text(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("empty value")
	}
	return s, nil
}

func hostname(s string) (string, error) {
	if !validHostname(s) {
		return "", fmt.Errorf("%q is not a host name", s)
	}
	return strings.TrimSuffix(s, "."), nil
}

func headerName(s string) (string, error) {
	for _, c := range s {
		if c <= ' ' || c >= 127 || c == ':' {
			return "", fmt.Errorf("%q is not a header name", s)
		}
	}
	if s == "" {
		return "", fmt.Errorf("empty header name")
	}
	return s, nil
}

// vmtaRef reads a VMTA or pool name; whether it exists is checked once the
// whole file is read.
func vmtaRef(s string) (string, error) {
	if !namePattern.MatchString(strings.ToLower(s)) {
		return "", fmt.Errorf("%q is not a virtual MTA name", s)
	}
	return s, nil
}

// limitOrUnlimited reads a limit of at most hi where 0 or `unlimited` means
// no limit (read as 0).
func limitOrUnlimited(hi int) func(string) (int, error) {
	return func(s string) (int, error) {
		if strings.EqualFold(s, "unlimited") {
			return 0, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a whole number or unlimited", s)
		}
		if n > hi {
			return 0, fmt.Errorf("%d is out of range (0 to %d, or unlimited)", n, hi)
		}
		return n, nil
	}
}

// maxRcptLimit is the largest max-rcpt-per-message in <source>; PowerMTA's
// 0 and unlimited are read as it, since a session holds its recipients in
// memory and needs some bound.
const maxRcptLimit = 1000000

// rcptLimit reads max-rcpt-per-message in <source>: 1 to maxRcptLimit, or 0
// or unlimited for maxRcptLimit.
func rcptLimit(s string) (int, error) {
	if strings.EqualFold(s, "unlimited") || s == "0" {
		return maxRcptLimit, nil
	}
	return intRange(1, maxRcptLimit)(s)
}
