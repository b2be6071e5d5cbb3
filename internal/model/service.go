package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	netutils "k8s.io/utils/net"
)

// Labels and annotations the model honours.
const (
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelHeadless         = "service.kubernetes.io/headless"
	LabelServiceName      = discovery.LabelServiceName
	// AnnotationSourceRanges is the legacy form of loadBalancerSourceRanges.
	AnnotationSourceRanges = "service.beta.kubernetes.io/load-balancer-source-ranges"
	// TaintToBeDeleted marks a node the cluster autoscaler is removing.
	TaintToBeDeleted = "ToBeDeletedByClusterAutoscaler"
)

// DefaultAffinityTimeout is the ClientIP affinity timeout when the Service
// does not set one.
const DefaultAffinityTimeout = 10800 * time.Second

// maxAffinitySeconds is Kubernetes' upper bound for timeoutSeconds.
const maxAffinitySeconds = 86400

// serviceIdentity is what decides whether kubenat serves a Service at all
// (see ignoreReason). The proxy name is compared when the State is built,
// since the configuration may change it.
type serviceIdentity struct {
	externalName  bool
	proxyLabel    string // the service-proxy-name label's value
	hasProxyLabel bool
	headlessLabel bool
	clusterIPNone bool
}

func identityOf(svc *v1.Service) serviceIdentity {
	name, hasName := svc.Labels[LabelServiceProxyName]
	_, headless := svc.Labels[LabelHeadless]
	return serviceIdentity{
		externalName: svc.Spec.Type == v1.ServiceTypeExternalName,
		proxyLabel:   name, hasProxyLabel: hasName,
		headlessLabel: headless,
		clusterIPNone: svc.Spec.ClusterIP == v1.ClusterIPNone,
	}
}

// ignoreReason returns why kubenat does not program the Service at all, or
// "" when it does: ExternalName Services, headless Services, and Services
// that name another proxy than proxyName in the service-proxy-name label.
func (id serviceIdentity) ignoreReason(proxyName string) string {
	if proxyName == "" {
		proxyName = DefaultProxyName
	}
	switch {
	case id.externalName:
		return "type ExternalName is resolved by DNS, not proxied"
	case id.hasProxyLabel && id.proxyLabel != proxyName:
		return fmt.Sprintf("label %s=%q names another proxy", LabelServiceProxyName, id.proxyLabel)
	case id.headlessLabel:
		return fmt.Sprintf("label %s marks it headless", LabelHeadless)
	case id.clusterIPNone:
		return "headless (clusterIP: None)"
	}
	return ""
}

// nodeView is what building a Service needs to know of the node.
type nodeView struct {
	name          string
	zone          string       // the Node's topology.kubernetes.io/zone label
	addrs         []netip.Addr // all node addresses
	nodePortAddrs []netip.Addr // where NodePorts are served
	// given are the node's addresses in the order given (the first of a
	// family is its primary), from which nodePortAddrs was computed.
	given []netip.Addr
}

// serviceData is what the model keeps of a Service: its spec parsed and
// checked once, when the Service arrives, so that the typed object (several
// times larger) need not be kept. Building its ports then only adds what
// depends on the node and the endpoints.
type serviceData struct {
	key     ServiceKey
	created time.Time
	id      serviceIdentity
	// errs are the Service's problems; with any, it cannot be programmed
	// and nothing below is set.
	errs []error

	clusterIPs  []netip.Addr // at most one per family, in Families order
	etpLocal    bool         // externalTrafficPolicy: Local, on an externally reachable Service
	itpLocal    bool
	affinity    time.Duration
	ranges      []netip.Prefix // nil: no loadBalancerSourceRanges
	externalIPs []netip.Addr
	lbIPs       []netip.Addr
	ports       []servicePortSpec
	healthCheck uint16
}

// servicePortSpec is one entry of spec.ports.
type servicePortSpec struct {
	name     string
	proto    Protocol
	port     uint16
	nodePort uint16
}

