package world

import (
	"maps"
	"sort"
	"sync"
	"time"
)

// Snapshot is a copy of a world's counters at one moment. It marshals to
// JSON as is.
type Snapshot struct {
	// Taken is when the snapshot was taken.
	Taken time.Time `json:"taken"`
	// Providers are the providers' counters, in the order of the spec.
	Providers []ProviderStats `json:"providers"`
	// Hosts are the counters of the dead and black-hole hosts, in the
	// order of the layout.
	Hosts []HostStats `json:"hosts,omitempty"`
	// DSN are the bounce reports the Sender providers received.
	DSN DSNStats `json:"dsn"`
	// Untracked counts keys a table had no room for (Spec.MaxTracked):
	// non-zero means the duplicate, greylist or DSN figures are
	// incomplete.
	Untracked int64 `json:"untracked,omitempty"`
	// Overflow counts connections closed at once because Spec.MaxConns
	// were open.
	Overflow int64 `json:"overflow,omitempty"`
}

// Provider returns the counters of the provider named name, or nil.
func (s *Snapshot) Provider(name string) *ProviderStats {
	for i := range s.Providers {
		if s.Providers[i].Name == name {
			return &s.Providers[i]
		}
	}
	return nil
}

// Host returns the counters of the dead or black-hole host named name, or
// nil.
func (s *Snapshot) Host(name string) *HostStats {
	for i := range s.Hosts {
		if s.Hosts[i].Name == name {
			return &s.Hosts[i]
		}
	}
	return nil
}

// ProviderStats are one provider's counters. Connections to its normal
// hosts count in Clients; dials to its dead and black-hole hosts in Dials.
type ProviderStats struct {
	// Name is the provider's name.
	Name string `json:"name"`
	// Recipients counts the distinct (Message-ID, recipient) pairs
	// accepted: recipients delivered, each once.
	Recipients int64 `json:"recipients"`
	// Duplicates counts the deliveries of a pair already delivered.
	Duplicates int64 `json:"duplicates"`
	// Transactions counts MAIL commands accepted; Messages the messages
	// accepted at the end of DATA.
	Transactions int64 `json:"transactions"`
	Messages     int64 `json:"messages"`
	// NoMessageID counts accepted messages without a Message-ID header
	// (they are not checked for duplicates).
	NoMessageID int64 `json:"no_message_id,omitempty"`
	// Connections counts the connections to its normal hosts, Refused
	// those of them turned away at the banner by ConnCapPerIP; both
	// summed over the client IPs.
	Connections int64 `json:"connections"`
	Refused     int64 `json:"refused"`
	// Clients are the connection counters per client IP.
	Clients map[string]ClientStats `json:"clients,omitempty"`
	// RateLimited, Greylisted and UnknownUser count the RCPT commands
	// refused for those reasons; RelayDenied those for a domain of
	// another provider; TooManyMessages the MAIL commands refused by
	// MsgsPerConn.
	RateLimited     int64 `json:"rate_limited"`
	Greylisted      int64 `json:"greylisted"`
	UnknownUser     int64 `json:"unknown_user"`
	RelayDenied     int64 `json:"relay_denied,omitempty"`
	TooManyMessages int64 `json:"too_many_messages,omitempty"`
	// Dials counts connections to its dead and black-hole hosts per client
	// IP; DeadDials those to dead hosts alone, in all.
	Dials     map[string]int64 `json:"dials,omitempty"`
	DeadDials int64            `json:"dead_dials,omitempty"`
	// Held is how many connections its black holes hold now; PeakHeld the
	// most they held at once (over all of them).
	Held     int64 `json:"held,omitempty"`
	PeakHeld int64 `json:"peak_held,omitempty"`
}

// PeakPerIP is the highest Peak of any client IP.
func (p *ProviderStats) PeakPerIP() int64 {
	var m int64
	for _, c := range p.Clients {
		m = max(m, c.Peak)
	}
	return m
}

// RefusedShare is Refused over Connections (0 with no connection).
func (p *ProviderStats) RefusedShare() float64 {
	if p.Connections == 0 {
		return 0
	}
	return float64(p.Refused) / float64(p.Connections)
}

// ClientStats are the connections of one client IP to a provider's normal
// hosts.
type ClientStats struct {
	// Connections counts every connection, refused ones included.
	Connections int64 `json:"connections"`
	// Refused counts the connections given the 421 banner because the
	// client had ConnCapPerIP open; RefusedShare is Refused/Connections.
	Refused      int64   `json:"refused"`
	RefusedShare float64 `json:"refused_share"`
	// Open is how many admitted connections are open now.
	Open int64 `json:"open"`
	// Peak is the most admitted connections open at once: over the whole
	// provider, or, with HostPerDomain, to any one domain's hosts (the
	// scope of the cap).
	Peak int64 `json:"peak"`
}

// HostStats are the counters of a dead or black-hole host.
type HostStats struct {
	Name     string   `json:"name"`
	IP       string   `json:"ip"`
	Provider string   `json:"provider"`
	Kind     HostKind `json:"kind"`
	// Dials counts the connections accepted per client IP.
	Dials map[string]int64 `json:"dials"`
	// Held and PeakHeld are the connections a black hole holds now and
	// the most it held at once.
	Held     int64 `json:"held,omitempty"`
	PeakHeld int64 `json:"peak_held,omitempty"`
}

