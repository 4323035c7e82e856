package dsn

import (
	"fmt"
	"strings"

	"github.com/emersion/go-message"
)

// textWidth is where the human-readable part is wrapped.
const textWidth = 72

// humanText returns the human-readable explanation, CRLF-terminated lines.
func (b *builder) humanText() string {
	var s strings.Builder
	para := func(text string) {
		wrapText(&s, text, "", textWidth)
		s.WriteString("\r\n")
	}
	para("This is the mail delivery system at " + b.host + ".")

	groups := []struct {
		action Action
		intro  string
	}{
		{ActionFailed, "Your message could not be delivered to the recipients below. " +
			"Delivery has been given up and will not be attempted again."},
		{ActionDelayed, "Your message has not yet been delivered to the recipients below. " +
			"Delivery is still being attempted; you do not need to send the message again."},
		{ActionDelivered, "Your message was delivered to the recipients below."},
		{ActionRelayed, "Your message was relayed to the recipients below, " +
			"to a destination that may not send further notifications."},
		{ActionExpanded, "Your message was delivered to the recipients below, " +
			"which were expanded to further recipients."},
	}
	for _, g := range groups {
		if !b.anyAction(g.action) {
			continue
		}
		para(g.intro)
		for _, r := range b.rcpts {
			if r.action() != g.action {
				continue
			}
			b.describe(&s, r)
			s.WriteString("\r\n")
		}
	}

	switch {
	case b.in.Original == nil:
	case b.full:
		para("Your message is attached below.")
	case b.tooBig:
		para("Your message was too large to be returned whole; its headers are attached below.")
	default:
		para("The headers of your message are attached below.")
	}
	postmaster := strings.TrimSpace(b.in.Postmaster)
	if postmaster == "" {
		postmaster = "postmaster@" + b.host
	}
	wrapText(&s, "If you need help, contact the postmaster at <"+postmaster+"> and include this report.", "", textWidth)
	return s.String()
}

// describe writes what happened to one recipient: the address, the server
// and its reply, one reply line to a line.
func (b *builder) describe(s *strings.Builder, r Recipient) {
	addr := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(r.Address), "<"), ">")
	wrapText(s, "<"+addr+">", "", textWidth)
	lines := replyLinesOf(r.Diagnostic)
	_, isReply := replyCode(r.Diagnostic)
	switch {
	case len(lines) == 0:
		wrapText(s, fmt.Sprintf("(status %s, no further detail)", statusOf(r)), "    ", textWidth)
	case isReply && r.RemoteMTA != "":
		wrapText(s, "The mail server "+r.RemoteMTA+" replied:", "    ", textWidth)
	case isReply:
		wrapText(s, "The mail server replied:", "    ", textWidth)
	default:
		wrapText(s, "The reason given was:", "    ", textWidth)
	}
	for _, l := range lines {
		wrapText(s, l, "        ", textWidth)
	}
	if r.action() == ActionDelayed && !r.RetryUntil.IsZero() {
		wrapText(s, "Delivery will be attempted until "+formatDate(r.RetryUntil)+".", "    ", textWidth)
	}
}

func (b *builder) textPart(mw *message.Writer) error {
	text := b.humanText()
	charset, cte := "us-ascii", "7bit"
	if !isASCII([]byte(text)) {
		text = strings.ToValidUTF8(text, "\uFFFD")
		charset, cte = "utf-8", "quoted-printable"
	}
	w, err := b.partWriter(mw,
		"Content-Description", "Notification",
		"Content-Type", "text/plain; charset="+charset,
		"Content-Transfer-Encoding", cte,
	)
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(text)); err != nil {
		return fmt.Errorf("dsn: %w", err)
	}
	return w.Close()
}
