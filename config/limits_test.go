package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests of this file read real files, through Load and the default
// Options: what they check is how Tern reads what a path on disk names
// (issue #14, finding 6). Each case crashed, hung or leaked file content
// before Options.Open and Limits.

// loadTimeout bounds each Load of these tests: a FIFO used to block Load for
// ever and an include fan-out ran for hours. Far above what a refusal takes.
const loadTimeout = 20 * time.Second

// loadRefused loads path, which must be refused within loadTimeout, and
// returns the errors and warnings as Error() prints them, one per line.
func loadRefused(t *testing.T, path string) string {
	t.Helper()
	type result struct {
		cfg *Config
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		cfg, err := Load(path, Options{Hostname: testHostname})
		done <- result{cfg, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(loadTimeout):
		t.Fatalf("Load(%s) did not return within %v", path, loadTimeout)
	}
	t.Logf("Load(%s) took %v", filepath.Base(path), time.Since(start).Round(time.Millisecond))
	if res.err == nil {
		t.Fatalf("Load(%s) succeeded, want it refused", path)
	}
	if res.cfg != nil {
		t.Errorf("Load(%s) returned a Config together with an error", path)
	}
	var el *ErrorList
	if !errors.As(res.err, &el) {
		t.Fatalf("Load(%s) error is %T: %v", path, res.err, res.err)
	}
	out := el.Error()
	for _, w := range el.Warnings {
		out += "\nwarning: " + w.String()
	}
	return out
}

// writeConf writes the file name in dir and returns its path.
func writeConf(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// wantDiags fails unless got holds every line of want, each a whole line.
func wantDiags(t *testing.T, got string, want ...string) {
	t.Helper()
	lines := strings.Split(got, "\n")
	for _, w := range want {
		found := false
		for _, l := range lines {
			if l == w {
				found = true
			}
		}
		if !found {
			t.Errorf("missing diagnostic:\n  %s\ngot:\n%s", w, got)
		}
	}
}

// TestSpecialFiles names a character device, a FIFO nobody writes, a
// directory and a socket everywhere a path is read: as the main file, in an
// include, as a certificate and as a DKIM key. Each must be an error naming
// the path and what it is. Before, /dev/zero ran Load out of memory (a fatal
// error, not even a panic) and the FIFO blocked it for ever.
func TestSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	subdir := filepath.Join(dir, "conf.d")
	if err := os.Mkdir(subdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, what string
	}{
		{"/dev/zero", "a character device"},
		{fifo, "a named pipe (FIFO)"},
		{subdir, "a directory"},
		{sock, "a socket"},
	} {
		t.Run(filepath.Base(c.path), func(t *testing.T) {
			isWhat := c.path + " is " + c.what + ", not a regular file"

			got := loadRefused(t, c.path)
			if want := c.path + ": cannot read the configuration: it is " + c.what + ", not a regular file"; got != want {
				t.Errorf("as the main file:\n%s\nwant:\n%s", got, want)
			}

			main := writeConf(t, t.TempDir(), "main.conf", fmt.Sprintf(`%s
include %s
smtp-server-tls-certificate %s
<domain example.com>
    domain-key s1,example.com,%s
</domain>
`, strings.TrimSpace(listener), c.path, c.path, c.path))
			wantDiags(t, loadRefused(t, main),
				main+":2:9: include: "+isWhat,
				main+":3:29: smtp-server-tls-certificate: "+isWhat,
				main+":5:16: domain-key: "+isWhat,
			)
		})
	}
}

// TestIncludeFanOut has each of 30 files include the next one twice: read to
// the end, that is 2^30 files. The file limit stops it at the include that
// would read the 1001st file, and includes nested deeper than 16 are refused
// where they stand (once each, not once per reading of their file). Before,
// this ran until killed.
func TestIncludeFanOut(t *testing.T) {
	dir := t.TempDir()
	main := writeConf(t, dir, "f00.conf", listener+"include f01.conf\ninclude f01.conf\n")
	for i := 1; i < 30; i++ {
		writeConf(t, dir, fmt.Sprintf("f%02d.conf", i), fmt.Sprintf("include f%02d.conf\ninclude f%02d.conf\n", i+1, i+1))
	}
	writeConf(t, dir, "f30.conf", "")
	got := loadRefused(t, main)
	lines := strings.Split(got, "\n")
	var limit []string
	for _, l := range lines {
		if strings.Contains(l, "at most 1000 files are read") {
			limit = append(limit, l)
		}
	}
	if len(limit) != 1 || !strings.Contains(limit[0], ": include: "+dir+"/f") || !strings.Contains(limit[0], " would be file number 1001 of this configuration") {
		t.Errorf("want one error at the include of the 1001st file, got:\n%s", got)
	}
	wantDiags(t, got,
		dir+"/f16.conf:1:9: include: "+dir+"/f17.conf would be nested 17 includes deep; at most 16 levels are allowed",
		dir+"/f16.conf:2:9: include: "+dir+"/f17.conf would be nested 17 includes deep; at most 16 levels are allowed",
	)
	if len(lines) != 3 {
		t.Errorf("want 3 errors (two too deep, one too many files) and nothing about the part read, got %d:\n%s", len(lines), got)
	}
}

// TestIncludeDepth includes 20 files in a chain, each once: no fan-out, but
// deeper than anyone means to nest.
func TestIncludeDepth(t *testing.T) {
	dir := t.TempDir()
	main := writeConf(t, dir, "c00.conf", listener+"include c01.conf\n")
	for i := 1; i < 20; i++ {
		writeConf(t, dir, fmt.Sprintf("c%02d.conf", i), fmt.Sprintf("include c%02d.conf\n", i+1))
	}
	writeConf(t, dir, "c20.conf", "")
	got := loadRefused(t, main)
	if want := dir + "/c16.conf:1:9: include: " + dir + "/c17.conf would be nested 17 includes deep; at most 16 levels are allowed"; got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	// 16 deep is allowed.
	writeConf(t, dir, "c16.conf", "")
	if _, err := Load(main, Options{Hostname: testHostname}); err != nil {
		t.Errorf("16 includes deep: %v", err)
	}
}

// padding returns n bytes of comment lines of 1,000 bytes (the last one
// shorter): content that costs the parser little, for tests about sizes.
func padding(n int) string {
	line := "#" + strings.Repeat("x", 998) + "\n"
	s := strings.Repeat(line, n/len(line))
	if r := n % len(line); r > 0 {
		s += "#" + strings.Repeat("x", r-2) + "\n"
	}
	return s
}

// TestTotalSize includes nine files of 4,000,000 bytes each: every one is
// within the 4 MiB of a file, but together they pass the 32 MiB a load
// reads. The ninth include is refused and nothing is read after it.
func TestTotalSize(t *testing.T) {
	dir := t.TempDir()
	big := padding(4_000_000)
	var inc strings.Builder
	for i := 1; i <= 9; i++ {
		writeConf(t, dir, fmt.Sprintf("big%d.conf", i), big)
		fmt.Fprintf(&inc, "include big%d.conf\n", i)
	}
	main := writeConf(t, dir, "main.conf", listener+inc.String()+"include missing.conf\n")
	got := loadRefused(t, main)
	if want := main + ":10:9: include: " + dir + "/big9.conf would take the configuration past 32 MiB in all; that is the most one load reads"; got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestHugeFile gives a 50 MB configuration, as the main file and as an
// include. It is refused by its size before it is read or parsed. Before,
// parsing a 50 MB file took half a minute and gigabytes, then failed with
// a parser error and a wrong "no smtp-listener".
func TestHugeFile(t *testing.T) {
	dir := t.TempDir()
	huge := writeConf(t, dir, "huge.conf", padding(50<<20))
	got := loadRefused(t, huge)
	if want := huge + ": cannot read the configuration: it is 50 MiB; a configuration file may be at most 4 MiB"; got != want {
		t.Errorf("as the main file:\n%s\nwant:\n%s", got, want)
	}
	main := writeConf(t, dir, "main.conf", listener+"include huge.conf\n")
	got = loadRefused(t, main)
	if want := main + ":2:9: include: " + huge + " is 50 MiB; a configuration file may be at most 4 MiB"; got != want {
		t.Errorf("as an include:\n%s\nwant:\n%s", got, want)
	}
	// Parse applies the same cap to content in memory.
	_, err := Parse("mem.conf", []byte(padding(50<<20)), Options{Hostname: testHostname})
	if want := "mem.conf:1:1: the file is 50 MiB; a configuration file may be at most 4 MiB"; err == nil || err.Error() != want {
		t.Errorf("Parse of 50 MiB: %v\nwant:\n%s", err, want)
	}
}

// TestFileSizeCap checks the edge: a file of exactly 4 MiB loads, one byte
// more is refused.
func TestFileSizeCap(t *testing.T) {
	dir := t.TempDir()
	at := writeConf(t, dir, "at.conf", listener+padding(4<<20-len(listener)))
	if _, err := Load(at, Options{Hostname: testHostname}); err != nil {
		t.Errorf("a file of 4 MiB: %v", err)
	}
	over := writeConf(t, dir, "over.conf", listener+padding(4<<20-len(listener)+1))
	if got, want := loadRefused(t, over), over+": cannot read the configuration: it is 4194305 bytes; a configuration file may be at most 4 MiB"; got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// shadowLines look like /etc/shadow: user, password hash, dates.
const shadowLines = `root:$y$j9T$0123456789abcdefghijkl$SECRETHASHSECRETHASHSECRETHASHSECRETHASHsec:19700:0:99999:7:::
daemon:*:19700:0:99999:7:::
alice:$6$saltsalt$ALICEHASHALICEHASHALICEHASHALICEHASH:19700:0:99999:7:::
`

// TestForeignFileNotQuoted includes files that are not configuration and
// checks that no error quotes them. Before, each line of /etc/shadow came
// back as `unknown directive "root:$y$…"`, hash and all.
func TestForeignFileNotQuoted(t *testing.T) {
	dir := t.TempDir()
	writeConf(t, dir, "shadow", shadowLines)
	// A key included as configuration by mistake: its base64 lines are all
	// letters and digits, which a directive name could be.
	writeConf(t, dir, "key.pem", "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKEYKEYKEYKEYKEYKEYKEYKEYKEYKEYKEYKEYKEY12\nabcdefKEYTAIL\n-----END PRIVATE KEY-----\n")
	// A line of shadow pasted into a real configuration.
	writeConf(t, dir, "pasted.conf", "max-smtp-out 5\n"+strings.SplitN(shadowLines, "\n", 2)[0]+"\n")
	main := writeConf(t, dir, "main.conf", listener+"include shadow\ninclude key.pem\n<domain example.com>\ninclude pasted.conf\n</domain>\n")
	got := loadRefused(t, main)
	for _, secret := range []string{"root", "SECRET", "alice", "ALICE", "$y$", "daemon", "MC4C", "KEY", "abcdef"} {
		if strings.Contains(strings.ReplaceAll(got, dir, "DIR"), secret) {
			t.Errorf("the errors quote %q:\n%s", secret, got)
		}
	}
	wantDiags(t, got,
		dir+"/key.pem:1:1: 4 errors in this file, not shown: it does not start with a directive or block name and may not be a configuration file at all, so none of its lines is quoted",
		dir+"/pasted.conf:2:1: unknown directive (not shown: it does not look like a directive name)",
		dir+"/shadow:1:1: 3 errors in this file, not shown: it does not start with a directive or block name and may not be a configuration file at all, so none of its lines is quoted",
	)
}

// TestBinaryAndLatin1Files includes a binary file (a NUL byte) and one in
// Latin-1: the binary one is not parsed at all; the Latin-1 one loads when
// it is right, and its errors are not quoted when it is not.
func TestBinaryAndLatin1Files(t *testing.T) {
	dir := t.TempDir()
	writeConf(t, dir, "binary.conf", "max-smtp-out 5\n\x00\x01\x02 secret\n")
	writeConf(t, dir, "latin1.conf", "# M\xfcller's limits\nmax-smtp-out 5\n")
	main := writeConf(t, dir, "main.conf", listener+"<domain a.example>\ninclude latin1.conf\n</domain>\n")
	if _, err := Load(main, Options{Hostname: testHostname}); err != nil {
		t.Fatalf("a Latin-1 comment: %v", err)
	}
	writeConf(t, dir, "latin1-bad.conf", "# M\xfcller's limits\nmax-smtp-out \xfcber-secret\n")
	main = writeConf(t, dir, "main.conf", listener+"include binary.conf\n<domain a.example>\ninclude latin1-bad.conf\n</domain>\n")
	got := loadRefused(t, main)
	if want := strings.Join([]string{
		dir + "/latin1-bad.conf:2:14: 1 error in this file, not shown: it is not UTF-8 text (it holds a byte that is not UTF-8 at line 1), so none of its lines is quoted",
		main + ":2:9: include: " + dir + "/binary.conf is not a text file (it holds a NUL byte at line 2), so it is not read as configuration",
	}, "\n"); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestManyLines parses a file of more than a million lines, which the
// parser refused in one piece ("too many iterations"), and checks that
// positions past the first piece are right.
func TestManyLines(t *testing.T) {
	src := listener + strings.Repeat("\n", 1_100_000) + "max-smtp-outt 5\n"
	_, err := Parse("many.conf", []byte(src), Options{Hostname: testHostname})
	want := `many.conf:1100002:1: unknown directive "max-smtp-outt" (did you mean "max-smtp-out"?)`
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
}

// TestManyValues parses a line of 1,100,000 values: more words than a load
// parses, refused before the parser sees the line. The parser takes some
// 10 µs a value; before, this line took half a minute to end in its
// "too many iterations" error.
func TestManyValues(t *testing.T) {
	src := listener + "host-name" + strings.Repeat(" a", 1_100_000) + "\n"
	start := time.Now()
	_, err := Parse("values.conf", []byte(src), Options{Hostname: testHostname})
	want := "values.conf:2:1: this line takes the configuration past 1000000 words (names and values, and one for each line); that is the most one load reads"
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
	if d := time.Since(start); d > loadTimeout {
		t.Errorf("Parse took %v", d)
	}
}

// TestReadFile checks the reader offered to callers outside the package
// (the admin commands look into a file Load refused): a special file or a
// huge one is an error, a configuration is read.
func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	huge := writeConf(t, dir, "huge.conf", padding(5<<20))
	for path, want := range map[string]string{
		"/dev/zero": "/dev/zero is a character device, not a regular file",
		fifo:        fifo + " is a named pipe (FIFO), not a regular file",
		huge:        huge + " is 5 MiB; a configuration file may be at most 4 MiB",
	} {
		done := make(chan error, 1)
		go func() {
			_, err := ReadFile(path)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || err.Error() != want {
				t.Errorf("ReadFile(%s) = %v, want %s", path, err, want)
			}
		case <-time.After(loadTimeout):
			t.Fatalf("ReadFile(%s) did not return within %v", path, loadTimeout)
		}
	}
	conf := writeConf(t, dir, "ok.conf", listener)
	if b, err := ReadFile(conf); err != nil || string(b) != listener {
		t.Errorf("ReadFile(ok.conf) = %q, %v", b, err)
	}
}
