package dsn

import (
	"testing"

	"github.com/ternmta/tern/queue"
)

// FuzzBuild checks that whatever the original message, reply and
// identifiers, a report that is built parses as a multipart/report with
// its three parts, CRLF line endings and lines within 998 octets.
func FuzzBuild(f *testing.F) {
	f.Add([]byte(original), "550 5.1.1 user unknown", "bob@example.org", "rfc822;Bob@example.org", "ENV1", true)
	f.Add([]byte("A: b\n\n\r\r\n."), "554-first\n554 second", "ü@x", "utf-8;ü@x", "", false)
	f.Add([]byte("no headers at all"), "timeout", "a@b", "", "\x00\x7f", true)
	f.Fuzz(func(t *testing.T, orig []byte, diag, addr, orcpt, envid string, full bool) {
		in := baseInput()
		in.Original = orig
		in.EnvID = envid
		if full {
			in.Ret = queue.RetFull
		}
		in.Recipients = []Recipient{{Address: addr, ORcpt: orcpt, Diagnostic: diag, RemoteMTA: "mx.example.org"}}
		msg, ok, err := Build(in)
		if err != nil || !ok {
			return
		}
		r := parse(t, msg)
		if len(r.parts) != 3 {
			t.Fatalf("parts = %v", r.types())
		}
		r.status(t)
	})
}
