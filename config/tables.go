package config

import (
	"log/slog"
	"time"
)

// The tables of the directives of each scope. The order of a table is the
// order `tern check --show` and the settings view list them in.

// topTable holds the top-level directives. host-name, postmaster and the
// spool's directory have defaults that depend on the load (the machine's
// name, the file's directory); newBuilder sets those.
var topTable = newTable(
	custom("smtp-listener", "", func(b *builder, _ *Config, n *node) { b.listener(n) }),
	custom("smtp-source-host", "the system's choice", func(b *builder, c *Config, n *node) { b.sourceHost(&c.DefaultSourceHosts, n) }),
	custom("host-name", "the machine's host name", func(b *builder, c *Config, n *node) { setOne(b, &c.HostName, n, hostname) }),
	custom("postmaster", "postmaster@ + host-name", func(b *builder, c *Config, n *node) { setOne(b, &c.Postmaster, n, emailAddress) }),
	custom("spool", "spool beside the file", func(b *builder, c *Config, n *node) { setOne(b, &c.Spool.Dir, n, pathAt(n)) }).needsRestart(),
	custom("smtp-server-tls-certificate", "", func(b *builder, _ *Config, n *node) { b.certificate(n) }),
	one("smtp-server-tls-allow-tlsv1", func(c *Config) *Setting[bool] { return &c.TLSAllowV10 }, parseBool, false).
		differs("the default is no: TLS 1.0 is refused unless allowed"),
	one("smtp-server-tls-allow-tlsv1.1", func(c *Config) *Setting[bool] { return &c.TLSAllowV11 }, parseBool, false).
		differs("the default is no: TLS 1.1 is refused unless allowed"),
	one("smtp-server-tls-allow-tlsv1.2", func(c *Config) *Setting[bool] { return &c.TLSAllowV12 }, parseBool, true),
	one("smtp-server-tls-allow-tlsv1.3", func(c *Config) *Setting[bool] { return &c.TLSAllowV13 }, parseBool, true).tern(),
	custom("name-server", "/etc/resolv.conf", func(b *builder, c *Config, n *node) {
		var s Setting[string]
		setOne(b, &s, n, nameServer)
		if s.Set {
			c.NameServers = append(c.NameServers, s)
		}
	}),
	one("total-max-smtp-out", func(c *Config) *Setting[int] { return &c.TotalMaxSMTPOut }, intRange(1, 1000000), 1200),
	one("total-max-smtp-in", func(c *Config) *Setting[int] { return &c.TotalMaxSMTPIn }, intRange(1, 1000000), 500),
	one("http-mgmt-port", func(c *Config) *Setting[string] { return &c.HTTPMgmtAddr }, mgmtAddr, "127.0.0.1:8080").
		needsRestart().differs("a bare port listens on every interface, as in PowerMTA, but http-access grants nothing until a rule does"),
	custom("http-access", "nobody", func(b *builder, _ *Config, n *node) { b.httpAccess(n) }).
		differs("the levels are none, monitor, operator and admin; PowerMTA's `admin` and `monitor` mean the same"),
	custom("http-api-key", "", httpAPIKey).of(func(c *Config) any { return &c.HTTPAPIKey }).
		differs("a request may send the key as `X-API-Key: KEY`, as to PowerMTA, or as `Authorization: Bearer KEY`; with a key set, the address must also be allowed by http-access"),
	custom("log-file", "standard error", func(b *builder, c *Config, n *node) { setOne(b, &c.LogFile, n, pathAt(n)) }).
		differs("Tern's log is one line per event in key=value form, not PowerMTA's format"),
	one("log-level", func(c *Config) *Setting[slog.Level] { return &c.LogLevel }, logLevel, slog.LevelInfo).tern(),
	custom("mx-connection-limit", "unlimited", mxConnectionLimit).
		differs("one limit for every MX host address, per source IP; PowerMTA's per-pattern form (MX-PATTERN N) is read with a warning and not applied"),
	custom("max-smtp-in-per-ip", "20", func(b *builder, c *Config, n *node) { setOne(b, &c.MaxSMTPInPerIP, n, limitOrUnlimited(1000000)) }).tern(),
	custom("smtp-in-reserved", "total-max-smtp-in / 10", func(b *builder, c *Config, n *node) { setOne(b, &c.SMTPInReserved, n, intRange(0, 1000000)) }).tern(),
	custom("max-inbound-buffer", "256M", func(b *builder, c *Config, n *node) { setOne(b, &c.MaxInboundBuffer, n, inboundBuffer) }).tern(),
	custom("domain-key", "", func(b *builder, c *Config, n *node) { b.domainKey(&c.DomainKeys, n) }),
	custom("domain-macro", "", func(*builder, *Config, *node) {}), // read first, by macros
	custom("include", "", func(*builder, *Config, *node) {}),      // read by the reader
)

