package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/delivery/smtptest"
)

// intactMessage builds a message of about size bytes whose body has what
// can go wrong on the way: lines starting with dots (stuffed on the wire
// both ways), a lone dot, long lines, 8-bit bytes, and lines numbered so a
// lost or repeated piece shows.
func intactMessage(marker string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: app@example.org\r\nTo: r@dest.test\r\nSubject: intact %s\r\nX-Test-Marker: %s\r\n\r\n", marker, marker)
	for i := 0; b.Len() < size; i++ {
		switch i % 7 {
		case 0:
			fmt.Fprintf(&b, ".%06d starts with a dot\r\n", i)
		case 1:
			b.WriteString(".\r\n")
		case 2:
			fmt.Fprintf(&b, "%06d %s\r\n", i, strings.Repeat("long", 300))
		case 3:
			fmt.Fprintf(&b, "%06d caf\xc3\xa9 \xe2\x82\xac\r\n", i)
		default:
			fmt.Fprintf(&b, "%06d plain line\r\n", i)
		}
	}
	return b.Bytes()
}

// Messages of every size around the buffers on the way (4 KB header
// reader, 16 KB SMTP read buffer) and well past them arrive byte for byte
// as they were sent, with only the Received header added on top.
func TestPipelineMessagesArriveIntact(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dns := dnstest.Start(t, zones("dest.test"))
	sink := smtptest.Start(t, smtptest.Options{Addr: sinkIP + ":0"})
	smtpPort := freePort(t)
	conf := writeConf(t, dir, baseConf(dir, smtpPort, dns.Addr(), sink.Port(), ""))
	p := startTern(t, conf)
	addr := fmt.Sprintf("127.0.0.1:%d", smtpPort)

	sizes := []int{100, 4095, 4096, 4097, 5000, 16383, 16384, 16385, 70000, 1 << 20}
	sent := map[string][]byte{}
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range sizes {
		m := fmt.Sprintf("size-%d", size)
		msg := intactMessage(m, size)
		sent[m] = msg
		if err := c.SendMail("app@example.org", []string{"r@dest.test"}, bytes.NewReader(msg)); err != nil {
			t.Fatalf("sending %s: %v", m, err)
		}
	}
	c.Quit()

	got := byMarker(t, sink.WaitMessages(t, len(sizes), deliverTimeout))
	for m, want := range sent {
		msg, ok := got[m]
		if !ok {
			t.Errorf("%s did not arrive", m)
			continue
		}
		checkIntact(t, m, msg, want)
	}
	p.stop(t)
}

// checkIntact fails unless m is want with a Received header on top.
func checkIntact(t *testing.T, what string, m smtptest.Message, want []byte) {
	t.Helper()
	added, ok := bytes.CutSuffix(m.Data, want)
	switch {
	case !ok:
		i := 0
		for i < len(m.Data) && i < len(want) && m.Data[len(m.Data)-1-i] == want[len(want)-1-i] {
			i++
		}
		t.Errorf("%s arrived changed: %d bytes, sent %d; the last %d bytes agree", what, len(m.Data), len(want), i)
	case !bytes.HasPrefix(added, []byte("Received: ")) || bytes.Count(added, []byte("\r\n")) > 3:
		t.Errorf("%s arrived with %q added, want only a Received header", what, added)
	}
}
