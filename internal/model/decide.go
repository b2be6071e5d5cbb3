package model

import (
	"fmt"
	"net/netip"
)

// SourceClass is what the datapath knows about where a packet comes from.
type SourceClass uint8

const (
	// FromOutside is traffic from another host: an external client, or a
	// pod on another node.
	FromOutside SourceClass = iota
	// FromLocalPod is traffic from a pod on this node (its source is in the
	// node's pod CIDRs, or it arrives on a pod interface: Config.LocalDetect).
	FromLocalPod
	// FromNode is traffic the node itself sends (locally generated, or with
	// a source address of the node).
	FromNode
)

// String names the class.
func (c SourceClass) String() string {
	switch c {
	case FromLocalPod:
		return "pod on this node"
	case FromNode:
		return "this node"
	}
	return "outside this node"
}

// Classify says which class a packet's source belongs to on this node.
// local is true for packets the node generates, or whose source is one of
// the node's own addresses. iif is the interface the packet arrives on:
// with Config.LocalDetect by interface it alone decides between a local
// pod and outside ("" is outside); by CIDR it is not used.
func (s *State) Classify(src netip.Addr, iif string, local bool) SourceClass {
	if local {
		return FromNode
	}
	if d := s.Config.LocalDetect; d.ByInterface() {
		if d.Matches(iif) {
			return FromLocalPod
		}
		return FromOutside
	}
	for _, p := range s.LocalPodCIDRs(FamilyOf(src)) {
		if p.Contains(src) {
			return FromLocalPod
		}
	}
	return FromOutside
}

// Verdict is what happens to a new connection to a Service frontend.
type Verdict uint8

const (
	// Forward: DNAT to an endpoint of the chosen group.
	Forward Verdict = iota
	// Reject: refuse at once (TCP reset or ICMP port unreachable).
	Reject
	// Drop: discard silently.
	Drop
)

// String names the verdict.
func (v Verdict) String() string {
	switch v {
	case Reject:
		return "reject"
	case Drop:
		return "drop"
	}
	return "forward"
}

// Group names an endpoint group.
type Group uint8

const (
	// ClusterGroup is ServicePort.ClusterEndpoints.
	ClusterGroup Group = iota
	// LocalGroup is ServicePort.LocalEndpoints.
	LocalGroup
)

// String names the group.
func (g Group) String() string {
	if g == LocalGroup {
		return "local endpoints"
	}
	return "cluster endpoints"
}

// Decision is the model's answer for a new connection reaching a Service
// frontend: the reference semantics every datapath implements.
type Decision struct {
	Verdict Verdict
	// Group is the endpoint group a Forward spreads over.
	Group Group
	// Masquerade says whether the source is rewritten to the node's address
	// (before hairpin, which Hairpin adds).
	Masquerade bool
	// Why explains the decision in one sentence, naming the rule applied.
	Why string
}

// Decide applies the Service semantics to a new connection from a source of
// class src reaching frontend kind k of this port. sourceAdmitted is false
// when loadBalancerSourceRanges exclude the source (LoadBalancer frontends
// only). masqueradeAll is Config.MasqueradeAll.
func (sp *ServicePort) Decide(k FrontendKind, src SourceClass, sourceAdmitted, masqueradeAll bool) Decision {
	if k == LoadBalancerIP && !sourceAdmitted {
		return Decision{Verdict: Drop, Why: "source is outside loadBalancerSourceRanges"}
	}
	if !sp.HasEndpoints() {
		return Decision{Verdict: Reject, Why: "the Service has no usable endpoints"}
	}
	var d Decision
	switch {
	case k == ClusterIP:
		d.Group = ClusterGroup
		if sp.InternalPolicyLocal {
			d.Group = LocalGroup
		}
		switch {
		case masqueradeAll:
			d.Masquerade, d.Why = true, "ClusterIP with masqueradeAll: masquerade"
		case src == FromLocalPod:
			d.Why = "ClusterIP from a pod on this node: source kept"
		default:
			d.Masquerade, d.Why = true, "ClusterIP from "+src.String()+": masquerade so replies return through this node"
		}
		if d.Group == LocalGroup && len(sp.LocalEndpoints) == 0 {
			return Decision{Verdict: Drop, Group: LocalGroup, Why: "internalTrafficPolicy Local and no endpoint on this node"}
		}
	case !sp.ExternalPolicyLocal:
		d.Group, d.Masquerade = ClusterGroup, true
		d.Why = k.String() + " with externalTrafficPolicy Cluster: masquerade"
	case src == FromNode:
		d.Group, d.Masquerade = ClusterGroup, true
		d.Why = k.String() + " with externalTrafficPolicy Local from this node: cluster endpoints, masquerade"
	case src == FromLocalPod:
		d.Group = ClusterGroup
		d.Why = k.String() + " with externalTrafficPolicy Local from a pod on this node: short-circuit to the cluster endpoints, source kept"
	default:
		d.Group = LocalGroup
		d.Why = k.String() + " with externalTrafficPolicy Local: local endpoints only, client source kept"
		if len(sp.LocalEndpoints) == 0 {
			return Decision{Verdict: Drop, Group: LocalGroup, Why: "externalTrafficPolicy Local and no endpoint on this node"}
		}
	}
	d.Verdict = Forward
	return d
}

