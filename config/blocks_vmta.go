package config

import (
	"net/netip"
	"strings"
)

func (b *builder) vmtaBlock(n *node) {
	name, ok := b.blockName(n, "name")
	if !ok || !b.validName(n, name) || !b.claimName(n, name) {
		return
	}
	v := &VirtualMTA{Pos: n.Pos, Name: name, HostName: def(""), MaxSMTPOut: def(0), MaxSMTPMsgRate: def(Rate{})}
	for _, c := range n.Children {
		if !b.dispatch(c, scopeVMTA) {
			continue
		}
		if c.Block {
			v.Domains = b.domainBlock(c, v.Domains)
			continue
		}
		switch c.Name {
		case "smtp-source-host":
			b.sourceHost(v, c)
		case "host-name":
			setOne(b, &v.HostName, c, hostname)
		case "max-smtp-out":
			setOne(b, &v.MaxSMTPOut, c, intRange(1, 1000000))
		case "max-smtp-msg-rate":
			setOne(b, &v.MaxSMTPMsgRate, c, parseRate)
		}
	}
	b.cfg.VMTAs = append(b.cfg.VMTAs, v)
}

// sourceHost reads `smtp-source-host IP HOSTNAME`. No two VMTAs may share an
// IP: segregation by IP is why VMTAs exist.
func (b *builder) sourceHost(v *VirtualMTA, n *node) {
	if len(n.Args) != 2 {
		b.errorf(n.Pos, "smtp-source-host takes an IP address and a host name: smtp-source-host 192.0.2.10 mta1.example.com")
		return
	}
	ip, err := netip.ParseAddr(n.Args[0].Text)
	if err != nil || ip.Zone() != "" {
		b.errorf(n.Args[0].Pos, "smtp-source-host: %q is not an IP address", n.Args[0].Text)
		return
	}
	ip = ip.Unmap()
	host, err := hostname(n.Args[1].Text)
	if err != nil {
		b.errorf(n.Args[1].Pos, "smtp-source-host: %v", err)
		return
	}
	for _, other := range b.cfg.VMTAs {
		for _, sh := range other.SourceHosts {
			if sh.IP == ip {
				b.errorf(n.Args[0].Pos, "smtp-source-host: %s is already the source IP of <virtual-mta %s> at %s; virtual MTAs must not share source IPs", ip, other.Name, shortPos(sh.Pos, n.Pos))
				return
			}
		}
	}
	for _, sh := range v.SourceHosts {
		if sh.IP == ip {
			b.errorf(n.Args[0].Pos, "smtp-source-host: %s is listed twice (first at %s)", ip, shortPos(sh.Pos, n.Pos))
			return
		}
	}
	v.SourceHosts = append(v.SourceHosts, SourceHost{Pos: n.Pos, IP: ip, HostName: host})
}

func (b *builder) poolBlock(n *node) {
	name, ok := b.blockName(n, "name")
	if !ok || !b.validName(n, name) {
		return
	}
	if strings.EqualFold(name, DefaultVMTA) {
		b.errorf(n.Args[0].Pos, "%s is the default virtual MTA and cannot be a pool", DefaultVMTA)
		return
	}
	if !b.claimName(n, name) {
		return
	}
	p := &Pool{Pos: n.Pos, Name: name, MaxSMTPOut: def(0), MaxSMTPMsgRate: def(Rate{})}
	for _, c := range n.Children {
		if !b.dispatch(c, scopePool) {
			continue
		}
		if c.Block {
			p.Domains = b.domainBlock(c, p.Domains)
			continue
		}
		switch c.Name {
		case "virtual-mta":
			a, ok := b.single(c)
			if !ok {
				continue
			}
			dup := false
			for _, m := range p.Members {
				if strings.EqualFold(m.Name, a.Text) {
					b.errorf(c.Pos, "virtual-mta %s is already a member (line %d)", a.Text, m.Pos.Line)
					dup = true
				}
			}
			if !dup {
				p.Members = append(p.Members, PoolMember{Pos: c.Pos, Name: a.Text})
			}
		case "max-smtp-out":
			setOne(b, &p.MaxSMTPOut, c, intRange(1, 1000000))
		case "max-smtp-msg-rate":
			setOne(b, &p.MaxSMTPMsgRate, c, parseRate)
		}
	}
	if len(p.Members) == 0 {
		b.errorf(n.Pos, "%s has no members (add virtual-mta NAME lines)", n.label())
	}
	b.cfg.Pools = append(b.cfg.Pools, p)
}
