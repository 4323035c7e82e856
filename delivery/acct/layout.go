package acct

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ternmta/tern/config"
)

// The columns of a file (or pipe) whose <acct-file> has record-fields.
//
// A record is first turned into its values: the default columns in
// Columns order, then totalSecondsQueued, then the values of the headers
// the layout names. A layout picks, for each record type, which value
// goes in each of its columns. As in PowerMTA, a file holding several
// types has the union of their columns (type first, then each field in
// the order the types list them: d, b, t, r), and a type leaves the
// columns of the others' fields empty.

// numColumns is len(Columns), as a constant (TestLayoutColumns checks it).
const numColumns = 23

// Positions in a record's values past the default columns.
const (
	valTotalSecondsQueued = numColumns + iota
	valHeaders            // the first header value
)

// colEmpty marks a column a record type does not fill.
const colEmpty = -1

// writtenTypes are the types Tern writes, in the order their fields
// make up the union of columns.
var writtenTypes = [...]byte{TypeDelivered, TypeBounced, TypeTransient, TypeReceived}

// maxHeaderValue bounds a header_ field: a header may be as long as the
// message, and a record is one line of a file other programs read.
const maxHeaderValue = 1000

// layout is how a file's records are written. It is never modified once
// made, so Writers and pipes share it without locking.
type layout struct {
	// header is the header line, the column names.
	header []byte
	// std is set for the default columns: a record's line is its
	// encoding with Columns, as the journal stores it.
	std bool
	// cols holds, per writtenTypes index, the value of each column
	// after the type (colEmpty where the type has none).
	cols [len(writtenTypes)][]int
	// headers are the header names the layout's header_ fields read,
	// their values at valHeaders on.
	headers []string
	// ageCol is set when a column is totalSecondsQueued, which costs a
	// parse of two times when the line comes from the journal.
	ageCol bool
	// sig identifies the layout: two layouts with the same sig write
	// the same lines.
	sig string
}

// stdLayout is the layout of a block without record-fields.
var stdLayout = func() *layout {
	l := &layout{header: header, std: true, sig: "std"}
	for i := range writtenTypes {
		l.cols[i] = make([]int, len(Columns)-1)
		for c := range l.cols[i] {
			l.cols[i][c] = c + 1
		}
	}
	return l
}()

// typeIndex is the index of t in writtenTypes, or -1.
func typeIndex(t byte) int {
	return bytes.IndexByte(writtenTypes[:], t)
}

// layoutOf returns the layout of an <acct-file> block: the default one
// without record-fields, else the union of the fields of the types it
// records.
func layoutOf(af *config.AcctFile) *layout {
	if len(af.RecordFields) == 0 {
		return stdLayout
	}
	types := typeBits(af.Records.Value)
	defaults := config.AcctFieldNames()
	fieldsOf := func(t byte) []string {
		for _, rf := range af.RecordFields {
			if rf.Type == string(rune(t)) {
				return rf.Fields
			}
		}
		return defaults
	}
	// The union, in order of first appearance.
	var names []string
	for _, t := range writtenTypes {
		if types&typeBit(t) == 0 {
			continue
		}
		for _, f := range fieldsOf(t) {
			if !slices.Contains(names, f) {
				names = append(names, f)
			}
		}
	}
	l := &layout{}
	valueOf := func(f string) int {
		if i := slices.Index(Columns, f); i > 0 {
			return i
		}
		if f == "totalSecondsQueued" {
			l.ageCol = true
			return valTotalSecondsQueued
		}
		if h, ok := strings.CutPrefix(f, "header_"); ok {
			for i, have := range l.headers {
				if strings.EqualFold(have, h) {
					return valHeaders + i
				}
			}
			l.headers = append(l.headers, h)
			return valHeaders + len(l.headers) - 1
		}
		return colEmpty // a PowerMTA field Tern has no value for
	}
	for ti, t := range writtenTypes {
		if types&typeBit(t) == 0 {
			continue
		}
		own := fieldsOf(t)
		l.cols[ti] = make([]int, len(names))
		for c, name := range names {
			l.cols[ti][c] = colEmpty
			if slices.Contains(own, name) {
				l.cols[ti][c] = valueOf(name)
			}
		}
	}
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write(append([]string{"type"}, names...))
	w.Flush()
	l.header = b.Bytes()
	if bytes.Equal(l.header, header) && !l.ageCol && len(l.headers) == 0 {
		// record-fields that spell out the defaults for every type
		// recorded (`record-fields d *`) change nothing.
		same := true
		for ti := range writtenTypes {
			if l.cols[ti] != nil && !slices.Equal(l.cols[ti], stdLayout.cols[ti]) {
				same = false
			}
		}
		if same {
			return stdLayout
		}
	}
	var sig strings.Builder
	sig.Write(l.header)
	for ti := range writtenTypes {
		fmt.Fprint(&sig, l.cols[ti], ";")
	}
	sig.WriteString(strings.Join(l.headers, "\x00"))
	l.sig = sig.String()
	return l
}

