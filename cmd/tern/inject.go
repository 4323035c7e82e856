package main

// tern inject: submit .eml files to an SMTP listener, as an application
// would, in parallel over reused connections, with a progress bar on a
// terminal and a summary of what was accepted, refused and failed.

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/term"
)

// injectOptions are the flags of tern inject.
type injectOptions struct {
	addr        string
	user        string
	password    string
	from        string
	to          []string
	starttls    bool
	insecure    bool
	concurrency int
	vmta        string
	quiet       bool
	json        bool
	timeout     time.Duration
}

// Outcomes of one file.
const (
	statusAccepted = "accepted" // the server answered 250 at the end of DATA for every recipient
	statusRefused  = "refused"  // the server refused it, or some of its recipients, with an SMTP reply
	statusFailed   = "failed"   // it could not be sent: unreadable, no envelope, connection lost, TLS failed
)

// rcptRefusal is a recipient the server refused.
type rcptRefusal struct {
	Recipient string `json:"recipient"`
	Reply     string `json:"reply"`
}

// injectResult is what happened to one file.
type injectResult struct {
	File   string `json:"file"`
	Status string `json:"status"`
	// Reply is the server's last reply for the file: the 250 with the
	// queue id, or the refusal, prefixed with the command refused.
	Reply string `json:"reply,omitempty"`
	// Error is why a failed file could not be sent.
	Error      string        `json:"error,omitempty"`
	QueueID    string        `json:"queue_id,omitempty"`
	Sender     string        `json:"sender,omitempty"`     // "<>" for the null sender
	Recipients []string      `json:"recipients,omitempty"` // accepted by the server
	Refused    []rcptRefusal `json:"refused_recipients,omitempty"`
}

// injectSummary is the --json output.
type injectSummary struct {
	Accepted       int            `json:"accepted"`
	Refused        int            `json:"refused"`
	Failed         int            `json:"failed"`
	ElapsedSeconds float64        `json:"elapsed_seconds"`
	Files          []injectResult `json:"files"`
}

// stringList is a flag that may be repeated and takes comma lists.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

const injectUsage = `usage: tern inject [flags] FILE|DIR...

submits each message file over SMTP, as an application would. A DIR means
every *.eml file directly in it (not in its subdirectories), in name order.
The envelope comes from the flags or from each file's headers: the sender
from Sender or From, the recipients from To, Cc and Bcc. The file is sent as
it is (bare LF line ends become CRLF), with X-Virtual-MTA added on top for
--vmta. Connections are reused (one per worker); a connection that fails is
replaced for the next file. A progress bar is shown on a terminal.
`

const injectExitCodes = `exit codes:
  0  every file was accepted
  1  some file, or some recipient, was refused or could not be sent
  2  wrong usage (bad flags, a missing file, no .eml file); nothing was sent
  3  the listener cannot be reached at all, so nothing was sent
`

// runInject is tern inject.
func runInject(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o injectOptions
	fs.StringVar(&o.addr, "smtp", "127.0.0.1:2525", "the SMTP listener, `HOST:PORT`")
	fs.StringVar(&o.user, "user", "", "authenticate (AUTH PLAIN) as `USER`")
	fs.StringVar(&o.password, "password", "", "the `PASSWORD` of --user (default $TERN_SMTP_PASSWORD, which keeps it out of the process list)")
	fs.StringVar(&o.from, "from", "", "envelope sender `ADDRESS` for every file; <> for the null sender (default: each file's Sender or From)")
	fs.Var((*stringList)(&o.to), "to", "envelope recipient `ADDRESS`es, repeatable or comma separated (default: each file's To, Cc and Bcc)")
	fs.BoolVar(&o.starttls, "starttls", false, "require STARTTLS before AUTH and mail (fail when not offered)")
	fs.BoolVar(&o.insecure, "tls-insecure", false, "do not verify the server's certificate (self-signed test certificates)")
	fs.IntVar(&o.concurrency, "concurrency", 8, "send over `N` connections in parallel")
	fs.StringVar(&o.vmta, "vmta", "", "add X-Virtual-MTA: `NAME` to every message (the listener's source must have process-x-virtual-mta)")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress bar, and no output at all when every file is accepted")
	fs.BoolVar(&o.json, "json", false, "print a JSON summary with the result of every file")
	fs.DurationVar(&o.timeout, "timeout", time.Minute, "give up on a connection or SMTP command after this `duration`")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), injectUsage)
		fmt.Fprintln(fs.Output(), "flags:")
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), injectExitCodes)
	}
	paths, code := parseArgs(fs, args)
	if code >= 0 {
		return code
	}
	if o.password != "" && o.user == "" {
		return usageError(fs, stderr, "--password without --user")
	}
	if o.password == "" {
		o.password = os.Getenv("TERN_SMTP_PASSWORD")
	}
	if err := o.check(paths); err != nil {
		return usageError(fs, stderr, "%v", err)
	}
	files, err := injectFiles(paths)
	if err != nil {
		return usageError(fs, stderr, "%v", err)
	}
	in := newInjector(o)
	var prog *progress
	if !o.quiet && isTerminal(stderr) {
		prog = startProgress(stderr, len(files), in.counts)
	}
	start := time.Now()
	results := in.run(files)
	prog.stop()
	return reportInject(o, results, time.Since(start), in.unreachable(), stdout, stderr)
}

