package listener

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"golang.org/x/time/rate"

	"github.com/ternmta/tern/config"
)

// cramMD5 is the CRAM-MD5 mechanism (RFC 2195). go-sasl has no server for
// it, nor for LOGIN, so both are written here; they are a few lines each.
const cramMD5 = "CRAM-MD5"

// loginServer is the LOGIN mechanism: the client sends the user name and the
// password as two base64 responses. Some clients send the user name as the
// initial response.
type loginServer struct {
	check    func(username, password string) error
	username *string
	step     int
}

func newLoginServer(check func(username, password string) error) sasl.Server {
	return &loginServer{check: check}
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch {
	case l.step == 0 && response == nil:
		l.step = 1
		return []byte("Username:"), false, nil
	case l.step <= 1:
		u := string(response)
		l.username, l.step = &u, 2
		return []byte("Password:"), false, nil
	case l.step == 2:
		l.step = 3
		return nil, true, l.check(*l.username, string(response))
	}
	return nil, false, errors.New("unexpected response")
}

// cramServer is CRAM-MD5: a challenge with a nonce, answered with the user
// name and an HMAC-MD5 of the challenge keyed with the password. It works
// only for users with plaintext passwords.
type cramServer struct {
	challenge string
	lookup    func(username string, verify func(secret string) bool) error
	sent      bool
}

func newCRAMMD5Server(host string, now func() time.Time, lookup func(string, func(string) bool) error) sasl.Server {
	var nonce [8]byte
	rand.Read(nonce[:])
	return &cramServer{
		challenge: fmt.Sprintf("<%s.%d@%s>", hex.EncodeToString(nonce[:]), now().Unix(), host),
		lookup:    lookup,
	}
}

func (c *cramServer) Next(response []byte) ([]byte, bool, error) {
	if !c.sent {
		c.sent = true
		return []byte(c.challenge), false, nil
	}
	user, digest, ok := strings.Cut(string(response), " ")
	if !ok {
		return nil, true, errAuthFailed
	}
	return nil, true, c.lookup(user, func(secret string) bool {
		mac := hmac.New(md5.New, []byte(secret))
		mac.Write([]byte(c.challenge))
		want := hex.EncodeToString(mac.Sum(nil))
		return hmac.Equal([]byte(want), []byte(strings.ToLower(digest)))
	})
}

// failureLimiter counts failed AUTH attempts per client IP against the
// source's smtp-max-auth-failure-rate: a token bucket of that many failures
// per interval. A client with no failure left is refused and disconnected.
type failureLimiter struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[netip.Addr]*rate.Limiter
}

// maxTracked bounds the memory a password-guessing botnet can make the
// limiter use; past it, the oldest state is dropped wholesale.
const maxTracked = 100000

func newFailureLimiter(now func() time.Time) *failureLimiter {
	return &failureLimiter{now: now, m: map[netip.Addr]*rate.Limiter{}}
}

// fail records a failure and reports whether the client is now over its
// rate.
func (f *failureLimiter) fail(ip netip.Addr, r config.Rate) bool {
	if r.Unlimited() {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.m[ip]
	if l == nil {
		if len(f.m) >= maxTracked {
			clear(f.m)
		}
		l = rate.NewLimiter(rate.Limit(r.PerSecond()), r.Count)
		f.m[ip] = l
	}
	return !l.AllowN(f.now(), 1)
}

// blocked reports whether the client has no failure left.
func (f *failureLimiter) blocked(ip netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.m[ip]
	return l != nil && l.TokensAt(f.now()) < 1
}
