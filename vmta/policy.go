package vmta

import (
	"cmp"
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
	var levels [3]*domainOwner
	if t := r.names[strings.ToLower(vmta)]; t.vmta != nil {
		levels[LevelVMTA] = &t.vmta.domains
	}
	if pool != "" {
		if t := r.names[strings.ToLower(pool)]; t.pool != nil {
			levels[LevelPool] = &t.pool.domains
		}
	}
	levels[LevelGlobal] = &r.global
	var buf [sigCap]int32
	ids := r.match(d, &levels, buf[:0])
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

// domainOwner is a VMTA, a pool or the top level as an owner of <domain>
// blocks.
type domainOwner struct {
	id int32
	// any is the owner's <domain *> block id + 1; 0 when there is none.
	any int32
}

// ownerBlocks are one owner's blocks for one domain name x: the blocks
// written x, [*.]x and *.x, each as block id + 1 (0: none).
type ownerBlocks struct {
	owner               int32
	exact, selfSub, sub int32
}

// indexDomains registers an owner and its blocks. Owners are registered in
// increasing id order, so every r.byName entry stays sorted by owner.
func (r *Registry) indexDomains(level Level, name string, list []*config.Domain) domainOwner {
	o := domainOwner{id: r.owners}
	r.owners++
	for _, d := range list {
		id := int32(len(r.blocks)) + 1
		r.blocks = append(r.blocks, domainBlock{level: level, owner: name, block: d})
		if d.Pattern.Kind == config.PatternAny {
			o.any = cmp.Or(o.any, id)
			continue
		}
		entries := r.byName[d.Pattern.Domain]
		if n := len(entries); n == 0 || entries[n-1].owner != o.id {
			entries = append(entries, ownerBlocks{owner: o.id})
		}
		e := &entries[len(entries)-1]
		// config merges blocks with the same pattern into one, so a slot is
		// never filled twice; keeping the first makes a hand-made Config
		// with duplicates harmless.
		switch d.Pattern.Kind {
		case config.PatternExact:
			e.exact = cmp.Or(e.exact, id)
		case config.PatternSelfAndSubdomains:
			e.selfSub = cmp.Or(e.selfSub, id)
		case config.PatternSubdomains:
			e.sub = cmp.Or(e.sub, id)
		}
		r.byName[d.Pattern.Domain] = entries
	}
	return o
}

// match appends to ids the ids of the blocks matching the lower-case
// domain d, most specific first. Levels come in order (the VMTA's blocks,
// the pool's, the global ones; a nil level is skipped) and within a level:
// exact; then for each suffix of d from the longest, [*.]suffix before
// *.suffix (*.d itself does not match d); then *.
//
// The walk looks each suffix up once in byName, whatever the number of
// levels, and collects per level so the levels still come out in order.
func (r *Registry) match(d string, levels *[3]*domainOwner, ids []int32) []int32 {
	var store [3][sigCap]int32
	per := [3][]int32{store[0][:0], store[1][:0], store[2][:0]}
	for s := d; ; {
		if entries, ok := r.byName[s]; ok {
			for lv, o := range levels {
				if o == nil {
					continue
				}
				e := findOwner(entries, o.id)
				if e == nil {
					continue
				}
				first, second := e.selfSub, e.sub // a proper suffix: [*.]s, *.s
				if len(s) == len(d) {
					first, second = e.exact, e.selfSub // d itself: d, [*.]d
				}
				if first != 0 {
					per[lv] = append(per[lv], first-1)
				}
				if second != 0 {
					per[lv] = append(per[lv], second-1)
				}
			}
		}
		i := strings.IndexByte(s, '.')
		if i < 0 {
			break
		}
		s = s[i+1:]
	}
	for lv, o := range levels {
		if o == nil {
			continue
		}
		ids = append(ids, per[lv]...)
		if o.any != 0 {
			ids = append(ids, o.any-1)
		}
	}
	return ids
}

// findOwner finds owner's entry in entries, which are sorted by owner. A
// hand-written binary search: this is the inner loop of Policy, and
// slices.BinarySearchFunc with a comparison closure is not inlined.
func findOwner(entries []ownerBlocks, owner int32) *ownerBlocks {
	lo, hi := 0, len(entries)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		switch {
		case entries[m].owner < owner:
			lo = m + 1
		case entries[m].owner > owner:
			hi = m
		default:
			return &entries[m]
		}
	}
	return nil
}
