package config

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

func (b *builder) acctFileBlock(n *node) {
	af, key, ok := b.acctTarget(n)
	if !ok {
		return
	}
	if prev, dup := b.acct[key]; dup {
		b.errorf(n.Pos, "<acct-file %s> is already defined at %s", af.Name(), shortPos(prev.Pos, n.Pos))
		return
	}
	acctTable.fill(af)
	for _, c := range n.Children {
		if b.dispatch(c, scopeAcctFile) {
			acctTable.apply(b, af, c)
		}
	}
	b.checkAcctFile(af)
	b.acct[key] = af
	b.cfg.AcctFiles = append(b.cfg.AcctFiles, af)
}

// acctTarget reads what an <acct-file> tag names: a path, or a program
// to pipe the records to (PowerMTA's `<acct-file |/path/to/program
// args>`). key identifies the target among the blocks.
func (b *builder) acctTarget(n *node) (af *AcctFile, key string, ok bool) {
	if len(n.Args) == 0 || !strings.HasPrefix(n.Args[0].Text, "|") {
		path, ok := b.blockName(n, "file path")
		if !ok {
			return nil, "", false
		}
		path = filepath.Clean(relPath(n.Pos, path))
		// Two spellings of one file are one file: two writers on it
		// would break each other's rotation.
		key = path
		if abs, err := filepath.Abs(path); err == nil {
			key = abs
		}
		return &AcctFile{Pos: n.Pos, Path: path}, key, true
	}
	// The tag's words are the command line. A quoted first value holds
	// the whole of it (`<acct-file "|/usr/bin/prog -x">`), split at
	// spaces; later values are one argument each, so an argument with
	// spaces is quoted on its own.
	first := n.Args[0]
	rest := strings.TrimSpace(first.Text[1:])
	var argv []string
	if first.Kind == argString {
		argv = strings.Fields(rest)
	} else if rest != "" {
		argv = []string{rest}
	}
	for _, a := range n.Args[1:] {
		argv = append(argv, a.Text)
	}
	if len(argv) == 0 {
		b.errorf(first.Pos, "<acct-file |…> names no program: write <acct-file |/path/to/program [arguments]>")
		return nil, "", false
	}
	prog := argv[0]
	if strings.ContainsRune(prog, '/') {
		prog = filepath.Clean(relPath(n.Pos, prog))
	}
	// Checked now, as certificate files are: a program that cannot run
	// is found by tern check, not when the daemon starts.
	if _, err := exec.LookPath(prog); err != nil {
		// A warning, not an error: the file is often checked before the
		// program is installed, and Tern starts it again and again
		// until it can run (its records wait, then are dropped).
		b.warnf(first.Pos, "<acct-file |…>: cannot run %s yet: %v; Tern will keep trying to start it, and its records are dropped until it runs", argv[0], lookPathReason(err))
	}
	argv[0] = prog
	return &AcctFile{Pos: n.Pos, Command: argv}, "|" + strings.Join(argv, "\x00"), true
}

// lookPathReason strips exec.LookPath's repetition of the name.
func lookPathReason(err error) error {
	if e, ok := err.(*exec.Error); ok {
		return e.Err
	}
	return err
}

// dirIn reads a directory path, relative to the file that names it (as
// <acct-file> paths are).
func dirIn(pos Position) func(string) (string, error) {
	return func(s string) (string, error) {
		if s == "" {
			return "", fmt.Errorf("empty path")
		}
		return filepath.Clean(relPath(pos, s)), nil
	}
}

