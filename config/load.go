package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Options are the inputs of Load besides the file itself.
type Options struct {
	// Hostname is the default for host-name; empty means os.Hostname.
	Hostname string
	// Open opens the files a configuration names: the main file (for
	// Load), includes, the TLS certificate and the DKIM keys. nil means the
	// default, which opens regular files only and never waits: a FIFO, a
	// device, a socket or a directory is refused before it is opened. What
	// Open returns is checked again (Stat must say a regular file) and read
	// within Limits. Tests serve files from memory through it.
	Open func(name string) (fs.File, error)
	// Glob expands the patterns of include; nil means filepath.Glob.
	Glob func(pattern string) ([]string, error)
	// Limits bound what one load reads; a zero field takes its default.
	Limits Limits
}

// withDefaults fills in what the caller left empty.
func (o Options) withDefaults() Options {
	if o.Open == nil {
		o.Open = openRegular
	}
	if o.Glob == nil {
		o.Glob = filepath.Glob
	}
	if o.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		o.Hostname = h
	}
	o.Limits = o.Limits.withDefaults()
	return o
}

// Load reads, validates and builds the configuration in the file at path.
// On any error it returns nil and an *ErrorList holding every error found
// (and the warnings); a Config is returned only when the file is valid.
func Load(path string, opts Options) (*Config, error) {
	opts = opts.withDefaults()
	files := newFileReader(opts)
	src, err := files.read(path, configFile)
	if err != nil {
		// The path is already in the position.
		var (
			pe  *fs.PathError
			fe  *fileError
			msg = err.Error()
		)
		switch {
		case errors.As(err, &fe):
			msg = "it " + fe.Reason
		case errors.As(err, &pe):
			msg = pe.Err.Error()
		}
		return nil, &ErrorList{Errors: []Diagnostic{{Pos: Position{File: path}, Message: "cannot read the configuration: " + msg}}}
	}
	return parse(path, src, opts, files)
}

// Parse is Load for content already in memory; name is the file name used
// in positions and as the base for relative paths and includes. The content
// counts against opts.Limits as the main file would.
func Parse(name string, src []byte, opts Options) (*Config, error) {
	opts = opts.withDefaults()
	files := newFileReader(opts)
	// The first file of a load never reaches the file count limit.
	_ = files.count(name)
	if size := int64(len(src)); size > opts.Limits.FileSize {
		return nil, &ErrorList{Errors: []Diagnostic{{
			Pos:     Position{File: name, Line: 1, Column: 1},
			Message: fmt.Sprintf("the file is %s; a configuration file may be at most %s", sizeText(size), sizeText(opts.Limits.FileSize)),
		}}}
	}
	files.add(int64(len(src)))
	return parse(name, src, opts, files)
}

// parse reads the main file's content src and everything it includes and
// builds the Config. files holds what the load has read so far.
func parse(name string, src []byte, opts Options, files *fileReader) (*Config, error) {
	parser, err := newParser()
	if err != nil {
		// The grammar is fixed at compile time; this is a programming error.
		panic(fmt.Sprintf("config: grammar does not build: %v", err))
	}
	d := &diags{}
	r := &reader{diags: d, parser: parser, files: files, glob: opts.Glob, opaque: map[string]string{}}
	if abs, err := filepath.Abs(name); err == nil {
		r.including = []string{abs}
	}
	if problem, at := r.checkText(name, src); problem != "" {
		d.errorf(at, "this is not a text file (it holds %s), so it is not read as a configuration", problem)
		return nil, &ErrorList{Errors: d.errors}
	}
	nodes := r.parseFile(name, src, "")

	// Once a per-load limit stopped the reading, what was read is an
	// arbitrary part of the configuration: checking it would report
	// missing listeners and dangling names that are not the operator's
	// mistakes, so only the reading errors are reported.
	var cfg *Config
	var migration []MigrationItem
	if !files.stopped {
		b := newBuilder(d, name, opts, files)
		b.build(nodes)
		cfg = b.cfg
		migration = cfg.Migration
	}
	sortDiagnostics(d.errors)
	sortDiagnostics(d.warnings)
	d.errors = withhold(dedupe(d.errors), r.opaque, "error")
	d.warnings = withhold(dedupe(d.warnings), r.opaque, "warning")
	if len(d.errors) > 0 || cfg == nil {
		return nil, &ErrorList{Errors: d.errors, Warnings: d.warnings, Migration: migration}
	}
	cfg.Warnings = d.warnings
	return cfg, nil
}

