package vmta

import (
	"fmt"
	"strings"

	"github.com/ternmta/tern/config"
)

// How a Selection was made: the step of the selection order that chose it.
const (
	ViaHeader      = "header"       // the X-Virtual-MTA header
	ViaPatternList = "pattern-list" // a rule of the source's pattern-list
	ViaSource      = "source"       // the source's default-virtual-mta
	ViaDefault     = "default"      // nothing selected one: {default}
)

// SelectInput is what VMTA selection looks at for one message.
type SelectInput struct {
	// Header is the X-Virtual-MTA value and HasHeader whether the message
	// carries the header at all. It is honoured only when Source has
	// process-x-virtual-mta.
	Header    string
	HasHeader bool
	// Source is the session's merged source (see Registry.Source), which
	// already lets a listener's or user's named source override the
	// client IP's for pattern-list and default-virtual-mta. Nil is treated
	// as the built-in defaults: no header, no pattern list, {default}.
	Source *SourcePolicy
	// Message is what the pattern list matches.
	Message MessageInfo
}

// Selection is the VMTA a message goes through.
type Selection struct {
	VMTA *VMTA
	// Pool is the pool the VMTA was picked from, nil when the name chose
	// the VMTA itself. Its <domain> blocks take part in the policy of the
	// message's queues (see Registry.Policy).
	Pool *Pool
	// Via is the step that chose it: ViaHeader, ViaPatternList, ViaSource
	// or ViaDefault.
	Via string
}

// UnknownVMTAError is Select's error when X-Virtual-MTA names no VMTA or
// pool. The listener rejects the message (550 5.7.1) rather than fall back:
// mail meant for a segregated stream must not leave through another.
type UnknownVMTAError struct {
	// Name is the header's value, as given.
	Name string
}

// Error reads `unknown virtual MTA "x"`, fit for an SMTP reply: the name is
// quoted in ASCII (so a CR or LF in it cannot break the reply) and cut
// short when long (a reply line is limited to 512 octets).
func (e *UnknownVMTAError) Error() string {
	const maxLen = 64
	name := e.Name
	if len(name) > maxLen {
		name = name[:maxLen] + "..."
	}
	return fmt.Sprintf("unknown virtual MTA %+q", name)
}

// Select chooses the VMTA for a message. The first step that names one
// wins:
//
//  1. the X-Virtual-MTA header, when present and the source has
//     process-x-virtual-mta (an unknown name is an *UnknownVMTAError,
//     never a silent fallback);
//  2. the first matching rule of the source's pattern-list;
//  3. the source's default-virtual-mta, when a block sets it;
//  4. {default}.
//
// A name that resolves to a pool picks the pool's next member round robin.
// Select is safe for concurrent use.
func (r *Registry) Select(in SelectInput) (Selection, error) {
	src := in.Source
	if src == nil {
		return r.names[strings.ToLower(config.DefaultVMTA)].pick(ViaDefault), nil
	}
	if in.HasHeader && src.ProcessXVirtualMTA {
		name := strings.TrimSpace(in.Header)
		t, ok := r.names[strings.ToLower(name)]
		if !ok {
			return Selection{}, &UnknownVMTAError{Name: name}
		}
		return t.pick(ViaHeader), nil
	}
	if pl := src.PatternList; pl != nil {
		if i := pl.match(in.Message); i >= 0 {
			if t := pl.targets[i]; t.vmta != nil || t.pool != nil {
				return t.pick(ViaPatternList), nil
			}
			// Build checked every rule's target against this registry;
			// a list from another registry is a caller's bug.
			return Selection{}, &UnknownVMTAError{Name: pl.Config.Rules[i].VirtualMTA}
		}
	}
	via := ViaDefault
	name := config.DefaultVMTA
	if src.Settings.DefaultVirtualMTA.Set {
		via, name = ViaSource, src.DefaultVirtualMTA
	}
	t, ok := r.names[strings.ToLower(name)]
	if !ok {
		// Build checked default-virtual-mta, so only a SourcePolicy made
		// by another registry gets here.
		return Selection{}, &UnknownVMTAError{Name: name}
	}
	return t.pick(via), nil
}

// pick makes a Selection of a resolved name, taking a pool's next member.
func (t target) pick(via string) Selection {
	if t.pool != nil {
		return Selection{VMTA: t.pool.Next(), Pool: t.pool, Via: via}
	}
	return Selection{VMTA: t.vmta, Via: via}
}