// parseService checks svc and returns what building its ports needs. origin
// names where svc came from, for the errors; intern returns one shared copy
// of a string (namespaces and port names repeat across Services).
func parseService(svc *v1.Service, origin string, intern func(string) string) *serviceData {
	d := &serviceData{
		key:     ServiceKey{Namespace: intern(svc.Namespace), Name: strings.Clone(svc.Name)},
		created: svc.CreationTimestamp.Time,
		id:      identityOf(svc),
	}
	d.id.proxyLabel = strings.Clone(d.id.proxyLabel)
	e := &objErrs{kind: "Service", ns: d.key.Namespace, name: d.key.Name, origin: origin}
	spec := &svc.Spec

	if msgs := validation.IsDNS1123Label(svc.Namespace); len(msgs) > 0 {
		e.add("metadata.namespace", "%q is not a valid namespace: %s", svc.Namespace, strings.Join(msgs, "; "))
	}
	if msgs := validation.IsDNS1035Label(svc.Name); len(msgs) > 0 {
		e.add("metadata.name", "%q is not a valid Service name: %s", svc.Name, strings.Join(msgs, "; "))
	}

	// Cluster IPs, one per family. field names the list the user wrote.
	ips, field := spec.ClusterIPs, func(i int) string { return fmt.Sprintf("spec.clusterIPs[%d]", i) }
	if len(ips) == 0 && spec.ClusterIP != "" {
		ips, field = []string{spec.ClusterIP}, func(int) string { return "spec.clusterIP" }
	}
	if len(ips) == 0 {
		e.add("spec.clusterIP", "must be set (kubenat programs a Service through its cluster IP)")
	}
	var clusterIPs [len(Families)]netip.Addr
	for i, s := range ips {
		a, err := parseAddr(s)
		if err != nil {
			e.add(field(i), "%q is not a valid IP address", s)
			continue
		}
		a = a.Unmap()
		f := FamilyOf(a)
		slot := &clusterIPs[slices.Index(Families[:], f)]
		if slot.IsValid() {
			e.add(field(i), "a second %s cluster IP %s", f, a)
			continue
		}
		*slot = a
	}
	if spec.ClusterIP != "" && len(spec.ClusterIPs) > 0 && spec.ClusterIP != spec.ClusterIPs[0] {
		if _, err := parseAddr(spec.ClusterIP); err != nil && spec.ClusterIP != v1.ClusterIPNone {
			e.add("spec.clusterIP", "%q is not a valid IP address", spec.ClusterIP)
		} else {
			e.add("spec.clusterIP", "%q differs from spec.clusterIPs[0] %q", spec.ClusterIP, spec.ClusterIPs[0])
		}
	}

	etpLocal, err := parsePolicy(spec.ExternalTrafficPolicy)
	if err != nil {
		e.add("spec.externalTrafficPolicy", "%v", err)
	}
	var itpLocal bool
	if spec.InternalTrafficPolicy != nil {
		itpLocal, err = parsePolicy(v1.ServiceExternalTrafficPolicy(*spec.InternalTrafficPolicy))
		if err != nil {
			e.add("spec.internalTrafficPolicy", "%v", err)
		}
	}
	affinity, err := parseAffinity(spec)
	if err != nil {
		e.add("spec.sessionAffinityConfig.clientIP.timeoutSeconds", "%v", err)
	}
	// Source ranges filter LoadBalancer IPs only, which only a
	// LoadBalancer Service has: elsewhere (where the API server does not
	// check the legacy annotation) they are not read, so a stray
	// annotation cannot keep a Service from being served.
	var ranges []netip.Prefix
	if spec.Type == v1.ServiceTypeLoadBalancer {
		ranges = parseSourceRanges(svc, e)
	}

	externalIPs := parseAddrList(spec.ExternalIPs, "spec.externalIPs", e)
	var lbIPs []netip.Addr
	if spec.Type == v1.ServiceTypeLoadBalancer {
		for i, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP == "" {
				continue // hostname-only ingress: nothing to program
			}
			if ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy {
				continue // the load balancer proxies; traffic arrives for the node
			}
			a, err := parseAddr(ing.IP)
			if err != nil {
				e.add(fmt.Sprintf("status.loadBalancer.ingress[%d].ip", i), "%q is not a valid IP address", ing.IP)
				continue
			}
			lbIPs = append(lbIPs, a.Unmap())
		}
	}
	switch spec.Type {
	case "", v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer:
	default:
		e.add("spec.type", "unknown type %q", spec.Type)
	}
	externallyReachable := spec.Type == v1.ServiceTypeNodePort || spec.Type == v1.ServiceTypeLoadBalancer ||
		len(externalIPs) > 0

	type portKey struct {
		proto Protocol
		port  int32
	}
	seenPorts := map[portKey]int{}
	seenNodePorts := map[portKey]int{}
	seenNames := map[string]int{}
	if len(spec.Ports) == 0 {
		e.add("spec.ports", "must list at least one port")
	}
	ports := make([]servicePortSpec, 0, len(spec.Ports))
	for i, p := range spec.Ports {
		field := fmt.Sprintf("spec.ports[%d]", i)
		proto, perr := parseProtocol(p.Protocol)
		if perr != nil {
			e.add(field+".protocol", "%v", perr)
		}
		if p.Port < 1 || p.Port > 65535 {
			e.add(field+".port", "%d is out of range 1-65535", p.Port)
		}
		if p.NodePort < 0 || p.NodePort > 65535 {
			e.add(field+".nodePort", "%d is out of range 1-65535", p.NodePort)
		}
		if p.Name != "" {
			if msgs := validation.IsDNS1123Label(p.Name); len(msgs) > 0 {
				e.add(field+".name", "%q is not a valid port name: %s", p.Name, strings.Join(msgs, "; "))
			}
		} else if len(spec.Ports) > 1 {
			e.add(field+".name", "must be set when a Service has more than one port")
		}
		if j, dup := seenNames[p.Name]; dup {
			e.add(field+".name", "%q is also the name of spec.ports[%d]", p.Name, j)
		}
		seenNames[p.Name] = i
		k := portKey{proto, p.Port}
		if j, dup := seenPorts[k]; dup {
			e.add(field, "%d/%s is also spec.ports[%d]", p.Port, proto, j)
		}
		seenPorts[k] = i
		if p.NodePort > 0 {
			nk := portKey{proto, p.NodePort}
			if j, dup := seenNodePorts[nk]; dup {
				e.add(field+".nodePort", "%d/%s is also the nodePort of spec.ports[%d]", p.NodePort, proto, j)
			}
			seenNodePorts[nk] = i
		}
		ps := servicePortSpec{name: intern(p.Name), proto: proto, port: uint16(p.Port)}
		if p.NodePort > 0 && spec.Type != v1.ServiceTypeClusterIP && spec.Type != "" {
			ps.nodePort = uint16(p.NodePort)
		}
		ports = append(ports, ps)
	}
	if spec.HealthCheckNodePort < 0 || spec.HealthCheckNodePort > 65535 {
		e.add("spec.healthCheckNodePort", "%d is out of range 1-65535", spec.HealthCheckNodePort)
	}
	if len(e.errs) > 0 {
		d.errs = e.errs
		return d
	}

	for _, a := range clusterIPs {
		if a.IsValid() {
			d.clusterIPs = append(d.clusterIPs, a)
		}
	}
	d.etpLocal = etpLocal && externallyReachable
	d.itpLocal = itpLocal
	d.affinity = affinity
	d.ranges = ranges
	d.externalIPs, d.lbIPs = externalIPs, lbIPs
	d.ports = ports
	if spec.Type == v1.ServiceTypeLoadBalancer && d.etpLocal && spec.HealthCheckNodePort > 0 {
		d.healthCheck = uint16(spec.HealthCheckNodePort)
	}
	return d
}

