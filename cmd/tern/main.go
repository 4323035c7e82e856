// Command tern is the Tern mail delivery engine and its operator CLI.
//
// Subcommands:
//
//	tern serve -c FILE       run the daemon (SIGHUP reloads, SIGTERM drains and stops)
//	tern check FILE          validate a configuration and summarise it
//	tern hash-password       read a password, print a bcrypt hash for password-hash
//	tern version             print the version
//
// Operator commands over the admin API (http-mgmt-port), each with a table
// for people and --json for scripts:
//
//	tern status              uptime, spool, queued mail, connections, traffic
//	tern queues [QUEUE]      queues holding mail (filters), or one queue's events
//	tern vmtas | domains     virtual MTAs; the domains holding the most mail
//	tern settings DOMAIN/VMTA  the delivery settings in effect and where set
//	tern providers | hosts   provider queues (windows, mode, shaping); MX hosts down
//	tern shaping | lift      traffic-shaping states in force; end some (lift)
//	tern pause|resume|retry QUEUE, delete QUEUE|--job JOB, set-mode QUEUE MODE
//	tern reload              read the configuration again (errors: exit 1)
//
// and tern inject FILE|DIR... to submit .eml files over SMTP. Exit codes: 0
// success, 1 refused or failed, 2 usage, 3 unreachable, 4 access denied.
package main

import (
	"fmt"
	"io"
	"os"
)

// version is the release this binary was built from; set with -ldflags.
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// command is one subcommand: it gets its own arguments and the process's
// standard streams and returns the exit code.
type command struct {
	name    string
	summary string
	run     func(args []string, stdin io.Reader, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"serve", "run the daemon: tern serve -c FILE", runServe},
		{"check", "validate a configuration file and print a summary", runCheck},
		{"hash-password", "read a password and print a bcrypt hash for password-hash", runHashPassword},
		{"status", "summary of the running server (admin API)", runStatus},
		{"queues", "list the queues holding mail, or show one: queues [DOMAIN/VMTA]", runQueues},
		{"vmtas", "list the virtual MTAs and the mail they hold", runVMTAs},
		{"domains", "list the destination domains holding the most mail", runDomains},
		{"settings", "delivery settings in effect for a queue: settings DOMAIN/VMTA", runSettings},
		{"providers", "list the provider queues: windows, mode, traffic shaping", runProviders},
		{"shaping", "list the traffic-shaping states in force", runShaping},
		{"hosts", "list the MX hosts down or failing, with their next probe", runHosts},
		{"pause", "stop delivery from queues: pause QUEUE|--all", runPause},
		{"resume", "resume delivery from paused queues: resume QUEUE|--all", runResume},
		{"retry", "make deferred recipients due now: retry QUEUE|--all", runRetry},
		{"delete", "delete queued recipients: delete QUEUE|--job JOB|--all", runDelete},
		{"set-mode", "put queues in backoff mode or back: set-mode QUEUE backoff|normal", runSetMode},
		{"lift", "end traffic-shaping states: lift --vmta V|--provider P|--action A|--all", runLift},
		{"reload", "make the server read its configuration again", runReload},
		{"inject", "submit .eml files over SMTP: inject [flags] FILE|DIR...", runInject},
		{"version", "print the version", func(_ []string, _ io.Reader, stdout, _ io.Writer) int {
			fmt.Fprintln(stdout, "tern", version)
			return 0
		}},
	}
}

// run dispatches to a subcommand; it is main without the process, for tests.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdin, stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "tern: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: tern <command> [arguments]")
	fmt.Fprintln(w, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.summary)
	}
}