// builder turns the node tree into a Config.
type builder struct {
	*diags
	cfg       *Config
	opts      Options
	files     *fileReader // reads certificates and keys within the load's limits
	index     map[string][]scope
	sources   map[string]*Source
	names     map[string]Position // VMTA and pool names (one name space)
	users     map[string]*User
	patterns  map[string]*PatternList
	replies   map[string]*SMTPPatternList
	acct      map[string]*AcctFile
	listeners map[string]*Listener
	// directiveAt remembers which directive stands at a position, to name
	// it when two merged blocks both set it.
	directiveAt map[Position]string
	// hasDomainKey is set once any domain-key is seen; dkim-sign needs one.
	hasDomainKey bool
	dkimSignPos  []Position
	// reroutes are the reroute= names of reply rules, checked in finish.
	reroutes []nameRef
	// rollups holds the <mx-rollup-list> entries by pattern.
	rollups map[DomainPattern]*MXRollup
	// domains holds every <domain> block read, by owner and pattern, and
	// explicit those a block named without a macro.
	domains  map[domainKey]*Domain
	explicit map[domainKey]bool
	// spoolBlocks counts the <spool> blocks read: a second one is a
	// PowerMTA spool Tern does not use.
	spoolBlocks int
}

func newBuilder(d *diags, name string, opts Options, files *fileReader) *builder {
	cfg := &Config{
		Path:   name,
		Dir:    filepath.Dir(name),
		Macros: map[string][]string{},
	}
	topTable.fill(cfg)
	spoolTable.fill(&cfg.Spool)
	// The defaults that depend on the load.
	cfg.HostName = def(opts.Hostname)
	cfg.Postmaster = def("postmaster@" + opts.Hostname)
	cfg.Spool.Dir = def(filepath.Join(filepath.Dir(name), "spool"))
	return &builder{
		diags: d, cfg: cfg, opts: opts, files: files, index: directiveIndex(),
		sources: map[string]*Source{}, names: map[string]Position{}, users: map[string]*User{},
		patterns: map[string]*PatternList{}, replies: map[string]*SMTPPatternList{},
		acct: map[string]*AcctFile{}, listeners: map[string]*Listener{},
		directiveAt: map[Position]string{}, rollups: map[DomainPattern]*MXRollup{},
		domains: map[domainKey]*Domain{}, explicit: map[domainKey]bool{},
	}
}

func (b *builder) build(nodes []*node) {
	b.macros(nodes)
	for _, n := range nodes {
		b.topNode(n)
	}
	b.postmasterDefault()
	b.finish()
}

// dispatch handles what every scope shares: unknown and not-implemented
// names, directives in the wrong scope and blocks in the wrong place. It
// returns true when the node is an implemented directive or block that
// belongs in scope sc and the caller should handle it.
func (b *builder) dispatch(n *node, sc scope) bool {
	if b.full {
		return false // too many errors: no node is looked at any more
	}
	if n.Block {
		bs, ok := blockScopes[n.Name]
		if !ok {
			if note, ok := ignoredBlocks[n.Name]; ok {
				b.ignoredBlock(n, note)
				return false
			}
			if !looksLikeName(n.Name) {
				b.errorf(n.Pos, "unknown block (its name is not shown: it does not look like a block name)%s", didYouMean(n.Name, keys(blockScopes), "<%s>"))
				return false
			}
			b.errorf(n.Pos, "unknown block <%s>%s", n.Name, didYouMean(n.Name, keys(blockScopes), "<%s>"))
			return false
		}
		for _, p := range bs.parents {
			if p == sc {
				return true
			}
		}
		b.errorf(n.Pos, "<%s> is not allowed %s; it belongs %s", n.Name, scopeWhere(sc), scopeList(bs.parents))
		return false
	}
	scopes, ok := b.index[n.Name]
	if note, ign := ignoredDirectives[n.Name]; ign && !slices.Contains(scopes, sc) {
		// PowerMTA vocabulary Tern does not act on here (it may act on
		// it in other blocks): a warning, so the file still loads.
		b.ignoredDirective(n, note)
		return false
	}
	if !ok {
		if _, isBlock := blockScopes[n.Name]; isBlock {
			b.errorf(n.Pos, "%s is a block, not a directive: write <%s …> and close it with </%s>", n.Name, n.Name, n.Name)
			return false
		}
		// The line may not be configuration at all: an include of
		// /etc/shadow makes each of its lines an unknown directive, and the
		// "name" is then a user's password hash. Only a word that could be
		// a misspelt directive is quoted.
		if !looksLikeName(n.Name) {
			b.errorf(n.Pos, "unknown directive (not shown: it does not look like a directive name)%s", didYouMean(n.Name, keys(b.index), "%q"))
			return false
		}
		b.errorf(n.Pos, "unknown directive %q%s", n.Name, didYouMean(n.Name, keys(b.index), "%q"))
		return false
	}
	for _, s := range scopes {
		if s == sc {
			b.directiveAt[n.Pos] = n.Name
			return true
		}
	}
	b.errorf(n.Pos, "%s is not allowed %s; it belongs %s", n.Name, scopeWhere(sc), scopeList(scopes))
	return false
}

