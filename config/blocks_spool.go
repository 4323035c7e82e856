package config

import "fmt"

func (b *builder) spoolBlock(n *node) {
	path, ok := b.blockName(n, "directory")
	if !ok {
		return
	}
	if b.cfg.Spool.Dir.Set {
		if b.spoolBlocks > 0 {
			// PowerMTA files list several spools (one deliver-only,
			// to drain an old disk): Tern keeps one queue.
			note := fmt.Sprintf("Tern keeps one spool, the one set at %s; PowerMTA's messages in %s are not read, so let PowerMTA deliver them before switching", shortPos(b.cfg.Spool.Dir.Pos, n.Pos), path)
			b.ignoredBlock(n, note)
			return
		}
		b.already(&b.cfg.Spool.Dir, b.cfg.Spool.Dir.Pos, n)
		return
	}
	b.spoolBlocks++
	b.cfg.Spool.Dir = Setting[string]{Value: relPath(n.Pos, path), Pos: n.Pos, Set: true}
	for _, c := range n.Children {
		if b.dispatch(c, scopeSpool) {
			spoolTable.apply(b, &b.cfg.Spool, c)
		}
	}
}

// deliverOnly reads <spool>'s deliver-only: Tern's one spool takes new
// mail, so yes is refused.
func deliverOnly(b *builder, _ *Spool, n *node) {
	var v Setting[bool]
	setOne(b, &v, n, parseBool)
	if v.Set && v.Value {
		b.errorf(n.Pos, "deliver-only yes: Tern's spool also takes new mail (it keeps one spool); remove the line, and let PowerMTA deliver what is in its deliver-only spool before switching")
	}
}

// hasChild reports whether block n has a directive with one of the names.
func hasChild(n *node, names ...string) bool {
	for _, c := range n.Children {
		for _, name := range names {
			if !c.Block && c.Name == name {
				return true
			}
		}
	}
	return false
}
