// Package dsn builds delivery status notifications (bounce messages): the
// RFC 3464 multipart/report messages an MTA sends back to the envelope
// sender of a message it could not deliver.
//
// Build takes every recipient of one message that ended with the same kind
// of outcome (bounced, or delayed) and returns one report covering them all,
// not one per recipient. It honours the RFC 3461 parameters stored with the
// message: NOTIFY (per recipient) decides who is reported, RET decides
// whether the report carries the whole original message or only its
// headers, ENVID and ORCPT are passed back unchanged.
//
// A report has three parts, in this order:
//
//  1. text/plain: what happened, for a human, in plain language;
//  2. message/delivery-status: the machine-readable per-message and
//     per-recipient fields of RFC 3464;
//  3. the original message: text/rfc822-headers (RET=HDRS, or RET absent)
//     or message/rfc822 (RET=FULL, when the original is not too large).
//
// Reports never cause reports: a message whose envelope sender is null
// gets none (Build returns ok=false), and the caller must send the report
// itself with the null envelope sender (MAIL FROM:<>).
package dsn

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/ternmta/tern/queue"
)

// Action is the RFC 3464 Action field of a recipient.
type Action string

// Actions a report can carry. Build reports ActionFailed and ActionDelayed;
// the others are accepted so that success notifications can be built the
// same way.
const (
	ActionFailed    Action = "failed"
	ActionDelayed   Action = "delayed"
	ActionDelivered Action = "delivered"
	ActionRelayed   Action = "relayed"
	ActionExpanded  Action = "expanded"
)

// DefaultMaxFull is the largest original message returned whole when
// RET=FULL and Input.MaxFull is zero. A larger one is returned as its
// headers only, and the human-readable part says so.
const DefaultMaxFull = 10 << 20

// Input is what Build needs to report on the recipients of one message.
type Input struct {
	// ReportingMTA is the host name of this MTA, as it greets (Reporting-MTA
	// and the right-hand side of the report's Message-ID). Required.
	ReportingMTA string
	// Postmaster is the report's From address; "postmaster@ReportingMTA"
	// when empty.
	Postmaster string
	// Sender is the original message's envelope sender (MAIL FROM), which
	// the report is addressed to. Empty (or "<>") is the null sender: no
	// report is built.
	Sender string
	// EnvID is the RFC 3461 ENVID of the original message, if given.
	EnvID string
	// Ret is the RFC 3461 RET of the original message; RetUnset returns the
	// headers, as RetHeaders does.
	Ret queue.DSNRet
	// Arrival is when the original message was received (Arrival-Date);
	// omitted when zero.
	Arrival time.Time
	// Now is the report's Date; time.Now() when zero.
	Now time.Time
	// Original is the original message, headers and body. Line endings may
	// be CRLF or LF. When nil, the report has no third part.
	Original []byte
	// Recipients are the recipients to report on; those whose NOTIFY does
	// not ask for a report of their Action are left out.
	Recipients []Recipient
	// MessageID is the report's Message-ID without angle brackets; a unique
	// one at ReportingMTA is generated when empty.
	MessageID string
	// MaxFull is the largest original returned whole for RET=FULL: zero
	// means DefaultMaxFull, a negative value means no limit.
	MaxFull int64
}

