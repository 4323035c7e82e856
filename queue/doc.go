// Package queue is Tern's durable mail queue: a spool on pebble plus an
// in-memory ready index per queue key.
//
// # Durability
//
// Every message Tern acknowledges must survive kill -9, so Put returns a
// queue ID only after the pebble batch holding the envelope, the body and
// every recipient has been committed with a synced WAL write. The batch is
// atomic: after a crash a message is either entirely present or entirely
// absent. Concurrent Puts commit through pebble's commit pipeline, which
// groups their WAL syncs, so callers are never serialised behind one lock for
// the duration of an fsync.
//
// Delivery outcomes (delivered, deferred, bounced) are recorded
// asynchronously: Lease.Report updates the in-memory index at once and hands
// the spool mutations to one background committer, which writes everything
// reported since its last commit in one synced pebble batch. Waiting for that
// commit would not make a delivery safer (the remote server already has the
// message; a crash before the outcome is durable repeats the delivery either
// way) but it would cap a worker at one outcome per fsync. Queue.Flush waits
// until everything reported before it is durable. Delivery is therefore at
// least once: a crash may repeat a delivery, never lose one.
//
// # Spool layout
//
// One pebble database holds, for each message with 64-bit ID id (big-endian
// in keys so that keys sort by ID, that is by time):
//
//	m/<id>       envelope: sender, time received, source IP, auth user, job,
//	             envelope ID, DSN RET, size, recipient count
//	m/<id>/<n>   recipient n (32-bit big-endian): address, domain, VMTA,
//	             pool, ORCPT, NOTIFY, attempts, next attempt, last attempt,
//	             last reply
//	b/<id>       body, exactly as given to Put
//	j/<n>        journal entry n (64-bit big-endian): an opaque record
//	             committed with the change it belongs to (journal.go)
//	s/hw         high-water mark of issued IDs (a max-merge operand per Put)
//	s/k/<name>   small named state (state.go)
//
// The recipients sit right after their envelope, so reading a message for
// a lease is one short forward seek, and bodies sort apart so the scan at
// Open never reads them. A recipient record exists while the recipient is
// not final; it is deleted by the outcome that makes it final, and the
// envelope and body are deleted in the same batch as the last recipient
// record. Leases are never written: a recipient that was leased when the
// process died has an unchanged record and is therefore due again after
// Open.
//
// # Ready index
//
// Open scans the envelopes and recipient records once (never the bodies) and
// builds, for each queue key (VMTA, domain), a FIFO of due recipients and a
// min-heap of deferred ones ordered by next-attempt time. A single timer,
// armed for the earliest deferral of all keys, moves deferrals into their
// FIFO when they come due. The index holds only what scheduling needs; see
// the note in index.go for its size per recipient.
//
// # Workers
//
// A delivery worker calls Lease for up to N due recipients of one key, gets
// them grouped by message (one SMTP transaction can carry several recipients
// of the same message), reads the body with Body, reports each recipient's
// outcome with Lease.Report and hands back anything unreported with
// Lease.Release. A worker with nothing to do blocks in Wait, which returns
// when the key has due recipients again; Options.OnReady tells a scheduler
// when a key becomes ready, so it can start a worker. Neither polls.
package queue
