package main

// The operator CLI over the admin API: the common flags, finding the API
// and its key, sending a request and turning the answer into an exit code.
// The commands themselves are in cli_commands.go and cli_providers.go,
// their tables and units in cli_format.go; inject (SMTP, not the API) is in
// inject.go.

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ternmta/tern/config"
)

// Exit codes of the CLI commands. Scripts may rely on them; they are listed
// in every command's usage and in docs/operations.md.
const (
	exitOK          = 0 // success
	exitFailed      = 1 // the server refused the request or the operation failed
	exitUsage       = 2 // wrong usage, found before any request was sent
	exitUnreachable = 3 // the API (or, for inject, the listener) cannot be reached
	exitDenied      = 4 // the API refused access (403)
)

// apiExitCodes is the exit code table in the usage of every API command.
const apiExitCodes = `exit codes:
  0  success
  1  the server refused the request or the operation failed (its message is on stderr)
  2  wrong usage (bad flags or arguments; nothing was sent)
  3  the admin API cannot be reached (connection refused, timeout)
  4  access denied (http-access or http-api-key)
`

// Where the CLI looks for the API when neither --api nor TERN_API says.
const (
	defaultConfPath = "/etc/tern/tern.conf"
	// defaultMgmtAddr is http-mgmt-port's default in the config package;
	// TestCLIDefaultMgmtAddr keeps the two equal.
	defaultMgmtAddr = "127.0.0.1:8080"
)

// apiFlags are the flags every API command takes.
type apiFlags struct {
	api     string
	key     string
	conf    string
	json    bool
	timeout time.Duration
}

// apiFlagSet returns a flag set for an API command with the common flags
// registered; usage is the command's synopsis and description.
func apiFlagSet(name, usage string, stderr io.Writer) (*flag.FlagSet, *apiFlags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &apiFlags{}
	fs.StringVar(&f.api, "api", "", "admin API `URL` (default: $TERN_API, else http-mgmt-port of the -c file, else http://"+defaultMgmtAddr+")")
	fs.StringVar(&f.key, "key", "", "API `KEY` (default: $TERN_API_KEY, else http-api-key of the -c file)")
	fs.StringVar(&f.conf, "c", defaultConfPath, "configuration `FILE` to take the API address and key from (read only if it exists or is given)")
	fs.BoolVar(&f.json, "json", false, "print the server's JSON answer instead of a table")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up on the API after this `duration`")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fmt.Fprintln(fs.Output(), "flags:")
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), apiExitCodes)
	}
	return fs, f
}

// parseArgs parses flags that may come before, between or after the
// positional arguments (the flag package alone stops at the first
// positional one, and operators type `tern pause q --json`). Everything
// after "--" is positional. It returns the positional arguments and an exit
// code: -1 to go on, else 0 for -h and exitUsage for a bad flag.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, int) {
	rest, tail := args, []string(nil)
	if i := slices.Index(args, "--"); i >= 0 {
		rest, tail = args[:i], args[i+1:]
	}
	var pos []string
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK
			}
			return nil, exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	return append(pos, tail...), -1
}

// usageError prints a usage problem and the command's synopsis (its usage
// up to the first blank line, so that the problem stays in view); it
// returns exitUsage.
func usageError(fs *flag.FlagSet, stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "tern %s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	out := fs.Output()
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	fs.Usage()
	fs.SetOutput(out)
	synopsis, _, _ := strings.Cut(buf.String(), "\n\n")
	fmt.Fprintf(stderr, "%s\n(tern %s -h describes the flags and exit codes)\n", synopsis, fs.Name())
	return exitUsage
}

// apiClient sends one command's requests to the admin API and reports the
// answers.
type apiClient struct {
	name   string   // the command, for messages
	args   []string // its positional arguments
	base   string   // "http://127.0.0.1:8080", no trailing slash
	key    string
	json   bool
	http   *http.Client
	stdout io.Writer
	stderr io.Writer
}