// Recipient is one recipient being reported on.
type Recipient struct {
	// Address is the recipient as it was given in RCPT TO (Final-Recipient).
	Address string
	// ORcpt is the RFC 3461 ORCPT, if given: either the bare address, taken
	// as an rfc822 address, or "addr-type;address" passed through.
	ORcpt string
	// Notify is the RFC 3461 NOTIFY of the recipient; zero when absent.
	Notify queue.Notify
	// Action is what happened; ActionFailed when empty.
	Action Action
	// Status is the RFC 3463 status code x.y.z. When empty (or malformed)
	// it is taken from the enhanced status code of Diagnostic, else from
	// its reply code's class (4.0.0 or 5.0.0), else 5.0.0 for a failure and
	// 4.0.0 for a delay.
	Status string
	// RemoteMTA is the host name of the server that gave Diagnostic;
	// Remote-MTA is omitted when empty.
	RemoteMTA string
	// Diagnostic is the remote server's full reply ("550 5.1.1 user
	// unknown", lines separated by newlines), or a local diagnostic when
	// no reply was received. Diagnostic-Code is omitted when empty.
	Diagnostic string
	// LastAttempt is when delivery was last attempted; omitted when zero.
	LastAttempt time.Time
	// RetryUntil is, for ActionDelayed, when delivery will be given up
	// (Will-Retry-Until); omitted when zero.
	RetryUntil time.Time
}

func (r Recipient) action() Action {
	if r.Action == "" {
		return ActionFailed
	}
	return r.Action
}

// Wanted reports whether a recipient with NOTIFY n asks for a report of
// action a. An absent NOTIFY (zero) asks for failures and delays, per RFC
// 3461 section 5.1; NOTIFY=NEVER asks for nothing. Callers can use it to
// skip reading the original message when no recipient wants a report.
func Wanted(n queue.Notify, a Action) bool {
	if a == "" {
		a = ActionFailed
	}
	if n&queue.NotifyNever != 0 {
		return false
	}
	switch a {
	case ActionFailed:
		return n == 0 || n&queue.NotifyFailure != 0
	case ActionDelayed:
		return n == 0 || n&queue.NotifyDelay != 0
	case ActionDelivered, ActionRelayed, ActionExpanded:
		return n&queue.NotifySuccess != 0
	}
	return false
}

// IsNullSender reports whether s is the null reverse path.
func IsNullSender(s string) bool {
	s = strings.TrimSpace(s)
	return s == "" || s == "<>"
}

// randReader is the source of Message-ID and boundary randomness; tests
// replace it to get reproducible output.
var randReader io.Reader = rand.Reader

// Build returns the report on in.Recipients for the message in.Original, to
// be sent from the null envelope sender to in.Sender. It returns ok=false
// and no error when no report is due: the sender is null, or no recipient's
// NOTIFY asks for one. It returns an error for unusable input (no
// ReportingMTA, an unknown Action, line breaks in addresses).
func Build(in Input) (msg []byte, ok bool, err error) {
	if IsNullSender(in.Sender) {
		return nil, false, nil
	}
	var rcpts []Recipient
	for _, r := range in.Recipients {
		switch r.action() {
		case ActionFailed, ActionDelayed, ActionDelivered, ActionRelayed, ActionExpanded:
		default:
			return nil, false, fmt.Errorf("dsn: recipient %q: unknown action %q", r.Address, r.Action)
		}
		if Wanted(r.Notify, r.action()) {
			rcpts = append(rcpts, r)
		}
	}
	if len(rcpts) == 0 {
		return nil, false, nil
	}
	if err := in.check(rcpts); err != nil {
		return nil, false, err
	}
	b := builder{in: in, rcpts: rcpts}
	if err := b.build(); err != nil {
		return nil, false, err
	}
	return b.out.Bytes(), true, nil
}

func (in *Input) check(rcpts []Recipient) error {
	host := strings.TrimSpace(in.ReportingMTA)
	if host == "" {
		return errors.New("dsn: no reporting MTA host name")
	}
	for _, f := range []struct{ what, v string }{
		{"reporting MTA", host},
		{"postmaster", strings.TrimSpace(in.Postmaster)},
		{"message ID", strings.TrimSpace(in.MessageID)},
	} {
		if strings.ContainsAny(f.v, "\r\n\x00<> ") {
			return fmt.Errorf("dsn: %s %q: forbidden characters", f.what, f.v)
		}
	}
	if strings.ContainsAny(in.Sender, "\r\n\x00") {
		return fmt.Errorf("dsn: sender %q: line break in address", in.Sender)
	}
	for _, r := range rcpts {
		if strings.TrimSpace(r.Address) == "" {
			return errors.New("dsn: recipient without address")
		}
		if strings.ContainsAny(r.Address+r.ORcpt, "\r\n\x00") {
			return fmt.Errorf("dsn: recipient %q: line break in address", r.Address)
		}
	}
	return nil
}