// buildService computes the ports of one valid Service (d.errs is empty)
// from its parsed spec, its EndpointSlices and the node.
func buildService(d *serviceData, endpointSlices []*sliceEntry, node *nodeView) []ServicePort {
	ports := make([]ServicePort, 0, len(d.clusterIPs)*len(d.ports))
	for _, cip := range d.clusterIPs {
		f := FamilyOf(cip)
		nodePortAddrs := filterAddrs(node.nodePortAddrs, f)
		externalIPs := filterAddrs(d.externalIPs, f)
		lbIPs := filterAddrs(d.lbIPs, f)
		for _, p := range d.ports {
			sp := ServicePort{
				Name: ServicePortName{
					ServiceKey: d.key,
					Port:       p.name, Protocol: p.proto, Family: f,
				},
				ClusterIP:           cip,
				Port:                p.port,
				NodePort:            p.nodePort,
				ExternalPolicyLocal: d.etpLocal,
				InternalPolicyLocal: d.itpLocal,
				AffinityTimeout:     d.affinity,
				HealthCheckNodePort: d.healthCheck,
			}
			n := 1 + len(externalIPs) + len(lbIPs)
			if p.nodePort > 0 {
				n += len(nodePortAddrs)
			}
			sp.Frontends = make([]Frontend, 0, n)
			sp.Frontends = append(sp.Frontends, Frontend{Kind: ClusterIP, Addr: cip, Port: sp.Port})
			if p.nodePort > 0 {
				for _, a := range nodePortAddrs {
					sp.Frontends = append(sp.Frontends, Frontend{Kind: NodePort, Addr: a, Port: sp.NodePort})
				}
			}
			for _, a := range externalIPs {
				sp.Frontends = append(sp.Frontends, Frontend{Kind: ExternalIP, Addr: a, Port: sp.Port})
			}
			for _, a := range lbIPs {
				sp.Frontends = append(sp.Frontends, Frontend{Kind: LoadBalancerIP, Addr: a, Port: sp.Port})
			}
			sp.Frontends = dedupFrontends(sp.Frontends)
			if d.ranges != nil && len(lbIPs) > 0 {
				sp.SourceRanges = effectiveSourceRanges(d.ranges, f, lbIPs, node.addrs)
				sp.FirewallLB = true
			}
			sp.Endpoints = collectEndpoints(endpointSlices, p.name, p.proto, f, node)
			sp.ClusterEndpoints, sp.LocalEndpoints = SelectEndpoints(sp.Endpoints)
			ports = append(ports, sp)
		}
	}
	slices.SortFunc(ports, compareServicePorts)
	return ports
}

