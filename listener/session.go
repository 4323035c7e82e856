package listener

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/net/idna"

	"github.com/ternmta/tern/config"
	"github.com/ternmta/tern/queue"
	"github.com/ternmta/tern/vmta"
	"github.com/ternmta/tern/vmta/dkim"
)

// newSession runs at the client's first EHLO/HELO (and again after
// STARTTLS), so the TLS state is known. It takes the configuration of the
// moment: a reload applies to the next session.
func newSession(c *inConn) *session {
	snap := c.s.snap.Load()
	lst := c.r.cur.Load() // source= may change with a reload; the socket stays
	ip := remoteIP(c.cc)
	ss := &session{
		s:      c.s,
		snap:   snap,
		cc:     c.cc,
		helo:   c.helo,
		lst:    lst,
		ip:     ip,
		tls:    c.tls,
		policy: snap.reg.Source(ip, lst.Source),
	}
	ss.log = c.s.log.With("client", ip.String(), "listener", lst.Addr)
	if ss.policy.LogConnections {
		ss.log.Info("smtp session", "helo", c.helo, "tls", c.tls)
	}
	return ss
}

// session is one client connection's state (between STARTTLS resets): the
// policy decisions on each command. The protocol engine (smtpd.go) calls
// it once a command is well formed and in sequence.
type session struct {
	s      *Server
	snap   *snapshot
	cc     *countedConn
	helo   string
	lst    *config.Listener
	log    *slog.Logger
	ip     netip.Addr
	tls    bool
	policy *vmta.SourcePolicy
	user   *vmta.User

	// the transaction in progress
	from     string
	hasFrom  bool
	mailOpts smtp.MailOptions
	rcpts    []queue.Recipient

	// hdr reads the header of each message of the session; reused, as a
	// bufio.Reader costs a 4 KB allocation.
	hdr *bufio.Reader
	// hungUp is set when the session decided to end the connection
	// after its reply (too many AUTH failures).
	hungUp bool
}

func (ss *session) Reset() {
	ss.from, ss.hasFrom, ss.mailOpts, ss.rcpts = "", false, smtp.MailOptions{}, nil
	ss.setBusy(false)
}

func (ss *session) Logout() error {
	ss.setBusy(false)
	if ss.policy.LogCommands {
		ss.log.Info("smtp command", "command", "end of session (QUIT, disconnect or STARTTLS)", "user", ss.userName())
	}
	return nil
}

// logCommand writes a command of the session and the reply it got, when
// the source (after AUTH, the user's source) has log-commands: the
// operator's view of what a client sends. Callers check LogCommands
// first, so that no command line is built for nothing; ok is the reply
// when err is nil.
func (ss *session) logCommand(command, ok string, err error) {
	reply := ok
	var se *smtp.SMTPError
	switch {
	case err == nil:
	case errors.As(err, &se):
		reply = fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	default:
		reply = "connection error: " + err.Error()
	}
	ss.log.Info("smtp command", "command", command, "reply", reply, "user", ss.userName())
}

// refuse logs a refused command and returns its reply.
func (ss *session) refuse(err *smtp.SMTPError, what string, args ...any) error {
	ss.log.Info("smtp refused", append([]any{"what", what, "code", err.Code,
		"reply", fmt.Sprintf("%d.%d.%d %s", err.EnhancedCode[0], err.EnhancedCode[1], err.EnhancedCode[2], err.Message),
		"user", ss.userName()}, args...)...)
	return err
}

func (ss *session) userName() string {
	if ss.user == nil {
		return ""
	}
	return ss.user.Name
}

