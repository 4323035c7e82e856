package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"

	"github.com/ternmta/tern/queue"
)

var (
	arrival = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	now     = time.Date(2026, 3, 2, 10, 30, 0, 0, time.UTC)
	last    = time.Date(2026, 3, 2, 10, 29, 58, 0, time.UTC)
)

const original = "From: Alice <alice@example.com>\n" +
	"To: bob@example.org, carol@example.org\n" +
	"Subject: quarterly figures\n" +
	"Message-ID: <orig-1@example.com>\n" +
	"\n" +
	"Hello Bob,\n" +
	"the figures are attached.\n"

func baseInput() Input {
	return Input{
		ReportingMTA: "mta1.tern.example",
		Sender:       "alice@example.com",
		Arrival:      arrival,
		Now:          now,
		Original:     []byte(original),
		Recipients: []Recipient{{
			Address:     "bob@example.org",
			RemoteMTA:   "mx.example.org",
			Diagnostic:  "550 5.1.1 <bob@example.org>: user unknown",
			LastAttempt: last,
		}},
	}
}

// part is one decoded body part of a report.
type part struct {
	mediaType string
	params    map[string]string
	header    message.Header
	body      []byte
}

// report is a parsed report.
type report struct {
	header message.Header
	parts  []part
}

// parse parses msg as a multipart/report and checks what every report
// must satisfy: CRLF line endings, lines within 998 octets, the top-level
// media type.
func parse(t *testing.T, msg []byte) report {
	t.Helper()
	checkLines(t, msg)
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("message.Read: %v", err)
	}
	mt, params, err := e.Header.ContentType()
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type = %q %v (%v), want multipart/report; report-type=delivery-status", mt, params, err)
	}
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatal("not multipart")
	}
	r := report{header: e.Header}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("NextPart: %v", err)
		}
		body, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatalf("part body: %v", err)
		}
		pmt, pparams, _ := p.Header.ContentType()
		r.parts = append(r.parts, part{pmt, pparams, p.Header, body})
	}
	return r
}

// checkLines fails unless every line of msg ends with CRLF and is at most
// 998 octets long.
func checkLines(t *testing.T, msg []byte) {
	t.Helper()
	if !bytes.HasSuffix(msg, []byte("\r\n")) {
		t.Error("message does not end with CRLF")
	}
	for i, l := range bytes.SplitAfter(msg, []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		if !bytes.HasSuffix(l, []byte("\r\n")) && i < bytes.Count(msg, []byte("\n")) {
			t.Fatalf("line %d ends with a bare LF: %q", i+1, l)
		}
		if bytes.IndexByte(bytes.TrimSuffix(l, []byte("\r\n")), '\r') >= 0 {
			t.Fatalf("line %d has a bare CR: %q", i+1, l)
		}
		if n := len(bytes.TrimSuffix(l, []byte("\r\n"))); n > 998 {
			t.Fatalf("line %d is %d octets long", i+1, n)
		}
	}
}

// types returns the media types of the parts, in order.
func (r report) types() []string {
	var ts []string
	for _, p := range r.parts {
		ts = append(ts, p.mediaType)
	}
	return ts
}

// status parses the message/delivery-status part: the per-message block
// and the per-recipient blocks.
func (r report) status(t *testing.T) (textproto.MIMEHeader, []textproto.MIMEHeader) {
	t.Helper()
	if len(r.parts) < 2 || r.parts[1].mediaType != "message/delivery-status" {
		t.Fatalf("second part is not message/delivery-status: %v", r.types())
	}
	tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(r.parts[1].body)))
	var blocks []textproto.MIMEHeader
	for {
		h, err := tr.ReadMIMEHeader()
		if len(h) > 0 {
			blocks = append(blocks, h)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("delivery-status: %v", err)
		}
	}
	if len(blocks) < 2 {
		t.Fatalf("delivery-status has %d blocks, want per-message and per-recipient ones:\n%s", len(blocks), r.parts[1].body)
	}
	return blocks[0], blocks[1:]
}

func build(t *testing.T, in Input) report {
	t.Helper()
	msg, ok, err := Build(in)
	if err != nil || !ok {
		t.Fatalf("Build = ok %v, %v; want a report", ok, err)
	}
	return parse(t, msg)
}

