package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ternmta/tern/config"
)

// migrateStatuses is the order of the report's sections, each with its
// heading.
var migrateStatuses = []struct {
	status  config.PMTAStatus
	heading string
}{
	{config.PMTAIgnored, "Ignored: accepted with a warning and not acted on. Each says what Tern does instead; remove the line once you have dealt with it"},
	{config.PMTADiffers, "Applied differently from PowerMTA: check that the difference is what you want"},
	{config.PMTATern, "Tern's own directives"},
	{config.PMTASame, "Applied as PowerMTA does"},
}

// runMigrate writes the migration report of a PowerMTA file: every
// directive it holds, grouped by how Tern treats it, then the errors that
// stop it from loading. Exit 0 when the file loads, 1 when it does not.
func runMigrate(path string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(path, config.Options{})
	var (
		items    []config.MigrationItem
		errs     []config.Diagnostic
		warnings []config.Diagnostic
	)
	if err != nil {
		var list *config.ErrorList
		if !errors.As(err, &list) {
			fmt.Fprintf(stderr, "%s: %v\n", path, err)
			return 1
		}
		items, errs, warnings = list.Migration, list.Errors, list.Warnings
	} else {
		items, warnings = cfg.Migration, cfg.Warnings
	}
	writeMigrationReport(stdout, path, items, errs, warnings)
	if len(errs) > 0 {
		return 1
	}
	return 0
}

// writeMigrationReport writes the report; see runMigrate.
func writeMigrationReport(w io.Writer, path string, items []config.MigrationItem, errs, warnings []config.Diagnostic) {
	fmt.Fprintf(w, "Migration report for %s\n", path)
	if len(errs) == 0 {
		fmt.Fprintf(w, "The file loads: %s, %s read.\n", plural(len(warnings), "warning"), plural(len(items), "directive"))
	} else {
		fmt.Fprintf(w, "The file does not load yet: %s to fix (listed last), %s, %s read.\n", plural(len(errs), "error"), plural(len(warnings), "warning"), plural(len(items), "directive"))
	}
	for _, sec := range migrateStatuses {
		// One entry per directive and note, in the order first seen.
		type entry struct {
			name, note string
			at         []config.Position
		}
		var entries []*entry
		byKey := map[string]*entry{}
		for _, it := range items {
			if it.Status != sec.status {
				continue
			}
			k := it.Name + "\x00" + it.Note
			e := byKey[k]
			if e == nil {
				e = &entry{name: it.Name, note: it.Note}
				byKey[k] = e
				entries = append(entries, e)
			}
			e.at = append(e.at, it.Pos)
		}
		if len(entries) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%s):\n", sec.heading, plural(len(entries), "directive"))
		if sec.status == config.PMTASame || sec.status == config.PMTATern {
			names := make([]string, len(entries))
			for i, e := range entries {
				names[i] = e.name + times(len(e.at))
			}
			fmt.Fprintf(w, "  %s\n", wrap(strings.Join(names, ", "), 76, "  "))
			continue
		}
		for _, e := range entries {
			fmt.Fprintf(w, "  %s%s, at %s\n", e.name, times(len(e.at)), positions(e.at))
			fmt.Fprintf(w, "      %s\n", wrap(e.note, 72, "      "))
		}
	}
	// The warnings the sections above do not already carry: plaintext
	// passwords, options read and ignored, values replaced.
	var other []config.Diagnostic
	for _, d := range warnings {
		if !strings.Contains(d.Message, " is a PowerMTA directive Tern ignores: ") && !strings.Contains(d.Message, " is a PowerMTA block Tern ignores ") {
			other = append(other, d)
		}
	}
	if len(other) > 0 {
		fmt.Fprintf(w, "\nOther warnings (%d):\n", len(other))
		for _, d := range other {
			fmt.Fprintf(w, "  %s: %s\n", d.Pos, d.Message)
		}
	}
	if len(errs) > 0 {
		fmt.Fprintf(w, "\nTo fix before the file loads (each error says how):\n")
		for _, d := range errs {
			fmt.Fprintf(w, "  %s: %s\n", d.Pos, d.Message)
		}
	}
}

// times writes " ×N" for a directive seen N>1 times.
func times(n int) string {
	if n == 1 {
		return ""
	}
	return fmt.Sprintf(" ×%d", n)
}

// positions names up to three positions and counts the rest.
func positions(ps []config.Position) string {
	var out []string
	for i, p := range ps {
		if i == 3 {
			out = append(out, fmt.Sprintf("and %d more", len(ps)-3))
			break
		}
		out = append(out, p.String())
	}
	return strings.Join(out, ", ")
}

// wrap breaks s into lines of at most width characters at spaces, the
// lines after the first starting with indent.
func wrap(s string, width int, indent string) string {
	var sb strings.Builder
	line := 0
	for i, word := range strings.Fields(s) {
		if i > 0 {
			if line+1+len(word) > width {
				sb.WriteString("\n" + indent)
				line = 0
			} else {
				sb.WriteByte(' ')
				line++
			}
		}
		sb.WriteString(word)
		line += len(word)
	}
	return sb.String()
}