func (ss *session) AuthMechanisms() []string {
	if !ss.tls && !ss.policy.AllowUnencryptedPlainAuth {
		return nil // not advertised in the clear; STARTTLS first
	}
	mechs := []string{sasl.Plain, sasl.Login}
	if ss.snap.cramMD5 {
		mechs = append(mechs, cramMD5)
	}
	return mechs
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.policy.RequireStartTLS && !ss.tls {
		return nil, ss.refuse(errTLSRequired, "auth")
	}
	if !ss.tls && !ss.policy.AllowUnencryptedPlainAuth {
		return nil, ss.refuse(errAuthNeedsTLS, "auth")
	}
	if ss.s.failures.blocked(ss.ip) {
		ss.hangUp()
		return nil, ss.refuse(errAuthTooMany, "auth")
	}
	check := func(username, password string) error {
		u, ok := ss.snap.reg.Authenticate(username, password)
		return ss.authResult(username, u, ok)
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return ss.authResult(username, nil, false)
			}
			return check(username, password)
		}), nil
	case sasl.Login:
		return newLoginServer(check), nil
	case cramMD5:
		if ss.snap.cramMD5 {
			return newCRAMMD5Server(ss.snap.cfg.HostName.Value, ss.s.opts.Now, func(username string, verify func(secret string) bool) error {
				u, _ := ss.snap.reg.User(username)
				var ok bool
				if u != nil {
					if pw, plain := u.Plaintext(); plain {
						ok = verify(pw)
					}
				}
				if !ok {
					u = nil
				}
				return ss.authResult(username, u, ok)
			}), nil
		}
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// authResult switches the session to the user's source on success and
// counts a failure otherwise; past smtp-max-auth-failure-rate the client
// is told 421 and disconnected.
func (ss *session) authResult(username string, u *vmta.User, ok bool) (err error) {
	// The password never reaches the log; the name the client gave does.
	defer func() {
		if ss.policy.LogCommands {
			ss.logCommand("AUTH as "+strconv.Quote(username), "235 2.7.0 Authentication succeeded", err)
		}
	}()
	if !ok {
		if ss.s.failures.fail(ss.ip, ss.policy.SMTPMaxAuthFailureRate) {
			ss.hangUp()
			return ss.refuse(errAuthTooMany, "auth", "username", username)
		}
		return ss.refuse(errAuthFailed, "auth", "username", username)
	}
	ss.user = u
	ss.policy = ss.snap.reg.Source(ss.ip, ss.lst.Source, u.Source)
	ss.log.Info("smtp auth", "user", u.Name, "source", u.Source)
	return nil
}

// hangUp ends the session after the current reply.
func (ss *session) hangUp() {
	ss.hungUp = true
	ss.cc.hangUp()
}

// setBusy marks the session's connection inside a transaction or not.
// Once the server shuts down, a session whose transaction ended is hung
// up, so that the drain waits only for transactions in progress.
func (ss *session) setBusy(busy bool) {
	cc := ss.cc
	cc.busy.Store(busy)
	if !busy && ss.s.closing.Load() {
		cc.hangUp()
	}
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) (err error) {
	defer func() {
		if ss.policy.LogCommands {
			ss.logCommand("MAIL FROM:<"+from+">", "250 2.1.0 Sender OK", err)
		}
	}()
	if ss.policy.RequireStartTLS && !ss.tls {
		return ss.refuse(errTLSRequired, "mail", "from", from)
	}
	if ss.policy.RequireAuth && ss.user == nil {
		return ss.refuse(errAuthRequired, "mail", "from", from)
	}
	if err := checkEncoding(from, opts != nil && opts.UTF8); err != nil {
		if err == errBadAddress {
			err = errBadSender
		}
		return ss.refuse(err, "mail", "from", from)
	}
	if from != "" && !validAddress(from, true) {
		return ss.refuse(errBadSender, "mail", "from", from)
	}
	if opts != nil && opts.Size > 0 && exceeds(opts.Size, ss.policy.MaxMessageSize) {
		return ss.refuse(errTooBig, "mail", "from", from, "size", opts.Size)
	}
	// Checked here too, so a client does not send a whole body only to be
	// told at the end that there is no room for it.
	if err := ss.checkSpace(); err != nil {
		return ss.refuse(err, "mail", "from", from)
	}
	ss.Reset()
	ss.from, ss.hasFrom = from, true
	if opts != nil {
		ss.mailOpts = *opts
	}
	ss.setBusy(true)
	return nil
}

func exceeds(n int64, limit config.Size) bool {
	return limit != config.Unlimited && n > int64(limit)
}

