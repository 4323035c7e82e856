package config

import (
	"sort"
	"strings"
)

// scope is the kind of block a directive stands in.
type scope int

const (
	scopeTop scope = iota
	scopeSource
	scopeUser
	scopeVMTA
	scopePool
	scopeDomain
	scopePatternList
	scopeSMTPPatternList
	scopeAcctFile
	scopeSpool
	scopeMXRollupList
)

var scopeLabels = [...]string{
	scopeTop:             "the top level",
	scopeSource:          "<source>",
	scopeUser:            "<smtp-user>",
	scopeVMTA:            "<virtual-mta>",
	scopePool:            "<virtual-mta-pool>",
	scopeDomain:          "<domain>",
	scopePatternList:     "<pattern-list>",
	scopeSMTPPatternList: "<smtp-pattern-list>",
	scopeAcctFile:        "<acct-file>",
	scopeSpool:           "<spool>",
	scopeMXRollupList:    "<mx-rollup-list>",
}

// scopeDirectives lists, per scope, the directives Tern implements there.
// It drives the wrong-scope message and the did-you-mean hints; the
// builder's switch statements implement each name listed.
var scopeDirectives = map[scope][]string{
	scopeTop: {"smtp-listener", "host-name", "postmaster", "spool", "smtp-server-tls-certificate",
		"name-server", "total-max-smtp-out", "total-max-smtp-in", "http-mgmt-port", "http-access",
		"max-smtp-in-per-ip", "smtp-in-reserved", "max-inbound-buffer",
		"http-api-key", "log-file", "log-level", "domain-macro", "mx-connection-limit", "include"},
	scopeSource: {"smtp-service", "always-allow-relaying", "require-auth", "require-starttls",
		"allow-unencrypted-plain-auth", "smtp-max-auth-failure-rate", "process-x-virtual-mta",
		"default-virtual-mta", "process-x-job", "max-message-size", "max-rcpt-per-message",
		"add-received-header", "hide-message-source", "remove-header", "pattern-list",
		"log-connections", "log-commands", "include"},
	scopeUser: {"password", "password-hash", "source"},
	scopeVMTA: {"smtp-source-host", "host-name", "max-smtp-out", "max-smtp-msg-rate", "include"},
	scopePool: {"virtual-mta", "max-smtp-out", "max-smtp-msg-rate"},
	scopeDomain: {"max-smtp-out", "max-msg-per-connection", "max-rcpt-per-transaction",
		"max-rcpt-per-message", "max-msg-rate", "max-connect-rate", "source-ip-max-smtp-out",
		"source-ip-max-msg-rate", "source-ip-max-connect-rate", "initial-smtp-out",
		"adaptive-smtp-out", "connection-idle-timeout", "retry-after", "bounce-after",
		"notify-of-delay", "bounce-upon-no-mx", "use-starttls", "require-starttls",
		"tls-verify-certificate", "smtp-hosts", "route", "default-smtp-port",
		"mx-connection-attempts", "host-down-after", "disable-mx-rollup", "auth-username",
		"auth-password", "use-unencrypted-plain-auth", "connect-timeout", "smtp-greeting-timeout",
		"data-send-timeout", "max-errors-per-connection", "queue-priority", "smtp-pattern-list",
		"backoff-max-smtp-out", "backoff-max-msg-rate", "backoff-retry-after",
		"backoff-to-normal-after", "backoff-to-normal-after-delivery", "dkim-sign", "domain-key",
		"include"},
	scopePatternList:     {"mail-from", "rcpt-to", "header"},
	scopeSMTPPatternList: {"reply"},
	scopeAcctFile:        {"records", "max-size", "move-interval", "delete-after", "move-to", "world-readable", "record-fields"},
	scopeSpool:           {"min-free-space"},
	scopeMXRollupList:    {"mx"},
}

// blockScopes maps each block to the scopes it may be opened in and the
// scope of its body.
var blockScopes = map[string]struct {
	parents []scope
	body    scope
}{
	"source":            {[]scope{scopeTop}, scopeSource},
	"smtp-user":         {[]scope{scopeTop}, scopeUser},
	"virtual-mta":       {[]scope{scopeTop}, scopeVMTA},
	"virtual-mta-pool":  {[]scope{scopeTop}, scopePool},
	"domain":            {[]scope{scopeTop, scopeVMTA, scopePool}, scopeDomain},
	"pattern-list":      {[]scope{scopeTop}, scopePatternList},
	"smtp-pattern-list": {[]scope{scopeTop}, scopeSMTPPatternList},
	"acct-file":         {[]scope{scopeTop}, scopeAcctFile},
	"spool":             {[]scope{scopeTop}, scopeSpool},
	"mx-rollup-list":    {[]scope{scopeTop}, scopeMXRollupList},
}

