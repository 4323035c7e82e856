package listener_test

// Durability tests: what a client was told is what the spool holds. Every
// test runs real sockets against a real go-smtp client and inspects the
// spool by closing the queue and opening it again, so the answer comes from
// disk (or from a crash image of it), never from the live index.
//
// Helpers here are prefixed dur so they cannot collide with the shared
// harness of the functional tests.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/emersion/go-smtp"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/listener"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// durLog is where the listener and the queue log; TERN_TEST_LOG=1 shows it.
func durLog() *slog.Logger {
	if os.Getenv("TERN_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// durFreePort returns a loopback port that was free a moment ago.
func durFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// durConfigSrc is the configuration of these tests: one listener where
// 127.0.0.1 may relay (4K messages, X-Virtual-MTA honoured) and one whose
// named source may not relay.
const durConfigSrc = `
host-name tern.test
total-max-smtp-in 400
smtp-listener 127.0.0.1:%d
smtp-listener 127.0.0.1:%d source=strict

<source 0/0>
    always-allow-relaying no
</source>
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-virtual-mta yes
    default-virtual-mta mta1
    max-message-size 4K
</source>
<source strict>
    always-allow-relaying no
</source>

<virtual-mta mta1>
</virtual-mta>
<virtual-mta mta2>
</virtual-mta>
`

// durServer is a running listener.Server of durConfigSrc.
type durServer struct {
	srv    *listener.Server
	relay  string // the listener where 127.0.0.1 may relay
	strict string // the listener where nobody may relay
	down   atomic.Bool
}

func durStart(t *testing.T, spool listener.Spooler) *durServer {
	t.Helper()
	relay, strict := durFreePort(t), durFreePort(t)
	src := fmt.Sprintf(durConfigSrc, relay, strict)
	cfg, err := config.Parse("durability.conf", []byte(src), config.Options{Hostname: "tern.test"})
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	reg, err := vmta.Build(cfg)
	if err != nil {
		t.Fatalf("vmta.Build: %v", err)
	}
	srv := listener.New(listener.Options{
		Spool:          spool,
		Logger:         durLog(),
		CommandTimeout: 30 * time.Second,
		WriteTimeout:   30 * time.Second,
	})
	if err := srv.Apply(cfg, reg); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	s := &durServer{srv: srv, relay: fmt.Sprintf("127.0.0.1:%d", relay), strict: fmt.Sprintf("127.0.0.1:%d", strict)}
	t.Cleanup(func() { s.shutdown(t) })
	return s
}

// shutdown stops the server, waiting for every session to end, so that
// whatever a session was doing has reached the spool (or not) for good.
func (s *durServer) shutdown(t *testing.T) {
	t.Helper()
	if s.down.Swap(true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// durDial connects a go-smtp client and says EHLO.
func durDial(t testing.TB, addr string) *smtp.Client {
	t.Helper()
	c, err := durTryDial(addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func durTryDial(addr string) (*smtp.Client, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout = 30 * time.Second
	c.SubmissionTimeout = 30 * time.Second
	if err := c.Hello("client.test"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// durMessage is a small message carrying marker in X-Test-Seq and in its
// Message-ID, padded to about size bytes; extra header lines go on top.
func durMessage(marker string, size int, extra ...string) string {
	var b strings.Builder
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "From: <sender@client.test>\r\nTo: <rcpt@a.example>\r\nSubject: durability %s\r\n", marker)
	fmt.Fprintf(&b, "Message-ID: <%s@client.test>\r\nX-Test-Seq: %s\r\n\r\nbody of %s\r\n", marker, marker, marker)
	for b.Len() < size {
		b.WriteString("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n")
	}
	return b.String()
}

var durOKReply = regexp.MustCompile(`^2\.0\.0 OK ([0-9a-f]{16})$`)

// durSend runs one transaction. On success it returns the queue id from the
// 250 reply; on a refusal the *smtp.SMTPError, after an RSET so that the
// connection can go on.
func durSend(c *smtp.Client, from string, to []string, msg string) (queue.ID, error) {
	id, err := durTransaction(c, from, to, msg)
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		_ = c.Reset()
	}
	return id, err
}

func durTransaction(c *smtp.Client, from string, to []string, msg string) (queue.ID, error) {
	if err := c.Mail(from, nil); err != nil {
		return 0, err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return 0, err
		}
	}
	w, err := c.Data()
	if err != nil {
		return 0, err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return 0, err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return 0, err
	}
	return durParseOK(resp.StatusText)
}

func durParseOK(text string) (queue.ID, error) {
	m := durOKReply.FindStringSubmatch(text)
	if m == nil {
		return 0, fmt.Errorf("250 reply %q carries no queue id", text)
	}
	return queue.ParseID(m[1])
}

// durWantReply checks that err is the SMTP reply code/enhanced.
func durWantReply(t *testing.T, what string, err error, code int, enhanced smtp.EnhancedCode) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s: got %v, want %d %v", what, err, code, enhanced)
	}
	if se.Code != code || se.EnhancedCode != enhanced {
		t.Fatalf("%s: got %d %v %q, want %d %v", what, se.Code, se.EnhancedCode, se.Message, code, enhanced)
	}
}

// durStored is one message as the spool holds it.
type durStored struct {
	ID     queue.ID
	Marker string // X-Test-Seq
	Env    queue.Envelope
	Rcpts  []queue.RecipientState
	Body   string
}

var durSeqHeader = regexp.MustCompile(`(?m)^X-Test-Seq: (\S+)\r$`)

// durOpen opens the spool in dir; the caller closes it.
func durOpen(t *testing.T, dir string, fs vfs.FS) *queue.Queue {
	t.Helper()
	q, err := queue.Open(queue.Options{Dir: dir, FS: fs, Logger: durLog(), CacheSize: 8 << 20, MemTableSize: 8 << 20})
	if err != nil {
		t.Fatalf("queue.Open(%s): %v", dir, err)
	}
	return q
}

// durSpooled opens the spool in dir, leases everything in it and returns
// every message: envelope, every recipient still queued and the body; it
// closes the queue again. It fails the test on a message that is only
// partly there (a recipient without its envelope or body, a gap in its
// recipients, a body without exactly one marker), and unless the Totals of
// the reopened queue agree with what was leased.
func durSpooled(t *testing.T, dir string, fs vfs.FS) map[queue.ID]*durStored {
	t.Helper()
	q := durOpen(t, dir, fs)
	defer func() {
		if err := q.Close(); err != nil {
			t.Errorf("Close of the reopened spool: %v", err)
		}
	}()
	ctx := context.Background()
	out := map[queue.ID]*durStored{}
	nrcpt := 0
	for _, ks := range q.Keys(queue.Selector{}) {
		l, err := q.Lease(ctx, ks.Key, 1<<30)
		if err != nil {
			t.Fatalf("Lease(%s): %v", ks.Key, err)
		}
		if l == nil {
			t.Fatalf("key %s has %d recipients but nothing to lease", ks.Key, ks.Total())
		}
		for _, e := range l.Messages {
			m := out[e.ID]
			if m == nil {
				body, err := l.Body(e.ID)
				if err != nil {
					t.Fatalf("message %s has recipients but no body: %v", e.ID, err)
				}
				seq := durSeqHeader.FindAllStringSubmatch(string(body), -1)
				if len(seq) != 1 {
					t.Fatalf("message %s: %d X-Test-Seq headers in %q", e.ID, len(seq), body)
				}
				m = &durStored{ID: e.ID, Marker: seq[0][1], Env: e.Envelope, Body: string(body)}
				out[e.ID] = m
			}
			m.Rcpts = append(m.Rcpts, e.Recipients...)
			nrcpt += len(e.Recipients)
		}
	}
	for _, m := range out {
		slices.SortFunc(m.Rcpts, func(a, b queue.RecipientState) int { return a.N - b.N })
		for i, r := range m.Rcpts {
			if r.N != i {
				t.Fatalf("message %s (%s): recipient %d missing, the spool has %d of them", m.ID, m.Marker, i, len(m.Rcpts))
			}
		}
	}
	if tot := q.Totals(); tot.Messages != len(out) || tot.Recipients != nrcpt {
		t.Fatalf("reopened spool: Totals %d messages, %d recipients; leased %d messages, %d recipients",
			tot.Messages, tot.Recipients, len(out), nrcpt)
	}
	return out
}

// durByMarker indexes messages by their marker; a marker may occur more
// than once (a retried transaction).
func durByMarker(ms map[queue.ID]*durStored) map[string][]*durStored {
	out := map[string][]*durStored{}
	for _, m := range ms {
		out[m.Marker] = append(out[m.Marker], m)
	}
	return out
}

// durSwap is a Spooler whose queue can be replaced: after a failed sync
// the queue refuses writes until it is reopened, and the daemon would
// reopen it; the listener itself only sees a Spooler.
type durSwap struct{ q atomic.Pointer[queue.Queue] }

func (s *durSwap) Put(ctx context.Context, m queue.Message) (queue.ID, error) {
	return s.q.Load().Put(ctx, m)
}

// durWaitFor polls cond until it holds or the deadline passes. It is for
// conditions the code under test gives no event for (a closed listener).
func durWaitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: still not %s", within, what)
		}
		<-tick.C
	}
}

