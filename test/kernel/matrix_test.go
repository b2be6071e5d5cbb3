package kernel

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/topo"
)

// matrixRow is one line of the masquerade/destination matrix: a new
// connection from src to dst of a Service with the given policy, the
// endpoints that may answer, and the source address they see.
type matrixRow struct {
	policy string // "default", "eTP Local", "iTP Local"
	dst    string // "ClusterIP", "NodePort", "LB IP", "externalIP" (of node-a)
	src    string // "pod on node-a", "pod on node-b", "node-a", "client"
	eps    string // endpoints that answer: "local remote", "local", "remote"
	seen   string // source the endpoint sees: "client" (unchanged), "node-a", "node-b"
}

// masqueradeMatrix is the reference table of Service semantics, checked with
// real packets for IPv4 and IPv6. Frontends belong to node-a; "local" is the
// endpoint pod on node-a, "remote" the one on node-b. A pod on node-b
// reaching a LoadBalancer IP, an externalIP or a ClusterIP is handled by
// node-b's own kubenat, as in any cluster; its NodePort traffic to node-a's
// address is handled by node-a.
var masqueradeMatrix = []matrixRow{
	{"default", "ClusterIP", "pod on node-a", "local remote", "client"},
	{"default", "ClusterIP", "pod on node-b", "local remote", "client"},
	{"default", "ClusterIP", "node-a", "local remote", "node-a"},
	{"default", "ClusterIP", "client", "local remote", "node-a"},
	{"default", "NodePort", "pod on node-a", "local remote", "node-a"},
	{"default", "NodePort", "pod on node-b", "local remote", "node-a"},
	{"default", "NodePort", "node-a", "local remote", "node-a"},
	{"default", "NodePort", "client", "local remote", "node-a"},
	{"default", "LB IP", "pod on node-a", "local remote", "node-a"},
	{"default", "LB IP", "pod on node-b", "local remote", "node-b"},
	{"default", "LB IP", "node-a", "local remote", "node-a"},
	{"default", "LB IP", "client", "local remote", "node-a"},
	{"default", "externalIP", "pod on node-a", "local remote", "node-a"},
	{"default", "externalIP", "pod on node-b", "local remote", "node-b"},
	{"default", "externalIP", "node-a", "local remote", "node-a"},
	{"default", "externalIP", "client", "local remote", "node-a"},

	{"eTP Local", "ClusterIP", "pod on node-a", "local remote", "client"},
	{"eTP Local", "ClusterIP", "pod on node-b", "local remote", "client"},
	{"eTP Local", "ClusterIP", "node-a", "local remote", "node-a"},
	{"eTP Local", "ClusterIP", "client", "local remote", "node-a"},
	{"eTP Local", "NodePort", "pod on node-a", "local remote", "client"},
	{"eTP Local", "NodePort", "pod on node-b", "local", "client"},
	{"eTP Local", "NodePort", "node-a", "local remote", "node-a"},
	{"eTP Local", "NodePort", "client", "local", "client"},
	{"eTP Local", "LB IP", "pod on node-a", "local remote", "client"},
	{"eTP Local", "LB IP", "pod on node-b", "local remote", "client"},
	{"eTP Local", "LB IP", "node-a", "local remote", "node-a"},
	{"eTP Local", "LB IP", "client", "local", "client"},
	{"eTP Local", "externalIP", "pod on node-a", "local remote", "client"},
	{"eTP Local", "externalIP", "pod on node-b", "local remote", "client"},
	{"eTP Local", "externalIP", "node-a", "local remote", "node-a"},
	{"eTP Local", "externalIP", "client", "local", "client"},

	{"iTP Local", "ClusterIP", "pod on node-a", "local", "client"},
	{"iTP Local", "ClusterIP", "pod on node-b", "remote", "client"},
	{"iTP Local", "ClusterIP", "node-a", "local", "node-a"},
	{"iTP Local", "ClusterIP", "client", "local", "node-a"},
	{"iTP Local", "NodePort", "pod on node-a", "local remote", "node-a"},
	{"iTP Local", "NodePort", "pod on node-b", "local remote", "node-a"},
	{"iTP Local", "NodePort", "node-a", "local remote", "node-a"},
	{"iTP Local", "NodePort", "client", "local remote", "node-a"},
	{"iTP Local", "LB IP", "pod on node-a", "local remote", "node-a"},
	{"iTP Local", "LB IP", "pod on node-b", "local remote", "node-b"},
	{"iTP Local", "LB IP", "node-a", "local remote", "node-a"},
	{"iTP Local", "LB IP", "client", "local remote", "node-a"},
	{"iTP Local", "externalIP", "pod on node-a", "local remote", "node-a"},
	{"iTP Local", "externalIP", "pod on node-b", "local remote", "node-b"},
	{"iTP Local", "externalIP", "node-a", "local remote", "node-a"},
	{"iTP Local", "externalIP", "client", "local remote", "node-a"},
}

// matrixService is one Service per policy, dual-stack, with an endpoint
// pod on each node.
type matrixService struct {
	policy    string
	index     int
	etp, itp  bool
	nodePort  uint16
	port      uint16
	endpoints []string
}

