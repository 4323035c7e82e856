package config

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/alecthomas/participle/v2"
	"github.com/alecthomas/participle/v2/lexer"
)

// argKind says how a value was written; the builder needs it to tell a
// /regex/ from a word and to report a quote that never closes.
type argKind int

const (
	argWord argKind = iota
	argString
	argRegex
	argBadString
)

// arg is one value of a directive or block tag.
type arg struct {
	Pos  Position
	Text string
	Kind argKind
}

// node is a directive or a block with its children, after nesting and
// include expansion. Names are lower-cased; values keep their case.
type node struct {
	Pos      Position
	Name     string
	Args     []arg
	Block    bool
	Children []*node
}

// label is how a block is named in messages: <virtual-mta mta1>.
func (n *node) label() string {
	if len(n.Args) == 0 {
		return "<" + n.Name + ">"
	}
	parts := make([]string, len(n.Args))
	for i, a := range n.Args {
		parts[i] = a.Text
	}
	// Shortened: the tag may be a line of a file that is no configuration.
	return "<" + excerpt(n.Name+" "+strings.Join(parts, " ")) + ">"
}

// argText joins all values with single spaces: list values (retry
// schedules, host lists) may be written with spaces after their commas.
func (n *node) argText() string {
	parts := make([]string, len(n.Args))
	for i, a := range n.Args {
		parts[i] = a.Text
	}
	return strings.Join(parts, " ")
}

// diags collects diagnostics; every stage appends and goes on, until there
// are maxDiagnostics errors.
type diags struct {
	errors   []Diagnostic
	warnings []Diagnostic
	// full is set once maxDiagnostics errors are recorded: then the reader
	// parses and includes nothing more and the builder looks at no more
	// nodes, and errorf records nothing.
	full bool
}

// maxDiagnostics is how many errors, and separately how many warnings, one
// load reports. A real configuration has far fewer; a file that is not one
// has an error on every line, and a 4 MiB file of short lines would
// otherwise yield two million, each with a did-you-mean search, to sort and
// print, and for a reload to log line by line.
const maxDiagnostics = 1000

// errorf records an error. Quoted values in the message are shortened to
// maxExcerpt characters (see shortenQuoted).
func (d *diags) errorf(pos Position, format string, args ...any) {
	if d.full {
		return
	}
	if len(d.errors) == maxDiagnostics {
		d.full = true
		d.errors = append(d.errors, Diagnostic{Pos: pos, Message: fmt.Sprintf("too many errors: checking stopped here, after %d", maxDiagnostics)})
		return
	}
	d.errors = append(d.errors, Diagnostic{Pos: pos, Message: shortenQuoted(fmt.Sprintf(format, args...))})
}

// warnf records a warning, shortened as errorf's errors are. Past
// maxDiagnostics warnings, one more says so and the rest are dropped.
func (d *diags) warnf(pos Position, format string, args ...any) {
	switch {
	case len(d.warnings) < maxDiagnostics:
		d.warnings = append(d.warnings, Diagnostic{Pos: pos, Message: shortenQuoted(fmt.Sprintf(format, args...))})
	case len(d.warnings) == maxDiagnostics:
		d.warnings = append(d.warnings, Diagnostic{Pos: pos, Message: fmt.Sprintf("too many warnings: %d are listed, not this one nor those after it", maxDiagnostics)})
	}
}

// reader turns files into node trees, splicing includes in place.
type reader struct {
	*diags
	parser *participle.Parser[fileAST]
	files  *fileReader
	glob   func(string) ([]string, error)
	// including is the chain of files being read, to detect include loops.
	including []string
	// depth is how deeply the file being read is included (0: main file).
	depth int
	// opaque holds the files whose diagnostics must not quote them, with
	// the reason (see withhold).
	opaque map[string]string
}

func position(p lexer.Position) Position {
	return Position{File: p.Filename, Line: p.Line, Column: p.Column}
}

// includeScopes are the blocks an include may stand in ("" is top level).
var includeScopes = map[string]bool{"": true, "source": true, "domain": true, "virtual-mta": true, "smtp-pattern-list": true}

// parseChunk is about how much text one run of the parser sees: parseFile
// hands a file to the parser in pieces of whole lines. The lexer is back in
// its first state after every newline, so the pieces parse exactly as the
// whole file would; but only one piece's tokens are in memory at a time, and
// no run comes near the parser's limit of a million repetitions of a rule,
// which a file of a million lines would pass. (A single line of more than a
// million values still does; the parser's error then names that line.)
const parseChunk = 64 << 10

