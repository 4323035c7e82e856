package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// mta is a mail server under test, started fresh for each pass.
type mta interface {
	// start runs the server in dir, listening on 127.0.0.1:port and
	// relaying everything to 127.0.0.1:sinkPort; it returns once the
	// server accepts connections.
	start(ctx context.Context, dir string, port, sinkPort int) error
	// pids are its processes now, for RSS and CPU sampling.
	pids() []int
	// cpu is the CPU time its processes have used, including reaped
	// children.
	cpu() time.Duration
	// deferred counts deferred delivery attempts so far.
	deferred() (int64, error)
	// beginProfile and endProfile bracket the measured load (Tern only).
	beginProfile(dir string)
	endProfile(dir string)
	stop() error
}

// newMTA makes the server of a pass.
type newMTA func(o options) (string, mta)

func ternMTA(o options) (string, mta)    { return "tern", &ternServer{bin: o.Tern} }
func postfixMTA(o options) (string, mta) { return "postfix", &postfixServer{bin: o.Postfix} }

// onePass starts a sink and a fresh server, injects o.N messages, waits
// for all of them at the sink, and measures.
func onePass(ctx context.Context, o options, mk newMTA, pass, profile string) (result, error) {
	name, srv := mk(o)
	res := result{MTA: name, Pass: pass, Messages: o.N, Size: o.Size, Sessions: o.Sessions}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	dir, err := os.MkdirTemp("", "ternbench-"+name+"-")
	if err != nil {
		return res, err
	}
	if o.Keep {
		fmt.Fprintf(o.Log, "ternbench: %s %s pass in %s\n", name, pass, dir)
	} else {
		defer os.RemoveAll(dir)
	}
	sinkPort, err := freePort()
	if err != nil {
		return res, err
	}
	port, err := freePort()
	if err != nil {
		return res, err
	}
	sink, err := startSink(o.SinkBin, sinkPort, filepath.Join(dir, "sink.log"))
	if err != nil {
		return res, err
	}
	defer sink.stop()
	if err := srv.start(ctx, dir, port, sinkPort); err != nil {
		srv.stop()
		return res, fmt.Errorf("%s: %w", name, err)
	}
	defer srv.stop()
	cpu0 := srv.cpu()
	// One process (Tern) has an exact high-water mark, read at the end;
	// Postfix's processes are sampled, at some cost to the machine. It is
	// decided by kind: right after start Postfix may have no children yet.
	var sampler *sampler
	if _, group := srv.(*postfixServer); group {
		sampler = startSampler(srv.pids)
		defer sampler.stop()
	}

	args := []string{"-s", strconv.Itoa(o.Sessions), "-m", strconv.Itoa(o.N), "-l", strconv.Itoa(o.Size),
		"-f", "bench@src.bench.test", "-t", "rcpt@dst.bench.test"}
	if pass == "reuse" {
		args = append(args, "-d")
	}
	args = append(args, fmt.Sprintf("127.0.0.1:%d", port))
	if profile != "" {
		srv.beginProfile(profile)
	}
	begin := time.Now()
	src := exec.CommandContext(ctx, o.Source, args...)
	out, err := src.CombinedOutput()
	injected := time.Since(begin)
	if err != nil {
		return res, fmt.Errorf("smtp-source %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	if err := sink.waitCount(ctx, o.N); err != nil {
		return res, fmt.Errorf("%s: %d of %d messages at the sink after %s: %w", name, sink.count(), o.N, time.Since(begin).Round(time.Millisecond), err)
	}
	endToEnd := time.Since(begin)
	if profile != "" {
		srv.endProfile(profile)
	}
	res.CPUSecs = (srv.cpu() - cpu0).Seconds()
	if sampler != nil {
		res.PeakRSSMB = float64(sampler.stop()) / (1 << 20)
	} else if pids := srv.pids(); len(pids) == 1 {
		// Tern's exact peak; 0 only if /proc could not be read.
		res.PeakRSSMB = float64(procPeakRSS(pids[0])) / (1 << 20)
	}
	// Anything delivered twice would show up now.
	settle := time.NewTimer(time.Second)
	select {
	case <-settle.C:
	case <-ctx.Done():
	}
	res.Delivered = sink.count()
	if res.Deferred, err = srv.deferred(); err != nil {
		return res, err
	}
	res.InjectSecs = round(injected.Seconds(), 3)
	res.EndToEndSecs = round(endToEnd.Seconds(), 3)
	res.AcceptedPerS = round(float64(o.N)/injected.Seconds(), 1)
	res.DeliveredPS = round(float64(o.N)/endToEnd.Seconds(), 1)
	res.PeakRSSMB = round(res.PeakRSSMB, 1)
	res.CPUSecs = round(res.CPUSecs, 2)
	if res.Delivered != o.N {
		return res, fmt.Errorf("%s: the sink received %d messages, want exactly %d", name, res.Delivered, o.N)
	}
	return res, nil
}

func round(x float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(x*p+0.5)) / p
}

// freePort is a TCP port free on 127.0.0.1 right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitDial waits until addr accepts TCP connections.
func waitDial(ctx context.Context, addr string) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never accepted connections: %w", addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
