package config

import (
	"errors"
	"fmt"
	"os"
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
	return "<" + n.Name + " " + strings.Join(parts, " ") + ">"
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

// diags collects diagnostics; every stage appends and goes on.
type diags struct {
	errors   []Diagnostic
	warnings []Diagnostic
}

func (d *diags) errorf(pos Position, format string, args ...any) {
	d.errors = append(d.errors, Diagnostic{Pos: pos, Message: fmt.Sprintf(format, args...)})
}

func (d *diags) warnf(pos Position, format string, args ...any) {
	d.warnings = append(d.warnings, Diagnostic{Pos: pos, Message: fmt.Sprintf(format, args...)})
}

// reader turns files into node trees, splicing includes in place.
type reader struct {
	*diags
	parser   *participle.Parser[fileAST]
	readFile func(string) ([]byte, error)
	glob     func(string) ([]string, error)
	// including is the chain of files being read, to detect include loops.
	including []string
}

func position(p lexer.Position) Position {
	return Position{File: p.Filename, Line: p.Line, Column: p.Column}
}

// includeScopes are the blocks an include may stand in ("" is top level).
var includeScopes = map[string]bool{"": true, "source": true, "domain": true, "virtual-mta": true}

// parseFile parses src (the content of file name) into top-level nodes.
// Includes are expanded; parent is the enclosing block's name ("" at top).
func (r *reader) parseFile(name string, src []byte, parent string) []*node {
	// Every line, the last one too, ends with a newline: the grammar needs
	// no special case for end of file.
	text := string(src)
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	ast, err := r.parser.ParseString(name, text)
	if err != nil {
		// The grammar accepts any token sequence, so this is not expected;
		// report it located rather than panic if it ever happens.
		var perr participle.Error
		pos := Position{File: name, Line: 1, Column: 1}
		msg := err.Error()
		if errors.As(err, &perr) {
			pos = position(perr.Position())
			msg = perr.Message()
		}
		r.errorf(pos, "syntax error: %s", msg)
		return nil
	}
	nodes := r.nest(ast)
	return r.expandIncludes(nodes, parent)
}

// nest pairs block tags into a tree. A closer that does not match the open
// block is reported with both lines; unclosed blocks are reported at the end
// of the file. Each file must balance its own blocks.
func (r *reader) nest(ast *fileAST) []*node {
	root := &node{Block: true}
	stack := []*node{root}
	for _, line := range ast.Lines {
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
				top := stack[len(stack)-1]
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
				top := stack[len(stack)-1]
				top.Children = append(top.Children, n)
				stack = append(stack, n)
			case it.Close != nil:
				args := r.args(it.Close.Args)
				if len(args) == 0 {
					r.errorf(pos, "empty closing tag")
					continue
				}
				name := strings.ToLower(args[0].Text)
				if len(args) > 1 {
					r.errorf(args[1].Pos, "</%s> takes no arguments", name)
				}
				if !it.Close.Closed {
					r.errorf(pos, "</%s: missing '>' at the end of the tag", name)
				}
				r.close(&stack, name, pos)
			}
		}
	}
	for len(stack) > 1 {
		open := stack[len(stack)-1]
		r.errorf(open.Pos, "%s is never closed (missing </%s>)", open.label(), open.Name)
		stack = stack[:len(stack)-1]
	}
	return root.Children
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
		r.errorf(pos, "</%s> without an open <%s>", name, name)
		return
	}
	r.errorf(pos, "</%s> closes %s opened at line %d", name, top.label(), top.Pos.Line)
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
				r.errorf(v.Pos, "bad escape in quoted value %s", *a.String)
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
			r.errorf(n.Pos, "include is not allowed in <%s>; it belongs at the top level or in <source>, <domain> or <virtual-mta>", parent)
			continue
		}
		out = append(out, r.include(n, parent)...)
	}
	return out
}

func (r *reader) include(n *node, parent string) []*node {
	if len(n.Args) != 1 {
		r.errorf(n.Pos, "include takes one path (quote a path with spaces)")
		return nil
	}
	pattern := n.Args[0].Text
	if !filepath.IsAbs(pattern) {
		pattern = filepath.Join(filepath.Dir(n.Pos.File), pattern)
	}
	var files []string
	if strings.ContainsAny(pattern, "*?[") {
		m, err := r.glob(pattern)
		if err != nil {
			r.errorf(n.Args[0].Pos, "include: bad pattern %q: %v", n.Args[0].Text, err)
			return nil
		}
		if len(m) == 0 {
			r.warnf(n.Args[0].Pos, "include: %q matches no file", n.Args[0].Text)
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
		src, err := r.readFile(f)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				r.errorf(n.Args[0].Pos, "include: %s does not exist", f)
			} else {
				r.errorf(n.Args[0].Pos, "include: %v", err)
			}
			continue
		}
		r.including = append(r.including, abs)
		out = append(out, r.parseFile(f, src, parent)...)
		r.including = r.including[:len(r.including)-1]
	}
	return out
}
