// Package acct writes Tern's accounting files: the CSV records of what
// happened to every recipient (delivered, bounced, transiently failed,
// received), one file per <acct-file> block of the configuration, or one
// program's standard input per <acct-file |PROGRAM> block (a Pipe, see
// pipe.go). record-fields choose a file's columns (layout.go).
//
// A Writer owns one file. It filters records by the block's `records` list,
// buffers lines and flushes them at least once a second (and on Flush and
// Close), and rotates the file when the next line would take it past
// `max-size` or when `move-interval` has elapsed since it was opened: the
// full file is renamed with a UTC timestamp suffix (acct.csv becomes
// acct-20261125T171500.123Z.csv) and a new one is started with a header line.
// A rotation never splits a line between two files, loses one or writes one
// twice; if the rename fails, lines keep going to the current file and the
// rotation is retried a minute later. Rotated files go to move-to when set,
// and delete-after deletes them once old enough. A Set fans records out to
// every file and pipe of a configuration; a reload applies a new
// configuration's files to it in two phases, Set.Prepare (open the new
// files and start the new pipes, which may fail) and Change.Commit (switch,
// then close what is no longer configured), so a record is never lost or
// split between configurations.
//
// A Writer that finds a file already at its path appends to it when it is a
// complete accounting file (the header first, a whole line last), counting
// move-interval from the time it was opened; anything else is moved aside
// first.
//
// tern serve does not write records directly: it opens its files with
// Options.Journaled and hands each record to the spool, committed with the
// event it records, and a Journal writes them out (journal.go). Records
// then survive any crash exactly once in the files; pipes get them from
// the Journal too, but buffered in memory, without that guarantee.
//
// Writers, Pipes and Sets are safe for concurrent use.
package acct

import (
	"strconv"
	"time"
)

// Record types, as written in the type column and in `records` lists.
const (
	TypeDelivered byte = 'd'
	TypeBounced   byte = 'b'
	TypeTransient byte = 't'
	TypeReceived  byte = 'r'
)

// Columns are the CSV columns of an accounting file, in order; the header
// line of every file lists them. Do not modify.
var Columns = []string{
	"type", "timeLogged", "timeQueued", "orig", "rcpt", "orcpt",
	"dsnAction", "dsnStatus", "dsnDiag", "dsnMta", "bounceCat",
	"srcType", "srcMta",
	"dlvType", "dlvSourceIp", "dlvDestinationIp", "dlvEsmtpAvailable", "dlvSize",
	"vmta", "jobId", "envId", "queue", "vmtaPool",
}

// TimeFormat is the layout of the time columns: ISO 8601 with the zone
// (RFC 3339).
const TimeFormat = time.RFC3339

// Record is one recipient outcome. Zero fields are written as empty columns,
// except TimeLogged, which the Writer fills with the current time when it is
// zero.
type Record struct {
	// Type is TypeDelivered, TypeBounced, TypeTransient or TypeReceived.
	Type byte
	// TimeLogged is when the outcome happened; TimeQueued when the message
	// was accepted.
	TimeLogged time.Time
	TimeQueued time.Time
	// Orig is the envelope sender, Rcpt the recipient and ORcpt the DSN
	// original recipient (ORCPT=) when one was given.
	Orig  string
	Rcpt  string
	ORcpt string
	// DSNAction is the DSN action (delivered, failed, delayed, relayed),
	// DSNStatus the enhanced status code ("5.1.1 (bad destination mailbox
	// address)"), DSNDiag the diagnostic (the remote reply, "smtp;550 5.1.1
	// no such user") and DSNMta the remote MTA ("dns;mx.example.com
	// (192.0.2.1)").
	DSNAction string
	DSNStatus string
	DSNDiag   string
	DSNMta    string
	// BounceCat is the bounce category (bad-mailbox, policy-related, …).
	BounceCat string
	// SrcType is how the message came in (smtp, api, …) and SrcMta the
	// client that submitted it.
	SrcType string
	SrcMta  string
	// DlvType is how it was delivered (smtp), DlvSourceIP and
	// DlvDestinationIP the two ends of the connection, DlvESMTPAvailable the
	// extensions the server offered and DlvSize the message size in bytes
	// (zero: empty column).
	DlvType           string
	DlvSourceIP       string
	DlvDestinationIP  string
	DlvESMTPAvailable string
	DlvSize           int64
	// VMTA, JobID, EnvID, Queue and VMTAPool identify the message and where
	// it was sent from.
	VMTA     string
	JobID    string
	EnvID    string
	Queue    string
	VMTAPool string
	// Message is the message the record is about, or its header section,
	// when it is at hand (nil otherwise): record-fields' header_NAME
	// fields read it. Only the header section is looked at, and only by
	// files that have such fields; the record keeps no copy.
	Message []byte
}

// fields fills dst (len(Columns) long) with the record's columns.
func (r *Record) fields(dst []string) {
	dst[0] = string(rune(r.Type))
	dst[1] = formatTime(r.TimeLogged)
	dst[2] = formatTime(r.TimeQueued)
	dst[3] = r.Orig
	dst[4] = r.Rcpt
	dst[5] = r.ORcpt
	dst[6] = r.DSNAction
	dst[7] = r.DSNStatus
	dst[8] = r.DSNDiag
	dst[9] = r.DSNMta
	dst[10] = r.BounceCat
	dst[11] = r.SrcType
	dst[12] = r.SrcMta
	dst[13] = r.DlvType
	dst[14] = r.DlvSourceIP
	dst[15] = r.DlvDestinationIP
	dst[16] = r.DlvESMTPAvailable
	dst[17] = ""
	if r.DlvSize != 0 {
		dst[17] = strconv.FormatInt(r.DlvSize, 10)
	}
	dst[18] = r.VMTA
	dst[19] = r.JobID
	dst[20] = r.EnvID
	dst[21] = r.Queue
	dst[22] = r.VMTAPool
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(TimeFormat)
}
