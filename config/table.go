package config

import (
	"sort"
)

// A directive is declared once, as a row of its scope's table (tables.go):
// its name, how its value is read and where it is stored, its default,
// whether a reload applies it, and how it relates to PowerMTA's directive of
// the same name. The row drives parsing, defaults, the scope checks of
// dispatch, `tern check --migrate` and the generated directive index in
// docs/configuration.md; adding a directive is adding a row (and its
// behaviour, and its case in the test harness).

// PMTAStatus says how a directive stands to PowerMTA's directive of the
// same name.
type PMTAStatus int

const (
	// PMTASame is PowerMTA's directive with PowerMTA's meaning.
	PMTASame PMTAStatus = iota
	// PMTADiffers is PowerMTA's directive applied with a different
	// meaning, value set or default; the row's note says how.
	PMTADiffers
	// PMTATern is Tern's own directive; PowerMTA has none by that name.
	PMTATern
	// PMTAIgnored is PowerMTA's directive accepted and ignored with a
	// warning; the row's note says what Tern does instead.
	PMTAIgnored
)

var pmtaStatusNames = [...]string{
	PMTASame:    "as in PowerMTA",
	PMTADiffers: "differs",
	PMTATern:    "Tern only",
	PMTAIgnored: "ignored",
}

// String names the status as the migration report and the docs show it.
func (s PMTAStatus) String() string { return pmtaStatusNames[s] }

// rowInfo is what a table row says about its directive, whatever the
// block's Go type.
type rowInfo struct {
	name string
	// dflt is the default as written in the file ("" when the directive
	// has none, such as a repeatable list).
	dflt string
	// restart is set for directives a reload does not apply: they take
	// effect at the next start, and a reload that changes them warns.
	restart bool
	pmta    PMTAStatus
	// note explains a PMTADiffers or PMTAIgnored row to a migrating
	// operator: what differs, or what Tern does instead.
	note string
	// aliasOf names the directive this one is another spelling of: they
	// set one setting, so a block gives one or the other.
	aliasOf string
}

// row is a directive of a block whose settings are held in an S.
type row[S any] struct {
	rowInfo
	// apply reads the directive at n into s, reporting what is wrong.
	apply func(b *builder, s *S, n *node)
	// setDefault stores the built-in default in s, unset; nil when the
	// zero value is the default.
	setDefault func(s *S)
	// field returns a pointer to the Setting the directive is stored in,
	// for the views that list a block's settings; nil for directives not
	// stored in one Setting of S.
	field func(s *S) any
}

// one declares a directive with a single value read by parse into the
// Setting that field returns, with default dflt.
func one[S, T any](name string, field func(*S) *Setting[T], parse func(string) (T, error), dflt T) row[S] {
	return row[S]{
		rowInfo:    rowInfo{name: name, dflt: formatValue(name, dflt)},
		apply:      func(b *builder, s *S, n *node) { setOne(b, field(s), n, parse) },
		setDefault: func(s *S) { *field(s) = def(dflt) },
		field:      func(s *S) any { return field(s) },
	}
}

// list declares a directive whose value is a list written with spaces
// after its commas: every argument is joined before parse reads it.
func list[S, T any](name string, field func(*S) *Setting[T], parse func(string) (T, error), dflt T) row[S] {
	r := one(name, field, parse, dflt)
	r.apply = func(b *builder, s *S, n *node) { setList(b, field(s), n, parse) }
	return r
}

// custom declares a directive read by its own function.
func custom[S any](name, dflt string, apply func(b *builder, s *S, n *node)) row[S] {
	return row[S]{rowInfo: rowInfo{name: name, dflt: dflt}, apply: apply}
}

// ignored declares a PowerMTA directive Tern accepts in this block and does
// not act on: each occurrence is a warning carrying note, which says what
// Tern does instead.
func ignored[S any](name, note string) row[S] {
	return row[S]{
		rowInfo: rowInfo{name: name, pmta: PMTAIgnored, note: note},
		apply:   func(b *builder, _ *S, n *node) { b.ignoredDirective(n, note) },
	}
}

// of names the Setting a custom row stores its directive in.
func (r row[S]) of(field func(*S) any) row[S] { r.field = field; return r }

// tern marks the row as Tern's own directive.
func (r row[S]) tern() row[S] { r.pmta = PMTATern; return r }

// differs marks the row as PowerMTA's directive with a different meaning.
func (r row[S]) differs(note string) row[S] { r.pmta, r.note = PMTADiffers, note; return r }

// needsRestart marks the row as applied at start only.
func (r row[S]) needsRestart() row[S] { r.restart = true; return r }

// aliasFor marks the row as another name for canonical's setting; it has no
// default of its own.
func (r row[S]) aliasFor(canonical string) row[S] {
	r.aliasOf, r.setDefault, r.dflt, r.field = canonical, nil, "", nil
	return r
}

// withDefault replaces the default shown for the row.
func (r row[S]) withDefault(text string) row[S] { r.dflt = text; return r }

// table is the rows of one scope, looked up by name.
type table[S any] struct {
	rows  []row[S]
	index map[string]int
}

func newTable[S any](rows ...row[S]) *table[S] {
	t := &table[S]{rows: rows, index: make(map[string]int, len(rows))}
	for i, r := range rows {
		if _, dup := t.index[r.name]; dup {
			panic("config: two rows for " + r.name) // a programming error, caught by any test
		}
		t.index[r.name] = i
	}
	return t
}

// defaults returns an S holding every row's default, none marked as set.
func (t *table[S]) defaults() S {
	var s S
	t.fill(&s)
	return s
}

// fill stores every row's default in s.
func (t *table[S]) fill(s *S) {
	for _, r := range t.rows {
		if r.setDefault != nil {
			r.setDefault(s)
		}
	}
}

// apply reads directive n into s; the caller has checked with dispatch
// that n belongs to this scope.
func (t *table[S]) apply(b *builder, s *S, n *node) {
	if i, ok := t.index[n.Name]; ok {
		b.noteUse(n, t.rows[i].rowInfo)
		t.rows[i].apply(b, s, n)
	}
}

func (t *table[S]) infos() []rowInfo {
	out := make([]rowInfo, len(t.rows))
	for i, r := range t.rows {
		out[i] = r.rowInfo
	}
	return out
}

// lookup returns the row of a directive in scope sc, if the table has one.
func lookup(sc scope, name string) (rowInfo, bool) {
	for _, ri := range scopeRows(sc) {
		if ri.name == name {
			return ri, true
		}
	}
	return rowInfo{}, false
}

// directiveIndex maps each directive with a row in some scope to the
// scopes that have one, in scope order.
func directiveIndex() map[string][]scope {
	idx := map[string][]scope{}
	for sc := range scopeLabels {
		for _, ri := range scopeRows(scope(sc)) {
			idx[ri.name] = append(idx[ri.name], scope(sc))
		}
	}
	for _, scopes := range idx {
		sort.Slice(scopes, func(i, j int) bool { return scopes[i] < scopes[j] })
	}
	return idx
}
