package delivery_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery/dnstest"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/queue/queuetest"
)

// chainSink is an SMTP server that answers a message only once the next
// transaction's first command has arrived, or after a grace period: it
// tells apart a client that sent that command behind the message (in the
// same write) from one that waited for the reply.
type chainSink struct {
	ln net.Listener

	mu       sync.Mutex
	messages []string // senders, in order
	chained  int      // messages whose next MAIL came before their reply
	conns    int
}

func startChainSink(t *testing.T) *chainSink {
	t.Helper()
	ln, err := net.Listen("tcp", mx1+":0")
	if err != nil {
		t.Fatal(err)
	}
	cs := &chainSink{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cs.mu.Lock()
			cs.conns++
			cs.mu.Unlock()
			go cs.serve(c)
		}
	}()
	return cs
}

func (cs *chainSink) port() int { return cs.ln.Addr().(*net.TCPAddr).Port }

func (cs *chainSink) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	say := func(s string) { c.Write([]byte(s + "\r\n")) }
	say("220 chain.sink ESMTP")
	from := ""
	for {
		c.SetReadDeadline(time.Now().Add(wait))
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimRight(line, "\r\n"))
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			say("250-chain.sink")
			say("250 PIPELINING")
		case strings.HasPrefix(cmd, "MAIL FROM:"):
			from = strings.TrimRight(line[len("MAIL FROM:"):], "\r\n")
			say("250 2.1.0 ok")
		case strings.HasPrefix(cmd, "RCPT"):
			say("250 2.1.5 ok")
		case cmd == "DATA":
			say("354 go on")
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			// The next command, if the client sent it with the message,
			// is here well before the grace period ends.
			c.SetReadDeadline(time.Now().Add(time.Second))
			next, err := br.Peek(4)
			cs.mu.Lock()
			cs.messages = append(cs.messages, from)
			if err == nil && strings.EqualFold(string(next), "MAIL") {
				cs.chained++
			}
			cs.mu.Unlock()
			say("250 2.0.0 queued")
		case cmd == "QUIT":
			say("221 bye")
			return
		default:
			say("500 what")
		}
	}
}

func (cs *chainSink) stats() (msgs []string, chained, conns int) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return append([]string(nil), cs.messages...), cs.chained, cs.conns
}

// With one recipient per lease, every message is a lease of its own; the
// next lease is taken while a message is sent, and its message goes out
// behind it on the same connection. Each arrives exactly once.
func TestNextLeasePipelinedBehindMessage(t *testing.T) {
	t.Parallel()
	cs := startChainSink(t)
	h := newHarness(t, baseConfig(cs.port(), `
<domain chain.test>
    max-smtp-out 1
    max-rcpt-per-transaction 1
</domain>
`), dnstest.Zones{"chain.test": {A: []string{mx1}}})
	const n = 10
	for i := range n {
		h.putMsg(chainMessage(i))
	}
	h.run()
	h.waitEmpty()
	msgs, chained, conns := cs.stats()
	if len(msgs) != n {
		t.Fatalf("the sink got %d messages, want %d: %v", len(msgs), n, msgs)
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		if seen[m] {
			t.Errorf("%s arrived twice", m)
		}
		seen[m] = true
	}
	// All but the last had the next one behind them.
	if chained != n-1 || conns != 1 {
		t.Errorf("%d of %d messages had the next one pipelined behind them over %d connections, want %d over 1", chained, n, conns, n-1)
	}
	for i := range n {
		checkAttempt(t, h, fmt.Sprintf("r%d@chain.test", i), "delivered", "250")
	}
}

// chainMessage is message i, its sender naming it.
func chainMessage(i int) queue.Message {
	m := queuetest.Message("mta1", fmt.Sprintf("r%d@chain.test", i))
	m.Envelope.Sender = fmt.Sprintf("s%d@example.org", i)
	return m
}
