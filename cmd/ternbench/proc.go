package main

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTick is the unit of CPU times in /proc/PID/stat on Linux.
const clockTick = 10 * time.Millisecond

// procCPU is the CPU time of pid: its own, and that of its reaped children
// when children is set.
func procCPU(pid int, children bool) time.Duration {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
	n := 2
	if children {
		n = 4
	}
	var ticks int64
	for k := 0; k < n && 11+k < len(f); k++ {
		v, _ := strconv.ParseInt(f[11+k], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * clockTick
}

// procField reads one "Name:   N kB" field of a /proc/PID file, in bytes.
func procField(pid int, file, name string) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/" + file)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, name+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// procRSS is the resident set of pid in bytes.
func procRSS(pid int) int64 { return procField(pid, "status", "VmRSS") }

// procPSS is pid's proportional share of its resident set: pages shared
// with other processes count in part, so the PSS of a group of processes
// adds up to their real memory, where their RSS would count shared pages
// once per process.
func procPSS(pid int) int64 {
	if n := procField(pid, "smaps_rollup", "Pss"); n > 0 {
		return n
	}
	return procRSS(pid)
}

// procPeakRSS is the peak resident set of pid (VmHWM).
func procPeakRSS(pid int) int64 { return procField(pid, "status", "VmHWM") }

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(data, ')')
		if f := strings.Fields(string(data[i+1:])); len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// sampleEvery is the sampler's interval. Reading smaps_rollup walks a
// process's page tables: sampled every 100 ms over Postfix's forty-odd
// processes, it took about 15% of this 2-core machine's CPU away from the
// server being measured. Postfix's memory moves slowly, so a second is
// fine-grained enough.
const sampleEvery = time.Second

// sampler follows the summed PSS of a set of processes every sampleEvery
// and keeps the peak.
type sampler struct {
	once sync.Once
	done chan struct{}
	peak chan int64
}

func startSampler(pids func() []int) *sampler {
	s := &sampler{done: make(chan struct{}), peak: make(chan int64, 1)}
	go func() {
		var peak int64
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			var sum int64
			for _, p := range pids() {
				sum += procPSS(p)
			}
			peak = max(peak, sum)
			select {
			case <-s.done:
				s.peak <- peak
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends sampling and returns the peak; later calls return 0.
func (s *sampler) stop() int64 {
	var peak int64
	s.once.Do(func() {
		close(s.done)
		peak = <-s.peak
	})
	return peak
}

// stopProcess ends cmd: SIGTERM, then SIGKILL after grace.
func stopProcess(cmd *exec.Cmd, done <-chan struct{}, grace time.Duration) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}