// values fills vals with r's values for the layout: the default columns,
// totalSecondsQueued and the layout's headers. vals must hold
// valHeaders+len(l.headers) strings.
func (l *layout) values(r *Record, vals []string) {
	r.fields(vals)
	vals[valTotalSecondsQueued] = ""
	if l.ageCol {
		vals[valTotalSecondsQueued] = secondsQueued(r.TimeQueued, r.TimeLogged)
	}
	for i, h := range l.headers {
		vals[valHeaders+i] = HeaderValue(r.Message, h)
	}
}

// secondsQueued is totalSecondsQueued: the seconds from queued to
// logged, the two times as the time columns write them (to the second),
// so that the value is the same whether it is made from a record or read
// back from its line; empty when either is unknown.
func secondsQueued(queued, logged time.Time) string {
	if queued.IsZero() || logged.IsZero() {
		return ""
	}
	d := logged.Truncate(time.Second).Sub(queued.Truncate(time.Second))
	return strconv.FormatInt(int64(d/time.Second), 10)
}

// project fills out with the columns of a record of type t from its
// values; out must hold 1+len(l.cols[typeIndex(t)]) strings.
func (l *layout) project(t byte, vals []string, out []string) []string {
	cols := l.cols[typeIndex(t)]
	out = append(out[:0], vals[0])
	for _, v := range cols {
		if v == colEmpty {
			out = append(out, "")
		} else {
			out = append(out, vals[v])
		}
	}
	return out
}

// HeaderSection returns the header section of msg: up to and including
// the empty line that ends it, or all of msg when it has none.
func HeaderSection(msg []byte) []byte {
	for i := 0; i < len(msg); {
		j := bytes.IndexByte(msg[i:], '\n')
		if j < 0 {
			return msg
		}
		line := msg[i : i+j]
		i += j + 1
		if len(line) == 0 || len(line) == 1 && line[0] == '\r' {
			return msg[:i]
		}
	}
	return msg
}

// HeaderValue returns the value of the first header called name (compared
// without case) in the header section at the start of msg: unfolded,
// without the spaces around it, cut to maxHeaderValue bytes at a
// character boundary. It is "" when there is no such header.
func HeaderValue(msg []byte, name string) string {
	rest := msg
	for len(rest) > 0 {
		line, next := cutLine(rest)
		if len(bytes.TrimRight(line, "\r")) == 0 {
			return "" // the end of the header section
		}
		rest = next
		n, v, ok := bytes.Cut(line, []byte{':'})
		if !ok || !strings.EqualFold(string(bytes.TrimRight(n, " \t")), name) {
			continue
		}
		var b strings.Builder
		b.Write(bytes.TrimRight(v, "\r"))
		// Continuation lines start with a space or a tab; unfolding
		// removes the line break before them.
		for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') && b.Len() <= maxHeaderValue+1 {
			line, rest = cutLine(rest)
			b.Write(bytes.TrimRight(line, "\r"))
		}
		return truncateUTF8(strings.TrimSpace(b.String()), maxHeaderValue)
	}
	return ""
}

// cutLine returns the first line of b, without its \n, and the rest.
func cutLine(b []byte) (line, rest []byte) {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i], b[i+1:]
	}
	return b, nil
}

// truncateUTF8 cuts s to at most n bytes without splitting a UTF-8
// sequence.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