// check validates the flags before anything is sent.
func (o *injectOptions) check(paths []string) error {
	if len(paths) == 0 {
		return errors.New("no FILE or DIR to send")
	}
	if _, _, err := net.SplitHostPort(o.addr); err != nil {
		return fmt.Errorf("--smtp %q: want HOST:PORT", o.addr)
	}
	if o.concurrency < 1 {
		return errors.New("--concurrency must be at least 1")
	}
	if o.timeout <= 0 {
		return errors.New("--timeout must be positive")
	}
	if o.user != "" && o.password == "" {
		return errors.New("--user needs --password or TERN_SMTP_PASSWORD")
	}
	if o.insecure && !o.starttls {
		return errors.New("--tls-insecure goes with --starttls")
	}
	if strings.ContainsAny(o.vmta, "\r\n") {
		return errors.New("--vmta: a name cannot hold a line break")
	}
	for _, a := range append([]string{o.from}, o.to...) {
		if a != "" && a != "<>" && !strings.Contains(a, "@") {
			return fmt.Errorf("%q is not an address (local@domain)", a)
		}
	}
	return nil
}

// injectFiles expands the arguments: a file stands for itself, a directory
// for the *.eml files directly in it.
func injectFiles(paths []string) ([]string, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, err
		}
		n := len(files)
		for _, e := range entries {
			if e.Type().IsRegular() && strings.EqualFold(filepath.Ext(e.Name()), ".eml") {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
		if len(files) == n {
			return nil, fmt.Errorf("%s: no .eml file in the directory", p)
		}
	}
	return files, nil
}

// injector sends the files of one run. Workers share it: the counts for the
// progress bar, and the outcome that stops the run when something every
// connection would hit (an unreachable listener, refused credentials, a
// failed TLS handshake) has happened once.
type injector struct {
	opts injectOptions
	helo string
	tls  *tls.Config

	accepted, refused, failed atomic.Int64

	mu        sync.Mutex
	connected bool          // some connection reached the greeting
	fatal     *injectResult // the outcome of every file not yet sent, once set
	dialFatal bool          // fatal is that the listener cannot be reached
}

func newInjector(o injectOptions) *injector {
	host, _, _ := net.SplitHostPort(o.addr)
	helo, err := os.Hostname()
	if err != nil || helo == "" || strings.ContainsAny(helo, " \r\n") {
		helo = "localhost"
	}
	return &injector{opts: o, helo: helo,
		tls: &tls.Config{ServerName: host, InsecureSkipVerify: o.insecure}}
}

// counts returns the outcomes so far, for the progress bar.
func (in *injector) counts() (accepted, refused, failed int64) {
	return in.accepted.Load(), in.refused.Load(), in.failed.Load()
}

// unreachable reports whether the run ended because no connection could be
// made at all.
func (in *injector) unreachable() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.dialFatal
}

