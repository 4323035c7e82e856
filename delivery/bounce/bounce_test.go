package bounce

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

type reply struct {
	line int
	want Category
	code int
	text string
}

// loadReplies reads testdata/replies.txt.
func loadReplies(t testing.TB) []reply {
	t.Helper()
	f, err := os.Open("testdata/replies.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []reply
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.SplitN(line, "\t", 3)
		if len(fields) != 3 {
			t.Fatalf("replies.txt:%d: want category, code and text separated by tabs", n)
		}
		code, err := strconv.Atoi(fields[1])
		if err != nil {
			t.Fatalf("replies.txt:%d: code: %v", n, err)
		}
		out = append(out, reply{n, Category(fields[0]), code, strings.ReplaceAll(fields[2], `\n`, "\r\n")})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestClassifyReplies(t *testing.T) {
	known := map[Category]bool{}
	for _, c := range Categories() {
		known[c] = true
	}
	replies := loadReplies(t)
	if len(replies) < 40 {
		t.Fatalf("only %d replies in testdata", len(replies))
	}
	seen := map[Category]int{}
	for _, r := range replies {
		if !known[r.want] {
			t.Errorf("replies.txt:%d: unknown category %q", r.line, r.want)
			continue
		}
		seen[r.want]++
		if got := Classify(r.code, r.text); got != r.want {
			t.Errorf("replies.txt:%d: Classify(%d, %q) = %s, want %s", r.line, r.code, r.text, got, r.want)
		}
		// Tern records replies with their code in front; passing 0 for the
		// code must not change the outcome of a remote reply.
		if r.code != 0 {
			if got := Classify(0, r.text); got != r.want {
				t.Errorf("replies.txt:%d: Classify(0, %q) = %s, want %s", r.line, r.text, got, r.want)
			}
		}
	}
	for _, c := range Categories() {
		if seen[c] == 0 {
			t.Errorf("no reply in testdata is classified %s", c)
		}
	}
}

func TestClassifyCase(t *testing.T) {
	// The text is matched regardless of case, and LF works like CRLF.
	for _, s := range []string{
		"550 5.7.1 MESSAGE REJECTED AS SPAM",
		"550-5.7.1 message rejected\n550 5.7.1 as spam",
		"550 5.7.1 Message Rejected As Spam",
	} {
		if got := Classify(550, s); got != SpamRelated {
			t.Errorf("Classify(550, %q) = %s, want spam-related", s, got)
		}
	}
}

func TestClassifyLongReply(t *testing.T) {
	// Only the first MaxText bytes count.
	long := "550 5.7.1 rejected " + strings.Repeat("x", MaxText) + " spam"
	if got := Classify(550, long); got != PolicyRelated {
		t.Errorf("long reply: got %s, want policy-related", got)
	}
}

func TestParseEnhanced(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Enhanced
		ok   bool
	}{
		{"550 5.1.1 User unknown", Enhanced{5, 1, 1}, true},
		{"550-5.7.26 Unauthenticated", Enhanced{5, 7, 26}, true},
		{"451 4.7.650 rate limited", Enhanced{4, 7, 650}, true},
		{"5.4.7 message expired", Enhanced{5, 4, 7}, true},
		{"smtp; 550 5.1.1 <x@example.com>", Enhanced{5, 1, 1}, true},
		{"550 #5.1.0 Address rejected", Enhanced{5, 1, 0}, true},
		{"250 2.0.0 Ok: queued", Enhanced{2, 0, 0}, true},
		{"550 Unrouteable address\r\n550 5.1.2 later line", Enhanced{5, 1, 2}, true},
		{"550 5.1.1.2 looks like an address", Enhanced{}, false},
		{"550 5.1.1234 too long a detail", Enhanced{}, false},
		{"550 3.1.1 no such class", Enhanced{}, false},
		{"550 User unknown", Enhanced{}, false},
		{"554 delivery error: dd 5.1.1 in the middle", Enhanced{}, false},
		{"", Enhanced{}, false},
		{"5.1", Enhanced{}, false},
	} {
		got, ok := ParseEnhanced(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseEnhanced(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestCategoryString(t *testing.T) {
	if s := BadMailbox.String(); s != "bad-mailbox" {
		t.Errorf("BadMailbox.String() = %q", s)
	}
	seen := map[string]bool{}
	for _, c := range Categories() {
		if seen[c.String()] {
			t.Errorf("duplicate category %s", c)
		}
		seen[c.String()] = true
	}
	if len(seen) != 17 {
		t.Errorf("%d categories, want 17", len(seen))
	}
}

func TestRulesCategories(t *testing.T) {
	// Every rule names a known category: a typo in a table would otherwise
	// go unnoticed until a reply hit it.
	known := map[Category]bool{}
	for _, c := range Categories() {
		known[c] = true
	}
	for i, r := range enhancedRules {
		if !known[r.cat] {
			t.Errorf("enhancedRules[%d]: unknown category %q", i, r.cat)
		}
	}
	for _, tab := range [][]textRule{localRules, textRules} {
		for _, r := range tab {
			if !known[r.cat] {
				t.Errorf("rule %q: unknown category %q", r.re, r.cat)
			}
		}
	}
	for _, r := range basicRules {
		if !known[r.cat] {
			t.Errorf("basic rule %d-%d: unknown category %q", r.lo, r.hi, r.cat)
		}
	}
}

func TestClassifyConcurrent(t *testing.T) {
	// The tables are read-only: concurrent use is safe (run with -race).
	replies := loadReplies(t)
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for _, r := range replies {
				Classify(r.code, r.text)
			}
		}()
	}
	for range 4 {
		<-done
	}
}

func BenchmarkClassify(b *testing.B) {
	replies := loadReplies(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		r := replies[i%len(replies)]
		Classify(r.code, r.text)
	}
}

func TestPrefilterSound(t *testing.T) {
	// A prefilter may only skip a regexp that would not have matched.
	texts := []string{}
	for _, r := range loadReplies(t) {
		texts = append(texts, strings.ToLower(r.text))
	}
	for _, tab := range [][]textRule{localRules, textRules} {
		for _, r := range tab {
			for _, s := range texts {
				if r.re.MatchString(s) != r.match(s) {
					t.Errorf("rule %q: split parts disagree on %q", r.re, s)
				}
				for _, p := range r.parts {
					if p.re.MatchString(s) && !mayMatch(p.filter, s) {
						t.Errorf("prefilter %q of %q rejects %q", p.filter, p.re, s)
					}
				}
			}
		}
	}
	for _, tc := range []struct {
		pattern string
		match   []string
	}{
		{`gr[ae]ylist`, []string{"greylisted", "graylisting"}},
		{`relay(ing)? (access )?denied`, []string{"relay denied", "relaying access denied"}},
		{`does ?n[o']?t exist|\b[psx]bl\b`, []string{"doesnt exist", "doesn't exist", "does not exist", "on the pbl", "xbl"}},
		{`mailbox.{0,40}\bfull\b`, []string{"mailbox is full"}},
		{`a*b?`, []string{"", "zzz"}},
	} {
		f := prefilterOf(tc.pattern)
		for _, s := range tc.match {
			if !mayMatch(f, s) {
				t.Errorf("prefilter %q of %q rejects %q", f, tc.pattern, s)
			}
		}
	}
}
