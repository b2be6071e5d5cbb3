// Package k8sobj builds the Kubernetes objects kubenat consumes (Services,
// EndpointSlices, Nodes) from short descriptions, and writes them as
// manifest files. Tests, the lab and the benchmarks use it.
package k8sobj

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// Port describes one Service port.
type Port struct {
	Name       string
	Protocol   v1.Protocol // default TCP
	Port       int32
	TargetPort int32 // the endpoints' port
	NodePort   int32
}

// Service describes a Service and its endpoints.
type Service struct {
	Namespace, Name string
	Type            v1.ServiceType // default ClusterIP
	ClusterIPs      []string
	Ports           []Port
	ExternalIPs     []string
	LoadBalancerIPs []string
	ETPLocal        bool
	ITPLocal        bool
	// AffinitySeconds > 0 sets sessionAffinity ClientIP.
	AffinitySeconds     int32
	SourceRanges        []string
	HealthCheckNodePort int32
	Labels              map[string]string
	Endpoints           []Endpoint
}

// Endpoint is one pod behind a Service.
type Endpoint struct {
	IP          string
	Node        string
	NotReady    bool
	Terminating bool
	NotServing  bool
	// Ports overrides the target port per port name (named target ports
	// resolving differently per pod).
	Ports map[string]int32
	// ForZones and ForNodes are the endpoint's topology hints.
	ForZones, ForNodes []string
}

// Objects returns the Service and its EndpointSlices (one per address family
// and distinct port set).
func (s Service) Objects() (*v1.Service, []*discovery.EndpointSlice) {
	ns := s.Namespace
	if ns == "" {
		ns = "default"
	}
	svc := &v1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: ns, Labels: s.Labels},
		Spec: v1.ServiceSpec{
			Type:                s.Type,
			ClusterIPs:          s.ClusterIPs,
			ExternalIPs:         s.ExternalIPs,
			HealthCheckNodePort: s.HealthCheckNodePort,
		},
	}
	if svc.Spec.Type == "" {
		svc.Spec.Type = v1.ServiceTypeClusterIP
	}
	if len(s.ClusterIPs) > 0 {
		svc.Spec.ClusterIP = s.ClusterIPs[0]
	}
	for _, ip := range s.ClusterIPs {
		fam := v1.IPv4Protocol
		if netip.MustParseAddr(ip).Is6() {
			fam = v1.IPv6Protocol
		}
		svc.Spec.IPFamilies = append(svc.Spec.IPFamilies, fam)
	}
	if s.ETPLocal {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	} else if s.Type == v1.ServiceTypeNodePort || s.Type == v1.ServiceTypeLoadBalancer {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
	}
	if s.ITPLocal {
		p := v1.ServiceInternalTrafficPolicyLocal
		svc.Spec.InternalTrafficPolicy = &p
	}
	if s.AffinitySeconds > 0 {
		svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		t := s.AffinitySeconds
		svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &t}}
	}
	svc.Spec.LoadBalancerSourceRanges = s.SourceRanges
	for _, ip := range s.LoadBalancerIPs {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
	}
	for _, p := range s.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		tp := intstr.FromInt32(p.TargetPort)
		if p.Name != "" {
			tp = intstr.FromString(p.Name)
		}
		svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{
			Name: p.Name, Protocol: proto, Port: p.Port, TargetPort: tp, NodePort: p.NodePort,
		})
	}

	// One slice per (family, port-override signature).
	type group struct {
		fam  discovery.AddressType
		over string
	}
	slices := map[group]*discovery.EndpointSlice{}
	var order []group
	for _, ep := range s.Endpoints {
		fam := discovery.AddressTypeIPv4
		if netip.MustParseAddr(ep.IP).Is6() {
			fam = discovery.AddressTypeIPv6
		}
		g := group{fam, fmt.Sprint(ep.Ports)}
		sl := slices[g]
		if sl == nil {
			sl = &discovery.EndpointSlice{
				TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
				ObjectMeta: metav1.ObjectMeta{
					Name: fmt.Sprintf("%s-%d", s.Name, len(order)), Namespace: ns,
					Labels: map[string]string{discovery.LabelServiceName: s.Name},
				},
				AddressType: fam,
			}
			for _, p := range s.Ports {
				proto := p.Protocol
				if proto == "" {
					proto = v1.ProtocolTCP
				}
				port := p.TargetPort
				if o, ok := ep.Ports[p.Name]; ok {
					port = o
				}
				name := p.Name
				sl.Ports = append(sl.Ports, discovery.EndpointPort{Name: &name, Protocol: &proto, Port: &port})
			}
			slices[g] = sl
			order = append(order, g)
		}
		ready, serving, term := !ep.NotReady && !ep.Terminating, !ep.NotServing, ep.Terminating
		node := ep.Node
		e := discovery.Endpoint{
			Addresses:  []string{ep.IP},
			Conditions: discovery.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &term},
		}
		if node != "" {
			e.NodeName = &node
		}
		if len(ep.ForZones)+len(ep.ForNodes) > 0 {
			e.Hints = &discovery.EndpointHints{}
			for _, z := range ep.ForZones {
				e.Hints.ForZones = append(e.Hints.ForZones, discovery.ForZone{Name: z})
			}
			for _, n := range ep.ForNodes {
				e.Hints.ForNodes = append(e.Hints.ForNodes, discovery.ForNode{Name: n})
			}
		}
		sl.Endpoints = append(sl.Endpoints, e)
	}
	var out []*discovery.EndpointSlice
	for _, g := range order {
		out = append(out, slices[g])
	}
	return svc, out
}

// Node returns a Node object with the given addresses and pod CIDRs.
func Node(name string, addrs []string, podCIDRs []string) *v1.Node {
	n := &v1.Node{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1.NodeSpec{PodCIDRs: podCIDRs},
	}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR = podCIDRs[0]
	}
	for _, a := range addrs {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: a})
	}
	return n
}

// InZone returns n labelled as a node of zone (topology.kubernetes.io/zone).
func InZone(n *v1.Node, zone string) *v1.Node {
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels[v1.LabelTopologyZone] = zone
	return n
}

// Marshal returns objects as a multi-document YAML manifest.
func Marshal(objs ...any) ([]byte, error) {
	var b bytes.Buffer
	for i, o := range objs {
		y, err := yaml.Marshal(o)
		if err != nil {
			return nil, fmt.Errorf("encoding object %d: %w", i, err)
		}
		if i > 0 {
			b.WriteString("---\n")
		}
		b.Write(y)
	}
	return b.Bytes(), nil
}

// WriteFile writes objects as a manifest file dir/name atomically (write to
// a temporary file, then rename), so a watcher never reads half a file.
func WriteFile(dir, name string, objs ...any) error {
	data, err := Marshal(objs...)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-"+name+"-")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}

// WriteService writes a Service and its EndpointSlices to dir/<name>.yaml.
func WriteService(dir string, s Service) error {
	svc, slices := s.Objects()
	objs := []any{svc}
	for _, sl := range slices {
		objs = append(objs, sl)
	}
	ns := svc.Namespace
	return WriteFile(dir, ns+"-"+s.Name+".yaml", objs...)
}
