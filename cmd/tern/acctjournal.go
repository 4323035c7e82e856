package main

import (
	"context"

	"github.com/ternmta/tern/delivery"
	"github.com/ternmta/tern/delivery/acct"
	"github.com/ternmta/tern/queue"
)

// journaledSpool is the listeners' spool: it stores each message with the
// r accounting records of its recipients in the same commit (the queue's
// journal), so that a crash never keeps a message without its records or
// the records of a message it lost.
type journaledSpool struct {
	q *queue.Queue
	j *acct.Journal
}

func (s journaledSpool) Put(ctx context.Context, m queue.Message) (queue.ID, error) {
	if !s.j.Accepts(acct.TypeReceived) {
		return s.q.Put(ctx, m)
	}
	return s.q.PutJournaled(ctx, m, s.received)
}

// received returns the r records of m, accepted as id, as journal entries.
func (s journaledSpool) received(dst [][]byte, id queue.ID, m *queue.Message) [][]byte {
	for _, rc := range m.Recipients {
		dst = append(dst, s.j.Entry(delivery.ReceivedRecord(id, m, rc)))
	}
	return dst
}