// blockName checks a block's single name argument.
func (b *builder) blockName(n *node, what string) (string, bool) {
	if len(n.Args) != 1 {
		b.errorf(n.Pos, "<%s> takes one %s", n.Name, what)
		return "", false
	}
	return n.Args[0].Text, true
}

var namePattern = regexp.MustCompile(`^(?:\{[a-z0-9_.-]+\}|[a-z0-9_][a-z0-9_.@+-]*)$`)

func (b *builder) validName(n *node, name string) bool {
	if !namePattern.MatchString(strings.ToLower(name)) {
		b.errorf(n.Args[0].Pos, "%q is not a valid name for <%s> (letters, digits, '-', '_', '.')", name, n.Name)
		return false
	}
	return true
}

func (b *builder) topNode(n *node) {
	if !b.dispatch(n, scopeTop) {
		return
	}
	if !n.Block {
		topTable.apply(b, b.cfg, n)
		return
	}
	switch n.Name {
	case "source":
		b.sourceBlock(n)
	case "smtp-user":
		b.userBlock(n)
	case "virtual-mta":
		b.vmtaBlock(n)
	case "virtual-mta-pool":
		b.poolBlock(n)
	case "domain":
		b.cfg.Domains = b.domainBlock(n, "", b.cfg.Domains)
	case "pattern-list":
		b.patternListBlock(n)
	case "smtp-pattern-list":
		b.smtpPatternListBlock(n)
	case "acct-file":
		b.acctFileBlock(n)
	case "spool":
		b.spoolBlock(n)
	case "mx-rollup-list":
		b.mxRollupListBlock(n)
	case "smtp-listener":
		b.listenerBlock(n)
	}
}

// macros reads every domain-macro first, so a macro may be used above its
// definition, and expands macros used inside macro values.
func (b *builder) macros(nodes []*node) {
	raw := map[string][]string{}
	pos := map[string]Position{}
	var order []string
	for _, n := range nodes {
		if n.Block || n.Name != "domain-macro" {
			continue
		}
		if len(n.Args) < 2 {
			b.errorf(n.Pos, "domain-macro needs a name and a list of values: domain-macro tld com, net")
			continue
		}
		name := strings.ToLower(n.Args[0].Text)
		if !macroName.MatchString(name) {
			b.errorf(n.Args[0].Pos, "domain-macro: %q is not a valid macro name (letters, digits, '_')", n.Args[0].Text)
			continue
		}
		if p, dup := pos[name]; dup {
			b.errorf(n.Pos, "domain-macro %s is already defined at %s", name, shortPos(p, n.Pos))
			continue
		}
		var vals []string
		for _, v := range strings.Split((&node{Args: n.Args[1:]}).argText(), ",") {
			v = strings.ToLower(strings.TrimSpace(v))
			if v == "" {
				b.errorf(n.Args[1].Pos, "domain-macro %s: empty value in the list", name)
				continue
			}
			vals = append(vals, v)
		}
		raw[name], pos[name] = vals, n.Pos
		order = append(order, name)
	}
	var resolve func(name string, chain []string) []string
	resolve = func(name string, chain []string) []string {
		if v, ok := b.cfg.Macros[name]; ok {
			return v
		}
		for _, c := range chain {
			if c == name {
				b.errorf(pos[chain[0]], "domain-macro loop: %s", strings.Join(append(chain, name), " → "))
				return nil
			}
		}
		var out []string
		for _, v := range raw[name] {
			exp, err := b.expand(v, func(m string) ([]string, bool) {
				if _, ok := raw[m]; !ok {
					return nil, false
				}
				return resolve(m, append(chain, name)), true
			})
			if err != "" {
				b.errorf(pos[name], "domain-macro %s: %s", name, err)
				continue
			}
			if len(out)+len(exp) > maxExpansion {
				b.errorf(pos[name], "domain-macro %s expands to more than %d names", name, maxExpansion)
				break
			}
			out = append(out, exp...)
		}
		b.cfg.Macros[name] = out
		return out
	}
	for _, name := range order {
		resolve(name, nil)
	}
}

