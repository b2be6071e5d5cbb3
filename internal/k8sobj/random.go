package k8sobj

import (
	"fmt"
	"math/rand/v2"

	v1 "k8s.io/api/core/v1"
)

// Random returns Service number i (svc-i in default, ClusterIP 10.96.x.y)
// with random policies and endpoints drawn from r: dual-stack, a UDP port,
// NodePort or LoadBalancer type (sometimes sharing one LoadBalancer IP,
// so that frontends collide between Services), source ranges, traffic
// policies, affinity, and up to four endpoints on node-a and node-b,
// some terminating. The datapaths' tests use it to compare incremental
// changes with full renderings.
func Random(r *rand.Rand, i int) Service {
	s := Service{
		Name:       fmt.Sprintf("svc-%d", i),
		ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", i/200, i%200+1)},
		Ports:      []Port{{Name: "http", Port: 80, TargetPort: 8080}},
	}
	if r.IntN(3) == 0 {
		s.ClusterIPs = append(s.ClusterIPs, fmt.Sprintf("fd00:96::%x", i+1))
	}
	if r.IntN(2) == 0 {
		s.Ports = append(s.Ports, Port{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: 5353})
	}
	switch r.IntN(3) {
	case 1:
		s.Type = v1.ServiceTypeNodePort
		for j := range s.Ports {
			s.Ports[j].NodePort = int32(30000 + i*4 + j)
		}
	case 2:
		s.Type = v1.ServiceTypeLoadBalancer
		for j := range s.Ports {
			s.Ports[j].NodePort = int32(30000 + i*4 + j)
		}
		s.LoadBalancerIPs = []string{fmt.Sprintf("192.168.200.%d", i+1)}
		if r.IntN(3) == 0 {
			// A shared LoadBalancer IP: frontends collide between
			// Services, and move when the owner changes or goes.
			s.LoadBalancerIPs = []string{"192.168.200.250"}
		}
		if r.IntN(2) == 0 {
			s.SourceRanges = []string{"203.0.113.0/24", "192.168.100.0/24"}
		}
	}
	s.ETPLocal = s.Type != "" && r.IntN(2) == 0
	s.ITPLocal = r.IntN(4) == 0
	if r.IntN(3) == 0 {
		s.AffinitySeconds = int32(60 * (1 + r.IntN(3)))
	}
	n := r.IntN(5)
	for j := range n {
		node := "node-a"
		if r.IntN(2) == 0 {
			node = "node-b"
		}
		s.Endpoints = append(s.Endpoints, Endpoint{IP: fmt.Sprintf("10.244.%d.%d", 1+j%2, i%250+1), Node: node,
			Terminating: r.IntN(6) == 0})
		if len(s.ClusterIPs) > 1 {
			s.Endpoints = append(s.Endpoints, Endpoint{IP: fmt.Sprintf("fd00:244:0:%x::%x", 1+j%2, i+1), Node: node})
		}
	}
	return s
}
