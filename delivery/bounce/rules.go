package bounce

import "regexp"

// The rule tables. Each is ordered: the first matching entry wins. They are
// built once at package initialisation and only read afterwards. To extend
// the classifier, add an entry in the right place; every entry should come
// with a test reply in testdata/replies.txt.

// enhancedRule maps the subject and detail of an enhanced status code (any
// class) to a category. A refinable rule only supplies a fallback: the reply
// text is consulted first, as the code is generic or used loosely in the
// wild.
type enhancedRule struct {
	subject         int
	detail, detail2 int // detail range, inclusive; anyDetail for all
	cat             Category
	refine          bool
}

const anyDetail = -1

func (r enhancedRule) matches(e Enhanced) bool {
	if r.subject != e.Subject {
		return false
	}
	if r.detail == anyDetail {
		return true
	}
	hi := r.detail2
	if hi < r.detail {
		hi = r.detail
	}
	return e.Detail >= r.detail && e.Detail <= hi
}

// exact and refinable build enhancedRules entries: sd is subject, detail
// and optionally the last detail of a range.
func exact(c Category, sd ...int) enhancedRule     { return newEnhanced(c, false, sd) }
func refinable(c Category, sd ...int) enhancedRule { return newEnhanced(c, true, sd) }

func newEnhanced(c Category, refine bool, sd []int) enhancedRule {
	r := enhancedRule{subject: sd[0], detail: sd[1], cat: c, refine: refine}
	if len(sd) > 2 {
		r.detail2 = sd[2]
	}
	return r
}

// enhancedRules follows RFC 3463 and its updates (RFC 4954, 7372, 7505).
var enhancedRules = []enhancedRule{
	// x.1.x addressing.
	exact(BadMailbox, 1, 1),      // bad destination mailbox address
	exact(BadDomain, 1, 2),       // bad destination system address
	exact(BadMailbox, 1, 3),      // bad destination mailbox address syntax
	exact(BadMailbox, 1, 4),      // destination mailbox address ambiguous
	exact(InactiveMailbox, 1, 6), // destination mailbox has moved
	exact(InvalidSender, 1, 7),   // bad sender's mailbox address syntax
	exact(InvalidSender, 1, 8),   // bad sender's system address
	// x.1.10 is "recipient address has null MX" (RFC 7505), but Microsoft
	// uses 5.1.10 for "RecipientNotFound": let the text tell them apart.
	refinable(BadDomain, 1, 10),
	refinable(BadMailbox, 1, anyDetail),
	// x.2.x mailbox status.
	exact(QuotaIssues, 2, 2), // mailbox full
	// x.2.1 is "mailbox disabled", but Gmail also uses it for a recipient
	// receiving mail at too high a rate.
	refinable(InactiveMailbox, 2, 1),
	exact(ContentRelated, 2, 3), // message length exceeds administrative limit
	refinable(BadMailbox, 2, anyDetail),
	// x.3.x mail system status.
	exact(QuotaIssues, 3, 1),      // mail system full
	exact(ContentRelated, 3, 4),   // message too big for system
	exact(BadConfiguration, 3, 5), // system incorrectly configured
	refinable(Other, 3, anyDetail),
	// x.4.x network and routing status.
	refinable(NoAnswerFromHost, 4, 1), // no answer from host (Microsoft: "Recipient address rejected")
	exact(BadConnection, 4, 2),        // bad connection
	refinable(RoutingErrors, 4, 3),    // directory server failure
	refinable(RoutingErrors, 4, 4),    // unable to route (Microsoft: nonexistent domain)
	exact(RoutingErrors, 4, 6),        // routing loop detected
	exact(MessageExpired, 4, 7),       // delivery time expired
	refinable(RoutingErrors, 4, anyDetail),
	// x.5.x protocol status; Microsoft's "5.5.0 mailbox unavailable" is why
	// the text goes first.
	refinable(ProtocolErrors, 5, anyDetail),
	// x.6.x message content or media status.
	refinable(ContentRelated, 6, anyDetail),
	// x.7.x security or policy status.
	// AUTH credentials or mechanism, encryption required; Yahoo also uses
	// 5.7.9 for "not accepted for policy reasons".
	refinable(BadConfiguration, 7, 8, 11),
	exact(PolicyRelated, 7, 20, 27), // DKIM, SPF, reverse DNS, DMARC, null MX sender
	refinable(PolicyRelated, 7, anyDetail),
	// x.0.x other or undefined.
	refinable(Other, 0, anyDetail),
}

// textRule maps a regular expression over the lower-cased reply to a
// category. For speed the expression is also kept split into its top-level
// alternatives, each with a prefilter (see prefilterOf): most are skipped
// after a few substring searches, and the rest are small regexps.
type textRule struct {
	re    *regexp.Regexp
	cat   Category
	parts []rulePart
}

type rulePart struct {
	re     *regexp.Regexp
	filter []string
}

func rule(c Category, pattern string) textRule {
	r := textRule{re: regexp.MustCompile(pattern), cat: c}
	for _, alt := range alternatives(pattern) {
		r.parts = append(r.parts, rulePart{regexp.MustCompile(alt), prefilterOf(alt)})
	}
	return r
}

// match reports whether the rule matches text.
func (r *textRule) match(text string) bool {
	for i := range r.parts {
		p := &r.parts[i]
		if mayMatch(p.filter, text) && p.re.MatchString(text) {
			return true
		}
	}
	return false
}

