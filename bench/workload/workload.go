// Package workload generates the synthetic clusters the benchmarks program:
// many Services with their EndpointSlices, and the Node object of the node
// being programmed. Generation is deterministic: the same Spec always gives
// the same objects, so runs (and the kube-proxy baseline, which renders the
// same Services) are comparable.
package workload

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Namespace is the namespace of every generated object.
const Namespace = "bench"

// MaxEndpointsPerSlice is the number of endpoints per EndpointSlice, the
// default of the Kubernetes EndpointSlice controller
// (--max-endpoints-per-slice).
const MaxEndpointsPerSlice = 100

// NodePortBase is the first NodePort handed out; NodePorts are in
// 30000-32767 as in a default cluster.
const NodePortBase = 30000

// maxNodePorts is how many NodePorts the default range holds.
const maxNodePorts = 32767 - NodePortBase + 1

// Spec describes a synthetic cluster.
type Spec struct {
	// Services is the number of Services.
	Services int
	// Endpoints is the number of endpoints of each Service. When
	// EndpointsCycle is above 1, Service i has 1 + i%EndpointsCycle
	// endpoints instead (a mix of sizes).
	Endpoints      int
	EndpointsCycle int
	// NodePortEvery makes every n-th Service (i%n == 0) a NodePort Service,
	// as long as the NodePort range lasts; 0 makes none.
	NodePortEvery int
	// Nodes is the number of nodes the endpoints are spread over
	// round-robin; endpoints on node 0 (NodeName) are local. Default 100.
	Nodes int
	// NodeName is the name of node 0, the node being programmed.
	NodeName string
	// ServiceCIDR holds the ClusterIPs, allocated in order from its second
	// address. Default 10.96.0.0/12.
	ServiceCIDR netip.Prefix
	// EndpointCIDR holds the endpoint (pod) addresses, allocated in order.
	// Default 10.128.0.0/10, outside the benchmark topology's pod ranges.
	EndpointCIDR netip.Prefix
	// Port and TargetPort are the Services' port and the endpoints' port.
	// Defaults 80 and 8080.
	Port, TargetPort int32
}

func (s Spec) withDefaults() Spec {
	if s.Nodes == 0 {
		s.Nodes = 100
	}
	if s.NodeName == "" {
		s.NodeName = "node-a"
	}
	if !s.ServiceCIDR.IsValid() {
		s.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")
	}
	if !s.EndpointCIDR.IsValid() {
		s.EndpointCIDR = netip.MustParsePrefix("10.128.0.0/10")
	}
	if s.Port == 0 {
		s.Port = 80
	}
	if s.TargetPort == 0 {
		s.TargetPort = 8080
	}
	return s
}

// Cluster is a generated set of objects.
type Cluster struct {
	Services       []*v1.Service
	EndpointSlices []*discovery.EndpointSlice
	// SlicesOf maps a Service's index to the indexes of its slices in
	// EndpointSlices.
	SlicesOf [][]int
}

// Generate returns the objects of spec. It fails when the address ranges
// are too small for the requested numbers.
func Generate(spec Spec) (*Cluster, error) {
	spec = spec.withDefaults()
	if spec.Services < 0 || spec.Endpoints < 0 {
		return nil, fmt.Errorf("negative size in %+v", spec)
	}
	endpoints := 0
	for i := range spec.Services {
		endpoints += spec.endpointsOf(i)
	}
	if uint64(spec.Services)+2 > size(spec.ServiceCIDR) {
		return nil, fmt.Errorf("%d Services do not fit in %s", spec.Services, spec.ServiceCIDR)
	}
	if uint64(endpoints)+2 > size(spec.EndpointCIDR) {
		return nil, fmt.Errorf("%d endpoints do not fit in %s", endpoints, spec.EndpointCIDR)
	}
	c := &Cluster{
		Services:       make([]*v1.Service, 0, spec.Services),
		EndpointSlices: make([]*discovery.EndpointSlice, 0, spec.Services),
		SlicesOf:       make([][]int, spec.Services),
	}
	vip := spec.ServiceCIDR.Addr().Next()
	ep := spec.EndpointCIDR.Addr().Next()
	nodePorts := 0
	for i := range spec.Services {
		name := ServiceName(i)
		var nodePort int32
		if spec.NodePortEvery > 0 && i%spec.NodePortEvery == 0 && nodePorts < maxNodePorts {
			nodePort = int32(NodePortBase + nodePorts)
			nodePorts++
		}
		c.Services = append(c.Services, NewService(name, vip, spec.Port, spec.TargetPort, nodePort))
		vip = vip.Next()
		addrs := make([]Endpoint, spec.endpointsOf(i))
		for j := range addrs {
			addrs[j] = Endpoint{Addr: ep, Node: fmt.Sprintf("node-%d", (i+j)%spec.Nodes), Ready: true}
			if (i+j)%spec.Nodes == 0 {
				addrs[j].Node = spec.NodeName
			}
			ep = ep.Next()
		}
		for _, sl := range NewSlices(name, spec.TargetPort, addrs) {
			c.SlicesOf[i] = append(c.SlicesOf[i], len(c.EndpointSlices))
			c.EndpointSlices = append(c.EndpointSlices, sl)
		}
	}
	return c, nil
}