// SelectEndpoints splits a port's endpoints into the cluster group (ready
// endpoints, or when none is ready, the serving terminating ones) and the
// local group (the same rule applied to this node's endpoints). Topology
// hints narrow the cluster group's ready endpoints as kube-proxy does (see
// TopologyFilter); the local group and the terminating fallback ignore
// them.
//
// When every endpoint of a group is ready (and no hint narrows it), the
// group is all itself (with its capacity clipped, so appending to it
// copies): most Services are in that case, and sharing saves a copy of
// their endpoints (~20 MB at 50,000 Services × 5 endpoints).
func SelectEndpoints(all []Endpoint) (cluster, local []Endpoint) {
	topology := TopologyFilter(all)
	allReady, allLocal := true, true
	for _, ep := range all {
		allReady = allReady && ep.Ready
		allLocal = allLocal && ep.Local
	}
	if allReady && len(all) > 0 && topology == 0 {
		cluster = all[:len(all):len(all)]
		if allLocal {
			return cluster, cluster
		}
	}
	pick := func(localOnly bool) []Endpoint {
		var ready, terminating []Endpoint
		for _, ep := range all {
			if localOnly && !ep.Local {
				continue
			}
			switch {
			case ep.Ready:
				if !localOnly && ep.Hints&topology != topology {
					continue
				}
				ready = append(ready, ep)
			case ep.Serving && ep.Terminating:
				terminating = append(terminating, ep)
			}
		}
		if len(ready) > 0 {
			return ready
		}
		return terminating
	}
	if cluster == nil {
		cluster = pick(false)
	}
	return cluster, pick(true)
}

