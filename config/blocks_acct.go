package config

import (
	"fmt"
	"path/filepath"
	"strings"
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
	af := &AcctFile{Pos: n.Pos, Path: path}
	acctTable.fill(af)
	for _, c := range n.Children {
		if b.dispatch(c, scopeAcctFile) {
			acctTable.apply(b, af, c)
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
