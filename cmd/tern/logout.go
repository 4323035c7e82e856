package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// logFlush is how long a line may wait in a log file's buffer.
const logFlush = 200 * time.Millisecond

// logOutput is where the daemon's log lines go: standard error, or the
// log-file behind a buffer that a background loop flushes (at thousands
// of lines a second, a write per line would cost more than the line).
// A reload reopens the file, so that an operator can rotate it by moving
// it aside and running tern reload, and may switch to another path or
// back to standard error.
type logOutput struct {
	mu     sync.Mutex
	stderr io.Writer
	path   string        // the log-file; "" for standard error
	f      *os.File      // nil for standard error
	w      *bufio.Writer // buffers f
	stop   chan struct{}
	done   chan struct{}
}

// newLogOutput starts with the log-file at path, or standard error when
// path is "".
func newLogOutput(path string, stderr io.Writer) (*logOutput, error) {
	o := &logOutput{stderr: stderr, stop: make(chan struct{}), done: make(chan struct{})}
	f, err := openLogFile(path)
	if err != nil {
		return nil, err
	}
	o.swap(path, f)
	go o.flushLoop(logFlush)
	return o, nil
}

// openLogFile opens path for appending; nil for "" (standard error).
func openLogFile(path string) (*os.File, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("log-file: %w", err)
	}
	return f, nil
}

// swap makes f (opened at path, nil for standard error) the output: what
// is buffered for the old file is written to it first, then it is closed,
// so no line is lost or lands in the wrong file.
func (o *logOutput) swap(path string, f *os.File) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	var err error
	if o.f != nil {
		err = o.w.Flush()
		if cerr := o.f.Close(); err == nil {
			err = cerr
		}
	}
	o.path, o.f = path, f
	if f == nil {
		o.w = nil
	} else if o.w == nil {
		o.w = bufio.NewWriterSize(f, 64<<10)
	} else {
		o.w.Reset(f)
	}
	return err
}

// Path is the current log-file, "" for standard error.
func (o *logOutput) Path() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.path
}

func (o *logOutput) flushLoop(every time.Duration) {
	defer close(o.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-o.stop:
			return
		case <-t.C:
			o.mu.Lock()
			if o.w != nil {
				o.w.Flush()
			}
			o.mu.Unlock()
		}
	}
}

// Write takes one record; slog's handler writes each record in one call.
func (o *logOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.w == nil {
		return o.stderr.Write(p)
	}
	return o.w.Write(p)
}

// Close stops the flush loop, then flushes and closes the file.
func (o *logOutput) Close() error {
	close(o.stop)
	<-o.done
	return o.swap("", nil)
}

// newLogger is the daemon's logger over out, at the level the variable
// holds (a reload changes it), with repeated warnings and errors limited.
func newLogger(out io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(newRepeatLimiter(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}), time.Now))
}
