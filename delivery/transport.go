package delivery

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// transport opens SMTP sessions: the seam between the scheduler, which
// decides what to send where and when, and the SMTP client, which speaks
// the protocol. The daemon's transport dials TCP (smtpTransport); the
// scheduler's tests plug in a scripted one and a fake clock, so that
// connection windows, host probes and reply rules are tested without
// sockets and without waiting.
type transport interface {
	// open connects to t from o.source and runs the prelude (greeting,
	// EHLO, STARTTLS, AUTH). A failure is an *openError saying at which
	// stage it happened.
	open(ctx context.Context, t target, o connOptions) (session, error)
}

// session is one open SMTP session, ready for transactions.
type session interface {
	// sendTxn runs one transaction; see outConn.sendTxn for next.
	sendTxn(t *txn, next func() *txn) []result
	// state reports what the scheduler needs to know of the session.
	state() sessionState
	// markBroken stops the session from carrying more mail: close then
	// drops it without QUIT.
	markBroken()
	// close ends the session, politely when it still works.
	close()
}

// sessionState is a session as the scheduler sees it.
type sessionState struct {
	target target
	source netip.Addr
	tls    uint16 // negotiated TLS version; 0 in plaintext
	txns   int    // transactions sent
	errs   int    // recipient errors
	// broken: the session cannot carry another transaction.
	broken bool
	// stale: a reused session turned out closed by the server before the
	// last transaction reached it (nothing of it was delivered).
	stale bool
	// ahead is the transaction whose commands went out behind the last
	// message, waiting for its sendTxn.
	ahead *txn
	// txnDur is how long the last transaction took.
	txnDur time.Duration
	// idleBefore is how long the session was idle before the last
	// transaction.
	idleBefore time.Duration
}

// smtpTransport is the transport of the daemon: TCP from the VMTA's source
// address through dial, then Tern's SMTP client.
type smtpTransport struct {
	dial Dialer
}

func (st smtpTransport) open(ctx context.Context, t target, o connOptions) (session, error) {
	o.dial = st.dial
	oc, err := open(ctx, t, o)
	if err != nil {
		return nil, err
	}
	return oc, nil
}

func (oc *outConn) state() sessionState {
	return sessionState{target: oc.target, source: oc.source, tls: oc.tls, txns: oc.txns, errs: oc.errs,
		broken: oc.broken, stale: oc.stale, ahead: oc.ahead, txnDur: oc.txnDur, idleBefore: oc.idleBefore}
}

func (oc *outConn) markBroken() { oc.broken = true }

// openStage is the step of opening a session at which it failed.
type openStage int

const (
	stageConnect  openStage = iota // TCP
	stageGreeting                  // waiting for the banner
	stageHello                     // EHLO/HELO
	stageTLS                       // STARTTLS and the handshake
	stageAuth                      // AUTH to a smart host
)

// openError is a failure to open a session: where it happened, and the
// server's reply when it gave one (err is then a *reply).
type openError struct {
	stage openStage
	// what prefixes the message: "greeting from mx.example", "EHLO".
	what string
	err  error
}

func (e *openError) Error() string {
	if e.what == "" {
		return e.err.Error()
	}
	return e.what + ": " + e.err.Error()
}

func (e *openError) Unwrap() error { return e.err }

// reply returns the server's reply behind the failure, nil when there was
// none (an I/O error or a timeout).
func (e *openError) reply() *reply {
	var r *reply
	if errors.As(e.err, &r) {
		return r
	}
	return nil
}