// checkAcctFile reports what the block's settings cannot do: record types
// Tern never writes, and file settings on a pipe.
func (b *builder) checkAcctFile(af *AcctFile) {
	if r := af.Records; r.Set {
		if r.Value.TransientQueue {
			b.warnf(r.Pos, "records: Tern writes no tq records: a connection that fails before any recipient is tried is recorded as a t record for each recipient it held back")
		}
		for _, t := range []struct {
			on   bool
			name string
		}{{r.Value.FeedbackLoop, "f (feedback loop)"}, {r.Value.RemoteBounce, "rb (remote bounce)"}, {r.Value.RemoteStatus, "rs (remote status)"}} {
			if t.on {
				b.warnf(r.Pos, "records: Tern writes no %s records: they come from PowerMTA's bounce and feedback-loop processors, which Tern does not have", t.name)
			}
		}
	}
	if af.Command == nil {
		return
	}
	for _, s := range []struct {
		set  bool
		pos  Position
		name string
	}{
		{af.MaxSize.Set, af.MaxSize.Pos, "max-size"},
		{af.MoveInterval.Set, af.MoveInterval.Pos, "move-interval"},
		{af.DeleteAfter.Set, af.DeleteAfter.Pos, "delete-after"},
		{af.MoveTo.Set, af.MoveTo.Pos, "move-to"},
		{af.WorldReadable.Set, af.WorldReadable.Pos, "world-readable"},
	} {
		if s.set {
			b.warnf(s.pos, "%s applies to accounting files; <acct-file %s> is a pipe, so it is ignored", s.name, af.Name())
		}
	}
}

func parseRecords(s string) (RecordTypes, error) {
	var r RecordTypes
	for _, p := range strings.Split(s, ",") {
		switch strings.ToLower(strings.TrimSpace(p)) {
		case "d", "delivery", "delivered":
			r.Delivered = true
		case "b", "bounce", "bounced":
			r.Bounced = true
		case "t", "transient":
			r.Transient = true
		case "r", "receipt", "received":
			r.Received = true
		case "tq", "transient-queue":
			r.TransientQueue = true
		case "f", "feedback-loop":
			r.FeedbackLoop = true
		case "rb", "remote-bounce":
			r.RemoteBounce = true
		case "rs", "remote-status":
			r.RemoteStatus = true
		default:
			return r, fmt.Errorf("unknown record type %q (d, b, t, r, tq, f, rb or rs)", strings.TrimSpace(p))
		}
	}
	return r, nil
}

// recordTypeName reads the type of a record-fields line: its short name,
// and whether Tern writes records of it.
func recordTypeName(s string) (short string, written bool, err error) {
	switch strings.ToLower(s) {
	case "d", "delivery", "delivered":
		return "d", true, nil
	case "b", "bounce", "bounced":
		return "b", true, nil
	case "t", "transient":
		return "t", true, nil
	case "r", "receipt", "received":
		return "r", true, nil
	case "tq", "transient-queue":
		return "tq", false, nil
	case "f", "feedback-loop":
		return "f", false, nil
	case "rb", "remote-bounce":
		return "rb", false, nil
	case "rs", "remote-status":
		return "rs", false, nil
	}
	return "", false, fmt.Errorf("unknown record type %q (d, b, t, r, tq, f, rb or rs)", s)
}

// acctFields are the fields of Tern's records, in the order of the
// default columns (after the type column). Not modified.
var acctFields = []string{
	"timeLogged", "timeQueued", "orig", "rcpt", "orcpt",
	"dsnAction", "dsnStatus", "dsnDiag", "dsnMta", "bounceCat",
	"srcType", "srcMta",
	"dlvType", "dlvSourceIp", "dlvDestinationIp", "dlvEsmtpAvailable", "dlvSize",
	"vmta", "jobId", "envId", "queue", "vmtaPool",
}

// acctExtraFields are fields Tern fills that are not default columns.
var acctExtraFields = []string{"totalSecondsQueued"}

// acctUnfilledFields are PowerMTA fields Tern knows but has no value for:
// accepted with a warning, written as an empty column.
var acctUnfilledFields = []string{"timeFirstAttempt", "timeImprinted", "dsnReportingMta", "dlvTlsProtocol", "dlvTlsCipher"}

// AcctFieldNames returns the default columns of an accounting record
// after the type column, as record-fields spells them; `*` stands for
// them. The caller may modify the slice.
func AcctFieldNames() []string { return append([]string(nil), acctFields...) }

// headerFieldPrefix starts a field holding a message header's value.
const headerFieldPrefix = "header_"

