package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// backlogResult is the JSON line of ternbench backlog.
type backlogResult struct {
	MTA           string  `json:"mta"`
	Recipients    int     `json:"recipients"`
	Messages      int     `json:"messages"`
	InjectSecs    float64 `json:"inject_s"`
	PeakRSSMB     float64 `json:"peak_rss_mb"`
	SpoolMB       float64 `json:"spool_mb"`
	RestartSecs   float64 `json:"restart_s"`
	RestartRSSMB  float64 `json:"restart_peak_rss_mb"`
	QueuedAtStart int     `json:"queued_after_restart"`
}

// runBacklog queues o.N recipients (o.Rcpts per message) in Tern while
// nothing listens at the destination, and reports the peak RSS with that
// backlog, then the time and memory to recover it at a restart.
func runBacklog(ctx context.Context, o options) error {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "ternbench-backlog-")
	if err != nil {
		return err
	}
	if o.Keep {
		fmt.Fprintf(o.Log, "ternbench: backlog in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	sinkPort, err := freePort() // nothing will listen there: every attempt defers
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	// A long retry-after keeps the deferred backlog still, as a real
	// destination outage would after the first attempts.
	t := &ternServer{bin: o.Tern, retry: "2h"}
	if err := t.start(ctx, dir, port, sinkPort); err != nil {
		t.stop()
		return err
	}
	defer t.stop()
	msgs := (o.N + o.Rcpts - 1) / o.Rcpts
	res := backlogResult{MTA: "tern", Recipients: msgs * o.Rcpts, Messages: msgs}
	samp := startSampler(t.pids)
	begin := time.Now()
	args := []string{"-s", strconv.Itoa(o.Sessions), "-m", strconv.Itoa(msgs), "-r", strconv.Itoa(o.Rcpts), "-N",
		"-l", strconv.Itoa(o.Size), "-d", "-f", "bench@src.bench.test", "-t", "rcpt@dst.bench.test",
		fmt.Sprintf("127.0.0.1:%d", port)}
	if out, err := exec.CommandContext(ctx, o.Source, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("smtp-source %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	res.InjectSecs = round(time.Since(begin).Seconds(), 1)
	if err := waitQueued(ctx, t.admin, res.Recipients); err != nil {
		return err
	}
	res.PeakRSSMB = round(float64(max(samp.stop(), procPeakRSS(t.cmd.Process.Pid)))/(1<<20), 1)
	res.SpoolMB = round(float64(dirSize(filepath.Join(dir, "spool")))/(1<<20), 1)

	// Restart: the spool is recovered into the ready index.
	t.stop()
	t2 := &ternServer{bin: o.Tern, retry: "2h"}
	samp2 := startSampler(t2.pids)
	begin = time.Now()
	if err := t2.startExisting(ctx, dir, port); err != nil {
		t2.stop()
		return err
	}
	defer t2.stop()
	res.RestartSecs = round(time.Since(begin).Seconds(), 2)
	n, err := queued(t2.admin)
	if err != nil {
		return err
	}
	res.QueuedAtStart = n
	res.RestartRSSMB = round(float64(max(samp2.stop(), procPeakRSS(t2.cmd.Process.Pid)))/(1<<20), 1)
	b, _ := json.Marshal(res)
	fmt.Fprintln(o.Out, string(b))
	if n != res.Recipients {
		return fmt.Errorf("after the restart %d recipients are queued, want %d", n, res.Recipients)
	}
	return nil
}

// queued is the number of recipients in the queue, from the admin API.
func queued(admin string) (int, error) {
	var st struct {
		Totals struct {
			Recipients int `json:"recipients"`
		} `json:"totals"`
	}
	resp, err := http.Get(admin + "/api/status")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, err
	}
	return st.Totals.Recipients, nil
}

// waitQueued waits until n recipients are queued.
func waitQueued(ctx context.Context, admin string, n int) error {
	for {
		got, err := queued(admin)
		if err == nil && got >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d recipients queued: %w", got, n, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// dirSize is the bytes of the files under dir.
func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}
