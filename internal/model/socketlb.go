package model

import (
	"net/netip"
	"slices"
)

// The socket load balancer rewrites a TCP connect() to a ClusterIP into a
// connect() to one of the Service's endpoints, before any packet exists.
// Such a connection is pod (or node) to pod from its first packet: no
// DNAT, nothing for conntrack to undo, so TCP between pods can skip
// connection tracking altogether, which is most of what a new connection
// through a Service costs.
//
// Skipping conntrack (Config.UntrackPodTCP) is only correct for flows no
// rule translates. Pod to pod TCP is translated by kubenat's rules in two
// cases, and the endpoints involved are kept tracked (TrackedEndpoints):
//   - ClusterIP ports the socket load balancer does not serve (session
//     affinity): their DNAT needs conntrack to reverse the reply;
//   - externalTrafficPolicy: Local ports: a pod of this node reaching the
//     NodePort or a LoadBalancer IP is DNATed without masquerade, and a
//     pod of another node reaching this node's NodePort keeps its address.
// Every other flow kubenat translates is masqueraded to a node address,
// and its replies (to a local address) stay tracked. DNAT done by others
// (a CNI's hostPorts) and pods whose connects the balancer does not see
// are not known here: that is why untracking is a choice of its own.

// SocketLBActive reports whether the socket load balancer serves this
// State: it is configured and MasqueradeAll is off.
func (s *State) SocketLBActive() bool { return s.Config.SocketLB && !s.Config.MasqueradeAll }

// UntrackActive reports whether pod-to-pod TCP is left untracked: the
// socket load balancer is active and Config.UntrackPodTCP is set.
func (s *State) UntrackActive() bool { return s.SocketLBActive() && s.Config.UntrackPodTCP }

// UntrackedCIDR returns the cluster CIDR of family f between whose
// addresses TCP is left untracked (the first of that family in
// Config.ClusterCIDRs, masked; the configuration allows one per family),
// and false when nothing of that family is untracked.
func (s *State) UntrackedCIDR(f Family) (netip.Prefix, bool) {
	if !s.UntrackActive() {
		return netip.Prefix{}, false
	}
	for _, p := range s.Config.ClusterCIDRs {
		if FamilyOf(p.Addr()) == f {
			return p.Masked(), true
		}
	}
	return netip.Prefix{}, false
}

// SocketEndpoints returns the endpoints the socket load balancer spreads a
// connect() to sp's ClusterIP over, and false when it leaves sp to the
// kernel's rules: when it is not active, for non-TCP ports, ports
// with ClientIP affinity, ports whose ClusterIP frontend another Service
// holds (see ServicePort.Frontends: the rules serve that one), and ports
// without an endpoint for cluster traffic (whose rules refuse or drop the
// connection).
func (s *State) SocketEndpoints(sp *ServicePort) ([]Endpoint, bool) {
	if !s.SocketLBActive() || sp.Name.Protocol != TCP || sp.AffinityTimeout > 0 {
		return nil, false
	}
	if !slices.ContainsFunc(sp.Frontends, func(f Frontend) bool { return f.Kind == ClusterIP }) {
		return nil, false
	}
	eps := sp.InternalEndpoints()
	if len(eps) == 0 {
		return nil, false
	}
	return eps, true
}

// TrackedEndpoints returns the endpoints of sp whose TCP traffic to and
// from pods must stay tracked when pod-to-pod TCP is untracked (see the
// comment above): all of sp's endpoints when the kernel's rules may DNAT
// pod traffic to them without masquerade, else none. It returns nil when
// nothing is untracked (UntrackActive is false) and for non-TCP ports
// (only TCP is untracked).
func (s *State) TrackedEndpoints(sp *ServicePort) []Endpoint {
	if !s.UntrackActive() || sp.Name.Protocol != TCP {
		return nil
	}
	if _, ok := s.SocketEndpoints(sp); !ok {
		return sp.Endpoints
	}
	if sp.ExternalPolicyLocal {
		for _, fe := range sp.Frontends {
			if fe.Kind.External() {
				return sp.Endpoints
			}
		}
	}
	return nil
}
