package world

import (
	"bufio"
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
)

// dsnReport is what a bounce report says about its recipients.
type dsnReport struct {
	// parsed is false when no message/delivery-status part was found.
	parsed bool
	// failed are the recipients with Action: failed (Original-Recipient,
	// else Final-Recipient), lower case.
	failed []string
	// other counts the recipients with another action.
	other int
}

// parseDSN reads an RFC 3464 report: a multipart/report whose
// message/delivery-status part holds a block of per-message fields, then
// a block per recipient.
func parseDSN(msg []byte) *dsnReport {
	r := &dsnReport{}
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return r
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		return r
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err != nil {
			return r
		}
		pt, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		if pt != "message/delivery-status" && pt != "message/global-delivery-status" {
			continue
		}
		r.parsed = readStatus(part, r)
		return r
	}
}

// readStatus reads the blocks of a delivery-status body into r.
func readStatus(body io.Reader, r *dsnReport) bool {
	tp := textproto.NewReader(bufio.NewReader(io.LimitReader(body, maxReportBytes)))
	first := true
	for {
		h, err := tp.ReadMIMEHeader()
		if len(h) > 0 {
			if first {
				// The per-message fields (Reporting-MTA, …).
				first = false
			} else {
				addr := fieldAddress(h.Get("Original-Recipient"))
				if addr == "" {
					addr = fieldAddress(h.Get("Final-Recipient"))
				}
				action := strings.ToLower(strings.TrimSpace(h.Get("Action")))
				if action == "failed" && addr != "" {
					r.failed = append(r.failed, addr)
				} else if addr != "" {
					r.other++
				}
			}
		}
		if err != nil {
			return !first
		}
	}
}

// fieldAddress is the address of "rfc822; user@example.com", lower case.
func fieldAddress(v string) string {
	if _, a, ok := strings.Cut(v, ";"); ok {
		v = a
	}
	v = strings.TrimSpace(v)
	v = strings.TrimSuffix(strings.TrimPrefix(v, "<"), ">")
	return lower(v)
}
