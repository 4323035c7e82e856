package vmta

import (
	"strings"

	"github.com/ternmta/tern/config"
)

// Policy is the effective delivery policy of a queue: every <domain>
// directive resolved for one (VMTA, pool, domain).
//
// Policies are shared: every domain that matches the same <domain> blocks
// gets the same *Policy, so a Policy and the slices inside it must be
// treated as read-only.
type Policy struct {
	// Settings holds a value for every directive. Where a block set it, Set
	// is true and Pos says where, so an operator can be told why a queue
	// behaves as it does ("max-smtp-out 2 (tern.conf:14:5)"); otherwise
	// Value is the built-in default.
	Settings config.DomainSettings
	// Matched lists the <domain> blocks that apply, most specific first: the
	// order in which each directive was looked for.
	Matched []MatchedBlock
}

// Level says where a <domain> block stands, and so its place in the
// precedence order.
type Level int

// The levels, most specific first.
const (
	// LevelVMTA is a <domain> inside a <virtual-mta>.
	LevelVMTA Level = iota
	// LevelPool is a <domain> inside a <virtual-mta-pool>.
	LevelPool
	// LevelGlobal is a top-level <domain>.
	LevelGlobal
)

// String names the level as the block that holds it.
func (l Level) String() string {
	switch l {
	case LevelVMTA:
		return "virtual-mta"
	case LevelPool:
		return "virtual-mta-pool"
	}
	return "global"
}

// MatchedBlock is one <domain> block that applies to a queue.
type MatchedBlock struct {
	Level Level
	// Owner is the VMTA or pool the block stands in; empty for a global one.
	Owner string
	Block *config.Domain
}

// String describes the block as written, with where it is:
// "<virtual-mta mta1> <domain [*.]example.com> at tern.conf:12:5".
func (m MatchedBlock) String() string {
	s := "<domain " + m.Block.Pattern.String() + "> at " + m.Block.Pos.String()
	if m.Level != LevelGlobal {
		s = "<" + m.Level.String() + " " + m.Owner + "> " + s
	}
	return s
}

// Policy returns the effective delivery policy for mail to domain sent by
// the VMTA named vmta, selected through the pool named pool ("" when the
// VMTA was chosen directly). Names are case-insensitive and domain is
// lower-cased (a trailing dot is ignored).
//
// Each directive is resolved on its own, first found wins, as in the
// configuration reference: the VMTA's <domain> blocks, then the pool's, then
// the global ones, then the built-in default. Within each of these levels
// the exact pattern comes first; then the wildcard patterns that match, the
// longest suffix first and, for one suffix, [*.]x before *.x; then *. File
// order never matters.
//
// A name that is not in this registry contributes nothing, so mail still
// queued for a VMTA (or pool) that a reload removed gets the policy of the
// levels that remain, in the worst case the global blocks alone, and keeps
// being delivered. The pool's blocks apply whenever the pool is known, even
// if the VMTA is no longer one of its members, for the same reason.
//
// Policy is safe for concurrent use and cheap: it matches the domain against
// a few maps and returns a cached *Policy. The cache is keyed by the set of
// blocks that matched, not by domain, so it is bounded by the configuration
// however many domains the registry sees before the next reload.
func (r *Registry) Policy(vmta, pool, domain string) *Policy {
	d := strings.TrimSuffix(strings.ToLower(domain), ".")
	var buf [sigCap]int32
	ids := buf[:0]
	if t := r.names[strings.ToLower(vmta)]; t.vmta != nil {
		ids = t.vmta.domains.match(d, ids)
	}
	if pool != "" {
		if t := r.names[strings.ToLower(pool)]; t.pool != nil {
			ids = t.pool.domains.match(d, ids)
		}
	}
	ids = r.global.match(d, ids)
	if len(ids) > sigCap {
		// Only a domain with very many labels, each with its own block,
		// gets here; resolving without the cache is correct, just slower.
		return r.resolve(ids)
	}
	k := sigKey{n: int32(len(ids))}
	copy(k.ids[:], ids)
	if p, ok := r.policies.Load(k); ok {
		return p.(*Policy)
	}
	p, _ := r.policies.LoadOrStore(k, r.resolve(ids))
	return p.(*Policy)
}

