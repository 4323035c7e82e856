package queue

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"time"
)

// ID identifies a queued message. It is the Unix time in nanoseconds at which
// Put assigned it, bumped by one where needed to stay unique, so IDs sort by
// arrival and keys built from them keep the spool in time order. IDs are
// unique within a process and across restarts: Open seeds the generator above
// both the highest ID in the spool and the persisted high-water mark of every
// ID ever issued, so even a clock that went backwards does not repeat one.
type ID uint64

// String returns the ID as 16 lower-case hex digits, the form Tern puts into
// SMTP replies, logs and accounting records.
func (id ID) String() string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(id))
	return hex.EncodeToString(b[:])
}

// Time returns the time encoded in the ID, which is when Put accepted the
// message (to within the bumps that keep IDs unique).
func (id ID) Time() time.Time { return time.Unix(0, int64(id)) }

// ParseID parses the 16-hex-digit form produced by ID.String.
func ParseID(s string) (ID, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("queue: bad id %q: want 16 hex digits", s)
	}
	var b [8]byte
	if _, err := hex.Decode(b[:], []byte(s)); err != nil {
		return 0, fmt.Errorf("queue: bad id %q: %v", s, err)
	}
	return ID(binary.BigEndian.Uint64(b[:])), nil
}

// idGen hands out IDs that are strictly increasing within the process. It is
// lock-free because every Put takes one and Puts run concurrently.
type idGen struct {
	last atomic.Uint64
}

// next returns max(now, last+1) and records it as the last ID issued.
func (g *idGen) next(now time.Time) ID {
	n := uint64(now.UnixNano())
	for {
		last := g.last.Load()
		id := n
		if id <= last {
			id = last + 1
		}
		if g.last.CompareAndSwap(last, id) {
			return ID(id)
		}
	}
}

// seed makes every later ID greater than floor.
func (g *idGen) seed(floor uint64) {
	for {
		last := g.last.Load()
		if last >= floor || g.last.CompareAndSwap(last, floor) {
			return
		}
	}
}
