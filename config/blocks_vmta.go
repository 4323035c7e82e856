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
	v := &VirtualMTA{Pos: n.Pos, Name: name}
	vmtaTable.fill(v)
	for _, c := range n.Children {
		if !b.dispatch(c, scopeVMTA) {
			continue
		}
		if c.Block {
			v.Domains = b.domainBlock(c, "vmta:"+strings.ToLower(name), v.Domains)
			continue
		}
		vmtaTable.apply(b, v, c)
	}
	b.cfg.VMTAs = append(b.cfg.VMTAs, v)
}

// sourceHost reads `smtp-source-host IP HOSTNAME`. Several VMTAs may share
// an IP, as in PowerMTA: a VMTA is a policy, and operators give one IP
// several (per customer, per stream) on purpose. Limits that protect a
// receiver from an IP (source-ip-*, mx-connection-limit, the adaptive
// window) count per IP over every VMTA using it.
func (b *builder) sourceHost(hosts *[]SourceHost, n *node) {
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
	for _, sh := range *hosts {
		if sh.IP == ip {
			b.errorf(n.Args[0].Pos, "smtp-source-host: %s is listed twice (first at %s)", ip, shortPos(sh.Pos, n.Pos))
			return
		}
	}
	*hosts = append(*hosts, SourceHost{Pos: n.Pos, IP: ip, HostName: host})
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
	p := &Pool{Pos: n.Pos, Name: name}
	poolTable.fill(p)
	for _, c := range n.Children {
		if !b.dispatch(c, scopePool) {
			continue
		}
		if c.Block {
			p.Domains = b.domainBlock(c, "pool:"+strings.ToLower(name), p.Domains)
			continue
		}
		poolTable.apply(b, p, c)
	}
	if len(p.Members) == 0 {
		b.errorf(n.Pos, "%s has no members (add virtual-mta NAME lines)", n.label())
	}
	b.cfg.Pools = append(b.cfg.Pools, p)
}

// poolMember reads a pool's `virtual-mta NAME` line; whether the VMTA
// exists is checked once every block is read.
func (b *builder) poolMember(p *Pool, n *node) {
	a, ok := b.single(n)
	if !ok {
		return
	}
	for _, m := range p.Members {
		if strings.EqualFold(m.Name, a.Text) {
			b.errorf(n.Pos, "virtual-mta %s is already a member (line %d)", a.Text, m.Pos.Line)
			return
		}
	}
	p.Members = append(p.Members, PoolMember{Pos: n.Pos, Name: a.Text})
}