// DSNStats describe the delivery status notifications (messages with the
// null sender) that the Sender providers received.
type DSNStats struct {
	// Reports counts them.
	Reports int64 `json:"reports"`
	// Unparsed counts those without a message/delivery-status part that
	// could be read.
	Unparsed int64 `json:"unparsed,omitempty"`
	// Recipients counts, per recipient (lower case), the reports that
	// name it with Action: failed, by its Original-Recipient field, else
	// its Final-Recipient.
	Recipients map[string]int64 `json:"recipients,omitempty"`
	// OtherActions counts the per-recipient fields with another action
	// (delayed, delivered, …).
	OtherActions int64 `json:"other_actions,omitempty"`
}

// Missing returns the addresses among want that no report names, sorted.
func (d *DSNStats) Missing(want []string) []string {
	var out []string
	for _, a := range want {
		if d.Recipients[lower(a)] == 0 {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

// clientCounters are one client IP's counters at a provider.
type clientCounters struct {
	conns, refused, open, peak int64
}

// groupIP keys the open connections of a client IP in one cap group.
type groupIP struct {
	group int
	ip    string
}

// provider is a provider's running state; mu guards provState.
type provider struct {
	spec  Provider
	index int
	// rlCode and rlText are the parsed RateLimitReply.
	rlCode int
	rlText string

	mu sync.Mutex
	provState
}

// provState is what Reset clears.
type provState struct {
	clients      map[string]*clientCounters
	open         map[groupIP]int64
	deliveries   map[string]int32
	recipients   int64
	duplicates   int64
	transactions int64
	messages     int64
	noMessageID  int64
	rateLimited  int64
	greylisted   int64
	unknownUser  int64
	relayDenied  int64
	tooMany      int64
	dials        map[string]int64
	deadDials    int64
	held         int64
	peakHeld     int64
	greylist     map[string]time.Time
	attempts     map[string]int32
	dsn          DSNStats
}

func newProvider(spec Provider, index int) *provider {
	p := &provider{spec: spec, index: index}
	p.rlCode, p.rlText, _ = parseReply(DefaultRateLimitReply)
	if spec.RateLimitReply != "" {
		p.rlCode, p.rlText, _ = parseReply(spec.RateLimitReply)
	}
	p.reset()
	return p
}

// reset clears the counters and tables; connections open now stay open
// (Open) and make the new peak.
func (p *provider) reset() {
	clients := make(map[string]*clientCounters)
	for ip, c := range p.clients {
		if c.open > 0 {
			clients[ip] = &clientCounters{open: c.open}
		}
	}
	open := make(map[groupIP]int64)
	for k, n := range p.open {
		if n > 0 {
			open[k] = n
			c := clients[k.ip]
			c.peak = max(c.peak, n)
		}
	}
	p.provState = provState{
		clients: clients, open: open,
		deliveries: make(map[string]int32),
		dials:      make(map[string]int64),
		held:       p.held, peakHeld: p.held,
		greylist: make(map[string]time.Time),
		attempts: make(map[string]int32),
		dsn:      DSNStats{Recipients: make(map[string]int64)},
	}
}

// stats copies the counters.
func (p *provider) stats() ProviderStats {
	s := ProviderStats{
		Name:            p.spec.Name,
		Recipients:      p.recipients,
		Duplicates:      p.duplicates,
		Transactions:    p.transactions,
		Messages:        p.messages,
		NoMessageID:     p.noMessageID,
		RateLimited:     p.rateLimited,
		Greylisted:      p.greylisted,
		UnknownUser:     p.unknownUser,
		RelayDenied:     p.relayDenied,
		TooManyMessages: p.tooMany,
		DeadDials:       p.deadDials,
		Held:            p.held,
		PeakHeld:        p.peakHeld,
	}
	if len(p.clients) > 0 {
		s.Clients = make(map[string]ClientStats, len(p.clients))
		for ip, c := range p.clients {
			cs := ClientStats{Connections: c.conns, Refused: c.refused, Open: c.open, Peak: c.peak}
			if c.conns > 0 {
				cs.RefusedShare = float64(c.refused) / float64(c.conns)
			}
			s.Clients[ip] = cs
			s.Connections += c.conns
			s.Refused += c.refused
		}
	}
	if len(p.dials) > 0 {
		s.Dials = maps.Clone(p.dials)
	}
	return s
}

// host is an MX host's running state. Its counters are guarded by its
// provider's mu.
type host struct {
	info  HostInfo
	prov  *provider
	group int

	dials    map[string]int64
	held     int64
	peakHeld int64
}

func (h *host) reset() {
	h.dials = make(map[string]int64)
	h.peakHeld = h.held
}

func (h *host) stats() HostStats {
	return HostStats{Name: h.info.Name, IP: h.info.IP, Provider: h.info.Provider, Kind: h.info.Kind,
		Dials: maps.Clone(h.dials), Held: h.held, PeakHeld: h.peakHeld}
}
