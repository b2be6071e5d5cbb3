// Package tcnat is kubenat's eBPF NAT for external traffic: tc ingress
// programs (bpf/nat.c) that translate new IPv4 TCP and UDP connections from
// outside the node to NodePorts, externalIPs and LoadBalancer IPs, and
// their replies, with connection state of their own (an LRU map with an
// entry per direction, so that one lookup finds a packet's connection),
// so that their packets never enter netfilter: no conntrack entry, no
// nftables rule, no routing decision by the stack.
//
// The external program runs on the interfaces that hold the node's IPv4
// addresses, the pod program (replies, and with direct delivery the
// pod-to-pod TCP that needs no conntrack) on every other veth and netkit
// interface of the node's network namespace: the host sides of the pods'
// interfaces, where a pod's reply arrives before any bridge. Both are cls_bpf
// filters in direct-action mode on the clsact qdisc's ingress, named
// "kubenat-…" at priority FilterPriority; they stay attached when the
// process exits, so connections keep working while the agent restarts.
//
// It only accelerates: which frontends it holds, with which endpoints and
// whether it masquerades, is the model's decision (model.State.TCNAT), and
// everything it leaves (other frontends, no endpoints, affinity, source
// ranges, IPv6, SCTP, packets with IP options, fragments, a connection it
// cannot allocate a source port for) nftables serves as before.
//
// A frontend's endpoints are a group of slots in the backends map under a
// group id; the frontends map points each frontend at its group. A change
// writes the new group under a fresh id, switches the frontend to it in one
// map update, then deletes the old group: a new connection sees either
// group, whole.
package tcnat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/kubenat/kubenat/internal/bpfmap"
	"github.com/kubenat/kubenat/internal/model"
)

// Options configure a NAT.
type Options struct {
	// PinDir, when set, is a directory on a bpf file system (created when
	// missing) where the connection maps are pinned: connections survive
	// the agent's restart, and the next Open takes them over. Empty: they
	// are lost with the process (the programs it attached then stop
	// translating replies of earlier connections).
	PinDir string
	// PortRange is the range of source ports SNAT allocates (inclusive).
	// The zero value picks the larger of the ranges below and above the
	// node's ip_local_port_range (1024–32767 by default), which the node's
	// own connections never use.
	PortRange [2]uint16
}

// pinned are the maps kept across restarts: the connections, and what
// direct delivery reads to decide, so that a new agent controls the
// programs an earlier one left attached from its first sync on.
var pinned = []string{"conns", "direct", "tracked"}

// NAT keeps the programs' maps in step with the model's State and the
// programs attached to the node's interfaces. It is not safe for
// concurrent use.
type NAT struct {
	objs    bpfObjects
	pinDir  string
	ports   [2]uint16
	groups  map[bpfFrontend]group
	used    map[uint32]bool
	nextID  uint32
	synced  bool
	updated bool // an Update succeeded once
	// unforgotten are UDP frontend-endpoint pairs whose flows an Update
	// failed to forget: the next one tries again.
	unforgotten map[pair]bool
	attached    map[int]role // ifindex → program attached by this NAT
	// swept is true once an Attach looked at every link (an earlier
	// agent's filter on a link that lost its role goes then).
	swept bool
	// tracked counts, for each endpoint the tracked map holds, the
	// Service ports that keep it tracked (with direct delivery on);
	// ahead are the endpoints Track added that Update has not counted;
	// held those the rules keep tracked for connections that still use
	// them (Hold).
	tracked map[bpfBackend]int
	ahead   map[bpfBackend]bool
	held    map[bpfBackend]bool
}

// group is what the maps hold for one frontend.
type group struct {
	id       uint32
	flags    uint16
	backends []bpfBackend
}

