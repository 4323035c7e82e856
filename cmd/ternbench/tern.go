package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// ternConf is the benchmark configuration: every message from 127.0.0.1
// goes through a pool of two VMTAs (127.0.0.2 and 127.0.0.3) to the sink,
// with accounting on, as an operator would run it.
const ternConf = `host-name bench.tern.test
spool %[1]s/spool
log-file %[1]s/tern.log
smtp-listener 127.0.0.1:%[2]d
http-mgmt-port 127.0.0.1:%[3]d
http-access 127.0.0.1 admin
<acct-file %[1]s/acct.csv>
</acct-file>
<source 127.0.0.1>
    always-allow-relaying yes
    default-virtual-mta bench
</source>
<virtual-mta v1>
    smtp-source-host 127.0.0.2 v1.bench.tern.test
</virtual-mta>
<virtual-mta v2>
    smtp-source-host 127.0.0.3 v2.bench.tern.test
</virtual-mta>
<virtual-mta-pool bench>
    virtual-mta v1
    virtual-mta v2
</virtual-mta-pool>
<domain *>
    smtp-hosts [127.0.0.1]:%[4]d
    use-starttls no
    max-smtp-out 20
    max-msg-per-connection 0
    retry-after %[5]s
</domain>
`

// ternServer is tern serve with the benchmark configuration.
type ternServer struct {
	bin     string
	retry   string // retry-after; 10s when empty
	cmd     *exec.Cmd
	done    chan struct{}
	admin   string
	conf    string
	cpuProf chan error
}

func (t *ternServer) start(ctx context.Context, dir string, port, sinkPort int) error {
	adminPort, err := freePort()
	if err != nil {
		return err
	}
	conf := filepath.Join(dir, "tern.conf")
	retry := t.retry
	if retry == "" {
		retry = "10s"
	}
	if err := os.WriteFile(conf, fmt.Appendf(nil, ternConf, dir, port, adminPort, sinkPort, retry), 0o644); err != nil {
		return err
	}
	t.admin = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	return t.launch(ctx, conf, port)
}

// startExisting runs tern serve again on the configuration a previous
// start wrote in dir.
func (t *ternServer) startExisting(ctx context.Context, dir string, port int) error {
	conf := filepath.Join(dir, "tern.conf")
	data, err := os.ReadFile(conf)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "http-mgmt-port "); ok {
			t.admin = "http://" + strings.TrimSpace(rest)
		}
	}
	return t.launch(ctx, conf, port)
}

// launch starts tern serve -c conf and waits until port accepts.
func (t *ternServer) launch(ctx context.Context, conf string, port int) error {
	out, err := os.OpenFile(filepath.Join(filepath.Dir(conf), "tern.out"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	t.conf = conf
	t.cmd = exec.Command(t.bin, "serve", "-c", conf)
	t.cmd.Stdout, t.cmd.Stderr = out, out
	if err := t.cmd.Start(); err != nil {
		out.Close()
		return err
	}
	t.done = make(chan struct{})
	go func() { t.cmd.Wait(); out.Close(); close(t.done) }()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return waitDial(wctx, fmt.Sprintf("127.0.0.1:%d", port))
}

func (t *ternServer) pids() []int {
	if t.cmd == nil || t.cmd.Process == nil {
		return nil
	}
	return []int{t.cmd.Process.Pid}
}

func (t *ternServer) cpu() time.Duration {
	if p := t.pids(); len(p) == 1 {
		return procCPU(p[0], false)
	}
	return 0
}

// deferred asks the admin API how many deferrals the last hour saw.
func (t *ternServer) deferred() (int64, error) {
	var st struct {
		Traffic struct {
			LastHour struct {
				Deferred int64 `json:"deferred"`
			} `json:"last_hour"`
		} `json:"traffic"`
	}
	resp, err := http.Get(t.admin + "/api/status")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, fmt.Errorf("GET /api/status: %w", err)
	}
	return st.Traffic.LastHour.Deferred, nil
}

// profileSeconds is the length of the CPU profile taken under load.
const profileSeconds = 10

// beginProfile starts a CPU profile of the load through the admin API.
func (t *ternServer) beginProfile(dir string) {
	t.cpuProf = make(chan error, 1)
	go func() {
		t.cpuProf <- fetch(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", t.admin, profileSeconds), filepath.Join(dir, "cpu.pprof"))
	}()
}

// endProfile waits for the CPU profile and takes an allocation profile.
func (t *ternServer) endProfile(dir string) {
	if err := <-t.cpuProf; err != nil {
		fmt.Fprintln(os.Stderr, "ternbench: CPU profile:", err)
	}
	if err := fetch(t.admin+"/debug/pprof/allocs", filepath.Join(dir, "allocs.pprof")); err != nil {
		fmt.Fprintln(os.Stderr, "ternbench: allocation profile:", err)
	}
}

// fetch saves the body of a GET to path.
func fetch(url, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func (t *ternServer) stop() error {
	stopProcess(t.cmd, t.done, 60*time.Second)
	return nil
}
