// Package model turns Kubernetes objects (Services, EndpointSlices, the Node)
// plus node-local configuration into the State a datapath programs.
//
// The model is pure data: it imports no netlink or client-go packages, it is
// deterministic, and it is the one place where Kubernetes Service semantics
// live. Datapath backends render the State; they never re-decide policy.
package model

import (
	"fmt"
	"net/netip"
	"time"
)

// Family is an IP address family.
type Family uint8

const (
	// IPv4 is the IPv4 family.
	IPv4 Family = 4
	// IPv6 is the IPv6 family.
	IPv6 Family = 6
)

// Families lists the supported families in rendering order.
var Families = [...]Family{IPv4, IPv6}

// String returns "IPv4" or "IPv6".
func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// FamilyOf returns the family of a (valid) address. IPv4-mapped IPv6
// addresses count as IPv4.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Protocol is a transport protocol a Service port can use.
type Protocol string

// The protocols a Service port may carry.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// ServiceKey names a Service.
type ServiceKey struct {
	Namespace string
	Name      string
}

// String returns "namespace/name".
func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// Less orders keys by namespace, then name.
func (k ServiceKey) Less(o ServiceKey) bool {
	if k.Namespace != o.Namespace {
		return k.Namespace < o.Namespace
	}
	return k.Name < o.Name
}

// ServicePortName names one port of a Service, in one family.
type ServicePortName struct {
	ServiceKey
	Port     string // the port's name; empty for a single unnamed port
	Protocol Protocol
	Family   Family
}

// String returns "namespace/name:port/PROTO/family", e.g. "default/web:http/TCP/IPv4".
func (n ServicePortName) String() string {
	return fmt.Sprintf("%s:%s/%s/%s", n.ServiceKey, n.Port, n.Protocol, n.Family)
}

// Endpoint is one backend of a Service port: a pod address and port, with
// the conditions EndpointSlices report for it.
type Endpoint struct {
	Addr        netip.Addr
	Port        uint16
	NodeName    string
	Local       bool // NodeName is this node
	Ready       bool
	Serving     bool
	Terminating bool
	// Hints are the endpoint's topology hints, as they concern this node.
	Hints Hints
}

// Hints say what an endpoint's topology hints (EndpointSlice
// hints.forZones, set for trafficDistribution PreferClose/PreferSameZone
// and topology-mode Auto; hints.forNodes, for PreferSameNode) mean for
// this node. The spelling of the hints themselves is not kept: the model
// is built for one node.
type Hints uint8

// Hint bits.
const (
	HasZoneHints Hints = 1 << iota // the endpoint has zone hints
	ForThisZone                    // one of them is this node's zone
	HasNodeHints                   // the endpoint has node hints
	ForThisNode                    // one of them is this node
)

// AddrPort returns the endpoint's address and port.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.Addr, e.Port) }

// String returns "ip:port".
func (e Endpoint) String() string { return e.AddrPort().String() }

// FrontendKind says how traffic addressed a Service.
type FrontendKind uint8

// Frontend kinds, in the order the State lists them.
const (
	ClusterIP FrontendKind = iota
	NodePort
	ExternalIP
	LoadBalancerIP
)

// String returns the kind's name as operators know it.
func (k FrontendKind) String() string {
	switch k {
	case ClusterIP:
		return "ClusterIP"
	case NodePort:
		return "NodePort"
	case ExternalIP:
		return "ExternalIP"
	case LoadBalancerIP:
		return "LoadBalancerIP"
	}
	return fmt.Sprintf("FrontendKind(%d)", uint8(k))
}

// External reports whether traffic through this kind of frontend is
// "external" in the Kubernetes sense (subject to externalTrafficPolicy).
func (k FrontendKind) External() bool { return k != ClusterIP }

// Frontend is one destination address:port that reaches a Service port.
// NodePorts appear once per node address they are served on.
type Frontend struct {
	Kind FrontendKind
	Addr netip.Addr
	Port uint16
}

// Key identifies a frontend across all Services: the destination a packet
// carries.
func (f Frontend) Key(p Protocol) FrontendKey {
	return FrontendKey{Addr: f.Addr, Protocol: p, Port: f.Port}
}

// FrontendKey is the (destination address, protocol, destination port)
// triple a datapath matches.
type FrontendKey struct {
	Addr     netip.Addr
	Protocol Protocol
	Port     uint16
}

// String returns "addr:port/PROTO".
func (k FrontendKey) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Addr, k.Port), k.Protocol)
}