// run sends the files over up to opts.concurrency connections and returns
// their results in the order of files.
func (in *injector) run(files []string) []injectResult {
	results := make([]injectResult, len(files))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(in.opts.concurrency, len(files)) {
		wg.Go(func() {
			var c *smtp.Client
			defer func() {
				if c != nil {
					c.Quit()
					c.Close()
				}
			}()
			for i := range jobs {
				results[i] = in.send(&c, files[i])
				switch results[i].Status {
				case statusAccepted:
					in.accepted.Add(1)
				case statusRefused:
					in.refused.Add(1)
				default:
					in.failed.Add(1)
				}
			}
		})
	}
	for i := range files {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return results
}

// send sends one file over *cp, connecting first when *cp is nil, and
// leaves *cp nil when the connection is no longer usable.
func (in *injector) send(cp **smtp.Client, path string) injectResult {
	r := injectResult{File: path}
	msg, err := os.ReadFile(path)
	if err == nil {
		r.Sender, r.Recipients, err = envelope(msg, in.opts.from, in.opts.to)
	}
	if err != nil {
		r.fail(err)
		return r
	}
	from, to := r.Sender, r.Recipients
	r.Recipients = nil // from here on, those the server accepted
	if from == "" {
		r.Sender = "<>"
	}
	if f := in.stopped(); f != nil {
		r.Status, r.Reply, r.Error = f.Status, f.Reply, f.Error
		return r
	}
	if *cp == nil {
		c, bad := in.connect()
		if c == nil {
			r.Status, r.Reply, r.Error = bad.Status, bad.Reply, bad.Error
			return r
		}
		*cp = c
	}
	c := *cp
	if !in.transaction(c, &r, from, to, msg) {
		c.Close()
		*cp = nil
	}
	return r
}

// transaction runs MAIL, RCPT and DATA for one message on c and fills r. It
// returns whether c can carry the next message.
func (in *injector) transaction(c *smtp.Client, r *injectResult, from string, to []string, msg []byte) bool {
	// abort ends a refused transaction; the connection is kept if RSET
	// works and the server did not say it is closing (421).
	abort := func(stage string, err error) bool {
		if !r.smtpError(stage, err) {
			return false
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code == 421 {
			return false
		}
		return c.Reset() == nil
	}
	header := ""
	if in.opts.vmta != "" {
		header = "X-Virtual-MTA: " + in.opts.vmta + "\r\n"
	}
	if err := c.Mail(from, &smtp.MailOptions{Size: int64(len(header) + len(msg))}); err != nil {
		return abort("MAIL", err)
	}
	for _, rcpt := range to {
		err := c.Rcpt(rcpt, nil)
		if err == nil {
			r.Recipients = append(r.Recipients, rcpt)
			continue
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			r.fail(fmt.Errorf("RCPT <%s>: %w", rcpt, err))
			return false
		}
		r.Refused = append(r.Refused, rcptRefusal{rcpt, replyText(se)})
		if se.Code == 421 {
			r.Status, r.Reply = statusRefused, "RCPT <"+rcpt+">: "+replyText(se)
			return false
		}
	}
	if len(r.Recipients) == 0 {
		r.Status, r.Reply = statusRefused, fmt.Sprintf("RCPT <%s>: %s", r.Refused[0].Recipient, r.Refused[0].Reply)
		return c.Reset() == nil
	}
	w, err := c.Data()
	if err != nil {
		return abort("DATA", err)
	}
	_, err = io.WriteString(w, header)
	if err == nil {
		_, err = w.Write(msg)
	}
	if err != nil {
		r.fail(fmt.Errorf("DATA: %w", err))
		return false // the connection is broken mid-message
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return abort("DATA", err)
	}
	r.Reply = "250 " + resp.StatusText
	r.QueueID = queueIDOf(resp.StatusText)
	r.Status = statusAccepted
	if len(r.Refused) > 0 {
		// Sent to the others; the file still counts as refused, so that
		// the exit code says something was not accepted.
		r.Status = statusRefused
		r.Reply = fmt.Sprintf("RCPT <%s>: %s (sent to the other %s as %s)", r.Refused[0].Recipient, r.Refused[0].Reply,
			plural(len(r.Recipients), "recipient"), r.QueueID)
	}
	return true
}

// connect opens a connection ready for mail: greeting, EHLO, STARTTLS and
// AUTH as asked. On failure it returns the outcome for the file, and makes
// it the outcome of every later file when every connection would fail the
// same way.
func (in *injector) connect() (*smtp.Client, *injectResult) {
	o := in.opts
	conn, err := net.DialTimeout("tcp", o.addr, o.timeout)
	if err != nil {
		r := &injectResult{Status: statusFailed, Error: fmt.Sprintf("cannot connect to %s: %v", o.addr, err)}
		in.mu.Lock()
		defer in.mu.Unlock()
		if !in.connected && in.fatal == nil {
			in.fatal, in.dialFatal = r, true
		}
		return nil, r
	}
	var c *smtp.Client
	if o.starttls {
		c, err = smtp.NewClientStartTLS(conn, in.tls)
		if err != nil {
			conn.Close()
			return nil, in.setupFailed("STARTTLS", err)
		}
	} else {
		c = smtp.NewClient(conn)
	}
	c.CommandTimeout, c.SubmissionTimeout = o.timeout, o.timeout
	if err := c.Hello(in.helo); err != nil {
		c.Close()
		stage := "EHLO"
		if o.starttls && isTLSError(err) {
			stage = "STARTTLS" // the handshake runs at the first command after it
		}
		return nil, in.setupFailed(stage, err)
	}
	in.mu.Lock()
	in.connected = true
	in.mu.Unlock()
	if o.user != "" {
		if ok, _ := c.Extension("AUTH"); !ok {
			c.Close()
			hint := ""
			if !o.starttls {
				hint = "; the listener may offer it only after STARTTLS (--starttls)"
			}
			return nil, in.setupFailed("AUTH", fmt.Errorf("%s does not offer AUTH%s", o.addr, hint))
		}
		if err := c.Auth(sasl.NewPlainClient("", o.user, o.password)); err != nil {
			c.Close()
			return nil, in.setupFailed("AUTH", err)
		}
	}
	return c, nil
}

// setupFailed is the outcome of a connection that failed before mail could
// be sent. Refused credentials, a failed TLS handshake or a permanent
// refusal of the session would be the same for every connection, so they
// end the run: the remaining files get the same outcome without trying.
// A temporary refusal (4xx, for instance too many connections) or a broken
// connection is only this file's.
func (in *injector) setupFailed(stage string, err error) *injectResult {
	r := &injectResult{}
	r.smtpError(stage, err)
	var se *smtp.SMTPError
	temporary := errors.As(err, &se) && se.Code/100 == 4 && stage != "AUTH"
	var netErr net.Error
	broken := !errors.As(err, &se) && !isTLSError(err) && (errors.As(err, &netErr) || errors.Is(err, io.EOF))
	if !temporary && !broken {
		in.mu.Lock()
		if in.fatal == nil {
			in.fatal = r
		}
		in.mu.Unlock()
	}
	return r
}

// isTLSError reports whether err comes from the TLS handshake: the
// certificate did not verify, or the two sides did not agree.
func isTLSError(err error) bool {
	var verify *tls.CertificateVerificationError
	var alert tls.AlertError
	var header tls.RecordHeaderError
	return errors.As(err, &verify) || errors.As(err, &alert) || errors.As(err, &header)
}

// stopped returns the outcome that ended the run, nil while it goes on.
func (in *injector) stopped() *injectResult {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.fatal
}

// fail marks r failed with err and returns it.
func (r *injectResult) fail(err error) *injectResult {
	r.Status, r.Error = statusFailed, err.Error()
	return r
}

// smtpError records err at stage: a server reply is a refusal, anything
// else a failure. It returns whether it was a server reply.
func (r *injectResult) smtpError(stage string, err error) bool {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		r.Status, r.Reply = statusRefused, stage+": "+replyText(se)
		return true
	}
	r.fail(fmt.Errorf("%s: %w", stage, err))
	return false
}

// replyText formats a server reply as it was sent: "550 5.1.1 text".
func replyText(se *smtp.SMTPError) string {
	s := fmt.Sprint(se.Code)
	if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
		s += fmt.Sprintf(" %d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return s + " " + se.Message
}

// queueIDOf finds the queue id in a 250 reply's text: Tern says
// "2.0.0 OK <id>", Postfix "2.0.0 Ok: queued as <id>".
func queueIDOf(text string) string {
	for _, marker := range []string{"queued as ", "OK "} {
		if _, rest, ok := strings.Cut(text, marker); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return f[0]
			}
		}
	}
	return ""
}