// Open loads the programs, with the connection maps pinned in o.PinDir
// taken over when an earlier process left them. Nothing is attached until
// the first Sync.
func Open(o Options) (_ *NAT, err error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("lifting the memlock limit for the tc NAT: %w", err)
	}
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("reading the tc NAT's programs: %w", err)
	}
	ports := o.PortRange
	if ports == [2]uint16{} {
		if ports, err = FreePorts(); err != nil {
			return nil, err
		}
	}
	lo, hi := ports[0], ports[1]
	if lo == 0 || lo > hi {
		return nil, fmt.Errorf("tc NAT source ports %d-%d: not a range of ports", lo, hi)
	}
	if err := spec.Variables["snat_port_min"].Set(lo); err != nil {
		return nil, fmt.Errorf("configuring the tc NAT: %w", err)
	}
	if err := spec.Variables["snat_port_max"].Set(hi); err != nil {
		return nil, fmt.Errorf("configuring the tc NAT: %w", err)
	}
	var opts ebpf.CollectionOptions
	if o.PinDir != "" {
		if err := bpfmap.PinDir(o.PinDir, "tc NAT"); err != nil {
			return nil, err
		}
		for _, name := range pinned {
			spec.Maps[name].Pinning = ebpf.PinByName
		}
		opts.Maps.PinPath = o.PinDir
	}
	n := &NAT{pinDir: o.PinDir, ports: ports, groups: map[bpfFrontend]group{}, used: map[uint32]bool{}, attached: map[int]role{},
		tracked: map[bpfBackend]int{}, ahead: map[bpfBackend]bool{}, held: map[bpfBackend]bool{}}
	err = spec.LoadAndAssign(&n.objs, &opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Pinned by a version whose connection entries differ: they
		// cannot be read, so they go (those connections break once).
		for _, name := range pinned {
			_ = os.Remove(filepath.Join(o.PinDir, name))
		}
		err = spec.LoadAndAssign(&n.objs, &opts)
	}
	if err != nil {
		return nil, fmt.Errorf("loading the tc NAT (pinned in %q): %w", o.PinDir, err)
	}
	return n, nil
}

// FreePorts returns the source ports SNAT allocates by default: the
// larger of the ranges below and above the calling thread's network
// namespace's ephemeral range (net.ipv4.ip_local_port_range), from 1024.
func FreePorts() ([2]uint16, error) {
	return freePorts("/proc/sys/net/ipv4/ip_local_port_range")
}

// freePorts is FreePorts with the sysctl read from file.
func freePorts(file string) ([2]uint16, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return [2]uint16{}, fmt.Errorf("reading the node's ephemeral ports for the tc NAT: %w", err)
	}
	f := strings.Fields(string(b))
	bad := fmt.Errorf("reading the node's ephemeral ports for the tc NAT: %s holds %q", file, b)
	if len(f) != 2 {
		return [2]uint16{}, bad
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		return [2]uint16{}, bad
	}
	below := int(lo) - 1024
	above := 65535 - int(hi)
	switch {
	case below >= above && below > 0:
		return [2]uint16{1024, uint16(lo - 1)}, nil
	case above > 0:
		return [2]uint16{uint16(hi + 1), 65535}, nil
	}
	return [2]uint16{}, fmt.Errorf("the tc NAT needs source ports outside the node's ephemeral range %d-%d (net.ipv4.ip_local_port_range)", lo, hi)
}