func wantFields(t *testing.T, what string, h textproto.MIMEHeader, want map[string]string) {
	t.Helper()
	for k, v := range want {
		got, present := h[textproto.CanonicalMIMEHeaderKey(k)]
		switch {
		case v == "" && present:
			t.Errorf("%s: %s = %q, want none", what, k, got)
		case v != "" && (len(got) != 1 || got[0] != v):
			t.Errorf("%s: %s = %q, want %q", what, k, got, v)
		}
	}
}

func TestStructure(t *testing.T) {
	r := build(t, baseInput())

	if got, want := strings.Join(r.types(), ","), "text/plain,message/delivery-status,text/rfc822-headers"; got != want {
		t.Fatalf("parts = %s, want %s", got, want)
	}
	h := r.header
	for k, want := range map[string]string{
		"From":           "Mail Delivery System <postmaster@mta1.tern.example>",
		"To":             "<alice@example.com>",
		"Subject":        "Undelivered Mail Returned to Sender",
		"Auto-Submitted": "auto-replied",
		"MIME-Version":   "1.0",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if d, err := mail.ParseDate(h.Get("Date")); err != nil || !d.Equal(now) {
		t.Errorf("Date = %q (%v), want %v", h.Get("Date"), err, now)
	}
	id := h.Get("Message-ID")
	if !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, "@mta1.tern.example>") || len(id) < len("<x@mta1.tern.example>") {
		t.Errorf("Message-ID = %q, want <id@mta1.tern.example>", id)
	}
	if _, err := (&mail.AddressParser{}).Parse(h.Get("From")); err != nil {
		t.Errorf("From does not parse: %v", err)
	}

	msgFields, rcpts := r.status(t)
	wantFields(t, "per-message", msgFields, map[string]string{
		"Reporting-MTA":        "dns; mta1.tern.example",
		"Arrival-Date":         arrival.Format(time.RFC1123Z),
		"Original-Envelope-Id": "",
	})
	if len(rcpts) != 1 {
		t.Fatalf("%d recipient blocks, want 1", len(rcpts))
	}
	wantFields(t, "recipient", rcpts[0], map[string]string{
		"Final-Recipient":    "rfc822; bob@example.org",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Remote-MTA":         "dns; mx.example.org",
		"Diagnostic-Code":    "smtp; 550 5.1.1 <bob@example.org>: user unknown",
		"Last-Attempt-Date":  last.Format(time.RFC1123Z),
		"Original-Recipient": "",
		"Will-Retry-Until":   "",
	})

	text := string(r.parts[0].body)
	for _, s := range []string{"could not be delivered", "<bob@example.org>", "mx.example.org", "550 5.1.1 <bob@example.org>: user unknown"} {
		if !strings.Contains(text, s) {
			t.Errorf("human-readable part lacks %q:\n%s", s, text)
		}
	}
	if cs := r.parts[0].params["charset"]; cs != "us-ascii" {
		t.Errorf("text charset = %q, want us-ascii", cs)
	}
}

// fixedRand is a reproducible randReader.
type fixedRand struct{}

func (fixedRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i)
	}
	return len(p), nil
}