type builder struct {
	in      Input
	rcpts   []Recipient
	now     time.Time
	host    string
	full    bool // the original goes back whole
	tooBig  bool // RET=FULL was asked for but the original is over the limit
	headers []byte
	body    []byte
	out     bytes.Buffer
}

func (b *builder) build() error {
	in := b.in
	b.now = in.Now
	if b.now.IsZero() {
		b.now = time.Now()
	}
	b.host = strings.TrimSpace(in.ReportingMTA)
	if in.Original != nil {
		b.headers, b.body = splitMessage(in.Original)
		if in.Ret == queue.RetFull {
			limit := in.MaxFull
			if limit == 0 {
				limit = DefaultMaxFull
			}
			b.full = limit < 0 || int64(len(in.Original)) <= limit
			b.tooBig = !b.full
		}
	}

	if b.full {
		b.out.Grow(len(in.Original) + len(in.Original)/64 + 8<<10)
	}

	token, err := randomToken()
	if err != nil {
		return err
	}
	msgID := strings.TrimSpace(in.MessageID)
	if msgID == "" {
		msgID = strconv.FormatInt(b.now.UnixNano(), 36) + "." + token[:16] + "@" + b.host
	}
	postmaster := strings.TrimSpace(in.Postmaster)
	if postmaster == "" {
		postmaster = "postmaster@" + b.host
	}
	sender := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(in.Sender), "<"), ">")
	boundary := "=_tern-report-" + token

	subject := "Undelivered Mail Returned to Sender"
	if !b.anyAction(ActionFailed) {
		if b.anyAction(ActionDelayed) {
			subject = "Delayed Mail (still being retried)"
		} else {
			subject = "Successful Mail Delivery Report"
		}
	}

	var h message.Header
	addFields(&h.Header,
		"From", "Mail Delivery System <"+postmaster+">",
		"To", "<"+sender+">",
		"Subject", subject,
		"Date", formatDate(b.now),
		"Message-ID", "<"+msgID+">",
		"Auto-Submitted", "auto-replied",
		"MIME-Version", "1.0",
		"Content-Type", `multipart/report; report-type=delivery-status; boundary="`+boundary+`"`,
	)
	mw, err := message.CreateWriter(&b.out, h)
	if err != nil {
		return fmt.Errorf("dsn: %w", err)
	}
	if err := b.textPart(mw); err != nil {
		return err
	}
	if err := b.statusPart(mw); err != nil {
		return err
	}
	if in.Original != nil {
		if err := b.originalPart(mw); err != nil {
			return err
		}
	}
	if err := mw.Close(); err != nil {
		return fmt.Errorf("dsn: %w", err)
	}
	return nil
}

func (b *builder) anyAction(a Action) bool {
	for _, r := range b.rcpts {
		if r.action() == a {
			return true
		}
	}
	return false
}

func randomToken() (string, error) {
	var buf [16]byte
	if _, err := io.ReadFull(randReader, buf[:]); err != nil {
		return "", fmt.Errorf("dsn: random: %w", err)
	}
	return hex.EncodeToString(buf[:]), nil
}

// formatDate formats t as an RFC 5322 date-time, as RFC 3464 dates are.
func formatDate(t time.Time) string {
	return t.Format("Mon, 02 Jan 2006 15:04:05 -0700")
}

// addFields adds name, value pairs to h so that they are written in the
// order given, spelled as given and folded at whitespace.
func addFields(h *textproto.Header, kv ...string) {
	// textproto.Header inserts at the top: add in reverse.
	for i := len(kv) - 2; i >= 0; i -= 2 {
		h.AddRaw([]byte(foldField(kv[i], kv[i+1])))
	}
}

