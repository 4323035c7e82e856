package listener_test

import (
	"testing"
)

// A reload that changes only a listener's source= keeps its socket (a
// client connected before the reload is not cut off) and new sessions get
// the new source.
func TestReloadChangesListenerSourceInPlace(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-listener 127.0.0.1:{{.Port2525}} source=closed
<source closed>
    always-allow-relaying no
</source>
<source open>
    always-allow-relaying yes
</source>
`)
	before := dial(t, ts.Addr("2525"))
	if err := before.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	_, err := send(dial(t, ts.Addr("2525")), "a@b.example", []string{"x@example.com"}, message())
	wantRefusal(t, err, stageRcpt, 550, ec571)

	ts.Apply(t, `
smtp-listener 127.0.0.1:{{.Port2525}} source=open
<source closed>
    always-allow-relaying no
</source>
<source open>
    always-allow-relaying yes
</source>
`)
	mustSend(t, dial(t, ts.Addr("2525")), "a@b.example", []string{"x@example.com"}, message())
	// The connection from before the reload still works (with its own
	// configuration, as every session keeps the one it started with).
	if err := before.Noop(); err != nil {
		t.Fatalf("a connection from before the reload was cut: %v", err)
	}
}

// A reload that changes the SIZE cap reopens the listener, and new sessions
// see the new value in EHLO.
func TestReloadChangesAdvertisedSize(t *testing.T) {
	t.Parallel()
	ts := startServer(t, `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 0/0>
    max-message-size 10K
</source>
`)
	c := dial(t, ts.Addr("2525"))
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if _, size := c.Extension("SIZE"); size != "10240" {
		t.Fatalf("SIZE before reload = %q, want 10240", size)
	}
	ts.Apply(t, `
smtp-listener 127.0.0.1:{{.Port2525}}
<source 0/0>
    max-message-size 1M
</source>
`)
	c2 := dial(t, ts.Addr("2525"))
	if err := c2.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if _, size := c2.Extension("SIZE"); size != "1048576" {
		t.Errorf("SIZE after reload = %q, want 1048576", size)
	}
	if err := c.Noop(); err != nil {
		t.Errorf("a connection from before the reload was cut: %v", err)
	}
}
