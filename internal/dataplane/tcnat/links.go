package tcnat

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kubenat/kubenat/internal/bpfmap"
)

// role is the program a link runs.
type role uint8

const (
	noRole role = iota
	external
	pod
)

// FilterPriority is the tc priority of kubenat's filters on the ingress of
// the clsact qdisc (filters with a lower number run first; kubenat's pass
// what they do not translate on to the next).
const FilterPriority = 0x4b4e

// filterPrefix starts the names of kubenat's filters.
const filterPrefix = "kubenat-"

func (r role) String() string {
	switch r {
	case external:
		return filterPrefix + "external"
	case pod:
		return filterPrefix + "pod"
	}
	return "none"
}

// Attach puts the programs on the links of the calling thread's network
// namespace: the external program on each link holding one of nodeAddrs
// (IPv4; the address is the source SNAT uses for connections leaving
// through that link), the pod program on every other veth and netkit
// link, and none elsewhere (a link that lost its role loses kubenat's
// filter). A link already running its program is not touched, so Attach
// is cheap enough for every sync; a new pod's interface exists before
// its endpoint can reach the maps. A link that fails does not stop the
// others.
func (n *NAT) Attach(nodeAddrs []netip.Addr) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("listing the node's interfaces for the tc NAT: %w", err)
	}
	addrs, err := netlink.AddrList(nil, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("listing the node's addresses for the tc NAT: %w", err)
	}
	ifaddr := map[int]netip.Addr{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || !slices.Contains(nodeAddrs, ip) {
			continue
		}
		if _, seen := ifaddr[a.LinkIndex]; !seen {
			ifaddr[a.LinkIndex] = ip
		}
	}
	var errs []error
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		idx := l.Attrs().Index
		byIndex[idx] = l
		r := noRole
		if _, ok := ifaddr[idx]; ok {
			r = external
		} else if t := l.Type(); t == "veth" || t == "netkit" {
			r = pod
		}
		if n.attached[idx] == r && (r != noRole || n.swept) {
			continue
		}
		if err := n.setRole(l, r); err != nil {
			errs = append(errs, err)
			continue
		}
		if r == noRole {
			delete(n.attached, idx)
		} else {
			n.attached[idx] = r
		}
	}
	if len(errs) == 0 {
		// Every link was looked at: an earlier agent's filter on a link
		// that lost its role while no agent ran is gone.
		n.swept = true
	}
	for idx := range n.attached {
		if byIndex[idx] == nil {
			delete(n.attached, idx) // the link is gone, and its filters
		}
	}
	if err := n.writeIfaddrs(ifaddr); err != nil {
		errs = append(errs, err)
	}
	if err := n.writePodLinks(byIndex); err != nil {
		errs = append(errs, err)
	}
	// A pod link with its bridge (none: 0), a bridge with itself.
	podIfaces := map[uint32]bpfPodIface{}
	for idx, r := range n.attached {
		if r != pod {
			continue
		}
		var v bpfPodIface
		if m := byIndex[idx].Attrs().MasterIndex; m != 0 && byIndex[m] != nil {
			v.Bridge = uint32(m)
			copy(v.BridgeMac[:], byIndex[m].Attrs().HardwareAddr)
			podIfaces[uint32(m)] = v
		}
		podIfaces[uint32(idx)] = v
	}
	if err := syncMap(n.objs.PodIfaces, podIfaces); err != nil {
		errs = append(errs, fmt.Errorf("writing the tc NAT's pod interfaces: %w", err))
	}
	return errors.Join(errs...)
}

// syncMap makes m hold exactly want, writing only the keys it lacks or
// holds with another value.
func syncMap[K comparable, V comparable](m *ebpf.Map, want map[K]V) error {
	var k K
	var v V
	var drop []K
	same := map[K]bool{}
	it := m.Iterate()
	for it.Next(&k, &v) {
		switch w, ok := want[k]; {
		case !ok:
			drop = append(drop, k)
		case w == v:
			same[k] = true
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	if err := bpfmap.DeleteAll(m, drop); err != nil {
		return err
	}
	for k, v := range want {
		if same[k] {
			continue
		}
		if err := m.Put(k, v); err != nil {
			return err
		}
	}
	return nil
}

// writePodLinks makes the pod_links map hold, for each local pod the
// node's neighbour table knows, the node side of its interface (the
// links attached as pod links) and the pod's MAC address: the neighbour's
// own link for a routed pod, or, for one on a bridge, the bridge port its
// MAC address was learnt on. A pod whose address moved (a new pod reusing it) moves with
// the tables; one they do not know is reached through the FIB's
// interface.
func (n *NAT) writePodLinks(links map[int]netlink.Link) error {
	neighs, err := netlink.NeighList(0, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("listing the node's neighbours for the tc NAT: %w", err)
	}
	fdb, err := netlink.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("listing the node's bridge ports for the tc NAT: %w", err)
	}
	ports := map[string]int{} // MAC → the pod link it was learnt on
	for _, f := range fdb {
		if n.attached[f.LinkIndex] == pod && f.State&netlink.NUD_PERMANENT == 0 && f.Flags&netlink.NTF_SELF == 0 {
			ports[f.HardwareAddr.String()] = f.LinkIndex
		}
	}
	want := map[uint32]bpfPodLink{}
	for _, ne := range neighs {
		ip, ok := netip.AddrFromSlice(ne.IP.To4())
		if !ok || len(ne.HardwareAddr) == 0 || ne.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE|netlink.NUD_NOARP) != 0 {
			continue
		}
		link := 0
		switch {
		case n.attached[ne.LinkIndex] == pod:
			link = ne.LinkIndex
		case links[ne.LinkIndex] != nil && links[ne.LinkIndex].Type() == "bridge":
			link = ports[ne.HardwareAddr.String()]
		}
		if link != 0 && len(ne.HardwareAddr) == 6 {
			// The neighbour's link is the way there: the bridge, or
			// the pod's own link.
			pl := bpfPodLink{Ifindex: uint32(link), Via: uint32(ne.LinkIndex)}
			copy(pl.Mac[:], ne.HardwareAddr)
			want[addr4(ip)] = pl
		}
	}
	if err := syncMap(n.objs.PodLinks, want); err != nil {
		return fmt.Errorf("writing the tc NAT's pod links: %w", err)
	}
	return nil
}

