package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The layering rules of Tern's packages, checked by TestImportGraph against
// what the Go tool reports and by TestImportGraphRules against made-up graphs.
//
// Each top-level directory of the module is a component. A package may import
// any package of its own component (a package its own subpackages, a test
// helper such as queue/queuetest its parent) and any package of the components
// its own component lists. Imports are checked transitively, so a forbidden
// dependency reached through an allowed package is still reported. listener
// and delivery never depend on each other, in either direction.

// componentRule is what one component may import from the rest of Tern.
type componentRule struct {
	allowed []string // components it may import
	any     bool     // it may import every Tern package (the binaries)
}

// layering returns the allow table, one entry per top-level component. It is a
// function rather than a package-level map so that no test can change it.
func layering() map[string]componentRule {
	return map[string]componentRule{
		"config":   {},
		"queue":    {},
		"vmta":     {allowed: []string{"config"}},
		"delivery": {allowed: []string{"vmta", "queue", "config"}},
		"listener": {allowed: []string{"vmta", "queue", "config"}},
		"examples": {},
		"cmd":      {any: true},
	}
}

// listedPackage is the part of `go list -json` output the check reads.
type listedPackage struct {
	ImportPath string
	Imports    []string
	Deps       []string
	Error      *struct{ Err string }
}

// TestImportGraph runs `go list -deps -json ./...` at the module root and
// checks every Tern package's imports against the layering rules. Packages
// that do not exist yet are not listed and so are skipped.
func TestImportGraph(t *testing.T) {
	root := moduleRoot(t)
	modPath := modulePath(t, root)
	pkgs := goListDeps(t, root)

	var tern []string
	for _, p := range pkgs {
		if rel, ok := relPath(modPath, p.ImportPath); ok {
			tern = append(tern, rel)
			if p.Error != nil {
				// Compiling is the other tests' job; the edges go list
				// could still read are checked below.
				t.Logf("go list reports for %s: %s", rel, p.Error.Err)
			}
		}
	}
	if !slices.Contains(tern, "cmd/tern") {
		t.Fatalf("go list did not report cmd/tern among the module's packages (saw %q); is %s the module root of %s?", tern, root, modPath)
	}
	t.Logf("checked %d Tern packages: %s", len(tern), strings.Join(tern, ", "))

	for _, v := range checkImportGraph(modPath, pkgs) {
		t.Error(v)
	}
}

