package config

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

func (b *builder) patternListBlock(n *node) {
	name, ok := b.blockName(n, "name")
	if !ok || !b.validName(n, name) {
		return
	}
	key := strings.ToLower(name)
	if prev, dup := b.patterns[key]; dup {
		b.errorf(n.Pos, "<pattern-list %s> is already defined at %s", name, shortPos(prev.Pos, n.Pos))
		return
	}
	pl := &PatternList{Pos: n.Pos, Name: name}
	for _, c := range n.Children {
		if !b.dispatch(c, scopePatternList) {
			continue
		}
		if c.Block {
			b.ignoredBlock(c, "nested pattern lists are not implemented; write their rules in the outer list")
			continue
		}
		patternListTable.apply(b, pl, c)
	}
	b.patterns[key] = pl
	b.cfg.PatternLists = append(b.cfg.PatternLists, pl)
}

var replyActionNames = []string{"mode=backoff", "mode=normal", "backoff", "backoff-to-normal-after=",
	"defer-queue", "bounce-rcpt", "skip-mx", "suspend", "disable-source-ip", "reroute=", "bounce-queue",
	"for=", "reenable-after=", "threshold="}

func (b *builder) smtpPatternListBlock(n *node) {
	name, ok := b.blockName(n, "name")
	if !ok || !b.validName(n, name) {
		return
	}
	key := strings.ToLower(name)
	if prev, dup := b.replies[key]; dup {
		b.errorf(n.Pos, "<smtp-pattern-list %s> is already defined at %s", name, shortPos(prev.Pos, n.Pos))
		return
	}
	sp := &SMTPPatternList{Pos: n.Pos, Name: name}
	for _, c := range n.Children {
		if b.dispatch(c, scopeSMTPPatternList) {
			smtpPatternListTable.apply(b, sp, c)
		}
	}
	b.replies[key] = sp
	b.cfg.SMTPPatternLists = append(b.cfg.SMTPPatternLists, sp)
}

// replyActions reads the actions of a reply rule and refuses contradictory
// combinations.
func (b *builder) replyActions(act *ReplyActions, c *node) bool {
	act.For = def(DefaultReplyFor)
	// seen maps what an action sets to the spelling that set it: backoff
	// and mode= both set the mode, for= and reenable-after= the duration.
	seen := map[string]string{}
	ok := true
	for _, a := range c.Args[1:] {
		for _, word := range strings.Split(a.Text, ",") {
			word = strings.TrimSpace(word)
			if word == "" {
				continue
			}
			k, v, hasVal := strings.Cut(word, "=")
			k = strings.ToLower(k)
			if !b.replyAction(act, c, a, word, k, v, hasVal, seen) {
				ok = false
			}
		}
	}
	bad := func(msg string) {
		b.errorf(c.Pos, "reply: %s", msg)
		ok = false
	}
	var stops []string
	for _, x := range []struct {
		on   bool
		name string
	}{{act.Suspend, "suspend"}, {act.BounceQueue, "bounce-queue"}, {act.Reroute != "", "reroute="}, {act.DeferQueue, "defer-queue"}} {
		if x.on {
			stops = append(stops, x.name)
		}
	}
	if len(stops) > 1 {
		bad(stops[0] + " and " + stops[1] + " exclude each other: a rule takes at most one of suspend, bounce-queue, reroute= and defer-queue")
	}
	if act.BounceRcpt && act.SkipMX {
		bad("bounce-rcpt and skip-mx contradict each other (one fails the recipient, the other keeps it for the next MX)")
	}
	if act.SkipMX {
		switch {
		case act.DeferQueue:
			bad("defer-queue and skip-mx contradict each other (one stops the queue, the other tries the next MX now)")
		case act.Suspend:
			bad("suspend and skip-mx contradict each other (one stops the queue, the other tries the next MX now)")
		case act.Reroute != "":
			bad("reroute= and skip-mx contradict each other (one moves the queue's mail to another virtual MTA, the other tries the next MX now)")
		case act.BounceQueue:
			bad("bounce-queue and skip-mx contradict each other (one bounces the queue's mail, the other keeps it for the next MX)")
		}
	}
	if act.BounceQueue && act.BounceRcpt {
		bad("bounce-queue and bounce-rcpt overlap (bounce-queue bounces this recipient with the rest of the queue); give one")
	}
	if act.BackoffToNormalAfter.Set && act.Mode != ModeBackoff {
		bad("backoff-to-normal-after= only makes sense with mode=backoff")
	}
	stateful := "an action that lasts: backoff, suspend, disable-source-ip, reroute= or bounce-queue"
	if act.For.Set {
		switch {
		case !act.Stateful():
			bad(seen["for"] + "= needs " + stateful)
		case act.BackoffToNormalAfter.Set:
			bad(seen["for"] + "= and backoff-to-normal-after= both say how long the backoff lasts; give one")
		case act.Mode == ModeBackoff:
			// for= is the duration of every lasting action of the rule,
			// the backoff's too.
			act.BackoffToNormalAfter = act.For
		}
	}
	if act.Threshold.Set && !act.Stateful() {
		bad("threshold= needs " + stateful)
	}
	return ok
}

