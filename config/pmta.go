package config

import (
	"fmt"
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
	// Injection and the SMTP listeners.
	{"Tern has no pickup directory; applications inject over SMTP", []string{
		"pickup", "pickup-remove-dot", "pickup-retry-interval"}},
	{"listeners are smtp-listener lines (or <smtp-listener> blocks)", []string{"smtp-ip", "smtp-port"}},
	{"a client over total-max-smtp-in gets 421 at once (smtp-in-reserved keeps room for trusted ones); connections do not wait for a slot", []string{
		"smtp-await-slot", "await-slot", "dummy-smtp-await-slot"}},
	{"Tern has no dummy (accept-and-discard) listener; for load tests use smtp-sink or a <domain> whose smtp-hosts is a local sink", []string{
		"dummy-smtp-ip", "dummy-smtp-port", "dummy-smtp-latency", "dummy-smtp-has-chunking", "dummy-smtp-has-pipelining",
		"dummy-smtp-has-verp", "dummy-smtp-update-stats"}},
	{"inbound sessions get Tern's fixed limits: 5 minutes per command and per data chunk (docs/operations.md, Limits and abuse)", []string{
		"smtp-command-timeout", "smtp-data-timeout"}},
	{"Tern offers AUTH (after STARTTLS unless allow-unencrypted-plain-auth), SMTPUTF8 and 8BITMIME to every client, and not CHUNKING; these switches are not read", []string{
		"allow-auth", "allow-chunking", "allow-smtputf8", "broken-auth-clients", "require-starttls-before-auth"}},
	{"Tern refuses a recipient it cannot take at RCPT and answers 4xx for temporary problems; these switches are not read", []string{
		"accept-invalid-recipients", "disconnect-on-transient-error", "too-many-rcpts-fails-message", "relay-debug"}},
	{"relaying is decided by <source> (always-allow-relaying) and authentication, not by a domain or address list", []string{
		"relay-domain", "relay-address"}},
	{"Tern takes addresses as written and does not qualify bare local parts", []string{"domain-suffix", "auto-qualify-domain"}},
	{"Tern does not check SPF, reverse DNS or DKIM on reception: it takes mail from your own applications; filter in front of Tern for mail from elsewhere", []string{
		"check-dkim-inbound", "check-iprev-inbound", "check-spf-inbound", "check-spf-inbound-best-guess",
		"check-spf-inbound-max-void-lookups", "reject-iprev-check-fail", "reject-iprev-check-permerror",
		"reject-iprev-check-temperror", "reject-spf-check-fail", "reject-spf-check-permerror", "reject-spf-check-temperror",
		"trace-dkim-check", "trace-iprev-check", "trace-spf-check", "check-spf-outbound"}},
	{"Tern does not count Received: headers", []string{"max-message-hops"}},
	{"Tern has no suppression lists; suppress recipients in the application before injecting", []string{
		"suppression-lists"}},
	{"inbound connection caps are per client address (max-smtp-in-per-ip) and in total (total-max-smtp-in, smtp-in-reserved); there are no source groups", []string{
		"source-group"}},
	{"Tern does not copy mail to other addresses; archive from the application or a milter in front", []string{
		"bcc", "bcc-upon-delivery"}},
	{"Tern has no aliases; it relays to the recipients given", []string{"alias"}},

	// Headers Tern adds or keeps.
	{"Tern does not add or remove headers besides its Received: line and remove-header in <source>; X-Job and X-Virtual-MTA are removed when processed", []string{
		"add-message-id-header", "add-date-header", "date-header-time", "remove-received-headers", "add-x-virtual-mta-header",
		"include-headers-from", "retain-x-job", "retain-x-virtual-mta", "retain-x-dkim-key", "retain-x-dkim-options",
		"retain-x-schedule"}},
	{"Tern does not write Message-IDs: the application's are kept as they are", []string{"host-id"}},
	{"Tern reads only X-Virtual-MTA and X-Job from a message (process-x-virtual-mta, process-x-job); the other X- headers are left as they are", []string{
		"process-x-envid", "process-x-dkim-key", "process-x-dkim-options", "process-x-schedule", "jobid-header", "jobid-prefix"}},
	{"an X-Virtual-MTA naming no VMTA or pool is refused at DATA (`550 5.7.1`), and an empty one too; there is no fallback", []string{
		"invalid-virtual-mta-fallback", "reject-invalid-virtual-mta", "allow-empty-x-virtual-mta"}},

	// Delivery.
	{"cold virtual MTAs (IP warm-up) are not implemented; warm an IP with a <domain> max-msg-rate per provider in its <virtual-mta>", []string{
		"cold-virtual-mta", "auto-cold-virtual-mta", "max-cold-virtual-mta-msg"}},
	{"Tern does not move mail between virtual MTAs by directive; use reroute= in an <smtp-pattern-list> reply rule", []string{
		"reroute-to-virtual-mta", "backoff-reroute-to-virtual-mta"}},
	{"Tern delivers with opportunistic STARTTLS (use-starttls, require-starttls, tls-verify-certificate) at TLS 1.2 or later, with Go's cipher suites and the system's roots; DANE and these TLS settings are not read", []string{
		"use-dane", "allow-starttls", "smtp-tls-allow-sslv3", "smtp-tls-allow-tlsv1", "smtp-tls-allow-tlsv1.1",
		"smtp-tls-allow-tlsv1.2", "smtp-tls-ca-file", "smtp-tls-ciphers"}},
	{"inbound TLS uses Go's cipher suites and asks no client certificate; SSLv3 is never offered; choose the versions with smtp-server-tls-allow-tlsv1 to -tlsv1.3", []string{
		"smtp-server-tls-allow-sslv3", "smtp-server-tls-ca-file", "smtp-server-tls-ciphers", "tls-allow-sslv3", "tls-ca-file", "tls-ciphers",
		"tls-allow-tlsv1", "tls-allow-tlsv1.1", "tls-allow-tlsv1.2", "tls-certificate"}},
	{"Tern uses PIPELINING and DSN when the receiver offers them, and does not send CHUNKING; these switches are not read", []string{
		"ignore-chunking", "ignore-dsn", "ignore-pipelining", "ignore-8bitmime", "pix-bug-workaround", "bounce-upon-pix-transfer-failure"}},
	{"a connection is never cut in the middle of a transfer: stopping Tern lets transfers finish; queue-priority orders queues but does not interrupt connections", []string{
		"allow-cancel-during-transfer", "allow-priority-interruption", "allow-priority-interruption-during-transfer", "delivery-priority"}},
	{"a timeout at the end of DATA is a temporary failure and the message is retried, as RFC 5321 asks", []string{
		"assume-delivery-upon-data-termination-timeout", "smtp-data-termination-timeout"}},
	{"reply codes are classified by RFC 5321 (5xx permanent, 4xx temporary) and by <smtp-pattern-list> rules; these switches are not read", []string{
		"smtp-553-means-invalid-mailbox", "bounce-upon-5xx-greeting", "bounce-upon-transfer-failure", "replace-smtp-421-service-response"}},
	{"Tern limits recipients (max-msg-rate, source-ip-max-msg-rate, max-smtp-msg-rate) and connections, not bytes", []string{
		"max-data-volume-rate", "backoff-max-data-volume-rate", "max-smtp-data-volume-rate", "source-ip-max-data-volume-rate"}},
	{"rates are given with max-msg-rate in <domain> (and backoff-max-msg-rate), max-connect-rate and max-smtp-msg-rate in <virtual-mta>", []string{
		"max-msg-per-hour", "backoff-max-msg-per-hour", "backoff-max-connect-rate"}},
	{"per source IP limits are written source-ip-max-smtp-out", []string{"max-smtp-out-per-source-ip"}},
	{"the adaptive window (initial-smtp-out, adaptive-smtp-out) decides how fast a queue opens connections", []string{"smtp-out-rampup-interval"}},
	{"Tern retries each queue on its retry-after schedule; new mail for a queue waiting to retry waits with it, and a DNS failure is retried on the same schedule", []string{
		"retry-upon-new-mail", "retry-recipients-after", "retry-after-dns-error"}},
	{"Tern connects to receivers directly; HAProxy-protocol outbound proxies are not implemented", []string{
		"use-proxy", "smtp-proxy-source-host", "server", "client"}},
	{"Tern caps connections per source IP and MX address with mx-connection-limit; there is no cap per destination CIDR", []string{"ip-connection-limit"}},
	{"Tern delivers by SMTP only; there is no pipe, file or HTTP delivery", []string{
		"command", "file-destination", "file-format", "macro-variables-preserve-case", "http-delivery-url", "http-delivery-extra-headers"}},
	{"a type discard queue records its recipients as delivered (d records) and writes the accounting its <acct-file> asks for", []string{
		"discard-as-bounce", "disable-acct-records"}},
	{"Tern has no SparkPost relay queue", []string{"add-x-msys-api-header", "sparkpost-ip-pool", "sparkpost-sandbox"}},
	{"a disabled source IP comes back after the for= (or reenable-after=) of the reply rule that disabled it; Tern sends no mail about it, and backoffs are not triggered by it", []string{
		"reenable-source-ip-after", "disabled-source-ip-notify", "backoff-upon-all-sources-disabled", "log-disabled-ips"}},
	{"Tern sends no mail about backoffs: each one is logged (`queue mode changed`) and listed by `tern shaping`; alert on the log or the admin API", []string{"backoff-notify"}},
	{"Tern does not move one domain's mail into another domain's queue; send it to that domain's hosts with smtp-hosts (or route)", []string{"queue-to"}},
	{"Tern has no lists of recent events per queue; the accounting files and `tern queues` show what happened", []string{
		"track-recipient-events", "max-events-recorded", "log-messages"}},
	{"the accounting file records every outcome; the log has one line per event, with per-message lines at log-level debug", []string{
		"log-data", "log-transfer-failures", "log-resolution", "log-tls"}},

	// DKIM and DSNs.
	{"DKIM signatures are relaxed/relaxed, rsa-sha256 (ed25519-sha256 for Ed25519 keys), over a fixed list of headers, with no l=, t= or expiry, and one signature per message; these settings are not read", []string{
		"dk-sign", "dkim-identity", "dkim-algorithm", "dkim-headers", "dkim-expire-after", "dkim-body-canon",
		"dkim-headers-canon", "dkim-add-body-limit", "dkim-add-timestamp", "dkim-disallow-adding-headers",
		"dkim-identity-fallback", "dkim-query-method", "second-dkim-sign", "second-dkim-add-body-limit",
		"second-dkim-add-timestamp", "second-dkim-algorithm", "second-dkim-body-canon", "second-dkim-disallow-adding-headers",
		"second-dkim-expire-after", "second-dkim-headers", "second-dkim-headers-canon", "second-dkim-identity",
		"second-dkim-identity-fallback", "second-dkim-query-method"}},
	{"Tern's DSNs are RFC 3464 reports From postmaster (the postmaster directive), with the original headers; one delay DSN per recipient at notify-of-delay", []string{
		"dsn-return-default", "deliver-local-dsn", "dsn-format", "custom-dsn-from-header", "notify-of-delay-every", "suppress-local-dsn"}},

	// Mail merge and VERP.
	{"VERP and mail merge are not implemented; the application builds each message", []string{
		"verp-default", "allow-mailmerge", "always-allow-api-submission", "mailmerge-expands-undefined-variables"}},

	// The queue, the log, the process.
	{"Tern's queue is a Pebble database that syncs every accepted message before its 250; there are no per-file sync settings and no corrupted files to delete", []string{
		"sync-msg-create", "sync-msg-update", "spool-max-recipients", "spool-delete-corrupted"}},
	{"the spool's free space limit is min-free-space in <spool>", []string{"spool-min-free-space"}},
	{"Tern runs as the user that starts it and needs no privileges beyond binding its ports; its threads are Go's", []string{
		"run-as-root", "thread-max-priority", "thread-min-priority", "thread-reuse"}},
	{"Tern's log is one file, reopened by `tern reload`: rotate it with logrotate (a move, then `tern reload`); it is created 0600", []string{
		"log-rotate", "log-auto-rotation", "log-file-world-readable"}},
	{"the admin API is plain HTTP on http-mgmt-port with http-access and http-api-key; put a TLS proxy in front of it for HTTPS. Its JSON views have no paging or sort settings", []string{
		"http-redirect-to-https", "http-csrf-protection", "http-default-max-items", "http-default-sort-order",
		"http-log-data", "http-log-requests", "http-log-tls", "http-strict-transport-security-max-age",
		"http-tls-allow-sslv3", "http-tls-allow-tlsv1", "http-tls-allow-tlsv1.1", "http-tls-allow-tlsv1.2",
		"http-tls-ca-file", "http-tls-ciphers", "log-requests"}},
	{"who may use the admin API is given by http-access", []string{"http-mgmt-source", "no-http-mgmt-source"}},
	{"Tern has no HTTP injection API; applications inject over SMTP", []string{"api-key"}},
	{"Tern has no PowerMTA Management Console", []string{"pmc-acct-min-free-space"}},
	{"a VMTA's source addresses are given by smtp-source-host", []string{"smtp-source-ip"}},
	{"Tern has no per-user strings in records", []string{"user-string"}},
	{"SparkPost Signals analytics are not implemented; the accounting files carry the delivery data", []string{
		"enable-signals", "sender-or-from", "privacy-policy"}},
	{"Tern does not rewrite addresses", []string{"rewrite-list"}},
	{"bounce and feedback-loop reports are not processed: Tern has no mailbox of its own", []string{
		"body-pattern-file", "log-match-info"}},
})