// TestImportGraphRules feeds made-up graphs to the checker, so the rules are
// known to catch what they should without breaking the real code.
func TestImportGraphRules(t *testing.T) {
	const mod = "example.org/tern"
	// pkg builds a listed package from module-relative paths; deps are the
	// transitive dependencies, as go list reports them.
	pkg := func(path string, imports, deps []string) listedPackage {
		abs := func(rels []string) []string {
			var out []string
			for _, r := range rels {
				out = append(out, mod+"/"+r)
			}
			return out
		}
		return listedPackage{ImportPath: mod + "/" + path, Imports: abs(imports), Deps: abs(deps)}
	}
	// outside lists packages of the standard library and other modules, which
	// the check ignores.
	outside := []string{"fmt", "net/http", "github.com/cockroachdb/pebble/v2", mod + "x/vmta"}

	tests := []struct {
		name string
		pkgs []listedPackage
		want []string // substrings, one per expected violation, in order
	}{
		{
			name: "the designed graph is clean",
			pkgs: []listedPackage{
				{ImportPath: mod + "/config", Imports: outside, Deps: outside},
				{ImportPath: "net/http", Imports: []string{mod + "/listener"}, Deps: []string{mod + "/listener"}},
				pkg("queue", nil, nil),
				pkg("queue/queuetest", []string{"queue"}, []string{"queue"}),
				pkg("vmta", []string{"config"}, []string{"config"}),
				pkg("delivery", []string{"vmta", "queue"}, []string{"vmta", "queue", "config"}),
				pkg("delivery/dnstest", []string{"delivery"}, []string{"delivery", "vmta", "queue", "config"}),
				pkg("delivery/smtptest", nil, nil),
				pkg("listener", []string{"vmta", "queue", "config"}, []string{"vmta", "queue", "config"}),
				pkg("cmd/tern", []string{"listener", "delivery"}, []string{"listener", "delivery", "vmta", "queue", "config"}),
			},
		},
		{
			name: "config must import nothing of Tern",
			pkgs: []listedPackage{
				pkg("config", []string{"vmta"}, []string{"vmta"}),
			},
			want: []string{"config imports vmta"},
		},
		{
			name: "queue must not know about VMTAs",
			pkgs: []listedPackage{
				pkg("queue", []string{"vmta"}, []string{"vmta", "config"}),
				pkg("vmta", []string{"config"}, []string{"config"}),
			},
			want: []string{"queue imports vmta", "queue imports config (via queue → vmta → config)"},
		},
		{
			name: "listener must not import delivery",
			pkgs: []listedPackage{
				pkg("listener", []string{"delivery"}, []string{"delivery"}),
			},
			want: []string{"listener imports delivery: listener and delivery must never depend on each other"},
		},
		{
			name: "delivery must not reach listener transitively",
			pkgs: []listedPackage{
				pkg("vmta", []string{"listener"}, []string{"listener"}),
				pkg("delivery", []string{"vmta"}, []string{"vmta", "listener"}),
			},
			want: []string{
				"vmta imports listener",
				"delivery imports listener (via delivery → vmta → listener): listener and delivery must never depend on each other",
			},
		},
		{
			name: "a test helper inherits its parent's rules",
			pkgs: []listedPackage{
				pkg("delivery/smtptest", []string{"listener"}, []string{"listener"}),
			},
			want: []string{"delivery/smtptest imports listener"},
		},
		{
			name: "a top-level package outside the layout",
			pkgs: []listedPackage{
				pkg("util", nil, nil),
				pkg("vmta", []string{"util"}, []string{"util"}),
			},
			want: []string{"util is not a component of Tern's layout", "vmta imports util"},
		},
		{
			name: "examples import nothing of Tern",
			pkgs: []listedPackage{
				pkg("examples", []string{"config"}, []string{"config"}),
			},
			want: []string{"examples imports config"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := checkImportGraph(mod, tc.pkgs)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d violations, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			for i := range got {
				if !strings.Contains(got[i], tc.want[i]) {
					t.Errorf("violation %d:\n got: %s\nwant: …%s…", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// checkImportGraph returns one message per forbidden dependency of a Tern
// package, in the order of pkgs and then of each package's Deps. Packages
// outside the module are ignored.
func checkImportGraph(modPath string, pkgs []listedPackage) []string {
	rules := layering()
	imports := make(map[string][]string) // module-relative path → direct Tern imports
	for _, p := range pkgs {
		rel, ok := relPath(modPath, p.ImportPath)
		if !ok {
			continue
		}
		for _, imp := range p.Imports {
			if r, ok := relPath(modPath, imp); ok {
				imports[rel] = append(imports[rel], r)
			}
		}
	}

	var out []string
	for _, p := range pkgs {
		rel, ok := relPath(modPath, p.ImportPath)
		if !ok {
			continue
		}
		comp := component(rel)
		rule, known := rules[comp]
		if !known {
			out = append(out, fmt.Sprintf("%s is not a component of Tern's layout: the top level is fixed (%s); put the code in one of them or change the layering rules in cmd/tern/importgraph_test.go together with README.md",
				rel, strings.Join(sortedKeys(rules), ", ")))
			continue
		}
		if rule.any {
			continue
		}
		for _, dep := range p.Deps {
			d, ok := relPath(modPath, dep)
			if !ok {
				continue
			}
			dc := component(d)
			if dc == comp || slices.Contains(rule.allowed, dc) {
				continue
			}
			msg := fmt.Sprintf("%s imports %s", rel, d)
			if chain := importChain(imports, rel, d); len(chain) > 2 {
				msg += " (via " + strings.Join(chain, " → ") + ")"
			}
			switch {
			case (comp == "listener" && dc == "delivery") || (comp == "delivery" && dc == "listener"):
				msg += ": listener and delivery must never depend on each other; share what they need through vmta, queue or config"
			case len(rule.allowed) == 0:
				msg += fmt.Sprintf(": %s may import no other Tern package", comp)
			default:
				msg += fmt.Sprintf(": %s may import only %s", comp, strings.Join(rule.allowed, ", "))
			}
			out = append(out, msg)
		}
	}
	return out
}

// importChain returns a shortest chain of direct imports from one package to
// another, both ends included, or nil when the direct imports do not connect
// them (go list's Deps may know more than the Imports seen).
func importChain(imports map[string][]string, from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if cur == to {
			var chain []string
			for p := to; p != ""; p = prev[p] {
				chain = append(chain, p)
			}
			slices.Reverse(chain)
			return chain
		}
		for _, next := range imports[cur] {
			if _, seen := prev[next]; !seen {
				prev[next] = cur
				queue = append(queue, next)
			}
		}
	}
	return nil
}

// relPath returns importPath relative to the module, and whether it is in the
// module at all.
func relPath(modPath, importPath string) (string, bool) {
	if importPath == modPath {
		return ".", true
	}
	rel, ok := strings.CutPrefix(importPath, modPath+"/")
	return rel, ok
}

// component returns the top-level directory of a module-relative path.
func component(rel string) string {
	first, _, _ := strings.Cut(rel, "/")
	return first
}

// sortedKeys returns the keys of m in order.
func sortedKeys(m map[string]componentRule) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// moduleRoot walks up from the test's working directory to the directory
// holding go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("working directory: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("looking for go.mod: %v", err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod found above the test's working directory")
		}
		dir = parent
	}
}

// modulePath reads the module path from root/go.mod.
func modulePath(t *testing.T, root string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatalf("reading go.mod: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	t.Fatalf("%s has no module line", filepath.Join(root, "go.mod"))
	return ""
}

// goListDeps runs `go list -e -deps -json ./...` in root and decodes its
// stream of packages. -e keeps a package that does not compile (yet) from
// hiding the rest of the graph.
func goListDeps(t *testing.T, root string) []listedPackage {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "go", "list", "-e", "-deps",
		"-json=ImportPath,Imports,Deps,Error", "./...")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps -json ./... in %s: %v\n%s", root, err, stderr.Bytes())
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}