// envelope returns the sender and recipients for msg: the given ones, or
// those of its header (Sender, else From; To, Cc and Bcc).
func envelope(msg []byte, from string, to []string) (string, []string, error) {
	var h mail.Header
	if from == "" || len(to) == 0 {
		m, err := mail.ReadMessage(bytes.NewReader(msg))
		if err != nil {
			return "", nil, fmt.Errorf("the header does not parse: %v", err)
		}
		h = m.Header
	}
	switch from {
	case "<>":
		from = ""
	case "":
		for _, key := range []string{"Sender", "From"} {
			if h.Get(key) == "" {
				continue
			}
			addrs, err := h.AddressList(key)
			if err != nil || len(addrs) == 0 {
				return "", nil, fmt.Errorf("%s: %q is not an address; give --from", key, h.Get(key))
			}
			from = addrs[0].Address
			break
		}
		if from == "" {
			return "", nil, errors.New("no Sender or From header; give --from")
		}
	}
	if len(to) > 0 {
		return from, to, nil
	}
	seen := map[string]bool{}
	for _, key := range []string{"To", "Cc", "Bcc"} {
		if h.Get(key) == "" {
			continue
		}
		addrs, err := h.AddressList(key)
		if err != nil {
			return "", nil, fmt.Errorf("%s: %v; give --to", key, err)
		}
		for _, a := range addrs {
			if k := strings.ToLower(a.Address); !seen[k] {
				seen[k] = true
				to = append(to, a.Address)
			}
		}
	}
	if len(to) == 0 {
		return "", nil, errors.New("no recipient in To, Cc or Bcc; give --to")
	}
	return from, to, nil
}

