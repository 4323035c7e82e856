package queue

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Errors returned by the queue. Callers compare with errors.Is.
var (
	// ErrClosed is returned by every operation after Close.
	ErrClosed = errors.New("queue: closed")
	// ErrNotFound is returned by Body and Lookup for an ID that is not (or no
	// longer) in the spool.
	ErrNotFound = errors.New("queue: message not found")
	// ErrNotLeased is returned by Lease.Report for a recipient that the lease
	// does not hold: never leased by it, already reported, or released.
	ErrNotLeased = errors.New("queue: recipient not held by this lease")
	// ErrInvalid wraps validation errors from Put and from operations given
	// an unusable argument.
	ErrInvalid = errors.New("queue: invalid argument")
)

// Key is a queue key: the VMTA that sends and the destination domain. Each
// key has its own FIFO of due recipients, its own deferrals and its own
// delivery runner. It is a small comparable struct so it can key maps.
type Key struct {
	VMTA   string
	Domain string
}

// String returns "domain/vmta", domain first, as PowerMTA shows queues.
func (k Key) String() string { return k.Domain + "/" + k.VMTA }

// ParseKey parses the "domain/vmta" form of Key.String. The domain is
// lower-cased, as Put does.
func ParseKey(s string) (Key, error) {
	d, v, ok := strings.Cut(s, "/")
	if !ok || d == "" {
		return Key{}, fmt.Errorf("%w: queue key %q: want domain/vmta", ErrInvalid, s)
	}
	return Key{VMTA: v, Domain: strings.ToLower(d)}, nil
}

// Notify holds the RFC 3461 NOTIFY parameter of a recipient as bit flags.
// The zero value means the parameter was absent (the DSN default applies).
type Notify uint8

// NOTIFY flags. NotifyNever excludes the others.
const (
	NotifyNever Notify = 1 << iota
	NotifySuccess
	NotifyFailure
	NotifyDelay
)

// DSNRet is the RFC 3461 RET parameter of MAIL FROM.
type DSNRet uint8

// RET values; RetUnset means the parameter was absent.
const (
	RetUnset DSNRet = iota
	RetFull
	RetHeaders
)

// Envelope is everything about a message except its recipients and body. It
// is stored once per message under m/<id>.
type Envelope struct {
	Sender   string     // MAIL FROM address; empty for the null sender <>
	Received time.Time  // when the message was received; zero means "now" in Put
	SourceIP netip.Addr // the submitting client's IP; may be the zero Addr
	AuthUser string     // the SMTP AUTH identity, if any
	JobID    string     // the job (campaign) the message belongs to, if any
	EnvID    string     // RFC 3461 ENVID, if given
	DSNRet   DSNRet     // RFC 3461 RET, if given
	Size     int64      // message size in bytes; zero means len(Body) in Put
}

// Recipient is one envelope recipient together with the queue it was
// routed to.
type Recipient struct {
	Address string // RCPT TO address
	// Domain is the destination domain; Put derives it from Address when
	// empty and lower-cases it either way.
	Domain string
	VMTA   string // the VMTA that will send to this recipient
	Pool   string // the pool the VMTA was selected through; may be empty
	ORcpt  string // RFC 3461 ORCPT, if given
	Notify Notify // RFC 3461 NOTIFY, if given
}

// Key returns the queue key the recipient is queued under.
func (r Recipient) Key() Key { return Key{VMTA: r.VMTA, Domain: r.Domain} }

// Message is what Put stores: an envelope, its recipients and the body.
type Message struct {
	Envelope
	Recipients []Recipient
	// Body is the message as it will be sent (headers and body). Put copies
	// it into the commit and keeps no reference after returning.
	Body []byte
}

// RecipientState is a queued recipient as the spool records it.
type RecipientState struct {
	N int // index of the recipient within its message (0-based, in Put order)
	Recipient
	Attempts    int       // delivery attempts so far that ended deferred
	NextAttempt time.Time // when the recipient is due; zero if due at once
	LastAttempt time.Time // when the last deferral was recorded; zero if none
	LastReply   string    // the reply of the last deferral; empty if none
}