// Update writes the frontends st wants translated and their endpoints
// (all of st when d.Full, on the first Update and after a failure; else
// the Services d names), removes those no longer wanted, and forgets the
// UDP connections to endpoints a frontend no longer has (as conntrack's
// stale UDP entries are deleted: see the conntrack package).
func (n *NAT) Update(st *model.State, d model.Delta) error {
	want := map[bpfFrontend]group{}
	candidates := map[bpfFrontend]bool{}
	add := func(ports []model.ServicePort, wanted bool) {
		for i := range ports {
			sp := &ports[i]
			for _, fe := range sp.Frontends {
				if !fe.Addr.Is4() || fe.Kind == model.ClusterIP {
					continue
				}
				key := bpfFrontend{Addr: addr4(fe.Addr), Port: port(fe.Port), Proto: proto(sp.Name.Protocol)}
				candidates[key] = true
				svc, ok := st.TCNAT(sp, fe)
				if !ok || !wanted {
					continue
				}
				g := group{backends: make([]bpfBackend, len(svc.Endpoints))}
				for i, ep := range svc.Endpoints {
					g.backends[i] = bpfBackend{Addr: addr4(ep.Addr), Port: port(ep.Port)}
				}
				if svc.Masquerade {
					g.flags |= flagSNAT
				}
				if svc.LocalPolicy {
					g.flags |= flagLocal
				}
				want[key] = g
			}
		}
	}
	full := d.Full || !n.synced
	if full {
		for _, ports := range st.Services {
			add(ports, true)
		}
		for fe := range n.groups {
			candidates[fe] = true
		}
	} else {
		for _, k := range d.Changed {
			add(d.Old[k], false)
			add(st.Services[k], true)
		}
	}
	n.synced = false
	if err := n.writeLocalPods(st, full); err != nil {
		return err
	}
	cidr, direct := st.DirectPodCIDR()
	if !direct {
		if err := n.writeDirect(netip.Prefix{}); err != nil {
			return err
		}
	}
	if err := n.writeTracked(st, d, full); err != nil {
		return err
	}
	first := !n.updated
	stale, err := n.update(candidates, want)
	if err != nil {
		return err
	}
	for pr := range n.unforgotten {
		stale[pr] = true
	}
	gone := func(pr pair) bool { return stale[pr] }
	if first {
		// The connections pinned by an earlier agent: its groups are
		// not known, so every UDP flow to an endpoint its frontend does
		// not have now goes.
		gone = func(pr pair) bool { return !slices.Contains(want[pr.fe].backends, pr.be) }
	}
	if first || len(stale) > 0 {
		if err := n.forgetUDP(gone); err != nil {
			n.unforgotten = stale
			return err
		}
	}
	n.unforgotten = nil
	if direct {
		// Once every endpoint that must stay tracked is in the map.
		if err := n.writeDirect(cidr); err != nil {
			return err
		}
	}
	n.updated = true
	n.synced = true
	return nil
}

// writeDirect turns direct pod-to-pod delivery on for cidr, or off for
// the zero Prefix.
func (n *NAT) writeDirect(cidr netip.Prefix) error {
	var c bpfDirectCfg
	state := "off"
	if cidr.IsValid() {
		mask := net.CIDRMask(cidr.Bits(), 32)
		c = bpfDirectCfg{On: 1, Net: addr4(cidr.Masked().Addr()), Mask: binary.NativeEndian.Uint32(mask)}
		state = "on for " + cidr.String()
	}
	if err := n.objs.Direct.Put(uint32(0), c); err != nil {
		return fmt.Errorf("turning the tc NAT's direct pod-to-pod delivery %s: %w", state, err)
	}
	return nil
}

// trackedOf calls f for each IPv4 endpoint of ports that st keeps tracked
// while direct delivery is on (model.State.TrackedEndpoints; none when it
// is off).
func trackedOf(st *model.State, ports []model.ServicePort, f func(bpfBackend)) {
	if _, on := st.DirectPodCIDR(); !on {
		return
	}
	for i := range ports {
		for _, ep := range st.TrackedEndpoints(&ports[i]) {
			if ep.Addr.Is4() {
				f(bpfBackend{Addr: addr4(ep.Addr), Port: port(ep.Port)})
			}
		}
	}
}

