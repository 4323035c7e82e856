package delivery_test

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/ternmta/tern/delivery"
	"github.com/ternmta/tern/delivery/acct"
	"github.com/ternmta/tern/queue"
)

// The accounting record of an outcome carries the bounce category and
// status from the reply, and the queue as domain/vmta.
func TestAcctRecordOfBounce(t *testing.T) {
	ev := delivery.Event{
		Time:     time.Unix(1700000000, 0),
		Envelope: queue.Envelope{Sender: "app@example.org", JobID: "j1", Received: time.Unix(1699999000, 0)},
		Recipient: queue.RecipientState{Recipient: queue.Recipient{
			Address: "x@example.com", Domain: "example.com", VMTA: "mta1", Pool: "pool1"}},
		Kind:       queue.Bounced,
		Reply:      "550 5.7.1 [BL21] Connections not accepted from IP addresses on Spamhaus PBL",
		SourceIP:   netip.MustParseAddr("192.0.2.1"),
		RemoteHost: "mx.example.com",
		RemoteIP:   netip.MustParseAddr("198.51.100.7"),
	}
	r := ev.AcctRecord()
	want := acct.Record{Type: acct.TypeBounced, DSNAction: "failed", DSNStatus: "5.7.1", BounceCat: "spam-related",
		Queue: "example.com/mta1", VMTAPool: "pool1", JobID: "j1", DlvSourceIP: "192.0.2.1", DlvDestinationIP: "198.51.100.7",
		DSNMta: "dns;mx.example.com (198.51.100.7)"}
	got := acct.Record{Type: r.Type, DSNAction: r.DSNAction, DSNStatus: r.DSNStatus, BounceCat: r.BounceCat, Queue: r.Queue,
		VMTAPool: r.VMTAPool, JobID: r.JobID, DlvSourceIP: r.DlvSourceIP, DlvDestinationIP: r.DlvDestinationIP, DSNMta: r.DSNMta}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("AcctRecord =\n%+v\nwant\n%+v", got, want)
	}
}

// A recipient an operator deleted is accounted as a bounce "deleted by
// administrator".
func TestRemovalRecord(t *testing.T) {
	now := time.Unix(1700000000, 0)
	r := delivery.RemovalRecord(queue.Removal{Kind: queue.Deleted, Envelope: queue.Envelope{Sender: "a@b.example"},
		Recipient: queue.RecipientState{Recipient: queue.Recipient{Address: "c@d.example", Domain: "d.example", VMTA: "mta2"}}}, now)
	if r.Type != acct.TypeBounced || r.DSNDiag != "deleted by administrator" || r.Queue != "d.example/mta2" || !r.TimeLogged.Equal(now) {
		t.Errorf("RemovalRecord = %+v", r)
	}
	e := delivery.RemovalRecord(queue.Removal{Kind: queue.Expired}, now)
	if e.BounceCat != "message-expired" || e.DSNStatus != "5.4.7" {
		t.Errorf("expired removal = %+v", e)
	}
}
