package world

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"strconv"
	"strings"
	"time"
)

const (
	// maxLine is the longest command line read; a longer one is discarded
	// and refused. Data lines may be longer: only the message size is
	// bounded.
	maxLine = 4096
	// maxHeader is how much of a message's header is kept to find its
	// Message-ID.
	maxHeader = 64 << 10
	// maxRcpts is the most recipients one transaction takes.
	maxRcpts = 1000
	// maxErrors is how many bad commands a connection may send before it
	// is closed.
	maxErrors = 20
	// maxReportBytes is how much of a bounce report is kept to parse it.
	maxReportBytes = 1 << 20
)

// errLineTooLong reports a command line longer than maxLine.
type errLineTooLong struct{}

func (errLineTooLong) Error() string { return "line too long" }

// session is one connection to a normal host.
type session struct {
	w   *World
	h   *host
	p   *provider
	c   net.Conn
	ip  string
	br  *bufio.Reader
	bw  *bufio.Writer
	end bool // close after the reply being written

	greeted bool
	inMail  bool
	from    string
	rcpts   []string
	txns    int
	errors  int
}

// serveSMTP runs an SMTP session on c.
func (w *World) serveSMTP(h *host, c net.Conn) {
	ip := clientIP(c)
	admitted := w.admit(h, ip)
	w.notify()
	s := &session{w: w, h: h, p: h.prov, c: c, ip: ip,
		br: bufio.NewReaderSize(c, maxLine), bw: bufio.NewWriterSize(c, 4096)}
	if s.run(admitted) {
		// The server ends the session (421, QUIT): the slot is free now.
		if admitted {
			w.release(h, ip)
		}
		s.linger()
	} else if admitted {
		w.release(h, ip)
	}
}

// run greets (or refuses) and serves commands; true when the server ended
// the session, false when the client left or the world closed.
func (s *session) run(admitted bool) bool {
	if !s.w.sleep(s.p.spec.BannerDelay) {
		return false
	}
	if !admitted {
		s.end = true
		s.write("421 4.7.0 Too many connections from " + s.ip)
		return true
	}
	s.write("220 " + s.h.info.Name + " ESMTP world ready")
	for !s.end {
		line, err := s.readLine()
		if errors.Is(err, errLineTooLong{}) {
			s.fail("500 5.5.6 Line too long")
			continue
		}
		if err != nil {
			return false
		}
		s.command(line)
	}
	return true
}

// lingerTime bounds how long a connection the server ends waits for the
// client to close its side.
const lingerTime = 2 * time.Second

// linger closes the connection gracefully: a FIN after the last reply,
// then whatever the client had already sent (pipelined commands after a
// 421) is read and dropped until it closes. Closing with unread data
// would send a reset instead, and the client could lose the last reply.
func (s *session) linger() {
	tc, ok := s.c.(*net.TCPConn)
	if !ok {
		return
	}
	if tc.CloseWrite() != nil {
		return
	}
	_ = tc.SetReadDeadline(time.Now().Add(lingerTime))
	buf := make([]byte, 512)
	for n := 0; n < 1<<20; {
		k, err := s.br.Read(buf)
		n += k
		if err != nil {
			return
		}
	}
}

// readLine reads one line, without its line end, within the idle timeout.
// A line longer than maxLine is read to its end, dropped, and reported as
// errLineTooLong: it never takes more than the reader's buffer.
func (s *session) readLine() (string, error) {
	_ = s.c.SetReadDeadline(time.Now().Add(s.w.spec.idleTimeout()))
	b, err := s.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		for errors.Is(err, bufio.ErrBufferFull) {
			_ = s.c.SetReadDeadline(time.Now().Add(s.w.spec.idleTimeout()))
			_, err = s.br.ReadSlice('\n')
		}
		if err != nil {
			return "", err
		}
		return "", errLineTooLong{}
	}
	if err != nil {
		return "", err
	}
	return string(trimEOL(b)), nil
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// reply answers after the provider's ReplyDelay.
func (s *session) reply(line string) {
	if !s.w.sleep(s.p.spec.ReplyDelay) {
		s.end = true
		return
	}
	s.write(line)
}

