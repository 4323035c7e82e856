package config

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"testing"
	"time"
)

// The tests of this file serve files from memory through Options.Open, to
// make files do what a disk rarely does on cue: change type between the
// stat and the open, or grow while they are read.

// failReader fails the test if anything reads it.
type failReader struct{ t *testing.T }

func (r failReader) Read([]byte) (int, error) {
	r.t.Error("a file that is not regular was read")
	return 0, io.EOF
}

// TestOpenedFileCheckedAgain has Open return a FIFO, as when a regular
// file is replaced by one between the stat and the open: the opened file is
// checked again, and not read.
func TestOpenedFileCheckedAgain(t *testing.T) {
	for _, mode := range []fs.FileMode{fs.ModeNamedPipe, fs.ModeDevice | fs.ModeCharDevice, fs.ModeDir, fs.ModeSocket, fs.ModeIrregular} {
		opts := memFS{}.options()
		opts.Open = func(name string) (fs.File, error) {
			return &memFile{Reader: failReader{t}, name: name, mode: mode}, nil
		}
		el := parseErr(t, "main.conf", listener+"include swapped.conf\n", opts)
		if got, want := el.Error(), "main.conf:2:9: include: swapped.conf is "; !strings.HasPrefix(got, want) || !strings.HasSuffix(got, ", not a regular file") {
			t.Errorf("%v: got %q, want %q…, not a regular file", mode, got, want)
		}
	}
}

