package delivery

import (
	"bufio"
	"net"
	"strings"
	"testing"

	"github.com/ternmta/tern/queue"
)

// fastSink is a minimal SMTP server for benchmarks: it answers every
// command at once and swallows message data, so the client's cost shows.
func fastSink(b *testing.B) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReaderSize(c, 64<<10)
				bw := bufio.NewWriter(c)
				bw.WriteString("220 sink\r\n")
				bw.Flush()
				inData := false
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						return
					}
					if inData {
						if string(line) == ".\r\n" {
							inData = false
							bw.WriteString("250 2.0.0 ok\r\n")
						}
					} else {
						switch strings.ToUpper(string(line[:4])) {
						case "EHLO":
							bw.WriteString("250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
						case "DATA":
							inData = true
							bw.WriteString("354 go\r\n")
						case "QUIT":
							bw.WriteString("221 bye\r\n")
							bw.Flush()
							return
						default:
							bw.WriteString("250 ok\r\n")
						}
					}
					if br.Buffered() == 0 {
						bw.Flush()
					}
				}
			}()
		}
	}()
	b.Cleanup(func() { ln.Close() })
	return ln
}

// BenchmarkClientSend measures one outbound transaction (MAIL, RCPT, DATA
// pipelined, then a 4 KB body) over a reused connection.
func BenchmarkClientSend(b *testing.B) {
	ln := fastSink(b)
	sc := &scripted{ln: ln}
	oc := dialScripted(b, sc)
	defer oc.close()
	body := []byte("Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 52))
	env := queue.Envelope{Sender: "s@example.org"}
	rcpt := []queue.RecipientState{{Recipient: queue.Recipient{Address: "r@example.com"}}}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if res := oc.send(env, rcpt, body); res[0].code != 250 {
			b.Fatalf("send: %+v", res[0])
		}
	}
}
