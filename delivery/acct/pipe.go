package acct

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ternmta/tern/config"
)

// Piped accounting: <acct-file |/path/to/program args>.
//
// A Pipe runs the program and writes the records to its standard input,
// as CSV lines in the same format as a file, the header line first. The
// program is a consumer Tern does not control: it may be slow, stop
// reading, exit or crash. None of that may hold up delivery, so records
// go into a bounded buffer in memory that one goroutine writes to the
// program; when the buffer is full, records are dropped and counted (a
// warning says so, at most every dropWarnEvery), never waited for. A
// program that exits, dies or closes its input is started again, after
// 1s, then 2s, 4s … up to a minute while it keeps failing, and gets what
// was still in the buffer (lines already in the kernel's pipe when it
// died are lost with it). At Close, what is buffered is written for at
// most pipeCloseWait, the program's input is closed, and it is given the
// rest of that time to exit before it is killed.
//
// Records reach a Pipe after they are in the spool (through the Journal,
// in tern serve), but the Pipe's buffer is memory only: what it holds
// when Tern is killed is lost for the program. Files are the durable
// record.

const (
	// pipeBufferBytes bounds the lines a Pipe holds for its program:
	// some 10,000 records, tens of seconds of a busy server's records
	// for a program that stalls or restarts.
	pipeBufferBytes = 4 << 20
	// pipeChunk is how much one write to the program carries at most.
	pipeChunk = 64 << 10
	// pipeMinBackoff and pipeMaxBackoff bound the wait before starting
	// a program that ended; the wait doubles while it keeps ending, and
	// starts again from the least once it ran for pipeMaxBackoff.
	pipeMinBackoff = time.Second
	pipeMaxBackoff = time.Minute
	// pipeCloseWait bounds Close: writing what is buffered and waiting
	// for the program to exit after its input is closed.
	pipeCloseWait = 5 * time.Second
	// dropWarnEvery is the least time between two warnings about
	// dropped records, so a stalled program does not flood the log.
	dropWarnEvery = 10 * time.Second
	// stderrTail is how much of the program's standard error the log
	// line about its end quotes (the end of it).
	stderrTail = 512
)

// errStopping ends a Pipe's feeding when it is closed.
var errStopping = errors.New("acct: pipe closing")

// Pipe writes accounting records to the standard input of a program. It
// is safe for concurrent use.
type Pipe struct {
	argv      []string
	name      string // "|" and the command line, for logs
	log       *slog.Logger
	now       func() time.Time
	journaled bool
	limit     int
	// minBackoff and maxBackoff are pipeMinBackoff and pipeMaxBackoff
	// but in tests.
	minBackoff, maxBackoff time.Duration
	closeWait              time.Duration

	// types is the typeBits of the records written; lay the columns.
	// Both change with Reconfigure, lock-free for the writers.
	types atomic.Uint32
	lay   atomic.Pointer[layout]

	mu sync.Mutex
	// queue holds the lines not yet written whole to the program, oldest
	// first, each with the layout it was made with (a reload changing the
	// columns sends the new header line before the first line in them).
	queue  []pipeLine
	queued int // bytes in queue
	// dropped counts the records dropped since the Pipe opened;
	// unwarned those no warning has counted yet, lastWarn the last one.
	dropped  uint64
	unwarned uint64
	lastWarn time.Time
	closed   bool
	closeBy  time.Time
	// stdin is the running program's input, for Close to bound a write
	// blocked on it.
	stdin *os.File

	wake   chan struct{} // lines were queued (capacity 1)
	stop   chan struct{} // closed by Close
	done   chan struct{} // closed when the feeding goroutine ends
	starts atomic.Int64  // programs started, for tests
}

// pipeLine is a line waiting for the program.
type pipeLine struct {
	lay  *layout
	line []byte
}

// OpenPipe starts the program of cfg (cfg.Command) and the goroutine that
// feeds it. It fails when the program cannot be started at all (not
// found, not executable), so that a reload naming it is refused; a
// program that starts and exits at once is restarted as one that dies
// later.
func OpenPipe(cfg *config.AcctFile, opts Options) (*Pipe, error) {
	if len(cfg.Command) == 0 {
		return nil, errors.New("acct: a pipe needs a program")
	}
	p := &Pipe{
		argv: append([]string(nil), cfg.Command...), name: cfg.Name(),
		log: opts.Logger, now: opts.Now, journaled: opts.Journaled,
		limit: opts.pipeBuffer, minBackoff: opts.pipeBackoff, maxBackoff: pipeMaxBackoff, closeWait: pipeCloseWait,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("acct-file", p.name)
	if p.now == nil {
		p.now = time.Now
	}
	if p.limit <= 0 {
		p.limit = pipeBufferBytes
	}
	if p.minBackoff <= 0 {
		p.minBackoff = pipeMinBackoff
	}
	if opts.pipeCloseWait > 0 {
		p.closeWait = opts.pipeCloseWait
	}
	if opts.pipeMaxBackoff > 0 {
		p.maxBackoff = opts.pipeMaxBackoff
	}
	p.maxBackoff = max(p.maxBackoff, p.minBackoff)
	st := settingsOf(cfg)
	p.types.Store(st.types)
	p.lay.Store(st.lay)
	pr, err := p.start()
	if err != nil {
		return nil, fmt.Errorf("acct: %s: %w", p.name, err)
	}
	go p.run(pr)
	return p, nil
}

// Name returns "|" and the program's command line.
func (p *Pipe) Name() string { return p.name }

// Accepts reports whether records of type t go to the program.
func (p *Pipe) Accepts(t byte) bool { return p.types.Load()&typeBit(t) != 0 }

// Dropped returns how many records were dropped because the program did
// not read them fast enough.
func (p *Pipe) Dropped() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropped
}

