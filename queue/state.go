package queue

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// Small named state beside the mail. Delivery keeps what it learned and
// must not forget at a restart (a traffic-shaping rule that suspended a
// provider until tomorrow, a source address disabled for a provider) in the
// spool with the mail, so one directory holds all of Tern's state and a
// restart or a crash cannot lift a suspension early. It is a handful of
// small records, written rarely: every write is synced on its own.

// stateKeyPrefix is where named state lives: under s/, beside the ID
// high-water mark, outside the m/ range the scan at Open reads.
const stateKeyPrefix = "s/k/"

// maxStateName bounds a state name, so a key stays small.
const maxStateName = 512

func stateKey(name string) ([]byte, error) {
	if name == "" || len(name) > maxStateName {
		return nil, fmt.Errorf("%w: state name of %d bytes", ErrInvalid, len(name))
	}
	return []byte(stateKeyPrefix + name), nil
}

// PutState stores value under name, replacing what was there, and
// returns once the write is durable.
func (q *Queue) PutState(name string, value []byte) error {
	k, err := stateKey(name)
	if err != nil {
		return err
	}
	return q.writeState(func(b *pebble.Batch) error { return b.Set(k, value, nil) })
}

// DeleteState removes name; removing a name that is not there is no error.
func (q *Queue) DeleteState(name string) error {
	k, err := stateKey(name)
	if err != nil {
		return err
	}
	return q.writeState(func(b *pebble.Batch) error { return b.Delete(k, nil) })
}

func (q *Queue) writeState(op func(*pebble.Batch) error) error {
	if err := q.enter(); err != nil {
		return err
	}
	defer q.leave()
	b := q.db.NewBatch()
	if err := op(b); err != nil {
		_ = b.Close()
		return err
	}
	if err := commitSync(b); err != nil {
		q.fail(err)
		return fmt.Errorf("queue: write state: %w", err)
	}
	return nil
}

// States returns every stored state whose name starts with prefix, by
// name.
func (q *Queue) States(prefix string) (map[string][]byte, error) {
	if err := q.enter(); err != nil {
		return nil, err
	}
	defer q.leave()
	lo := []byte(stateKeyPrefix + prefix)
	hi := append(bytes.Clone(lo), 0xff)
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := map[string][]byte{}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("queue: read state: %w", err)
		}
		out[strings.TrimPrefix(string(it.Key()), stateKeyPrefix)] = bytes.Clone(v)
	}
	return out, nil
}