func (m matrixService) clusterIP(f topo.Family) netip.Addr {
	if f == topo.V6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:96::1:%x", m.index))
	}
	return netip.MustParseAddr(fmt.Sprintf("10.96.1.%d", m.index))
}

func (m matrixService) lbIP(f topo.Family) netip.Addr {
	if f == topo.V6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:200::%x", m.index))
	}
	return netip.MustParseAddr(fmt.Sprintf("192.168.200.%d", m.index))
}

func (m matrixService) extIP(f topo.Family) netip.Addr {
	if f == topo.V6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:201::%x", m.index))
	}
	return netip.MustParseAddr(fmt.Sprintf("192.168.201.%d", m.index))
}

// TestMasqueradeMatrix checks the matrix with each datapath and each way
// of recognizing a node's pods (detectModes): the answers are the same.
func TestMasqueradeMatrix(t *testing.T) {
	eachDatapath(t, func(t *testing.T, datapath string) {
		for _, d := range detectModes {
			t.Run(d.Mode.String(), func(t *testing.T) { masqueradeMatrixTest(t, datapath, d) })
		}
	})
}

func masqueradeMatrixTest(t *testing.T, datapath string, detect model.LocalDetect) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{
		{Name: "node-a", Pods: []string{"local", "cli-a"}},
		{Name: "node-b", Pods: []string{"remote", "cli-b"}},
	}})
	e.datapath = datapath
	e.detect = detect
	c := e.c
	nodeA, nodeB := c.Node("node-a"), c.Node("node-b")
	services := map[string]matrixService{
		"default":   {policy: "default", index: 1, nodePort: 30101, port: 80},
		"eTP Local": {policy: "eTP Local", index: 2, etp: true, nodePort: 30102, port: 80},
		"iTP Local": {policy: "iTP Local", index: 3, itp: true, nodePort: 30103, port: 80},
	}
	for _, m := range services {
		s := k8sobj.Service{
			Name: fmt.Sprintf("svc-%d", m.index), Type: v1.ServiceTypeLoadBalancer,
			ClusterIPs:      []string{m.clusterIP(topo.V4).String(), m.clusterIP(topo.V6).String()},
			Ports:           []k8sobj.Port{{Name: "http", Port: int32(m.port), TargetPort: echoPort, NodePort: int32(m.nodePort)}},
			LoadBalancerIPs: []string{m.lbIP(topo.V4).String(), m.lbIP(topo.V6).String()},
			ExternalIPs:     []string{m.extIP(topo.V4).String(), m.extIP(topo.V6).String()},
			ETPLocal:        m.etp, ITPLocal: m.itp,
		}
		for _, pod := range []*topo.Pod{c.Pod("local"), c.Pod("remote")} {
			for _, a := range []netip.Addr{pod.Addr, pod.Addr6} {
				s.Endpoints = append(s.Endpoints, k8sobj.Endpoint{IP: a.String(), Node: pod.Node.Name})
			}
		}
		e.writeService(t, s)
		// The client reaches node-a's Service addresses through node-a.
		for _, f := range []topo.Family{topo.V4, topo.V6} {
			for _, a := range []netip.Addr{m.clusterIP(f), m.lbIP(f), m.extIP(f)} {
				if err := c.AddRoute(t.Context(), c.Client, netip.PrefixFrom(a, a.BitLen()), nodeA.AddrOf(f)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	e.syncAll(t)

	sources := map[string]*topo.Host{
		"pod on node-a": &c.Pod("cli-a").Host, "pod on node-b": &c.Pod("cli-b").Host,
		"node-a": &nodeA.Host, "client": c.Client,
	}
	for _, f := range []topo.Family{topo.V4, topo.V6} {
		for _, row := range masqueradeMatrix {
			name := fmt.Sprintf("%s/%s/%s→%s", f, row.policy, row.src, row.dst)
			t.Run(name, func(t *testing.T) {
				m := services[row.policy]
				var dst netip.AddrPort
				switch row.dst {
				case "ClusterIP":
					dst = netip.AddrPortFrom(m.clusterIP(f), m.port)
				case "NodePort":
					dst = netip.AddrPortFrom(nodeA.AddrOf(f), m.nodePort)
				case "LB IP":
					dst = netip.AddrPortFrom(m.lbIP(f), m.port)
				case "externalIP":
					dst = netip.AddrPortFrom(m.extIP(f), m.port)
				}
				from := sources[row.src]
				var wantSeen map[netip.Addr]bool
				switch row.seen {
				case "client":
					wantSeen = map[netip.Addr]bool{from.AddrOf(f): true}
				case "node-a":
					wantSeen = nodeA.OwnAddrs(f)
				case "node-b":
					wantSeen = nodeB.OwnAddrs(f)
				}
				hits, seen := e.spread(t, from, "tcp", dst, 16)
				var got []string
				for s := range hits {
					got = append(got, s)
				}
				sort.Strings(got)
				if strings.Join(got, " ") != row.eps {
					t.Errorf("answered by %q, want %q", strings.Join(got, " "), row.eps)
				}
				for srv, srcs := range seen {
					for s := range srcs {
						if !wantSeen[s] {
							t.Errorf("%s saw source %s, want %s (%v)", srv, s, row.seen, wantSeen)
						}
					}
				}
			})
		}
	}
}
