package config

import (
	"crypto"
	"crypto/tls"
	"log/slog"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Setting is one directive's value in a block. When the block does not set
// the directive, Value holds the built-in default and Set is false, so code
// that ignores precedence still sees the default, and precedence code can
// tell "set to the default" from "not set".
type Setting[T any] struct {
	Value T
	// Pos is where the directive was written; zero when not set.
	Pos Position
	Set bool
}

func (s Setting[T]) isSet() bool { return s.Set }

// Or returns s when it is set and fallback otherwise: the one step of every
// precedence chain.
func (s Setting[T]) Or(fallback Setting[T]) Setting[T] {
	if s.Set {
		return s
	}
	return fallback
}

func def[T any](v T) Setting[T] { return Setting[T]{Value: v} }

// Config is a validated configuration. It is never modified after Load
// returns; a reload builds a new one.
type Config struct {
	// Path is the file Load read (as given), and Dir the directory relative
	// paths in it are resolved against.
	Path string
	Dir  string

	Listeners  []*Listener
	HostName   Setting[string]
	Postmaster Setting[string]
	Spool      Spool
	// TLSCertificate is loaded from smtp-server-tls-certificate; nil when
	// STARTTLS is not offered.
	TLSCertificate     *tls.Certificate
	TLSCertificateFile Setting[string]
	NameServers        []Setting[string]
	TotalMaxSMTPOut    Setting[int]
	TotalMaxSMTPIn     Setting[int]
	HTTPMgmtAddr       Setting[string]
	HTTPAccess         []*HTTPAccess
	// HTTPAPIKey is the first http-api-key (the one the tern CLI sends);
	// HTTPAPIKeys holds every key given, each of which the admin API
	// accepts.
	HTTPAPIKey  Setting[string]
	HTTPAPIKeys []string
	LogFile     Setting[string]
	// LogLevel is the least severe level the daemon logs. Per-message
	// lines (receptions and deliveries) are debug; refusals, deferrals,
	// bounces and events are info and above.
	LogLevel Setting[slog.Level]
	// MXConnectionLimit is the most connections from one source IP to one
	// MX host address, over all queues and VMTAs; 0 (the default, also
	// written `unlimited`) sets no limit.
	MXConnectionLimit Setting[int]
	// Macros maps a domain-macro name to its values, after expansion.
	Macros map[string][]string

	// TLSAllowV10 to TLSAllowV13 are smtp-server-tls-allow-tlsv1 to
	// -tlsv1.3: the TLS versions inbound STARTTLS and tls=yes listeners
	// accept. InboundTLSVersions turns them into a range.
	TLSAllowV10 Setting[bool]
	TLSAllowV11 Setting[bool]
	TLSAllowV12 Setting[bool]
	TLSAllowV13 Setting[bool]

	// DefaultSourceHosts are the top-level smtp-source-host lines: the
	// source addresses of {default} when no <virtual-mta {default}> gives
	// its own.
	DefaultSourceHosts []SourceHost

	// DomainKeys are the top-level domain-key lines: keys that sign the
	// mail of every VMTA, where no <virtual-mta>, <virtual-mta-pool> or
	// <domain> key applies. See DomainSettings.SigningKey.
	DomainKeys Setting[[]DomainKey]

	// MaxSMTPInPerIP, SMTPInReserved and MaxInboundBuffer are the limits
	// on inbound clients as written (max-smtp-in-per-ip, smtp-in-reserved,
	// max-inbound-buffer). Unlike other Settings, an unset one holds zero,
	// not its default: the reserve's default depends on total-max-smtp-in.
	// Read them through Inbound, which applies the defaults.
	MaxSMTPInPerIP   Setting[int]
	SMTPInReserved   Setting[int]
	MaxInboundBuffer Setting[Size]

	// Sources holds the CIDR sources (sorted from least to most specific)
	// and the named ones; Users, VMTAs, Pools and the lists in file order.
	Sources          []*Source
	Users            []*User
	VMTAs            []*VirtualMTA
	Pools            []*Pool
	Domains          []*Domain
	PatternLists     []*PatternList
	SMTPPatternLists []*SMTPPatternList
	AcctFiles        []*AcctFile
	// MXRollups are the entries of every <mx-rollup-list> block, in file
	// order (an entry repeated with the same name is kept once);
	// RollupName looks an MX host up in them.
	MXRollups []*MXRollup

	// Warnings are the non-fatal diagnostics: PowerMTA directives Tern
	// ignores, plaintext passwords, includes matching nothing.
	Warnings []Diagnostic
	// Migration lists every directive and block read, in file order, with
	// how it stands to PowerMTA's (`tern check --migrate`).
	Migration []MigrationItem
}

// APIKeys returns the keys the admin API accepts: every http-api-key, or
// HTTPAPIKey alone in a Config built without Load.
func (c *Config) APIKeys() []string {
	if len(c.HTTPAPIKeys) == 0 && c.HTTPAPIKey.Value != "" {
		return []string{c.HTTPAPIKey.Value}
	}
	return c.HTTPAPIKeys
}

// The defaults of the inbound limits.
const (
	// DefaultMaxSMTPInPerIP is max-smtp-in-per-ip when not set.
	DefaultMaxSMTPInPerIP = 20
	// DefaultMaxInboundBuffer is max-inbound-buffer when not set.
	DefaultMaxInboundBuffer Size = 256 << 20
	// MinInboundBuffer is the smallest max-inbound-buffer accepted: less
	// would refuse ordinary mail while the server is idle.
	MinInboundBuffer Size = 64 << 10
)

// InboundLimits are the limits on inbound SMTP clients in force, defaults
// applied; docs/operations.md, Limits and abuse describes them.
type InboundLimits struct {
	// Total is total-max-smtp-in: connections over all listeners.
	Total int
	// PerIP is the most connections one client address (an IPv6 /64) may
	// hold while untrusted and unauthenticated; 0 sets no limit.
	PerIP int
	// Reserved is how many of Total untrusted, unauthenticated connections
	// may not take as of right: at most Total-Reserved of them are
	// admitted, plus Reserved/2 lent on condition they authenticate soon.
	// It is never more than Total.
	Reserved int
	// Buffer is the most bytes that messages being received may hold in
	// memory together; Unlimited sets no limit.
	Buffer Size
}

// Inbound returns the inbound limits in force: each directive's value, or
// its default when not set. smtp-in-reserved defaults to a tenth of
// total-max-smtp-in (rounded down), and is capped at it.
func (c *Config) Inbound() InboundLimits {
	l := InboundLimits{
		Total:    c.TotalMaxSMTPIn.Value,
		PerIP:    DefaultMaxSMTPInPerIP,
		Reserved: c.TotalMaxSMTPIn.Value / 10,
		Buffer:   DefaultMaxInboundBuffer,
	}
	if c.MaxSMTPInPerIP.Set {
		l.PerIP = c.MaxSMTPInPerIP.Value
	}
	if c.SMTPInReserved.Set {
		l.Reserved = min(c.SMTPInReserved.Value, l.Total)
	}
	if c.MaxInboundBuffer.Set {
		l.Buffer = c.MaxInboundBuffer.Value
	}
	return l
}

// Listener is one smtp-listener.
type Listener struct {
	Pos Position
	// Network is "tcp4" for 0/0:PORT, "tcp6" for [::]:PORT, else "tcp".
	Network string
	// Addr is host:port as net.Listen takes it.
	Addr string
	// Source names the <source> this listener's sessions use, if any.
	Source string
	// TLS is implicit TLS from the first byte (port 465 style).
	TLS bool
}

// Spool is where the queue lives.
type Spool struct {
	Dir          Setting[string]
	MinFreeSpace Setting[Size]
}

// AccessLevel is what an admin API client may do.
type AccessLevel int

// Access levels, each including the ones before it.
const (
	AccessNone AccessLevel = iota
	AccessMonitor
	AccessOperator
	AccessAdmin
)

var accessLevelNames = []string{"none", "monitor", "operator", "admin"}

// String returns the level's name as written in http-access.
func (l AccessLevel) String() string { return accessLevelNames[l] }

// HTTPAccess is one http-access rule; the first rule matching a client wins.
type HTTPAccess struct {
	Pos    Position
	Prefix netip.Prefix
	Level  AccessLevel
}

// Source is a <source> block: by CIDR, or by name ({auth}, bulk-feed).
type Source struct {
	Pos Position
	// Name is set for a named source; Prefix for a CIDR source.
	Name     string
	Prefix   netip.Prefix
	Settings SourceSettings
}

// Named reports whether the source is selected by name rather than by IP.
func (s *Source) Named() bool { return s.Name != "" }

// SourceSettings are the directives of a <source> block.
type SourceSettings struct {
	SMTPService               Setting[bool]
	AlwaysAllowRelaying       Setting[bool]
	RequireAuth               Setting[bool]
	RequireStartTLS           Setting[bool]
	AllowUnencryptedPlainAuth Setting[bool]
	SMTPMaxAuthFailureRate    Setting[Rate]
	ProcessXVirtualMTA        Setting[bool]
	DefaultVirtualMTA         Setting[string]
	ProcessXJob               Setting[bool]
	MaxMessageSize            Setting[Size]
	MaxRcptPerMessage         Setting[int]
	AddReceivedHeader         Setting[bool]
	HideMessageSource         Setting[bool]
	RemoveHeaders             Setting[[]string]
	PatternList               Setting[string]
	LogConnections            Setting[bool]
	LogCommands               Setting[bool]
}

// DefaultVMTA is the reserved name of the VMTA used when nothing selects one.
const DefaultVMTA = "{default}"

// AuthSource is the reserved name of the source for authenticated sessions.
const AuthSource = "{auth}"

// DefaultSourceSettings returns the built-in source defaults, none of them
// marked as set.
func DefaultSourceSettings() SourceSettings { return sourceDefaults }

// sourceDefaults and domainDefaults are computed once from the tables and
// never modified: the functions above hand out copies.
var (
	sourceDefaults = sourceTable.defaults()
	domainDefaults = domainTable.defaults()
)

// Inherit returns s with every directive s leaves unset taken from parent.
func (s SourceSettings) Inherit(parent SourceSettings) SourceSettings {
	inherit(&s, &parent)
	return s
}

// User is an <smtp-user> block.
type User struct {
	Pos  Position
	Name string
	// Exactly one of Password and PasswordHash is set.
	Password     Setting[string]
	PasswordHash Setting[string]
	// Source is the named source the session switches to after AUTH.
	Source Setting[string]
}

// SourceHost is one smtp-source-host of a VMTA.
type SourceHost struct {
	Pos      Position
	IP       netip.Addr
	HostName string
}

// VirtualMTA is a <virtual-mta> block.
type VirtualMTA struct {
	Pos            Position
	Name           string
	SourceHosts    []SourceHost
	HostName       Setting[string]
	MaxSMTPOut     Setting[int]
	MaxSMTPMsgRate Setting[Rate]
	// DomainKeys are the VMTA's domain-key lines: they sign its mail where
	// no <domain> key applies.
	DomainKeys Setting[[]DomainKey]
	Domains    []*Domain
}

// PoolMember is one virtual-mta line of a pool.
type PoolMember struct {
	Pos  Position
	Name string
}

// Pool is a <virtual-mta-pool> block.
type Pool struct {
	Pos            Position
	Name           string
	Members        []PoolMember
	MaxSMTPOut     Setting[int]
	MaxSMTPMsgRate Setting[Rate]
	// DomainKeys are the pool's domain-key lines: they sign the mail
	// selected through the pool where no <domain> or VMTA key applies.
	DomainKeys Setting[[]DomainKey]
	Domains    []*Domain
}

// Domain is a <domain> block, global or inside a VMTA or pool. A block
// written with a macro appears once per expansion.
type Domain struct {
	Pos      Position
	Pattern  DomainPattern
	Settings DomainSettings
}

// AnyDomain is the domain of a `domain-key SELECTOR,*,FILE`: the key signs
// for the domain of the message's From: header, whatever it is.
const AnyDomain = "*"

// DomainKey is one domain-key: the selector and signing domain (AnyDomain
// for the From: domain), and the private key read from its file.
type DomainKey struct {
	Pos      Position
	Selector string
	Domain   string
	KeyFile  string
	Signer   crypto.Signer
}

// DomainSettings are the directives of a <domain> block: the delivery policy
// of a queue. docs/configuration.md describes each; the field is the
// directive's name in Go, and domainTable (tables.go) says how each is
// written, read and defaulted.
//
// A queue is one VMTA sending to one domain or, with MX rollup, to one
// provider (the domains whose MX hosts share a rollup name, see
// Config.RollupName; its <domain> block is the one named after the rollup).
// The directives of provider-aware delivery:
//
//   - SourceIPMaxSMTPOut, SourceIPMaxMsgRate, SourceIPMaxConnectRate limit
//     connections, recipients attempted and new connections per (source IP
//     of the VMTA, queue); each is a list of CIDRs of source addresses with
//     a limit, looked up with For.
//   - InitialSMTPOut is the adaptive connection window's starting size per
//     (source IP, queue), and AdaptiveSMTPOut (default yes) whether the
//     window is used at all: with no, a queue opens up to max-smtp-out
//     connections at once.
//   - MXConnectionAttempts: at most this many MX addresses are tried per
//     delivery attempt.
//   - HostDownAfter: consecutive connection failures (refused, timed out,
//     no greeting, 421 at the greeting) from one source IP to one MX
//     address after which that address counts as down for that source IP
//     and is only probed once per retry interval.
//   - DisableMXRollup: the domain is never rolled up with others; it keeps
//     a queue of its own.
//   - NotifyOfDelay: a recipient that asked for NOTIFY=DELAY and is still
//     queued this long after reception gets one delay DSN; Never for none.
type DomainSettings struct {
	MaxSMTPOut                   Setting[int]
	MaxMsgPerConnection          Setting[int]
	MaxRcptPerTransaction        Setting[int]
	MaxMsgRate                   Setting[Rate]
	MaxConnectRate               Setting[Rate]
	SourceIPMaxSMTPOut           Setting[SourceIPLimits]
	SourceIPMaxMsgRate           Setting[SourceIPRates]
	SourceIPMaxConnectRate       Setting[SourceIPRates]
	InitialSMTPOut               Setting[int]
	AdaptiveSMTPOut              Setting[bool]
	ConnectionIdleTimeout        Setting[time.Duration]
	RetryAfter                   Setting[[]time.Duration]
	BounceAfter                  Setting[time.Duration]
	NotifyOfDelay                Setting[time.Duration]
	BounceUponNoMX               Setting[bool]
	UseStartTLS                  Setting[bool]
	RequireStartTLS              Setting[bool]
	TLSVerifyCertificate         Setting[bool]
	ReuseSSLSession              Setting[bool]
	SMTPHosts                    Setting[HostList]
	DefaultSMTPPort              Setting[int]
	MXConnectionAttempts         Setting[int]
	HostDownAfter                Setting[int]
	DisableMXRollup              Setting[bool]
	AuthUsername                 Setting[string]
	AuthPassword                 Setting[string]
	UseUnencryptedPlainAuth      Setting[bool]
	ConnectTimeout               Setting[time.Duration]
	SMTPGreetingTimeout          Setting[time.Duration]
	DataSendTimeout              Setting[time.Duration]
	MaxErrorsPerConnection       Setting[int]
	QueuePriority                Setting[int]
	SMTPPatternList              Setting[string]
	BackoffMaxSMTPOut            Setting[int]
	BackoffMaxMsgRate            Setting[Rate]
	BackoffRetryAfter            Setting[[]time.Duration]
	BackoffToNormalAfter         Setting[time.Duration]
	BackoffToNormalAfterDelivery Setting[bool]
	DKIMSign                     Setting[bool]
	Discard                      Setting[bool]
	DomainKeys                   Setting[[]DomainKey]
}

// DefaultDomainSettings returns the built-in delivery defaults, none of them
// marked as set.
func DefaultDomainSettings() DomainSettings { return domainDefaults }

// Inherit returns s with every directive s leaves unset taken from parent:
// each directive is resolved on its own, so an override of one inherits all
// the others.
func (s DomainSettings) Inherit(parent DomainSettings) DomainSettings {
	inherit(&s, &parent)
	return s
}

// inherit copies each unset Setting field of *dst from *src. Both must point
// to the same struct type made only of Setting fields. Reflection keeps this
// in step with the structs as directives are added; it runs at policy
// resolution, which callers cache, not per message.
func inherit(dst, src any) {
	d := reflect.ValueOf(dst).Elem()
	s := reflect.ValueOf(src).Elem()
	for i := 0; i < d.NumField(); i++ {
		f := d.Field(i)
		if !f.Interface().(interface{ isSet() bool }).isSet() {
			f.Set(s.Field(i))
		}
	}
}

// PatternField is what a pattern-list rule matches.
type PatternField int

// The fields a pattern-list rule can match.
const (
	MatchMailFrom PatternField = iota
	MatchRcptTo
	MatchHeader
)

// PatternRule is one rule of a <pattern-list>.
type PatternRule struct {
	Pos   Position
	Field PatternField
	// Header is the header name for MatchHeader.
	Header     string
	Regexp     Regexp
	VirtualMTA string
}

// PatternList is a <pattern-list> block: rules choosing a VMTA at injection.
type PatternList struct {
	Pos   Position
	Name  string
	Rules []PatternRule
}

// ReplyMode is the mode a reply rule switches its queue to.
type ReplyMode int

// Reply rule modes.
const (
	ModeUnchanged ReplyMode = iota
	ModeBackoff
	ModeNormal
)

// ReplyActions are the actions of one reply rule.
//
// Some actions put the queue (the VMTA's queue for the domain or, with MX
// rollup, for the provider) into a state that lasts: backoff, Suspend,
// DisableSourceIP, Reroute and BounceQueue (see Stateful). Such a rule may
// have a Threshold, and For says how long the state lasts. The others act
// on the reply at hand: DeferQueue, BounceRcpt, SkipMX and mode=normal.
type ReplyActions struct {
	// Mode is ModeBackoff for `mode=backoff` or its alias `backoff`, and
	// ModeNormal for `mode=normal`.
	Mode ReplyMode
	// BackoffToNormalAfter overrides the queue's backoff-to-normal-after
	// when set: written as backoff-to-normal-after=DUR, or as for=DUR on a
	// rule with backoff (which then sets For too).
	BackoffToNormalAfter Setting[time.Duration]
	DeferQueue           bool
	BounceRcpt           bool
	SkipMX               bool
	// Suspend stops the queue for For: no new connections.
	Suspend bool
	// DisableSourceIP stops using the source IP of the connection that got
	// the reply for this queue, for For.
	DisableSourceIP bool
	// Reroute, when not empty, names the VMTA or pool the queue's mail
	// moves to for For (and what arrives for the queue meanwhile). The
	// name exists: Load checks it.
	Reroute string
	// BounceQueue bounces everything queued in the queue, and what arrives
	// for it within For.
	BounceQueue bool
	// For is how long the state of the stateful actions lasts: for=DUR (or
	// PowerMTA's reenable-after=DUR) when set; otherwise Load leaves Value
	// at DefaultReplyFor, unset. The duration of a backoff is
	// BackoffToNormalAfter when that is set, else the queue's
	// backoff-to-normal-after.
	For Setting[time.Duration]
	// Threshold, when set (threshold=N/DUR), makes the rule trigger only
	// once it has matched Count times within Interval for the queue; the
	// matches before then have no effect. Unset, the rule triggers at its
	// first match.
	Threshold Setting[Rate]
}

// DefaultReplyFor is how long suspend, disable-source-ip, reroute= and
// bounce-queue last when the rule has no for=.
const DefaultReplyFor = time.Hour

// Stateful reports whether the rule puts the queue into a state that lasts
// (backoff, suspend, disable-source-ip, reroute=, bounce-queue): the rules
// that may carry threshold= and for=.
func (a *ReplyActions) Stateful() bool {
	return a.Mode == ModeBackoff || a.Suspend || a.DisableSourceIP || a.Reroute != "" || a.BounceQueue
}

// ReplyRule is one `reply /RE/ actions` line of an <smtp-pattern-list>.
type ReplyRule struct {
	Pos     Position
	Regexp  Regexp
	Actions ReplyActions
}

// SMTPPatternList is an <smtp-pattern-list> block.
type SMTPPatternList struct {
	Pos   Position
	Name  string
	Rules []ReplyRule
}

// RecordTypes is a set of accounting record types.
type RecordTypes struct {
	Delivered, Bounced, Transient, Received bool
	// TransientQueue, FeedbackLoop, RemoteBounce and RemoteStatus are
	// PowerMTA's tq, f, rb and rs. They are accepted so that a PowerMTA
	// file loads, with a warning: Tern writes no such records (a failed
	// connection is a t record for each recipient it held back, and Tern
	// has no bounce or feedback-loop processor).
	TransientQueue, FeedbackLoop, RemoteBounce, RemoteStatus bool
}

// String writes the set as in the file (d,b,t,r,tq,f,rb,rs order).
func (r RecordTypes) String() string {
	s := ""
	add := func(ok bool, c string) {
		if ok {
			if s != "" {
				s += ","
			}
			s += c
		}
	}
	add(r.Delivered, "d")
	add(r.Bounced, "b")
	add(r.Transient, "t")
	add(r.Received, "r")
	add(r.TransientQueue, "tq")
	add(r.FeedbackLoop, "f")
	add(r.RemoteBounce, "rb")
	add(r.RemoteStatus, "rs")
	return s
}

// AcctFile is an <acct-file> block: an accounting file, or a program that
// reads the records on its standard input (<acct-file |PROGRAM ARGS>).
type AcctFile struct {
	Pos Position
	// Path is the file written, cleaned and resolved against the
	// configuration's directory; empty for a pipe.
	Path string
	// Command is, for a pipe, the program (resolved as Path is when it
	// holds a slash, looked up in PATH otherwise) and its arguments; nil
	// for a file.
	Command      []string
	Records      Setting[RecordTypes]
	MaxSize      Setting[Size]
	MoveInterval Setting[time.Duration]
	// DeleteAfter is how old a rotated file may grow (counted from its
	// rotation) before it is deleted; Never keeps them all.
	DeleteAfter Setting[time.Duration]
	// MoveTo is the directory rotated files are moved into; empty: they
	// stay beside the file.
	MoveTo Setting[string]
	// WorldReadable makes the files mode 0644 instead of 0640.
	WorldReadable Setting[bool]
	// RecordFields choose the columns of record types, one entry per
	// type given (in file order); a type without one has the default
	// columns, AcctFieldNames.
	RecordFields []RecordFields
}

// Name is how the block is named in messages and status: its path, or
// "|" and the command line of a pipe.
func (a *AcctFile) Name() string {
	if a.Command == nil {
		return a.Path
	}
	parts := make([]string, len(a.Command))
	for i, w := range a.Command {
		parts[i] = w
		if w == "" || strings.ContainsAny(w, " \t\"") {
			parts[i] = strconv.Quote(w)
		}
	}
	return "|" + strings.Join(parts, " ")
}

// RecordFields is a `record-fields TYPE FIELD,FIELD,...` line of an
// <acct-file>: the columns records of one type fill.
type RecordFields struct {
	Pos Position
	// Type is the record type, as its short name: d, b, t or r. (Lines
	// for tq, f, rb and rs are accepted with a warning and not kept.)
	Type string
	// Fields are the field names in their canonical spelling
	// (timeLogged, dsnStatus), with `*` expanded to AcctFieldNames and
	// header fields as header_NAME, NAME as written. The type column is
	// always first and is not listed.
	Fields []string
}

// MXRollup is one `mx HOST-PATTERN ROLLUP-NAME` entry of an
// <mx-rollup-list>: the MX hosts the pattern matches belong to the provider
// named Name. Domains whose MX hosts roll up to one name share one queue per
// VMTA, so the limits of that queue count per provider.
type MXRollup struct {
	Pos Position
	// Pattern is written like a <domain> pattern but matches MX host names;
	// it is never PatternAny.
	Pattern DomainPattern
	// Name is the rollup name, lower-case: letters, digits, dots and
	// dashes, such as gmail.rollup. A <domain> block named after it holds
	// the provider queue's policy.
	Name string
}

// RollupName returns the rollup name of an MX host, and whether any
// <mx-rollup-list> entry matches it. The host name is compared without case
// and a trailing dot. When several patterns match, the most specific wins,
// as for <domain> patterns: the exact name, then the wildcard with the
// longest domain part, [*.]x before *.x for the same x; between entries with
// the same pattern (which have the same name), the first in the file.
func (c *Config) RollupName(mxHost string) (name string, ok bool) {
	h := strings.ToLower(strings.TrimSuffix(mxHost, "."))
	best := -1
	for _, r := range c.MXRollups {
		if !r.Pattern.Match(h) {
			continue
		}
		if s := patternRank(r.Pattern); s > best {
			best, name, ok = s, r.Name, true
		}
	}
	return name, ok
}

// patternRank orders the patterns that match one name from the least
// specific to the most: * first, then by the length of their domain part,
// and for the same domain part *.x, then [*.]x, then the exact name x.
func patternRank(p DomainPattern) int {
	switch p.Kind {
	case PatternAny:
		return 0
	case PatternSubdomains:
		return 3*len(p.Domain) + 1
	case PatternSelfAndSubdomains:
		return 3*len(p.Domain) + 2
	}
	return 3*len(p.Domain) + 3
}