// parseFile parses src (the content of file name) into top-level nodes.
// Includes are expanded; parent is the enclosing block's name ("" at top).
func (r *reader) parseFile(name string, src []byte, parent string) []*node {
	// A byte order mark is what some editors write first; it is not part
	// of the first directive's name.
	text := strings.TrimPrefix(string(src), "\uFEFF")
	nest := newNester(r)
	first := true
	var (
		chunk strings.Builder
		// lineOf maps the lines of chunk to those of the file (1-based).
		lineOf []int
	)
	flush := func() {
		if len(lineOf) == 0 {
			return
		}
		ast, err := r.parser.ParseString(name, chunk.String())
		if err != nil {
			// The grammar accepts any token sequence, so this is not
			// expected; report it located rather than panic if it ever
			// happens, and go on with the next piece.
			var perr participle.Error
			pos := Position{File: name, Line: lineOf[0], Column: 1}
			msg := err.Error()
			if errors.As(err, &perr) {
				pos = position(perr.Position())
				pos.Line = lineOf[min(max(pos.Line, 1), len(lineOf))-1]
				msg = perr.Message()
			}
			r.errorf(pos, "syntax error: %s", excerpt(msg))
		} else {
			mapLines(ast, lineOf)
			if first {
				first = r.checkFirstLine(name, ast)
			}
			nest.lines(ast.Lines)
		}
		chunk.Reset()
		lineOf = lineOf[:0]
	}
	for n := 1; text != "" && !r.full; n++ {
		line, rest, _ := strings.Cut(text, "\n")
		text = rest
		// Blank and comment lines are not handed to the parser: they mean
		// nothing, and the parser's cost is per line (a file of a million
		// newlines would take seconds).
		if t := strings.TrimLeft(line, " \t\f\r"); t == "" || t[0] == '#' {
			continue
		}
		if err := r.files.countWords(line); err != nil {
			if !errors.Is(err, errStopped) {
				r.errorf(Position{File: name, Line: n, Column: 1}, "%v", err)
			}
			break
		}
		chunk.WriteString(line)
		// Every line, the last one too, ends with a newline: the grammar
		// needs no special case for end of file.
		chunk.WriteByte('\n')
		lineOf = append(lineOf, n)
		if chunk.Len() >= parseChunk {
			flush()
		}
	}
	flush()
	return r.expandIncludes(nest.finish(), parent)
}

// checkText checks that src, the content of the file name, is text. For a
// binary file it returns what shows it is binary and where, and the file
// must not be parsed; a file that is text but not UTF-8 is parsed, but
// marked opaque, so no diagnostic quotes it.
func (r *reader) checkText(name string, src []byte) (binaryProblem string, at Position) {
	problem, line, col, binary := textProblem(src)
	if binary {
		return problem, Position{File: name, Line: line, Column: col}
	}
	if problem != "" {
		r.opaque[name] = "it is not UTF-8 text (it holds " + problem + ")"
	}
	return "", Position{}
}

// checkFirstLine marks the file name opaque (see withhold) when the first
// item of the file does not start with what could be a directive or block
// name: then the file is most likely not configuration at all, such as
// /etc/shadow (root:$y$…) or a PEM key (-----BEGIN). It returns whether it
// is still looking for the first item (ast has no line with one).
func (r *reader) checkFirstLine(name string, ast *fileAST) bool {
	for _, l := range ast.Lines {
		if len(l.Items) == 0 {
			continue
		}
		it := l.Items[0]
		var word string
		switch {
		case it.Dir != nil:
			word = it.Dir.Name
		case it.Open != nil && len(it.Open.Args) > 0:
			word = it.Open.Args[0].raw()
		case it.Close != nil && len(it.Close.Args) > 0:
			word = it.Close.Args[0].raw()
		}
		if _, already := r.opaque[name]; !already && !looksLikeName(strings.ToLower(word)) {
			r.opaque[name] = "it does not start with a directive or block name and may not be a configuration file at all"
		}
		return false
	}
	return true
}

// raw is the token an argument was read from, as written.
func (a *argAST) raw() string {
	for _, p := range []*string{a.String, a.Bad, a.Regex, a.Word} {
		if p != nil {
			return *p
		}
	}
	return ""
}

