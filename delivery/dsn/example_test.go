package dsn_test

import (
	"fmt"
	"time"

	"github.com/ternmta/tern/delivery/dsn"
	"github.com/ternmta/tern/queue"
)

// A worker that bounced two recipients of one message builds one report
// for both, and sends it with the null envelope sender.
func ExampleBuild() {
	msg, ok, err := dsn.Build(dsn.Input{
		ReportingMTA: "mta1.example.net",
		Sender:       "alice@example.com",
		EnvID:        "QQ314159",
		Ret:          queue.RetHeaders,
		Arrival:      time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC),
		Original:     []byte("From: alice@example.com\r\nSubject: hi\r\n\r\nHello\r\n"),
		Recipients: []dsn.Recipient{
			{Address: "bob@example.org", RemoteMTA: "mx.example.org", Diagnostic: "550 5.1.1 user unknown"},
			{Address: "carol@example.org", Notify: queue.NotifyFailure, Diagnostic: "554 delivery error"},
			{Address: "dan@example.org", Notify: queue.NotifyNever, Diagnostic: "550 5.1.1 user unknown"},
		},
	})
	if err != nil || !ok {
		fmt.Println("no report", err)
		return
	}
	fmt.Println(len(msg) > 0, dsn.Status("554 delivery error"))
	// Output: true 5.0.0
}
