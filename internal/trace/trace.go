// Package trace explains what kubenat does to a packet: for the first packet
// of a connection and a node's State, it lists the steps the packet takes
// through the node's NAT — the Service frontend it matches (or none), the
// traffic policy that applies, every endpoint with its probability or the
// reason it is excluded, session affinity, the DNAT result, whether the
// source is masqueraded and which rule decided it, or why the packet is
// rejected or dropped — and, for packets that reach no Service, whether pod
// egress masquerading applies.
//
// trace decides nothing itself: every decision comes from the model
// (State.Classify, ServicePort.Decide, AdmitsSource, GroupEndpoints,
// ExclusionReason, Hairpin, EgressMasquerade). It is the executable form of
// the reference semantics: the kernel tests check that the real datapath
// sends each packet where Trace says (test/kernel/differential_test.go).
//
// Trace is pure: the same State and Packet always give the same Result.
// Live tracing of a real packet through the kernel is in live.go.
package trace

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kubenat/kubenat/internal/model"
)

// Packet is the first packet of a connection as it reaches the node.
type Packet struct {
	Protocol model.Protocol
	// Src is the source; a zero port means "any source port".
	Src netip.AddrPort
	// Dst is the destination address and port; the port must be set.
	Dst netip.AddrPort
	// Local says the node itself generates the packet (the output hook).
	// A packet whose source is one of the node's addresses counts as local
	// too.
	Local bool
	// IIF names the interface the packet arrives on; it implies the
	// prerouting hook. With the pods detected by their interface
	// (model.Config.LocalDetect) it decides whether the packet is from a
	// pod of this node; otherwise it is only shown.
	IIF string
}

// ParseProtocol accepts "tcp", "udp" or "sctp" in any case.
func ParseProtocol(s string) (model.Protocol, error) {
	switch p := model.Protocol(strings.ToUpper(s)); p {
	case model.TCP, model.UDP, model.SCTP:
		return p, nil
	}
	return "", fmt.Errorf("protocol %q: must be tcp, udp or sctp", s)
}

