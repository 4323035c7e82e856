package delivery

import (
	"net/netip"

	"github.com/ternmta/tern/config"
)

// Small accessors for the provider settings, so that their defaults and
// meanings ("0 is no limit") are read in one place.

func disableMXRollup(pol *config.DomainSettings) bool { return pol.DisableMXRollup.Value }

func rollupName(cfg *config.Config, host string) (string, bool) { return cfg.RollupName(host) }

func initialSMTPOut(pol *config.DomainSettings) int { return max(pol.InitialSMTPOut.Value, 1) }

func adaptiveSMTPOut(pol *config.DomainSettings) bool { return pol.AdaptiveSMTPOut.Value }

func mxConnectionAttempts(pol *config.DomainSettings) int {
	return max(pol.MXConnectionAttempts.Value, 1)
}

func hostDownAfter(pol *config.DomainSettings) int { return max(pol.HostDownAfter.Value, 1) }

func mxConnectionLimit(cfg *config.Config) int { return cfg.MXConnectionLimit.Value }

func sourceIPMaxSMTPOut(pol *config.DomainSettings, ip netip.Addr) (int, bool) {
	return pol.SourceIPMaxSMTPOut.Value.For(ip)
}

func sourceIPMaxMsgRate(pol *config.DomainSettings, ip netip.Addr) (config.Rate, bool) {
	return pol.SourceIPMaxMsgRate.Value.For(ip)
}

func sourceIPMaxConnectRate(pol *config.DomainSettings, ip netip.Addr) (config.Rate, bool) {
	return pol.SourceIPMaxConnectRate.Value.For(ip)
}