func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) (err error) {
	defer func() {
		if ss.policy.LogCommands {
			ss.logCommand("RCPT TO:<"+to+">", "250 2.1.5 Recipient OK", err)
		}
	}()
	if err := checkEncoding(to, ss.mailOpts.UTF8); err != nil {
		return ss.refuse(err, "rcpt", "to", to)
	}
	if !validAddress(to, false) {
		return ss.refuse(errBadAddress, "rcpt", "to", to)
	}
	if !ss.policy.AlwaysAllowRelaying && ss.user == nil {
		return ss.refuse(errRelayDenied, "rcpt", "to", to)
	}
	if len(ss.rcpts) >= ss.policy.MaxRcptPerMessage {
		return ss.refuse(errTooManyRcpts, "rcpt", "to", to)
	}
	r := queue.Recipient{Address: to, Domain: strings.ToLower(to[strings.LastIndexByte(to, '@')+1:])}
	if opts != nil {
		r.ORcpt = opts.OriginalRecipient
		r.Notify = notifyFlags(opts.Notify)
	}
	ss.rcpts = append(ss.rcpts, r)
	return nil
}

// mayRelay reports whether the session's transactions can deliver: its
// source may relay, or it has authenticated.
func (ss *session) mayRelay() bool {
	return ss.policy.AlwaysAllowRelaying || ss.user != nil
}

// checkEncoding refuses an address with 8-bit bytes unless the
// transaction asked for SMTPUTF8 (RFC 6531 §3.4), and then unless they
// are UTF-8: such an address would otherwise be relayed and logged as
// raw bytes no one downstream can read.
func checkEncoding(a string, utf8Allowed bool) *smtp.SMTPError {
	for i := 0; i < len(a); i++ {
		if a[i] < utf8.RuneSelf {
			continue
		}
		switch {
		case !utf8Allowed:
			return errNeedSMTPUTF8
		case !utf8.ValidString(a[i:]):
			return errBadAddress
		}
		return nil
	}
	return nil
}

// validAddress accepts local@domain whose domain is one Tern can queue:
// validDomain, or for a sender (literalOK) also an address literal. The
// engine has already parsed the path and refused control characters.
//
// Recipient domains are strict because each becomes a queue, named in
// the admin API, the accounting file and DNS lookups: "foo/bar" or "*"
// could never be delivered, and would make queues that cannot be
// addressed. A recipient address literal is refused too: delivery finds
// hosts by MX lookup only, so it could never be delivered. A sender's
// domain only receives bounce reports, which for a literal simply fail.
func validAddress(a string, literalOK bool) bool {
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 || len(a) > 320 {
		return false
	}
	domain := a[at+1:]
	if strings.HasPrefix(domain, "[") {
		return literalOK && validLiteral(domain)
	}
	return validDomain(domain)
}

// validDomain reports whether d is a domain name (RFC 5321 §4.1.2): dot
// separated labels of ASCII letters, digits and hyphens, neither first
// nor last a hyphen, of 1 to 63 octets, 255 in all. An underscore is let
// through as delivery does (names with one resolve and take mail). A
// domain with non-ASCII labels (SMTPUTF8) must convert to such a name
// with IDNA's Lookup profile (RFC 5891 §5), as delivery converts it.
func validDomain(d string) bool {
	for i := 0; i < len(d); i++ {
		if d[i] >= utf8.RuneSelf {
			ascii, err := idna.Lookup.ToASCII(d)
			if err != nil {
				return false
			}
			d = ascii
			break
		}
	}
	if d == "" || len(d) > 255 {
		return false
	}
	for len(d) > 0 {
		label, rest, _ := strings.Cut(d, ".")
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			ch := label[i]
			lower := ch | 0x20 // only A-Z and a-z become a-z
			if !('a' <= lower && lower <= 'z' || '0' <= ch && ch <= '9' || ch == '-' || ch == '_') {
				return false
			}
		}
		if rest == "" && len(d) > len(label) {
			return false // a trailing dot
		}
		d = rest
	}
	return true
}

// validLiteral reports whether d is an address literal (RFC 5321
// §4.1.3): [IPv4] or [IPv6:address].
func validLiteral(d string) bool {
	if len(d) < 3 || d[len(d)-1] != ']' {
		return false
	}
	in := d[1 : len(d)-1]
	if v6, ok := cutPrefixFold(in, "IPv6:"); ok {
		ip, err := netip.ParseAddr(v6)
		return err == nil && ip.Is6() && ip.Zone() == ""
	}
	ip, err := netip.ParseAddr(in)
	return err == nil && ip.Is4()
}

