package agent

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
)

// localAddrs returns the unicast addresses configured on this network
// namespace's interfaces (for nodePortAddresses CIDRs), sorted.
func localAddrs() ([]netip.Addr, error) {
	list, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() {
			continue
		}
		out = append(out, ip)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out), nil
}

// LocalAddrs returns the unicast addresses configured on this network
// namespace's interfaces, as the agent reads them into Config.LocalAddrs:
// without loopback, link-local and multicast addresses, sorted. Tools that
// must see the node as the agent does (kubenat trace --live) use it.
func LocalAddrs() ([]netip.Addr, error) { return localAddrs() }

// needsLocalAddrs reports whether the configuration selects NodePort
// addresses by CIDR, so the node's interface addresses matter.
func needsLocalAddrs(nodePortAddresses []string) bool {
	for _, s := range nodePortAddresses {
		if s != "primary" {
			return true
		}
	}
	return false
}

// DefaultRouteAddrs returns, per family, the source address this network
// namespace uses for its default route: the node's primary addresses when
// neither --node-ip nor the Node object gives them. A family without a
// default route is left out.
func DefaultRouteAddrs() []netip.Addr {
	var out []netip.Addr
	// Route lookups only (no packet is sent) for addresses outside any
	// private range, so the default route answers.
	for _, probe := range []string{"8.8.8.8", "2001:4860:4860::8888"} {
		dst := netip.MustParseAddr(probe)
		routes, err := netlink.RouteGet(dst.AsSlice())
		if err != nil {
			continue
		}
		for _, r := range routes {
			if src, ok := netip.AddrFromSlice(r.Src); ok && !src.IsUnspecified() && !src.IsLoopback() {
				out = append(out, src.Unmap())
				break
			}
		}
	}
	return out
}
