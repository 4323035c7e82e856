package delivery

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
)

// Delivery's timers (rate waits, idle connections, held queues, probes)
// run on the queue's Clock, so that the scheduler's tests drive them with
// queuetest.Clock instead of sleeping. Only socket deadlines use real time:
// they belong to the transport.

// sleep waits for d on clock, or until ctx is done (its error then).
func sleep(ctx context.Context, clock queue.Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	ch := make(chan struct{})
	t := clock.AfterFunc(d, func() { close(ch) })
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	}
}

// withTimeout is context.WithTimeout on clock.
func withTimeout(parent context.Context, clock queue.Clock, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	t := clock.AfterFunc(d, cancel)
	return ctx, func() {
		t.Stop()
		cancel()
	}
}

// limiter is a token bucket that follows the configured rate across
// reloads.
type limiter struct {
	mu   sync.Mutex
	rate config.Rate
	l    *rate.Limiter
}

// wait blocks until the rate allows one more event. Burst 1 spreads events
// evenly over the interval, as a remote site counting per minute expects.
// A Zero rate (max-msg-rate 0) allows no event at all: errZeroRate, at
// once. x/time/rate would let one through (its burst) and then refuse the
// reservations, which must not read as "go ahead".
func (l *limiter) wait(ctx context.Context, clock queue.Clock, r config.Rate) error {
	if r.Zero() {
		return errZeroRate
	}
	if r.Unlimited() && l.unlimited() {
		return ctx.Err()
	}
	now := clock.Now()
	l.mu.Lock()
	if l.l == nil || l.rate != r {
		if l.l != nil && !l.rate.Unlimited() && !r.Unlimited() {
			// Another finite rate (a reload, or another queue sharing
			// the bucket with its own limit): the bucket keeps its
			// tokens, so a change cannot grant a burst.
			l.l.SetLimitAt(now, rate.Limit(r.PerSecond()))
			l.rate = r
		} else {
			lim := rate.Inf
			if !r.Unlimited() {
				lim = rate.Limit(r.PerSecond())
			}
			l.l, l.rate = rate.NewLimiter(lim, 1), r
		}
	}
	res := l.l.ReserveN(now, 1)
	l.mu.Unlock()
	if !res.OK() {
		return errZeroRate // only a limit of 0 refuses a reservation of 1
	}
	if err := sleep(ctx, clock, res.DelayFrom(now)); err != nil {
		res.CancelAt(clock.Now())
		return err
	}
	return nil
}

// unlimited reports whether the limiter currently runs at no limit, so
// that the common case takes no reservation.
func (l *limiter) unlimited() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.l == nil || l.rate.Unlimited()
}

// allows reports, without waiting or taking a token, whether an event
// could happen now.
func (l *limiter) allows(clock queue.Clock, r config.Rate) bool {
	switch {
	case r.Zero():
		return false
	case r.Unlimited():
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.l == nil || l.rate != r {
		return true
	}
	return l.l.TokensAt(clock.Now()) >= 1
}