var (
	macroRef  = regexp.MustCompile(`\$([A-Za-z0-9_]+)`)
	macroName = regexp.MustCompile(`^[a-z0-9_]+$`)
)

// expand substitutes every $macro in s, producing the cross product of
// their values. lookup returns a macro's values and whether it exists.
func (b *builder) expand(s string, lookup func(string) ([]string, bool)) ([]string, string) {
	loc := macroRef.FindStringSubmatchIndex(s)
	if loc == nil {
		if strings.Contains(s, "$") {
			return nil, fmt.Sprintf("%q: '$' must be followed by a macro name", s)
		}
		return []string{s}, ""
	}
	name := strings.ToLower(s[loc[2]:loc[3]])
	vals, ok := lookup(name)
	if !ok {
		return nil, fmt.Sprintf("unknown domain-macro $%s%s", name, didYouMean(name, keys(b.cfg.Macros), "$%s"))
	}
	rest, err := b.expand(s[loc[1]:], lookup)
	if err != "" {
		return nil, err
	}
	if len(vals)*len(rest) > maxExpansion {
		return nil, fmt.Sprintf("macros expand to more than %d names", maxExpansion)
	}
	out := make([]string, 0, len(vals)*len(rest))
	for _, v := range vals {
		for _, r := range rest {
			out = append(out, s[:loc[0]]+v+r)
		}
	}
	return out, ""
}

// maxExpansion bounds what one pattern or macro may expand to: the cross
// product of a few macros grows fast, and a typo must not exhaust memory.
const maxExpansion = 10000

// postmasterDefault derives the postmaster from the final host-name.
func (b *builder) postmasterDefault() {
	if !b.cfg.Postmaster.Set {
		b.cfg.Postmaster = def("postmaster@" + b.cfg.HostName.Value)
	}
}