// replyAction reads one action word of a reply rule (k the lower-cased name,
// v what follows '=', as written) into act, and reports an action given
// twice or unknown, or a bad value.
func (b *builder) replyAction(act *ReplyActions, c *node, a arg, word, k, v string, hasVal bool, seen map[string]string) bool {
	what := k
	switch k {
	case "backoff":
		what = "mode"
	case "reenable-after":
		what = "for"
	}
	if prev, dup := seen[what]; dup {
		switch {
		case prev == k:
			b.errorf(a.Pos, "reply: %s is given twice", k)
		case what == "mode":
			b.errorf(a.Pos, "reply: the mode is given twice (backoff is mode=backoff)")
		default:
			b.errorf(a.Pos, "reply: %s= and %s= are one setting (reenable-after= is PowerMTA's for=); give it once", prev, k)
		}
		return false
	}
	seen[what] = k
	bad := func(err error) bool {
		b.errorf(a.Pos, "reply: %s: %v", k, err)
		return false
	}
	switch {
	case k == "mode" && strings.EqualFold(v, "backoff"), k == "backoff" && !hasVal:
		act.Mode = ModeBackoff
	case k == "mode" && strings.EqualFold(v, "normal"):
		act.Mode = ModeNormal
	case k == "backoff-to-normal-after" && hasVal:
		d, err := durationOrNever(v)
		if err != nil {
			return bad(err)
		}
		act.BackoffToNormalAfter = Setting[time.Duration]{Value: d, Pos: c.Pos, Set: true}
	case k == "defer-queue" && !hasVal:
		act.DeferQueue = true
	case k == "bounce-rcpt" && !hasVal:
		act.BounceRcpt = true
	case k == "skip-mx" && !hasVal:
		act.SkipMX = true
	case k == "suspend" && !hasVal:
		act.Suspend = true
	case k == "disable-source-ip" && !hasVal:
		act.DisableSourceIP = true
	case k == "bounce-queue" && !hasVal:
		act.BounceQueue = true
	case k == "reroute" && hasVal:
		name, err := vmtaRef(v)
		if err != nil {
			return bad(err)
		}
		act.Reroute = name
		// Whether it exists is known once the whole file is read.
		b.reroutes = append(b.reroutes, nameRef{Pos: a.Pos, Name: name})
	case (k == "for" || k == "reenable-after") && hasVal:
		d, err := positiveDuration(v)
		if err != nil {
			return bad(err)
		}
		act.For = Setting[time.Duration]{Value: d, Pos: c.Pos, Set: true}
	case k == "threshold" && hasVal:
		r, err := parseRate(v)
		if err != nil || r.Unlimited() {
			return bad(fmt.Errorf("%q is not a count of matches per interval (write N/DURATION, as in threshold=5/1m)", v))
		}
		act.Threshold = Setting[Rate]{Value: r, Pos: c.Pos, Set: true}
	default:
		try := word
		if hasVal {
			try = k + "="
		}
		b.errorf(a.Pos, "reply: unknown action %q%s", word, didYouMean(try, replyActionNames, "%q"))
		return false
	}
	return true
}

// nameRef is a VMTA or pool name written at Pos, to check once every block
// is read.
type nameRef struct {
	Pos  Position
	Name string
}

// rollupName is the shape of a rollup name: a lower-case host-name-like
// label, letters, digits, dots and dashes.
var rollupName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)

// mxRollupListBlock reads an <mx-rollup-list>: `mx HOST-PATTERN NAME`
// lines. The block may appear several times; the entries of all of them
// form one list in file order. One host pattern has one rollup name.
func (b *builder) mxRollupListBlock(n *node) {
	if len(n.Args) > 0 {
		b.errorf(n.Args[0].Pos, "<mx-rollup-list> takes no argument")
	}
	for _, c := range n.Children {
		if b.dispatch(c, scopeMXRollupList) {
			mxRollupTable.apply(b, b.cfg, c)
		}
	}
}

