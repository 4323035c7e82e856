package smtptest

import (
	"bufio"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Hostile receivers, for the tests that prove a sending MTA stays bounded
// (in memory and time) whatever the server at the other end does.

// Hostility is how a hostile receiver misbehaves.
type Hostility int

// The hostile behaviours.
const (
	// EndlessGreeting sends "220-" lines for ever and never ends the
	// greeting.
	EndlessGreeting Hostility = iota
	// NoCRLFGreeting sends a greeting that never ends its line.
	NoCRLFGreeting
	// EndlessEHLO greets normally, then answers EHLO with "250-" lines
	// for ever.
	EndlessEHLO
	// EndlessDataReply takes the message, then answers the final dot with
	// "250-" lines for ever.
	EndlessDataReply
	// NeverAnswer accepts the connection and says nothing.
	NeverAnswer
	// AcceptAndClose accepts the connection and closes it at once.
	AcceptAndClose
)

// Hostile is a running hostile receiver.
type Hostile struct {
	ln    net.Listener
	how   Hostility
	conns atomic.Int64
	sent  atomic.Int64 // bytes written to clients
	wg    sync.WaitGroup
	done  chan struct{}
}

// StartHostile starts a receiver that misbehaves as how, on addr (such as
// "127.0.0.30:0"), and stops it when t ends. Its connections end when the
// client closes them or the receiver stops.
func StartHostile(t testing.TB, addr string, how Hostility) *Hostile {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("smtptest: hostile listener: %v", err)
	}
	h := &Hostile{ln: ln, how: how, done: make(chan struct{})}
	h.wg.Add(1)
	go h.accept()
	t.Cleanup(h.Close)
	return h
}

// Addr returns the address the receiver listens on.
func (h *Hostile) Addr() string { return h.ln.Addr().String() }

// Port returns its port.
func (h *Hostile) Port() int { return h.ln.Addr().(*net.TCPAddr).Port }

// Conns returns how many connections it accepted.
func (h *Hostile) Conns() int { return int(h.conns.Load()) }

// Sent returns how many bytes it wrote to its clients.
func (h *Hostile) Sent() int64 { return h.sent.Load() }

// Close stops it and waits for its connections to end.
func (h *Hostile) Close() {
	select {
	case <-h.done:
		return
	default:
	}
	close(h.done)
	h.ln.Close()
	h.wg.Wait()
}

func (h *Hostile) accept() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		h.conns.Add(1)
		h.wg.Add(1)
		go h.serve(c)
	}
}

// stream writes line again and again until the client goes away or the
// receiver stops.
func (h *Hostile) stream(c net.Conn, line string) {
	buf := []byte(strings.Repeat(line, 64))
	for {
		select {
		case <-h.done:
			return
		default:
		}
		c.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := c.Write(buf)
		h.sent.Add(int64(n))
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue // the client is not reading: keep the pressure on
			}
			return
		}
	}
}

// maxHostileRead is the most a Hostile server reads from one connection.
const maxHostileRead = 64 << 20

func (h *Hostile) serve(c net.Conn) {
	defer h.wg.Done()
	defer c.Close()
	go func() {
		<-h.done
		c.Close()
	}()
	// What one connection may send is capped, so a client gone wrong
	// cannot grow a line without end in a test's memory.
	r := bufio.NewReader(io.LimitReader(c, maxHostileRead))
	// readLine reads one command line; the client is a real MTA whose
	// lines are short, and the deadline keeps a silent one from holding
	// the receiver's goroutine.
	readLine := func() (string, bool) {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		l, err := r.ReadString('\n')
		return strings.TrimSpace(l), err == nil
	}
	write := func(s string) bool {
		n, err := c.Write([]byte(s))
		h.sent.Add(int64(n))
		return err == nil
	}
	switch h.how {
	case AcceptAndClose:
		return
	case NeverAnswer:
		<-h.done
		return
	case EndlessGreeting:
		h.stream(c, "220-hostile.test greets you, at length\r\n")
		return
	case NoCRLFGreeting:
		write("220 hostile.test ")
		h.stream(c, "x")
		return
	}
	write("220 hostile.test ESMTP\r\n")
	for {
		l, ok := readLine()
		if !ok {
			return
		}
		cmd := strings.ToUpper(l)
		switch {
		case strings.HasPrefix(cmd, "EHLO"):
			if h.how == EndlessEHLO {
				h.stream(c, "250-X-HOSTILE this extension list never ends\r\n")
				return
			}
			write("250-hostile.test\r\n250 PIPELINING\r\n")
		case strings.HasPrefix(cmd, "HELO"), strings.HasPrefix(cmd, "MAIL"), strings.HasPrefix(cmd, "RCPT"),
			strings.HasPrefix(cmd, "RSET"), strings.HasPrefix(cmd, "NOOP"):
			write("250 ok\r\n")
		case cmd == "DATA":
			write("354 go on\r\n")
			for {
				l, ok := readLine()
				if !ok {
					return
				}
				if l == "." {
					break
				}
			}
			h.stream(c, "250-still thinking about your message\r\n")
			return
		case cmd == "QUIT":
			write("221 bye\r\n")
			return
		default:
			write("500 what\r\n")
		}
	}
}
