package delivery

import (
	"context"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
)

// Providers (MX rollup). Big mailbox providers host thousands of domains
// behind the same MX hosts and count connections and messages per client
// IP, not per domain. So delivery runs one runner per (VMTA, provider):
// the domains of one provider share its connections, its max-smtp-out and
// its rates, and a connection carries mail for any of them. Recipients
// stay queued per (VMTA, domain), which is what accounting, the queue
// views and the operators' commands see.
//
// A domain's provider is, in order:
//   - the domain itself, with type discard (under its VMTA or any pool):
//     no lookup, no rollup (discard.go);
//   - its smtp-hosts, when set: every domain routed to the same smart
//     hosts shares them ("[a.example,b.example]");
//   - the domain itself, with disable-mx-rollup or when it has no usable
//     MX (A fallback, null MX, NXDOMAIN, a DNS error: its runner reports
//     the failure to its recipients);
//   - the name of the <mx-rollup-list> entry matching its MX hosts
//     (most preferred first), e.g. gmail.rollup;
//   - otherwise the set of its MX host names, sorted and joined by
//     commas: domains with the same MX set are one provider.

// routeTTL is how long a domain's provider is remembered: MX sets change
// rarely, and a stale route only groups a domain with its old provider
// until the next lookup.
const routeTTL = 10 * time.Minute

// routeTimeout bounds the lookups that route a new domain.
const routeTimeout = 30 * time.Second

// maxRouting bounds the lookups routing new domains at once: a burst of
// mail to thousands of new domains must not become thousands of
// goroutines querying DNS.
const maxRouting = 16

// route is the provider of a queue key.
type route struct {
	provider string
	// rollup is the <mx-rollup-list> name the provider came from; its
	// connection limits are then those of <domain ROLLUP-NAME>.
	rollup  string
	reg     *vmta.Registry // the configuration it was computed with
	expires time.Time
}

// provKey is what a runner delivers: one VMTA's mail to one provider.
type provKey struct {
	VMTA     string
	Provider string
}

// String returns "provider/vmta", as queue keys are shown.
func (k provKey) String() string { return k.Provider + "/" + k.VMTA }

// providerOf computes the route of key under reg.
func providerOf(ctx context.Context, res Resolver, reg *vmta.Registry, key queue.Key) route {
	pol := &reg.Policy(key.VMTA, "", key.Domain).Settings
	rt := route{provider: key.Domain, reg: reg}
	switch {
	case discardsAny(reg, key):
		// A type discard domain is its own provider, never rolled up or
		// grouped, so that the policy at hand is its own, and it is
		// never looked up (discard.go).
		return rt
	case len(pol.SMTPHosts.Value) > 0:
		// A smart host account is its own provider: the same hosts
		// under another AUTH identity do not share connections.
		rt.provider = "[" + pol.SMTPHosts.Value.String() + "]"
		if pol.AuthUsername.Value != "" {
			rt.provider += " as " + pol.AuthUsername.Value
		}
		return rt
	case disableMXRollup(pol):
		return rt
	}
	mxs, err := res.LookupMX(ctx, key.Domain)
	if err != nil || len(mxs) == 0 || (len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "")) {
		return rt
	}
	sorted := slices.Clone(mxs)
	slices.SortStableFunc(sorted, func(a, b *net.MX) int { return int(a.Pref) - int(b.Pref) })
	hosts := make([]string, 0, len(sorted))
	for _, mx := range sorted {
		h := strings.ToLower(strings.TrimSuffix(mx.Host, "."))
		if name, ok := rollupName(reg.Config(), h); ok && rt.rollup == "" {
			rt.rollup = name
		}
		hosts = append(hosts, h)
	}
	if rt.rollup != "" {
		rt.provider = rt.rollup
		return rt
	}
	slices.Sort(hosts)
	rt.provider = strings.Join(slices.Compact(hosts), ",")
	return rt
}