// ParseSource accepts "IP" or "IP:port" ("[IPv6]:port" for IPv6).
func ParseSource(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 0), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("source %q: must be IP or IP:port with a port from 0 to 65535", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// ParseDestination accepts "IP:port" ("[IPv6]:port" for IPv6); the port
// must not be 0.
func ParseDestination(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("destination %q: must be IP:port with a port from 1 to 65535", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// Validate checks that the packet can be traced.
func (p Packet) Validate() error {
	var errs []error
	if _, err := ParseProtocol(string(p.Protocol)); err != nil {
		errs = append(errs, err)
	}
	if !p.Src.Addr().IsValid() {
		errs = append(errs, errors.New("the source address is missing"))
	}
	if !p.Dst.Addr().IsValid() || p.Dst.Port() == 0 {
		errs = append(errs, errors.New("the destination needs an address and a port"))
	}
	if p.Src.Addr().IsValid() && p.Dst.Addr().IsValid() &&
		model.FamilyOf(p.Src.Addr()) != model.FamilyOf(p.Dst.Addr()) {
		errs = append(errs, fmt.Errorf("source %s and destination %s are of different address families", p.Src.Addr(), p.Dst.Addr()))
	}
	if p.IIF != "" && !model.ValidInterfaceName(p.IIF) {
		errs = append(errs, fmt.Errorf("interface %q: must be %s", p.IIF, model.InterfaceNameRule))
	}
	if p.Local && p.IIF != "" {
		errs = append(errs, errors.New("a locally generated packet does not arrive on an interface"))
	}
	return errors.Join(errs...)
}

// Verdict is what happens to the packet on this node.
type Verdict string

// The verdicts. Forward, Reject and Drop come from the model's Decision for
// Service traffic; Deliver and Route are for packets that reach no Service.
const (
	// Forward: DNAT to one of the candidate endpoints.
	Forward Verdict = "forward"
	// Reject: refused at once (TCP reset, or ICMP port unreachable).
	Reject Verdict = "reject"
	// Drop: discarded silently.
	Drop Verdict = "drop"
	// Deliver: addressed to this node itself and not a Service frontend.
	Deliver Verdict = "deliver"
	// Route: not a Service; forwarded as addressed (egress masquerading may
	// apply).
	Route Verdict = "route"
)

// Result is Trace's answer. It marshals to the JSON `kubenat trace --json`
// prints; WriteText renders the same content for people.
type Result struct {
	// Node is the node whose view was traced.
	Node   string     `json:"node"`
	Packet PacketInfo `json:"packet"`
	// Hook is where kubenat first sees the packet: "prerouting" for packets
	// from the network, "output" for locally generated ones.
	Hook   string `json:"hook"`
	Source Source `json:"source"`
	// Frontend is the Service frontend the destination matched; nil when
	// none did.
	Frontend *Frontend `json:"frontend,omitempty"`
	// Policy is the traffic policy that applied (Service traffic only).
	Policy *Policy `json:"policy,omitempty"`
	// Endpoints lists the candidates and the excluded endpoints (Service
	// traffic only, and not when loadBalancerSourceRanges drop the packet).
	Endpoints *Endpoints `json:"endpoints,omitempty"`
	Affinity  *Affinity  `json:"affinity,omitempty"`
	Verdict   Verdict    `json:"verdict"`
	// Reason explains the verdict in one sentence.
	Reason string `json:"reason"`
	// RejectWith is how a rejected packet is refused: "TCP reset" or
	// "ICMP port unreachable".
	RejectWith string `json:"rejectWith,omitempty"`
	// SocketLB is true when the socket load balancer serves the
	// connection: a TCP connect() from this node (a pod or the node
	// itself) to a ClusterIP goes to an endpoint from the start, so no
	// packet carries the ClusterIP, and there is no DNAT and no masquerade
	// (and, with UntrackPodTCP, no conntrack entry for a pod's).
	SocketLB bool `json:"socketLB,omitempty"`
	// TCNAT is true when the tc NAT translates the connection, if it
	// arrives on an interface holding one of the node's IPv4 addresses:
	// eBPF programs at tc ingress with connection state of their own,
	// before netfilter (no conntrack entry, no nftables rule). The
	// candidates, the policy and the masquerade decision are the same.
	TCNAT bool `json:"tcNAT,omitempty"`
	// DirectPodToPod is true when the tc NAT's pod program delivers the
	// connection's TCP straight into the destination pod, past the bridge
	// and netfilter (tcNAT.podToPod): from a pod of this node to a pod of
	// this node (for a Service, the candidates on this node), between
	// addresses of the cluster CIDR, neither side an endpoint kept tracked.
	DirectPodToPod bool `json:"directPodToPod,omitempty"`
	// DNAT is the destination rewrite of a forwarded packet.
	DNAT *DNAT `json:"dnat,omitempty"`
	// Masquerade is the source NAT decision; nil when no connection is made
	// (reject, drop).
	Masquerade *Masquerade `json:"masquerade,omitempty"`
	// Notes point out near misses, e.g. a NodePort on an address NodePorts
	// are not served on.
	Notes []string `json:"notes,omitempty"`
}

// PacketInfo is the traced packet.
type PacketInfo struct {
	Protocol model.Protocol `json:"protocol"`
	Family   string         `json:"family"`
	Src      netip.Addr     `json:"src"`
	// SrcPort is 0 when any source port was meant.
	SrcPort uint16     `json:"srcPort,omitempty"`
	Dst     netip.Addr `json:"dst"`
	DstPort uint16     `json:"dstPort"`
	Local   bool       `json:"local"`
	IIF     string     `json:"iif,omitempty"`
}

// Source is what the node knows of the packet's source.
type Source struct {
	// Class is "pod" (a pod on this node), "node" (this node) or "outside".
	Class string `json:"class"`
	// Description is the model's name of the class.
	Description string `json:"description"`
	// Why says what made it that class.
	Why string `json:"why"`
}

// Frontend is a Service frontend the packet matched.
type Frontend struct {
	// Service is "namespace/name".
	Service  string         `json:"service"`
	PortName string         `json:"portName"`
	Protocol model.Protocol `json:"protocol"`
	Family   string         `json:"family"`
	// Kind is ClusterIP, NodePort, ExternalIP or LoadBalancerIP.
	Kind string     `json:"kind"`
	Addr netip.Addr `json:"addr"`
	Port uint16     `json:"port"`
	// ServicePort is the Service's port number (spec.ports[].port).
	ServicePort uint16 `json:"servicePort"`
}

// Policy is the traffic policy that applied.
type Policy struct {
	// Applied names the policy that governed the decision, e.g.
	// "externalTrafficPolicy: Local".
	Applied               string `json:"applied"`
	ExternalTrafficPolicy string `json:"externalTrafficPolicy"`
	InternalTrafficPolicy string `json:"internalTrafficPolicy"`
	MasqueradeAll         bool   `json:"masqueradeAll,omitempty"`
	// SourceRanges are the sources a firewalled LoadBalancer frontend
	// admits; SourceAdmitted says whether this packet's source is one.
	SourceRanges   []netip.Prefix `json:"sourceRanges,omitempty"`
	SourceAdmitted *bool          `json:"sourceAdmitted,omitempty"`
	// Decision is the model's one-sentence explanation of its decision.
	Decision string `json:"decision"`
}

// Endpoints are the endpoints of the matched Service port.
type Endpoints struct {
	// Group is the group the decision uses: "cluster endpoints" or "local
	// endpoints".
	Group      string      `json:"group"`
	Candidates []Candidate `json:"candidates"`
	Excluded   []Excluded  `json:"excluded"`
}

// Candidate is an endpoint the packet may be DNATed to.
type Candidate struct {
	Addr        netip.Addr `json:"addr"`
	Port        uint16     `json:"port"`
	Node        string     `json:"node,omitempty"`
	Local       bool       `json:"local"`
	Terminating bool       `json:"terminating,omitempty"`
	// Probability is the chance a new connection (from a client without
	// an affinity entry) goes to this endpoint.
	Probability float64 `json:"probability"`
	// Masquerade is the source NAT of a connection DNATed to this
	// endpoint; MasqueradeRule is set when it differs from the decision's
	// (hairpin, egress).
	Masquerade     bool   `json:"masquerade"`
	MasqueradeRule string `json:"masqueradeRule,omitempty"`
}

// Excluded is an endpoint the packet cannot reach, with the reason.
type Excluded struct {
	Addr   netip.Addr `json:"addr"`
	Port   uint16     `json:"port"`
	Node   string     `json:"node,omitempty"`
	Local  bool       `json:"local"`
	Reason string     `json:"reason"`
}

// Affinity is the Service port's session affinity.
type Affinity struct {
	ClientIP       bool   `json:"clientIP"`
	TimeoutSeconds int    `json:"timeoutSeconds,omitempty"`
	Description    string `json:"description"`
}

// DNAT is the destination rewrite.
type DNAT struct {
	From netip.AddrPort `json:"from"`
	// To lists the possible new destinations (the candidates).
	To []netip.AddrPort `json:"to"`
}

// Masquerade is the source NAT decision.
type Masquerade struct {
	Masquerade bool `json:"masquerade"`
	// Rule is the rule of the masquerade matrix (or of egress
	// masquerading) that decided, in the model's words.
	Rule string `json:"rule"`
	// DependsOnEndpoint is true when some candidates are masqueraded and
	// others are not (e.g. hairpin); see Candidate.Masquerade.
	DependsOnEndpoint bool `json:"dependsOnEndpoint,omitempty"`
}

// Trace explains what the node described by st does with p. It returns an
// error only when p is malformed.
func Trace(st *model.State, p Packet) (*Result, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("packet: %w", err)
	}
	p.Protocol, _ = ParseProtocol(string(p.Protocol))
	src, dst := p.Src.Addr().Unmap(), p.Dst.Addr().Unmap()
	p.Src, p.Dst = netip.AddrPortFrom(src, p.Src.Port()), netip.AddrPortFrom(dst, p.Dst.Port())
	fam := model.FamilyOf(dst)
	r := &Result{
		Node: st.Node.Name,
		Packet: PacketInfo{Protocol: p.Protocol, Family: fam.String(), Src: src, SrcPort: p.Src.Port(),
			Dst: dst, DstPort: p.Dst.Port(), Local: p.Local, IIF: p.IIF},
		Hook: "prerouting",
	}
	ownSrc := isNodeAddr(st, src)
	if p.Local || ownSrc {
		r.Hook = "output"
	}
	class := st.Classify(src, p.IIF, p.Local || ownSrc)
	r.Source = describeSource(st, class, src, p.IIF, p.Local, ownSrc)

	sp, fe := findFrontend(st, p.Protocol, p.Dst)
	if sp == nil {
		traceNonService(st, p, class, r)
		return r, nil
	}
	r.Frontend = &Frontend{
		Service: sp.Name.ServiceKey.String(), PortName: sp.Name.Port, Protocol: sp.Name.Protocol,
		Family: sp.Name.Family.String(), Kind: fe.Kind.String(), Addr: fe.Addr, Port: fe.Port, ServicePort: sp.Port,
	}
	admitted := true
	if fe.Kind == model.LoadBalancerIP {
		admitted = sp.AdmitsSource(src)
	}
	d := sp.Decide(fe.Kind, class, admitted, st.Config.MasqueradeAll)
	r.Policy = describePolicy(st, sp, fe, admitted, d)
	r.Affinity = describeAffinity(sp)
	r.Reason = d.Why

	switch d.Verdict {
	case model.Reject:
		r.Verdict = Reject
		r.RejectWith = rejectWith(p.Protocol)
		r.Endpoints = listEndpoints(st, sp, d.Group, nil)
		return r, nil
	case model.Drop:
		r.Verdict = Drop
		if admitted {
			r.Endpoints = listEndpoints(st, sp, d.Group, nil)
		}
		return r, nil
	}
	r.Verdict = Forward
	r.Endpoints = listEndpoints(st, sp, d.Group, func(ep model.Endpoint) (bool, string) {
		switch {
		case !p.Local && !ownSrc && isNodeAddr(st, ep.Addr):
			return false, fmt.Sprintf("%s is an address of this node (a host-network endpoint): the packet is delivered to it and never reaches postrouting, where masquerading is done", ep.Addr)
		case model.Hairpin(src, ep):
			return true, fmt.Sprintf("hairpin: %s reaches itself through its Service: masquerade so the reply comes back through the node", src)
		case !d.Masquerade && st.EgressMasquerade(class, src, ep.Addr):
			_, why := egressRule(st, class, src, ep.Addr)
			return true, why
		}
		return d.Masquerade, ""
	})
	switch n := len(r.Endpoints.Candidates); {
	case n == 1:
		r.Reason = "DNAT to the only candidate endpoint"
	default:
		r.Reason = fmt.Sprintf("DNAT to one of %d candidate endpoints, chosen at random", n)
	}
	if r.Affinity.ClientIP {
		r.Reason += " (or to the client's affinity endpoint)"
	}
	if _, ok := st.SocketEndpoints(sp); ok && fe.Kind == model.ClusterIP && class != model.FromOutside {
		r.SocketLB = true
		r.Reason = fmt.Sprintf("the socket load balancer connects the socket to one of %d candidate endpoints, chosen at random, at connect(): no packet carries the ClusterIP", len(r.Endpoints.Candidates))
		for i := range r.Endpoints.Candidates {
			r.Endpoints.Candidates[i].Masquerade, r.Endpoints.Candidates[i].MasqueradeRule = false, ""
		}
		r.Masquerade = &Masquerade{Rule: "the socket load balancer: the connection runs from the socket's own address to the endpoint (no NAT to undo)"}
		if cidr, ok := st.UntrackedCIDR(sp.Name.Family); ok && class == model.FromLocalPod && cidr.Contains(src) {
			r.Masquerade.Rule += fmt.Sprintf("; TCP between pods of %s is untracked", cidr)
		}
		for _, c := range r.Endpoints.Candidates {
			if c.Local && direct(st, class, netip.AddrPortFrom(src, p.Src.Port()), netip.AddrPortFrom(c.Addr, c.Port)) {
				r.DirectPodToPod = true
				r.Masquerade.Rule += "; " + directWhy + " (the candidates on this node)"
				break
			}
		}
		return r, nil
	}
	if _, ok := st.TCNAT(sp, *fe); ok && class == model.FromOutside && !p.Local {
		r.TCNAT = true
		r.Reason += "; by the tc NAT (eBPF at tc ingress, connection state of its own: conntrack and nftables do not see it) when it arrives on an interface holding a node address"
	}
	r.DNAT = &DNAT{From: p.Dst}
	masq := 0
	for _, c := range r.Endpoints.Candidates {
		r.DNAT.To = append(r.DNAT.To, netip.AddrPortFrom(c.Addr, c.Port))
		if c.Masquerade {
			masq++
		}
	}
	r.Masquerade = &Masquerade{Masquerade: d.Masquerade, Rule: d.Why,
		DependsOnEndpoint: masq > 0 && masq < len(r.Endpoints.Candidates)}
	return r, nil
}

// findFrontend returns the Service port and frontend that own the
// destination, or nil.
func findFrontend(st *model.State, proto model.Protocol, dst netip.AddrPort) (*model.ServicePort, *model.Frontend) {
	fam := model.FamilyOf(dst.Addr())
	for _, k := range st.SortedKeys() {
		ports := st.Services[k]
		for i := range ports {
			sp := &ports[i]
			if sp.Name.Protocol != proto || sp.Name.Family != fam {
				continue
			}
			for j := range sp.Frontends {
				if f := &sp.Frontends[j]; f.Addr == dst.Addr() && f.Port == dst.Port() {
					return sp, f
				}
			}
		}
	}
	return nil, nil
}

// clusterIPOwner returns the Service port whose ClusterIP frontend has
// address a, or nil.
func clusterIPOwner(st *model.State, a netip.Addr) *model.ServicePort {
	for _, k := range st.SortedKeys() {
		ports := st.Services[k]
		for i := range ports {
			for _, f := range ports[i].Frontends {
				if f.Kind == model.ClusterIP && f.Addr == a {
					return &ports[i]
				}
			}
		}
	}
	return nil
}

// nodeAddrs returns every address the State knows belongs to the node.
func nodeAddrs(st *model.State) []netip.Addr {
	return append(append([]netip.Addr(nil), st.Node.Addrs...), st.Config.LocalAddrs...)
}

func isNodeAddr(st *model.State, a netip.Addr) bool { return slices.Contains(nodeAddrs(st), a) }

func describeSource(st *model.State, class model.SourceClass, src netip.Addr, iif string, local, own bool) Source {
	s := Source{Description: class.String(), Class: "outside"}
	if class == model.FromLocalPod {
		s.Class = "pod"
	}
	switch d := st.Config.LocalDetect; {
	case class == model.FromNode:
		s.Class = "node"
		if local {
			s.Why = "the packet is generated by this node"
		} else {
			s.Why = fmt.Sprintf("%s is an address of this node", src)
		}
		if own && local {
			s.Why += fmt.Sprintf(" (from its address %s)", src)
		}
	case d.ByInterface():
		arrives := "no interface given (--iif)"
		if iif != "" {
			arrives = "it arrives on " + iif
		}
		s.Why = fmt.Sprintf("%s, and this node's pods are recognized as the packets %s", arrives, d.Describe())
		if iif == "" {
			for _, p := range st.Node.PodCIDRs {
				if p.Contains(src) {
					s.Why += fmt.Sprintf("; %s is in this node's pod CIDR %s: give --iif if it comes from a pod", src, p)
				}
			}
		}
	case class == model.FromLocalPod:
		s.Why = fmt.Sprintf("%s is in this node's pod CIDRs (%s)", src, joinPrefixes(st.LocalPodCIDRs(model.FamilyOf(src))))
	default:
		s.Why = fmt.Sprintf("%s is neither an address of this node nor in its pod CIDRs (%s)", src,
			joinPrefixes(st.LocalPodCIDRs(model.FamilyOf(src))))
		for _, p := range st.Config.ClusterCIDRs {
			if p.Contains(src) {
				s.Why += fmt.Sprintf("; it is in the cluster CIDR %s: a pod on another node", p)
			}
		}
	}
	return s
}

func describePolicy(st *model.State, sp *model.ServicePort, fe *model.Frontend, admitted bool, d model.Decision) *Policy {
	pol := &Policy{
		ExternalTrafficPolicy: policyName(sp.ExternalPolicyLocal),
		InternalTrafficPolicy: policyName(sp.InternalPolicyLocal),
		MasqueradeAll:         st.Config.MasqueradeAll,
		Decision:              d.Why,
	}
	if fe.Kind.External() {
		pol.Applied = "externalTrafficPolicy: " + pol.ExternalTrafficPolicy
	} else {
		pol.Applied = "internalTrafficPolicy: " + pol.InternalTrafficPolicy
	}
	if fe.Kind == model.LoadBalancerIP && sp.FirewallLB {
		pol.SourceRanges = append([]netip.Prefix{}, sp.SourceRanges...)
		a := admitted
		pol.SourceAdmitted = &a
		if !admitted {
			pol.Applied = "loadBalancerSourceRanges"
		}
	}
	return pol
}

func policyName(local bool) string {
	if local {
		return "Local"
	}
	return "Cluster"
}

func describeAffinity(sp *model.ServicePort) *Affinity {
	if sp.AffinityTimeout <= 0 {
		return &Affinity{Description: "none: every new connection picks an endpoint at random"}
	}
	return &Affinity{ClientIP: true, TimeoutSeconds: int(sp.AffinityTimeout.Seconds()),
		Description: fmt.Sprintf("ClientIP: a client that connected within the last %s returns to the same endpoint; "+
			"the probabilities are for a client without such an entry", sp.AffinityTimeout)}
}

// listEndpoints lists the endpoints of group g (the candidates) and every
// other endpoint with the reason it is excluded, including endpoints of the
// other address family. masq, when set, gives each candidate's source NAT.
func listEndpoints(st *model.State, sp *model.ServicePort, g model.Group, masq func(model.Endpoint) (bool, string)) *Endpoints {
	out := &Endpoints{Group: g.String(), Candidates: []Candidate{}, Excluded: []Excluded{}}
	group := sp.GroupEndpoints(g)
	for _, ep := range group {
		c := Candidate{Addr: ep.Addr, Port: ep.Port, Node: ep.NodeName, Local: ep.Local, Terminating: ep.Terminating,
			Probability: 1 / float64(len(group))}
		if masq != nil {
			c.Masquerade, c.MasqueradeRule = masq(ep)
		}
		out.Candidates = append(out.Candidates, c)
	}
	if masq == nil {
		// No connection is made: every endpoint is excluded.
		for _, ep := range group {
			out.Excluded = append(out.Excluded, Excluded{Addr: ep.Addr, Port: ep.Port, Node: ep.NodeName, Local: ep.Local,
				Reason: "not used: the packet is not forwarded"})
		}
		out.Candidates = []Candidate{}
	}
	for _, ep := range sp.Endpoints {
		if why := sp.ExclusionReason(g, ep); why != "" {
			out.Excluded = append(out.Excluded, Excluded{Addr: ep.Addr, Port: ep.Port, Node: ep.NodeName, Local: ep.Local, Reason: why})
		}
	}
	// Endpoints of the same Service port in the other family.
	for _, other := range st.Services[sp.Name.ServiceKey] {
		if other.Name.Port != sp.Name.Port || other.Name.Protocol != sp.Name.Protocol || other.Name.Family == sp.Name.Family {
			continue
		}
		for _, ep := range other.Endpoints {
			out.Excluded = append(out.Excluded, Excluded{Addr: ep.Addr, Port: ep.Port, Node: ep.NodeName, Local: ep.Local,
				Reason: fmt.Sprintf("an %s endpoint; this packet is %s", other.Name.Family, sp.Name.Family)})
		}
	}
	return out
}

// traceNonService fills r for a packet whose destination is no Service
// frontend.
func traceNonService(st *model.State, p Packet, class model.SourceClass, r *Result) {
	src, dst := p.Src.Addr(), p.Dst.Addr()
	if sp := clusterIPOwner(st, dst); sp != nil {
		r.Verdict, r.RejectWith = Reject, rejectWith(p.Protocol)
		r.Reason = fmt.Sprintf("%s is the ClusterIP of Service %s, which has no port %d/%s: rejected",
			dst, sp.Name.ServiceKey, p.Dst.Port(), p.Protocol)
		return
	}
	r.Notes = nearMisses(st, p)
	if cidr, ok := st.ServiceCIDR(dst); ok && !isNodeAddr(st, dst) {
		r.Verdict = Drop
		r.Reason = fmt.Sprintf("%s is in the Service CIDR %s and no Service of kubenat's has this address: dropped once every DNAT is done "+
			"(unless another proxy DNATs it first), instead of being routed out of the cluster", dst, cidr)
		return
	}
	if isNodeAddr(st, dst) {
		r.Verdict = Deliver
		r.Reason = fmt.Sprintf("%s is an address of this node and %d/%s is no Service frontend on it: delivered to the node itself, no DNAT",
			dst, p.Dst.Port(), p.Protocol)
		if !p.Local {
			r.Masquerade = &Masquerade{Rule: "a packet delivered to the node is not masqueraded"}
			return
		}
	} else {
		r.Verdict = Route
		r.Reason = fmt.Sprintf("%s is no Service frontend: the packet is routed as addressed, no DNAT", p.Dst)
		if p.Protocol == model.TCP && direct(st, class, p.Src, p.Dst) {
			r.DirectPodToPod = true
			r.Reason += "; " + directWhy
		}
	}
	m, why := egressRule(st, class, src, dst)
	r.Masquerade = &Masquerade{Masquerade: m, Rule: why}
}

// directWhy says what direct pod-to-pod delivery does.
const directWhy = "the tc NAT's pod program delivers this TCP straight into the destination pod, past the bridge and netfilter, once the node's neighbour table knows the pod"

// direct reports whether the tc NAT's pod program delivers TCP from src,
// of class, to dst directly (model.State.DirectPodCIDR): from a pod of
// this node to another address of the node's spec.podCIDRs (none known:
// no), both in the cluster CIDR, neither an endpoint the Services keep
// tracked (model.State.TrackedEndpoints; the endpoints the agent keeps
// tracked for connections that still use them are not known here).
func direct(st *model.State, class model.SourceClass, src, dst netip.AddrPort) bool {
	cidr, ok := st.DirectPodCIDR()
	if !ok || class != model.FromLocalPod || !cidr.Contains(src.Addr()) || !cidr.Contains(dst.Addr()) ||
		isNodeAddr(st, dst.Addr()) || src.Addr() == dst.Addr() {
		return false
	}
	if !slices.ContainsFunc(st.Node.PodCIDRs, func(p netip.Prefix) bool { return p.Contains(dst.Addr()) }) {
		return false
	}
	for _, ports := range st.Services {
		for i := range ports {
			for _, ep := range st.TrackedEndpoints(&ports[i]) {
				if a := ep.AddrPort(); a == src || a == dst {
					return false
				}
			}
		}
	}
	return true
}

// egressRule explains the model's egress masquerade decision for traffic
// from src, of class, to dst.
func egressRule(st *model.State, class model.SourceClass, src, dst netip.Addr) (bool, string) {
	m := st.EgressMasquerade(class, src, dst)
	fam := model.FamilyOf(src)
	if d := st.Config.LocalDetect; d.ByInterface() {
		switch {
		case m:
			return true, fmt.Sprintf("egress: the packet is from a pod of this node and %s is outside the non-masquerade ranges: masquerade to the node's address, fully random ports", dst)
		case !st.FromPod(class, src):
			return false, fmt.Sprintf("egress: only packets %s are pod egress: source kept", d.Describe())
		}
		return false, fmt.Sprintf("egress: destination %s is in the non-masquerade ranges (%s): source kept",
			dst, joinPrefixes(st.Config.NonMasqueradeCIDRs(fam)))
	}
	var cluster []netip.Prefix
	inCluster := netip.Prefix{}
	for _, p := range st.Config.ClusterCIDRs {
		if model.FamilyOf(p.Addr()) != fam {
			continue
		}
		cluster = append(cluster, p)
		if p.Contains(src) {
			inCluster = p
		}
	}
	if m {
		return true, fmt.Sprintf("egress: source %s is in the cluster CIDR %s and %s is outside the non-masquerade ranges: masquerade to the node's address, fully random ports",
			src, inCluster, dst)
	}
	if !inCluster.IsValid() {
		return false, fmt.Sprintf("egress: source %s is not in the cluster CIDRs (%s): source kept", src, joinPrefixes(cluster))
	}
	for _, p := range st.Config.NonMasqueradeCIDRs(fam) {
		if p.Contains(dst) {
			return false, fmt.Sprintf("egress: destination %s is in the non-masquerade range %s: source kept", dst, p)
		}
	}
	return false, "egress: source kept"
}

// nearMisses notes Service frontends the packet almost matched.
func nearMisses(st *model.State, p Packet) []string {
	var notes []string
	dst := p.Dst.Addr()
	for _, k := range st.SortedKeys() {
		for _, sp := range st.Services[k] {
			if sp.Name.Family != model.FamilyOf(dst) {
				continue
			}
			for _, f := range sp.Frontends {
				if f.Addr == dst && f.Port == p.Dst.Port() && sp.Name.Protocol != p.Protocol {
					notes = append(notes, fmt.Sprintf("%s is a %s frontend of Service %s for %s only, not %s",
						p.Dst, f.Kind, sp.Name.ServiceKey, sp.Name.Protocol, p.Protocol))
				}
			}
			if sp.NodePort == p.Dst.Port() && sp.Name.Protocol == p.Protocol && isNodeAddr(st, dst) {
				notes = append(notes, fmt.Sprintf("%d/%s is the NodePort of Service %s, but NodePorts are not served on %s (see --nodeport-addresses)",
					sp.NodePort, sp.Name.Protocol, sp.Name.ServiceKey, dst))
			}
		}
	}
	return notes
}

func rejectWith(p model.Protocol) string {
	if p == model.TCP {
		return "TCP reset"
	}
	return "ICMP port unreachable"
}

func joinPrefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