// Track adds to the tracked map the endpoints st keeps tracked among the
// Services d names (every Service when d.Full or before the first
// complete Update). The agent calls it before the kernel's rules for st
// are committed, so that no packet of a connection those rules DNAT to a
// newly tracked endpoint is delivered past conntrack in between; the
// Update that follows removes what st no longer wants. When st has no
// direct delivery (the socket load balancer failed, say), it turns it off
// at once, before the rules stop untracking; when it cannot write the
// map, too (the next complete Update turns it on again).
func (n *NAT) Track(st *model.State, d model.Delta) error {
	if _, on := st.DirectPodCIDR(); !on {
		return n.writeDirect(netip.Prefix{})
	}
	add := func(ep bpfBackend) {
		if n.tracked[ep] == 0 {
			n.ahead[ep] = true
		}
	}
	if d.Full || !n.synced {
		for _, ports := range st.Services {
			trackedOf(st, ports, add)
		}
	} else {
		for _, k := range d.Changed {
			trackedOf(st, st.Services[k], add)
		}
	}
	for ep := range n.ahead {
		if err := n.objs.Tracked.Put(ep, uint8(1)); err != nil {
			err = fmt.Errorf("writing the tc NAT's tracked endpoints: %w", err)
			if offErr := n.writeDirect(netip.Prefix{}); offErr != nil {
				return fmt.Errorf("%w: %w (%w)", ErrDelivering, err, offErr)
			}
			return err
		}
	}
	return nil
}

// ErrDelivering is in the error of a Track that could neither complete
// the tracked map nor turn direct delivery off: rules that DNAT pod
// traffic to a newly tracked endpoint must not be committed then.
var ErrDelivering = errors.New("direct pod-to-pod delivery is on without every tracked endpoint")

// Hold makes the tracked map keep eps (IPv4) whatever the Services want:
// the endpoints the rules keep tracked for connections that still use
// them (nftables.Backend.HeldEndpoints), whose replies need conntrack
// after their Service no longer does. Endpoints no longer held go unless
// a Service keeps them tracked.
func (n *NAT) Hold(eps []netip.AddrPort) error {
	want := map[bpfBackend]bool{}
	for _, ep := range eps {
		if ep.Addr().Is4() {
			want[bpfBackend{Addr: addr4(ep.Addr()), Port: port(ep.Port())}] = true
		}
	}
	var drop []bpfBackend
	for ep := range n.held {
		if !want[ep] && n.tracked[ep] == 0 && !n.ahead[ep] {
			drop = append(drop, ep)
		}
	}
	for ep := range want {
		if !n.held[ep] {
			if err := n.objs.Tracked.Put(ep, uint8(1)); err != nil {
				return fmt.Errorf("writing the tc NAT's held endpoints: %w", err)
			}
		}
	}
	if err := bpfmap.DeleteAll(n.objs.Tracked, drop); err != nil {
		return fmt.Errorf("removing %d held endpoints from the tc NAT: %w", len(drop), err)
	}
	n.held = want
	return nil
}

// StopDelivery turns off the direct pod-to-pod delivery of the programs an
// earlier agent left attached, through the map pinned in pinDir (nothing
// when there is none): for an agent without the tc NAT, before its first
// sync, since the filters are only removed after it.
func StopDelivery(pinDir string) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "direct"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening the tc NAT's pinned direct delivery switch: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), bpfDirectCfg{}); err != nil {
		return fmt.Errorf("turning off the direct pod-to-pod delivery an earlier agent left on: %w", err)
	}
	return nil
}