// TestDurabilitySpooledIffAccepted: a transaction answered 250 is in the
// spool under the id of the reply, with the recipients the client got 250
// for; a transaction refused at MAIL, RCPT or DATA, reset, or cut off
// before the final dot leaves nothing. "disk" checks by closing and
// reopening the queue; "crash" checks after every 250 that a crash image
// holding only synced data already has the message.
func TestDurabilitySpooledIffAccepted(t *testing.T) {
	for _, mode := range []string{"disk", "crash"} {
		t.Run(mode, func(t *testing.T) {
			var fs vfs.FS = vfs.Default
			dir := t.TempDir()
			var mem *vfs.MemFS
			if mode == "crash" {
				mem = vfs.NewCrashableMem()
				fs, dir = mem, "spool"
			}
			q := durOpen(t, dir, fs)
			closed := false
			t.Cleanup(func() {
				if !closed {
					q.Close()
				}
			})
			s := durStart(t, q)

			want := map[string]queue.ID{} // accepted marker -> id
			wantRcpts := map[string][]string{}
			refused := []string{}
			accept := func(marker string, id queue.ID, err error, rcpts ...string) {
				t.Helper()
				if err != nil {
					t.Fatalf("%s: %v", marker, err)
				}
				want[marker], wantRcpts[marker] = id, rcpts
				if mem != nil {
					// Only what was synced survives this image: the 250 must
					// not have gone out before the sync.
					img := mem.CrashClone(vfs.CrashCloneCfg{})
					got := durByMarker(durSpooled(t, "spool", img))[marker]
					if len(got) != 1 || got[0].ID != id {
						t.Fatalf("%s: answered 250 %s, but a crash right after leaves %v", marker, id, got)
					}
				}
			}

			c := durDial(t, s.relay)
			id, err := durSend(c, "sender@client.test", []string{"one@a.example"}, durMessage("ok-1", 200))
			accept("ok-1", id, err, "one@a.example")

			rc := []string{"x@a.example", "y@b.example", "z@B.Example"}
			id, err = durSend(c, "sender@client.test", rc, durMessage("ok-multi", 200))
			accept("ok-multi", id, err, rc...)

			// A refused recipient is not queued; the others are.
			if err := c.Mail("sender@client.test", nil); err != nil {
				t.Fatal(err)
			}
			if err := c.Rcpt("good@a.example", nil); err != nil {
				t.Fatal(err)
			}
			badDomain := "bad@" + strings.Repeat("l", 64) + ".example" // a label over 63 octets
			durWantReply(t, "RCPT to "+badDomain, c.Rcpt(badDomain, nil), 501, smtp.EnhancedCode{5, 1, 3})
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(w, durMessage("ok-partial", 100))
			resp, err := w.CloseWithResponse()
			if err != nil {
				t.Fatal(err)
			}
			id, err = durParseOK(resp.StatusText)
			accept("ok-partial", id, err, "good@a.example")

			// Too big, announced at MAIL.
			err = c.Mail("sender@client.test", &smtp.MailOptions{Size: 100000})
			durWantReply(t, "MAIL SIZE=100000", err, 552, smtp.EnhancedCode{5, 3, 4})
			refused = append(refused, "too-big-size")

			// Too big, found at DATA.
			_, err = durSend(c, "sender@client.test", []string{"big@a.example"}, durMessage("too-big-data", 5000))
			durWantReply(t, "5000-byte DATA", err, 552, smtp.EnhancedCode{5, 3, 4})
			refused = append(refused, "too-big-data")

			// Unknown VMTA.
			_, err = durSend(c, "sender@client.test", []string{"v@a.example"},
				durMessage("unknown-vmta", 100, "X-Virtual-MTA: nosuch"))
			durWantReply(t, "X-Virtual-MTA: nosuch", err, 550, smtp.EnhancedCode{5, 7, 1})
			refused = append(refused, "unknown-vmta")

			// A known VMTA in the header: queued there, header gone.
			id, err = durSend(c, "sender@client.test", []string{"v@a.example"},
				durMessage("ok-vmta", 100, "X-Virtual-MTA: mta2"))
			accept("ok-vmta", id, err, "v@a.example")

			// RSET in the middle of a transaction.
			if err := c.Mail("sender@client.test", nil); err != nil {
				t.Fatal(err)
			}
			if err := c.Rcpt("rset@a.example", nil); err != nil {
				t.Fatal(err)
			}
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}

			// Relaying denied on the strict listener; DATA without any
			// accepted recipient goes nowhere either.
			cs := durDial(t, s.strict)
			if err := cs.Mail("sender@client.test", nil); err != nil {
				t.Fatal(err)
			}
			durWantReply(t, "RCPT on the strict listener", cs.Rcpt("far@a.example", nil), 550, smtp.EnhancedCode{5, 7, 1})
			if w, err := cs.Data(); err == nil {
				io.WriteString(w, durMessage("relay-denied", 100))
				if _, err := w.CloseWithResponse(); err == nil {
					t.Fatal("DATA after a refused RCPT was accepted")
				}
			}
			refused = append(refused, "relay-denied")
			if err := cs.Quit(); err != nil {
				t.Fatal(err)
			}

			// The client goes away in the middle of DATA.
			cut := durDial(t, s.relay)
			if err := cut.Mail("sender@client.test", nil); err != nil {
				t.Fatal(err)
			}
			if err := cut.Rcpt("cut@a.example", nil); err != nil {
				t.Fatal(err)
			}
			w, err = cut.Data()
			if err != nil {
				t.Fatal(err)
			}
			msg := durMessage("cut-mid-data", 2000)
			io.WriteString(w, msg[:len(msg)/2])
			cut.Close()
			refused = append(refused, "cut-mid-data")

			// The first connection still works after all that.
			id, err = durSend(c, "", []string{"last@a.example"}, durMessage("ok-last", 100))
			accept("ok-last", id, err, "last@a.example")
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}

			// Every session has ended once Shutdown returns: the cut one
			// cannot still be on its way into the spool.
			s.shutdown(t)
			var got map[queue.ID]*durStored
			if mem != nil {
				got = durSpooled(t, "spool", mem.CrashClone(vfs.CrashCloneCfg{}))
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			closed = true
			if mem == nil {
				got = durSpooled(t, dir, fs)
			}

			byMarker := durByMarker(got)
			if len(got) != len(want) {
				t.Errorf("spool holds %d messages, want %d (the ones answered 250)", len(got), len(want))
			}
			for marker, id := range want {
				ms := byMarker[marker]
				if len(ms) != 1 {
					t.Errorf("%s (250 %s): %d copies in the spool", marker, id, len(ms))
					continue
				}
				m := ms[0]
				if m.ID != id {
					t.Errorf("%s: reply said %s, spool has %s", marker, id, m.ID)
				}
				var addrs []string
				for _, r := range m.Rcpts {
					addrs = append(addrs, r.Address)
				}
				if !slices.Equal(addrs, wantRcpts[marker]) {
					t.Errorf("%s: recipients %q, want %q", marker, addrs, wantRcpts[marker])
				}
				if strings.Contains(strings.ToLower(m.Body), "x-virtual-mta") {
					t.Errorf("%s: X-Virtual-MTA was spooled: %q", marker, m.Body)
				}
			}
			if m := byMarker["ok-vmta"]; len(m) == 1 && m[0].Rcpts[0].VMTA != "mta2" {
				t.Errorf("ok-vmta queued for VMTA %q, want mta2", m[0].Rcpts[0].VMTA)
			}
			if m := byMarker["ok-multi"]; len(m) == 1 && m[0].Rcpts[2].Domain != "b.example" {
				t.Errorf("ok-multi third recipient domain %q, want b.example", m[0].Rcpts[2].Domain)
			}
			for _, marker := range refused {
				if ms := byMarker[marker]; len(ms) != 0 {
					t.Errorf("%s was refused but the spool holds it as %s", marker, ms[0].ID)
				}
			}
			for marker := range byMarker {
				if _, ok := want[marker]; !ok {
					t.Errorf("spool holds %s, which no client was told 250 for", marker)
				}
			}
		})
	}
}

