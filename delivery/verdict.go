package delivery

import (
	"errors"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// This file holds the pure part of reply handling: what a remote reply, or
// a failure to open a session, means for the recipient, the session, the
// queue and the host. The scheduler applies the verdicts; keeping the
// judgement free of state is what lets a table test cover every case.

// verdict is what one recipient's reply in a transaction means.
type verdict struct {
	kind queue.Kind // Delivered, Deferred or Bounced
	// now: a deferred recipient is due again at once rather than by the
	// retry schedule (skip-mx: it goes to another host).
	now bool
	// closeSession: the session must not carry more mail.
	closeSession bool
	// holdQueue: defer-queue; the queue stops until the recipient's
	// retry, and the rest of the lease waits without another attempt.
	holdQueue bool
	// avoidHost: skip-mx; the queue sends to its other hosts for a while.
	avoidHost bool
}

// judgeReply decides a recipient's fate from its reply in a transaction:
// code 0 is a session that failed before the server answered. act is the
// matching <smtp-pattern-list> rule's actions, nil when none matched.
func judgeReply(code int, atRcpt bool, act *config.ReplyActions) verdict {
	switch {
	case code/100 == 2:
		return verdict{kind: queue.Delivered}
	case act != nil && act.SkipMX:
		// Keep the mail, due again at once, and send this queue to its
		// other MX hosts for a while: also for a 5xx, which says this
		// host will not take it, not that no host will.
		return verdict{kind: queue.Deferred, now: true, closeSession: true, avoidHost: true}
	case code/100 == 5:
		return verdict{kind: queue.Bounced}
	case act != nil && act.BounceRcpt && atRcpt:
		return verdict{kind: queue.Bounced}
	}
	v := verdict{kind: queue.Deferred, closeSession: code == 0 || code == 421}
	if act != nil && act.DeferQueue {
		v.holdQueue, v.closeSession = true, true
	}
	return v
}

// openVerdict is what a failure to open a session to one host means.
type openVerdict struct {
	// hostFailure counts toward marking the host down: no TCP
	// connection, a reset, no greeting in time, a 5xx greeting.
	hostFailure bool
	// refused: a 4xx greeting, typically 421 "too many connections". The
	// host is up but takes no more connections from this source: the
	// connection window to its provider shrinks.
	refused bool
	// plaintext: opportunistic STARTTLS failed; the same host is tried
	// again without TLS.
	plaintext bool
}

// judgeOpen classifies a failure to open a session. requireTLS is the
// policy's require-starttls.
func judgeOpen(err error, requireTLS bool) openVerdict {
	var oe *openError
	if !errors.As(err, &oe) {
		return openVerdict{hostFailure: true}
	}
	switch oe.stage {
	case stageConnect:
		return openVerdict{hostFailure: true}
	case stageGreeting:
		r := oe.reply()
		switch {
		case r == nil:
			return openVerdict{hostFailure: true}
		case r.code/100 == 4:
			return openVerdict{refused: true}
		}
		return openVerdict{hostFailure: true}
	case stageTLS:
		var te *tlsError
		return openVerdict{plaintext: !requireTLS && errors.As(err, &te)}
	case stageHello:
		if r := oe.reply(); r != nil && r.code == 421 {
			return openVerdict{refused: true}
		}
	}
	return openVerdict{}
}
