package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"syscall"
	"unicode/utf8"
)

// Limits bound what one Load or Parse reads. The configuration names files
// by path, and a path can name anything: /dev/zero, a FIFO no one writes, a
// 50 MB log, two files that include each other twice at every level. Each of
// those is refused with an error naming the file and the limit, so that
// `tern check` exits 1 and a reload keeps the running configuration instead
// of exhausting memory or waiting forever. A zero field takes its default.
type Limits struct {
	// FileSize caps one configuration file, the main one or an include.
	// Default 4 MiB, about 200,000 lines: far above a real configuration.
	FileSize int64
	// KeyFileSize caps one certificate or private key file. Default 1 MiB:
	// a PEM certificate chain with its key is a few kilobytes.
	KeyFileSize int64
	// TotalSize caps the bytes of all files one load reads together.
	// Default 32 MiB.
	TotalSize int64
	// Files caps the files one load reads (main file, includes,
	// certificates and keys, every match of an include glob counted).
	// Default 1000: this is what stops an include fan-out, where each file
	// includes the next one twice and the files read double at each level.
	Files int
	// Depth caps how deeply includes nest: the main file is depth 0, a file
	// it includes depth 1. Default 16.
	Depth int
	// Words caps the words one load parses: directive names, values and
	// the words of block tags, plus one for each line, which costs the
	// parser about as much; comments and blank lines are not counted.
	// Default 1,000,000 (a 4 MiB configuration of realistic lines counts
	// about 515,000). The parser's cost is per token, 5 to 10 µs whatever
	// its length, so this, not the size, is what bounds the time a load
	// takes: 32 MiB of two-byte lines or of one-letter values would take
	// minutes.
	Words int
}

// The defaults of Limits.
const (
	defaultFileSize    = 4 << 20
	defaultKeyFileSize = 1 << 20
	defaultTotalSize   = 32 << 20
	defaultFiles       = 1000
	defaultDepth       = 16
	defaultWords       = 1_000_000
)

// withDefaults returns l with every zero (or negative) field set to its
// default.
func (l Limits) withDefaults() Limits {
	if l.FileSize <= 0 {
		l.FileSize = defaultFileSize
	}
	if l.KeyFileSize <= 0 {
		l.KeyFileSize = defaultKeyFileSize
	}
	if l.TotalSize <= 0 {
		l.TotalSize = defaultTotalSize
	}
	if l.Files <= 0 {
		l.Files = defaultFiles
	}
	if l.Depth <= 0 {
		l.Depth = defaultDepth
	}
	if l.Words <= 0 {
		l.Words = defaultWords
	}
	return l
}

// fileKind says what a file is read as; each kind has its own size cap and
// wording.
type fileKind int

const (
	configFile fileKind = iota // the main file and included files
	keyFile                    // TLS certificates and private keys
)

// fileError is a file refused for what it is: not a regular file, or too
// large. Reason continues a sentence that starts with the path ("is a named
// pipe (FIFO), not a regular file"), so each caller can say where the path
// was written and whether to repeat it.
type fileError struct {
	Path   string
	Reason string
}

func (e *fileError) Error() string { return e.Path + " " + e.Reason }

// limitError is a per-load limit reached (files, total bytes or words):
// the load reads nothing more, as a configuration cut off at an arbitrary
// place would only produce errors that are not the operator's.
type limitError struct{ msg string }

func (e *limitError) Error() string { return e.msg }

// errStopped is what every read returns once a per-load limit was reached.
// It is not reported again: the limitError that stopped the load already
// was.
var errStopped = errors.New("reading stopped at an earlier limit")

// fileReader reads the files of one load through Options.Open and keeps the
// per-load counts. A new one is made for each Load or Parse, so the counts
// are never shared between loads.
type fileReader struct {
	open   func(string) (fs.File, error)
	limits Limits
	files  int   // files read or tried so far, the main file included
	total  int64 // bytes read so far
	words  int   // words parsed so far (see Limits.Words)
	// stopped is set when a per-load limit was reached: nothing more is
	// read, and the builder does not run on the part that was.
	stopped bool
}

func newFileReader(opts Options) *fileReader {
	return &fileReader{open: opts.Open, limits: opts.Limits}
}

// count takes one file from the load's budget. It fails once the budget is
// spent, and from then on with errStopped.
func (fr *fileReader) count(name string) error {
	if fr.stopped {
		return errStopped
	}
	fr.files++
	if fr.files > fr.limits.Files {
		fr.stopped = true
		return &limitError{fmt.Sprintf("%s would be file number %d of this configuration; at most %d files are read (are includes fanning out?)", name, fr.files, fr.limits.Files)}
	}
	return nil
}

// countWords takes the words of line from the load's budget of words to
// parse. It fails once the budget is spent; the caller reports that, at the
// line.
func (fr *fileReader) countWords(line string) error {
	if fr.stopped {
		return errStopped
	}
	fr.words += 1 + wordCount(line)
	if fr.words > fr.limits.Words {
		fr.stopped = true
		return &limitError{fmt.Sprintf("this line takes the configuration past %d words (names and values, and one for each line); that is the most one load reads", fr.limits.Words)}
	}
	return nil
}

// wordCount counts the words of line as the lexer would split it, roughly:
// runs of characters other than white space, up to a '#' that starts a
// word (a comment). A quoted value with spaces counts as several words,
// and a tag as fewer than its tokens; a budget needs no more precision.
func wordCount(line string) int {
	n := 0
	inWord := false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == ' ' || c == '\t' || c == '\f' || c == '\r':
			inWord = false
		case inWord:
		case c == '#':
			return n
		default:
			inWord = true
			n++
		}
	}
	return n
}