// sourceTable holds the directives of <source>.
var sourceTable = newTable(
	one("smtp-service", func(s *SourceSettings) *Setting[bool] { return &s.SMTPService }, parseBool, true),
	one("always-allow-relaying", func(s *SourceSettings) *Setting[bool] { return &s.AlwaysAllowRelaying }, parseBool, false),
	one("require-auth", func(s *SourceSettings) *Setting[bool] { return &s.RequireAuth }, parseBool, false),
	one("require-starttls", func(s *SourceSettings) *Setting[bool] { return &s.RequireStartTLS }, parseBool, false),
	one("allow-unencrypted-plain-auth", func(s *SourceSettings) *Setting[bool] { return &s.AllowUnencryptedPlainAuth }, parseBool, false),
	one("smtp-max-auth-failure-rate", func(s *SourceSettings) *Setting[Rate] { return &s.SMTPMaxAuthFailureRate }, parseRate, Rate{Count: 3, Interval: 5 * time.Minute}).
		differs("the default is 3/5m (PowerMTA: unlimited)"),
	one("process-x-virtual-mta", func(s *SourceSettings) *Setting[bool] { return &s.ProcessXVirtualMTA }, parseBool, false),
	one("default-virtual-mta", func(s *SourceSettings) *Setting[string] { return &s.DefaultVirtualMTA }, vmtaRef, DefaultVMTA),
	one("process-x-job", func(s *SourceSettings) *Setting[bool] { return &s.ProcessXJob }, parseBool, false),
	one("max-message-size", func(s *SourceSettings) *Setting[Size] { return &s.MaxMessageSize }, parseSize, Size(50<<20)),
	one("max-rcpt-per-message", func(s *SourceSettings) *Setting[int] { return &s.MaxRcptPerMessage }, rcptLimit, 1000).
		differs("the default is 1000 (PowerMTA: no limit); 0 and unlimited mean the largest limit, 1000000"),
	one("add-received-header", func(s *SourceSettings) *Setting[bool] { return &s.AddReceivedHeader }, parseBool, true),
	one("hide-message-source", func(s *SourceSettings) *Setting[bool] { return &s.HideMessageSource }, parseBool, false),
	custom("remove-header", "", removeHeader),
	one("pattern-list", func(s *SourceSettings) *Setting[string] { return &s.PatternList }, text, ""),
	one("log-connections", func(s *SourceSettings) *Setting[bool] { return &s.LogConnections }, parseBool, false),
	one("log-commands", func(s *SourceSettings) *Setting[bool] { return &s.LogCommands }, parseBool, false),
	custom("include", "", func(*builder, *SourceSettings, *node) {}),
)

// userTable holds the directives of <smtp-user>.
var userTable = newTable(
	custom("password", "", func(b *builder, u *User, n *node) {
		setOne(b, &u.Password, n, text)
		if u.Password.Set && u.Password.Pos == n.Pos {
			b.warnf(n.Pos, "smtp-user %s: the password is stored in plaintext; prefer password-hash (tern hash-password prints one)", u.Name)
		}
	}),
	custom("password-hash", "", func(b *builder, u *User, n *node) { setOne(b, &u.PasswordHash, n, bcryptHash) }).tern(),
	one("source", func(u *User) *Setting[string] { return &u.Source }, text, AuthSource),
	custom("authentication-method", "password", authMethod),
)

// vmtaTable holds the directives of <virtual-mta>.
var vmtaTable = newTable(
	custom("smtp-source-host", "the system's choice", func(b *builder, v *VirtualMTA, n *node) { b.sourceHost(&v.SourceHosts, n) }),
	one("host-name", func(v *VirtualMTA) *Setting[string] { return &v.HostName }, hostname, "").withDefault("the top-level host-name"),
	one("max-smtp-out", func(v *VirtualMTA) *Setting[int] { return &v.MaxSMTPOut }, intRange(1, 1000000), 0).withDefault("no VMTA-wide cap"),
	one("max-smtp-msg-rate", func(v *VirtualMTA) *Setting[Rate] { return &v.MaxSMTPMsgRate }, parseRate, Rate{}),
	custom("domain-key", "", func(b *builder, v *VirtualMTA, n *node) { b.domainKey(&v.DomainKeys, n) }),
	custom("include", "", func(*builder, *VirtualMTA, *node) {}),
)