// write sends a reply (lines separated by \n become a multi-line reply),
// flushing when the client has sent nothing more (PIPELINING) or the
// session ends. A reply with code 421 ends the session.
func (s *session) write(text string) {
	lines := strings.Split(text, "\n")
	code := lines[0][:min(3, len(lines[0]))]
	if code == "421" {
		s.end = true
	}
	for i, l := range lines {
		if i > 0 {
			l = code + l[min(3, len(l)):]
		}
		if i < len(lines)-1 && len(l) > 3 {
			l = l[:3] + "-" + l[4:]
		}
		s.bw.WriteString(l)
		s.bw.WriteString("\r\n")
	}
	if s.end || s.br.Buffered() == 0 {
		_ = s.c.SetWriteDeadline(time.Now().Add(s.w.spec.idleTimeout()))
		if s.bw.Flush() != nil {
			s.end = true
		}
	}
}

// fail answers a bad command and ends a session that sent too many.
func (s *session) fail(line string) {
	s.errors++
	if s.errors >= maxErrors {
		s.reply("421 4.7.0 Too many errors")
		return
	}
	s.reply(line)
}

func (s *session) resetTx() {
	s.inMail = false
	s.from = ""
	s.rcpts = s.rcpts[:0]
}

// command handles one command line.
func (s *session) command(line string) {
	verb, arg, _ := strings.Cut(line, " ")
	switch strings.ToUpper(verb) {
	case "EHLO":
		if strings.TrimSpace(arg) == "" {
			s.fail("501 5.5.4 EHLO needs a domain")
			return
		}
		s.greeted = true
		s.resetTx()
		s.reply(fmt.Sprintf("250 %s greets %s\n250 PIPELINING\n250 8BITMIME\n250 SMTPUTF8\n250 SIZE %d\n250 ENHANCEDSTATUSCODES\n250 DSN",
			s.h.info.Name, s.ip, s.w.spec.maxMessageBytes()))
	case "HELO":
		if strings.TrimSpace(arg) == "" {
			s.fail("501 5.5.4 HELO needs a domain")
			return
		}
		s.greeted = true
		s.resetTx()
		s.reply("250 " + s.h.info.Name)
	case "MAIL":
		s.mail(arg)
	case "RCPT":
		s.rcpt(arg)
	case "DATA":
		s.data()
	case "RSET":
		s.resetTx()
		s.reply("250 2.0.0 Ok")
	case "NOOP":
		s.reply("250 2.0.0 Ok")
	case "VRFY":
		s.reply("252 2.5.2 Cannot VRFY user")
	case "QUIT":
		s.end = true
		s.reply("221 2.0.0 Bye")
	default:
		s.fail("502 5.5.2 Command not recognized")
	}
}

// mailParam and rcptParam tell the ESMTP parameters accepted.
func mailParam(k string) bool {
	switch k {
	case "SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH":
		return true
	}
	return false
}

func rcptParam(k string) bool { return k == "NOTIFY" || k == "ORCPT" }

func (s *session) mail(arg string) {
	switch {
	case !s.greeted:
		s.fail("503 5.5.1 Say EHLO first")
		return
	case s.inMail:
		s.fail("503 5.5.1 Nested MAIL command")
		return
	}
	addr, params, err := parsePath(arg, "FROM:", mailParam)
	if err != nil {
		s.fail(err.Error())
		return
	}
	if v, ok := params["SIZE"]; ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			s.fail("501 5.5.4 Bad SIZE")
			return
		}
		if n > s.w.spec.maxMessageBytes() {
			s.reply("552 5.3.4 Message too big")
			return
		}
	}
	if m := s.p.spec.MsgsPerConn; m > 0 && s.txns >= m && !s.p.spec.Sender {
		s.p.mu.Lock()
		s.p.tooMany++
		s.p.mu.Unlock()
		s.reply("421 4.7.0 Too many messages on this connection")
		return
	}
	s.txns++
	s.inMail = true
	s.from = addr
	s.p.mu.Lock()
	s.p.transactions++
	s.p.mu.Unlock()
	s.reply("250 2.1.0 Ok")
}

func (s *session) rcpt(arg string) {
	if !s.inMail {
		s.fail("503 5.5.1 Need MAIL first")
		return
	}
	addr, _, err := parsePath(arg, "TO:", rcptParam)
	if err != nil {
		s.fail(err.Error())
		return
	}
	if addr == "" || !strings.Contains(addr, "@") {
		s.fail("501 5.1.3 Bad recipient address")
		return
	}
	if len(s.rcpts) >= maxRcpts {
		s.reply("452 4.5.3 Too many recipients")
		return
	}
	r := s.w.decide(s.p, s.ip, s.from, addr)
	if strings.HasPrefix(r, "250") {
		s.rcpts = append(s.rcpts, addr)
	}
	s.w.notify()
	s.reply(r)
}

