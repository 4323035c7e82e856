package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// postfixMain is the main.cf of the throw-away Postfix: Debian's defaults
// (a synced queue, connection caching to the relay host), its own
// directories, and everything relayed to the sink. It logs nowhere (no
// syslog daemon runs here and maillog_file is off), which can only make it
// faster; its deferrals are then unknown (reported as -1).
const postfixMain = `compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = peer.bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:%[2]d
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
#maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
`

// postfixServer is a Postfix instance with its own config and queue under
// the pass's directory, started with postfix -c: the system's Postfix (if
// any) is never touched.
type postfixServer struct {
	bin, dir string
	etc      string
}

func (p *postfixServer) start(ctx context.Context, dir string, port, sinkPort int) error {
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		return err
	}
	return p.startWith(ctx, dir, port, fmt.Appendf(nil, postfixMain, dir, sinkPort), masterCf(master, port), nil)
}

// startWith starts the instance in dir with the given main.cf and
// master.cf, after writing files (paths relative to dir, such as the
// chroot's queue/etc/resolv.conf), and waits until port accepts.
func (p *postfixServer) startWith(ctx context.Context, dir string, port int, mainCf, master []byte, files map[string][]byte) error {
	if _, err := user.Lookup("postfix"); err != nil {
		return fmt.Errorf("no postfix user (is Debian's postfix package installed?): %w", err)
	}
	p.dir, p.etc = dir, filepath.Join(dir, "etc")
	// Postfix's daemons run as the postfix user and must reach their
	// directories; a temporary directory is private to its creator.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	for _, d := range []string{p.etc, filepath.Join(dir, "queue"), filepath.Join(dir, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := exec.Command("chown", "postfix", filepath.Join(dir, "data")).Run(); err != nil {
		return fmt.Errorf("chown postfix %s/data: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(p.etc, "main.cf"), mainCf, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(p.etc, "master.cf"), master, 0o644); err != nil {
		return err
	}
	if dm, err := os.ReadFile("/etc/postfix/dynamicmaps.cf"); err == nil {
		_ = os.WriteFile(filepath.Join(p.etc, "dynamicmaps.cf"), dm, 0o644)
	}
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return err
		}
	}
	if out, err := p.postfix("start"); err != nil {
		return fmt.Errorf("postfix -c %s start: %v: %s %s", p.etc, err, out, p.logTail())
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return waitDial(wctx, fmt.Sprintf("127.0.0.1:%d", port))
}

// masterCf is Debian's master.cf with smtpd on 127.0.0.1:port instead of
// port 25, and no chroot (the throw-away queue has no chroot files).
func masterCf(orig []byte, port int) []byte {
	var out bytes.Buffer
	for _, line := range strings.Split(string(orig), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") {
			if f[0] == "smtp" && f[1] == "inet" {
				f[0] = fmt.Sprintf("127.0.0.1:%d", port)
			}
			f[4] = "n"
			line = strings.Join(f, " ")
		}
		out.WriteString(line + "\n")
	}
	return out.Bytes()
}

// postfix runs the postfix command on this instance.
func (p *postfixServer) postfix(args ...string) (string, error) {
	cmd := exec.Command(p.bin, append([]string{"-c", p.etc}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (p *postfixServer) logTail() string {
	data, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], "\n")
}

// masterPID is the PID of the instance's master process, 0 if none.
func (p *postfixServer) masterPID() int {
	data, err := os.ReadFile(filepath.Join(p.dir, "queue", "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pid > 0 && syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

func (p *postfixServer) pids() []int {
	m := p.masterPID()
	if m == 0 {
		return nil
	}
	return append([]int{m}, childrenOf(m)...)
}

// cpu counts the master with its reaped children and the live ones.
func (p *postfixServer) cpu() time.Duration {
	m := p.masterPID()
	if m == 0 {
		return 0
	}
	d := procCPU(m, true)
	for _, c := range childrenOf(m) {
		d += procCPU(c, false)
	}
	return d
}

// deferred counts the deferrals Postfix logged.
func (p *postfixServer) deferred() (int64, error) {
	data, err := os.ReadFile(filepath.Join(p.dir, "maillog"))
	if os.IsNotExist(err) {
		return -1, nil
	}
	if err != nil {
		return 0, err
	}
	return int64(bytes.Count(data, []byte("status=deferred"))), nil
}

func (p *postfixServer) beginProfile(string) {}
func (p *postfixServer) endProfile(string)   {}

// stop stops the instance and makes sure its processes are gone.
func (p *postfixServer) stop() error {
	if p.etc == "" {
		return nil
	}
	pids := p.pids()
	if _, err := p.postfix("stop"); err != nil {
		_, _ = p.postfix("abort")
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return nil
}