// finish checks references between blocks once everything is read.
func (b *builder) finish() {
	cfg := b.cfg
	if len(cfg.Listeners) == 0 {
		b.errorf(Position{File: cfg.Path, Line: 1, Column: 1}, "no smtp-listener: at least one is required")
	}
	named := map[string]bool{AuthSource: true}
	var namedList []string
	for _, s := range cfg.Sources {
		if s.Named() {
			named[strings.ToLower(s.Name)] = true
			namedList = append(namedList, s.Name)
		}
	}
	for _, l := range cfg.Listeners {
		if l.Source != "" && !named[strings.ToLower(l.Source)] {
			b.errorf(l.Pos, "smtp-listener: source=%s names no <source %s> block%s", l.Source, l.Source, didYouMean(l.Source, namedList, "%q"))
		}
		if l.TLS && cfg.TLSCertificate == nil {
			b.errorf(l.Pos, "smtp-listener %s: tls=yes needs smtp-server-tls-certificate", l.Addr)
		}
	}
	for _, u := range cfg.Users {
		if u.Source.Set && !named[strings.ToLower(u.Source.Value)] {
			b.errorf(u.Source.Pos, "source: no <source %s> block%s", u.Source.Value, didYouMean(u.Source.Value, namedList, "%q"))
		}
	}
	vmtas := map[string]bool{strings.ToLower(DefaultVMTA): true}
	var vmtaNames []string
	for _, v := range cfg.VMTAs {
		vmtas[strings.ToLower(v.Name)] = true
		vmtaNames = append(vmtaNames, v.Name)
	}
	pools := map[string]bool{}
	for _, p := range cfg.Pools {
		pools[strings.ToLower(p.Name)] = true
		vmtaNames = append(vmtaNames, p.Name)
		for _, m := range p.Members {
			key := strings.ToLower(m.Name)
			switch {
			case pools[key] || b.isPool(key):
				b.errorf(m.Pos, "virtual-mta %s: a pool's members must be virtual MTAs, and %s is a pool", m.Name, m.Name)
			case !vmtas[key]:
				b.errorf(m.Pos, "virtual-mta %s: no <virtual-mta %s> block%s", m.Name, m.Name, didYouMean(m.Name, vmtaNames, "%q"))
			}
		}
	}
	knownVMTA := func(name string) bool {
		k := strings.ToLower(name)
		return vmtas[k] || b.isPool(k)
	}
	for _, s := range cfg.Sources {
		st := s.Settings
		if st.DefaultVirtualMTA.Set && !knownVMTA(st.DefaultVirtualMTA.Value) {
			b.errorf(st.DefaultVirtualMTA.Pos, "default-virtual-mta: no virtual MTA or pool named %q%s", st.DefaultVirtualMTA.Value, didYouMean(st.DefaultVirtualMTA.Value, vmtaNames, "%q"))
		}
		if st.PatternList.Set && b.patterns[strings.ToLower(st.PatternList.Value)] == nil {
			b.errorf(st.PatternList.Pos, "pattern-list: no <pattern-list %s> block%s", st.PatternList.Value, didYouMean(st.PatternList.Value, keys(b.patterns), "%q"))
		}
		if st.RequireStartTLS.Value && cfg.TLSCertificate == nil {
			b.errorf(st.RequireStartTLS.Pos, "require-starttls: STARTTLS is not offered without smtp-server-tls-certificate")
		}
	}
	for _, pl := range cfg.PatternLists {
		for _, r := range pl.Rules {
			if r.VirtualMTA != "" && !knownVMTA(r.VirtualMTA) {
				b.errorf(r.Pos, "virtual-mta=%s: no virtual MTA or pool by that name%s", r.VirtualMTA, didYouMean(r.VirtualMTA, vmtaNames, "%q"))
			}
		}
	}
	for _, r := range b.reroutes {
		if !knownVMTA(r.Name) {
			b.errorf(r.Pos, "reroute=%s: no virtual MTA or pool by that name%s", r.Name, didYouMean(r.Name, vmtaNames, "%q"))
		}
	}
	rollupNames := map[string]bool{}
	for _, r := range cfg.MXRollups {
		rollupNames[r.Name] = true
	}
	b.eachDomain(func(d *Domain) {
		st := d.Settings
		if st.SMTPPatternList.Set && b.replies[strings.ToLower(st.SMTPPatternList.Value)] == nil {
			b.errorf(st.SMTPPatternList.Pos, "smtp-pattern-list: no <smtp-pattern-list %s> block%s", st.SMTPPatternList.Value, didYouMean(st.SMTPPatternList.Value, keys(b.replies), "%q"))
		}
		// .rollup is no top-level domain: a block named so is meant for a
		// provider queue, and one no rollup name matches is a typo.
		if p := d.Pattern; p.Kind == PatternExact && strings.HasSuffix(p.Domain, ".rollup") && !rollupNames[p.Domain] {
			b.warnf(d.Pos, "<domain %s>: no <mx-rollup-list> entry rolls MX hosts up to %s, so the block applies to no queue%s", p.Domain, p.Domain, didYouMean(p.Domain, keys(rollupNames), "%q"))
		}
	})
	b.checkTLSVersions()
	if !b.hasDomainKey {
		for _, p := range b.dkimSignPos {
			b.errorf(p, "dkim-sign yes needs a domain-key (no domain-key is configured)")
		}
	}
	// Sources are kept least specific first so merging is a fold.
	sort.SliceStable(cfg.Sources, func(i, j int) bool {
		a, c := cfg.Sources[i], cfg.Sources[j]
		if a.Named() != c.Named() {
			return !a.Named()
		}
		return a.Prefix.Bits() < c.Prefix.Bits()
	})
}

func (b *builder) isPool(key string) bool {
	for _, p := range b.cfg.Pools {
		if strings.ToLower(p.Name) == key {
			return true
		}
	}
	return false
}

// eachDomain visits every domain block: global, VMTA and pool ones.
func (b *builder) eachDomain(f func(*Domain)) {
	for _, d := range b.cfg.Domains {
		f(d)
	}
	for _, v := range b.cfg.VMTAs {
		for _, d := range v.Domains {
			f(d)
		}
	}
	for _, p := range b.cfg.Pools {
		for _, d := range p.Domains {
			f(d)
		}
	}
}

// relPath resolves a path written in a file against that file's directory.
func relPath(pos Position, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(filepath.Dir(pos.File), p)
}