// TestFileGrows serves a file that claims 10 bytes and holds more than the
// cap: what is read is cut at the cap, and the file refused.
func TestFileGrows(t *testing.T) {
	opts := memFS{}.options()
	opts.Limits = Limits{FileSize: 1000}
	opts.Open = func(name string) (fs.File, error) {
		return &memFile{Reader: strings.NewReader(padding(5000)), name: name, size: 10}, nil
	}
	el := parseErr(t, "main.conf", listener+"include growing.conf\n", opts)
	if got, want := el.Error(), "main.conf:2:9: include: growing.conf is over 1000 bytes (it grew while being read); a configuration file may be at most 1000 bytes"; got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestKeyFileSize gives a certificate and a DKIM key of 2 MiB each.
func TestKeyFileSize(t *testing.T) {
	big := bytes.Repeat([]byte("-----BEGIN CERTIFICATE-----\n"), 2<<20/28+1)[:2<<20]
	files := memFS{"big.pem": big}
	el := parseErr(t, "main.conf", listener+"smtp-server-tls-certificate big.pem\n<domain example.com>\ndomain-key s1,example.com,big.pem\n</domain>\n", files.options())
	want := strings.Join([]string{
		"main.conf:2:29: smtp-server-tls-certificate: big.pem is 2 MiB; a certificate or key file may be at most 1 MiB",
		"main.conf:4:12: domain-key: big.pem is 2 MiB; a certificate or key file may be at most 1 MiB",
	}, "\n")
	if got := el.Error(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestLimitsOptions sets small limits: each stops the load at the include
// (or line) that passes it, with only that error, as the rest of what was
// read is an arbitrary part of the configuration.
func TestLimitsOptions(t *testing.T) {
	files := memFS{
		"a.conf": []byte("include b.conf\n"),
		"b.conf": []byte("include c.conf\n"),
		"c.conf": []byte("host-name mx.example.com\n"),
		"d.conf": []byte(padding(600)),
	}
	for _, c := range []struct {
		limits Limits
		src    string
		want   string
	}{
		{Limits{Files: 3}, "include a.conf\nnot-checked x\n",
			"b.conf:1:9: include: c.conf would be file number 4 of this configuration; at most 3 files are read (are includes fanning out?)"},
		{Limits{Depth: 2}, "include a.conf\n",
			"b.conf:1:9: include: c.conf would be nested 3 includes deep; at most 2 levels are allowed"},
		{Limits{TotalSize: 1000}, "include d.conf\ninclude d.conf\n",
			"main.conf:3:9: include: d.conf would take the configuration past 1000 bytes in all; that is the most one load reads"},
		// The main file is read to its end before its includes.
		// Nine in main.conf (six words, three lines; comments do not
		// count), three more in a.conf.
		{Limits{Words: 11}, "# comment\n\ninclude a.conf # not counted\nhost-name mx.example.com\n",
			"a.conf:1:1: this line takes the configuration past 11 words (names and values, and one for each line); that is the most one load reads"},
	} {
		opts := files.options()
		opts.Limits = c.limits
		el := parseErr(t, "main.conf", listener+c.src, opts)
		if got := el.Error(); got != c.want {
			t.Errorf("%+v:\n%s\nwant:\n%s", c.limits, got, c.want)
		}
	}
}

// TestWordCount checks the count the word budget takes of a line.
func TestWordCount(t *testing.T) {
	for line, want := range map[string]int{
		"":                              0,
		"   \t":                         0,
		"# all comment":                 0,
		"max-smtp-out 5":                2,
		"  max-smtp-out\t5  # five\r":   2,
		"http-api-key abc#123 #note":    2,
		"<domain example.com>":          2,
		`auth-password "a b c"`:         4,
		strings.Repeat(" x", 1000):      1000,
		"\f<virtual-mta mta1>\f# x y z": 2,
	} {
		if got := wordCount(line); got != want {
			t.Errorf("wordCount(%q) = %d, want %d", line, got, want)
		}
	}
}

// TestTooManyErrors gives 1,500 wrong lines: 1,000 errors are reported and
// a last one says where checking stopped.
func TestTooManyErrors(t *testing.T) {
	src := listener + strings.Repeat("bogus 1\n", 1500)
	el := parseErr(t, "main.conf", src, noFiles())
	if len(el.Errors) != maxDiagnostics+1 {
		t.Fatalf("%d errors, want %d", len(el.Errors), maxDiagnostics+1)
	}
	if got, want := el.Errors[maxDiagnostics].String(), "main.conf:1002:1: too many errors: checking stopped here, after 1000"; got != want {
		t.Errorf("last error %q, want %q", got, want)
	}
	// Warnings are capped alike, without stopping.
	cfg := parseOK(t, "main.conf", listener+strings.Repeat("pickup /x\n", 1200), noFiles())
	if len(cfg.Warnings) != maxDiagnostics+1 || !strings.HasPrefix(cfg.Warnings[maxDiagnostics].Message, "too many warnings") {
		t.Errorf("%d warnings, the last %q", len(cfg.Warnings), cfg.Warnings[len(cfg.Warnings)-1])
	}
}

// TestIncludedTwiceReportedOnce includes one broken file in two blocks: its
// error is one mistake, reported once.
func TestIncludedTwiceReportedOnce(t *testing.T) {
	files := memFS{"limits.conf": []byte("max-smtp-out lots\n")}
	el := parseErr(t, "main.conf", listener+"<domain a.example>\ninclude limits.conf\n</domain>\n<domain b.example>\ninclude limits.conf\n</domain>\n", files.options())
	if got, want := el.Error(), `limits.conf:1:14: max-smtp-out: "lots" is not a whole number`; got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestByteOrderMark loads a file that an editor started with a UTF-8 byte
// order mark. It used to be part of the first directive's name.
func TestByteOrderMark(t *testing.T) {
	cfg := parseOK(t, "bom.conf", "\uFEFF"+listener+"host-name mx.example.com\n", noFiles())
	if cfg.HostName.Value != "mx.example.com" {
		t.Errorf("host-name = %q", cfg.HostName.Value)
	}
}

// TestPiecesKeepPositions parses a file of many blocks, more than one
// piece of the parser (parseChunk), with blank and comment lines between:
// blocks open in one piece and close in the next, and every position is
// that of the file.
func TestPiecesKeepPositions(t *testing.T) {
	var b strings.Builder
	b.WriteString(listener)
	line := 1
	for i := 0; b.Len() < 3*parseChunk; i++ {
		fmt.Fprintf(&b, "<domain d%d.example>\n\n    # comment\n    max-smtp-out %d\n</domain>\n", i, 1+i%50)
		line += 5
	}
	b.WriteString("<domain last.example>\n    max-smtp-outt 5\n")
	el := parseErr(t, "big.conf", b.String(), noFiles())
	want := strings.Join([]string{
		fmt.Sprintf(`big.conf:%d:1: <domain last.example> is never closed (missing </domain>)`, line+1),
		fmt.Sprintf(`big.conf:%d:5: unknown directive "max-smtp-outt" (did you mean "max-smtp-out"?)`, line+2),
	}, "\n")
	if got := el.Error(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestShortenQuoted checks what is cut in messages, and what is left alone.
func TestShortenQuoted(t *testing.T) {
	long := strings.Repeat("x", 50)
	for _, c := range []struct{ in, want string }{
		{`plain`, `plain`},
		{`v: "short" is bad`, `v: "short" is bad`},
		{fmt.Sprintf(`v: %q is bad, %q too`, long, "ok"), `v: "` + strings.Repeat("x", 40) + `…" is bad, "ok" too`},
		{fmt.Sprintf(`%q`, strings.Repeat("é", 41)), `"` + strings.Repeat("é", 40) + `…"`},
		{fmt.Sprintf(`%q`, strings.Repeat("\x01", 41)), fmt.Sprintf(`%q`, strings.Repeat("\x01", 40)+"…")},
		{`bad escape "\q` + long, `bad escape "\q` + long},
	} {
		if got := shortenQuoted(c.in); got != c.want {
			t.Errorf("shortenQuoted(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// BenchmarkParse4MiB parses a generated configuration of about 4 MiB (the
// cap of one file): 4,000 VMTAs and 40,000 domain blocks, 180,000 lines.
func BenchmarkParse4MiB(b *testing.B) {
	src, lines := largeConfig(4000, 40000)
	data := []byte(src)
	if len(data) > defaultFileSize {
		b.Fatalf("%d bytes, over the cap", len(data))
	}
	opts := noFiles()
	start := time.Now()
	if _, err := Parse("large.conf", data, opts); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d bytes, %d lines: %v", len(data), lines, time.Since(start))
	b.ResetTimer()
	for b.Loop() {
		if _, err := Parse("large.conf", data, opts); err != nil {
			b.Fatal(err)
		}
	}
}
