package config

import (
	"bufio"
	"os"
	"slices"
	"strings"
	"testing"
)

// pmtaName is one row of testdata/pmta/directives.tsv: a directive or block
// of PowerMTA's User's Guide and the blocks it stands in.
type pmtaName struct {
	name, kind string
	scopes     []string
	line       int
}

func readPMTANames(t *testing.T) []pmtaName {
	t.Helper()
	f, err := os.Open("testdata/pmta/directives.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []pmtaName
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		if line == 1 {
			continue // the header
		}
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) != 4 {
			t.Fatalf("directives.tsv:%d: %d columns, want 4", line, len(cols))
		}
		out = append(out, pmtaName{name: cols[0], kind: cols[1], scopes: strings.Split(cols[2], ","), line: line})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) < 300 {
		t.Fatalf("directives.tsv has %d rows; the list is incomplete", len(out))
	}
	return out
}

// pmtaScopes maps the PowerMTA block names of the list to Tern's scopes.
var pmtaScopes = map[string]scope{
	"top": scopeTop, "source": scopeSource, "smtp-user": scopeUser, "virtual-mta": scopeVMTA,
	"virtual-mta-pool": scopePool, "domain": scopeDomain, "acct-file": scopeAcctFile,
	"spool": scopeSpool, "pattern-list": scopePatternList, "smtp-pattern-list": scopeSMTPPatternList,
	"mx-rollup-list": scopeMXRollupList, "smtp-listener": scopeListener,
}

// pmtaScaffold places line in scope sc of a small valid file, returning
// the file and the line's number.
func pmtaScaffold(sc scope, line string) (string, int) {
	head := "smtp-listener 127.0.0.1:2525\n"
	open, body, close := "", "", ""
	switch sc {
	case scopeSource:
		open, close = "<source 0/0>\n", "</source>\n"
	case scopeUser:
		open, body, close = "<smtp-user u>\n", "password-hash "+testHash+"\n", "</smtp-user>\n"
	case scopeVMTA:
		open, close = "<virtual-mta v>\n", "</virtual-mta>\n"
	case scopePool:
		head += "<virtual-mta v>\n</virtual-mta>\n"
		open, body, close = "<virtual-mta-pool p>\n", "virtual-mta v\n", "</virtual-mta-pool>\n"
	case scopeDomain:
		open, close = "<domain *>\n", "</domain>\n"
	case scopeAcctFile:
		open, close = "<acct-file acct.csv>\n", "</acct-file>\n"
	case scopeSpool:
		open, close = "<spool q>\n", "</spool>\n"
	case scopePatternList:
		open, close = "<pattern-list pl>\n", "</pattern-list>\n"
	case scopeSMTPPatternList:
		open, close = "<smtp-pattern-list spl>\n", "</smtp-pattern-list>\n"
	case scopeMXRollupList:
		open, close = "<mx-rollup-list>\n", "</mx-rollup-list>\n"
	case scopeListener:
		open, close = "<smtp-listener 127.0.0.1:2526>\n", "</smtp-listener>\n"
	}
	pre := head + open + body
	return pre + line + "\n" + close, strings.Count(pre, "\n") + 1
}

// TestEveryPowerMTADirective walks PowerMTA's directive list: each
// directive and block, in each block PowerMTA allows it in, is applied by
// Tern there (a row of that scope's table, which the directive harness
// covers) or accepted with a warning that names it; none is an unknown
// directive or an error. Blocks Tern skips whole take their directives with
// them.
func TestEveryPowerMTADirective(t *testing.T) {
	names := readPMTANames(t)
	pmta := map[string]bool{}
	for _, n := range names {
		pmta[n.name] = true
		for _, s := range n.scopes {
			if n.kind == "block" {
				if _, ok := blockScopes[n.name]; !ok {
					if _, ign := ignoredBlocks[n.name]; !ign {
						t.Errorf("directives.tsv:%d: PowerMTA's <%s> is neither a block of Tern nor ignored", n.line, n.name)
					}
					continue
				}
				sc, ok := pmtaScopes[s]
				if !ok {
					continue // inside a block Tern skips whole, checked below
				}
				if !slices.Contains(blockScopes[n.name].parents, sc) {
					t.Errorf("directives.tsv:%d: PowerMTA allows <%s> in %s; Tern does not", n.line, n.name, scopeLabels[sc])
				}
				continue
			}
			sc, ok := pmtaScopes[s]
			if !ok {
				if _, ign := ignoredBlocks[s]; !ign {
					t.Errorf("directives.tsv:%d: %s stands in PowerMTA's <%s>, which Tern neither reads nor ignores", n.line, n.name, s)
				}
				continue
			}
			if ri, ok := lookup(sc, n.name); ok && ri.pmta != PMTAIgnored {
				continue // applied: the directive harness checks its values
			}
			src, line := pmtaScaffold(sc, n.name+" x")
			cfg, err := Parse("pmta.conf", []byte(src), noFiles())
			if err != nil {
				t.Errorf("directives.tsv:%d: %s in %s: %v", n.line, n.name, scopeLabels[sc], err)
				continue
			}
			if !hasDiag(cfg.Warnings, "pmta.conf", line, n.name) {
				t.Errorf("directives.tsv:%d: %s in %s: no warning naming it; warnings:\n%s", n.line, n.name, scopeLabels[sc], diagStrings(cfg.Warnings))
			}
		}
	}
	// What Tern says about PowerMTA is about PowerMTA's names: a row that
	// claims PowerMTA's meaning, or a name Tern ignores, is in the list;
	// a row that claims to be Tern's own is not.
	for sc := range scopeLabels {
		for _, ri := range scopeRows(scope(sc)) {
			switch {
			case ri.pmta == PMTATern && pmta[ri.name]:
				t.Errorf("%s in %s is marked as Tern's own, but PowerMTA has it", ri.name, scopeLabels[sc])
			case ri.pmta != PMTATern && !pmta[ri.name]:
				t.Errorf("%s in %s is marked as PowerMTA's (%s), but PowerMTA's list lacks it", ri.name, scopeLabels[sc], ri.pmta)
			}
		}
	}
	for _, n := range keys(ignoredDirectives) {
		if !pmta[n] {
			t.Errorf("ignored directive %s is not in PowerMTA's list", n)
		}
	}
	for _, n := range keys(ignoredBlocks) {
		if !pmta[n] {
			t.Errorf("ignored block <%s> is not in PowerMTA's list", n)
		}
	}
}