func (s Spec) endpointsOf(i int) int {
	if s.EndpointsCycle > 1 {
		return 1 + i%s.EndpointsCycle
	}
	return s.Endpoints
}

func size(p netip.Prefix) uint64 {
	bits := p.Addr().BitLen() - p.Bits()
	if bits >= 63 {
		return 1 << 62
	}
	return 1 << bits
}

// ServiceName is the name of the i-th generated Service.
func ServiceName(i int) string { return fmt.Sprintf("svc-%06d", i) }

// NewService returns a Service with one TCP port named "http" and the
// given ClusterIP; nodePort > 0 makes it a NodePort Service with
// externalTrafficPolicy Cluster.
func NewService(name string, clusterIP netip.Addr, port, targetPort, nodePort int32) *v1.Service {
	svc := &v1.Service{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: Namespace,
			CreationTimestamp: metav1.Unix(1700000000, 0),
		},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP.String(),
			ClusterIPs: []string{clusterIP.String()},
			IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
			Ports: []v1.ServicePort{{
				Name: "http", Protocol: v1.ProtocolTCP, Port: port,
				TargetPort: intstr.FromInt32(targetPort),
			}},
		},
	}
	if nodePort > 0 {
		svc.Spec.Type = v1.ServiceTypeNodePort
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
		svc.Spec.Ports[0].NodePort = nodePort
	}
	return svc
}

// Endpoint is one generated endpoint.
type Endpoint struct {
	Addr  netip.Addr
	Node  string
	Ready bool
}

// NewSlices returns the EndpointSlices of a Service named name, at most
// MaxEndpointsPerSlice endpoints each, named name-0, name-1, ….
func NewSlices(name string, targetPort int32, eps []Endpoint) []*discovery.EndpointSlice {
	var out []*discovery.EndpointSlice
	for i := 0; i < len(eps) || i == 0; i += MaxEndpointsPerSlice {
		j := min(i+MaxEndpointsPerSlice, len(eps))
		out = append(out, NewSlice(fmt.Sprintf("%s-%d", name, len(out)), name, targetPort, eps[i:j]))
	}
	return out
}

// NewSlice returns one EndpointSlice of Service svcName with the given
// endpoints and one TCP port named "http".
func NewSlice(name, svcName string, targetPort int32, eps []Endpoint) *discovery.EndpointSlice {
	portName, proto, port := "http", v1.ProtocolTCP, targetPort
	sl := &discovery.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: Namespace,
			Labels: map[string]string{discovery.LabelServiceName: svcName},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: &portName, Protocol: &proto, Port: &port}},
		Endpoints:   make([]discovery.Endpoint, 0, len(eps)),
	}
	for _, e := range eps {
		ready, serving, terminating := e.Ready, true, false
		node := e.Node
		sl.Endpoints = append(sl.Endpoints, discovery.Endpoint{
			Addresses:  []string{e.Addr.String()},
			Conditions: discovery.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
			NodeName:   &node,
		})
	}
	return sl
}
