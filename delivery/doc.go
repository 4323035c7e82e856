// Package delivery sends queued mail to the recipients' servers through its
// VMTA: from the VMTA's source IP, greeting with its host name, within the
// destination's limits, retrying on its schedule.
//
// A Scheduler runs one runner per non-empty queue key (VMTA, domain). A
// runner starts connection workers up to the queue's max-smtp-out (and the
// VMTA's and the global caps); each worker leases due recipients, carries
// them over one reused SMTP connection and reports every recipient's
// outcome to the queue. Only the queue decides what is due; the scheduler
// decides how many connections work on it.
package delivery