// writeTracked makes the tracked map hold the endpoints st keeps tracked:
// every Service's when full, else the counts moved by the Services d
// names; what Track added ahead and st does not want goes too.
func (n *NAT) writeTracked(st *model.State, d model.Delta, full bool) error {
	if full {
		clear(n.tracked)
		for _, ports := range st.Services {
			trackedOf(st, ports, func(ep bpfBackend) { n.tracked[ep]++ })
		}
		// An earlier agent's entries are not known: compare the map.
		want := make(map[bpfBackend]uint8, len(n.tracked)+len(n.held))
		for ep := range n.tracked {
			want[ep] = 1
		}
		for ep := range n.held {
			want[ep] = 1
		}
		if err := syncMap(n.objs.Tracked, want); err != nil {
			return fmt.Errorf("writing the tc NAT's tracked endpoints: %w", err)
		}
		clear(n.ahead)
		return nil
	}
	touched := map[bpfBackend]bool{}
	for _, k := range d.Changed {
		trackedOf(st, d.Old[k], func(ep bpfBackend) { n.tracked[ep]--; touched[ep] = true })
		trackedOf(st, st.Services[k], func(ep bpfBackend) { n.tracked[ep]++; touched[ep] = true })
	}
	for ep := range n.ahead {
		touched[ep] = true
	}
	var drop []bpfBackend
	for ep := range touched {
		if n.tracked[ep] > 0 || n.held[ep] {
			if n.tracked[ep] <= 0 {
				delete(n.tracked, ep)
			}
			if err := n.objs.Tracked.Put(ep, uint8(1)); err != nil {
				return fmt.Errorf("writing the tc NAT's tracked endpoints: %w", err)
			}
			continue
		}
		delete(n.tracked, ep)
		drop = append(drop, ep)
	}
	if err := bpfmap.DeleteAll(n.objs.Tracked, drop); err != nil {
		return fmt.Errorf("removing %d tracked endpoints from the tc NAT: %w", len(drop), err)
	}
	clear(n.ahead)
	return nil
}

// Service flags (bpf/nat.c).
const (
	flagSNAT  = 1
	flagLocal = 2
)

// update writes want to the maps: new groups under fresh ids, then the
// frontends switched to them, then the candidates no longer wanted
// removed, then the old groups deleted. It returns the UDP
// frontend-endpoint pairs that went away.
func (n *NAT) update(candidates map[bpfFrontend]bool, want map[bpfFrontend]group) (map[pair]bool, error) {
	var slots []bpfSlot
	var backends []bpfBackend
	var fes, gone []bpfFrontend
	var svcs []bpfService
	var old []group
	next := map[bpfFrontend]group{}
	stale := map[pair]bool{}
	for fe := range candidates {
		g, wanted := want[fe]
		prev, had := n.groups[fe]
		if had && fe.Proto == unix.IPPROTO_UDP {
			for _, be := range prev.backends {
				if !slices.Contains(g.backends, be) {
					stale[pair{fe, be}] = true
				}
			}
		}
		switch {
		case !wanted:
			if had {
				gone = append(gone, fe)
				old = append(old, prev)
			}
			continue
		case had && prev.flags == g.flags && slices.Equal(prev.backends, g.backends):
			continue
		}
		g.id = n.newID()
		for i, be := range g.backends {
			slots = append(slots, bpfSlot{Id: g.id, Index: uint32(i)})
			backends = append(backends, be)
		}
		fes = append(fes, fe)
		svcs = append(svcs, bpfService{Id: g.id, Count: uint16(len(g.backends)), Flags: g.flags})
		next[fe] = g
		if had {
			old = append(old, prev)
		}
	}
	if err := bpfmap.BatchUpdate(n.objs.Backends, slots, backends); err != nil {
		_ = bpfmap.DeleteAll(n.objs.Backends, slots)
		for _, g := range next {
			delete(n.used, g.id)
		}
		return nil, fmt.Errorf("writing the tc NAT's endpoints: %w", err)
	}
	if err := bpfmap.BatchUpdate(n.objs.Frontends, fes, svcs); err != nil {
		// Some frontends may point at their new group already: keep
		// those groups' slots; the next Update rewrites everything.
		return nil, fmt.Errorf("writing the tc NAT's frontends: %w", err)
	}
	for fe, g := range next {
		n.groups[fe] = g
	}
	if err := bpfmap.DeleteAll(n.objs.Frontends, gone); err != nil {
		return nil, fmt.Errorf("removing %d frontends from the tc NAT: %w", len(gone), err)
	}
	for _, fe := range gone {
		delete(n.groups, fe)
	}
	var oldSlots []bpfSlot
	for _, g := range old {
		for i := range g.backends {
			oldSlots = append(oldSlots, bpfSlot{Id: g.id, Index: uint32(i)})
		}
		delete(n.used, g.id)
	}
	if err := bpfmap.DeleteAll(n.objs.Backends, oldSlots); err != nil {
		return nil, fmt.Errorf("deleting %d endpoint slots of the tc NAT: %w", len(oldSlots), err)
	}
	return stale, nil
}