// newAPIClient finds the API and its key from the flags, the environment
// and the configuration file. ok is false after a usage error was printed.
func newAPIClient(fs *flag.FlagSet, f *apiFlags, stdout, stderr io.Writer) (*apiClient, bool) {
	explicit := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
	c := &apiClient{name: fs.Name(), json: f.json, stdout: stdout, stderr: stderr,
		http: &http.Client{Timeout: f.timeout}}
	if f.timeout <= 0 {
		usageError(fs, stderr, "--timeout must be positive")
		return nil, false
	}
	api, key := f.api, f.key
	if api == "" {
		api = os.Getenv("TERN_API")
	}
	if !explicit["key"] {
		key = os.Getenv("TERN_API_KEY")
	}
	if api == "" || key == "" {
		addr, fileKey, err := adminFromConfig(f.conf, explicit["c"], stderr)
		if err != nil {
			usageError(fs, stderr, "%v", err)
			return nil, false
		}
		if api == "" {
			api = addr
		}
		if key == "" && !explicit["key"] {
			key = fileKey
		}
	}
	base, err := apiBase(api)
	if err != nil {
		usageError(fs, stderr, "--api %q: %v", api, err)
		return nil, false
	}
	c.base, c.key = base, key
	return c, true
}

// apiBase turns "host:port", "http://host:port" or "https://host:port/" into
// a base URL without a trailing slash.
func apiBase(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", errors.New("want http:// or https://")
	}
	if u.Host == "" {
		return "", errors.New("no host")
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// adminFromConfig returns the admin API's address (as a client reaches it)
// and key from the configuration at path. The default path is read only if
// it exists; one given with -c must be readable. A file that exists but
// does not load as a whole (typically the broken file an operator is about
// to `tern reload`) is scanned for the two directives line by line instead,
// with a warning, so that the server can be asked and report the errors.
func adminFromConfig(path string, explicit bool, stderr io.Writer) (addr, key string, err error) {
	if _, statErr := os.Stat(path); statErr != nil {
		if explicit {
			return "", "", fmt.Errorf("-c %s: %v", path, statErr)
		}
		return defaultMgmtAddr, "", nil
	}
	mgmt, key := defaultMgmtAddr, ""
	cfg, loadErr := config.Load(path, config.Options{Hostname: "localhost"})
	if loadErr == nil {
		mgmt, key = cfg.HTTPMgmtAddr.Value, cfg.HTTPAPIKey.Value
	} else {
		src, readErr := config.ReadFile(path)
		if readErr != nil {
			if explicit {
				return "", "", fmt.Errorf("-c %s: %v", path, readErr)
			}
			fmt.Fprintf(stderr, "warning: cannot read %s (%v); using the default admin API address\n", path, readErr)
			return defaultMgmtAddr, "", nil
		}
		fmt.Fprintf(stderr, "warning: %s does not load (%s); taking http-mgmt-port and http-api-key from its lines as written\n",
			path, firstLine(loadErr.Error()))
		if v := scanDirective(src, "http-mgmt-port"); v != "" {
			mgmt = v
		}
		key = scanDirective(src, "http-api-key")
	}
	return clientAddr(mgmt), key, nil
}

// scanDirective returns the first argument of the first top-level line
// naming directive in src, "" when there is none. It knows only what the
// two admin directives need: words, a quoted string, and comments.
func scanDirective(src []byte, directive string) string {
	for line := range strings.SplitSeq(string(src), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] != directive || strings.HasPrefix(fields[1], "#") {
			continue
		}
		v := fields[1]
		if strings.HasPrefix(v, `"`) {
			rest := strings.TrimSpace(line)[len(directive):]
			rest = strings.TrimSpace(rest)
			if q, err := strconv.QuotedPrefix(rest); err == nil {
				if u, err := strconv.Unquote(q); err == nil {
					return u
				}
			}
		}
		return v
	}
	return ""
}

