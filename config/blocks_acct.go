package config

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

func (b *builder) acctFileBlock(n *node) {
	path, ok := b.blockName(n, "file path")
	if !ok {
		return
	}
	path = filepath.Clean(relPath(n.Pos, path))
	// Two spellings of one file are one file: two writers on it would
	// break each other's rotation.
	key := path
	if abs, err := filepath.Abs(path); err == nil {
		key = abs
	}
	if prev, dup := b.acct[key]; dup {
		b.errorf(n.Pos, "<acct-file %s> is already defined at %s", path, shortPos(prev.Pos, n.Pos))
		return
	}
	af := &AcctFile{Pos: n.Pos, Path: path,
		Records:      def(RecordTypes{Delivered: true, Bounced: true}),
		MaxSize:      def(Size(250 << 20)),
		MoveInterval: def(24 * time.Hour),
	}
	for _, c := range n.Children {
		if !b.dispatch(c, scopeAcctFile) {
			continue
		}
		switch c.Name {
		case "records":
			setList(b, &af.Records, c, parseRecords)
		case "max-size":
			setOne(b, &af.MaxSize, c, parseSize)
		case "move-interval":
			setOne(b, &af.MoveInterval, c, durationOrNever)
		}
	}
	b.acct[key] = af
	b.cfg.AcctFiles = append(b.cfg.AcctFiles, af)
}

func parseRecords(s string) (RecordTypes, error) {
	var r RecordTypes
	for _, p := range strings.Split(s, ",") {
		switch strings.ToLower(strings.TrimSpace(p)) {
		case "d", "delivery", "delivered":
			r.Delivered = true
		case "b", "bounce", "bounced":
			r.Bounced = true
		case "t", "transient":
			r.Transient = true
		case "r", "receipt", "received":
			r.Received = true
		default:
			return r, fmt.Errorf("unknown record type %q (d, b, t or r)", strings.TrimSpace(p))
		}
	}
	return r, nil
}
