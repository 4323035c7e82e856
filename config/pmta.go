package config

import (
	"fmt"
	"sort"
)

// MigrationItem is one directive or block of a loaded file as a migrating
// PowerMTA operator sees it: applied as PowerMTA would, applied
// differently, Tern's own, or ignored, and what to do about it.
type MigrationItem struct {
	Pos Position
	// Name is the directive, or the block written as <name>.
	Name   string
	Status PMTAStatus
	// Note says how a PMTADiffers item differs, or what Tern does instead
	// of a PMTAIgnored one; empty otherwise.
	Note string
}

// noteUse records the use of a directive with row ri for the migration
// report. The ignored rows record themselves, with their note.
func (b *builder) noteUse(n *node, ri rowInfo) {
	if ri.pmta == PMTAIgnored {
		return
	}
	note := ri.note
	if ri.aliasOf != "" && note == "" {
		note = "the same setting as " + ri.aliasOf
	}
	b.cfg.Migration = append(b.cfg.Migration, MigrationItem{Pos: n.Pos, Name: n.Name, Status: ri.pmta, Note: note})
}

// ignoredDirective warns about a PowerMTA directive Tern does not act on.
func (b *builder) ignoredDirective(n *node, note string) {
	b.warnf(n.Pos, "%s is a PowerMTA directive Tern ignores: %s", n.Name, note)
	b.cfg.Migration = append(b.cfg.Migration, MigrationItem{Pos: n.Pos, Name: n.Name, Status: PMTAIgnored, Note: note})
}

// ignoredBlock warns about a PowerMTA block Tern skips with its contents.
func (b *builder) ignoredBlock(n *node, note string) {
	b.warnf(n.Pos, "<%s> is a PowerMTA block Tern ignores with its contents: %s", n.Name, note)
	b.cfg.Migration = append(b.cfg.Migration, MigrationItem{Pos: n.Pos, Name: "<" + n.Name + ">", Status: PMTAIgnored, Note: note})
}

// ignoredGroup is PowerMTA vocabulary Tern accepts and ignores wherever it
// stands, with one note for the group saying what Tern does instead.
type ignoredGroup struct {
	note  string
	names []string
}