// Entry is a queued message without its body: the envelope and the state of
// some of its recipients (those a lease holds, or all still queued for
// Lookup).
type Entry struct {
	ID         ID
	Envelope   Envelope
	Recipients []RecipientState
}

// Kind is the kind of an outcome.
type Kind uint8

// Outcome kinds. Delivered, Deferred and Bounced are reported by workers;
// Deleted and Expired are produced by Delete and Expire.
const (
	Delivered Kind = iota + 1 // accepted by the remote server (final)
	Deferred                  // temporary failure; due again at Outcome.Until
	Bounced                   // permanent failure (final)
	Deleted                   // removed by an operator (final)
	Expired                   // too old; removed by Expire (final)
)

// String returns the lower-case name of the kind.
func (k Kind) String() string {
	switch k {
	case Delivered:
		return "delivered"
	case Deferred:
		return "deferred"
	case Bounced:
		return "bounced"
	case Deleted:
		return "deleted"
	case Expired:
		return "expired"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Final reports whether the recipient leaves the queue with this outcome.
func (k Kind) Final() bool { return k != Deferred }

// Outcome is what a worker reports for one leased recipient.
type Outcome struct {
	ID   ID   // the message
	N    int  // the recipient within the message (RecipientState.N)
	Kind Kind // Delivered, Deferred or Bounced
	// Until is when a deferred recipient is due again; a time not after
	// now makes it due at once. Ignored for the other kinds.
	Until time.Time
	// Reply is the remote server's reply (or a local diagnostic), kept as
	// the recipient's last reply when deferred.
	Reply string
	// Journal, if not empty, is a journal entry committed in the same
	// batch as the outcome (see journal.go): the outcome's accounting
	// record, so that it is durable exactly when the outcome is. It is
	// dropped with an outcome that is ignored (the recipient was deleted
	// while leased: the deletion is what the spool records).
	Journal []byte
}

// Removal describes a recipient that Delete or Expire took out of the
// queue, with what accounting needs to record it.
type Removal struct {
	Kind      Kind // Deleted or Expired
	ID        ID
	Envelope  Envelope
	Recipient RecipientState // LastReply is the last diagnostic, if any
}

// Selector picks queue keys and recipients for operations and views. Empty
// fields match anything, so the zero Selector matches every key; JobID
// additionally filters recipients by their message's job.
type Selector struct {
	VMTA   string
	Domain string
	JobID  string
}

// KeySelector returns the Selector that matches exactly k.
func KeySelector(k Key) Selector { return Selector{VMTA: k.VMTA, Domain: k.Domain} }

// MatchesKey reports whether the VMTA and Domain fields match k.
func (s Selector) MatchesKey(k Key) bool {
	return (s.VMTA == "" || s.VMTA == k.VMTA) && (s.Domain == "" || s.Domain == k.Domain)
}

// covers reports whether every key r matches is also matched by s.
func (s Selector) covers(r Selector) bool {
	return (s.VMTA == "" || s.VMTA == r.VMTA) && (s.Domain == "" || s.Domain == r.Domain)
}

// normalize lower-cases the domain, as keys are stored.
func (s Selector) normalize() Selector {
	s.Domain = strings.ToLower(s.Domain)
	return s
}

// KeyStats is the state of one queue key.
type KeyStats struct {
	Key      Key
	Ready    int  // due now, waiting for a worker
	Deferred int  // waiting for their next attempt
	Leased   int  // held by workers
	Paused   bool // no leases are handed out while paused
	// Oldest is when the oldest recipient's message was received; zero if
	// the key is empty.
	Oldest time.Time
	// NextAttempt is the earliest deferral; zero if none.
	NextAttempt time.Time
}

// Total is Ready + Deferred + Leased.
func (s KeyStats) Total() int { return s.Ready + s.Deferred + s.Leased }

// Totals summarises the whole queue.
type Totals struct {
	Keys       int   // queue keys with recipients (or paused)
	Messages   int   // messages with at least one queued recipient
	Recipients int   // queued recipients: Ready + Deferred + Leased
	Ready      int   // recipients due now
	Deferred   int   // recipients waiting for their next attempt
	Leased     int   // recipients held by workers
	Bytes      int64 // sum of Envelope.Size over queued messages
}
