package vmta

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"

	"github.com/ternmta/tern/config"
	"golang.org/x/crypto/bcrypt"
)

// User is an <smtp-user>: who may authenticate, and which named source the
// session switches to when they do.
type User struct {
	// Name is the user name exactly as written in the file.
	Name string
	// Source is the named source applied after AUTH: the user's source
	// directive, else {auth}.
	Source string
	// Config is the <smtp-user> block.
	Config *config.User

	hash      []byte            // bcrypt, from password-hash
	plaintext string            // from password, when there is no hash
	digest    [sha256.Size]byte // SHA-256 of plaintext
}

// Plaintext returns the user's password when the file gives it in plaintext
// (password, not password-hash). Challenge-response mechanisms such as
// CRAM-MD5 need it; PLAIN and LOGIN should go through Authenticate.
func (u *User) Plaintext() (string, bool) {
	return u.plaintext, u.hash == nil
}

// User finds an smtp-user by name. Names are matched exactly (case
// included): the name is a credential, and config already refuses two users
// whose names differ only in case, so an exact match is never ambiguous.
func (r *Registry) User(name string) (*User, bool) {
	u, ok := r.users[name]
	return u, ok
}

// Authenticate checks a user name and password as given to AUTH PLAIN or
// LOGIN, and returns the user on success. User names match exactly (see
// User).
//
// The time a failure takes must not tell a client which user names exist.
// When any user has a password-hash, every attempt costs one bcrypt
// comparison: an unknown user, or one with a plaintext password, is
// compared against a dummy hash made at Build with the highest cost among
// the configured hashes. Plaintext passwords are compared through their
// SHA-256 digests in constant time, so not even their length leaks; when
// all users have plaintext passwords, an unknown user costs the same digest
// comparison and no bcrypt is needed to hide anything.
func (r *Registry) Authenticate(username, password string) (*User, bool) {
	got := sha256.Sum256([]byte(password))
	u, ok := r.users[username]
	if !ok {
		if r.dummyHash != nil {
			_ = bcrypt.CompareHashAndPassword(r.dummyHash, []byte(password))
		} else {
			var none [sha256.Size]byte
			subtle.ConstantTimeCompare(none[:], got[:])
		}
		return nil, false
	}
	if u.hash != nil {
		if bcrypt.CompareHashAndPassword(u.hash, []byte(password)) != nil {
			return nil, false
		}
		return u, true
	}
	if r.dummyHash != nil {
		_ = bcrypt.CompareHashAndPassword(r.dummyHash, []byte(password))
	}
	if subtle.ConstantTimeCompare(u.digest[:], got[:]) != 1 {
		return nil, false
	}
	return u, true
}

// buildUsers reads the <smtp-user> blocks and makes the dummy hash.
func (r *Registry) buildUsers(fail func(config.Position, string, ...any)) error {
	cost := 0
	for _, cu := range r.cfg.Users {
		if _, dup := r.users[cu.Name]; dup {
			fail(cu.Pos, "smtp-user %s is defined twice", cu.Name)
			continue
		}
		u := &User{Name: cu.Name, Source: cu.Source.Value, Config: cu}
		if u.Source == "" {
			u.Source = config.AuthSource
		}
		switch {
		case cu.PasswordHash.Set:
			c, err := bcrypt.Cost([]byte(cu.PasswordHash.Value))
			if err != nil {
				fail(cu.PasswordHash.Pos, "smtp-user %s: password-hash: %v", cu.Name, err)
				continue
			}
			cost = max(cost, c)
			u.hash = []byte(cu.PasswordHash.Value)
		case cu.Password.Set:
			u.plaintext = cu.Password.Value
			u.digest = sha256.Sum256([]byte(u.plaintext))
		default:
			fail(cu.Pos, "smtp-user %s has no password", cu.Name)
			continue
		}
		r.users[u.Name] = u
	}
	if cost == 0 {
		// No hashes (or no users): there is no bcrypt time to match.
		return nil
	}
	// The dummy's password is random so that no password can match it.
	h, err := bcrypt.GenerateFromPassword([]byte(rand.Text()), cost)
	if err != nil {
		return fmt.Errorf("vmta: making the dummy password hash: %w", err)
	}
	r.dummyHash = h
	return nil
}