// durSyncFailures makes every WAL sync fail while it is on. Only the WAL:
// a failed MANIFEST sync is fatal to pebble in a background goroutine, and
// what matters to a client is the commit of its message.
func durSyncFailures() *errorfs.Toggle {
	return &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if strings.HasSuffix(op.Path, ".log") {
				return errorfs.ErrInjected
			}
		}
		return nil
	})}
}

// durWhole checks that every copy of a message refused with 451 that the
// spool kept anyway is complete. A failed sync does not unwrite the WAL
// record, so on a file system that kept the unsynced bytes the message can
// be there after reopening; it must then be whole (and will be delivered,
// besides the client's retry: at least once, never half).
func durWhole(t *testing.T, ms []*durStored, rcpts int) {
	t.Helper()
	for _, m := range ms {
		if len(m.Rcpts) != rcpts || !strings.Contains(m.Body, "body of "+m.Marker) {
			t.Errorf("%s refused with 451 is half there as %s: %d recipients, body %q", m.Marker, m.ID, len(m.Rcpts), m.Body)
		}
	}
}

// TestDurabilitySyncFailure: when the spool's sync fails the client gets
// 451 4.3.0, never 250. The queue then refuses writes until reopened
// (pebble's WAL is in an unknown state), so every DATA gets 451 4.3.0 until
// then; once the queue is reopened, a retry on the same connection and on a
// new one gets 250.
func TestDurabilitySyncFailure(t *testing.T) {
	dir := t.TempDir()
	inj := durSyncFailures()
	q1 := durOpen(t, dir, errorfs.Wrap(vfs.Default, inj))
	spool := &durSwap{}
	spool.q.Store(q1)
	s := durStart(t, spool)
	rcpts := []string{"a@a.example", "b@b.example"}
	spool451 := smtp.EnhancedCode{4, 3, 0}

	c1 := durDial(t, s.relay)
	before, err := durSend(c1, "sender@client.test", rcpts, durMessage("before", 300))
	if err != nil {
		t.Fatalf("before the failure: %v", err)
	}

	inj.On()
	_, err = durSend(c1, "sender@client.test", rcpts, durMessage("failed", 300))
	durWantReply(t, "DATA with a failing sync", err, 451, spool451)
	_, err = durSend(c1, "sender@client.test", rcpts, durMessage("failed", 300))
	durWantReply(t, "retry before the queue is reopened", err, 451, spool451)
	c2 := durDial(t, s.relay)
	_, err = durSend(c2, "sender@client.test", rcpts, durMessage("other", 300))
	durWantReply(t, "new connection before the queue is reopened", err, 451, spool451)

	inj.Off()
	err = q1.Close()
	t.Logf("Close after the failed sync: %v", err)

	q2 := durOpen(t, dir, vfs.Default)
	spool.q.Store(q2)
	retried, err := durSend(c1, "sender@client.test", rcpts, durMessage("failed", 300))
	if err != nil {
		t.Fatalf("retry on the same connection after reopening: %v", err)
	}
	after, err := durSend(c2, "sender@client.test", rcpts, durMessage("after", 300))
	if err != nil {
		t.Fatalf("new connection after reopening: %v", err)
	}
	c3 := durDial(t, s.relay)
	other, err := durSend(c3, "sender@client.test", rcpts, durMessage("other", 300))
	if err != nil {
		t.Fatalf("retry on a new connection after reopening: %v", err)
	}
	c1.Quit()
	c2.Quit()
	c3.Quit()
	s.shutdown(t)
	if err := q2.Close(); err != nil {
		t.Fatal(err)
	}

	got := durByMarker(durSpooled(t, dir, vfs.Default))
	for marker, id := range map[string]queue.ID{"before": before, "after": after} {
		if ms := got[marker]; len(ms) != 1 || ms[0].ID != id || len(ms[0].Rcpts) != len(rcpts) {
			t.Errorf("%s (250 %s): spool has %v", marker, id, ms)
		}
	}
	for marker, id := range map[string]queue.ID{"failed": retried, "other": other} {
		var acked, kept []*durStored
		for _, m := range got[marker] {
			if m.ID == id {
				acked = append(acked, m)
			} else {
				kept = append(kept, m)
			}
		}
		if len(acked) != 1 || len(acked[0].Rcpts) != len(rcpts) {
			t.Errorf("%s retried with 250 %s: spool has %v", marker, id, got[marker])
		}
		durWhole(t, kept, len(rcpts))
		t.Logf("%s: %d copies refused with 451 kept by the spool after reopen", marker, len(kept))
	}
	for marker := range got {
		if !slices.Contains([]string{"before", "after", "failed", "other"}, marker) {
			t.Errorf("unexpected message %s in the spool", marker)
		}
	}
}

