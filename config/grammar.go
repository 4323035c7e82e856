package config

import (
	"github.com/alecthomas/participle/v2"
	"github.com/alecthomas/participle/v2/lexer"
)

// The lexer has three states. Root sees the start of a line: a comment, a
// block tag or a directive name. A name pushes Args, where values are split
// into words, quoted strings and /regexes/ until the end of the line. A '<'
// pushes Tag, which ends at '>' or at the end of the line.
//
// Every state has a rule for every input character, so lexing never fails:
// malformed text becomes tokens the builder reports with their position. That
// is what lets one run report every error of a file.
var lexerRules = lexer.Rules{
	"Root": {
		{Name: "Whitespace", Pattern: `[ \t\f\r]+`},
		{Name: "Comment", Pattern: `#[^\n]*`},
		{Name: "Newline", Pattern: `\n`},
		{Name: "CloseTag", Pattern: `</`, Action: lexer.Push("Tag")},
		{Name: "OpenTag", Pattern: `<`, Action: lexer.Push("Tag")},
		{Name: "Name", Pattern: `[^\s<#]+`, Action: lexer.Push("Args")},
	},
	"Tag": {
		{Name: "Whitespace", Pattern: `[ \t\f\r]+`},
		{Name: "Newline", Pattern: `\n`, Action: lexer.Pop()},
		{Name: "TagEnd", Pattern: `>`, Action: lexer.Pop()},
		{Name: "String", Pattern: `"(?:\\.|[^"\\\n])*"`},
		// An unclosed quote in a tag stops at '>', which still ends the tag.
		{Name: "BadTagString", Pattern: `"(?:\\.|[^"\\\n>])*`},
		{Name: "TagWord", Pattern: `[^\s>"]+`},
	},
	"Args": {
		{Name: "Whitespace", Pattern: `[ \t\f\r]+`},
		{Name: "Comment", Pattern: `#[^\n]*`},
		{Name: "Newline", Pattern: `\n`, Action: lexer.Pop()},
		{Name: "String", Pattern: `"(?:\\.|[^"\\\n])*"`},
		{Name: "BadString", Pattern: `"(?:\\.|[^"\\\n])*`},
		// A regex is /…/ and may hold spaces; the tail after the closing
		// slash keeps paths such as /var/spool/tern in one token, and the
		// builder decides from the directive whether it wanted a regex.
		{Name: "Regex", Pattern: `/(?:\\.|[^/\\\n])*/[^\s"]*`},
		// '#' inside a word is part of it (a password such as pa#ss): a
		// comment starts only where a value could start.
		{Name: "Word", Pattern: `[^\s"]+`},
	},
}

// fileAST is a file as the grammar sees it: lines, each a sequence of items.
// Nesting is not part of the grammar; the builder pairs tags so that a
// mismatched closer is reported with both lines and parsing goes on.
type fileAST struct {
	Lines []*lineAST `parser:"@@*"`
}

type lineAST struct {
	Items []*itemAST `parser:"@@* Newline"`
}

type itemAST struct {
	Pos   lexer.Position
	Close *tagAST       `parser:"  \"</\" @@"`
	Open  *tagAST       `parser:"| \"<\" @@"`
	Dir   *directiveAST `parser:"| @@"`
}

type tagAST struct {
	Args   []*argAST `parser:"@@*"`
	Closed bool      `parser:"@\">\"?"`
}

type directiveAST struct {
	Pos  lexer.Position
	Name string    `parser:"@Name"`
	Args []*argAST `parser:"@@*"`
}

type argAST struct {
	Pos    lexer.Position
	String *string `parser:"(  @String"`
	Bad    *string `parser:"| @(BadString | BadTagString)"`
	Regex  *string `parser:"| @Regex"`
	Word   *string `parser:"| @(Word | TagWord) )"`
}

func newParser() (*participle.Parser[fileAST], error) {
	return participle.Build[fileAST](
		participle.Lexer(lexer.MustStateful(lexerRules)),
		participle.Elide("Whitespace", "Comment"),
	)
}
