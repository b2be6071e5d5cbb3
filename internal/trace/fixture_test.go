package trace

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
)

// The fixture cluster, seen from node-a (192.168.100.11, pods 10.244.1.0/24);
// node-b is 192.168.100.12 with pods 10.244.2.0/24.
const (
	nodeA   = "192.168.100.11"
	nodeA6  = "fd00:100::11"
	client  = "192.168.100.50"
	podA    = "10.244.1.12" // a client pod on node-a
	podB    = "10.244.2.12" // a client pod on node-b
	web1    = "10.244.1.10" // web endpoint on node-a
	web2    = "10.244.2.10" // web endpoint on node-b
	webVIP  = "10.96.0.10"
	webVIP6 = "fd00:96::10"
	lbIP    = "192.168.200.10"
	extIP   = "192.168.201.10"
	inet    = "203.0.113.100"
)

var fixtureServices = []k8sobj.Service{
	{
		Name: "web", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{webVIP, webVIP6},
		Ports: []k8sobj.Port{
			{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30080},
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: 5353, NodePort: 30053},
		},
		ExternalIPs: []string{extIP}, LoadBalancerIPs: []string{lbIP},
		Endpoints: []k8sobj.Endpoint{
			{IP: web1, Node: "node-a"},
			{IP: web2, Node: "node-b"},
			{IP: "10.244.2.11", Node: "node-b", NotReady: true, NotServing: true},
			{IP: "10.244.1.11", Node: "node-a", Terminating: true},
			{IP: "fd00:244:0:1::10", Node: "node-a"},
		},
	},
	{
		// externalTrafficPolicy Local with its only endpoint on node-b.
		Name: "remote-local", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.20"}, ETPLocal: true,
		Ports:           []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30081}},
		LoadBalancerIPs: []string{"192.168.200.20"}, HealthCheckNodePort: 32081,
		Endpoints: []k8sobj.Endpoint{{IP: "10.244.2.20", Node: "node-b"}},
	},
	{
		// externalTrafficPolicy Local with endpoints on both nodes.
		Name: "both-local", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.0.21"}, ETPLocal: true,
		Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30082}},
		Endpoints: []k8sobj.Endpoint{
			{IP: "10.244.1.21", Node: "node-a"},
			{IP: "10.244.2.21", Node: "node-b"},
		},
	},
	{
		// internalTrafficPolicy Local with its only endpoint on node-b.
		Name: "itp", ClusterIPs: []string{"10.96.0.30"}, ITPLocal: true,
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080}},
		Endpoints: []k8sobj.Endpoint{{IP: "10.244.2.30", Node: "node-b"}},
	},
	{
		Name: "fw", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.40"},
		Ports:           []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30083}},
		LoadBalancerIPs: []string{"192.168.200.40"}, SourceRanges: []string{"192.168.100.0/28"},
		Endpoints: []k8sobj.Endpoint{{IP: "10.244.1.40", Node: "node-a"}},
	},
	{
		Name: "sticky", ClusterIPs: []string{"10.96.0.50"}, AffinitySeconds: 600,
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080}},
		Endpoints: []k8sobj.Endpoint{{IP: "10.244.1.50", Node: "node-a"}, {IP: "10.244.2.50", Node: "node-b"}},
	},
	{
		// Only terminating endpoints: the serving one is used.
		Name: "draining", ClusterIPs: []string{"10.96.0.60"},
		Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080}},
		Endpoints: []k8sobj.Endpoint{
			{IP: "10.244.2.60", Node: "node-b", Terminating: true},
			{IP: "10.244.2.61", Node: "node-b", Terminating: true, NotServing: true},
		},
	},
	{
		Name: "idle", ClusterIPs: []string{"10.96.0.99"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080}},
		Endpoints: []k8sobj.Endpoint{{IP: "10.244.2.99", Node: "node-b", NotReady: true, NotServing: true}},
	},
	{
		// A host-network endpoint on node-a.
		Name: "host-network", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.0.80"},
		Ports:     []k8sobj.Port{{Name: "https", Port: 443, TargetPort: 10250, NodePort: 30084}},
		Endpoints: []k8sobj.Endpoint{{IP: nodeA, Node: "node-a"}},
	},
	{
		// An endpoint outside the cluster network (a VM, say).
		Name: "external-backend", ClusterIPs: []string{"10.96.0.70"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080}},
		Endpoints: []k8sobj.Endpoint{{IP: "203.0.113.70"}},
	},
}

// fixtureState builds node-a's State from fixtureServices, with cfg's
// fields overriding the defaults when set.
func fixtureState(t testing.TB, tweak func(*model.Config)) *model.State {
	t.Helper()
	cfg := model.Config{
		NodeName:     "node-a",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	objs := model.Objects{Nodes: []*v1.Node{
		k8sobj.Node("node-a", []string{nodeA, nodeA6}, []string{"10.244.1.0/24", "fd00:244:0:1::/64"}),
		k8sobj.Node("node-b", []string{"192.168.100.12", "fd00:100::12"}, []string{"10.244.2.0/24", "fd00:244:0:2::/64"}),
	}}
	for _, s := range fixtureServices {
		svc, slices := s.Objects()
		objs.Services = append(objs.Services, svc)
		objs.EndpointSlices = append(objs.EndpointSlices, slices...)
	}
	st := model.Build(cfg, objs)
	if len(st.Errors) > 0 {
		t.Fatalf("fixture has errors: %v", st.Errors)
	}
	return st
}

// pkt is a shorthand for a TCP packet from src (IP or IP:port) to dst.
func pkt(src, dst string) Packet {
	s, err := ParseSource(src)
	if err != nil {
		panic(err)
	}
	d, err := ParseDestination(dst)
	if err != nil {
		panic(err)
	}
	return Packet{Protocol: model.TCP, Src: s, Dst: d}
}

func udp(p Packet) Packet   { p.Protocol = model.UDP; return p }
func local(p Packet) Packet { p.Local = true; return p }