func notifyFlags(n []smtp.DSNNotify) queue.Notify {
	var f queue.Notify
	for _, v := range n {
		switch v {
		case smtp.DSNNotifyNever:
			f |= queue.NotifyNever
		case smtp.DSNNotifySuccess:
			f |= queue.NotifySuccess
		case smtp.DSNNotifyFailure:
			f |= queue.NotifyFailure
		case smtp.DSNNotifyDelayed:
			f |= queue.NotifyDelay
		}
	}
	return f
}

// Data takes the whole message (read within the source's size limit by
// the engine), applies the source's header rules, picks the VMTA and
// spools the message; the 250 goes out only after Put returned. It
// returns the reply, an *smtp.SMTPError, whatever the outcome.
func (ss *session) Data(raw []byte) (err error) {
	defer func() {
		if ss.policy.LogCommands {
			ss.logCommand("DATA", "", err)
		}
	}()
	if len(raw) == 0 {
		return ss.refuse(errEmptyMessage, "data")
	}
	replaceStrayCR(raw)
	if ss.hdr == nil {
		ss.hdr = bufio.NewReader(nil)
	}
	br := ss.hdr
	rd := bytes.NewReader(raw)
	br.Reset(rd)
	defer br.Reset(nil) // let go of the pooled buffer
	hdr, err := textproto.ReadHeader(br)
	if err != nil {
		return ss.refuse(errBadHeader, "data", "err", err.Error())
	}
	// What ReadHeader consumed: br holds at most 4 KB of raw, so what is
	// still unread in rd counts too.
	bodyStart := len(raw) - rd.Len() - br.Buffered()

	sel := vmta.SelectInput{Source: ss.policy}
	if hdr.Has("X-Virtual-MTA") {
		sel.Header, sel.HasHeader = strings.TrimSpace(hdr.Get("X-Virtual-MTA")), true
	}
	// The header names internal routing: it never leaves Tern, whether or
	// not this source may use it.
	hdr.Del("X-Virtual-MTA")
	var job string
	if ss.policy.ProcessXJob {
		job = strings.TrimSpace(hdr.Get("X-Job"))
		hdr.Del("X-Job")
	}
	for _, h := range ss.policy.RemoveHeaders {
		hdr.Del(h)
	}
	rcptAddrs := make([]string, len(ss.rcpts))
	for i, rc := range ss.rcpts {
		rcptAddrs[i] = rc.Address
	}
	sel.Message = vmta.MessageInfo{MailFrom: ss.from, RcptTo: rcptAddrs, Header: func(name string) []string {
		var vals []string
		for f := hdr.FieldsByKey(name); f.Next(); {
			vals = append(vals, f.Value())
		}
		return vals
	}}
	choice, err := ss.snap.reg.Select(sel)
	if err != nil {
		var unknown *vmta.UnknownVMTAError
		if errors.As(err, &unknown) {
			return ss.refuse(unknownVMTA(err), "data", "from", ss.from)
		}
		ss.log.Error("vmta selection failed", "err", err)
		return errInternal
	}
	if ss.policy.AddReceivedHeader {
		hdr.Add("Received", ss.received()) // Add puts a field on top, where a trace header belongs
	}

	out := ss.s.getBuf()
	defer ss.s.putBuf(out)
	out.Grow(len(raw) + 256)
	if err := textproto.WriteHeader(out, hdr); err != nil {
		return errInternal
	}
	out.Write(raw[bodyStart:])

	if err := ss.checkSpace(); err != nil {
		return ss.refuse(err, "data")
	}
	pool := ""
	if choice.Pool != nil {
		pool = choice.Pool.Name
	}
	body := ss.sign(out.Bytes(), choice.VMTA.Name, pool)
	rcpts := make([]queue.Recipient, len(ss.rcpts))
	for i, rc := range ss.rcpts {
		rc.VMTA, rc.Pool = choice.VMTA.Name, pool
		rcpts[i] = rc
	}
	msg := queue.Message{
		Envelope: queue.Envelope{
			Sender:   ss.from,
			SourceIP: ss.ip,
			AuthUser: ss.userName(),
			JobID:    job,
			EnvID:    ss.mailOpts.EnvelopeID,
			DSNRet:   dsnRet(ss.mailOpts.Return),
		},
		Recipients: rcpts,
		Body:       body,
	}
	id, err := ss.s.opts.Spool.Put(context.Background(), msg)
	if err != nil {
		ss.log.Error("spool write failed", "err", err, "from", ss.from, "recipients", len(rcpts))
		return ss.refuse(errSpool, "data")
	}
	if ss.s.opts.OnAccepted != nil {
		ss.s.opts.OnAccepted(id, &msg)
	}
	// A line per message is debug (log-level debug): at thousands of
	// messages a second it would cost more than it tells, and the
	// accounting file's r records hold the same for whoever wants them.
	if ss.log.Enabled(context.Background(), slog.LevelDebug) {
		ss.log.Debug("message accepted", "id", id.String(), "user", ss.userName(), "vmta", choice.VMTA.Name,
			"pool", pool, "via", choice.Via, "from", ss.from, "recipients", len(rcpts), "size", len(body), "job", job)
	}
	return accepted(id)
}

