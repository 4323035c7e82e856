package listener

import (
	"fmt"

	"github.com/emersion/go-smtp"
)

// The replies Tern gives to refuse something, in one place so operators and
// tests can find every one. Codes follow RFC 5321 and the enhanced codes RFC
// 3463; clients script against them, so they change only with care.
var (
	errRelayDenied = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Relaying denied: authenticate first or send from an allowed address"}
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Authentication required"}
	errTLSRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Must issue a STARTTLS command first"}
	errAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8},
		Message: "Authentication credentials invalid"}
	errAuthTooMany = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Too many authentication failures, closing connection"}
	errAuthNeedsTLS = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11},
		Message: "Encryption required for requested authentication mechanism"}
	errTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: "Message size exceeds fixed maximum message size"}
	errTooManyRcpts = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
		Message: "Too many recipients"}
	errSpool = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Temporary failure writing the message to the spool, try again later"}
	errDiskFull = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1},
		Message: "Insufficient system storage, try again later"}
	errBadAddress = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "Bad recipient address syntax"}
	errBadSender = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7},
		Message: "Bad sender address syntax"}
	errBadHeader = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Message header could not be parsed"}
	errInternal = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Internal error, try again later"}
	// errNoMemory: max-inbound-buffer has no room for the message.
	errNoMemory = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1},
		Message: "Insufficient system resources, try again later"}
	// errNeedSMTPUTF8: RFC 6531 §3.7.4.1 gives 553 5.6.7 for a non-ASCII
	// address in a transaction that did not ask for SMTPUTF8.
	errNeedSMTPUTF8 = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
		Message: "Non-ASCII address without the SMTPUTF8 parameter"}
	// errEmptyMessage: nothing to deliver (BDAT 0 LAST alone, or DATA
	// with no line). The commands were in order, so it is not a
	// sequence error (5.5.x): the content is what is wrong, a message
	// with no header has no From or Date (RFC 5322 §3.6), and DATA's
	// failure code is 554.
	errEmptyMessage = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Empty message refused"}
)

// Replies written by the accept wrapper, before go-smtp sees the connection.
const (
	replyServiceDenied = "554 5.7.1 %s service not available to %s\r\n"
	replyTooManyConns  = "421 4.7.0 %s too many connections, try again later\r\n"
	replyTooManyFromIP = "421 4.7.0 %s too many connections from your address, try again later\r\n"
	replyShuttingDown  = "421 4.3.2 %s shutting down, try again later\r\n"
)

// unknownVMTA refuses a message whose X-Virtual-MTA names nothing: never a
// silent fallback to another VMTA.
func unknownVMTA(err error) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: err.Error()}
}

// accepted is the 250 that carries the queue id, sent once the message is
// durably spooled.
func accepted(id fmt.Stringer) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK " + id.String()}
}