// mxRollup reads one `mx HOST-PATTERN NAME` entry.
func (b *builder) mxRollup(c *node) {
	if len(c.Args) == 3 && strings.EqualFold(c.Args[2].Text, "rollup-by-ip") {
		// PowerMTA's rollup-by-ip keys the queue by the MX addresses;
		// Tern keys it by the host names, which follow them.
		b.warnf(c.Args[2].Pos, "mx: rollup-by-ip is ignored: Tern rolls up by MX host name")
		c = &node{Pos: c.Pos, Name: c.Name, Args: c.Args[:2]}
	}
	if len(c.Args) != 2 {
		b.errorf(c.Pos, "mx takes an MX host pattern and a rollup name: mx *.google.com gmail.rollup")
		return
	}
	pa, na := c.Args[0], c.Args[1]
	p, err := parseDomainPattern(pa.Text)
	if err != nil {
		b.errorf(pa.Pos, "mx: %q is not an MX host pattern (use mx.example.com, *.example.com or [*.]example.com)", pa.Text)
		return
	}
	if p.Kind == PatternAny {
		b.errorf(pa.Pos, "mx: * would roll every domain into one queue; name the provider's MX hosts, as in *.google.com")
		return
	}
	name := strings.ToLower(strings.TrimSuffix(na.Text, "."))
	if !rollupName.MatchString(name) || !validHostname(name) {
		b.errorf(na.Pos, "mx: %q is not a rollup name (a host-name-like label of letters, digits, dots and dashes, as in gmail.rollup)", na.Text)
		return
	}
	if prev, dup := b.rollups[p]; dup {
		if prev.Name != name {
			b.errorf(c.Pos, "mx %s: the pattern already rolls up to %s at %s; one MX host pattern has one rollup name", p, prev.Name, shortPos(prev.Pos, c.Pos))
		}
		return // the same entry again adds nothing
	}
	r := &MXRollup{Pos: c.Pos, Pattern: p, Name: name}
	b.rollups[p] = r
	b.cfg.MXRollups = append(b.cfg.MXRollups, r)
}

// patternRule reads one rule of a <pattern-list>: `mail-from /RE/
// virtual-mta=NAME`, `rcpt-to …`, or `header NAME /RE/ virtual-mta=NAME`.
func (b *builder) patternRule(pl *PatternList, c *node, field PatternField) {
	r := PatternRule{Pos: c.Pos, Field: field}
	args := c.Args
	if field == MatchHeader {
		if len(args) == 0 {
			b.errorf(c.Pos, "header needs a header name, a /regex/ and virtual-mta=NAME")
			return
		}
		h, err := headerName(strings.TrimSuffix(args[0].Text, ":"))
		if err != nil {
			b.errorf(args[0].Pos, "header: %v", err)
			return
		}
		r.Header, args = h, args[1:]
	}
	if len(args) != 2 {
		b.errorf(c.Pos, "%s takes a /regex/ and virtual-mta=NAME", c.Name)
		return
	}
	re, err := parseRegex(args[0].Text)
	if err != nil {
		b.errorf(args[0].Pos, "%s: %v", c.Name, err)
		return
	}
	r.Regexp = re
	action, extra, _ := strings.Cut(args[1].Text, ",")
	if extra != "" {
		// PowerMTA's recipient-priority= orders recipients in a queue;
		// Tern's queues are first in, first out.
		b.warnf(args[1].Pos, "%s: %q is ignored: Tern delivers a queue's recipients in the order they arrived; only virtual-mta= is applied", c.Name, extra)
	}
	k, v, _ := strings.Cut(action, "=")
	if !strings.EqualFold(k, "virtual-mta") || v == "" {
		b.errorf(args[1].Pos, "%s: expected virtual-mta=NAME, found %q", c.Name, args[1].Text)
		return
	}
	r.VirtualMTA = v
	pl.Rules = append(pl.Rules, r)
}

// replyRule reads one `reply /RE/ ACTIONS` line of an <smtp-pattern-list>.
func (b *builder) replyRule(sp *SMTPPatternList, c *node) {
	if len(c.Args) < 2 {
		b.errorf(c.Pos, "reply takes a /regex/ and actions: reply /421 .*\\[TS01\\]/ mode=backoff")
		return
	}
	re, err := parseRegex(c.Args[0].Text)
	if err != nil {
		b.errorf(c.Args[0].Pos, "reply: %v", err)
		return
	}
	rule := ReplyRule{Pos: c.Pos, Regexp: re}
	if b.replyActions(&rule.Actions, c) {
		sp.Rules = append(sp.Rules, rule)
	}
}
