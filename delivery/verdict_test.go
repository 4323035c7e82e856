package delivery

import (
	"errors"
	"testing"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

func TestJudgeReply(t *testing.T) {
	skip := &config.ReplyActions{SkipMX: true}
	bounceRcpt := &config.ReplyActions{BounceRcpt: true}
	deferQueue := &config.ReplyActions{DeferQueue: true}
	for _, c := range []struct {
		name   string
		code   int
		atRcpt bool
		act    *config.ReplyActions
		want   verdict
	}{
		{"250 delivers", 250, false, nil, verdict{kind: queue.Delivered}},
		{"251 delivers", 251, true, nil, verdict{kind: queue.Delivered}},
		{"550 bounces", 550, true, nil, verdict{kind: queue.Bounced}},
		{"554 after data bounces", 554, false, nil, verdict{kind: queue.Bounced}},
		{"451 defers, keeps the session", 451, true, nil, verdict{kind: queue.Deferred}},
		{"421 defers and ends the session", 421, false, nil, verdict{kind: queue.Deferred, closeSession: true}},
		{"a broken session defers", 0, false, nil, verdict{kind: queue.Deferred, closeSession: true}},
		{"bounce-rcpt at RCPT bounces a 4xx", 452, true, bounceRcpt, verdict{kind: queue.Bounced}},
		{"bounce-rcpt after DATA does not", 452, false, bounceRcpt, verdict{kind: queue.Deferred}},
		{"skip-mx keeps the mail for another host", 451, true, skip, verdict{kind: queue.Deferred, now: true, closeSession: true, avoidHost: true}},
		{"skip-mx on a 5xx tries another host, no bounce", 550, true, skip, verdict{kind: queue.Deferred, now: true, closeSession: true, avoidHost: true}},
		{"skip-mx never overrides a delivery", 250, true, skip, verdict{kind: queue.Delivered}},
		{"defer-queue holds the queue", 451, true, deferQueue, verdict{kind: queue.Deferred, closeSession: true, holdQueue: true}},
		{"defer-queue does not stop a bounce", 550, true, deferQueue, verdict{kind: queue.Bounced}},
	} {
		if got := judgeReply(c.code, c.atRcpt, c.act); got != c.want {
			t.Errorf("%s: judgeReply(%d, %v) = %+v, want %+v", c.name, c.code, c.atRcpt, got, c.want)
		}
	}
}

func TestJudgeOpen(t *testing.T) {
	timeout := errors.New("i/o timeout")
	for _, c := range []struct {
		name       string
		err        error
		requireTLS bool
		want       openVerdict
	}{
		{"refused TCP is a host failure", &openError{stage: stageConnect, err: errors.New("connection refused")}, false, openVerdict{hostFailure: true}},
		{"no banner is a host failure", &openError{stage: stageGreeting, err: timeout}, false, openVerdict{hostFailure: true}},
		{"421 banner is a refusal, not a failure", &openError{stage: stageGreeting, err: &reply{421, "4.7.0 Too many connections"}}, false, openVerdict{refused: true}},
		{"450 banner is a refusal", &openError{stage: stageGreeting, err: &reply{450, "busy"}}, false, openVerdict{refused: true}},
		{"554 banner is a host failure", &openError{stage: stageGreeting, err: &reply{554, "no service"}}, false, openVerdict{hostFailure: true}},
		{"421 to EHLO is a refusal", &openError{stage: stageHello, err: &reply{421, "too busy"}}, false, openVerdict{refused: true}},
		{"550 to EHLO says nothing of the host", &openError{stage: stageHello, err: &reply{550, "no"}}, false, openVerdict{}},
		{"opportunistic TLS falls back to plaintext", &openError{stage: stageTLS, err: &tlsError{errors.New("handshake")}}, false, openVerdict{plaintext: true}},
		{"required TLS does not", &openError{stage: stageTLS, err: &tlsError{errors.New("handshake")}}, true, openVerdict{}},
		{"AUTH failure says nothing of the host", &openError{stage: stageAuth, err: &reply{535, "bad"}}, false, openVerdict{}},
		{"an unknown error counts as a host failure", errors.New("boom"), false, openVerdict{hostFailure: true}},
	} {
		if got := judgeOpen(c.err, c.requireTLS); got != c.want {
			t.Errorf("%s: judgeOpen = %+v, want %+v", c.name, got, c.want)
		}
	}
}