// ignoredDirectives are the PowerMTA directives Tern has no row for in any
// scope. Each is accepted anywhere with a warning carrying its note, so a
// PowerMTA file loads and can be cleaned up one warning at a time.
var ignoredDirectives = indexGroups([]ignoredGroup{
	{"Tern has no pickup directory or bounce and feedback-loop processors; point those mailboxes at your own processor", []string{
		"pickup", "bounce-processor", "feedback-loop-processor"}},
	{"cold virtual MTAs (IP warm-up) are not implemented; warm an IP with a <domain> max-msg-rate per provider in its <virtual-mta>", []string{
		"cold-virtual-mta", "auto-cold-virtual-mta", "max-cold-virtual-mta-msg"}},
	{"Tern does not move mail between virtual MTAs by directive; use reroute= in an <smtp-pattern-list> reply rule", []string{
		"reroute-to-virtual-mta"}},
	{"Tern delivers over plain SMTP with opportunistic STARTTLS; DANE, MTA-STS and client certificates are not implemented", []string{
		"use-dane", "use-mta-sts", "smtp-client-tls-certificate", "allow-starttls"}},
	{"Tern runs as the user that starts it and needs no privileges beyond binding its ports", []string{
		"run-as-root", "user", "group"}},
	{"Tern has no administrative mail address; it logs events and serves them on the admin API", []string{
		"admin-address"}},
	{"relaying is decided by <source> (always-allow-relaying) and authentication, not by a domain or address list", []string{
		"relay-domain", "relay-address"}},
	{"Tern's queue is a Pebble database that syncs every accepted message before its 250; there are no per-file sync settings", []string{
		"sync-msg-create", "sync-msg-update", "spool-max-recipients", "delete-file"}},
	{"Tern reopens its log at `tern reload`; rotate it with logrotate's copytruncate or a move and a reload", []string{
		"log-rotate"}},
	{"the admin API is plain HTTP; put a TLS proxy in front of it for HTTPS", []string{
		"http-redirect-to-https", "http-mgmt-port-tls"}},
	{"DKIM signing is relaxed/relaxed, rsa-sha256 or ed25519-sha256, over a fixed list of headers, with no expiry; these settings are not read", []string{
		"dk-sign", "dkim-identity", "dkim-algorithm", "dkim-headers", "dkim-expire-after", "dkim-body-canon",
		"dkim-header-canon", "include-dkim-headers", "deliver-unsigned"}},
	{"Tern's DSNs follow RFC 3464 with the full headers returned; these settings are not read", []string{
		"dsn-return-default", "deliver-local-dsn"}},
	{"Tern sends 8-bit mail as it received it and always offers 8BITMIME; there is no conversion", []string{
		"ignore-8bitmime", "8bitmime-support"}},
	{"a timeout at the end of DATA is a temporary failure and the message is retried, as RFC 5321 asks", []string{
		"assume-delivery-upon-data-termination-timeout", "smtp-data-termination-timeout"}},
	{"Tern does not check the sender's domain in DNS at injection", []string{"mailfrom-dns-check"}},
	{"MX rollup is configured with <mx-rollup-list> and automatic MX-set names; see disable-mx-rollup", []string{"mx-rollup"}},
	{"Tern does not track DNS serials", []string{"dns-serial"}},
	{"Tern delivers over IPv4 and IPv6 as the MX hosts' addresses allow; there is no switch", []string{
		"ipv6", "use-ipv6", "prefer-ipv6"}},
	{"reply codes are classified by RFC 5321 (5xx permanent) and by <smtp-pattern-list> rules; these switches are not read", []string{
		"smtp-552-is-permanent", "smtp-553-means-invalid-mailbox", "bounce-upon-5xx-greeting", "bounce-upon-transfer-failure"}},
	{"Tern does not keep X-Job or X-Virtual-MTA, and does not read X-Envid; process-x-job and process-x-virtual-mta decide", []string{
		"retain-x-job", "retain-x-virtual-mta", "process-x-envid", "jobid-header"}},
	{"Tern does not add or remove headers beyond Received: and remove-header in <source>", []string{
		"add-message-id-header", "add-date-header", "remove-received-headers", "x-mailer"}},
	{"VERP and mail merge are not implemented; the application builds each message", []string{
		"verp-default", "allow-mailmerge", "always-allow-api-submission"}},
	{"Tern's log has no data or resolution trace; log-commands and log-level debug show the SMTP conversation's outcome", []string{
		"log-data", "log-transfer-failures", "log-resolution", "track-recipients"}},
	{"Tern does not block addresses by directive", []string{"blocked-ip-address"}},
	{"a VMTA's source addresses are given by smtp-source-host", []string{"smtp-source-ip"}},
	{"accounting files rotate at max-size or move-interval", []string{"move-interval-after", "rotate-at"}},
	{"Tern has no per-user strings in records", []string{"user-string"}},
	{"rates are given with max-msg-rate (per domain queue) and max-smtp-msg-rate (per VMTA)", []string{"max-msg-per-hour"}},
	{"bounce-upon-no-mx decides what a domain without MX does", []string{"bounce-after-no-mx"}},
	{"Tern accepts any EHLO name from a client", []string{"check-ehlo"}},
	{"Tern handles SIGHUP (reload) and SIGTERM (stop) itself", []string{"enable-signals"}},
	{"Tern sends no mail about backoffs: each one is logged and listed by `tern shaping`", []string{"backoff-notify"}},
	{"Tern does not move one domain's mail into another domain's queue; use smtp-hosts (or route)", []string{"queue-to"}},
	{"Tern does not rewrite addresses", []string{"rewrite-list"}},
})

// ignoredBlocks are the PowerMTA blocks Tern skips with everything inside
// them, each with what Tern does instead.
var ignoredBlocks = indexGroups([]ignoredGroup{
	{"Tern classifies bounces into its accounting categories itself; these patterns are not read", []string{"bounce-category-patterns"}},
	{"Tern has no bounce or feedback-loop processor and no pickup directory", []string{"feedback-loop-processor", "bounce-processor", "pickup"}},
	{"Tern does not connect through SMTP proxies", []string{"smtp-proxy-source-host"}},
	{"address lists, rewrite lists, queue lists and bounce lists are not implemented", []string{"address-list", "rewrite-list", "queue-list", "bounce-list"}},
	{"give each key with a domain-key line (at the top level, in <virtual-mta>, <virtual-mta-pool> or <domain>)", []string{"domain-key-list"}},
	{"mail is injected over SMTP only; there is no HTTP injection", []string{"http-source"}},
	{"write each <virtual-mta> in full (an include per shared part helps)", []string{"virtual-mta-template"}},
	{"mail merge is not implemented", []string{"mail-merge"}},
	{"Tern handles SIGHUP (reload) and SIGTERM (stop) itself", []string{"signals"}},
})

func indexGroups(groups []ignoredGroup) map[string]string {
	m := map[string]string{}
	for _, g := range groups {
		for _, n := range g.names {
			if _, dup := m[n]; dup {
				panic(fmt.Sprintf("config: %s is in two ignored groups", n)) // caught by any test
			}
			m[n] = g.note
		}
	}
	return m
}

// sortedNames returns the keys of m in order.
func sortedNames(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
