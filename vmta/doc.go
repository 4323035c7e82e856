// Package vmta is Tern's runtime model of a configuration: the virtual MTAs
// (VMTAs) and pools mail is sent through, the <source> rules that decide how
// an injecting client is treated, the smtp-users that may authenticate, the
// pattern lists that route messages to VMTAs, and the effective delivery
// policy of every (VMTA, domain) queue.
//
// Build turns a validated *config.Config into a *Registry. A Registry is one
// immutable snapshot: a reload builds a new one and the daemon swaps the
// pointer, so a session or a delivery runner that holds the old snapshot
// keeps a consistent view until it lets go. The only state that changes
// inside a Registry is internal and safe for concurrent use: each pool's
// round-robin counter and the cache of resolved policies. The package has no
// package-level mutable state.
//
// The three questions the rest of Tern asks are:
//
//   - Source: how is a client at this IP (on this listener, as this user)
//     treated? The <source> blocks are merged from the least specific CIDR
//     to the most specific, then the named sources override.
//   - Select: which VMTA does this message go through? X-Virtual-MTA (when
//     the source honours it), then the source's pattern-list, then its
//     default-virtual-mta, then {default}.
//   - Policy: what are the delivery limits for this VMTA (selected through
//     this pool) sending to this domain? The VMTA's <domain> blocks, then the
//     pool's, then the global ones, then the built-in defaults, each
//     directive on its own.
package vmta