// current returns the settings in effect, for comparing with a new block.
func (p *Pipe) current() settings {
	return settings{types: p.types.Load(), perm: filePerm, lay: p.lay.Load()}
}

// Reconfigure applies the records and record-fields of cfg from the next
// record on; the program keeps running (its command line is what makes
// it the same pipe). Other columns send their header line before the
// first record in them.
func (p *Pipe) Reconfigure(cfg *config.AcctFile) {
	st := settingsOf(cfg)
	p.types.Store(st.types)
	if p.lay.Load().sig != st.lay.sig {
		p.lay.Store(st.lay)
	}
}

// Write queues r for the program if it takes r's type; a zero TimeLogged
// is set to now. It never waits for the program: when the buffer is full
// the record is dropped (see Dropped) and Write returns nil. A Pipe
// opened with Options.Journaled refuses records with ErrJournaled: its
// Journal sends them.
func (p *Pipe) Write(r Record) error {
	if !validType(r.Type) {
		return fmt.Errorf("acct: unknown record type %q", r.Type)
	}
	if p.journaled {
		return ErrJournaled
	}
	if !p.Accepts(r.Type) {
		return nil
	}
	if r.TimeLogged.IsZero() {
		r.TimeLogged = p.now()
	}
	e := encoders.Get().(*encoder)
	defer encoders.Put(e)
	lay := p.lay.Load()
	line, err := e.lineFor(&r, lay)
	if err != nil {
		return err
	}
	return p.enqueue(lay, line)
}

// enqueue adds a copy of line, made with lay, to the queue, or drops it
// when the queue is full.
func (p *Pipe) enqueue(lay *layout, line []byte) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	if p.queued+len(line) > p.limit {
		p.dropped++
		p.unwarned++
		now := p.now()
		if !p.lastWarn.IsZero() && now.Sub(p.lastWarn) < dropWarnEvery {
			p.mu.Unlock()
			return nil
		}
		n, total := p.unwarned, p.dropped
		p.unwarned, p.lastWarn = 0, now
		p.mu.Unlock()
		p.log.Warn("accounting program does not keep up; records dropped", "dropped", n, "dropped_total", total)
		return nil
	}
	p.queue = append(p.queue, pipeLine{lay, bytes.Clone(line)})
	p.queued += len(line)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

// Close writes what is buffered to the program, closes its input and
// waits for it to exit, all within pipeCloseWait; a program still running
// then is killed. Later Writes return ErrClosed. Closing twice returns
// nil.
func (p *Pipe) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.done
		return nil
	}
	p.closed = true
	p.closeBy = time.Now().Add(p.closeWait)
	if p.stdin != nil {
		// A write blocked on a program that does not read returns then.
		_ = p.stdin.SetWriteDeadline(p.closeBy)
	}
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	return nil
}

// proc is one run of the program.
type proc struct {
	cmd     *exec.Cmd
	stdin   *os.File
	stderr  *tailWriter
	started time.Time
	exited  chan struct{} // closed once Wait returned
	err     error         // Wait's result, once exited is closed
}

// start starts the program with a new pipe on its standard input.
func (p *Pipe) start() (*proc, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Stdin = r
	tail := &tailWriter{}
	cmd.Stderr = tail
	// Its own process group: a ^C meant for a tern serve run from a
	// terminal does not kill the program before Tern has written the
	// last records to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A child of the program that keeps standard error open does not
	// hold up Wait.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	r.Close() // the program's end
	pr := &proc{cmd: cmd, stdin: w, stderr: tail, started: time.Now(), exited: make(chan struct{})}
	go func() {
		pr.err = cmd.Wait()
		close(pr.exited)
	}()
	p.starts.Add(1)
	return pr, nil
}

// run feeds the program, starting it again whenever it ends, until Close.
func (p *Pipe) run(pr *proc) {
	defer close(p.done)
	backoff := p.minBackoff
	for {
		err := p.feed(pr)
		if p.isClosed() {
			p.shutdown(pr)
			return
		}
		ran := time.Since(pr.started)
		p.end(pr)
		if ran >= p.maxBackoff {
			backoff = p.minBackoff // it worked for a while: not a crash loop
		}
		p.log.Warn("accounting program ended; starting it again", "why", endReason(pr, err),
			"stderr", pr.stderr.String(), "restart_in", backoff.String(), "buffered", p.buffered())
		for {
			if !p.sleep(backoff) {
				p.lost("the program was not running")
				return
			}
			backoff = min(backoff*2, p.maxBackoff)
			if pr, err = p.start(); err == nil {
				break
			}
			p.log.Error("accounting program cannot be started; trying again", "err", err, "retry_in", backoff.String())
		}
	}
}