// TestDurabilitySyncFailureConcurrent: sessions send without pause while
// the WAL sync starts failing. Each reply is 250 or 451 4.3.0; a crash
// image with only the synced data holds every message answered 250 and
// none answered 451, and the spool as left on disk holds every 250 and at
// most whole copies of the 451s.
func TestDurabilitySyncFailureConcurrent(t *testing.T) {
	const sessions, perSession, onAfter = 16, 100, 60
	mem := vfs.NewCrashableMem()
	inj := durSyncFailures()
	q := durOpen(t, "spool", errorfs.Wrap(mem, inj))
	s := durStart(t, q)

	var (
		mu      sync.Mutex
		acked   = map[string]queue.ID{}
		failed  []string
		enough  = make(chan struct{})
		nAcked  atomic.Int32
		wg      sync.WaitGroup
		started = make(chan struct{})
	)
	for g := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := durTryDial(s.relay)
			if err != nil {
				t.Errorf("session %d: %v", g, err)
				return
			}
			defer c.Close()
			<-started
			for i := range perSession {
				marker := fmt.Sprintf("g%02d-%03d", g, i)
				id, err := durSend(c, "sender@client.test", []string{marker + "@a.example"}, durMessage(marker, 100))
				if err != nil {
					var se *smtp.SMTPError
					if !errors.As(err, &se) || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) {
						t.Errorf("%s: got %v, want 250 or 451 4.3.0", marker, err)
					}
					mu.Lock()
					failed = append(failed, marker)
					mu.Unlock()
					return
				}
				mu.Lock()
				acked[marker] = id
				mu.Unlock()
				if nAcked.Add(1) == onAfter {
					close(enough)
				}
			}
		}()
	}
	close(started)
	select {
	case <-enough:
	case <-time.After(30 * time.Second):
		t.Fatal("sessions never got going")
	}
	inj.On()
	wg.Wait()
	if len(failed) != sessions {
		t.Fatalf("%d of %d sessions saw a 451; the injection came too late (%d acked)", len(failed), sessions, len(acked))
	}
	s.shutdown(t)
	image := mem.CrashClone(vfs.CrashCloneCfg{})
	inj.Off()
	if err := q.Close(); err == nil {
		t.Error("Close after a failed sync reported no error")
	}

	for name, fs := range map[string]vfs.FS{"crash image": image, "left on disk": mem} {
		got := durByMarker(durSpooled(t, "spool", fs))
		for marker, id := range acked {
			if ms := got[marker]; len(ms) != 1 || ms[0].ID != id {
				t.Errorf("%s: %s (250 %s) is %v", name, marker, id, ms)
			}
		}
		kept := 0
		for _, marker := range failed {
			durWhole(t, got[marker], 1)
			kept += len(got[marker])
		}
		if name == "crash image" && kept != 0 {
			t.Errorf("crash image holds %d messages that were refused with 451", kept)
		}
		if n := len(got); n != len(acked)+kept {
			t.Errorf("%s: %d messages, want %d acked + %d kept", name, n, len(acked), kept)
		}
		t.Logf("%s: %d acknowledged present, %d of %d refused-with-451 kept (whole)", name, len(acked), kept, len(failed))
	}
}

