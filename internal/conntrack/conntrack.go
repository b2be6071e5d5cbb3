// Package conntrack keeps the kernel's connection tracking table consistent
// with Service changes. A UDP "connection" lives in conntrack as long as
// packets keep flowing, and its NAT binding with it: without help, a client
// that keeps its socket keeps sending to an endpoint that is gone, or to a
// Service address that was not DNATed when the entry was created
// (kube-proxy issues #19029, #48370). kubenat deletes those entries through
// netlink after each sync, so the next packet is NATed afresh.
package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
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
	// nf sends the filtered dumps ti-mo/conntrack cannot express (a
	// CTA_FILTER on the original tuple).
	nf *netfilter.Conn
}

// NewCleaner opens two conntrack netlink sockets.
func NewCleaner() (*Cleaner, error) {
	c, err := ct.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("opening conntrack netlink: %w", err)
	}
	nf, err := netfilter.Dial(nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("opening netfilter netlink: %w", err)
	}
	return &Cleaner{conn: c, nf: nf}, nil
}

// Close closes the sockets.
func (c *Cleaner) Close() error { return errors.Join(c.conn.Close(), c.nf.Close()) }

// maxFrontendDumps is the number of frontends of one address family up to
// which Clear asks the kernel for each frontend's entries in a dump of its
// own; beyond it, one dump of the family's UDP entries costs less than the
// kernel walking its table once per frontend.
const maxFrontendDumps = 16

// Clear deletes the UDP entries the rules select and returns how many it
// deleted. Entries that vanish meanwhile are not an error; a dump that
// fails is reported (joined with the others' errors) after the other
// dumps were done.
//
// The kernel filters what it returns (CTA_FILTER, Linux 5.9 and later):
// for each address family, one dump per frontend the rules name (UDP to
// that address and port; for IPv6, to that port: see dumpUDP), or, when
// they name more than maxFrontendDumps, one dump of the family's UDP
// entries. The rules are applied again to what comes back, so a kernel
// that ignores the filter returns every entry of the family in the first
// dump, and that dump serves every frontend of the family. A dump of
// every entry, which the filter avoids, costs about half a second and
// 260 MB of allocations per 100,000 entries (BenchmarkClear).
func (c *Cleaner) Clear(rules []Rule) (int, error) {
	byFamily := map[netfilter.ProtoFamily][]netip.AddrPort{}
	for _, r := range rules {
		for _, f := range r.Frontends {
			fam := familyOf(f.Addr().Unmap())
			// What a dump selects: IPv6 ones by port alone.
			dst := netip.AddrPortFrom(f.Addr().Unmap(), f.Port())
			if fam == netfilter.ProtoIPv6 {
				dst = netip.AddrPortFrom(netip.IPv6Unspecified(), f.Port())
			}
			if !containsAP(byFamily[fam], dst) {
				byFamily[fam] = append(byFamily[fam], dst)
			}
		}
	}
	deleted := 0
	var errs []error
	for _, fam := range []netfilter.ProtoFamily{netfilter.ProtoIPv4, netfilter.ProtoIPv6} {
		dsts := byFamily[fam]
		if len(dsts) > maxFrontendDumps {
			dsts = []netip.AddrPort{{}}
		}
		for _, dst := range dsts {
			flows, err := c.dumpUDP(fam, dst)
			if err != nil {
				to := "of " + fam.String()
				switch {
				case dst.Addr().Is4():
					to = "to " + dst.String()
				case dst.IsValid():
					to = fmt.Sprintf("to IPv6 port %d", dst.Port())
				}
				errs = append(errs, fmt.Errorf("dumping the UDP conntrack entries %s: %w", to, err))
				continue
			}
			unfiltered := false
			for _, f := range flows {
				unfiltered = unfiltered || f.TupleOrig.Proto.Protocol != protoUDP ||
					(dst.IsValid() && !selects(dst, destination(f)))
				if !Matches(rules, f) {
					continue
				}
				if err := c.conn.Delete(f); err != nil {
					continue // expired or deleted meanwhile
				}
				deleted++
			}
			if unfiltered {
				break // the kernel ignored the filter: this dump had them all
			}
		}
	}
	return deleted, errors.Join(errs...)
}