func (b *builder) partWriter(mw *message.Writer, kv ...string) (*message.Writer, error) {
	var h message.Header
	addFields(&h.Header, kv...)
	w, err := mw.CreatePart(h)
	if err != nil {
		return nil, fmt.Errorf("dsn: %w", err)
	}
	return w, nil
}

func (b *builder) statusPart(mw *message.Writer) error {
	w, err := b.partWriter(mw,
		"Content-Description", "Delivery report",
		"Content-Type", "message/delivery-status",
		"Content-Transfer-Encoding", "7bit",
	)
	if err != nil {
		return err
	}
	if _, err := w.Write(b.deliveryStatus()); err != nil {
		return fmt.Errorf("dsn: %w", err)
	}
	return w.Close()
}

// deliveryStatus returns the body of the message/delivery-status part: the
// per-message block, then one block per recipient, each ended by a blank
// line.
func (b *builder) deliveryStatus() []byte {
	var s strings.Builder
	s.WriteString(foldField("Reporting-MTA", "dns; "+asciiText(b.host)))
	if b.in.EnvID != "" {
		s.WriteString(foldField("Original-Envelope-Id", asciiText(b.in.EnvID)))
	}
	if !b.in.Arrival.IsZero() {
		s.WriteString(foldField("Arrival-Date", formatDate(b.in.Arrival)))
	}
	for _, r := range b.rcpts {
		s.WriteString("\r\n")
		if r.ORcpt != "" {
			s.WriteString(foldField("Original-Recipient", typedAddress(r.ORcpt)))
		}
		s.WriteString(foldField("Final-Recipient", typedAddress(r.Address)))
		s.WriteString(foldField("Action", string(r.action())))
		s.WriteString(foldField("Status", statusOf(r)))
		if r.RemoteMTA != "" {
			s.WriteString(foldField("Remote-MTA", "dns; "+asciiText(r.RemoteMTA)))
		}
		if r.Diagnostic != "" {
			typ := "smtp"
			if _, ok := replyCode(r.Diagnostic); !ok {
				typ = "X-Tern"
			}
			s.WriteString(foldField("Diagnostic-Code", typ+"; "+asciiText(oneLine(r.Diagnostic))))
		}
		if !r.LastAttempt.IsZero() {
			s.WriteString(foldField("Last-Attempt-Date", formatDate(r.LastAttempt)))
		}
		if r.action() == ActionDelayed && !r.RetryUntil.IsZero() {
			s.WriteString(foldField("Will-Retry-Until", formatDate(r.RetryUntil)))
		}
	}
	return []byte(s.String())
}

func (b *builder) originalPart(mw *message.Writer) error {
	if b.full {
		cte := "7bit"
		if !isASCII(b.in.Original) {
			cte = "8bit"
		}
		w, err := b.partWriter(mw,
			"Content-Description", "Undelivered message",
			"Content-Type", "message/rfc822",
			"Content-Transfer-Encoding", cte,
		)
		if err != nil {
			return err
		}
		if err := writeLines(w, b.headers, true); err != nil {
			return err
		}
		if b.body != nil {
			if err := writeLines(w, []byte("\r\n"), false); err != nil {
				return err
			}
			if err := writeLines(w, b.body, false); err != nil {
				return err
			}
		}
		return w.Close()
	}
	cte := "7bit"
	if !isASCII(b.headers) {
		cte = "8bit"
	}
	w, err := b.partWriter(mw,
		"Content-Description", "Undelivered message headers",
		"Content-Type", "text/rfc822-headers",
		"Content-Transfer-Encoding", cte,
	)
	if err != nil {
		return err
	}
	if err := writeLines(w, b.headers, true); err != nil {
		return err
	}
	return w.Close()
}