// ServicePort is everything a datapath needs to serve one port of one
// Service in one address family.
type ServicePort struct {
	Name ServicePortName

	// ClusterIP and Port are the Service's virtual address for this family.
	ClusterIP netip.Addr
	Port      uint16
	// NodePort is the allocated node port, or 0.
	NodePort uint16
	// Frontends are the destinations that reach this port: the ClusterIP,
	// then each node address the NodePort is served on, then externalIPs,
	// then LoadBalancer ingress IPs. A frontend another Service already
	// claims is left out (see State.Errors).
	Frontends []Frontend

	// ExternalPolicyLocal is externalTrafficPolicy: Local.
	ExternalPolicyLocal bool
	// InternalPolicyLocal is internalTrafficPolicy: Local.
	InternalPolicyLocal bool
	// AffinityTimeout is the ClientIP session affinity timeout; 0 means no
	// affinity.
	AffinityTimeout time.Duration
	// FirewallLB is true when the LoadBalancer frontends admit only
	// SourceRanges (the Service sets loadBalancerSourceRanges).
	FirewallLB bool
	// SourceRanges are the sources the LoadBalancer frontends admit when
	// FirewallLB is set: the ranges of this family, plus the LoadBalancer
	// IPs themselves when a range contains a node address. Empty admits
	// nothing.
	SourceRanges []netip.Prefix
	// HealthCheckNodePort is served for externalTrafficPolicy: Local
	// LoadBalancer Services; 0 otherwise.
	HealthCheckNodePort uint16

	// Endpoints are all endpoints the EndpointSlices list for this port and
	// family, deduplicated, sorted by address and port.
	Endpoints []Endpoint
	// ClusterEndpoints is the group that "cluster" traffic is spread over:
	// the ready endpoints (narrowed by topology hints: see
	// TopologyFilter), or, when none is ready, the serving and terminating
	// ones.
	ClusterEndpoints []Endpoint
	// LocalEndpoints is the group "local" policies use: ready endpoints on
	// this node, or, when none is, the serving and terminating ones on this
	// node.
	LocalEndpoints []Endpoint
}

// HasEndpoints reports whether any endpoint can take traffic at all. A
// Service port without one rejects new connections.
func (sp *ServicePort) HasEndpoints() bool { return len(sp.ClusterEndpoints) > 0 }

// InternalEndpoints is the group ClusterIP traffic uses.
func (sp *ServicePort) InternalEndpoints() []Endpoint {
	if sp.InternalPolicyLocal {
		return sp.LocalEndpoints
	}
	return sp.ClusterEndpoints
}

// ExternalEndpoints is the group external traffic from outside the node
// uses (NodePort, externalIP and LoadBalancer frontends).
func (sp *ServicePort) ExternalEndpoints() []Endpoint {
	if sp.ExternalPolicyLocal {
		return sp.LocalEndpoints
	}
	return sp.ClusterEndpoints
}

// Node is what the model knows about the node it programs.
type Node struct {
	Name string
	// Addrs are the node's addresses NodePorts are served on, per family.
	Addrs []netip.Addr
	// PodCIDRs are the ranges this node's pods use (Node.spec.podCIDRs); when
	// empty, the cluster CIDRs stand in for them.
	PodCIDRs []netip.Prefix
	// Zone is the Node's topology.kubernetes.io/zone label ("" without).
	Zone string
}

// State is the whole desired datapath state of a node.
type State struct {
	Node   Node
	Config Config
	// Services maps each programmed Service to its ports (all families),
	// sorted by family, protocol, port number and name.
	Services map[ServiceKey][]ServicePort
	// Errors are the problems found in the input; the objects they name are
	// left out (or kept at their last good version by a Builder).
	Errors []error
	// ServiceCIDRs are the ranges ClusterIPs come from: Config.ServiceCIDRs
	// and the cluster's ServiceCIDR objects, masked, sorted, without
	// ranges another one holds. A new connection still addressed to one of
	// them once every DNAT is done (no Service, or another proxy's, took
	// it) is dropped, as kube-proxy drops it: without that it would follow
	// the default route out of the cluster.
	ServiceCIDRs []netip.Prefix
}

// ServiceCIDR returns the range of State.ServiceCIDRs that holds a, and
// false when none does.
func (s *State) ServiceCIDR(a netip.Addr) (netip.Prefix, bool) {
	for _, p := range s.ServiceCIDRs {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// SortedKeys returns the Service keys in namespace/name order.
func (s *State) SortedKeys() []ServiceKey {
	keys := make([]ServiceKey, 0, len(s.Services))
	for k := range s.Services {
		keys = append(keys, k)
	}
	sortKeys(keys)
	return keys
}

// LocalPodCIDRs returns the prefixes that identify "a pod on this node" for
// the given family: the node's pod CIDRs, or the cluster CIDRs when the Node
// does not say.
func (s *State) LocalPodCIDRs(f Family) []netip.Prefix {
	if p := filterPrefixes(s.Node.PodCIDRs, f); len(p) > 0 {
		return p
	}
	return filterPrefixes(s.Config.ClusterCIDRs, f)
}

// NodeAddrs returns the node addresses of one family.
func (s *State) NodeAddrs(f Family) []netip.Addr { return filterAddrs(s.Node.Addrs, f) }

func filterPrefixes(ps []netip.Prefix, f Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if FamilyOf(p.Addr()) == f {
			out = append(out, p)
		}
	}
	return out
}

func filterAddrs(as []netip.Addr, f Family) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		if FamilyOf(a) == f {
			out = append(out, a)
		}
	}
	return out
}
