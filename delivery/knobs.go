package delivery

import (
	"net/netip"

	"github.com/ternmta/tern/config"
)

// The settings below come from configuration directives being added
// (MX rollup list, adaptive window, host limits); until they land they
// return the built-in defaults.

func disableMXRollup(pol *config.DomainSettings) bool { return false }

func rollupName(cfg *config.Config, host string) (string, bool) { return "", false }

func initialSMTPOut(pol *config.DomainSettings) int { return 2 }

func adaptiveSMTPOut(pol *config.DomainSettings) bool { return true }

func mxConnectionAttempts(pol *config.DomainSettings) int { return 5 }

func hostDownAfter(pol *config.DomainSettings) int { return 2 }

func mxConnectionLimit(cfg *config.Config) int { return 0 }

func sourceIPMaxSMTPOut(pol *config.DomainSettings, ip netip.Addr) (int, bool) { return 0, false }

func sourceIPMaxMsgRate(pol *config.DomainSettings, ip netip.Addr) (config.Rate, bool) {
	return config.Rate{}, false
}

func sourceIPMaxConnectRate(pol *config.DomainSettings, ip netip.Addr) (config.Rate, bool) {
	return config.Rate{}, false
}
