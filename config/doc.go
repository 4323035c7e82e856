// Package config reads Tern's configuration language into an immutable,
// typed *Config.
//
// The language follows PowerMTA's: one directive per line, `<name arg>` …
// `</name>` blocks, `#` comments, `include` with globs and `domain-macro`
// expansion in domain patterns. Parsing happens in three steps, each of which
// keeps going after an error so that one run reports every problem of a file:
//
//  1. a participle grammar turns each file into a flat list of lines (block
//     openers, block closers and directives); the grammar accepts any input,
//     so malformed text surfaces as a located diagnostic, never as an abort;
//  2. lines are nested into blocks per file and includes are spliced in;
//  3. a builder checks every directive against the scope it stands in, parses
//     its value into its Go type, applies defaults and resolves references.
//
// Files are read through Options.Open within Limits: only regular files, of
// bounded size, number, include depth and lines per load, so that a path
// naming /dev/zero, a FIFO or an include fan-out is an error like any other.
// Messages quote little of a file, and nothing of one that does not look
// like configuration (see withhold).
//
// Every diagnostic names file:line:column. Directives that PowerMTA knows but
// Tern does not implement yet are warnings, so an existing PowerMTA file can be
// migrated one warning at a time.
package config
