package main

// Output for people: aligned tables and human units (ages such as 3m12s,
// sizes such as 12.3 MB). Scripts use --json instead, so these formats may
// change between releases.

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// table writes aligned columns, under a header row unless it is a block of
// name and value lines. An empty cell shows "-", so that columns stay
// readable and split on whitespace; only a block's name may be blank, to
// continue the line above.
type table struct {
	tw    *tabwriter.Writer
	block bool
}

// newTable starts a table on w with the given column names.
func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	t.row(header...)
	return t
}

// newBlock starts a block of aligned "name  value" lines, without header.
func newBlock(w io.Writer) *table {
	return &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0), block: true}
}

// row adds a row.
func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" && (i > 0 || !t.block) {
			c = "-"
		}
		if i > 0 {
			io.WriteString(t.tw, "\t")
		}
		io.WriteString(t.tw, c)
	}
	io.WriteString(t.tw, "\n")
}

// flush writes the table out.
func (t *table) flush() { t.tw.Flush() }

// age formats a duration the way people read queue ages: the two largest
// units, whole seconds ("45s", "3m12s", "2h5m", "3d4h").
func age(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	default:
		return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
	}
}

// ageSince is age(now - t), "" for a missing time.
func ageSince(t *time.Time, now time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return age(now.Sub(*t))
}

// until formats a future time as "in 4m00s", and a past one as "due".
func until(t *time.Time, now time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	if !t.After(now) {
		return "due"
	}
	return "in " + age(t.Sub(now))
}

// size formats a byte count in decimal units: "512 B", "12.3 kB", "4.0 GB".
func size(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	for _, u := range []string{"kB", "MB", "GB", "TB"} {
		f /= unit
		if f < unit || u == "TB" {
			return fmt.Sprintf("%.1f %s", f, u)
		}
	}
	panic("unreachable")
}

// clip shortens s to n runes with an ellipsis, for replies in a table.
func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// clipStart shortens s to n runes keeping its end, for errors whose last
// words say the most ("…: connect: connection refused").
func clipStart(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return "…" + strings.TrimLeft(string(r[len(r)-n+1:]), " ")
}
