package model

import (
	"net/netip"
	"slices"
)

// The tc NAT (Config.TCNAT) translates new IPv4 TCP and UDP connections
// from outside the node to external frontends (NodePorts, externalIPs,
// LoadBalancer IPs) in eBPF programs on the node's interfaces, with
// connection state of their own, before netfilter sees a packet. It only
// accelerates: what it does not hold, nftables serves as before.

// TCNATService is how the tc NAT serves one external frontend: the
// endpoints a new connection from outside the node is spread over, and
// whether its source is rewritten to the node's address.
type TCNATService struct {
	Endpoints []Endpoint
	// Masquerade is externalTrafficPolicy Cluster: the source becomes the
	// node's address.
	Masquerade bool
	// LocalPolicy is externalTrafficPolicy Local: a source this node
	// classifies as one of its pods (detectLocalMode by CIDR) is left to
	// nftables, which sends it to the cluster endpoints.
	LocalPolicy bool
}

// MaxTCNATEndpoints is the most endpoints the tc NAT's programs spread a
// frontend over (they count them in 16 bits).
const MaxTCNATEndpoints = 0xffff

// TCNAT says how the tc NAT serves frontend fe of sp, and false when it
// leaves it to the kernel's rules. It follows Decide for a source outside
// the node, and leaves out what the programs do not implement:
//   - the tc NAT is off, the port is not IPv4, or not TCP or UDP;
//   - fe is a ClusterIP (pods and the node reach those through the stack);
//   - ClientIP session affinity;
//   - a LoadBalancer IP of a Service with loadBalancerSourceRanges;
//   - a frontend whose decision is not to forward (no endpoints: refused;
//     Local without a local endpoint: dropped), which nftables carries out;
//   - more than MaxTCNATEndpoints endpoints;
//   - an endpoint at one of the node's own addresses (a hostNetwork pod:
//     delivered locally, which the programs do not do).
func (s *State) TCNAT(sp *ServicePort, fe Frontend) (TCNATService, bool) {
	if !s.Config.TCNAT || sp.Name.Family != IPv4 || !fe.Addr.Is4() || fe.Kind == ClusterIP {
		return TCNATService{}, false
	}
	if sp.Name.Protocol != TCP && sp.Name.Protocol != UDP {
		return TCNATService{}, false
	}
	if sp.AffinityTimeout > 0 || (fe.Kind == LoadBalancerIP && sp.FirewallLB) {
		return TCNATService{}, false
	}
	d := sp.Decide(fe.Kind, FromOutside, true, s.Config.MasqueradeAll)
	if d.Verdict != Forward {
		return TCNATService{}, false
	}
	eps := sp.GroupEndpoints(d.Group)
	if len(eps) == 0 || len(eps) > MaxTCNATEndpoints {
		return TCNATService{}, false
	}
	for _, ep := range eps {
		if ep.Local && (slices.Contains(s.Node.Addrs, ep.Addr) || slices.Contains(s.Config.LocalAddrs, ep.Addr)) {
			return TCNATService{}, false
		}
	}
	return TCNATService{Endpoints: eps, Masquerade: d.Masquerade, LocalPolicy: sp.ExternalPolicyLocal}, true
}

// DirectPodCIDR returns the cluster CIDR between whose addresses the tc
// NAT's pod program delivers TCP from one of this node's pods to another
// directly (Config.TCNATPodToPod), and false when it does not: the tc NAT
// is off, pod-to-pod TCP is tracked (UntrackActive is false), or the
// cluster has no IPv4 CIDR. The programs take exactly the packets the
// untracked chain would leave untracked: between addresses of the CIDR,
// neither side one of TrackedEndpoints, the destination a pod of this
// node (so never one of the node's own addresses).
func (s *State) DirectPodCIDR() (netip.Prefix, bool) {
	if !s.Config.TCNAT || !s.Config.TCNATPodToPod {
		return netip.Prefix{}, false
	}
	return s.UntrackedCIDR(IPv4)
}