// selects reports whether a dump to dst (see dumpUDP) selects an entry to
// d: the same address and port, or, for IPv6, the same port.
func selects(dst, d netip.AddrPort) bool {
	if dst.Addr().Is6() {
		return d.Port() == dst.Port()
	}
	return d == dst
}

// Netlink attribute types and filter flags of ctnetlink
// (linux/netfilter/nfnetlink_conntrack.h) for the filtered dump.
const (
	ctaTupleOrig       = 1
	ctaTupleIP         = 1
	ctaTupleProto      = 2
	ctaIPv4Dst         = 2
	ctaProtoNum        = 1
	ctaProtoDstPort    = 3
	ctaFilter          = 25
	ctaFilterOrigFlags = 1

	filterIPDst        = 1 << 1
	filterProtoNum     = 1 << 3
	filterProtoDstPort = 1 << 5

	ipctnlMsgCtGet = 1
)

// dumpUDP returns the family's UDP entries whose original destination is
// dst (for IPv6: whose destination port is dst's; its address is not
// used), or all of the family's UDP entries when dst is the zero value, as
// far as the kernel applies the filter.
func (c *Cleaner) dumpUDP(family netfilter.ProtoFamily, dst netip.AddrPort) ([]ct.Flow, error) {
	proto := []netfilter.Attribute{{Type: ctaProtoNum, Data: []byte{protoUDP}}}
	flags := uint32(filterProtoNum)
	var tuple []netfilter.Attribute
	if dst.IsValid() {
		proto = append(proto, netfilter.Attribute{Type: ctaProtoDstPort, Data: netfilter.Uint16Bytes(dst.Port())})
		flags |= filterProtoDstPort
		// Linux (6.18 measured) inverts the IPv6 address comparison of
		// the filter: an IPv6 dump is selected by port only.
		if family == netfilter.ProtoIPv4 {
			tuple = append(tuple, netfilter.Attribute{Type: ctaTupleIP, Nested: true,
				Children: []netfilter.Attribute{{Type: ctaIPv4Dst, Data: dst.Addr().AsSlice()}}})
			flags |= filterIPDst
		}
	}
	tuple = append(tuple, netfilter.Attribute{Type: ctaTupleProto, Nested: true, Children: proto})
	// The filter's flags are host-endian (NLA_U32); tuple fields are in
	// network byte order.
	hostFlags := binary.NativeEndian.AppendUint32(nil, flags)
	req, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: ipctnlMsgCtGet,
		Family:      family,
		Flags:       netlink.Request | netlink.Dump,
	}, []netfilter.Attribute{
		{Type: ctaTupleOrig, Nested: true, Children: tuple},
		{Type: ctaFilter, Nested: true, Children: []netfilter.Attribute{{Type: ctaFilterOrigFlags, Data: hostFlags}}},
	})
	if err != nil {
		return nil, err
	}
	msgs, err := c.nf.Query(req)
	if err != nil {
		return nil, err
	}
	flows := make([]ct.Flow, 0, len(msgs))
	for _, m := range msgs {
		var e ct.Event
		if err := e.Unmarshal(m); err != nil {
			return nil, fmt.Errorf("decoding a conntrack entry: %w", err)
		}
		flows = append(flows, *e.Flow)
	}
	return flows, nil
}

func familyOf(a netip.Addr) netfilter.ProtoFamily {
	if a.Is4() {
		return netfilter.ProtoIPv4
	}
	return netfilter.ProtoIPv6
}

// destination returns the flow's original destination.
func destination(f ct.Flow) netip.AddrPort {
	return netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress.Unmap(), f.TupleOrig.Proto.DestinationPort)
}

// DNATed returns the endpoints (address and TCP port) of the TCP
// connections conntrack translated the destination of, but not the
// source, from a source inside cidr to an endpoint inside cidr: pod
// connections to a Service DNATed without masquerade, whose replies need
// the reverse translation (see nftables.Options.InUse).
//
// The kernel is asked for the entries of cidr's family with DNAT only (a
// status filter, Linux 5.15 and later; before, every entry is read): a
// dump of every entry costs ~1 s and ~250 MB of allocations per 100,000
// entries.
func (c *Cleaner) DNATed(cidr netip.Prefix) (map[netip.AddrPort]bool, error) {
	flows, err := c.conn.DumpFilter(ct.NewFilter().Family(familyOf(cidr.Addr())).Status(ct.StatusDstNAT), nil)
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
	dst := destination(f)
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