// notImplemented is PowerMTA vocabulary Tern recognises but does not act on
// yet: it is reported as a warning naming the directive and otherwise
// ignored, wherever it stands.
var notImplemented = map[string]bool{
	"pickup": true, "bounce-processor": true, "feedback-loop-processor": true,
	"smtp-proxy-source-host": true, "cold-virtual-mta": true,
	"reroute-to-virtual-mta": true, "use-dane": true, "use-mta-sts": true,
	"run-as-root": true, "admin-address": true, "relay-domain": true, "relay-address": true,
	"sync-msg-create": true, "sync-msg-update": true, "log-rotate": true,
	"http-redirect-to-https": true, "http-mgmt-port-tls": true, "smtp-client-tls-certificate": true,
	"dk-sign": true, "dkim-identity": true, "dkim-algorithm": true, "dkim-headers": true,
	"dkim-expire-after": true, "dkim-body-canon": true, "dkim-header-canon": true,
	"dsn-return-default": true, "deliver-local-dsn": true, "ignore-8bitmime": true,
	"8bitmime-support": true, "assume-delivery-upon-data-termination-timeout": true,
	"mailfrom-dns-check": true, "mx-rollup": true, "dns-serial": true, "ipv6": true,
	"use-ipv6": true, "prefer-ipv6": true, "smtp-data-termination-timeout": true,
	"smtp-552-is-permanent": true, "smtp-553-means-invalid-mailbox": true,
	"max-cold-virtual-mta-msg": true, "retain-x-job": true, "retain-x-virtual-mta": true,
	"process-x-envid": true, "add-message-id-header": true, "add-date-header": true,
	"remove-received-headers": true, "verp-default": true, "allow-mailmerge": true,
	"always-allow-api-submission": true, "jobid-header": true, "log-data": true,
	"log-transfer-failures": true, "log-resolution": true, "deliver-unsigned": true,
	"track-recipients": true, "bounce-upon-5xx-greeting": true, "bounce-upon-transfer-failure": true,
	"blocked-ip-address": true, "smtp-source-ip": true, "include-dkim-headers": true,
	"spool-max-recipients": true, "delete-file": true, "move-interval-after": true,
	"rotate-at": true, "user-string": true, "max-msg-per-hour": true,
	"queue-to": true, "allow-starttls": true, "auto-cold-virtual-mta": true,
	"bounce-after-no-mx": true, "check-ehlo": true, "x-mailer": true,
}

// notImplementedBlocks are PowerMTA blocks Tern skips with a warning,
// contents and all.
var notImplementedBlocks = map[string]bool{
	"bounce-category-patterns": true, "feedback-loop-processor": true, "bounce-processor": true,
	"pickup": true, "smtp-proxy-source-host": true, "address-list": true,
	"domain-key-list": true, "http-source": true, "virtual-mta-template": true,
	"rewrite-list": true, "queue-list": true, "bounce-list": true, "mail-merge": true,
}

// directiveIndex maps each implemented directive to the scopes allowing it.
func directiveIndex() map[string][]scope {
	idx := map[string][]scope{}
	for sc, names := range scopeDirectives {
		for _, n := range names {
			idx[n] = append(idx[n], sc)
		}
	}
	for _, scopes := range idx {
		sort.Slice(scopes, func(i, j int) bool { return scopes[i] < scopes[j] })
	}
	return idx
}

// scopeList formats where something is allowed: "at the top level",
// "in <virtual-mta>, <virtual-mta-pool> or <domain>".
func scopeList(scopes []scope) string {
	var in []string
	top := false
	for _, s := range scopes {
		if s == scopeTop {
			top = true
			continue
		}
		in = append(in, scopeLabels[s])
	}
	list := ""
	if len(in) > 0 {
		list = "in " + in[len(in)-1]
		if len(in) > 1 {
			list = "in " + strings.Join(in[:len(in)-1], ", ") + " or " + in[len(in)-1]
		}
	}
	switch {
	case top && list != "":
		return "at the top level or " + list
	case top:
		return "at the top level"
	}
	return list
}

// scopeWhere names a scope as a place: "at the top level", "in <source>".
func scopeWhere(sc scope) string {
	if sc == scopeTop {
		return "at the top level"
	}
	return "in " + scopeLabels[sc]
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