// replaceStrayCR turns every CR that does not start a CRLF into a space,
// in place, before the message is signed and spooled. Such a CR is
// content here, but a server further on may take it as a line end, and
// "\r.\r" as the end of the message: the way SMTP smuggling passes a
// second message through a relay (Postfix's cleanup_replace_stray_cr_lf
// does the same). A bare LF needs nothing: delivery sends it as CRLF and
// dot-stuffs the line after it.
func replaceStrayCR(b []byte) {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\r')
		if j < 0 {
			return
		}
		i += j
		if i+1 == len(b) || b[i+1] != '\n' {
			b[i] = ' '
		}
		i++
	}
}

func dsnRet(r smtp.DSNReturn) queue.DSNRet {
	switch r {
	case smtp.DSNReturnFull:
		return queue.RetFull
	case smtp.DSNReturnHeaders:
		return queue.RetHeaders
	}
	return queue.RetUnset
}

// received builds this hop's Received header (RFC 5321 §4.4).
func (ss *session) received() string {
	with := "ESMTP"
	if ss.tls {
		with += "S"
	}
	if ss.user != nil {
		with += "A"
	}
	from := ""
	if !ss.policy.HideMessageSource {
		from = fmt.Sprintf("from %s ([%s]) ", ss.helo, ss.ip)
	}
	return fmt.Sprintf("%sby %s (Tern) with %s; %s", from, ss.snap.cfg.HostName.Value, with,
		ss.s.opts.Now().Format(time.RFC1123Z))
}

// checkSpace refuses new mail while the spool's disk is below
// min-free-space. A failure to measure is logged and does not refuse mail:
// the spool's own writes will fail loudly if the disk is really full.
func (ss *session) checkSpace() *smtp.SMTPError {
	if ss.s.opts.FreeSpace == nil {
		return nil
	}
	free, err := ss.s.opts.FreeSpace()
	if err != nil {
		ss.log.Warn("cannot measure free space on the spool's disk", "err", err)
		return nil
	}
	if free < uint64(ss.snap.cfg.Spool.MinFreeSpace.Value) {
		ss.log.Warn("spool disk below min-free-space", "free_bytes", free, "min_free_space", int64(ss.snap.cfg.Spool.MinFreeSpace.Value))
		return errDiskFull
	}
	return nil
}

// sign DKIM-signs the message once, as it is spooled, so every attempt
// carries the same signature. The message is stored once for all its
// recipients, so it is signed if any recipient's queue has dkim-sign yes,
// with the key that aligns with its From domain. A message that cannot be
// signed (no From header) is spooled unsigned, and the log says why.
func (ss *session) sign(msg []byte, vmtaName, pool string) []byte {
	for _, rc := range ss.rcpts {
		if !dkim.Enabled(ss.snap.reg, vmtaName, pool, rc.Domain) {
			continue
		}
		signed, key, err := dkim.SignFor(ss.snap.reg, vmtaName, pool, rc.Domain, msg, dkim.Options{Now: ss.s.opts.Now})
		if err != nil {
			ss.log.Warn("DKIM signing failed; the message is spooled unsigned", "vmta", vmtaName, "err", err)
			return msg
		}
		if key == nil {
			ss.log.Warn("dkim-sign is on but no domain-key aligns with the From domain; unsigned", "vmta", vmtaName, "rcpt_domain", rc.Domain)
		}
		return signed
	}
	return msg
}