// decide is the reply to RCPT TO:<rcpt> from the client at ip in a
// transaction from sender: the provider's checks in order, relay,
// unknown user, rate limit, greylisting.
func (w *World) decide(p *provider, ip, sender, rcpt string) string {
	key := lower(rcpt)
	at := strings.LastIndexByte(key, '@')
	local, domain := key[:at], key[at+1:]
	p.mu.Lock()
	defer p.mu.Unlock()
	if pi, ok := w.lay.domainProv[domain]; !ok || pi != p.index {
		p.relayDenied++
		return "550 5.7.1 <" + rcpt + ">: Relay access denied"
	}
	if p.spec.Sender {
		return "250 2.1.5 Ok"
	}
	if strings.HasPrefix(local, "nouser") {
		p.unknownUser++
		return "550 5.1.1 <" + rcpt + ">: no such user"
	}
	if share := p.spec.RateLimitShare; share > 0 {
		n, ok := p.attempts[key]
		if ok || len(p.attempts) < w.spec.maxTracked() {
			p.attempts[key] = n + 1
		} else {
			w.untracked.Add(1)
		}
		if draw(w.spec.Seed, p.spec.Name, key, n) < share {
			p.rateLimited++
			return fmt.Sprintf("%d %s", p.rlCode, p.rlText)
		}
	}
	if d := p.spec.Greylist; d > 0 {
		now := w.spec.now()
		k := ip + "\x00" + lower(sender) + "\x00" + key
		first, ok := p.greylist[k]
		if !ok {
			if len(p.greylist) < w.spec.maxTracked() {
				p.greylist[k] = now
				first = now
			} else {
				w.untracked.Add(1)
				first = now.Add(-d)
			}
		}
		if left := d - now.Sub(first); left > 0 {
			p.greylisted++
			secs := int((left + time.Second - 1) / time.Second)
			return fmt.Sprintf("451 4.7.1 Greylisted, try again in %d seconds", secs)
		}
	}
	return "250 2.1.5 Ok"
}

// draw is a number in [0, 1) fixed by the seed, the provider, the
// recipient and its attempt number.
func draw(seed int64, provider, rcpt string, attempt int32) float64 {
	h := fnv.New64a()
	var b [12]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	for i := range 4 {
		b[8+i] = byte(attempt >> (8 * i))
	}
	h.Write(b[:])
	h.Write([]byte(provider))
	h.Write([]byte{0})
	h.Write([]byte(rcpt))
	// FNV's low bits mix poorly for short inputs; fold the high half in.
	x := h.Sum64()
	x ^= x >> 29
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 32
	return float64(x>>11) / (1 << 53)
}

func (s *session) data() {
	switch {
	case !s.inMail:
		s.fail("503 5.5.1 Need MAIL first")
		return
	case len(s.rcpts) == 0:
		s.fail("554 5.5.1 No valid recipients")
		return
	}
	s.reply("354 End data with <CR><LF>.<CR><LF>")
	if s.end {
		return
	}
	// The 354 must reach the client before it sends the data.
	if s.bw.Buffered() > 0 {
		_ = s.c.SetWriteDeadline(time.Now().Add(s.w.spec.idleTimeout()))
		if s.bw.Flush() != nil {
			s.end = true
			return
		}
	}
	keep := s.p.spec.Sender && s.from == ""
	hdr, body, size, err := s.readData(keep)
	if err != nil {
		s.end = true
		return
	}
	rcpts := s.rcpts
	from := s.from
	s.resetTx()
	if size > s.w.spec.maxMessageBytes() {
		s.reply("552 5.3.4 Message too big")
		return
	}
	id, hasID := messageID(hdr)
	var report *dsnReport
	if keep {
		report = parseDSN(body)
	}
	s.w.record(s.p, id, hasID, rcpts, from, report)
	s.rcpts = rcpts[:0]
	s.reply("250 2.0.0 Ok: queued")
}