// TopologyFilter returns the hint a ready endpoint must carry to be in the
// cluster group of a port with endpoints all, by kube-proxy's rule
// (KEP-2433, KEP-3015): ForThisNode when every ready endpoint has node
// hints and one of them is for this node; else ForThisZone when every
// ready endpoint has zone hints and one of them is for this node's zone;
// else 0, and hints are ignored (some endpoints have none, or none is for
// this node or zone, e.g. a node without a zone label).
func TopologyFilter(all []Endpoint) Hints {
	allNode, anyNode, allZone, anyZone := true, false, true, false
	for _, ep := range all {
		if !ep.Ready {
			continue
		}
		allNode = allNode && ep.Hints&HasNodeHints != 0
		anyNode = anyNode || ep.Hints&ForThisNode != 0
		allZone = allZone && ep.Hints&HasZoneHints != 0
		anyZone = anyZone || ep.Hints&ForThisZone != 0
	}
	switch {
	case allNode && anyNode:
		return ForThisNode
	case allZone && anyZone:
		return ForThisZone
	}
	return 0
}

// sliceData is what the model keeps of an EndpointSlice: its endpoints and
// ports parsed once, when the slice arrives, so that the typed object (about
// three times larger) need not be kept. Ports and endpoints that cannot be
// used (parseSlice reports them) are left out.
type sliceData struct {
	name      string
	family    Family // 0: a type kubenat does not proxy (FQDN) or an unknown one
	ports     []slicePort
	endpoints []sliceEndpoint
}

type slicePort struct {
	name  string
	proto Protocol
	port  uint16
}

type sliceEndpoint struct {
	addr                        netip.Addr
	node                        string
	ready, serving, terminating bool
	hints                       *sliceHints // nil: none (the common case)
}

// sliceHints are an endpoint's topology hints: the zones and nodes it is
// meant for (interned names).
type sliceHints struct {
	zones, nodes []string
}

// hintsFor returns what h means for the node (see Hints).
func (h *sliceHints) hintsFor(node *nodeView) Hints {
	if h == nil {
		return 0
	}
	var out Hints
	if len(h.zones) > 0 {
		out |= HasZoneHints
		if node.zone != "" && slices.Contains(h.zones, node.zone) {
			out |= ForThisZone
		}
	}
	if len(h.nodes) > 0 {
		out |= HasNodeHints
		if slices.Contains(h.nodes, node.name) {
			out |= ForThisNode
		}
	}
	return out
}

// parseSlice returns what collectEndpoints needs of s, and its problems:
// bad endpoints and ports are reported and skipped, the rest of the slice
// is used. origin names where s came from, for the errors; intern returns
// one shared copy of a string (node and port names repeat across slices).
func parseSlice(s *discovery.EndpointSlice, origin string, intern func(string) string) (sliceData, []error) {
	d := sliceData{name: s.Name}
	e := &objErrs{kind: "EndpointSlice", ns: s.Namespace, name: s.Name, origin: origin}
	if s.Labels[LabelServiceName] == "" {
		e.add("metadata.labels", "label %s is missing: the slice belongs to no Service", LabelServiceName)
	}
	switch s.AddressType {
	case discovery.AddressTypeIPv4:
		d.family = IPv4
	case discovery.AddressTypeIPv6:
		d.family = IPv6
	case discovery.AddressTypeFQDN:
		return d, e.errs // not proxied, not an error
	default:
		e.add("addressType", "unknown address type %q", s.AddressType)
		return d, e.errs
	}
	for i, sp := range s.Ports {
		// An unknown protocol is reported and read as parseProtocol's
		// fallback.
		p, err := parseProtocolPtr(sp.Protocol)
		if err != nil {
			e.add(fmt.Sprintf("ports[%d].protocol", i), "%v", err)
		}
		if sp.Port == nil {
			continue
		}
		if *sp.Port < 1 || *sp.Port > 65535 {
			e.add(fmt.Sprintf("ports[%d].port", i), "%d is out of range 1-65535", *sp.Port)
			continue
		}
		name := ""
		if sp.Name != nil {
			name = intern(*sp.Name)
		}
		d.ports = append(d.ports, slicePort{name: name, proto: p, port: uint16(*sp.Port)})
	}
	d.endpoints = make([]sliceEndpoint, 0, len(s.Endpoints))
	for i, ep := range s.Endpoints {
		if len(ep.Addresses) == 0 {
			e.add(fmt.Sprintf("endpoints[%d].addresses", i), "must list an address")
			continue
		}
		a, err := parseAddr(ep.Addresses[0])
		switch {
		case err != nil:
			e.add(fmt.Sprintf("endpoints[%d].addresses[0]", i), "%q is not a valid IP address", ep.Addresses[0])
			continue
		case FamilyOf(a) != d.family:
			e.add(fmt.Sprintf("endpoints[%d].addresses[0]", i), "%s is not an %s address", a, d.family)
			continue
		}
		// A nil condition means true (discovery/v1), serving included.
		c := ep.Conditions
		ready := c.Ready == nil || *c.Ready
		serving := c.Serving == nil || *c.Serving
		node := ""
		if ep.NodeName != nil {
			node = intern(*ep.NodeName)
		}
		var hints *sliceHints
		if h := ep.Hints; h != nil && len(h.ForZones)+len(h.ForNodes) > 0 {
			hints = &sliceHints{}
			for _, z := range h.ForZones {
				hints.zones = append(hints.zones, intern(z.Name))
			}
			for _, n := range h.ForNodes {
				hints.nodes = append(hints.nodes, intern(n.Name))
			}
		}
		d.endpoints = append(d.endpoints, sliceEndpoint{addr: a.Unmap(), node: node,
			ready: ready, serving: serving, terminating: c.Terminating != nil && *c.Terminating, hints: hints})
	}
	return d, e.errs
}

