package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Record encoding.
//
// Envelopes and recipient records use a small hand-written format: a version
// byte, then fields as varints and uvarint-length-prefixed strings in a fixed
// order. The reasons:
//   - speed: encoding is appends into one reused buffer and decoding is slice
//     arithmetic, with no reflection and no per-field allocation beyond the
//     strings themselves (gob or JSON would cost microseconds per record and
//     allocate, and Open decodes a million records);
//   - size: no field names or type descriptors on disk, so a recipient record
//     is typically 60-100 bytes;
//   - partial decoding: the fields that scheduling needs come first
//     (recipient: next attempt, domain, VMTA; envelope: received, size, job),
//     so the scan at Open stops reading each record early;
//   - evolution: the version byte lets a later Tern add fields at the end
//     and still read old spools.

const (
	envelopeV1  = 1
	recipientV1 = 1
)

var errCorrupt = errors.New("queue: corrupt record")

// Keys. A message's envelope is m/<id> and its recipient n is
// m/<id>/<n>: the envelope sorts right before its recipients, so one
// iterator seek reads a message's envelope and the recipients after it
// (a lease, Lookup and the scan at Open all do). Bodies are under b/,
// which sorts before m/, so the scan at Open never touches them.
const (
	prefixBody    = 'b'
	prefixMessage = 'm'
	envKeyLen     = 10 // m/ + 8-byte ID
	rcptKeyLen    = 15 // m/ + ID + / + 4-byte index
)

var hwKey = []byte("s/hw")

func idKey(prefix byte, id ID) []byte {
	k := make([]byte, 10)
	k[0], k[1] = prefix, '/'
	binary.BigEndian.PutUint64(k[2:], uint64(id))
	return k
}

func envelopeKey(id ID) []byte { return idKey(prefixMessage, id) }
func bodyKey(id ID) []byte     { return idKey(prefixBody, id) }

// appendRecipientKey appends m/<id>/<n> to dst.
func appendRecipientKey(dst []byte, id ID, n int) []byte {
	dst = append(dst, prefixMessage, '/')
	dst = binary.BigEndian.AppendUint64(dst, uint64(id))
	dst = append(dst, '/')
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

func recipientKey(id ID, n int) []byte { return appendRecipientKey(make([]byte, 0, rcptKeyLen), id, n) }

// messageBounds returns the key range holding message id's envelope and
// recipients.
func messageBounds(id ID) (lo, hi []byte) {
	lo = envelopeKey(id)
	hi = append(bytes.Clone(lo), '/'+1)
	return lo, hi
}

// parseMessageKey parses an m/ key: the envelope (n < 0) or recipient n
// of message id.
func parseMessageKey(k []byte) (id ID, n int, ok bool) {
	if len(k) < envKeyLen || k[0] != prefixMessage || k[1] != '/' {
		return 0, 0, false
	}
	id = ID(binary.BigEndian.Uint64(k[2:]))
	switch {
	case len(k) == envKeyLen:
		return id, -1, true
	case len(k) == rcptKeyLen && k[10] == '/':
		return id, int(binary.BigEndian.Uint32(k[11:])), true
	}
	return 0, 0, false
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

// appendEnvelope encodes an envelope with its recipient count.
func appendEnvelope(b []byte, e *Envelope, nrcpt int) []byte {
	b = append(b, envelopeV1)
	b = appendTime(b, e.Received)
	b = binary.AppendUvarint(b, uint64(e.Size))
	b = appendString(b, e.JobID)
	b = binary.AppendUvarint(b, uint64(nrcpt))
	b = appendString(b, e.Sender)
	ip := e.SourceIP.AsSlice() // nil for the zero Addr
	b = binary.AppendUvarint(b, uint64(len(ip)))
	b = append(b, ip...)
	b = appendString(b, e.AuthUser)
	b = appendString(b, e.EnvID)
	return append(b, byte(e.DSNRet))
}

// appendRecipient encodes a recipient record.
func appendRecipient(b []byte, r *RecipientState) []byte {
	b = append(b, recipientV1)
	b = appendTime(b, r.NextAttempt)
	b = appendString(b, r.Domain)
	b = appendString(b, r.VMTA)
	b = appendString(b, r.Address)
	b = appendString(b, r.Pool)
	b = appendString(b, r.ORcpt)
	b = append(b, byte(r.Notify))
	b = binary.AppendUvarint(b, uint64(r.Attempts))
	b = appendTime(b, r.LastAttempt)
	return appendString(b, r.LastReply)
}

// decoder reads the fields written by the append functions. The first
// failure sticks, so callers check err once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errCorrupt
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) time() time.Time {
	if v := d.varint(); v != 0 {
		return time.Unix(0, v)
	}
	return time.Time{}
}

// bytes returns a length-prefixed field without copying.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	s := d.b[:n]
	d.b = d.b[n:]
	return s
}

func (d *decoder) string() string { return string(d.bytes()) }

func (d *decoder) version(want byte) {
	if v := d.byte(); d.err == nil && v != want {
		d.err = fmt.Errorf("queue: record version %d not supported", v)
	}
}

// decodeEnvelope decodes an m/ value.
func decodeEnvelope(v []byte) (e Envelope, nrcpt int, err error) {
	d := decoder{b: v}
	d.version(envelopeV1)
	e.Received = d.time()
	e.Size = int64(d.uvarint())
	e.JobID = d.string()
	nrcpt = int(d.uvarint())
	e.Sender = d.string()
	if ip := d.bytes(); len(ip) > 0 {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			d.fail()
		}
		e.SourceIP = a
	}
	e.AuthUser = d.string()
	e.EnvID = d.string()
	e.DSNRet = DSNRet(d.byte())
	return e, nrcpt, d.err
}

// envelopeHead is the part of an envelope the Open scan needs.
type envelopeHead struct {
	received int64
	size     uint64
	job      []byte // aliases the value
	nrcpt    int
}

func decodeEnvelopeHead(v []byte) (h envelopeHead, err error) {
	d := decoder{b: v}
	d.version(envelopeV1)
	h.received = d.varint()
	h.size = d.uvarint()
	h.job = d.bytes()
	h.nrcpt = int(d.uvarint())
	return h, d.err
}

// decodeRecipient decodes a recipient record; n comes from the key.
func decodeRecipient(v []byte, n int) (r RecipientState, err error) {
	d := decoder{b: v}
	d.version(recipientV1)
	r.N = n
	r.NextAttempt = d.time()
	r.Domain = d.string()
	r.VMTA = d.string()
	r.Address = d.string()
	r.Pool = d.string()
	r.ORcpt = d.string()
	r.Notify = Notify(d.byte())
	r.Attempts = int(d.uvarint())
	r.LastAttempt = d.time()
	r.LastReply = d.string()
	return r, d.err
}

// recipientHead is the part of a recipient record the Open scan needs.
type recipientHead struct {
	next   int64
	domain []byte // aliases the value
	vmta   []byte // aliases the value
}

func decodeRecipientHead(v []byte) (h recipientHead, err error) {
	d := decoder{b: v}
	d.version(recipientV1)
	h.next = d.varint()
	h.domain = d.bytes()
	h.vmta = d.bytes()
	return h, d.err
}
