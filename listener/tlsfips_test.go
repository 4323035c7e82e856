package listener

import (
	"crypto/tls"
	"strings"
	"testing"
)

// In Go's FIPS 140 mode crypto/tls has no TLS 1.0 or 1.1: a configuration
// allowing them is warned about; otherwise, and outside that mode, nothing
// is said.
func TestUnavailableTLS(t *testing.T) {
	for _, c := range []struct {
		lo   uint16
		fips bool
		want string
	}{
		{tls.VersionTLS10, false, ""},
		{tls.VersionTLS11, false, ""},
		{tls.VersionTLS12, true, ""},
		{tls.VersionTLS13, true, ""},
		{tls.VersionTLS10, true, "TLS 1.0 and 1.1 are allowed"},
		{tls.VersionTLS11, true, "TLS 1.1 is allowed"},
	} {
		got := unavailableTLS(c.lo, c.fips)
		if (c.want == "") != (got == "") || !strings.HasPrefix(got, c.want) {
			t.Errorf("unavailableTLS(%s, fips %v) = %q, want %q…", tls.VersionName(c.lo), c.fips, got, c.want)
		}
	}
}
