package vmta

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ternmta/tern/config"
)

// Registry is the runtime model of one configuration. It is built once by
// Build and never changes afterwards (apart from internal, concurrency-safe
// counters and caches), so any number of goroutines may use it at once and a
// reload replaces it as a whole.
type Registry struct {
	cfg *config.Config

	// names maps a lower-case VMTA or pool name to it: the two share one
	// name space, as in PowerMTA, so X-Virtual-MTA may name either.
	names map[string]target
	vmtas []*VMTA // sorted by name
	pools []*Pool // sorted by name

	// cidrSources are the <source CIDR> blocks, least specific first, each
	// with its policy merged at Build; noSource is the policy when none
	// matches. namedSources are the <source NAME> blocks, and named finds
	// their index by lower-case name. sourceCache keeps the policies with
	// named sources applied, by the blocks that made them (see Source).
	cidrSources  []sourceNode
	noSource     *SourcePolicy
	namedSources []*config.Source
	named        map[string]int
	sourceCache  sync.Map // string → *SourcePolicy

	users map[string]*User
	// dummyHash is what Authenticate compares against when there is no real
	// hash to compare against, so that every attempt costs one bcrypt
	// comparison and timing does not tell whether a user exists.
	dummyHash []byte

	patternLists map[string]*PatternList

	// blocks are all <domain> blocks (VMTA, pool and global), indexed by
	// id. byName finds, for a domain name x, the blocks written x, [*.]x or
	// *.x, per owner; owners counts the owners registered, global is the
	// top level's. See policy.go.
	blocks   []domainBlock
	byName   map[string][]ownerBlocks
	owners   int32
	global   domainOwner
	policies sync.Map // sigKey → *Policy
}

// target is what a VMTA-or-pool name resolves to: exactly one is set.
type target struct {
	vmta *VMTA
	pool *Pool
}

// VMTA is a virtual MTA: a sending identity with its source addresses and
// the names it greets with.
type VMTA struct {
	// Name is the name as written in the file ({default} for the implicit
	// default VMTA).
	Name string
	// SourceHosts are the addresses outbound connections are bound to, each
	// with its EHLO name, in file order; delivery uses them round robin. It
	// is never empty: a VMTA without smtp-source-host (and the implicit
	// {default}) has one entry whose IP is the zero netip.Addr, which means
	// "let the operating system choose", i.e. the default route's address.
	SourceHosts []SourceHost
	// MaxSMTPOut caps the connections over all of this VMTA's queues; 0 is
	// no VMTA-wide cap (each queue still has its own max-smtp-out).
	MaxSMTPOut int
	// MaxSMTPMsgRate caps the messages over all of this VMTA's queues; the
	// zero Rate is unlimited.
	MaxSMTPMsgRate config.Rate
	// Config is the <virtual-mta> block; nil for a {default} the file does
	// not define.
	Config *config.VirtualMTA

	domains domainOwner
}

// SourceHost is one address a VMTA sends from.
type SourceHost struct {
	// IP is the local address to bind; the zero Addr (IsValid false) lets
	// the operating system choose.
	IP netip.Addr
	// HostName is the EHLO name: the VMTA's host-name when set, else the
	// smtp-source-host's HOSTNAME, else the top-level host-name.
	HostName string
}

// Pool is a <virtual-mta-pool>: a name that spreads messages over its
// member VMTAs round robin.
type Pool struct {
	// Name is the name as written in the file.
	Name string
	// Members are the pool's VMTAs in file order.
	Members []*VMTA
	// MaxSMTPOut caps the connections over all queues of mail selected
	// through this pool; 0 is no cap.
	MaxSMTPOut int
	// MaxSMTPMsgRate caps their message rate; the zero Rate is unlimited.
	MaxSMTPMsgRate config.Rate
	// Config is the <virtual-mta-pool> block.
	Config *config.Pool

	next    atomic.Uint64
	domains domainOwner
}

// Next returns the member whose turn it is. It is safe for concurrent use;
// over n·len(Members) calls every member is returned n times.
func (p *Pool) Next() *VMTA {
	// Add returns the incremented value; subtract one so the first call
	// returns the first member, which makes logs and tests predictable.
	i := (p.next.Add(1) - 1) % uint64(len(p.Members))
	return p.Members[i]
}