func TestGolden(t *testing.T) {
	saved := randReader
	randReader = fixedRand{}
	defer func() { randReader = saved }()

	in := baseInput()
	in.EnvID = "QQ314159"
	in.Recipients = append(in.Recipients, Recipient{
		Address:    "carol@example.org",
		ORcpt:      "rfc822;Carol@Example.ORG",
		Diagnostic: "connection failed: dial tcp 192.0.2.7:25: i/o timeout",
	})
	msg, ok, err := Build(in)
	if err != nil || !ok {
		t.Fatalf("Build = %v, %v", ok, err)
	}
	head, _, _ := strings.Cut(string(msg), "\r\n\r\n")
	wantHead := "From: Mail Delivery System <postmaster@mta1.tern.example>\r\n" +
		"To: <alice@example.com>\r\n" +
		"Subject: Undelivered Mail Returned to Sender\r\n" +
		"Date: Mon, 02 Mar 2026 10:30:00 +0000\r\n" +
		"Message-ID: <dgs85yp0a2o0.0001020304050607@mta1.tern.example>\r\n" +
		"Auto-Submitted: auto-replied\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/report; report-type=delivery-status;\r\n" +
		" boundary=\"=_tern-report-000102030405060708090a0b0c0d0e0f\""
	if head != wantHead {
		t.Errorf("header:\n%s\nwant:\n%s", head, wantHead)
	}

	r := parse(t, msg)
	wantText := "This is the mail delivery system at mta1.tern.example.\r\n" +
		"\r\n" +
		"Your message could not be delivered to the recipients below. Delivery\r\n" +
		"has been given up and will not be attempted again.\r\n" +
		"\r\n" +
		"<bob@example.org>\r\n" +
		"    The mail server mx.example.org replied:\r\n" +
		"        550 5.1.1 <bob@example.org>: user unknown\r\n" +
		"\r\n" +
		"<carol@example.org>\r\n" +
		"    The reason given was:\r\n" +
		"        connection failed: dial tcp 192.0.2.7:25: i/o timeout\r\n" +
		"\r\n" +
		"The headers of your message are attached below.\r\n" +
		"\r\n" +
		"If you need help, contact the postmaster at\r\n" +
		"<postmaster@mta1.tern.example> and include this report.\r\n"
	if got := string(r.parts[0].body); got != wantText {
		t.Errorf("human-readable part:\n%s\nwant:\n%s", got, wantText)
	}
	wantStatus := "Reporting-MTA: dns; mta1.tern.example\r\n" +
		"Original-Envelope-Id: QQ314159\r\n" +
		"Arrival-Date: Mon, 02 Mar 2026 09:00:00 +0000\r\n" +
		"\r\n" +
		"Final-Recipient: rfc822; bob@example.org\r\n" +
		"Action: failed\r\n" +
		"Status: 5.1.1\r\n" +
		"Remote-MTA: dns; mx.example.org\r\n" +
		"Diagnostic-Code: smtp; 550 5.1.1 <bob@example.org>: user unknown\r\n" +
		"Last-Attempt-Date: Mon, 02 Mar 2026 10:29:58 +0000\r\n" +
		"\r\n" +
		"Original-Recipient: rfc822; Carol@Example.ORG\r\n" +
		"Final-Recipient: rfc822; carol@example.org\r\n" +
		"Action: failed\r\n" +
		"Status: 5.0.0\r\n" +
		"Diagnostic-Code: X-Tern; connection failed: dial tcp 192.0.2.7:25: i/o timeout\r\n"
	if got := string(r.parts[1].body); got != wantStatus {
		t.Errorf("delivery-status part:\n%s\nwant:\n%s", got, wantStatus)
	}
}

func TestRet(t *testing.T) {
	crlf := strings.ReplaceAll(original, "\n", "\r\n")
	headers, _, _ := strings.Cut(crlf, "\r\n\r\n")
	headers += "\r\n"
	for _, tc := range []struct {
		name     string
		ret      queue.DSNRet
		wantType string
		wantBody string
		wantText string
	}{
		{"unset", queue.RetUnset, "text/rfc822-headers", headers, "headers of your message are attached"},
		{"hdrs", queue.RetHeaders, "text/rfc822-headers", headers, "headers of your message are attached"},
		{"full", queue.RetFull, "message/rfc822", crlf, "Your message is attached"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := baseInput()
			in.Ret = tc.ret
			r := build(t, in)
			if len(r.parts) != 3 {
				t.Fatalf("parts = %v", r.types())
			}
			p := r.parts[2]
			if p.mediaType != tc.wantType {
				t.Errorf("third part = %s, want %s", p.mediaType, tc.wantType)
			}
			if string(p.body) != tc.wantBody {
				t.Errorf("third part body:\n%q\nwant:\n%q", p.body, tc.wantBody)
			}
			if !strings.Contains(string(r.parts[0].body), tc.wantText) {
				t.Errorf("human-readable part lacks %q", tc.wantText)
			}
			if tc.ret == queue.RetFull {
				inner, err := message.Read(bytes.NewReader(p.body))
				if err != nil {
					t.Fatal(err)
				}
				if s := inner.Header.Get("Subject"); s != "quarterly figures" {
					t.Errorf("returned message Subject = %q", s)
				}
			}
		})
	}
}

func TestNoOriginal(t *testing.T) {
	in := baseInput()
	in.Original = nil
	r := build(t, in)
	if got := strings.Join(r.types(), ","); got != "text/plain,message/delivery-status" {
		t.Errorf("parts = %s", got)
	}
}

