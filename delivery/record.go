package delivery

import (
	"strconv"
	"time"

	"github.com/ternmta/tern/delivery/acct"
	"github.com/ternmta/tern/delivery/bounce"
	"github.com/ternmta/tern/queue"
)

// AcctRecord turns an outcome into its accounting record: d for a
// delivery, b for a bounce (with its bounce category), t for a deferral.
func (ev Event) AcctRecord() acct.Record {
	rc := ev.Recipient
	r := acct.Record{
		TimeLogged: ev.Time,
		TimeQueued: ev.Envelope.Received,
		Orig:       ev.Envelope.Sender,
		Rcpt:       rc.Address,
		ORcpt:      rc.ORcpt,
		SrcType:    "smtp",
		DlvType:    "smtp",
		DlvSize:    int64(ev.Size),
		VMTA:       rc.VMTA,
		JobID:      ev.Envelope.JobID,
		EnvID:      ev.Envelope.EnvID,
		Queue:      rc.Key().String(),
		VMTAPool:   rc.Pool,
		Message:    ev.Message,
	}
	if ev.Envelope.SourceIP.IsValid() {
		r.SrcMta = ev.Envelope.SourceIP.String()
	}
	if ev.SourceIP.IsValid() {
		r.DlvSourceIP = ev.SourceIP.String()
	}
	if ev.RemoteIP.IsValid() {
		r.DlvDestinationIP = ev.RemoteIP.String()
		r.DSNMta = "dns;" + ev.RemoteHost + " (" + r.DlvDestinationIP + ")"
	}
	r.DSNDiag = "smtp;" + ev.Reply
	if ev.Discarded {
		// Not an SMTP reply: nothing was sent (type discard).
		r.DlvType, r.DSNDiag = "discard", ev.Reply
	}
	code := replyCode(ev.Reply)
	if e, ok := bounce.ParseEnhanced(ev.Reply); ok {
		r.DSNStatus = strconv.Itoa(e.Class) + "." + strconv.Itoa(e.Subject) + "." + strconv.Itoa(e.Detail)
	}
	switch ev.Kind {
	case queue.Delivered:
		r.Type, r.DSNAction = acct.TypeDelivered, "delivered"
		if r.DSNStatus == "" {
			r.DSNStatus = "2.0.0"
		}
	case queue.Bounced:
		r.Type, r.DSNAction = acct.TypeBounced, "failed"
		r.BounceCat = string(bounce.Classify(code, ev.Reply))
		if r.DSNStatus == "" {
			r.DSNStatus = "5.0.0"
		}
	default:
		r.Type, r.DSNAction = acct.TypeTransient, "delayed"
		r.BounceCat = string(bounce.Classify(code, ev.Reply))
		if r.DSNStatus == "" {
			r.DSNStatus = "4.0.0"
		}
	}
	return r
}

// replyCode reads the three-digit code a reply starts with; 0 if none.
func replyCode(reply string) int {
	if len(reply) < 3 {
		return 0
	}
	n := 0
	for _, c := range reply[:3] {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// RemovalRecord is the accounting record of a recipient an operator deleted
// (or that Expire took out of the queue): a bounce, so that accounting
// shows every recipient leaving the queue exactly once.
func RemovalRecord(r queue.Removal, now time.Time) acct.Record {
	diag, status, cat := "deleted by administrator", "5.0.0", string(bounce.Other)
	if r.Kind == queue.Expired {
		diag, status, cat = "message expired in the queue", "5.4.7", string(bounce.MessageExpired)
	}
	rc := r.Recipient
	rec := acct.Record{
		Type:       acct.TypeBounced,
		TimeLogged: now,
		TimeQueued: r.Envelope.Received,
		Orig:       r.Envelope.Sender,
		Rcpt:       rc.Address,
		ORcpt:      rc.ORcpt,
		DSNAction:  "failed",
		DSNStatus:  status,
		DSNDiag:    diag,
		BounceCat:  cat,
		SrcType:    "smtp",
		VMTA:       rc.VMTA,
		JobID:      r.Envelope.JobID,
		EnvID:      r.Envelope.EnvID,
		Queue:      rc.Key().String(),
		VMTAPool:   rc.Pool,
	}
	if r.Envelope.SourceIP.IsValid() {
		rec.SrcMta = r.Envelope.SourceIP.String()
	}
	return rec
}

// ReceivedRecord is the accounting record of recipient rc of message m,
// accepted under id: an r record, with the time the spool gives the
// message.
func ReceivedRecord(id queue.ID, m *queue.Message, rc queue.Recipient) acct.Record {
	r := acct.Record{Type: acct.TypeReceived, TimeQueued: id.Time(), Orig: m.Sender, Rcpt: rc.Address,
		ORcpt: rc.ORcpt, SrcType: "smtp", DlvSize: int64(len(m.Body)),
		VMTA: rc.VMTA, JobID: m.JobID, EnvID: m.EnvID, Queue: rc.Key().String(), VMTAPool: rc.Pool,
		Message: m.Body}
	if m.SourceIP.IsValid() {
		r.SrcMta = m.SourceIP.String()
	}
	return r
}