// poolTable holds the directives of <virtual-mta-pool>.
var poolTable = newTable(
	custom("virtual-mta", "", func(b *builder, p *Pool, n *node) { b.poolMember(p, n) }),
	one("max-smtp-out", func(p *Pool) *Setting[int] { return &p.MaxSMTPOut }, intRange(1, 1000000), 0).withDefault("no pool-wide cap"),
	one("max-smtp-msg-rate", func(p *Pool) *Setting[Rate] { return &p.MaxSMTPMsgRate }, parseRate, Rate{}),
	custom("domain-key", "", func(b *builder, p *Pool, n *node) { b.domainKey(&p.DomainKeys, n) }),
)

// domainTable holds the directives of <domain>: the delivery policy of a
// queue.
var domainTable = newTable(
	one("max-smtp-out", func(s *DomainSettings) *Setting[int] { return &s.MaxSMTPOut }, intRange(1, 100000), 20),
	one("max-msg-per-connection", func(s *DomainSettings) *Setting[int] { return &s.MaxMsgPerConnection }, intRange(0, 1000000), 100),
	one("max-rcpt-per-transaction", func(s *DomainSettings) *Setting[int] { return &s.MaxRcptPerTransaction }, intRange(1, 100000), 100).differs("the default is 100 (PowerMTA: 1000)"),
	one("max-rcpt-per-message", func(s *DomainSettings) *Setting[int] { return &s.MaxRcptPerTransaction }, intRange(1, 100000), 100).aliasFor("max-rcpt-per-transaction"),
	one("max-msg-rate", func(s *DomainSettings) *Setting[Rate] { return &s.MaxMsgRate }, parseRateOrZero, Rate{}),
	one("max-connect-rate", func(s *DomainSettings) *Setting[Rate] { return &s.MaxConnectRate }, parseRate, Rate{}),
	custom("source-ip-max-smtp-out", "", func(b *builder, s *DomainSettings, n *node) { b.sourceIPLimit(&s.SourceIPMaxSMTPOut, n) }).
		of(func(s *DomainSettings) any { return &s.SourceIPMaxSMTPOut }),
	custom("source-ip-max-msg-rate", "", func(b *builder, s *DomainSettings, n *node) { b.sourceIPRate(&s.SourceIPMaxMsgRate, n) }).
		of(func(s *DomainSettings) any { return &s.SourceIPMaxMsgRate }),
	custom("source-ip-max-connect-rate", "", func(b *builder, s *DomainSettings, n *node) { b.sourceIPRate(&s.SourceIPMaxConnectRate, n) }).
		of(func(s *DomainSettings) any { return &s.SourceIPMaxConnectRate }),
	one("initial-smtp-out", func(s *DomainSettings) *Setting[int] { return &s.InitialSMTPOut }, intRange(1, 10000), 2).tern(),
	one("adaptive-smtp-out", func(s *DomainSettings) *Setting[bool] { return &s.AdaptiveSMTPOut }, parseBool, true).tern(),
	one("connection-idle-timeout", func(s *DomainSettings) *Setting[time.Duration] { return &s.ConnectionIdleTimeout }, positiveDuration, 30*time.Second),
	list("retry-after", func(s *DomainSettings) *Setting[[]time.Duration] { return &s.RetryAfter }, parseDurationList, []time.Duration{10 * time.Minute}),
	one("bounce-after", func(s *DomainSettings) *Setting[time.Duration] { return &s.BounceAfter }, positiveDuration, 4*24*time.Hour+12*time.Hour),
	one("notify-of-delay", func(s *DomainSettings) *Setting[time.Duration] { return &s.NotifyOfDelay }, durationOrNever, 4*time.Hour).tern(),
	one("bounce-upon-no-mx", func(s *DomainSettings) *Setting[bool] { return &s.BounceUponNoMX }, parseBool, false),
	one("use-starttls", func(s *DomainSettings) *Setting[bool] { return &s.UseStartTLS }, parseBool, true),
	one("require-starttls", func(s *DomainSettings) *Setting[bool] { return &s.RequireStartTLS }, parseBool, false),
	one("tls-verify-certificate", func(s *DomainSettings) *Setting[bool] { return &s.TLSVerifyCertificate }, parseBool, false).tern(),
	one("reuse-ssl-session", func(s *DomainSettings) *Setting[bool] { return &s.ReuseSSLSession }, parseBool, true),
	list("smtp-hosts", func(s *DomainSettings) *Setting[HostList] { return &s.SMTPHosts }, parseHostList, HostList(nil)),
	list("route", func(s *DomainSettings) *Setting[HostList] { return &s.SMTPHosts }, parseHostList, HostList(nil)).aliasFor("smtp-hosts"),
	one("default-smtp-port", func(s *DomainSettings) *Setting[int] { return &s.DefaultSMTPPort }, intRange(1, 65535), 25),
	one("mx-connection-attempts", func(s *DomainSettings) *Setting[int] { return &s.MXConnectionAttempts }, intRange(1, 100), 5),
	one("host-down-after", func(s *DomainSettings) *Setting[int] { return &s.HostDownAfter }, intRange(1, 1000), 2).tern(),
	one("disable-mx-rollup", func(s *DomainSettings) *Setting[bool] { return &s.DisableMXRollup }, parseBool, false),
	one("auth-username", func(s *DomainSettings) *Setting[string] { return &s.AuthUsername }, text, ""),
	one("auth-password", func(s *DomainSettings) *Setting[string] { return &s.AuthPassword }, text, ""),
	one("use-unencrypted-plain-auth", func(s *DomainSettings) *Setting[bool] { return &s.UseUnencryptedPlainAuth }, parseBool, false),
	one("connect-timeout", func(s *DomainSettings) *Setting[time.Duration] { return &s.ConnectTimeout }, positiveDuration, 2*time.Minute),
	one("smtp-greeting-timeout", func(s *DomainSettings) *Setting[time.Duration] { return &s.SMTPGreetingTimeout }, positiveDuration, 5*time.Minute),
	one("data-send-timeout", func(s *DomainSettings) *Setting[time.Duration] { return &s.DataSendTimeout }, positiveDuration, 3*time.Minute),
	one("max-errors-per-connection", func(s *DomainSettings) *Setting[int] { return &s.MaxErrorsPerConnection }, countOrUnlimited, 0),
	one("queue-priority", func(s *DomainSettings) *Setting[int] { return &s.QueuePriority }, intRange(0, 100), 50),
	one("smtp-pattern-list", func(s *DomainSettings) *Setting[string] { return &s.SMTPPatternList }, text, ""),
	one("backoff-max-smtp-out", func(s *DomainSettings) *Setting[int] { return &s.BackoffMaxSMTPOut }, intRange(1, 100000), 2),
	one("backoff-max-msg-rate", func(s *DomainSettings) *Setting[Rate] { return &s.BackoffMaxMsgRate }, parseRate, Rate{Count: 1, Interval: time.Minute}),
	list("backoff-retry-after", func(s *DomainSettings) *Setting[[]time.Duration] { return &s.BackoffRetryAfter }, parseDurationList, []time.Duration{time.Hour}),
	one("backoff-to-normal-after", func(s *DomainSettings) *Setting[time.Duration] { return &s.BackoffToNormalAfter }, durationOrNever, time.Hour).
		differs("the default is 1h (PowerMTA: never)"),
	one("backoff-to-normal-after-delivery", func(s *DomainSettings) *Setting[bool] { return &s.BackoffToNormalAfterDelivery }, parseBool, true).
		differs("the default is yes (PowerMTA: no)"),
	one("dkim-sign", func(s *DomainSettings) *Setting[bool] { return &s.DKIMSign }, parseBool, false),
	custom("domain-key", "", func(b *builder, s *DomainSettings, n *node) { b.domainKey(&s.DomainKeys, n) }).
		of(func(s *DomainSettings) any { return &s.DomainKeys }),
	custom("smtp-421-means-mx-unavailable", "yes", smtp421).
		differs("Tern always tries the next MX after a 421 greeting and counts it towards host-down-after; `no` is not available"),
	custom("type", "smtp", deliveryType).of(func(s *DomainSettings) any { return &s.Discard }),
	ignored[DomainSettings]("log-commands", "Tern does not log outbound SMTP commands; each delivery attempt's outcome is logged (at log-level debug for deliveries) and written to the accounting file. log-commands in <source> logs inbound commands"),
	ignored[DomainSettings]("log-connections", "Tern does not log outbound connections one by one; log-connections in <source> logs inbound ones, and `tern hosts` shows the connections to each MX"),
	ignored[DomainSettings]("remove-header", "headers are removed when the message is received, by remove-header in <source>"),
	custom("include", "", func(*builder, *DomainSettings, *node) {}),
)

