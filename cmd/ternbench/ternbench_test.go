package main

import (
	"strings"
	"testing"
)

// The throw-away Postfix listens on the benchmark's port and chroots no
// service; comments and continuation lines are left alone.
func TestMasterCf(t *testing.T) {
	in := `# comment
smtp      inet  n       -       y       -       -       smtpd
  -o smtpd_sasl_auth_enable=yes
pickup    unix  n       -       y       60      1       pickup
#submission inet n       -       y       -       -       smtpd
`
	out := string(masterCf([]byte(in), 2626))
	for _, want := range []string{
		"127.0.0.1:2626 inet n - n - - smtpd\n",
		"  -o smtpd_sasl_auth_enable=yes\n",
		"pickup unix n - n 60 1 pickup\n",
		"#submission inet n       -       y       -       -       smtpd\n",
		"# comment\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("master.cf lacks %q:\n%s", want, out)
		}
	}
}

// The sink's counter lines end with \r; the last mesg= wins.
func TestSinkCounter(t *testing.T) {
	s := &sink{}
	s.read(strings.NewReader("sess=0 quit=0 mesg=1\rsess=1 quit=1 mesg=2\rsess=1 quit=1 mesg=17\r"))
	if s.count() != 17 {
		t.Errorf("count = %d, want 17", s.count())
	}
}

func TestMedianAndPasses(t *testing.T) {
	rs := []result{{DeliveredPS: 3}, {DeliveredPS: 1}, {DeliveredPS: 2}}
	get := func(r result) float64 { return r.DeliveredPS }
	if m := median(rs, get); m != 2 {
		t.Errorf("median of 3 = %v, want 2", m)
	}
	if m := median(rs[:2], get); m != 2 {
		t.Errorf("median of 2 = %v, want 2", m)
	}
	if p, err := parsePasses("new, reuse"); err != nil || strings.Join(p, ",") != "new,reuse" {
		t.Errorf("parsePasses = %v, %v", p, err)
	}
	if _, err := parsePasses("fast"); err == nil {
		t.Error("parsePasses(fast) accepted")
	}
	if got := round(2.71828, 2); got != 2.72 {
		t.Errorf("round = %v", got)
	}
}
