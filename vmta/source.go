package vmta

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"

	"github.com/ternmta/tern/config"
)

// SourcePolicy is how an injecting session is treated: the <source>
// directives merged for its client IP, listener and user, with every value
// resolved (built-in defaults for what no block sets). The listener reads
// the plain fields; Settings keeps the merged directives with their
// positions for diagnostics.
type SourcePolicy struct {
	SMTPService               bool
	AlwaysAllowRelaying       bool
	RequireAuth               bool
	RequireStartTLS           bool
	AllowUnencryptedPlainAuth bool
	SMTPMaxAuthFailureRate    config.Rate
	ProcessXVirtualMTA        bool
	// DefaultVirtualMTA names the VMTA or pool used when neither the header
	// nor the pattern list selects one; {default} unless a block sets it.
	DefaultVirtualMTA string
	ProcessXJob       bool
	MaxMessageSize    config.Size
	MaxRcptPerMessage int
	AddReceivedHeader bool
	HideMessageSource bool
	// RemoveHeaders are the headers to strip before spooling. Like every
	// directive it comes from the most specific block that sets it: lists
	// from several blocks are not concatenated.
	RemoveHeaders []string
	// PatternList is the source's pattern list; nil when none is set.
	PatternList    *PatternList
	LogConnections bool
	LogCommands    bool

	// Settings are the merged directives: Set and Pos tell which block each
	// value came from.
	Settings config.SourceSettings
	// Blocks are the <source> blocks that applied, in the order they were
	// merged (each overriding the ones before it): the CIDR ones from the
	// least specific, then the named ones.
	Blocks []*config.Source
}

// Source returns the policy for a session from client address ip, with the
// named sources names applied on top, in order: typically the listener's
// source= and, after AUTH, the user's source ({auth} unless the user names
// another). Empty names are skipped, so Source(ip, listener.Source) works
// whether or not the listener names one.
//
// The <source CIDR> blocks that contain ip are merged from the least
// specific (0/0) to the most specific (a single address), each directive on
// its own, so a /32 that sets only default-virtual-mta still inherits
// max-message-size from 10/8. Then each named source's set directives
// override. A name without a block contributes nothing: that is how
// {auth} behaves when the file has no <source {auth}> (config rejects
// other unknown names).
//
// Address families are kept apart as config parses them: 0/0 is IPv4's
// 0.0.0.0/0 and matches IPv4 clients only; ::/0 is the IPv6 catch-all. An
// IPv4-mapped IPv6 address (::ffff:192.0.2.1, as a dual-stack listener
// reports IPv4 clients) is matched as the IPv4 address it carries, and an
// IPv6 zone (fe80::1%eth0) is ignored. An invalid ip matches no CIDR block.
//
// The result is shared with every session that matches the same blocks
// (the merges are made at Build, or once per combination of names, and
// kept), so it must be treated as read-only.
func (r *Registry) Source(ip netip.Addr, names ...string) *SourcePolicy {
	ip = ip.Unmap().WithZone("")
	base, baseID := r.noSource, 0
	if ip.IsValid() {
		// Most specific first: the first block that contains ip decides,
		// because its merged policy already folds in every block above it.
		for i := len(r.cidrSources) - 1; i >= 0; i-- {
			if n := r.cidrSources[i]; n.src.Prefix.Contains(ip) {
				base, baseID = n.policy, i+1
				break
			}
		}
	}
	var buf [32]byte
	key := binary.AppendUvarint(buf[:0], uint64(baseID))
	applied := false
	for _, name := range names {
		if i, ok := r.named[strings.ToLower(name)]; ok && name != "" {
			key = binary.AppendUvarint(key, uint64(i))
			applied = true
		}
	}
	if !applied {
		return base
	}
	if p, ok := r.sourceCache.Load(string(key)); ok {
		return p.(*SourcePolicy)
	}
	acc := base.Settings
	blocks := slices.Clone(base.Blocks)
	for _, name := range names {
		if i, ok := r.named[strings.ToLower(name)]; ok && name != "" {
			s := r.namedSources[i]
			acc = s.Settings.Inherit(acc)
			blocks = append(blocks, s)
		}
	}
	p, _ := r.sourceCache.LoadOrStore(string(key), r.newSourcePolicy(acc, blocks))
	return p.(*SourcePolicy)
}

// sourceNode is a <source CIDR> block with its policy: the block merged
// over every less specific block that contains it.
type sourceNode struct {
	src    *config.Source
	policy *SourcePolicy
}

// buildSources merges every CIDR block over its parent, the most specific
// block that contains it, so Source only has to find the most specific
// block that contains the client. nodes must be sorted least specific
// first.
func (r *Registry) buildSources(nodes []sourceNode) {
	r.noSource = r.newSourcePolicy(config.DefaultSourceSettings(), nil)
	for i := range nodes {
		n := &nodes[i]
		parent := r.noSource
		for j := i - 1; j >= 0; j-- {
			if p := nodes[j].src.Prefix; p.Bits() < n.src.Prefix.Bits() && p.Contains(n.src.Prefix.Addr()) {
				parent = nodes[j].policy
				break
			}
		}
		blocks := append(slices.Clone(parent.Blocks), n.src)
		n.policy = r.newSourcePolicy(n.src.Settings.Inherit(parent.Settings), blocks)
	}
	r.cidrSources = nodes
}

// newSourcePolicy resolves merged settings into a SourcePolicy.
func (r *Registry) newSourcePolicy(acc config.SourceSettings, blocks []*config.Source) *SourcePolicy {
	p := &SourcePolicy{
		SMTPService:               acc.SMTPService.Value,
		AlwaysAllowRelaying:       acc.AlwaysAllowRelaying.Value,
		RequireAuth:               acc.RequireAuth.Value,
		RequireStartTLS:           acc.RequireStartTLS.Value,
		AllowUnencryptedPlainAuth: acc.AllowUnencryptedPlainAuth.Value,
		SMTPMaxAuthFailureRate:    acc.SMTPMaxAuthFailureRate.Value,
		ProcessXVirtualMTA:        acc.ProcessXVirtualMTA.Value,
		DefaultVirtualMTA:         acc.DefaultVirtualMTA.Value,
		ProcessXJob:               acc.ProcessXJob.Value,
		MaxMessageSize:            acc.MaxMessageSize.Value,
		MaxRcptPerMessage:         acc.MaxRcptPerMessage.Value,
		AddReceivedHeader:         acc.AddReceivedHeader.Value,
		HideMessageSource:         acc.HideMessageSource.Value,
		RemoveHeaders:             acc.RemoveHeaders.Value,
		LogConnections:            acc.LogConnections.Value,
		LogCommands:               acc.LogCommands.Value,
		Settings:                  acc,
		Blocks:                    blocks,
	}
	if acc.PatternList.Value != "" {
		p.PatternList = r.patternLists[strings.ToLower(acc.PatternList.Value)]
	}
	return p
}
