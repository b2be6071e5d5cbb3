package model

import (
	"fmt"
	"net/netip"
)

// DefaultProxyName is the value of the service.kubernetes.io/service-proxy-name
// label that selects kubenat.
const DefaultProxyName = "kubenat"

// Config is the node-local configuration the model applies to every Service.
type Config struct {
	// NodeName is the name of the Node this datapath runs on; endpoints
	// whose nodeName matches are local.
	NodeName string
	// ClusterCIDRs are the pod address ranges of the whole cluster (one per
	// family at most is usual).
	ClusterCIDRs []netip.Prefix
	// NodeIPs, when set, are the node's addresses, overriding the Node
	// object's status.addresses.
	NodeIPs []netip.Addr
	// FallbackNodeIPs are used when neither NodeIPs nor the Node object
	// give an address (the agent fills in its default routes' sources).
	FallbackNodeIPs []netip.Addr
	// LocalAddrs are the addresses configured on this node's interfaces,
	// used to match NodePortAddresses CIDRs (when empty, the node
	// addresses are used) and, with UntrackPodTCP, as the node's addresses
	// whose traffic stays tracked: there they must be complete, or the
	// replies to connections masqueraded to a missing address are left
	// untracked. The agent fills them in and keeps them current (see
	// NeedsLocalAddrs).
	LocalAddrs []netip.Addr
	// NodePortAddresses selects the addresses NodePorts are served on:
	// "primary" (the node's primary address of each family) and/or CIDRs.
	// Empty means "primary".
	NodePortAddresses []string
	// MasqueradeAll masquerades all traffic to ClusterIPs, also from local
	// pods.
	MasqueradeAll bool
	// Egress configures pod egress masquerading (ip-masq-agent semantics).
	Egress EgressConfig
	// ProxyName is the service-proxy-name label value that names this
	// proxy; Services labelled with another name are ignored.
	ProxyName string
	// SocketLB says that the node's processes connect through the socket
	// load balancer (see State.SocketEndpoints): their TCP connections to
	// ClusterIPs are balanced at connect(). Ignored with MasqueradeAll,
	// which needs every ClusterIP connection to be translated by the
	// kernel.
	SocketLB bool
	// UntrackPodTCP, with SocketLB, leaves TCP between pods that no rule
	// of kubenat's can have translated untracked (State.TrackedEndpoints):
	// faster, but wrong for pods whose connects the balancer does not see
	// and for DNAT that others do (e.g. hostPorts); see docs/design.md.
	UntrackPodTCP bool
}

// EgressConfig is ip-masq-agent's configuration: which destinations pod
// traffic may reach with its own source address.
type EgressConfig struct {
	// NonMasqueradeCIDRs are destinations reached without SNAT. Nil means
	// the default: the RFC 1918 ranges (IPv4) and the unique local range
	// fc00::/7 (IPv6). The cluster CIDRs are always added.
	NonMasqueradeCIDRs []netip.Prefix
	// MasqLinkLocal masquerades traffic to 169.254.0.0/16 too.
	MasqLinkLocal bool
	// MasqLinkLocalIPv6 masquerades traffic to fe80::/10 too.
	MasqLinkLocalIPv6 bool
}

// DefaultNonMasqueradeCIDRs are used when EgressConfig.NonMasqueradeCIDRs is nil.
var defaultNonMasqueradeCIDRs = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("fc00::/7"),
}

// DefaultNonMasqueradeCIDRs returns the default non-masquerade ranges.
func DefaultNonMasqueradeCIDRs() []netip.Prefix {
	return append([]netip.Prefix(nil), defaultNonMasqueradeCIDRs...)
}

var (
	linkLocal4 = netip.MustParsePrefix("169.254.0.0/16")
	linkLocal6 = netip.MustParsePrefix("fe80::/10")
)

// NodePortsByCIDR reports whether NodePortAddresses selects addresses by
// CIDR, so the NodePort frontends depend on LocalAddrs.
func (c *Config) NodePortsByCIDR() bool {
	for _, s := range c.NodePortAddresses {
		if s != "primary" {
			return true
		}
	}
	return false
}

// NeedsLocalAddrs reports whether the rules depend on LocalAddrs: NodePorts
// selected by CIDR, or pod-to-pod TCP left untracked (whatever SocketLB
// says: the agent may turn the balancer on and off).
func (c *Config) NeedsLocalAddrs() bool { return c.NodePortsByCIDR() || c.UntrackPodTCP }

// NonMasqueradeCIDRs returns, for one family, every destination range pod
// traffic reaches without SNAT: the configured (or default) ranges, the
// cluster CIDRs, and link-local unless it is masqueraded.
func (c *Config) NonMasqueradeCIDRs(f Family) []netip.Prefix {
	base := c.Egress.NonMasqueradeCIDRs
	if base == nil {
		base = defaultNonMasqueradeCIDRs
	}
	out := filterPrefixes(base, f)
	out = append(out, filterPrefixes(c.ClusterCIDRs, f)...)
	if f == IPv4 && !c.Egress.MasqLinkLocal {
		out = append(out, linkLocal4)
	}
	if f == IPv6 && !c.Egress.MasqLinkLocalIPv6 {
		out = append(out, linkLocal6)
	}
	return mergePrefixes(out)
}

// Validate checks the configuration and returns the first problem found.
func (c *Config) Validate() error {
	if c.NodeName == "" {
		return fmt.Errorf("node name: must be set")
	}
	if len(c.ClusterCIDRs) == 0 {
		return fmt.Errorf("cluster CIDR: at least one must be set")
	}
	seen := map[Family]bool{}
	for _, p := range c.ClusterCIDRs {
		if !p.IsValid() {
			return fmt.Errorf("cluster CIDR: invalid prefix")
		}
		f := FamilyOf(p.Addr())
		if seen[f] {
			return fmt.Errorf("cluster CIDR %s: only one %s cluster CIDR is allowed", p, f)
		}
		seen[f] = true
	}
	for _, a := range c.NodePortAddresses {
		if a == "primary" {
			continue
		}
		if _, err := netip.ParsePrefix(a); err != nil {
			return fmt.Errorf("nodePortAddresses %q: must be \"primary\" or a CIDR", a)
		}
	}
	return nil
}

// mergePrefixes returns the prefixes in canonical form, sorted, with ranges
// contained in another one removed.
func mergePrefixes(ps []netip.Prefix) []netip.Prefix {
	cp := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		cp = append(cp, p.Masked())
	}
	sortPrefixes(cp)
	var out []netip.Prefix
	for _, p := range cp {
		covered := false
		for _, q := range out {
			if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	return out
}