// add counts n bytes of content that did not come through read (the main
// file of Parse, which is already in memory) against the total.
func (fr *fileReader) add(n int64) {
	fr.total += n
}

// read returns the content of the file name, which must be a regular file
// within the size caps. The file is checked twice: by the opener, before it
// is opened (Options.Open's default stats it first), and here through the
// opened file itself, which is what is read even if the path was replaced
// in between. Reading goes through a LimitReader, so a file that grows while
// it is read cannot exceed the cap either.
func (fr *fileReader) read(name string, kind fileKind) ([]byte, error) {
	if err := fr.count(name); err != nil {
		return nil, err
	}
	f, err := fr.open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkRegular(name, fi); err != nil {
		return nil, err
	}
	fileCap, what := fr.limits.FileSize, "a configuration file"
	if kind == keyFile {
		fileCap, what = fr.limits.KeyFileSize, "a certificate or key file"
	}
	tooLarge := func(size string) error {
		return &fileError{Path: name, Reason: fmt.Sprintf("is %s; %s may be at most %s", size, what, sizeText(fileCap))}
	}
	room := fr.limits.TotalSize - fr.total
	overTotal := func() error {
		fr.stopped = true
		return &limitError{fmt.Sprintf("%s would take the configuration past %s in all; that is the most one load reads", name, sizeText(fr.limits.TotalSize))}
	}
	size := fi.Size()
	switch {
	case size > fileCap:
		return nil, tooLarge(sizeText(size))
	case size > room:
		return nil, overTotal()
	}
	// Read one byte more than allowed, to tell a file at the cap from one
	// past it. The size from Stat only sizes the buffer: files in /proc
	// claim 0 bytes and have content, and a file may grow.
	allowed := min(fileCap, room)
	var buf bytes.Buffer
	buf.Grow(int(min(size, allowed)) + 1)
	if _, err := buf.ReadFrom(io.LimitReader(f, allowed+1)); err != nil {
		return nil, err
	}
	n := int64(buf.Len())
	switch {
	case n > fileCap:
		return nil, tooLarge("over " + sizeText(fileCap) + " (it grew while being read)")
	case n > room:
		return nil, overTotal()
	}
	fr.total += n
	return buf.Bytes(), nil
}

// ReadFile reads the configuration file at path as Load reads its main
// file: only a regular file, opened without waiting (a FIFO or a device is
// refused), of at most the default Limits.FileSize. It is for a caller that
// looks into a file Load refused, to find one directive in it, and must not
// run into what Load refused it for.
func ReadFile(path string) ([]byte, error) {
	fr := newFileReader(Options{Open: openRegular, Limits: Limits{}.withDefaults()})
	return fr.read(path, configFile)
}

// checkRegular fails unless fi describes a regular file, naming what it is
// instead: reading a FIFO waits for a writer that may never come, a device
// may never end (/dev/zero, /dev/urandom) and a directory has no content.
func checkRegular(name string, fi fs.FileInfo) error {
	m := fi.Mode()
	var what string
	switch {
	case m.IsRegular():
		return nil
	case m.IsDir():
		what = "a directory"
	case m&fs.ModeNamedPipe != 0:
		what = "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		what = "a socket"
	case m&fs.ModeCharDevice != 0:
		what = "a character device"
	case m&fs.ModeDevice != 0:
		what = "a block device"
	default:
		what = "a special file (mode " + m.String() + ")"
	}
	return &fileError{Path: name, Reason: "is " + what + ", not a regular file"}
}

// openRegular is the default Options.Open. It stats the path before opening
// it, because opening is already too late for some files: opening a FIFO
// waits for a writer, and opening a device can act on it (a tape rewinds, a
// terminal becomes the controlling one). O_NONBLOCK covers a path replaced
// between the stat and the open: a FIFO then opens without waiting, and
// fileReader.read refuses it on the opened file before reading. On a regular
// file O_NONBLOCK changes nothing.
func openRegular(name string) (fs.File, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if err := checkRegular(name, fi); err != nil {
		return nil, err
	}
	return os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
}

// sizeText writes a byte count for messages: whole KiB, MiB or GiB when it
// is one, bytes otherwise.
func sizeText(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + " GiB"
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// textProblem checks that src is text a person wrote. It returns "" for
// UTF-8 text without NUL bytes. Otherwise it returns what is wrong and where
// (1-based line and column of the first bad byte), and whether the file is
// binary (holds a NUL byte, so is no configuration at all) rather than text
// in another encoding (Latin-1 comments in an old PowerMTA file are not
// UTF-8, and such a file may still load).
func textProblem(src []byte) (problem string, line, col int, binary bool) {
	at := bytes.IndexByte(src, 0)
	binary = at >= 0
	if !binary {
		if utf8.Valid(src) {
			return "", 0, 0, false
		}
		for i := 0; i < len(src); {
			r, size := utf8.DecodeRune(src[i:])
			if r == utf8.RuneError && size <= 1 {
				at = i
				break
			}
			i += size
		}
	}
	line = 1 + bytes.Count(src[:at], []byte{'\n'})
	col = 1 + utf8.RuneCount(src[bytes.LastIndexByte(src[:at], '\n')+1:at])
	if binary {
		return fmt.Sprintf("a NUL byte at line %d", line), line, col, true
	}
	return fmt.Sprintf("a byte that is not UTF-8 at line %d", line), line, col, false
}

// readKeyFile reads a certificate or private key file for the builder,
// within the load's limits.
func (b *builder) readKeyFile(name string) ([]byte, error) {
	return b.files.read(name, keyFile)
}
