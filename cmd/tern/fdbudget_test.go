package main

import (
	"testing"

	"github.com/ternmta/tern/config"
)

func TestPlanFDs(t *testing.T) {
	cfg := &config.Config{}
	cfg.TotalMaxSMTPIn.Value, cfg.TotalMaxSMTPOut.Value = 500, 1200
	if b := planFDs(20000, 64, cfg); b.Lowered || b.Inbound != 500 || b.Outbound != 1200 {
		t.Errorf("20,000 descriptors: %+v, want the configured caps", b)
	}
	// 3,000 descriptors cannot hold 500 in and 1,200 out (2 each) beside
	// the spool: both are lowered, in proportion, and the sum fits.
	b := planFDs(3000, 64, cfg)
	if !b.Lowered || b.Inbound >= 500 || b.Outbound >= 1200 || b.Inbound < 1 || b.Outbound < 1 {
		t.Fatalf("3,000 descriptors: %+v, want both lowered", b)
	}
	if used := b.Spool + b.Reserved + b.Admin + b.Inbound + fdPerOutbound*b.Outbound; used > 3000 {
		t.Errorf("3,000 descriptors: the budget uses %d", used)
	}
	if b := planFDs(100, 64, cfg); b.Inbound != 1 || b.Outbound != 1 {
		t.Errorf("100 descriptors: %+v, want one each", b)
	}
}