// mapLines moves the positions of a piece of a file parsed on its own to
// the lines of the file: line i of the piece (1-based) is line lineOf[i-1]
// of the file. Columns are those of the file already, as every line is
// whole. Offsets stay those of the piece: positions use lines and columns.
func mapLines(ast *fileAST, lineOf []int) {
	mapPos := func(p *lexer.Position) {
		if p.Line >= 1 && p.Line <= len(lineOf) {
			p.Line = lineOf[p.Line-1]
		}
	}
	mapArgs := func(args []*argAST) {
		for _, a := range args {
			mapPos(&a.Pos)
		}
	}
	for _, l := range ast.Lines {
		for _, it := range l.Items {
			mapPos(&it.Pos)
			switch {
			case it.Dir != nil:
				mapPos(&it.Dir.Pos)
				mapArgs(it.Dir.Args)
			case it.Open != nil:
				mapArgs(it.Open.Args)
			case it.Close != nil:
				mapArgs(it.Close.Args)
			}
		}
	}
}

// nester pairs block tags into a tree, a piece of a file at a time. A closer
// that does not match the open block is reported with both lines; unclosed
// blocks are reported at the end of the file. Each file must balance its own
// blocks.
type nester struct {
	r     *reader
	root  *node
	stack []*node
}

func newNester(r *reader) *nester {
	root := &node{Block: true}
	return &nester{r: r, root: root, stack: []*node{root}}
}

// lines adds the next lines of the file.
func (ns *nester) lines(lines []*lineAST) {
	r := ns.r
	for _, line := range lines {
		if len(line.Items) > 1 {
			for _, it := range line.Items {
				if it.Open != nil || it.Close != nil {
					r.errorf(position(line.Items[1].Pos), "a block tag must stand alone on its line")
					break
				}
			}
		}
		for _, it := range line.Items {
			pos := position(it.Pos)
			switch {
			case it.Dir != nil:
				n := &node{Pos: pos, Name: strings.ToLower(it.Dir.Name), Args: r.args(it.Dir.Args)}
				top := ns.stack[len(ns.stack)-1]
				top.Children = append(top.Children, n)
			case it.Open != nil:
				args := r.args(it.Open.Args)
				if len(args) == 0 {
					r.errorf(pos, "empty block tag")
					continue
				}
				n := &node{Pos: pos, Name: strings.ToLower(args[0].Text), Args: args[1:], Block: true}
				if !it.Open.Closed {
					r.errorf(pos, "%s: missing '>' at the end of the tag", n.label())
				}
				top := ns.stack[len(ns.stack)-1]
				top.Children = append(top.Children, n)
				ns.stack = append(ns.stack, n)
			case it.Close != nil:
				args := r.args(it.Close.Args)
				if len(args) == 0 {
					r.errorf(pos, "empty closing tag")
					continue
				}
				name := strings.ToLower(args[0].Text)
				if len(args) > 1 {
					r.errorf(args[1].Pos, "</%s> takes no arguments", excerpt(name))
				}
				if !it.Close.Closed {
					r.errorf(pos, "</%s: missing '>' at the end of the tag", excerpt(name))
				}
				r.close(&ns.stack, name, pos)
			}
		}
	}
}

// finish reports the blocks left open at the end of the file and returns
// the file's top-level nodes.
func (ns *nester) finish() []*node {
	for len(ns.stack) > 1 {
		open := ns.stack[len(ns.stack)-1]
		ns.r.errorf(open.Pos, "%s is never closed (missing </%s>)", open.label(), excerpt(open.Name))
		ns.stack = ns.stack[:len(ns.stack)-1]
	}
	return ns.root.Children
}

// close pops the block that a closer of name ends.
func (r *reader) close(stack *[]*node, name string, pos Position) {
	s := *stack
	top := s[len(s)-1]
	if len(s) > 1 && top.Name == name {
		*stack = s[:len(s)-1]
		return
	}
	if len(s) == 1 {
		r.errorf(pos, "</%s> without an open <%s>", excerpt(name), excerpt(name))
		return
	}
	r.errorf(pos, "</%s> closes %s opened at line %d", excerpt(name), top.label(), top.Pos.Line)
	// Recover: if the closer matches a block further out, the inner ones
	// were left open; close them all there. Otherwise take the closer for a
	// misspelt closer of the innermost block, so the lines after it are not
	// all reported as misplaced.
	for i := len(s) - 2; i >= 1; i-- {
		if s[i].Name == name {
			*stack = s[:i]
			return
		}
	}
	*stack = s[:len(s)-1]
}