// patternListTable holds the rules of <pattern-list>.
var patternListTable = newTable(
	custom("mail-from", "", func(b *builder, pl *PatternList, n *node) { b.patternRule(pl, n, MatchMailFrom) }),
	custom("rcpt-to", "", func(b *builder, pl *PatternList, n *node) { b.patternRule(pl, n, MatchRcptTo) }),
	custom("header", "", func(b *builder, pl *PatternList, n *node) { b.patternRule(pl, n, MatchHeader) }),
	ignored[PatternList]("call-to", "pattern lists do not call each other; write the rules in the list the source names"),
)

// smtpPatternListTable holds the rules of <smtp-pattern-list>.
var smtpPatternListTable = newTable(
	custom("reply", "", func(b *builder, sp *SMTPPatternList, n *node) { b.replyRule(sp, n) }),
	custom("include", "", func(*builder, *SMTPPatternList, *node) {}),
)

// mxRollupTable holds the entries of <mx-rollup-list>.
var mxRollupTable = newTable(
	custom("mx", "", func(b *builder, _ *Config, n *node) { b.mxRollup(n) }),
)

// spoolTable holds the directives of <spool>.
var spoolTable = newTable(
	one("min-free-space", func(s *Spool) *Setting[Size] { return &s.MinFreeSpace }, parseSize, Size(1<<30)).
		differs("the default is 1G (PowerMTA: 0)"),
	custom("deliver-only", "no", deliverOnly),
	ignored[Spool]("delete-file-holders", "Tern's queue is a single database, not one file per message: there are no file holders to delete"),
	ignored[Spool]("priority", "Tern keeps one spool, so there is no order between spools to give"),
)

