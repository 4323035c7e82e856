// Package listener runs Tern's inbound SMTP listeners: it accepts mail from
// applications, applies the <source> policy of each session (service,
// relaying, AUTH, STARTTLS, sizes, headers), picks the VMTA of each message
// and spools it. A message is answered 250 only after queue.Put returned,
// which is after a synced commit: an acknowledged message survives a crash.
//
// The SMTP protocol engine is the package's own (smtpd.go): it reads and
// checks commands and calls the session (session.go), which makes every
// policy decision. A wrapper around each listener's socket refuses
// connections before the greeting when the source has smtp-service no or
// the inbound connection cap is reached, as PowerMTA does.
package listener