// ignoredBlocks are the PowerMTA blocks Tern skips with everything inside
// them, each with what Tern does instead.
var ignoredBlocks = indexGroups([]ignoredGroup{
	{"Tern classifies bounces into its accounting categories itself; these patterns are not read", []string{"bounce-category-patterns"}},
	{"Tern has no bounce or feedback-loop processor: remote bounces and complaints are not read", []string{
		"feedback-loop-processor", "bounce-processor", "email-patterns"}},
	{"address lists and suppression lists are not implemented; suppress recipients in the application", []string{"address-list", "suppression-list"}},
	{"Tern does not rewrite addresses", []string{"rewrite-list"}},
	{"give each key with a domain-key line (at the top level, in <virtual-mta>, <virtual-mta-pool> or <domain>)", []string{"domain-key-list"}},
	{"Tern has no aliases; it relays to the recipients given", []string{"aliases"}},
	{"Tern resolves names as they are needed and caches them for their TTL; there is no precaching", []string{"dns"}},
	{"Tern connects to receivers directly; HAProxy-protocol outbound proxies are not implemented", []string{"proxy"}},
	{"inbound connection caps are per client address (max-smtp-in-per-ip) and in total; there are no source groups", []string{"source-group"}},
	{"SparkPost Signals analytics are not implemented; the accounting files carry the delivery data", []string{
		"signals", "signals-filter", "sparkpost-analytics"}},
	{"Tern has no HTTP injection API; applications inject over SMTP", []string{"transmissions-api", "transmissions-api-listener"}},
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