func TestEnvIDAndORcpt(t *testing.T) {
	in := baseInput()
	in.EnvID = "campaign-42.7"
	in.Recipients[0].ORcpt = "Bob@Example.org"
	in.Recipients = append(in.Recipients,
		Recipient{Address: "carol@example.org", ORcpt: "rfc822;carol+tag@example.org", Diagnostic: "550 no"},
		Recipient{Address: "dave@example.org", ORcpt: "x-local; dave", Diagnostic: "550 no"},
	)
	r := build(t, in)
	msgFields, rcpts := r.status(t)
	wantFields(t, "per-message", msgFields, map[string]string{"Original-Envelope-Id": "campaign-42.7"})
	for i, want := range []string{"rfc822; Bob@Example.org", "rfc822; carol+tag@example.org", "x-local; dave"} {
		wantFields(t, rcpts[i].Get("Final-Recipient"), rcpts[i], map[string]string{"Original-Recipient": want})
	}
}

func TestSeveralRecipients(t *testing.T) {
	in := baseInput()
	in.Recipients = []Recipient{
		{Address: "bob@example.org", RemoteMTA: "mx1.example.org", Diagnostic: "550 5.1.1 bob unknown", LastAttempt: last},
		{Address: "carol@example.org", RemoteMTA: "mx2.example.org", Diagnostic: "552 5.2.2 mailbox full", LastAttempt: last},
		{Address: "dan@example.net", Diagnostic: "554 delivery error", LastAttempt: last},
	}
	msg, ok, err := Build(in)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if n := bytes.Count(msg, []byte("Content-Type: multipart/report")); n != 1 {
		t.Fatalf("%d reports in the output, want 1", n)
	}
	r := parse(t, msg)
	_, rcpts := r.status(t)
	if len(rcpts) != 3 {
		t.Fatalf("%d recipient blocks, want 3", len(rcpts))
	}
	for i, want := range []struct{ rcpt, status, remote string }{
		{"rfc822; bob@example.org", "5.1.1", "dns; mx1.example.org"},
		{"rfc822; carol@example.org", "5.2.2", "dns; mx2.example.org"},
		{"rfc822; dan@example.net", "5.0.0", ""},
	} {
		wantFields(t, want.rcpt, rcpts[i], map[string]string{
			"Final-Recipient": want.rcpt, "Status": want.status, "Remote-MTA": want.remote, "Action": "failed",
		})
	}
	text := string(r.parts[0].body)
	for _, s := range []string{"bob unknown", "mailbox full", "554 delivery error", "<dan@example.net>"} {
		if !strings.Contains(text, s) {
			t.Errorf("human-readable part lacks %q", s)
		}
	}
}

func TestNullSender(t *testing.T) {
	for _, s := range []string{"", "<>", " <> "} {
		in := baseInput()
		in.Sender = s
		msg, ok, err := Build(in)
		if msg != nil || ok || err != nil {
			t.Errorf("sender %q: Build = %d bytes, %v, %v; want nothing", s, len(msg), ok, err)
		}
	}
}

func TestNotify(t *testing.T) {
	type rcpt struct {
		addr   string
		notify queue.Notify
	}
	for _, tc := range []struct {
		name  string
		rcpts []rcpt
		want  []string // reported recipients; none means no report
	}{
		{"absent", []rcpt{{"a@x.example", 0}}, []string{"a@x.example"}},
		{"failure", []rcpt{{"a@x.example", queue.NotifyFailure}}, []string{"a@x.example"}},
		{"failure,delay", []rcpt{{"a@x.example", queue.NotifyFailure | queue.NotifyDelay}}, []string{"a@x.example"}},
		{"never", []rcpt{{"a@x.example", queue.NotifyNever}}, nil},
		{"success", []rcpt{{"a@x.example", queue.NotifySuccess}}, nil},
		{"delay", []rcpt{{"a@x.example", queue.NotifyDelay}}, nil},
		{"mixed", []rcpt{
			{"a@x.example", queue.NotifyNever},
			{"b@x.example", 0},
			{"c@x.example", queue.NotifySuccess},
			{"d@x.example", queue.NotifySuccess | queue.NotifyFailure},
		}, []string{"b@x.example", "d@x.example"}},
		{"none left", []rcpt{{"a@x.example", queue.NotifyNever}, {"b@x.example", queue.NotifySuccess | queue.NotifyDelay}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := baseInput()
			in.Recipients = nil
			for _, r := range tc.rcpts {
				in.Recipients = append(in.Recipients, Recipient{Address: r.addr, Notify: r.notify, Diagnostic: "550 5.1.1 no"})
			}
			msg, ok, err := Build(in)
			if err != nil {
				t.Fatal(err)
			}
			if len(tc.want) == 0 {
				if ok || msg != nil {
					t.Fatalf("Build = %v with %d bytes, want no report", ok, len(msg))
				}
				return
			}
			if !ok {
				t.Fatal("no report")
			}
			_, blocks := parse(t, msg).status(t)
			var got []string
			for _, b := range blocks {
				got = append(got, strings.TrimPrefix(b.Get("Final-Recipient"), "rfc822; "))
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("reported %v, want %v", got, tc.want)
			}
		})
	}
}