// localRules classify Tern's own diagnostics for failures that produced no
// SMTP reply ("connection failed: ..." and DNS routing errors).
var localRules = []textRule{
	rule(BadConfiguration, `does not offer starttls|doesn'?t support (starttls|auth)|does not support (starttls|auth)|needs tls|require-starttls`),
	rule(RoutingErrors, `mx lookup for .* failed|no address for|no mx, a or aaaa`),
	rule(BadDomain, `no such host|nxdomain|does not exist|null mx|accepts no mail`),
	rule(BadConnection, `starttls refused|tls handshake|\btls: |x509: |certificate`),
	rule(NoAnswerFromHost, `i/o timeout|timed? ?out|deadline exceeded|no route to host|(host|network) (is )?(unreachable|down)`),
	rule(BadConnection, `connection refused|reset by peer|broken pipe|\beof\b|closed|connection failed`),
}

// textRules classify remote replies by their text, most specific first.
var textRules = []textRule{
	rule(VirusRelated, `virus|malware|trojan|\bworm\b|infected`),
	rule(MessageExpired, `message (has )?expired|expired in (the )?queue|too long in (the )?queue|queue lifetime|delivery time expired`),
	rule(SpamRelated, `spam|unsolicited|junk mail|bulk mail|phish|`+
		`block ?list|blocklisted|black ?list|blacklisted|deny ?list|`+
		`(is|are|was|been|currently|ip|address|host) listed (on|in|at|by)\b|blocked using|`+
		`\brbl\b|dnsbl|uribl|surbl|spamhaus|spamcop|barracuda|sorbs|\b[psx]bl\b|`+
		`reputation|complaint|banned sending ip|delist`),
	rule(PolicyRelated, `gr[ae]ylist`),
	rule(QuotaIssues, `quota|mailbox (is )?full|mailbox.{0,40}\bfull\b|insufficient (system )?storage|out of storage|storage (allocation|limit|space)|exceeded storage|disk full|receiving mail (at|too)`),
	rule(RelayingIssues, `relay(ing)? (access )?(denied|not (permitted|allowed)|prohibited|refused)|(unable|not permitted|not allowed|not authori[sz]ed) to relay|we do not relay|no relaying|relaying denied`),
	rule(InvalidSender, `sender (address )?(rejected|invalid|unknown|domain|verify|verification)|(invalid|unknown|bad) sender|verification failed for|from address (rejected|invalid)|mail from.{0,40}rejected|return.?path`),
	rule(InactiveMailbox, `disabled|inactive|deactivated|suspended|discontinued|dormant|account (has )?expired|(account|mailbox) (is |has been )?(closed|locked|frozen)|no longer (active|in use|valid|available)|(has|have) moved`),
	rule(BadDomain, `domain not found|domain (name )?(does ?n[o']?t|not) exist|(unknown|invalid|non-?existent|unresolvable) (recipient )?domain|domain (is )?(unknown|invalid)|host (or domain name )?not found|host unknown|unknown host|no such (host|domain)|\bno mx\b|null mx|accepts no mail|unrout(e)?able`),
	rule(BadMailbox, `user unknown|unknown (user|recipient|mailbox|address|local.?part|alias)|no such (user|mailbox|recipient|address|account|person)|does ?n[o']?t exist|not exist|doesn'?t have an? [\w.-]+ account|`+
		`(user|recipient|mailbox|address|account|addressee)( name)? (is )?(unknown|not found|invalid|not listed)|mailbox (is )?(unavailable|not found|not available)|no mailbox|`+
		`recipient (address )?rejected|invalid (recipient|mailbox|address|user)|bad (recipient|destination)|not a valid (mailbox|recipient|user|address)|undeliverable address|not our customer|recipient verify|callout verification`),
	rule(ContentRelated, `message (size|length|too)|(size|length) (exceeds|limit)|exceeds? (the )?(maximum|max|fixed|size)|too (big|large)|content|attachment|\bmime\b|file type`),
	rule(PolicyRelated, `dmarc|\bspf\b|dkim|unauthenticated|authentication (check|fail)|\bptr\b|reverse dns|\brdns\b`),
	rule(BadConfiguration, `starttls|tls (is )?required|encryption required|requires? (tls|encryption)|auth(entication)? (is )?required|loops? back to myself`),
	rule(RoutingErrors, `mail loop|loop(ing)? detected|too many hops|hop count|routing loop`),
	rule(PolicyRelated, `policy|prohibit|not (allowed|permitted|authori[sz]ed|accepted)|access denied|denied|rate.?limit|too many (connections|messages|recipients|concurrent)|throttl|deferred|blocked|refused|rejected for`),
	rule(ProtocolErrors, `syntax|(command|verb) (not )?(unrecognized|recognized|implemented)|unrecognized command|bad sequence|need (mail|rcpt|helo|ehlo)|line too long|pipelining`),
}

// basicRule maps a range of basic reply codes to a category, for replies
// with neither an enhanced code nor a recognised text.
type basicRule struct {
	lo, hi int
	cat    Category
}

var basicRules = []basicRule{
	{500, 504, ProtocolErrors},
	{530, 530, BadConfiguration},
	{552, 552, QuotaIssues},
}