// TestDurabilityConcurrentSessions: 200 sessions send 20 messages each at
// once; every message gets 250 with its own id, and the spool holds each
// exactly once.
func TestDurabilityConcurrentSessions(t *testing.T) {
	const sessions, perSession = 200, 20
	dir := t.TempDir()
	q := durOpen(t, dir, vfs.Default)
	closed := false
	t.Cleanup(func() {
		if !closed {
			q.Close()
		}
	})
	s := durStart(t, q)
	domains := []string{"a.example", "b.example", "c.example", "d.example"}

	start := time.Now()
	ids := make([][]queue.ID, sessions)
	var wg sync.WaitGroup
	ready := make(chan struct{})
	for g := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := durTryDial(s.relay)
			if err != nil {
				t.Errorf("session %d: %v", g, err)
				return
			}
			defer c.Close()
			<-ready
			for i := range perSession {
				marker := fmt.Sprintf("s%03d-m%02d", g, i)
				rcpt := marker + "@" + domains[(g+i)%len(domains)]
				id, err := durSend(c, "sender@client.test", []string{rcpt}, durMessage(marker, 0))
				if err != nil {
					t.Errorf("%s: %v", marker, err)
					return
				}
				ids[g] = append(ids[g], id)
			}
			if err := c.Quit(); err != nil {
				t.Errorf("session %d QUIT: %v", g, err)
			}
		}()
	}
	close(ready)
	wg.Wait()
	sent := time.Since(start)
	if t.Failed() {
		t.FailNow()
	}

	seen := map[queue.ID]string{}
	for g := range ids {
		for i, id := range ids[g] {
			marker := fmt.Sprintf("s%03d-m%02d", g, i)
			if other, dup := seen[id]; dup {
				t.Fatalf("id %s answered for both %s and %s", id, other, marker)
			}
			seen[id] = marker
		}
	}
	if tot := q.Totals(); tot.Messages != sessions*perSession || tot.Recipients != sessions*perSession {
		t.Errorf("live queue: %d messages, %d recipients; want %d each", tot.Messages, tot.Recipients, sessions*perSession)
	}
	s.shutdown(t)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true

	got := durSpooled(t, dir, vfs.Default)
	if len(got) != sessions*perSession {
		t.Errorf("reopened spool holds %d messages, want %d", len(got), sessions*perSession)
	}
	markers := map[string]int{}
	for id, m := range got {
		markers[m.Marker]++
		if want, ok := seen[id]; !ok || want != m.Marker {
			t.Errorf("spool has %s as %s; the client was told %q", m.Marker, id, want)
		}
		if len(m.Rcpts) != 1 || !strings.HasPrefix(m.Rcpts[0].Address, m.Marker+"@") {
			t.Errorf("%s: recipients %v", m.Marker, m.Rcpts)
		}
	}
	for id, marker := range seen {
		if markers[marker] != 1 {
			t.Errorf("%s (250 %s) is in the spool %d times", marker, id, markers[marker])
		}
	}
	t.Logf("%d sessions x %d messages: all 250 in %v; verified after reopen in %v",
		sessions, perSession, sent.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// durProbe reports whether a new connection to addr is refused: the dial
// fails, or the server answers 421 and closes. A connection that gets a
// 220 greeting is closed at once so it does not hold up Shutdown.
func durProbe(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return true
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return true // closed without a greeting
	}
	if strings.HasPrefix(line, "421 4.3.2 ") {
		return true
	}
	io.WriteString(conn, "QUIT\r\n")
	return false
}