// maxListedFiles is how many refused or failed files, each with an outcome
// of its own, the summary names; --json has them all.
const maxListedFiles = 20

// maxListedRcpts is how many refused recipients it shows per file.
const maxListedRcpts = 3

// reportInject prints the summary and returns the exit code.
func reportInject(o injectOptions, results []injectResult, elapsed time.Duration, unreachable bool, stdout, stderr io.Writer) int {
	sum := injectSummary{ElapsedSeconds: elapsed.Seconds(), Files: results}
	for _, r := range results {
		switch r.Status {
		case statusAccepted:
			sum.Accepted++
		case statusRefused:
			sum.Refused++
		default:
			sum.Failed++
		}
	}
	code := exitOK
	switch {
	case unreachable && sum.Accepted == 0:
		code = exitUnreachable
	case sum.Refused+sum.Failed > 0:
		code = exitFailed
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(sum)
		return code
	}
	if o.quiet && code == exitOK {
		return code
	}
	rate := ""
	if secs := elapsed.Seconds(); secs > 0 {
		rate = fmt.Sprintf(", %.1f/s", float64(len(results))/secs)
	}
	fmt.Fprintf(stdout, "accepted %d, refused %d, failed %d (%s in %s%s)\n", sum.Accepted, sum.Refused, sum.Failed,
		plural(len(results), "file"), elapsed.Round(time.Millisecond), rate)
	// One line per distinct outcome: a wrong password or a listener that
	// refuses everything would otherwise list every file with the same
	// reply.
	seen := map[string]bool{}
	shown, same, hidden := 0, 0, 0
	for _, r := range results {
		if r.Status == statusAccepted {
			continue
		}
		detail := r.Reply
		if r.Status == statusFailed {
			detail = r.Error
		}
		switch {
		case seen[r.Status+detail]:
			same++
			continue
		case shown == maxListedFiles:
			hidden++
			continue
		}
		seen[r.Status+detail] = true
		shown++
		fmt.Fprintf(stderr, "%-8s %s: %s\n", r.Status, r.File, detail)
		for i, rf := range r.Refused {
			if i == maxListedRcpts {
				fmt.Fprintf(stderr, "         and %d more refused recipients\n", len(r.Refused)-maxListedRcpts)
				break
			}
			if i > 0 || !strings.Contains(detail, rf.Recipient) {
				fmt.Fprintf(stderr, "         <%s>: %s\n", rf.Recipient, rf.Reply)
			}
		}
	}
	if same+hidden > 0 {
		fmt.Fprintf(stderr, "… and %d more not accepted (%d with an outcome shown above); --json lists every file\n", same+hidden, same)
	}
	return code
}

// isTerminal reports whether w is a terminal, where a progress bar that
// redraws its line belongs (in a pipe or a log it would be noise).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progress redraws a one-line progress bar on a terminal until stopped.
type progress struct {
	done chan struct{}
	wg   sync.WaitGroup
}

// startProgress draws the bar for total files every 200ms from counts.
func startProgress(w io.Writer, total int, counts func() (int64, int64, int64)) *progress {
	p := &progress{done: make(chan struct{})}
	start := time.Now()
	draw := func() {
		a, r, f := counts()
		n := a + r + f
		const width = 30
		filled := int(n * width / int64(max(total, 1)))
		rate := float64(n) / max(time.Since(start).Seconds(), 0.001)
		fmt.Fprintf(w, "\r\033[K[%s%s] %d/%d  accepted %d  refused %d  failed %d  %.1f/s",
			strings.Repeat("#", filled), strings.Repeat(".", width-filled), n, total, a, r, f, rate)
	}
	p.wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				draw()
			case <-p.done:
				draw()
				fmt.Fprintln(w)
				return
			}
		}
	})
	return p
}

// stop draws the final state and ends the bar; a nil bar does nothing.
func (p *progress) stop() {
	if p == nil {
		return
	}
	close(p.done)
	p.wg.Wait()
}
