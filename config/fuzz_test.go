package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fuzzOptions serve no file: an include, a certificate or a DKIM key named
// by the fuzzer never touches the disk.
func fuzzOptions() Options {
	return Options{
		Hostname: "fuzz.example",
		Open: func(name string) (fs.File, error) {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		},
		Glob: func(pattern string) ([]string, error) {
			if _, err := filepath.Match(pattern, ""); err != nil {
				return nil, err
			}
			return nil, nil
		},
	}
}

// FuzzParse feeds arbitrary bytes to Parse. It fails on a panic, on a
// result that is neither a Config nor an *ErrorList with errors, and on any
// diagnostic without a valid position in the parsed file or with a message
// spanning lines (ErrorList.Error prints one diagnostic per line).
//
// The seed corpus is testdata/fuzz/FuzzParse (the examples, the inputs of
// the golden error files and the include tests) plus the examples as they
// are now and the inputs below. Run it with
//
//	go test ./config -run '^$' -fuzz '^FuzzParse$' -fuzztime 1m
func FuzzParse(f *testing.F) {
	examples, _ := filepath.Glob("../examples/*.conf")
	more, _ := filepath.Glob("../examples/conf.d/*.conf")
	rules, _ := filepath.Glob("../examples/rules/*.conf")
	for _, name := range append(append(examples, more...), rules...) {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	for _, s := range []string{
		"",
		"\n",
		"<",
		"</",
		">",
		"<>",
		"<<domain>>",
		"\"",
		"#",
		"\r",
		"\r\r\n\f\v",
		"smtp-listener",
		"<domain *>\n</domain></domain>\n",
		"<domain *><domain *></domain>",
		"<a\n<b\n</a\n</b\n",
		"domain-macro a $a\ndomain-macro b $a$a\n<domain $b$a.x>\n</domain>\n",
		"domain-macro a x,y,z\n<domain $a.$a.$a.$a>\n</domain>\n",
		"include \"\"\ninclude /\ninclude [\n<domain *>\ninclude *\n</domain>\n",
		"reply /\\/ /x/ mode=backoff\n<smtp-pattern-list p>\nreply /a\\/b/ mode=backoff,backoff-to-normal-after=never\n</smtp-pattern-list>\n",
		"smtp-listener [::]:0 tls=\nsmtp-listener ::/0:587\nsmtp-listener :\n",
		"<source {auth}>\n</source>\n<source 0/0>\n</source>\n<source ::ffff:1.2.3.4/100>\n</source>\n",
		"http-access 0/0\nhttp-access 0/0 admin extra\nhttp-mgmt-port :0\n",
		"\xff\xfe<\xff>\n\x00\n",
		"<virtual-mta-pool p>\nvirtual-mta p\n</virtual-mta-pool>\n<virtual-mta p>\n</virtual-mta>\n",
		"<domain *>\nretry-after 1w, 1d,  1h\nsmtp-hosts [::1]:25; a, b\ndomain-key ,,\n</domain>\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "fuzz.conf"
		// A parse that runs away (exponential expansion, a quadratic
		// recovery loop) would stall the fuzzer without a report; fail with
		// the input instead. Far above the ~1 ms a seed takes.
		var (
			cfg  *Config
			err  error
			done = make(chan struct{})
		)
		go func() {
			defer close(done)
			cfg, err = Parse(name, data, fuzzOptions())
		}()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			panic(fmt.Sprintf("Parse took over 3s on a %d-byte input", len(data)))
		}
		lines := strings.Count(string(data), "\n") + 1
		check := func(kind string, ds []Diagnostic) {
			for _, d := range ds {
				p := d.Pos
				if p.File != name || p.Line < 1 || p.Line > lines || p.Column < 1 {
					t.Errorf("%s with a bad position: %q (file has %d lines)", kind, d.String(), lines)
				}
				if strings.Contains(d.Message, "\n") {
					t.Errorf("%s message spans lines: %q", kind, d.Message)
				}
			}
		}
		if err == nil {
			if cfg == nil {
				t.Fatal("Parse returned neither a Config nor an error")
			}
			check("warning", cfg.Warnings)
			return
		}
		if cfg != nil {
			t.Error("Parse returned a Config together with an error")
		}
		var el *ErrorList
		if !errors.As(err, &el) {
			t.Fatalf("error is %T, want *ErrorList: %v", err, err)
		}
		if len(el.Errors) == 0 {
			t.Fatal("an ErrorList without errors")
		}
		check("error", el.Errors)
		check("warning", el.Warnings)
	})
}