// TestDurabilityShutdownDrains: a session in the middle of DATA when
// Shutdown is called finishes its message and gets 250; new connections
// are refused from then on; a session with no transaction open does not
// hold the drain; Shutdown returns once the transaction has ended.
func TestDurabilityShutdownDrains(t *testing.T) {
	dir := t.TempDir()
	q := durOpen(t, dir, vfs.Default)
	s := durStart(t, q)

	// An idle session, as programs keep for their next message.
	idle := durDial(t, s.relay)
	if err := idle.Noop(); err != nil {
		t.Fatal(err)
	}
	c := durDial(t, s.relay)
	if err := c.Mail("sender@client.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("drain@a.example", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	msg := durMessage("drain", 2000)
	if _, err := io.WriteString(w, msg[:len(msg)/2]); err != nil {
		t.Fatal(err)
	}

	s.down.Store(true) // this test shuts down itself
	shutdownErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		shutdownErr <- s.srv.Shutdown(ctx)
	}()

	durWaitFor(t, 10*time.Second, "refusing new connections", func() bool {
		return durProbe(s.relay) && durProbe(s.strict)
	})
	// The idle session was hung up: its next command finds the
	// connection closed.
	durWaitFor(t, 10*time.Second, "the idle session hung up", func() bool {
		return idle.Noop() != nil
	})
	select {
	case err := <-shutdownErr:
		t.Fatalf("Shutdown returned (%v) while a transaction was in progress", err)
	default:
	}

	if _, err := io.WriteString(w, msg[len(msg)/2:]); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("DATA finished during Shutdown: %v", err)
	}
	id, err := durParseOK(resp.StatusText)
	if err != nil {
		t.Fatal(err)
	}
	// Its transaction over, the session is hung up rather than left to
	// hold the drain: Shutdown returns without the client's QUIT.
	select {
	case err := <-shutdownErr:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown did not return after the last transaction ended")
	}
	for _, addr := range []string{s.relay, s.strict} {
		if conn, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			conn.Close()
			t.Errorf("%s still accepts connections after Shutdown", addr)
		}
	}

	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	got := durByMarker(durSpooled(t, dir, vfs.Default))
	if ms := got["drain"]; len(ms) != 1 || ms[0].ID != id {
		t.Fatalf("drained message (250 %s): spool has %v", id, ms)
	}
	if len(got) != 1 {
		t.Fatalf("spool holds %d messages, want 1", len(got))
	}
}