// recordFields reads `record-fields TYPE FIELD,FIELD,...` into af.
func (b *builder) recordFields(af *AcctFile, n *node) {
	if len(n.Args) < 2 {
		b.errorf(n.Pos, "record-fields needs a record type and a list of fields: record-fields d timeLogged,orig,rcpt")
		return
	}
	typ, written, err := recordTypeName(n.Args[0].Text)
	if err != nil {
		b.errorf(n.Args[0].Pos, "record-fields: %v", err)
		return
	}
	for _, prev := range af.RecordFields {
		if prev.Type == typ {
			b.errorf(n.Pos, "record-fields for %s is already set at %s", typ, shortPos(prev.Pos, n.Pos))
			return
		}
	}
	if !written {
		b.warnf(n.Args[0].Pos, "record-fields %s is ignored: Tern writes no %s records", typ, typ)
		return
	}
	known := map[string]string{}
	var names []string
	for _, set := range [][]string{acctFields, acctExtraFields, acctUnfilledFields} {
		for _, f := range set {
			known[strings.ToLower(f)] = f
			names = append(names, f)
		}
	}
	unfilled := map[string]bool{}
	for _, f := range acctUnfilledFields {
		unfilled[f] = true
	}
	rf := RecordFields{Pos: n.Pos, Type: typ}
	seen := map[string]bool{}
	add := func(f string, pos Position) bool {
		key := strings.ToLower(f)
		if seen[key] {
			b.errorf(pos, "record-fields: %s is listed twice", f)
			return false
		}
		seen[key] = true
		rf.Fields = append(rf.Fields, f)
		return true
	}
	ok := true
	lists := n.Args[1:]
	for ai, a := range lists {
		off := 0
		parts := strings.Split(a.Text, ",")
		for pi, part := range parts {
			pos := a.Pos
			pos.Column += off
			if a.Kind == argString {
				pos.Column++ // the opening quote
			}
			off += len(part) + 1
			f := strings.TrimSpace(part)
			pos.Column += len(part) - len(strings.TrimLeft(part, " \t"))
			lf := strings.ToLower(f)
			switch {
			case f == "":
				// "a, b" is two values, "a," and "b": the comma that
				// ends a value (or starts one) leaves nothing between.
				if !(pi == len(parts)-1 && ai < len(lists)-1 || pi == 0 && ai > 0) {
					b.errorf(pos, "record-fields: empty field name")
					ok = false
				}
			case f == "*":
				for _, d := range acctFields {
					ok = add(d, pos) && ok
				}
			case lf == "type":
				// Always the first column; PowerMTA files may list it.
			case strings.HasPrefix(f, "!"):
				// PowerMTA's !field drops a field the list has so far
				// (as in *,!orcpt).
				drop := strings.ToLower(strings.TrimSpace(f[1:]))
				if known[drop] == "" {
					b.errorf(pos, "record-fields: unknown field %q%s", f[1:], didYouMean(f[1:], names, "%s"))
					ok = false
					continue
				}
				if !seen[drop] {
					b.errorf(pos, "record-fields: %s drops %s, which the list does not have at that point", f, known[drop])
					ok = false
					continue
				}
				delete(seen, drop)
				rf.Fields = slices.DeleteFunc(rf.Fields, func(x string) bool { return strings.ToLower(x) == drop })
			case strings.HasPrefix(lf, headerFieldPrefix):
				h, err := headerName(f[len(headerFieldPrefix):])
				if err != nil {
					b.errorf(pos, "record-fields: %s: %v", f, err)
					ok = false
					continue
				}
				ok = add(headerFieldPrefix+h, pos) && ok
			case known[lf] != "":
				canon := known[lf]
				if unfilled[canon] {
					b.warnf(pos, "record-fields: Tern has no value for %s; its column is left empty", canon)
				}
				ok = add(canon, pos) && ok
			default:
				b.errorf(pos, "record-fields: unknown field %q%s", f, didYouMean(f, names, "%s"))
				ok = false
			}
		}
	}
	if !ok {
		return
	}
	if len(rf.Fields) == 0 {
		b.errorf(n.Pos, "record-fields %s lists no field", typ)
		return
	}
	af.RecordFields = append(af.RecordFields, rf)
}
