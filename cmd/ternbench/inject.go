package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ternmta/tern/delivery/smtptest/world"
)

// injectResult is what an injection achieved.
type injectResult struct {
	Accepted int           // messages answered 250 at the end of DATA
	Failed   int           // messages refused or lost with their connection
	Elapsed  time.Duration // from the first dial to the last reply
	FirstErr error         // the first failure, for the log
	// Refused are the messages not accepted, by Seq.
	Refused map[int]bool
}

// inject sends msgs to the SMTP server at addr over sessions parallel
// connections, each message its own transaction, connections reused. It
// stops early when ctx ends.
func inject(ctx context.Context, addr string, msgs []world.Message, sessions int) injectResult {
	var next atomic.Int64
	var mu sync.Mutex
	res := injectResult{Refused: make(map[int]bool)}
	fail := func(m *world.Message, err error) {
		mu.Lock()
		defer mu.Unlock()
		res.Failed++
		res.Refused[m.Seq] = true
		if res.FirstErr == nil {
			res.FirstErr = fmt.Errorf("message %d: %w", m.Seq, err)
		}
	}
	begin := time.Now()
	var wg sync.WaitGroup
	for range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s *injSession
			defer func() {
				if s != nil {
					s.quit()
				}
			}()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(msgs) {
					return
				}
				m := &msgs[i]
				if s == nil {
					var err error
					if s, err = dialInjector(ctx, addr); err != nil {
						fail(m, err)
						continue
					}
				}
				ok, err := s.send(m)
				switch {
				case err != nil:
					// The connection is unusable: a new one for the next.
					s.close()
					s = nil
					fail(m, err)
				case !ok:
					fail(m, s.last)
				default:
					mu.Lock()
					res.Accepted++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(begin)
	return res
}

// injSession is one injecting SMTP connection.
type injSession struct {
	c    net.Conn
	tp   *textproto.Conn
	w    *bufio.Writer
	last error // the last refusal
}

const injectTimeout = 2 * time.Minute

func dialInjector(ctx context.Context, addr string) (*injSession, error) {
	d := net.Dialer{Timeout: 30 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &injSession{c: c, tp: textproto.NewConn(c), w: bufio.NewWriterSize(c, 16<<10)}
	_ = c.SetDeadline(time.Now().Add(injectTimeout))
	if _, _, err := s.tp.ReadResponse(220); err != nil {
		c.Close()
		return nil, fmt.Errorf("banner: %w", err)
	}
	if _, _, err := s.cmd(250, "EHLO injector.bench.test"); err != nil {
		c.Close()
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	return s, nil
}

// cmd sends a command and reads its reply, which must have code want.
// The reply comes from the MTA under test on loopback (Tern or the
// benchmark's own Postfix), not from a stranger: it is bounded in time by
// the session's deadline, and textproto's unbounded reading is accepted
// here, unlike in Tern's own client.
func (s *injSession) cmd(want int, format string, args ...any) (int, string, error) {
	if _, err := fmt.Fprintf(s.w, format+"\r\n", args...); err != nil {
		return 0, "", err
	}
	if err := s.w.Flush(); err != nil {
		return 0, "", err
	}
	return s.tp.ReadResponse(want)
}

// send runs one transaction: false with s.last set when the server
// refused the message (the session stays usable), an error when the
// connection failed.
func (s *injSession) send(m *world.Message) (bool, error) {
	_ = s.c.SetDeadline(time.Now().Add(injectTimeout))
	refused := func(err error) (bool, error) {
		if _, ok := err.(*textproto.Error); !ok {
			return false, err
		}
		s.last = err
		if _, _, err := s.cmd(250, "RSET"); err != nil {
			return false, err
		}
		return false, nil
	}
	if _, _, err := s.cmd(250, "MAIL FROM:<%s>", m.From); err != nil {
		return refused(err)
	}
	accepted := 0
	for _, r := range m.To {
		if _, _, err := s.cmd(250, "RCPT TO:<%s>", r.Addr); err != nil {
			if _, ok := err.(*textproto.Error); !ok {
				return false, err
			}
			s.last = err
			continue
		}
		accepted++
	}
	if accepted < len(m.To) {
		return refused(s.last)
	}
	if _, _, err := s.cmd(354, "DATA"); err != nil {
		return refused(err)
	}
	// Load messages have no line starting with a dot: no stuffing needed.
	if _, err := s.w.Write(m.Data()); err != nil {
		return false, err
	}
	if _, _, err := s.cmd(250, "."); err != nil {
		if _, ok := err.(*textproto.Error); ok {
			s.last = err
			return false, nil
		}
		return false, err
	}
	return true, nil
}

func (s *injSession) quit() {
	_ = s.c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _, _ = s.cmd(221, "QUIT")
	s.close()
}

func (s *injSession) close() { s.c.Close() }