// TestDurabilityShutdownDeadline: when Shutdown's deadline passes, the
// sessions still open are cut, and a transaction cut off before its final
// dot leaves nothing in the spool.
func TestDurabilityShutdownDeadline(t *testing.T) {
	dir := t.TempDir()
	q := durOpen(t, dir, vfs.Default)
	s := durStart(t, q)
	s.down.Store(true)

	idle := durDial(t, s.relay)
	busy := durDial(t, s.relay)
	if err := busy.Mail("sender@client.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := busy.Rcpt("cut@a.example", nil); err != nil {
		t.Fatal(err)
	}
	w, err := busy.Data()
	if err != nil {
		t.Fatal(err)
	}
	msg := durMessage("cut-at-deadline", 2000)
	if _, err := io.WriteString(w, msg[:len(msg)/2]); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.srv.Shutdown(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown with sessions open past its deadline: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown did not return after its deadline")
	}
	// The server closed both connections: the next command fails instead
	// of being answered.
	if err := idle.Noop(); err == nil {
		t.Error("an idle session outlived Shutdown's deadline")
	}
	io.WriteString(w, msg[len(msg)/2:])
	if _, err := w.CloseWithResponse(); err == nil {
		t.Error("a transaction was accepted after Shutdown's deadline cut its session")
	}

	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if got := durSpooled(t, dir, vfs.Default); len(got) != 0 {
		for _, m := range got {
			t.Errorf("spool holds %s (%s), cut before its final dot", m.Marker, m.ID)
		}
	}
}