// pair is a frontend and one of its endpoints.
type pair struct {
	fe bpfFrontend
	be bpfBackend
}

// forgetUDP deletes the UDP connections whose frontend and endpoint are
// gone, both directions: the client's next datagram is a new connection,
// to an endpoint the frontend has now.
func (n *NAT) forgetUDP(gone func(pair) bool) error {
	var keys []bpfTuple
	var key bpfTuple
	var e bpfCt
	it := n.objs.Conns.Iterate()
	for it.Next(&key, &e) {
		if key.Proto != unix.IPPROTO_UDP || e.Reply != 0 {
			continue
		}
		fe := bpfFrontend{Addr: key.Daddr, Port: key.Dport, Proto: key.Proto}
		if gone(pair{fe, bpfBackend{Addr: e.Nat.Daddr, Port: e.Nat.Dport}}) {
			keys = append(keys, key, reversed(e.Nat))
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the tc NAT's connections: %w", err)
	}
	if err := bpfmap.DeleteAll(n.objs.Conns, keys); err != nil {
		return fmt.Errorf("deleting %d UDP connections to removed endpoints from the tc NAT: %w", len(keys)/2, err)
	}
	return nil
}

// writeLocalPods keeps the local_pods map at the sources the rules take
// for this node's pods (by CIDR; none when pods are told by their
// interface, which is never an external one).
func (n *NAT) writeLocalPods(st *model.State, full bool) error {
	if !full {
		return nil
	}
	want := map[bpfPodCidr]bool{}
	if !st.Config.LocalDetect.ByInterface() {
		for _, p := range st.LocalPodCIDRs(model.IPv4) {
			p = p.Masked()
			want[bpfPodCidr{Prefixlen: uint32(p.Bits()), Addr: addr4(p.Addr())}] = true
		}
	}
	var k bpfPodCidr
	var v uint8
	var drop []bpfPodCidr
	it := n.objs.LocalPods.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			drop = append(drop, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the tc NAT's pod ranges: %w", err)
	}
	for k := range want {
		if err := n.objs.LocalPods.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("writing the tc NAT's pod ranges: %w", err)
		}
	}
	for _, k := range drop {
		if err := n.objs.LocalPods.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("writing the tc NAT's pod ranges: %w", err)
		}
	}
	return nil
}

// Ports returns the source ports SNAT allocates (inclusive).
func (n *NAT) Ports() [2]uint16 { return n.ports }

// Frontends returns the number of frontends the NAT holds.
func (n *NAT) Frontends() int { return len(n.groups) }

// Connections returns the number of connections the conns map holds,
// live or expired but not yet evicted (each has a forward entry), for
// tests.
func (n *NAT) Connections() (int, error) {
	count := 0
	var key bpfTuple
	var e bpfCt
	it := n.objs.Conns.Iterate()
	for it.Next(&key, &e) {
		if e.Reply == 0 {
			count++
		}
	}
	return count, it.Err()
}

// newID returns a group id no frontend uses.
func (n *NAT) newID() uint32 {
	for {
		n.nextID++
		if n.nextID != 0 && !n.used[n.nextID] {
			n.used[n.nextID] = true
			return n.nextID
		}
	}
}

// Close releases the NAT's file descriptors. The programs stay attached,
// with the maps they use.
func (n *NAT) Close() error { return n.objs.Close() }

func reversed(t bpfTuple) bpfTuple {
	return bpfTuple{Saddr: t.Daddr, Daddr: t.Saddr, Sport: t.Dport, Dport: t.Sport, Proto: t.Proto}
}

// addr4 and port return what the programs read from a packet: network
// byte order, as stored in memory.
func addr4(a netip.Addr) uint32 {
	b := a.Unmap().As4()
	return binary.NativeEndian.Uint32(b[:])
}

func port(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func proto(p model.Protocol) uint8 {
	if p == model.UDP {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}