// collectEndpoints gathers the endpoints of one Service port and family
// from the Service's EndpointSlices. An endpoint listed by two slices (a
// pod's address taken by a new pod while the old one terminates) is taken
// from the first slice in name order that lists it not terminating, else
// from the first, as kube-proxy prefers the live copy. Slices are matched
// by address type; ports by name and protocol, so named target ports may
// resolve to a different number on each endpoint. Ready is the
// endpoint's condition as given: true for a terminating endpoint only
// when its Service publishes not-ready addresses, which keep their
// traffic as with kube-proxy.
func collectEndpoints(endpointSlices []*sliceEntry, portName string, proto Protocol, f Family, node *nodeView) []Endpoint {
	n := 0
	for _, e := range endpointSlices {
		if e.data.family == f {
			for _, sp := range e.data.ports {
				if sp.name == portName && sp.proto == proto {
					n += len(e.data.endpoints)
				}
			}
		}
	}
	if n == 0 {
		return nil
	}
	// Sized for every candidate (duplicates are rare): appending would
	// leave up to half of the array unused, and the State keeps it.
	out := make([]Endpoint, 0, n)
	seen := make(map[netip.AddrPort]int, n) // index in out
	for _, e := range endpointSlices {
		s := &e.data
		if s.family != f {
			continue
		}
		for _, sp := range s.ports {
			if sp.name != portName || sp.proto != proto {
				continue
			}
			for _, ep := range s.endpoints {
				ap := netip.AddrPortFrom(ep.addr, sp.port)
				e := Endpoint{
					Addr: ep.addr, Port: sp.port, NodeName: ep.node,
					Local: ep.node != "" && ep.node == node.name,
					Ready: ep.ready, Serving: ep.serving, Terminating: ep.terminating,
					Hints: ep.hints.hintsFor(node),
				}
				if i, dup := seen[ap]; dup {
					if out[i].Terminating && !e.Terminating {
						out[i] = e
					}
					continue
				}
				seen[ap] = len(out)
				out = append(out, e)
			}
		}
	}
	slices.SortFunc(out, compareEndpoints)
	return out
}

func parsePolicy(p v1.ServiceExternalTrafficPolicy) (local bool, err error) {
	switch p {
	case "", v1.ServiceExternalTrafficPolicyCluster:
		return false, nil
	case v1.ServiceExternalTrafficPolicyLocal:
		return true, nil
	}
	return false, fmt.Errorf("%q is not a traffic policy (Cluster or Local)", p)
}