// readData reads a message's data up to the lone dot, dot-unstuffed. It
// returns the header (up to maxHeader bytes), the whole message when keep
// is set (up to maxReportBytes) and the size. Memory is bounded whatever
// the client sends.
func (s *session) readData(keep bool) (hdr, body []byte, size int64, err error) {
	atStart, inHeader := true, true
	for {
		_ = s.c.SetReadDeadline(time.Now().Add(s.w.spec.idleTimeout()))
		b, err := s.br.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, nil, 0, err
		}
		complete := err == nil
		if atStart && b[0] == '.' {
			if complete && len(trimEOL(b)) == 1 {
				return hdr, body, size, nil
			}
			b = b[1:]
		}
		if atStart && inHeader && complete && len(trimEOL(b)) == 0 {
			inHeader = false
		}
		if inHeader && len(hdr)+len(b) <= maxHeader {
			hdr = append(hdr, b...)
		}
		if keep && len(body)+len(b) <= maxReportBytes {
			body = append(body, b...)
		}
		size += int64(len(b))
		atStart = complete
	}
}

// messageID finds the Message-ID field in a header.
func messageID(hdr []byte) (string, bool) {
	lines := bytes.Split(hdr, []byte("\n"))
	for i := 0; i < len(lines); i++ {
		l := trimEOL(lines[i])
		name, val, ok := bytes.Cut(l, []byte(":"))
		if !ok || !bytes.EqualFold(bytes.TrimSpace(name), []byte("Message-ID")) {
			continue
		}
		v := string(val)
		for i+1 < len(lines) && len(lines[i+1]) > 0 && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			v += string(trimEOL(lines[i]))
		}
		v = strings.TrimSpace(v)
		return v, v != ""
	}
	return "", false
}

// record counts a message accepted for rcpts.
func (w *World) record(p *provider, id string, hasID bool, rcpts []string, from string, report *dsnReport) {
	p.mu.Lock()
	p.messages++
	if !hasID {
		p.noMessageID++
		p.recipients += int64(len(rcpts))
	}
	for _, r := range rcpts {
		if !hasID {
			break
		}
		key := id + "\x00" + lower(r)
		if n, ok := p.deliveries[key]; ok {
			p.deliveries[key] = n + 1
			p.duplicates++
			continue
		}
		p.recipients++
		if len(p.deliveries) < w.spec.maxTracked() {
			p.deliveries[key] = 1
		} else {
			w.untracked.Add(1)
		}
	}
	if report != nil || (p.spec.Sender && from == "") {
		p.dsn.Reports++
		if report == nil || !report.parsed {
			p.dsn.Unparsed++
		} else {
			p.dsn.OtherActions += int64(report.other)
			for _, a := range report.failed {
				if _, ok := p.dsn.Recipients[a]; ok || len(p.dsn.Recipients) < w.spec.maxTracked() {
					p.dsn.Recipients[a]++
				} else {
					w.untracked.Add(1)
				}
			}
		}
	}
	p.mu.Unlock()
	w.notify()
}

// parsePath parses "FROM:<addr> PARAM=V …" (or "TO:…"), the prefix
// matched without regard to case. The error text is the reply.
func parsePath(arg, prefix string, allowed func(string) bool) (string, map[string]string, error) {
	arg = strings.TrimSpace(arg)
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", nil, errors.New("501 5.5.4 Syntax: " + prefix + "<address>")
	}
	arg = strings.TrimLeft(arg[len(prefix):], " ")
	if !strings.HasPrefix(arg, "<") {
		return "", nil, errors.New("501 5.1.7 Address must be in angle brackets")
	}
	end := strings.IndexByte(arg, '>')
	if end < 0 {
		return "", nil, errors.New("501 5.1.7 Unterminated address")
	}
	addr := arg[1:end]
	// A source route (@a,@b:user@c) is ignored, as RFC 5321 allows.
	if strings.HasPrefix(addr, "@") {
		if i := strings.IndexByte(addr, ':'); i >= 0 {
			addr = addr[i+1:]
		}
	}
	params := make(map[string]string)
	for _, f := range strings.Fields(arg[end+1:]) {
		k, v, _ := strings.Cut(f, "=")
		k = strings.ToUpper(k)
		if !allowed(k) {
			return "", nil, fmt.Errorf("555 5.5.4 Unsupported parameter %s", k)
		}
		params[k] = v
	}
	return addr, params, nil
}

// parseReply splits "421 4.7.28 text" into its code and the rest.
func parseReply(r string) (int, string, error) {
	code, text, _ := strings.Cut(strings.TrimSpace(r), " ")
	n, err := strconv.Atoi(code)
	if err != nil || n < 200 || n > 599 || len(code) != 3 {
		return 0, "", fmt.Errorf("%q does not start with a reply code", r)
	}
	if text == "" {
		text = "Refused"
	}
	return n, text, nil
}

// lower is strings.ToLower for the ASCII addresses and names at hand.
func lower(s string) string { return strings.ToLower(s) }
