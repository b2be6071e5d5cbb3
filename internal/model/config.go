package model

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
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
	// It needs a cluster CIDR.
	UntrackPodTCP bool
	// TCNAT says that eBPF programs on the node's interfaces translate new
	// IPv4 TCP and UDP connections from outside the node to external
	// frontends (see State.TCNAT) before netfilter sees them.
	TCNAT bool
	// TCNATPorts is the range of source ports the tc NAT allocates when
	// it masquerades (inclusive; the agent sets it with TCNAT). The
	// kernel's masquerade then uses other ports (MasqueradePorts), so that
	// the two never pick the same address and port towards the same
	// endpoint: neither sees the other's connections.
	TCNATPorts [2]uint16
	// TCNATPodToPod says that the tc NAT's pod program delivers TCP
	// between two of this node's pods that the untracked chain would
	// leave untracked straight into the destination pod's namespace, past
	// the bridge and netfilter (see State.DirectPodCIDR). It needs TCNAT
	// and UntrackPodTCP.
	TCNATPodToPod bool
	// LocalDetect says how a packet from a pod on this node is told from
	// others. The zero value is DetectNodeCIDR.
	LocalDetect LocalDetect
	// ServiceCIDRs are ranges ClusterIPs are allocated from (the API
	// server's --service-cluster-ip-range); the cluster's ServiceCIDR
	// objects add theirs (see State.ServiceCIDRs). A connection to an
	// address of them that no rule DNATed is dropped.
	ServiceCIDRs []netip.Prefix
}

// LocalDetectMode is a way to tell traffic from this node's pods (kube-proxy's
// detectLocalMode).
type LocalDetectMode uint8

const (
	// DetectNodeCIDR: the source address is in the Node's spec.podCIDRs (the
	// cluster CIDRs when the Node gives none). The default.
	DetectNodeCIDR LocalDetectMode = iota
	// DetectBridgeInterface: the packet arrives on LocalDetect.Interface,
	// the bridge of the node's pods (a bridge CNI: cni0, cbr0).
	DetectBridgeInterface
	// DetectInterfacePrefix: the packet arrives on an interface whose name
	// starts with LocalDetect.Interface (a routed CNI giving every pod an
	// interface of its own: veth, cali, eni).
	DetectInterfacePrefix
)

// String returns the mode's name as kube-proxy's configuration spells it.
func (m LocalDetectMode) String() string {
	switch m {
	case DetectBridgeInterface:
		return "BridgeInterface"
	case DetectInterfacePrefix:
		return "InterfaceNamePrefix"
	}
	return "NodeCIDR"
}

// LocalDetect configures how traffic from this node's pods is recognized.
// With the interface modes, no cluster CIDR is needed: pod egress is
// masqueraded by the interface it arrives on too (clusters whose pods take
// addresses from the node's network, as with AWS VPC CNI, have none).
type LocalDetect struct {
	Mode LocalDetectMode
	// Interface is the bridge's name (DetectBridgeInterface) or the prefix
	// of the pods' interfaces (DetectInterfacePrefix); empty for
	// DetectNodeCIDR.
	Interface string
}

// ByInterface reports whether the pods are recognized by their interface.
func (d LocalDetect) ByInterface() bool { return d.Mode != DetectNodeCIDR }

// Matches reports whether a packet arriving on the interface named iif comes
// from a pod of this node; it is false for DetectNodeCIDR and for "".
func (d LocalDetect) Matches(iif string) bool {
	switch d.Mode {
	case DetectBridgeInterface:
		return iif == d.Interface
	case DetectInterfacePrefix:
		return strings.HasPrefix(iif, d.Interface)
	}
	return false
}

// Describe says in words which packets come from this node's pods, e.g.
// `arriving on the bridge "cni0"`.
func (d LocalDetect) Describe() string {
	switch d.Mode {
	case DetectBridgeInterface:
		return fmt.Sprintf("arriving on the bridge %q", d.Interface)
	case DetectInterfacePrefix:
		return fmt.Sprintf("arriving on an interface whose name starts with %q", d.Interface)
	}
	return "with a source in this node's pod CIDRs"
}

