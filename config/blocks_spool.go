package config

func (b *builder) spoolBlock(n *node) {
	path, ok := b.blockName(n, "directory")
	if !ok {
		return
	}
	if b.already(&b.cfg.Spool.Dir, b.cfg.Spool.Dir.Pos, n) {
		return
	}
	b.cfg.Spool.Dir = Setting[string]{Value: relPath(n.Pos, path), Pos: n.Pos, Set: true}
	for _, c := range n.Children {
		if b.dispatch(c, scopeSpool) && c.Name == "min-free-space" {
			setOne(b, &b.cfg.Spool.MinFreeSpace, c, parseSize)
		}
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