func TestWanted(t *testing.T) {
	for _, tc := range []struct {
		n    queue.Notify
		a    Action
		want bool
	}{
		{0, "", true},
		{0, ActionFailed, true},
		{0, ActionDelayed, true},
		{0, ActionDelivered, false},
		{queue.NotifyNever, ActionFailed, false},
		{queue.NotifyNever | queue.NotifyFailure, ActionFailed, false},
		{queue.NotifySuccess, ActionFailed, false},
		{queue.NotifySuccess, ActionDelivered, true},
		{queue.NotifySuccess, ActionRelayed, true},
		{queue.NotifyFailure, ActionDelayed, false},
		{queue.NotifyDelay, ActionDelayed, true},
		{queue.NotifyFailure, "bogus", false},
	} {
		if got := Wanted(tc.n, tc.a); got != tc.want {
			t.Errorf("Wanted(%b, %q) = %v, want %v", tc.n, tc.a, got, tc.want)
		}
	}
}

func TestStatus(t *testing.T) {
	for _, tc := range []struct{ reply, want string }{
		{"550 5.1.1 user unknown", "5.1.1"},
		{"550 5.1.1", "5.1.1"},
		{"554 delivery error", "5.0.0"},
		{"554", "5.0.0"},
		{"451 4.7.1 greylisted, try later", "4.7.1"},
		{"452-4.2.2 mailbox full\n452 4.2.2 see you", "4.2.2"},
		{"550-5.7.1 policy\r\n550 5.7.1 rejected", "5.7.1"},
		{"550 4.1.1 class mismatch", "5.0.0"},
		{"550 5.1.1234 too many digits", "5.0.0"},
		{"550 user 5.1.1 later", "5.0.0"},
		{"  550 5.1.2 leading space", "5.1.2"},
		{"connection failed: i/o timeout", ""},
		{"5501 nope", ""},
		{"", ""},
	} {
		if got := Status(tc.reply); got != tc.want {
			t.Errorf("Status(%q) = %q, want %q", tc.reply, got, tc.want)
		}
	}

	// Recipient.Status wins when valid; the action decides without a reply.
	for _, tc := range []struct {
		r    Recipient
		want string
	}{
		{Recipient{Status: "5.7.26", Diagnostic: "550 5.1.1 x"}, "5.7.26"},
		{Recipient{Status: "5.x.1", Diagnostic: "550 5.1.1 x"}, "5.1.1"},
		{Recipient{Diagnostic: "timeout"}, "5.0.0"},
		{Recipient{Action: ActionDelayed, Diagnostic: "timeout"}, "4.0.0"},
		{Recipient{Action: ActionDelayed, Diagnostic: "421 4.4.2 bye"}, "4.4.2"},
		{Recipient{Diagnostic: "451 4.4.1 no answer"}, "4.4.1"}, // expired after deferrals
	} {
		if got := statusOf(tc.r); got != tc.want {
			t.Errorf("statusOf(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}

func TestDelayed(t *testing.T) {
	in := baseInput()
	until := now.Add(4 * 24 * time.Hour)
	in.Recipients = []Recipient{{
		Address: "bob@example.org", Action: ActionDelayed, RemoteMTA: "mx.example.org",
		Diagnostic: "451 4.7.1 greylisted", LastAttempt: last, RetryUntil: until,
	}}
	r := build(t, in)
	if s := r.header.Get("Subject"); !strings.HasPrefix(s, "Delayed Mail") {
		t.Errorf("Subject = %q", s)
	}
	_, rcpts := r.status(t)
	wantFields(t, "recipient", rcpts[0], map[string]string{
		"Action": "delayed", "Status": "4.7.1", "Will-Retry-Until": until.Format(time.RFC1123Z),
	})
	if text := string(r.parts[0].body); !strings.Contains(text, "not yet been delivered") {
		t.Errorf("human-readable part:\n%s", text)
	}
}

func TestHugeFull(t *testing.T) {
	// About 3 MB: LF line endings, one line far over 998 octets, 8-bit text.
	var b strings.Builder
	b.WriteString("From: alice@example.com\nTo: bob@example.org\nSubject: big one\n")
	b.WriteString("X-Long: " + strings.Repeat("h", 2500) + "\n\n")
	b.WriteString(strings.Repeat("z", 5000) + "\n")
	line := "Größe zählt nicht — a body line of some length, repeated many times.\n"
	for b.Len() < 3<<20 {
		b.WriteString(line)
	}
	orig := b.String()

	in := baseInput()
	in.Ret = queue.RetFull
	in.Original = []byte(orig)
	r := build(t, in) // checks line lengths and endings
	p := r.parts[2]
	if p.mediaType != "message/rfc822" {
		t.Fatalf("third part = %s", p.mediaType)
	}
	if cte := p.header.Get("Content-Transfer-Encoding"); cte != "8bit" {
		t.Errorf("Content-Transfer-Encoding = %q, want 8bit", cte)
	}
	inner, err := message.Read(bytes.NewReader(p.body))
	if err != nil {
		t.Fatal(err)
	}
	if s := inner.Header.Get("Subject"); s != "big one" {
		t.Errorf("returned Subject = %q", s)
	}
	if x := strings.ReplaceAll(inner.Header.Get("X-Long"), " ", ""); x != strings.Repeat("h", 2500) {
		t.Errorf("returned X-Long has %d octets, want 2500 h", len(x))
	}
	body, _ := io.ReadAll(inner.Body)
	if n := bytes.Count(body, []byte("Größe zählt nicht")); n != strings.Count(orig, "Größe zählt nicht") {
		t.Errorf("returned body has %d copies of the line, want %d", n, strings.Count(orig, "Größe zählt nicht"))
	}

	// Over the limit: headers only, and the text says why.
	in.MaxFull = 1 << 20
	r = build(t, in)
	if p := r.parts[2]; p.mediaType != "text/rfc822-headers" || bytes.Contains(p.body, []byte("Größe")) {
		t.Errorf("over MaxFull: third part = %s, %d octets", p.mediaType, len(p.body))
	}
	if text := string(r.parts[0].body); !strings.Contains(text, "too large") {
		t.Errorf("human-readable part does not say the message was too large:\n%s", text)
	}
}

func TestNonASCII(t *testing.T) {
	in := baseInput()
	in.Sender = "jörg@exämple.de"
	in.Original = []byte("From: Jörg <jörg@exämple.de>\r\nSubject: Grüße\r\n\r\nHallo\r\n")
	in.Recipients = []Recipient{{
		Address:    "üser@example.org",
		ORcpt:      "utf-8;üser+x@example.org",
		Diagnostic: "550 5.1.1 Empfänger unbekannt",
	}}
	r := build(t, in)
	if to := r.header.Get("To"); to != "<jörg@exämple.de>" {
		t.Errorf("To = %q", to)
	}
	if cs := r.parts[0].params["charset"]; cs != "utf-8" {
		t.Errorf("text charset = %q, want utf-8", cs)
	}
	if !strings.Contains(string(r.parts[0].body), "Empfänger unbekannt") {
		t.Errorf("human-readable part:\n%s", r.parts[0].body)
	}
	if !isASCII(r.parts[1].body) {
		t.Errorf("delivery-status is not ASCII:\n%s", r.parts[1].body)
	}
	_, rcpts := r.status(t)
	wantFields(t, "recipient", rcpts[0], map[string]string{
		"Final-Recipient":    `utf-8; \x{FC}ser@example.org`,
		"Original-Recipient": `utf-8; \x{FC}ser\x{2B}x@example.org`,
		"Diagnostic-Code":    "smtp; 550 5.1.1 Empf?nger unbekannt",
	})
	if p := r.parts[2]; p.header.Get("Content-Transfer-Encoding") != "8bit" || !bytes.Contains(p.body, []byte("Grüße")) {
		t.Errorf("headers part: %q", p.body)
	}
}

func TestLongDiagnostic(t *testing.T) {
	in := baseInput()
	long := "550 5.7.1 " + strings.Repeat("x", 3000) + " " + strings.Repeat("word ", 300)
	in.Recipients[0].Diagnostic = long
	in.EnvID = strings.Repeat("e", 1200)
	r := build(t, in) // checks line lengths
	_, rcpts := r.status(t)
	got := strings.ReplaceAll(rcpts[0].Get("Diagnostic-Code"), " ", "")
	if want := strings.ReplaceAll("smtp;"+long, " ", ""); got != want {
		t.Errorf("Diagnostic-Code unfolds to %d octets, want %d", len(got), len(want))
	}
	if !strings.Contains(strings.ReplaceAll(string(r.parts[0].body), "\r\n        ", ""), strings.Repeat("x", 3000)) {
		t.Error("human-readable part lost the long reply")
	}
}

func TestErrors(t *testing.T) {
	for name, mod := range map[string]func(*Input){
		"no host":        func(in *Input) { in.ReportingMTA = " " },
		"bad action":     func(in *Input) { in.Recipients[0].Action = "bounced" },
		"crlf in rcpt":   func(in *Input) { in.Recipients[0].Address = "a@b\r\nBcc: x@y" },
		"crlf in sender": func(in *Input) { in.Sender = "a@b\r\nBcc: x@y" },
		"bad postmaster": func(in *Input) { in.Postmaster = "Post Master <pm@x>" },
		"empty rcpt":     func(in *Input) { in.Recipients[0].Address = "" },
		"bad message id": func(in *Input) { in.MessageID = "<a@b>" },
		"crlf in host":   func(in *Input) { in.ReportingMTA = "a\nb" },
		"crlf in orcpt":  func(in *Input) { in.Recipients[0].ORcpt = "rfc822;a@b\nX: y" },
	} {
		in := baseInput()
		mod(&in)
		if _, ok, err := Build(in); err == nil || ok {
			t.Errorf("%s: Build = %v, %v; want an error", name, ok, err)
		}
	}
}

func TestPostmasterAndMessageID(t *testing.T) {
	in := baseInput()
	in.Postmaster = "bounces@tern.example"
	in.MessageID = "dsn-1@mta1.tern.example"
	r := build(t, in)
	if got := r.header.Get("From"); got != "Mail Delivery System <bounces@tern.example>" {
		t.Errorf("From = %q", got)
	}
	if got := r.header.Get("Message-ID"); got != "<dsn-1@mta1.tern.example>" {
		t.Errorf("Message-ID = %q", got)
	}
}

func TestUniqueMessageIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		r := build(t, baseInput())
		id := r.header.Get("Message-ID")
		if seen[id] {
			t.Fatalf("Message-ID %s repeated", id)
		}
		seen[id] = true
	}
}

func TestSplitMessage(t *testing.T) {
	for _, tc := range []struct{ in, h, b string }{
		{"A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n", "body\r\n"},
		{"A: 1\nB: 2\n\nbody\n", "A: 1\nB: 2\n", "body\n"},
		{"A: 1\r\n", "A: 1\r\n", "<nil>"},
		{"A: 1", "A: 1", "<nil>"},
		{"\r\nbody", "", "body"},
		{"A: 1\r\n\r\n", "A: 1\r\n", ""},
	} {
		h, b := splitMessage([]byte(tc.in))
		gb := string(b)
		if b == nil {
			gb = "<nil>"
		}
		if string(h) != tc.h || gb != tc.b {
			t.Errorf("splitMessage(%q) = %q, %q; want %q, %q", tc.in, h, gb, tc.h, tc.b)
		}
	}
}

func TestWriteLines(t *testing.T) {
	for _, tc := range []struct {
		in     string
		header bool
		want   string
	}{
		{"a\nb\r\nc\rd", false, "a\r\nb\r\nc\r\nd"},
		{"A: 1\nB: 2", true, "A: 1\r\nB: 2\r\n"},
		{strings.Repeat("x", 1000), false, strings.Repeat("x", 998) + "\r\nxx"},
		{"H: " + strings.Repeat("x", 1000) + "\n", true, "H: " + strings.Repeat("x", 995) + "\r\n " + strings.Repeat("x", 5) + "\r\n"},
	} {
		var b bytes.Buffer
		if err := writeLines(&b, []byte(tc.in), tc.header); err != nil {
			t.Fatal(err)
		}
		if b.String() != tc.want {
			t.Errorf("writeLines(%.20q, %v) = %.40q…, want %.40q…", tc.in, tc.header, b.String(), tc.want)
		}
	}
}