// clientAddr turns http-mgmt-port's value (PORT, :PORT or ADDR:PORT) into
// an address to connect to: a wildcard or missing host means this host.
func clientAddr(mgmt string) string {
	if _, err := strconv.Atoi(mgmt); err == nil {
		mgmt = ":" + mgmt
	}
	host, port, err := net.SplitHostPort(mgmt)
	if err != nil {
		return mgmt // apiBase reports it
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// firstLine is s up to its first newline, with a count of the rest.
func firstLine(s string) string {
	first, rest, ok := strings.Cut(s, "\n")
	if !ok {
		return s
	}
	return fmt.Sprintf("%s, and %d more", first, strings.Count(rest, "\n")+1)
}

// apiAnswer is a server answer: its status and JSON body.
type apiAnswer struct {
	status int
	body   []byte
}

// apiErrorBody is the JSON of an error answer; errors lists the problems of
// a refused configuration.
type apiErrorBody struct {
	Error  string   `json:"error"`
	Errors []string `json:"errors"`
}

// do sends a request: GET with query parameters, or POST with params as a
// JSON body. It returns the answer, or an exit code when there is none:
// the request could not be sent or the server did not answer.
func (c *apiClient) do(method, path string, query url.Values, params map[string]any) (apiAnswer, int) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var body io.Reader
	if params != nil {
		b, err := json.Marshal(params)
		if err != nil {
			fmt.Fprintf(c.stderr, "tern %s: %v\n", c.name, err)
			return apiAnswer{}, exitFailed
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		fmt.Fprintf(c.stderr, "tern %s: %v\n", c.name, err)
		return apiAnswer{}, exitUsage
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "tern-cli/"+version)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		fmt.Fprintf(c.stderr, "tern %s: cannot reach the admin API at %s: %v\n", c.name, c.base, unwrapURLError(err))
		return apiAnswer{}, exitUnreachable
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Fprintf(c.stderr, "tern %s: reading the answer of %s: %v\n", c.name, c.base, unwrapURLError(err))
		return apiAnswer{}, exitUnreachable
	}
	return apiAnswer{status: resp.StatusCode, body: b}, -1
}

// unwrapURLError drops the "Get URL:" prefix the http client adds; the
// message names the API already.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// call sends a request and handles what every command does alike: --json
// prints the body as it came, whatever the status; an error answer prints
// the server's message on stderr. It returns the answer for a 2xx status,
// and otherwise the exit code to end with.
func (c *apiClient) call(method, path string, query url.Values, params map[string]any) (apiAnswer, int) {
	ans, code := c.do(method, path, query, params)
	if code >= 0 {
		return ans, code
	}
	if c.json {
		c.printJSON(ans.body)
	}
	if ans.status/100 == 2 {
		return ans, -1
	}
	return ans, c.reportError(method, path, ans)
}

// reportError prints an error answer on stderr and returns its exit code.
func (c *apiClient) reportError(method, path string, ans apiAnswer) int {
	var e apiErrorBody
	msg := strings.TrimSpace(string(ans.body))
	if json.Unmarshal(ans.body, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	if msg == "" {
		msg = http.StatusText(ans.status)
	}
	fmt.Fprintf(c.stderr, "tern %s: %s (%s %s: %d)\n", c.name, msg, method, path, ans.status)
	for _, line := range e.Errors {
		fmt.Fprintln(c.stderr, line)
	}
	if ans.status == http.StatusForbidden || ans.status == http.StatusUnauthorized {
		fmt.Fprintln(c.stderr, "  (check http-access for this host and the key: --key, TERN_API_KEY or http-api-key in -c FILE)")
		return exitDenied
	}
	return exitFailed
}

// printJSON writes a JSON answer indented, or as it came if it is not JSON.
func (c *apiClient) printJSON(body []byte) {
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(body), "", "  "); err != nil {
		c.stdout.Write(body)
		return
	}
	buf.WriteByte('\n')
	c.stdout.Write(buf.Bytes())
}

// view GETs path and decodes the answer into v, for a table. done is true
// when the command ends here, with code: after an error answer, or with
// --json, which printed the answer already. An answer that does not decode
// is a server problem (exit 1).
func (c *apiClient) view(path string, query url.Values, v any) (code int, done bool) {
	ans, code := c.call("GET", path, query, nil)
	if code >= 0 {
		return code, true
	}
	return c.decode(ans, v)
}

// decode unmarshals a 2xx answer into v unless --json printed it already;
// see view.
func (c *apiClient) decode(ans apiAnswer, v any) (code int, done bool) {
	if c.json {
		return exitOK, true
	}
	if err := json.Unmarshal(ans.body, v); err != nil {
		fmt.Fprintf(c.stderr, "tern %s: the server's answer does not decode: %v\n", c.name, err)
		return exitFailed, true
	}
	return -1, false
}