// Build makes the runtime model of cfg. cfg is assumed to come from
// config.Load or config.Parse, which already checked every reference; Build
// still reports the inconsistencies it would trip over (a pool member or a
// default-virtual-mta naming nothing, for example) so that a hand-made
// Config fails loudly rather than misroutes mail. Build does not modify cfg,
// and the Registry keeps pointers into it, so cfg must not be modified
// afterwards either.
func Build(cfg *config.Config) (*Registry, error) {
	if cfg == nil {
		return nil, errors.New("vmta: nil config")
	}
	r := &Registry{
		cfg:          cfg,
		names:        map[string]target{},
		named:        map[string]int{},
		users:        map[string]*User{},
		patternLists: map[string]*PatternList{},
		byName:       map[string][]ownerBlocks{},
	}
	var errs []error
	fail := func(pos config.Position, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{pos}, args...)...))
	}

	for _, v := range cfg.VMTAs {
		key := strings.ToLower(v.Name)
		if _, dup := r.names[key]; dup {
			fail(v.Pos, "virtual MTA %s is defined twice", v.Name)
			continue
		}
		m := r.newVMTA(v)
		r.names[key] = target{vmta: m}
		r.vmtas = append(r.vmtas, m)
	}
	if _, ok := r.names[strings.ToLower(config.DefaultVMTA)]; !ok {
		// The implicit {default} sends from the top-level
		// smtp-source-host addresses, as in PowerMTA, if there are any.
		m := r.newVMTA(&config.VirtualMTA{Name: config.DefaultVMTA, SourceHosts: cfg.DefaultSourceHosts})
		m.Config = nil
		r.names[strings.ToLower(config.DefaultVMTA)] = target{vmta: m}
		r.vmtas = append(r.vmtas, m)
	}
	for _, p := range cfg.Pools {
		key := strings.ToLower(p.Name)
		if _, dup := r.names[key]; dup {
			fail(p.Pos, "the name %s is used by a virtual MTA and a pool, or twice", p.Name)
			continue
		}
		pool := &Pool{Name: p.Name, MaxSMTPOut: p.MaxSMTPOut.Value, MaxSMTPMsgRate: p.MaxSMTPMsgRate.Value, Config: p}
		for _, mem := range p.Members {
			t := r.names[strings.ToLower(mem.Name)]
			if t.vmta == nil {
				fail(mem.Pos, "pool %s: member %s is not a virtual MTA", p.Name, mem.Name)
				continue
			}
			pool.Members = append(pool.Members, t.vmta)
		}
		if len(pool.Members) == 0 {
			fail(p.Pos, "pool %s has no members", p.Name)
			continue
		}
		pool.domains = r.indexDomains(LevelPool, p.Name, p.Domains)
		r.names[key] = target{pool: pool}
		r.pools = append(r.pools, pool)
	}
	r.global = r.indexDomains(LevelGlobal, "", cfg.Domains)
	nameOrder := func(a, b string) int {
		return cmp.Or(cmp.Compare(strings.ToLower(a), strings.ToLower(b)), cmp.Compare(a, b))
	}
	slices.SortFunc(r.vmtas, func(a, b *VMTA) int { return nameOrder(a.Name, b.Name) })
	slices.SortFunc(r.pools, func(a, b *Pool) int { return nameOrder(a.Name, b.Name) })

	for _, pl := range cfg.PatternLists {
		key := strings.ToLower(pl.Name)
		if _, dup := r.patternLists[key]; dup {
			fail(pl.Pos, "pattern-list %s is defined twice", pl.Name)
			continue
		}
		c := &PatternList{Name: pl.Name, Config: pl, targets: make([]target, len(pl.Rules))}
		for i, rule := range pl.Rules {
			t, ok := r.names[strings.ToLower(rule.VirtualMTA)]
			if !ok {
				fail(rule.Pos, "pattern-list %s: no virtual MTA or pool named %q", pl.Name, rule.VirtualMTA)
			}
			c.targets[i] = t
		}
		r.patternLists[key] = c
	}

	var cidr []sourceNode
	prefixes := map[netip.Prefix]bool{}
	for _, s := range cfg.Sources {
		if s.Named() {
			key := strings.ToLower(s.Name)
			if _, dup := r.named[key]; dup {
				fail(s.Pos, "<source %s> is defined twice", s.Name)
				continue
			}
			r.named[key] = len(r.namedSources)
			r.namedSources = append(r.namedSources, s)
		} else {
			// config merges blocks for one CIDR; two would make Source
			// see only one of them.
			if prefixes[s.Prefix] {
				fail(s.Pos, "<source %s> is defined twice", s.Prefix)
				continue
			}
			prefixes[s.Prefix] = true
			cidr = append(cidr, sourceNode{src: s})
		}
		st := s.Settings
		if name := st.DefaultVirtualMTA.Value; st.DefaultVirtualMTA.Set {
			if _, ok := r.names[strings.ToLower(name)]; !ok {
				fail(st.DefaultVirtualMTA.Pos, "default-virtual-mta: no virtual MTA or pool named %q", name)
			}
		}
		if name := st.PatternList.Value; st.PatternList.Set && r.patternLists[strings.ToLower(name)] == nil {
			fail(st.PatternList.Pos, "pattern-list: no <pattern-list %s>", name)
		}
	}
	// config already sorts them this way; sorting again (stably, so blocks
	// of equal length keep their order) keeps Source correct for a Config
	// made by hand.
	slices.SortStableFunc(cidr, func(a, b sourceNode) int {
		return cmp.Compare(a.src.Prefix.Bits(), b.src.Prefix.Bits())
	})
	r.buildSources(cidr)

	if err := r.buildUsers(fail); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// newVMTA builds the runtime VMTA of a <virtual-mta> block.