func (r *reader) args(in []*argAST) []arg {
	out := make([]arg, 0, len(in))
	for _, a := range in {
		v := arg{Pos: position(a.Pos)}
		switch {
		case a.String != nil:
			v.Kind = argString
			s, err := strconv.Unquote(*a.String)
			if err != nil {
				r.errorf(v.Pos, "bad escape in quoted value %s", excerpt(*a.String))
				s = strings.Trim(*a.String, `"`)
			}
			v.Text = s
		case a.Bad != nil:
			v.Kind = argBadString
			v.Text = *a.Bad
			r.errorf(v.Pos, "quoted value is not closed (missing \")")
		case a.Regex != nil:
			v.Kind, v.Text = argRegex, *a.Regex
		case a.Word != nil:
			v.Text = *a.Word
		}
		out = append(out, v)
	}
	return out
}

// expandIncludes replaces each include directive by the nodes of the files
// it names, recursively, and walks into blocks.
func (r *reader) expandIncludes(nodes []*node, parent string) []*node {
	var out []*node
	for _, n := range nodes {
		if n.Block {
			n.Children = r.expandIncludes(n.Children, n.Name)
			out = append(out, n)
			continue
		}
		if n.Name != "include" {
			out = append(out, n)
			continue
		}
		if !includeScopes[parent] {
			r.errorf(n.Pos, "include is not allowed in <%s>; it belongs at the top level or in <source>, <domain>, <virtual-mta> or <smtp-pattern-list>", parent)
			continue
		}
		out = append(out, r.include(n, parent)...)
	}
	return out
}

// include reads the files an include directive names and returns their
// nodes.
func (r *reader) include(n *node, parent string) []*node {
	if len(n.Args) != 1 {
		r.errorf(n.Pos, "include takes one path (quote a path with spaces)")
		return nil
	}
	if r.files.stopped || r.full {
		return nil // a limit stopped the load; that was reported
	}
	argPos := n.Args[0].Pos
	pattern := n.Args[0].Text
	if !filepath.IsAbs(pattern) {
		pattern = filepath.Join(filepath.Dir(n.Pos.File), pattern)
	}
	var files []string
	if strings.ContainsAny(pattern, "*?[") {
		m, err := r.glob(pattern)
		if err != nil {
			r.errorf(argPos, "include: bad pattern %q: %v", n.Args[0].Text, err)
			return nil
		}
		if len(m) == 0 {
			r.warnf(argPos, "include: %q matches no file", n.Args[0].Text)
		}
		files = m // Glob returns names in lexical order
	} else {
		files = []string{pattern}
	}
	var out []*node
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			abs = f
		}
		loop := false
		for _, inc := range r.including {
			if inc == abs {
				loop = true
			}
		}
		if loop {
			r.errorf(n.Pos, "include loop: %s includes %s, which is already being read", n.Pos.File, f)
			continue
		}
		// The main file is depth 0; f would be one deeper than the file
		// holding the include.
		if depth := r.depth + 1; depth > r.files.limits.Depth {
			r.errorf(argPos, "include: %s would be nested %d includes deep; at most %d levels are allowed", f, depth, r.files.limits.Depth)
			continue
		}
		src, err := r.files.read(f, configFile)
		if err != nil {
			var (
				fe *fileError
				le *limitError
			)
			switch {
			case errors.Is(err, errStopped):
			case errors.As(err, &le), errors.As(err, &fe):
				r.errorf(argPos, "include: %v", err)
			case errors.Is(err, fs.ErrNotExist):
				r.errorf(argPos, "include: %s does not exist", f)
			default:
				r.errorf(argPos, "include: %v", err)
			}
			if r.files.stopped {
				return out
			}
			continue
		}
		if problem, _ := r.checkText(f, src); problem != "" {
			r.errorf(argPos, "include: %s is not a text file (it holds %s), so it is not read as configuration", f, problem)
			continue
		}
		r.including = append(r.including, abs)
		r.depth++
		out = append(out, r.parseFile(f, src, parent)...)
		r.depth--
		r.including = r.including[:len(r.including)-1]
	}
	return out
}
