// Package dkim signs outbound mail with DKIM (RFC 6376), using the keys and
// the dkim-sign switches of the configuration.
//
// The listener calls SignFor once, when a message is spooled, so every
// delivery attempt of the message (retries included) carries the same
// signature, and a signature is never recomputed for a queue.
//
// # Policy
//
// Whether to sign is a property of the recipient's queue: the effective
// policy of (VMTA, pool, recipient domain), as resolved by
// vmta.Registry.Policy, must have dkim-sign yes (see Enabled).
//
// Which key signs is a property of the author: the key is chosen by the
// domain of the From header (see FromDomain), so that the signature's d=
// aligns with it for DMARC. A domain-key whose domain equals the From domain
// or is a parent of it qualifies (a key for example.com signs mail From
// news.example.com: relaxed alignment), and so does a key written with *
// as its domain (`domain-key s1,*,key.pem`), which signs with d= the From
// domain itself. The keys are searched level by level (see ChooseKey): the
// keys of the VMTA's <domain> blocks, then the pool's, then the global
// blocks'; then the domain-key lines of the <virtual-mta> itself, of the
// <virtual-mta-pool> the mail was selected through, and of the top level.
// The first level with a qualifying key decides; within it an aligned key
// wins over a * key, and the most specific aligned key (the longest
// domain), then file order. The pattern of the <domain> block a domain-key
// is written in does not restrict the recipients it signs for: it only
// scopes dkim-sign.
//
// # Signature
//
// Sign produces one DKIM-Signature header with go-msgauth: rsa-sha256 for an
// RSA key, ed25519-sha256 (RFC 8463) for an Ed25519 key, relaxed/relaxed
// canonicalization, no l= (the whole body is signed). The signed header
// fields are those of SignedHeaders that the message has, each listed as many
// times as it occurs; From, Reply-To and Subject are listed once more
// ("oversigned", RFC 6376 §8.15), so that adding another such field after
// signing breaks the signature rather than changes what the reader sees.
//
// # Already signed
//
// SignFor does not add a signature when the message already carries a
// DKIM-Signature with the same d= and s= as the chosen key (say, a message
// re-injected after it was signed, or a client that signs with the same key
// itself): a second signature by the same key adds nothing a verifier could
// use, and the first one stays the one that verifies or not. Signatures with
// another d= or s= (a client's own) are kept, and Tern's is added on top.
package dkim
