package vmta_test

import (
	"fmt"
	"testing"

	"github.com/ternmta/tern/config"
	"golang.org/x/crypto/bcrypt"
)

// exampleHash is the demo user's password-hash in examples/tern.conf, made
// by `tern hash-password` for the password "tern-demo".
const exampleHash = "$2a$10$EB6So3JwPcYAekUuWeU2JuNR.OCxZJfynZ9z6A/HMh0P7ofu.lF3W"

func TestAuthenticate(t *testing.T) {
	// A cheap hash keeps the test fast; the cost does not change the logic.
	cheap, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	// What tern hash-password does, at the lowest cost for speed.
	fresh, err := bcrypt.GenerateFromPassword([]byte("carol pw with spaces"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	r := build(t, fmt.Sprintf(`smtp-listener 127.0.0.1:2525
<source bulk>
    always-allow-relaying yes
</source>
<smtp-user alice>
    password-hash %s
</smtp-user>
<smtp-user bob@example.com>
    password bob-secret
    source bulk
</smtp-user>
<smtp-user carol>
    password-hash %s
</smtp-user>
`, cheap, fresh))

	tests := []struct {
		user, password string
		ok             bool
		source         string
	}{
		{"alice", "alice-pw", true, config.AuthSource},
		{"alice", "alice-pw ", false, ""},
		{"alice", "", false, ""},
		{"Alice", "alice-pw", false, ""}, // names match exactly
		{"bob@example.com", "bob-secret", true, "bulk"},
		{"bob@example.com", "bob-secre", false, ""},
		{"bob@example.com", "bob-secret2", false, ""},
		{"bob@example.com", "BOB-SECRET", false, ""},
		{"carol", "carol pw with spaces", true, config.AuthSource},
		{"carol", "carol", false, ""},
		{"mallory", "alice-pw", false, ""},
		{"", "", false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.user+"/"+tc.password, func(t *testing.T) {
			u, ok := r.Authenticate(tc.user, tc.password)
			if ok != tc.ok {
				t.Fatalf("Authenticate(%q, %q) ok = %v, want %v", tc.user, tc.password, ok, tc.ok)
			}
			if !ok {
				if u != nil {
					t.Errorf("a failed Authenticate returned user %s", u.Name)
				}
				return
			}
			if u.Name != tc.user || u.Source != tc.source {
				t.Errorf("user %q with source %q, want %q with %q", u.Name, u.Source, tc.user, tc.source)
			}
		})
	}

	if u, ok := r.User("bob@example.com"); !ok {
		t.Error("User(bob@example.com) not found")
	} else if pw, ok := u.Plaintext(); !ok || pw != "bob-secret" {
		t.Errorf("bob's Plaintext() = %q, %v", pw, ok)
	}
	if u, ok := r.User("alice"); !ok {
		t.Error("User(alice) not found")
	} else if pw, ok := u.Plaintext(); ok || pw != "" {
		t.Errorf("alice's Plaintext() = %q, %v; a hashed password has no plaintext", pw, ok)
	}
	if _, ok := r.User("ALICE"); ok {
		t.Error("User(ALICE) found; names match exactly")
	}
}

// TestAuthenticateNoUsers checks that without any smtp-user every attempt
// fails (and Build needs no dummy hash).
func TestAuthenticateNoUsers(t *testing.T) {
	r := build(t, "smtp-listener 127.0.0.1:2525\n")
	if u, ok := r.Authenticate("root", ""); ok || u != nil {
		t.Errorf("Authenticate with no users = %v, %v", u, ok)
	}
}

// TestAuthenticateHashPassword checks a hash as `tern hash-password` makes
// it (at its default cost, 10), here the one examples/tern.conf ships. At
// that cost each comparison takes long under -race, hence one attempt.
func TestAuthenticateHashPassword(t *testing.T) {
	if c, err := bcrypt.Cost([]byte(exampleHash)); err != nil || c != bcrypt.DefaultCost {
		t.Fatalf("example hash cost %d, %v; want the default cost %d", c, err, bcrypt.DefaultCost)
	}
	r := build(t, "smtp-listener 127.0.0.1:2525\n<smtp-user demo>\npassword-hash "+exampleHash+"\n</smtp-user>\n")
	if u, ok := r.Authenticate("demo", "tern-demo"); !ok || u.Name != "demo" {
		t.Errorf("Authenticate(demo, tern-demo) = %v, %v", u, ok)
	}
}

// TestAuthenticatePlaintextOnly checks a file whose users all have
// plaintext passwords (no bcrypt is involved then).
func TestAuthenticatePlaintextOnly(t *testing.T) {
	r := build(t, "smtp-listener 127.0.0.1:2525\n<smtp-user p>\npassword s3cret\n</smtp-user>\n")
	for _, tc := range []struct {
		user, pw string
		ok       bool
	}{{"p", "s3cret", true}, {"p", "s3cre", false}, {"q", "s3cret", false}} {
		if _, ok := r.Authenticate(tc.user, tc.pw); ok != tc.ok {
			t.Errorf("Authenticate(%q, %q) = %v, want %v", tc.user, tc.pw, ok, tc.ok)
		}
	}
}