func (r *Registry) newVMTA(v *config.VirtualMTA) *VMTA {
	m := &VMTA{Name: v.Name, MaxSMTPOut: v.MaxSMTPOut.Value, MaxSMTPMsgRate: v.MaxSMTPMsgRate.Value, Config: v}
	for _, sh := range v.SourceHosts {
		name := sh.HostName
		if v.HostName.Set {
			name = v.HostName.Value
		}
		m.SourceHosts = append(m.SourceHosts, SourceHost{IP: sh.IP, HostName: name})
	}
	if len(m.SourceHosts) == 0 {
		name := r.cfg.HostName.Value
		if v.HostName.Set {
			name = v.HostName.Value
		}
		m.SourceHosts = []SourceHost{{HostName: name}}
	}
	m.domains = r.indexDomains(LevelVMTA, v.Name, v.Domains)
	return m
}

// Config returns the configuration the registry was built from.
func (r *Registry) Config() *config.Config { return r.cfg }

// VMTAs returns every VMTA, {default} included, sorted by name
// (case-insensitively). The slice is the caller's; the VMTAs are shared.
func (r *Registry) VMTAs() []*VMTA { return slices.Clone(r.vmtas) }

// Pools returns every pool sorted by name (case-insensitively). The slice
// is the caller's; the pools are shared.
func (r *Registry) Pools() []*Pool { return slices.Clone(r.pools) }

// Lookup finds a VMTA or a pool by name, case-insensitively: VMTAs and
// pools share one name space, so at most one of the two results is set.
// {default} is always found.
func (r *Registry) Lookup(name string) (vmta *VMTA, pool *Pool, ok bool) {
	t, ok := r.names[strings.ToLower(name)]
	return t.vmta, t.pool, ok
}

// VMTA finds a VMTA (not a pool) by name, case-insensitively.
func (r *Registry) VMTA(name string) (*VMTA, bool) {
	t := r.names[strings.ToLower(name)]
	return t.vmta, t.vmta != nil
}

// Pool finds a pool (not a VMTA) by name, case-insensitively.
func (r *Registry) Pool(name string) (*Pool, bool) {
	t := r.names[strings.ToLower(name)]
	return t.pool, t.pool != nil
}

// PatternList finds a <pattern-list> by name, case-insensitively.
func (r *Registry) PatternList(name string) (*PatternList, bool) {
	pl, ok := r.patternLists[strings.ToLower(name)]
	return pl, ok
}