// validInterfaceName matches what kubenat accepts as an interface name or
// prefix: what Linux allows in practice, without characters that would need
// quoting in the nftables ruleset.
var validInterfaceName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// InterfaceNameRule says what ValidInterfaceName accepts, for error
// messages.
const InterfaceNameRule = "1 to 15 letters, digits, '_', '.' or '-', not . or .."

// ValidInterfaceName reports whether name can be an interface's name (or
// a prefix of names) as kubenat accepts it (InterfaceNameRule).
func ValidInterfaceName(name string) bool {
	return validInterfaceName.MatchString(name) && name != "." && name != ".."
}

// Validate checks that the interface name suits the mode.
func (d LocalDetect) Validate() error {
	switch d.Mode {
	case DetectNodeCIDR:
		if d.Interface != "" {
			return fmt.Errorf("local traffic detection NodeCIDR takes no interface (%q given)", d.Interface)
		}
	case DetectBridgeInterface, DetectInterfacePrefix:
		if !ValidInterfaceName(d.Interface) {
			return fmt.Errorf("local traffic detection %s: interface %q must be %s", d.Mode, d.Interface, InterfaceNameRule)
		}
	default:
		return fmt.Errorf("local traffic detection: unknown mode %d", d.Mode)
	}
	return nil
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

// MasqueradePorts returns the source ports the kernel's IPv4 masquerade
// (Service, hairpin and egress) picks from for TCP and UDP, and false
// when any will do: with the tc NAT, the larger range of 1024-65535
// outside TCNATPorts.
func (c *Config) MasqueradePorts() (lo, hi uint16, ok bool) {
	a, b := c.TCNATPorts[0], c.TCNATPorts[1]
	if !c.TCNAT || a == 0 || a > b {
		return 0, 0, false
	}
	below := int(a) - 1024
	above := 65535 - int(b)
	switch {
	case below >= above && below > 0:
		return 1024, a - 1, true
	case above > 0:
		return b + 1, 65535, true
	}
	return 0, 0, false
}

// NeedsLocalAddrs reports whether the rules depend on LocalAddrs: NodePorts
// selected by CIDR, pod-to-pod TCP left untracked (whatever SocketLB
// says: the agent may turn the balancer on and off), or the tc NAT (which
// leaves endpoints at the node's addresses to the stack).
func (c *Config) NeedsLocalAddrs() bool { return c.NodePortsByCIDR() || c.UntrackPodTCP || c.TCNAT }

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
	if err := c.LocalDetect.Validate(); err != nil {
		return err
	}
	if len(c.ClusterCIDRs) == 0 && !c.LocalDetect.ByInterface() {
		return fmt.Errorf("cluster CIDR: at least one must be set (or detect the pods by their interface)")
	}
	if len(c.ClusterCIDRs) == 0 && c.UntrackPodTCP {
		return fmt.Errorf("untracking pod TCP needs a cluster CIDR")
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
	for _, p := range c.ServiceCIDRs {
		if err := c.CheckServiceCIDR(p); err != nil {
			return fmt.Errorf("service CIDR %s: %w", p, err)
		}
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

// CheckServiceCIDR says what is wrong with p as a Service CIDR, whose
// addresses no DNAT took are dropped: an IPv4-mapped IPv6 prefix (write
// the IPv4 one), the whole address space, or a range that overlaps a
// cluster CIDR (pod traffic would be dropped).
func (c *Config) CheckServiceCIDR(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("not a valid prefix")
	case p.Addr().Is4In6():
		return fmt.Errorf("an IPv4-mapped IPv6 prefix: write it as an IPv4 one")
	case p.Bits() == 0:
		return fmt.Errorf("the whole address space: every destination would be dropped")
	}
	for _, cc := range c.ClusterCIDRs {
		if cc.Overlaps(p) {
			return fmt.Errorf("overlaps the cluster CIDR %s: pod traffic would be dropped", cc)
		}
	}
	return nil
}

// covers reports whether every address of inner is in outer.
func covers(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
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
			if covers(q, p) {
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