// sigCap is how many matching blocks a cache key holds. A domain matches
// at most one exact block, two per suffix and one * per level, and only the
// suffixes the configuration names count, so real configurations stay far
// below it.
const sigCap = 15

// sigKey identifies a policy by the blocks that matched, most specific
// first. Block ids are unique across levels, so the ordered list alone
// determines the result.
type sigKey struct {
	n   int32
	ids [sigCap]int32
}

// resolve folds the matched blocks, from the least specific (the built-in
// defaults) to the most specific, so each directive ends up with the most
// specific value that was set.
func (r *Registry) resolve(ids []int32) *Policy {
	acc := config.DefaultDomainSettings()
	p := &Policy{Matched: make([]MatchedBlock, len(ids))}
	for i := len(ids) - 1; i >= 0; i-- {
		b := r.blocks[ids[i]]
		acc = b.block.Settings.Inherit(acc)
		p.Matched[i] = MatchedBlock{Level: b.level, Owner: b.owner, Block: b.block}
	}
	p.Settings = acc
	return p
}

// domainBlock is one <domain> block and where it stands.
type domainBlock struct {
	level Level
	owner string
	block *config.Domain
}

// domainIndex finds the <domain> blocks of one level that match a domain.
// Values are block ids (indexes into Registry.blocks).
type domainIndex struct {
	exact   map[string]int32 // example.com
	selfSub map[string]int32 // [*.]example.com, by example.com
	sub     map[string]int32 // *.example.com, by example.com
	any     int32            // *: id+1, 0 when there is none
}

// indexDomains registers the blocks of one level and indexes them.
func (r *Registry) indexDomains(level Level, owner string, list []*config.Domain) domainIndex {
	var x domainIndex
	put := func(m *map[string]int32, key string, id int32) {
		if *m == nil {
			*m = map[string]int32{}
		}
		// config merges blocks with the same pattern into one, so a second
		// entry cannot happen; keeping the first makes it harmless if a
		// hand-made Config has one.
		if _, dup := (*m)[key]; !dup {
			(*m)[key] = id
		}
	}
	for _, d := range list {
		id := int32(len(r.blocks))
		r.blocks = append(r.blocks, domainBlock{level: level, owner: owner, block: d})
		switch d.Pattern.Kind {
		case config.PatternExact:
			put(&x.exact, d.Pattern.Domain, id)
		case config.PatternSelfAndSubdomains:
			put(&x.selfSub, d.Pattern.Domain, id)
		case config.PatternSubdomains:
			put(&x.sub, d.Pattern.Domain, id)
		case config.PatternAny:
			if x.any == 0 {
				x.any = id + 1
			}
		}
	}
	return x
}

// match appends to ids the blocks matching the lower-case domain d, most
// specific first: exact; then for each suffix of d from the longest,
// [*.]suffix before *.suffix (*.d itself does not match d); then *.
func (x *domainIndex) match(d string, ids []int32) []int32 {
	if id, ok := x.exact[d]; ok {
		ids = append(ids, id)
	}
	if len(x.selfSub) > 0 || len(x.sub) > 0 {
		for s := d; ; {
			if id, ok := x.selfSub[s]; ok {
				ids = append(ids, id)
			}
			if len(s) < len(d) {
				if id, ok := x.sub[s]; ok {
					ids = append(ids, id)
				}
			}
			i := strings.IndexByte(s, '.')
			if i < 0 {
				break
			}
			s = s[i+1:]
		}
	}
	if x.any != 0 {
		ids = append(ids, x.any-1)
	}
	return ids
}
