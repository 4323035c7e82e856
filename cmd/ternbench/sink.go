package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// sink is Postfix's smtp-sink with its running message counter.
type sink struct {
	cmd  *exec.Cmd
	done chan struct{}
	msgs atomic.Int64
	log  *os.File
	// pace is the pause between reads of the counter (the pipe buffers
	// what comes meanwhile).
	pace time.Duration
}

// startSink runs smtp-sink on 127.0.0.1:port. With -c it prints
// "sess=… quit=… mesg=N" after every message, which is how the messages
// that arrived are counted.
func startSink(bin string, port int, logPath string) (*sink, error) {
	args := []string{"-c"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "nobody") // it refuses to run as root
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args = append(args, addr, "1024")
	s := &sink{cmd: exec.Command(bin, args...), done: make(chan struct{}), pace: 20 * time.Millisecond}
	out, w, err := blockingPipe()
	if err != nil {
		return nil, err
	}
	if s.log, err = os.Create(logPath); err != nil {
		out.Close()
		w.Close()
		return nil, err
	}
	s.cmd.Stdout, s.cmd.Stderr = w, s.log
	err = s.cmd.Start()
	w.Close() // the child has its copy
	if err != nil {
		out.Close()
		s.log.Close()
		return nil, fmt.Errorf("smtp-sink: %w", err)
	}
	go func() {
		s.read(out)
		out.Close()
		s.cmd.Wait()
		close(s.done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := waitDial(ctx, addr); err != nil {
		s.stop()
		return nil, fmt.Errorf("smtp-sink: %w", err)
	}
	return s, nil
}

// blockingPipe is a pipe whose read end is in blocking mode, so that Go
// reads it on a thread of its own instead of through the network poller.
// smtp-sink writes its counter after every message; with the read end in
// the poller, each write woke this process (thousands of times a second),
// while read, pacing itself, wants the lines only every few milliseconds.
func blockingPipe() (r, w *os.File, err error) {
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC); err != nil {
		return nil, nil, fmt.Errorf("pipe: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "smtp-sink counter"), os.NewFile(uintptr(fds[1]), "smtp-sink stdout"), nil
}

// read follows the counter lines, which smtp-sink ends with \r. It reads
// what has accumulated every few milliseconds rather than waking for each
// line: at thousands of messages a second, a wakeup per message would
// take CPU from the servers being measured.
func (s *sink) read(r io.Reader) {
	buf := make([]byte, 256<<10)
	var tail []byte
	for {
		n, err := r.Read(buf)
		data := append(tail, buf[:n]...)
		if i := bytes.LastIndexByte(data, '\r'); i >= 0 {
			if j := bytes.LastIndex(data[:i], []byte("mesg=")); j >= 0 {
				if v, perr := strconv.ParseInt(string(data[j+5:i]), 10, 64); perr == nil {
					s.msgs.Store(v)
				}
			}
			data = data[i+1:]
		}
		tail = append(tail[:0], data...)
		if err != nil {
			return
		}
		if s.pace > 0 {
			time.Sleep(s.pace)
		}
	}
}

func (s *sink) count() int { return int(s.msgs.Load()) }

// waitCount waits until n messages have arrived.
func (s *sink) waitCount(ctx context.Context, n int) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for s.count() < n {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return fmt.Errorf("smtp-sink exited")
		case <-t.C:
		}
	}
	return nil
}

func (s *sink) stop() {
	stopProcess(s.cmd, s.done, 5*time.Second)
	s.log.Close()
}
