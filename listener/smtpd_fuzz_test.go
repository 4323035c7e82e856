package listener_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// FuzzEngine sends arbitrary bytes to a listener as one client session
// and checks that the engine survives them: the session ends (the client
// has hung up its side) and no handler panicked. Unbalanced DATA, BDAT
// sizes, SASL exchanges and pipelined junk all go through the real
// server. Its seeds run as a plain test with the rest of the suite.
func FuzzEngine(f *testing.F) {
	for _, seed := range []string{
		"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n",
		"EHLO x\r\nMAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=a+2Bb\r\nRCPT TO:<x@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;x+2By@example.com\r\nBDAT 6\r\nab\r\ncdBDAT 0 LAST\r\n",
		"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.com>\r\nBDAT 999999999\r\nshort",
		"HELO x\r\nAUTH PLAIN\r\n*\r\nAUTH LOGIN dXNlcg==\r\ncGFzcw==\r\nAUTH CRAM-MD5\r\n=\r\n",
		"EHLO x\r\nMAIL FROM:<\"q\\\"x\"@b.example>\r\nRCPT TO:<@r1,@r2:x@example.com>\r\nDATA\r\n..\r\n.\n.\r\n\r\n.\r\n",
		"EHLO x\r\nSTARTTLS\r\nNOOP\r\n",
		"EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n" + strings.Repeat("x", 20000) + "\r\n.\r\n",
		"\x00\xff\r\n\r\n\n\n" + strings.Repeat("A", 5000) + "\r\nRSET\r\nVRFY x\r\nHELP\r\nEXPN x\r\n",
		// A line longer than the read buffer: the server hangs up with
		// the rest of it unread.
		"EHLO x\r\n" + strings.Repeat("x", 20000) + "\r\nQUIT\r\n",
	} {
		f.Add([]byte(seed))
	}
	ts := startServer(f, submissionConf)
	addr := ts.Addr("2525")
	seen := 0
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.Write(in)
			c.(*net.TCPConn).CloseWrite()
		}()
		// The server ends the session once its input ends, whatever
		// state the input left it in. A reset ends it too: a server that
		// hangs up (line too long, too many errors, QUIT) before reading
		// all that was sent closes with input unread, which TCP answers
		// with RST. Only a session left hanging is a failure.
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the session did not end: %v", err)
		}
		<-done
		logs := ts.Logs()
		if strings.Contains(logs[seen:], "panic") {
			t.Fatalf("a handler panicked on %q:\n%s", in, logs[seen:])
		}
		seen = len(logs)
	})
}
