package main

import (
	"os"
	"syscall"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/listener"
)

// The file-descriptor budget. Every connection, in or out, every spool
// table and every log or accounting file is a file descriptor, and the
// process has RLIMIT_NOFILE of them. Without a budget, one subsystem can
// take them all: 20,000 idle admin connections once left SMTP unable to
// accept and delivery unable to dial ("too many open files"). So tern
// serve raises its soft limit to the hard one (Go does that at start on
// Linux; it is done here too, so the figure is known), reserves room for
// the spool and its own files, and gives inbound and outbound connections
// shares they cannot exceed: total-max-smtp-in and total-max-smtp-out,
// lowered in proportion when the limit is too small for both.

const (
	// adminConnCap is the admin API's connection cap, counted in the
	// budget.
	adminConnCap = listener.DefaultAdminMaxConns
	// fdSpool is the most files the spool keeps open (pebble's table
	// cache, queue.Options.MaxOpenFiles) plus its log and manifest.
	fdSpool = 512 + 16
	// fdReserved covers the rest: standard streams, the listeners' and the
	// admin API's sockets, log and accounting files, pipes, the resolver.
	fdReserved = 128
	// fdPerOutbound: an outbound worker holds its connection and, while
	// it looks up a route, a DNS socket.
	fdPerOutbound = 2
	// fdMaxLimit is as high as the soft limit is raised, however high
	// the hard limit.
	fdMaxLimit = 1 << 20
)

// fdBudget is how the process's file descriptors are shared out.
type fdBudget struct {
	Limit    int // RLIMIT_NOFILE, after raising the soft limit
	Spool    int
	Reserved int
	Admin    int // the admin API's connection cap
	Inbound  int // inbound SMTP connections
	Outbound int // outbound SMTP connections
	// Lowered says total-max-smtp-in or -out had to be lowered to fit.
	Lowered bool
}

// view is the budget for the admin API's status, with the descriptors open
// now (counted in /proc/self/fd; -1 where that cannot be read).
func (b fdBudget) view() listener.FileDescriptors {
	open := -1
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		open = len(ents)
	}
	return listener.FileDescriptors{Limit: b.Limit, Open: open, Spool: b.Spool, Admin: b.Admin,
		Inbound: b.Inbound, Outbound: b.Outbound, Lowered: b.Lowered}
}

// raiseNoFile raises the soft RLIMIT_NOFILE to the hard limit (at most
// fdMaxLimit) and returns the soft limit in force.
func raiseNoFile() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	want := min(rl.Max, fdMaxLimit)
	if rl.Cur < want {
		up := rl
		up.Cur = want
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up) == nil {
			rl = up
		}
	}
	return int(rl.Cur)
}

// planFDs shares limit file descriptors out for cfg, with admin for the
// admin API's connection cap.
func planFDs(limit, admin int, cfg *config.Config) fdBudget {
	b := fdBudget{Limit: limit, Spool: fdSpool, Reserved: fdReserved, Admin: admin,
		Inbound: cfg.TotalMaxSMTPIn.Value, Outbound: cfg.TotalMaxSMTPOut.Value}
	left := limit - b.Spool - b.Reserved - b.Admin
	want := b.Inbound + fdPerOutbound*b.Outbound
	if want <= left {
		return b
	}
	b.Lowered = true
	if left < 2+fdPerOutbound {
		// Not even one each: let each have one, and the log say why.
		b.Inbound, b.Outbound = 1, 1
		return b
	}
	b.Inbound = max(1, b.Inbound*left/want)
	b.Outbound = max(1, (left-b.Inbound)/fdPerOutbound)
	return b
}