func parseAffinity(spec *v1.ServiceSpec) (time.Duration, error) {
	switch spec.SessionAffinity {
	case "", v1.ServiceAffinityNone:
		return 0, nil
	case v1.ServiceAffinityClientIP:
	default:
		return 0, fmt.Errorf("sessionAffinity %q is not None or ClientIP", spec.SessionAffinity)
	}
	c := spec.SessionAffinityConfig
	if c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil {
		return DefaultAffinityTimeout, nil
	}
	s := *c.ClientIP.TimeoutSeconds
	if s < 1 || s > maxAffinitySeconds {
		return 0, fmt.Errorf("%d is out of range 1-%d", s, maxAffinitySeconds)
	}
	return time.Duration(s) * time.Second, nil
}

// parseSourceRanges returns the Service's loadBalancerSourceRanges, or
// when it has none its legacy annotation (which kube-proxy does not read,
// and cloud load balancers do), nil when there are none.
func parseSourceRanges(svc *v1.Service, e *objErrs) []netip.Prefix {
	list, field := svc.Spec.LoadBalancerSourceRanges, "spec.loadBalancerSourceRanges"
	if len(list) == 0 {
		if v := strings.TrimSpace(svc.Annotations[AnnotationSourceRanges]); v != "" {
			list, field = strings.Split(v, ","), "metadata.annotations["+AnnotationSourceRanges+"]"
		}
	}
	var out []netip.Prefix
	for i, s := range list {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			e.add(fmt.Sprintf("%s[%d]", field, i), "%q is not a CIDR", s)
			continue
		}
		out = append(out, netip.PrefixFrom(p.Addr().Unmap(), unmapBits(p)).Masked())
	}
	return out
}

// parseAddr parses an IP address of an API object as kube-proxy does:
// an IPv4 address with leading zeros ("10.096.0.10", which API servers
// before 1.22 accepted and which old objects may still hold) is read as
// decimal.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err == nil {
		return a, nil
	}
	if ip := netutils.ParseIPSloppy(s); ip != nil {
		if a, ok := netip.AddrFromSlice(ip); ok {
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, err
}

func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return p.Bits() - 96
	}
	return p.Bits()
}

// effectiveSourceRanges returns the sources one family's LoadBalancer IPs
// admit: the ranges of that family, and the LoadBalancer IPs themselves when
// a range contains a node address (traffic a load balancer hairpins back
// arrives from its own IP). An empty result admits nothing.
func effectiveSourceRanges(ranges []netip.Prefix, f Family, lbIPs, nodeAddrs []netip.Addr) []netip.Prefix {
	out := filterPrefixes(ranges, f)
	for _, r := range out {
		if slices.ContainsFunc(nodeAddrs, r.Contains) {
			for _, a := range lbIPs {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
			}
			break
		}
	}
	return mergePrefixes(out)
}

func parseAddrList(list []string, field string, e *objErrs) []netip.Addr {
	var out []netip.Addr
	for i, s := range list {
		a, err := parseAddr(s)
		if err != nil {
			e.add(fmt.Sprintf("%s[%d]", field, i), "%q is not a valid IP address", s)
			continue
		}
		out = append(out, a.Unmap())
	}
	return out
}

func parseProtocol(p v1.Protocol) (Protocol, error) {
	switch p {
	case "", v1.ProtocolTCP:
		return TCP, nil
	case v1.ProtocolUDP:
		return UDP, nil
	case v1.ProtocolSCTP:
		return SCTP, nil
	}
	return TCP, fmt.Errorf("%q is not TCP, UDP or SCTP", p)
}

func parseProtocolPtr(p *v1.Protocol) (Protocol, error) {
	if p == nil {
		return TCP, nil
	}
	return parseProtocol(*p)
}

// dedupFrontends keeps one frontend per address and port: the first,
// except that a LoadBalancer IP which is also an externalIP stays a
// LoadBalancer IP, so that loadBalancerSourceRanges still filter it (as
// kube-proxy filters every LoadBalancer IP).
func dedupFrontends(fs []Frontend) []Frontend {
	out := fs[:0]
	seen := map[netip.AddrPort]int{} // index in out
	for _, f := range fs {
		k := netip.AddrPortFrom(f.Addr, f.Port)
		if i, ok := seen[k]; ok {
			if out[i].Kind == ExternalIP && f.Kind == LoadBalancerIP {
				out[i] = f
			}
			continue
		}
		seen[k] = len(out)
		out = append(out, f)
	}
	return out
}