// setRole replaces kubenat's filter on l with r's program, or removes it.
func (n *NAT) setRole(l netlink.Link, r role) error {
	name := l.Attrs().Name
	if r == noRole {
		_, err := removeOurs(l)
		return err
	}
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding the clsact qdisc to %s for the tc NAT: %w", name, err)
	}
	prog := n.objs.KubenatPod
	if r == external {
		prog = n.objs.KubenatExternal
	}
	if err := netlink.FilterReplace(filter(l.Attrs().Index, prog.FD(), r.String())); err != nil {
		return fmt.Errorf("attaching the tc NAT's %s program to %s: %w", r, name, err)
	}
	return nil
}

// filter is kubenat's filter on link idx, running the program fd.
func filter(idx, fd int, name string) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: idx,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Handle:    netlink.MakeHandle(0, 1),
			Protocol:  unix.ETH_P_ALL,
			Priority:  FilterPriority,
		},
		Fd:           fd,
		Name:         name,
		DirectAction: true,
	}
}

// writeIfaddrs makes the ifaddrs map hold want.
func (n *NAT) writeIfaddrs(want map[int]netip.Addr) error {
	m := map[uint32]uint32{}
	for idx, a := range want {
		m[uint32(idx)] = addr4(a)
	}
	if err := syncMap(n.objs.Ifaddrs, m); err != nil {
		return fmt.Errorf("writing the tc NAT's interface addresses: %w", err)
	}
	return nil
}

// Intact returns an error naming the first link that no longer runs the
// program Attach put there (someone deleted the filter or the qdisc); the
// next Attach after Forget puts it back.
func (n *NAT) Intact() error {
	for idx, r := range n.attached {
		l, err := netlink.LinkByIndex(idx)
		if err != nil {
			continue // gone; Attach forgets it
		}
		fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return fmt.Errorf("tc NAT on %s: listing filters: %w", l.Attrs().Name, err)
		}
		if !slices.ContainsFunc(fs, func(f netlink.Filter) bool { return ours(f, r.String()) }) {
			return fmt.Errorf("tc NAT: the %s program is missing from %s", r, l.Attrs().Name)
		}
	}
	return nil
}

// Forget makes the next Attach replace the filters of every link.
func (n *NAT) Forget() { clear(n.attached) }

// ours reports whether f is kubenat's filter (named name, or any of
// kubenat's when name is empty).
func ours(f netlink.Filter, name string) bool {
	b, ok := f.(*netlink.BpfFilter)
	if !ok || b.Priority != FilterPriority {
		return false
	}
	if name == "" {
		return strings.HasPrefix(b.Name, filterPrefix)
	}
	return b.Name == name
}

// Cleanup removes kubenat's filters from every link of the calling
// thread's network namespace (other filters and the clsact qdiscs stay:
// others may use them), then the connection maps pinned in pinDir (none
// when empty), and reports whether there was anything to remove.
func Cleanup(pinDir string) (removed bool, err error) {
	links, err := netlink.LinkList()
	if err != nil {
		return false, fmt.Errorf("listing the node's interfaces for the tc NAT: %w", err)
	}
	var errs []error
	for _, l := range links {
		r, err := removeOurs(l)
		removed = removed || r
		if err != nil {
			errs = append(errs, err)
		}
	}
	if pinDir != "" {
		for _, name := range pinned {
			err := os.Remove(filepath.Join(pinDir, name))
			switch {
			case err == nil:
				removed = true
			case !errors.Is(err, os.ErrNotExist):
				errs = append(errs, fmt.Errorf("removing the tc NAT's pins: %w", err))
			}
		}
		_ = unix.Rmdir(pinDir) // left when something else is in it
	}
	return removed, errors.Join(errs...)
}

// removeOurs removes kubenat's filters from l's ingress (none without a
// clsact qdisc) and reports whether there were any.
func removeOurs(l netlink.Link) (removed bool, err error) {
	fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return false, nil // no clsact qdisc
		}
		return false, fmt.Errorf("listing the filters of %s: %w", l.Attrs().Name, err)
	}
	var errs []error
	for _, f := range fs {
		if !ours(f, "") {
			continue
		}
		if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("removing the tc NAT from %s: %w", l.Attrs().Name, err))
			continue
		}
		removed = true
	}
	return removed, errors.Join(errs...)
}
