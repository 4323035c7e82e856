package config

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
)

var updateDocs = flag.Bool("update-docs", false, "rewrite the generated tables of docs/configuration.md")

const docsPath = "../docs/configuration.md"

// generatedSections are the parts of docs/configuration.md written from the
// scope tables, each between a begin and an end marker.
var generatedSections = map[string]func() string{
	"directive-index": directiveIndexMarkdown,
	"ignored":         ignoredMarkdown,
}

// TestDocsGenerated fails when a generated table of docs/configuration.md
// differs from what the scope tables say. Run
// `go test ./config -run TestDocsGenerated -update-docs` to rewrite them.
func TestDocsGenerated(t *testing.T) {
	raw, err := os.ReadFile(docsPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	names := make([]string, 0, len(generatedSections))
	for name := range generatedSections {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		begin := "<!-- generated: " + name + " (go test ./config -run TestDocsGenerated -update-docs) -->\n"
		end := "<!-- end generated: " + name + " -->"
		i := strings.Index(doc, begin)
		j := strings.Index(doc, end)
		if i < 0 || j < i {
			t.Errorf("%s: no %q … %q markers", docsPath, strings.TrimSpace(begin), end)
			continue
		}
		want := generatedSections[name]()
		got := doc[i+len(begin) : j]
		if got == want {
			continue
		}
		if *updateDocs {
			doc = doc[:i+len(begin)] + want + doc[j:]
			continue
		}
		t.Errorf("%s: the generated section %q is stale; run go test ./config -run TestDocsGenerated -update-docs", docsPath, name)
	}
	if *updateDocs && doc != string(raw) {
		if err := os.WriteFile(docsPath, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// directiveIndexMarkdown is the directive index: every directive with a row
// in some scope, where it is allowed, its default, whether a reload applies
// it and how it stands to PowerMTA's.
func directiveIndexMarkdown() string {
	type entry struct {
		scopes  []string
		dflt    string
		restart bool
		pmta    PMTAStatus
		note    string
		alias   string
	}
	entries := map[string]*entry{}
	for sc := range scopeLabels {
		for _, ri := range scopeRows(scope(sc)) {
			e := entries[ri.name]
			if e == nil {
				e = &entry{dflt: ri.dflt, pmta: ri.pmta, note: ri.note, alias: ri.aliasOf}
				entries[ri.name] = e
			}
			where := "`" + scopeLabels[sc] + "`"
			if scope(sc) == scopeTop {
				where = "top level"
			}
			e.scopes = append(e.scopes, where)
			e.restart = e.restart || ri.restart
			if e.dflt == "" {
				e.dflt = ri.dflt
			}
			if e.note == "" {
				e.note = ri.note
			}
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var sb strings.Builder
	sb.WriteString("| directive | allowed in | default | takes effect | PowerMTA |\n|---|---|---|---|---|\n")
	for _, n := range names {
		e := entries[n]
		reload := "at reload"
		switch {
		case e.restart:
			reload = "at restart"
		case e.pmta == PMTAIgnored:
			reload = "-"
		}
		pm := e.pmta.String()
		switch {
		case e.alias != "":
			pm = "applied: another name for `" + e.alias + "`"
		case e.note != "":
			pm += ": " + e.note
		}
		dflt := e.dflt
		if dflt == "" {
			dflt = "-"
		} else {
			dflt = "`" + dflt + "`"
		}
		fmt.Fprintf(&sb, "| `%s` | %s | %s | %s | %s |\n", n, strings.Join(e.scopes, ", "), dflt, reload, strings.ReplaceAll(pm, "|", "\\|"))
	}
	return sb.String()
}

// ignoredMarkdown lists the PowerMTA directives and blocks Tern accepts
// and ignores, with what it does instead.
func ignoredMarkdown() string {
	var sb strings.Builder
	group := func(m map[string]string, format string) {
		byNote := map[string][]string{}
		var notes []string
		for _, n := range keys(m) {
			if byNote[m[n]] == nil {
				notes = append(notes, m[n])
			}
			byNote[m[n]] = append(byNote[m[n]], fmt.Sprintf(format, n))
		}
		sb.WriteString("| PowerMTA | what Tern does instead |\n|---|---|\n")
		for _, note := range notes {
			fmt.Fprintf(&sb, "| %s | %s |\n", strings.Join(byNote[note], ", "), note)
		}
	}
	sb.WriteString("Directives, accepted in any block:\n\n")
	group(ignoredDirectives, "`%s`")
	sb.WriteString("\nBlocks, skipped with everything inside them (which is not checked):\n\n")
	group(ignoredBlocks, "`<%s>`")
	scoped := false
	for sc := range scopeLabels {
		for _, ri := range scopeRows(scope(sc)) {
			if ri.pmta != PMTAIgnored {
				continue
			}
			if !scoped {
				sb.WriteString("\nDirectives accepted in one block only:\n\n| PowerMTA | in | what Tern does instead |\n|---|---|---|\n")
				scoped = true
			}
			fmt.Fprintf(&sb, "| `%s` | `%s` | %s |\n", ri.name, scopeLabels[sc], ri.note)
		}
	}
	return sb.String()
}
