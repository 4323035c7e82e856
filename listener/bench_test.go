package listener_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

// benchBody is a 4 KB message, the size of the end-to-end benchmark.
func benchBody() string {
	var b strings.Builder
	b.WriteString("From: s@example.org\r\nTo: r@example.com\r\nSubject: bench\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < 4096 {
		b.WriteString(line)
	}
	return b.String()
}

// BenchmarkInject measures the inbound path per message over reused
// connections: SMTP commands, DATA, header rewriting and a synced Put, with
// 16 parallel sessions so that syncs are grouped as in production.
func BenchmarkInject(b *testing.B) {
	ts := startServer(b, `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 127.0.0.1>
    always-allow-relaying yes
</source>`)
	body := benchBody()
	var n atomic.Int64
	b.SetParallelism(8) // 8 × GOMAXPROCS sessions
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := dial(b, ts.Addr("2525"))
		for pb.Next() {
			i := n.Add(1)
			if _, err := send(c, "s@example.org", []string{fmt.Sprintf("r%d@example.com", i)}, body); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
