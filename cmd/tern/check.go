package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/vmta"
)

// maxListed is how many items of one kind the summary names before it
// counts the rest, so a 500-VMTA file still fits on one screen.
const maxListed = 6

// runCheck validates a configuration file. Exit 0 with a summary when it is
// valid, 1 with every error when it is not, 2 on usage errors.
func runCheck(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quiet := fs.Bool("q", false, "print only errors and warnings")
	migrate := fs.Bool("migrate", false, "report how each PowerMTA directive of FILE is treated: applied, applied differently, ignored; and what to fix")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: tern check [-q] [--migrate] FILE")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	if *migrate {
		return runMigrate(fs.Arg(0), stdout, stderr)
	}
	// The same loading as serve's, so check refuses exactly what serve
	// would refuse.
	cfg, reg, ok := loadConfig(fs.Arg(0), stderr)
	if !ok {
		return 1
	}
	if !*quiet {
		printSummary(stdout, cfg, reg)
	}
	printDiagnostics(stderr, "warning: ", cfg.Warnings)
	return 0
}

func printDiagnostics(w io.Writer, prefix string, ds []config.Diagnostic) {
	for _, d := range ds {
		fmt.Fprintf(w, "%s: %s%s\n", d.Pos, prefix, d.Message)
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// list joins items, naming at most maxListed and counting the rest.
func list(items []string) string {
	if len(items) == 0 {
		return "-"
	}
	if len(items) > maxListed {
		return strings.Join(items[:maxListed], ", ") + fmt.Sprintf(", … and %d more", len(items)-maxListed)
	}
	return strings.Join(items, ", ")
}

// printSummary writes the one-screen overview of a valid configuration.
func printSummary(w io.Writer, cfg *config.Config, reg *vmta.Registry) {
	fmt.Fprintf(w, "%s: configuration OK (%s)\n", cfg.Path, plural(len(cfg.Warnings), "warning"))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(what string, n int, detail string) {
		count := ""
		if n >= 0 {
			count = fmt.Sprint(n)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", what, count, detail)
	}

	var items []string
	for _, l := range cfg.Listeners {
		s := l.Addr
		var opts []string
		if l.Source != "" {
			opts = append(opts, "source "+l.Source)
		}
		if l.TLS {
			opts = append(opts, "implicit TLS")
		}
		if len(opts) > 0 {
			s += " (" + strings.Join(opts, ", ") + ")"
		}
		items = append(items, s)
	}
	row("listeners", len(cfg.Listeners), list(items))
	row("host-name", -1, cfg.HostName.Value)
	row("spool", -1, fmt.Sprintf("%s (min-free-space %s)", cfg.Spool.Dir.Value, cfg.Spool.MinFreeSpace.Value))
	starttls := "not offered (no smtp-server-tls-certificate)"
	if cfg.TLSCertificate != nil {
		starttls = cfg.TLSCertificateFile.Value
		if lo, hi, ok := cfg.InboundTLSVersions(); ok {
			starttls += " (" + tlsVersionName(lo)
			if hi != lo {
				starttls += " to " + tlsVersionName(hi)
			}
			starttls += ")"
		}
	}
	row("STARTTLS", -1, starttls)

	items = items[:0]
	for _, s := range cfg.Sources {
		if s.Named() {
			items = append(items, s.Name)
		} else {
			items = append(items, s.Prefix.String())
		}
	}
	row("sources", len(cfg.Sources), list(items))

	items = items[:0]
	for _, u := range cfg.Users {
		kind := "password-hash"
		if u.Password.Set {
			kind = "plaintext password"
		}
		items = append(items, fmt.Sprintf("%s (%s, source %s)", u.Name, kind, u.Source.Value))
	}
	row("smtp-users", len(cfg.Users), list(items))

	items = items[:0]
	for _, v := range reg.VMTAs() {
		var hosts []string
		for _, h := range v.SourceHosts {
			ip := "default route"
			if h.IP.IsValid() {
				ip = h.IP.String()
			}
			hosts = append(hosts, ip+" "+h.HostName)
		}
		items = append(items, fmt.Sprintf("%s [%s]", v.Name, strings.Join(hosts, "; ")))
	}
	row("virtual MTAs", len(reg.VMTAs()), list(items))

	items = items[:0]
	for _, p := range cfg.Pools {
		var members []string
		for _, m := range p.Members {
			members = append(members, m.Name)
		}
		items = append(items, fmt.Sprintf("%s (%s)", p.Name, strings.Join(members, " ")))
	}
	row("pools", len(cfg.Pools), list(items))

	items = items[:0]
	n := len(cfg.Domains)
	for _, d := range cfg.Domains {
		items = append(items, d.Pattern.String())
	}
	for _, v := range cfg.VMTAs {
		for _, d := range v.Domains {
			items = append(items, d.Pattern.String()+"/"+v.Name)
		}
		n += len(v.Domains)
	}
	for _, p := range cfg.Pools {
		for _, d := range p.Domains {
			items = append(items, d.Pattern.String()+"/"+p.Name)
		}
		n += len(p.Domains)
	}
	row("domain blocks", n, list(items))

	items = items[:0]
	for _, p := range cfg.PatternLists {
		items = append(items, fmt.Sprintf("%s (%s)", p.Name, plural(len(p.Rules), "rule")))
	}
	for _, p := range cfg.SMTPPatternLists {
		items = append(items, fmt.Sprintf("%s (%s, replies)", p.Name, plural(len(p.Rules), "rule")))
	}
	row("pattern lists", len(cfg.PatternLists)+len(cfg.SMTPPatternLists), list(items))

	items = items[:0]
	for _, a := range cfg.AcctFiles {
		items = append(items, fmt.Sprintf("%s (records %s)", a.Name(), a.Records.Value))
	}
	row("acct files", len(cfg.AcctFiles), list(items))
	row("admin API", -1, fmt.Sprintf("%s (%s)", cfg.HTTPMgmtAddr.Value, plural(len(cfg.HTTPAccess), "access rule")))
	logTo := "standard error"
	if cfg.LogFile.Value != "" {
		logTo = cfg.LogFile.Value
	}
	row("log", -1, fmt.Sprintf("%s, level %s", logTo, strings.ToLower(cfg.LogLevel.Value.String())))
	tw.Flush()
}

// tlsVersionName names a TLS version as the smtp-server-tls-allow lines
// do: "TLS 1.2".
func tlsVersionName(v uint16) string {
	return strings.Replace(tls.VersionName(v), "TLSv", "TLS ", 1)
}
