// Package conntrack keeps the kernel's connection tracking table consistent
// with Service changes. A UDP "connection" lives in conntrack as long as
// packets keep flowing, and its NAT binding with it: without help, a client
// that keeps its socket keeps sending to an endpoint that is gone, or to a
// Service address that was not DNATed when the entry was created
// (kube-proxy issues #19029, #48370). kubenat deletes those entries through
// netlink after each sync, so the next packet is NATed afresh.
package conntrack

import (
	"fmt"
	"net/netip"

	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"

	"github.com/kubenat/kubenat/internal/model"
)

const (
	protoTCP = 6
	protoUDP = 17
)

// Rule selects UDP conntrack entries to delete: the original destination is
// one of Frontends and, when Endpoints is not nil, the reply source (the
// endpoint the entry was DNATed to) is one of them.
type Rule struct {
	Why       string
	Frontends []netip.AddrPort
	Endpoints []netip.AddrPort
}

// Plan returns the entries to delete after the changed Services went from
// old to the ports in st:
//   - a UDP port (or its Service) was removed: every entry to its frontends;
//   - a UDP port got its first usable endpoint (or was created with one):
//     every entry to its frontends, made while nothing could answer;
//   - an endpoint stopped serving or disappeared: the entries DNATed to it.
//
// Endpoints that are terminating but still serving keep their entries, so
// their flows can finish.
func Plan(st *model.State, d model.Delta) []Rule {
	var rules []Rule
	for _, k := range d.Changed {
		oldPorts := udpPorts(d.Old[k])
		newPorts := udpPorts(st.Services[k])
		for name, op := range oldPorts {
			np, ok := newPorts[name]
			if !ok {
				rules = append(rules, Rule{Why: name.String() + " removed", Frontends: frontends(op)})
				continue
			}
			if gone := stoppedServing(op, np); len(gone) > 0 {
				rules = append(rules, Rule{Why: name.String() + " endpoints gone", Frontends: union(frontends(op), frontends(np)), Endpoints: gone})
			}
			if !op.HasEndpoints() && np.HasEndpoints() {
				rules = append(rules, Rule{Why: name.String() + " got its first endpoint", Frontends: frontends(np)})
			}
		}
		for name, np := range newPorts {
			if _, ok := oldPorts[name]; !ok && np.HasEndpoints() {
				rules = append(rules, Rule{Why: name.String() + " created", Frontends: frontends(np)})
			}
		}
	}
	return rules
}

func udpPorts(ports []model.ServicePort) map[model.ServicePortName]*model.ServicePort {
	out := map[model.ServicePortName]*model.ServicePort{}
	for i := range ports {
		if ports[i].Name.Protocol == model.UDP {
			out[ports[i].Name] = &ports[i]
		}
	}
	return out
}

func frontends(sp *model.ServicePort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, f := range sp.Frontends {
		out = append(out, netip.AddrPortFrom(f.Addr, f.Port))
	}
	return out
}

func union(a, b []netip.AddrPort) []netip.AddrPort {
	seen := map[netip.AddrPort]bool{}
	var out []netip.AddrPort
	for _, x := range append(append([]netip.AddrPort(nil), a...), b...) {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// stoppedServing returns the endpoints that served in old and do not in
// now.
func stoppedServing(old, now *model.ServicePort) []netip.AddrPort {
	serving := map[netip.AddrPort]bool{}
	for _, ep := range now.Endpoints {
		if ep.Serving {
			serving[ep.AddrPort()] = true
		}
	}
	var out []netip.AddrPort
	for _, ep := range old.Endpoints {
		if ep.Serving && !serving[ep.AddrPort()] {
			out = append(out, ep.AddrPort())
		}
	}
	return out
}

// Cleaner deletes conntrack entries through netlink in the network
// namespace it was created in.
type Cleaner struct {
	conn *ct.Conn
}

// NewCleaner opens a conntrack netlink socket.
func NewCleaner() (*Cleaner, error) {
	c, err := ct.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("opening conntrack netlink: %w", err)
	}
	return &Cleaner{conn: c}, nil
}

// Close closes the socket.
func (c *Cleaner) Close() error { return c.conn.Close() }

// Clear deletes the UDP entries the rules select and returns how many it
// deleted. Entries that vanish meanwhile are not an error.
func (c *Cleaner) Clear(rules []Rule) (int, error) {
	if len(rules) == 0 {
		return 0, nil
	}
	flows, err := c.conn.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("dumping conntrack entries: %w", err)
	}
	deleted := 0
	for _, f := range flows {
		if !Matches(rules, f) {
			continue
		}
		if err := c.conn.Delete(f); err != nil {
			continue // expired or deleted meanwhile
		}
		deleted++
	}
	return deleted, nil
}

// DNATed returns the endpoints (address and TCP port) of the TCP
// connections conntrack translated the destination of, but not the
// source, from a source inside cidr to an endpoint inside cidr: pod
// connections to a Service DNATed without masquerade, whose replies need
// the reverse translation (see nftables.Options.InUse).
//
// The kernel is asked for the IPv4 entries with DNAT only (a status
// filter, Linux 5.15 and later; before, every entry is read): a dump of
// every entry costs ~1 s and ~250 MB of allocations per 100,000 entries.
func (c *Cleaner) DNATed(cidr netip.Prefix) (map[netip.AddrPort]bool, error) {
	flows, err := c.conn.DumpFilter(ct.NewFilter().Family(netfilter.ProtoIPv4).Status(ct.StatusDstNAT), nil)
	if err != nil {
		flows, err = c.conn.Dump(nil)
	}
	if err != nil {
		return nil, fmt.Errorf("dumping conntrack entries: %w", err)
	}
	out := map[netip.AddrPort]bool{}
	for _, f := range flows {
		if f.TupleOrig.Proto.Protocol != protoTCP || !f.Status.DstNAT() || f.Status.SrcNAT() {
			continue
		}
		src, ep := f.TupleOrig.IP.SourceAddress.Unmap(), f.TupleReply.IP.SourceAddress.Unmap()
		if cidr.Contains(src) && cidr.Contains(ep) {
			out[netip.AddrPortFrom(ep, f.TupleReply.Proto.SourcePort)] = true
		}
	}
	return out, nil
}

// Matches reports whether any rule selects the flow.
func Matches(rules []Rule, f ct.Flow) bool {
	if f.TupleOrig.Proto.Protocol != protoUDP {
		return false
	}
	dst := netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress.Unmap(), f.TupleOrig.Proto.DestinationPort)
	rsrc := netip.AddrPortFrom(f.TupleReply.IP.SourceAddress.Unmap(), f.TupleReply.Proto.SourcePort)
	for _, r := range rules {
		if !containsAP(r.Frontends, dst) {
			continue
		}
		if r.Endpoints == nil || containsAP(r.Endpoints, rsrc) {
			return true
		}
	}
	return false
}

func containsAP(list []netip.AddrPort, x netip.AddrPort) bool {
	for _, y := range list {
		if y == x {
			return true
		}
	}
	return false
}
