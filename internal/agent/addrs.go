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