// endReason says why the program's run ended, for the log: its exit
// status when it exited, else the write that failed.
func endReason(pr *proc, err error) string {
	select {
	case <-pr.exited:
		if pr.err == nil {
			return "exited with status 0"
		}
		return pr.err.Error()
	default:
		return fmt.Sprintf("writing to it failed (%v); it was killed", err)
	}
}

func (p *Pipe) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// buffered returns how many lines wait for the program.
func (p *Pipe) buffered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

// sleep waits d, and reports false when Close came first.
func (p *Pipe) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.stop:
		return false
	}
}

// feed writes the queue to the program until the program cannot be
// written to (it ended, or closed its input), or, once the Pipe is
// closing, the queue is empty or the close deadline passed.
func (p *Pipe) feed(pr *proc) error {
	p.mu.Lock()
	p.stdin = pr.stdin
	if p.closed {
		_ = pr.stdin.SetWriteDeadline(p.closeBy)
	}
	p.mu.Unlock()
	var (
		sent []byte // the header line the program got last; nil: none yet
		buf  []byte
		ends []int
	)
	for {
		p.mu.Lock()
		n, size := 0, 0
		for n < len(p.queue) && (n == 0 || size+len(p.queue[n].line) <= pipeChunk) {
			size += len(p.queue[n].line)
			n++
		}
		lines := p.queue[:n:n]
		closing := p.closed
		if n == 0 && p.unwarned > 0 {
			// Caught up after dropping: the count since the last
			// warning is told now rather than never.
			k := p.unwarned
			p.unwarned = 0
			p.mu.Unlock()
			p.log.Warn("accounting program caught up; records were dropped", "dropped", k, "dropped_total", p.Dropped())
			continue
		}
		p.mu.Unlock()

		buf, ends = buf[:0], ends[:0]
		if sent == nil {
			// A program's input starts with a header line: the one of
			// the lines waiting, or of the current columns.
			sent = p.lay.Load().header
			if n > 0 {
				sent = lines[0].lay.header
			}
			buf = append(buf, sent...)
		}
		if n == 0 && len(buf) == 0 {
			if closing {
				return errStopping
			}
			select {
			case <-p.wake:
			case <-p.stop:
			case <-pr.exited:
				return errors.New("exited")
			}
			continue
		}
		for _, l := range lines {
			if !bytes.Equal(l.lay.header, sent) {
				buf = append(buf, l.lay.header...)
				sent = l.lay.header
			}
			buf = append(buf, l.line...)
			ends = append(ends, len(buf))
		}
		m, err := pr.stdin.Write(buf)
		whole, bytesDone := 0, 0
		for whole < len(ends) && ends[whole] <= m {
			bytesDone += len(lines[whole].line)
			whole++
		}
		if whole > 0 {
			p.mu.Lock()
			clear(p.queue[:whole]) // the lines are not kept alive by the array
			p.queue = p.queue[whole:]
			p.queued -= bytesDone
			if len(p.queue) == 0 {
				p.queue = nil // the array goes, not just its first lines
			}
			p.mu.Unlock()
		}
		if err != nil {
			return err
		}
	}
}

// end stops a program that cannot be written to: its input is closed
// and, if it has not exited within a second, it is killed.
func (p *Pipe) end(pr *proc) {
	pr.stdin.Close()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-pr.exited:
	case <-t.C:
		_ = pr.cmd.Process.Kill()
		<-pr.exited
	}
}

// shutdown ends the program at Close: its input is closed, and it may
// take until the close deadline to exit before it is killed.
func (p *Pipe) shutdown(pr *proc) {
	p.lost("the program did not read them before Tern stopped writing to it")
	pr.stdin.Close()
	p.mu.Lock()
	wait := time.Until(p.closeBy)
	p.mu.Unlock()
	t := time.NewTimer(max(wait, 0))
	defer t.Stop()
	select {
	case <-pr.exited:
	case <-t.C:
		p.log.Warn("accounting program did not exit after its input was closed; killed", "waited", p.closeWait.String())
		_ = pr.cmd.Process.Kill()
		<-pr.exited
	}
}

// lost logs the records still queued at Close, which the program never
// gets.
func (p *Pipe) lost(why string) {
	p.mu.Lock()
	n := len(p.queue)
	p.queue, p.queued = nil, 0
	p.mu.Unlock()
	if n > 0 {
		p.log.Warn("accounting records not delivered to the program at shutdown", "records", n, "why", why)
	}
}

// tailWriter keeps the last stderrTail bytes written to it.
type tailWriter struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailWriter) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > stderrTail {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-stderrTail:]...)
	}
	return len(b), nil
}

// String returns what was kept, without surrounding blank space.
func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.buf))
}