// GroupEndpoints returns the endpoints of a group.
func (sp *ServicePort) GroupEndpoints(g Group) []Endpoint {
	if g == LocalGroup {
		return sp.LocalEndpoints
	}
	return sp.ClusterEndpoints
}

// AdmitsSource reports whether loadBalancerSourceRanges admit src to the
// LoadBalancer frontends.
func (sp *ServicePort) AdmitsSource(src netip.Addr) bool {
	if !sp.FirewallLB {
		return true
	}
	for _, p := range sp.SourceRanges {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// Hairpin reports whether a connection from src DNATed to ep is a pod
// reaching itself through its Service; such traffic is masqueraded so the
// reply comes back through the node.
func Hairpin(src netip.Addr, ep Endpoint) bool { return src == ep.Addr }

// EgressMasquerade reports whether traffic from src, of class, to dst (not
// addressed to a Service, or its endpoint once DNATed) leaves with the
// node's address: pod traffic to a destination outside the non-masquerade
// ranges. Pod traffic is traffic from a source in the cluster CIDRs, or,
// with Config.LocalDetect by interface, from this node's pods.
func (s *State) EgressMasquerade(class SourceClass, src, dst netip.Addr) bool {
	f := FamilyOf(src)
	if !s.FromPod(class, src) {
		return false
	}
	for _, p := range s.Config.NonMasqueradeCIDRs(f) {
		if p.Contains(dst) {
			return false
		}
	}
	return true
}

// Warnings says what in the configuration, given this node, will likely not
// do what the operator wants. With the pods recognized by their interface
// (no cluster CIDR tells pod addresses apart), a pod CIDR of the Node
// outside the non-masquerade ranges makes traffic between pods
// masqueraded.
func (s *State) Warnings() []string {
	if !s.Config.LocalDetect.ByInterface() {
		return nil
	}
	var out []string
	for _, pods := range s.Node.PodCIDRs {
		covered := false
		for _, p := range s.Config.NonMasqueradeCIDRs(FamilyOf(pods.Addr())) {
			covered = covered || covers(p, pods)
		}
		if !covered {
			out = append(out, fmt.Sprintf("this node's pod CIDR %s is outside the non-masquerade ranges: with detectLocalMode %s, traffic from its pods to other pods is masqueraded (add it to nonMasqueradeCIDRs)",
				pods, s.Config.LocalDetect.Mode))
		}
	}
	return out
}

// FromPod reports whether a packet from src, of class, is pod traffic for
// egress masquerading: with Config.LocalDetect by interface, traffic from
// this node's pods; otherwise traffic whose source is in a cluster CIDR.
func (s *State) FromPod(class SourceClass, src netip.Addr) bool {
	if s.Config.LocalDetect.ByInterface() {
		return class == FromLocalPod
	}
	for _, p := range filterPrefixes(s.Config.ClusterCIDRs, FamilyOf(src)) {
		if p.Contains(src) {
			return true
		}
	}
	return false
}