// acctTable holds the directives of <acct-file>.
var acctTable = newTable(
	list("records", func(a *AcctFile) *Setting[RecordTypes] { return &a.Records }, parseRecords, RecordTypes{Delivered: true, Bounced: true}),
	one("max-size", func(a *AcctFile) *Setting[Size] { return &a.MaxSize }, parseSize, Size(250<<20)),
	one("move-interval", func(a *AcctFile) *Setting[time.Duration] { return &a.MoveInterval }, durationOrNever, 24*time.Hour),
	one("delete-after", func(a *AcctFile) *Setting[time.Duration] { return &a.DeleteAfter }, durationOrNever, Never).
		differs("the default is never (PowerMTA: 8d)"),
	custom("move-to", "", func(b *builder, a *AcctFile, n *node) { setOne(b, &a.MoveTo, n, dirIn(n.Pos)) }).
		of(func(a *AcctFile) any { return &a.MoveTo }),
	one("world-readable", func(a *AcctFile) *Setting[bool] { return &a.WorldReadable }, parseBool, false),
	custom("record-fields", "", func(b *builder, a *AcctFile, n *node) { b.recordFields(a, n) }),
	ignored[AcctFile]("map-header-to-field", "write the header in a column of its own with header_NAME in record-fields"),
	ignored[AcctFile]("acct-log-header", "write the header in a column of its own with header_NAME in record-fields"),
	ignored[AcctFile]("queue-filter", "an accounting file gets the records of every queue; filter them in the program reading it (a pipe can)"),
	ignored[AcctFile]("iso-times", "times are always written in ISO 8601 form (RFC 3339), as with iso-times yes"),
	ignored[AcctFile]("count-moved-records", "the log says when a file is rotated; count its lines with wc"),
	ignored[AcctFile]("sync", "files are fed from the spool's journal and synced at rotation; after a crash the journal writes again what the file lacks"),
	ignored[AcctFile]("retry-interval", "a pipe program that exits is started again after 1s, the wait doubling up to 1m"),
	ignored[AcctFile]("write-timeout", "a pipe never holds up delivery: records wait in a 4 MB buffer and are dropped, counted, when it is full"),
)

// listenerTable holds the directives of PowerMTA 5's <smtp-listener>
// block; listenerBlock reads them into the listener's options.
var listenerTable = newTable(
	custom("source", "", func(*builder, *Config, *node) {}),
	custom("immediate-tls", "no", func(*builder, *Config, *node) {}),
)

// scopeInfos holds each scope's rows, read by dispatch and the docs.
var scopeInfos = map[scope][]rowInfo{
	scopeTop:             topTable.infos(),
	scopeSource:          sourceTable.infos(),
	scopeUser:            userTable.infos(),
	scopeVMTA:            vmtaTable.infos(),
	scopePool:            poolTable.infos(),
	scopeDomain:          domainTable.infos(),
	scopePatternList:     patternListTable.infos(),
	scopeSMTPPatternList: smtpPatternListTable.infos(),
	scopeAcctFile:        acctTable.infos(),
	scopeSpool:           spoolTable.infos(),
	scopeMXRollupList:    mxRollupTable.infos(),
	scopeListener:        listenerTable.infos(),
}

// scopeRows returns the rows of scope sc.
func scopeRows(sc scope) []rowInfo { return scopeInfos[sc] }
