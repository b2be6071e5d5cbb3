package kernel

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
)

// TestIPv6 checks, in the IPv6 family, what the matrix does not: refusal
// without endpoints, unknown ports, and pod egress masquerading.
func TestIPv6(t *testing.T) { eachDatapath(t, testIPv6) }

func testIPv6(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	c := e.c
	nodeA, cli := c.Node("node-a"), c.Pod("cli")
	e.writeService(t, k8sobj.Service{Name: "idle6", ClusterIPs: []string{"fd00:96::6:1"},
		Ports: []k8sobj.Port{{Name: "tcp", Port: 80, TargetPort: echoPort}, {Name: "udp", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort}}})
	e.writeService(t, k8sobj.Service{Name: "web6", ClusterIPs: []string{"fd00:96::6:2"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
		Endpoints: []k8sobj.Endpoint{{IP: c.Pod("l1").Addr6.String(), Node: "node-a"}, {IP: c.Pod("r1").Addr6.String(), Node: "node-b"}}})
	e.syncAll(t)
	for _, tc := range []struct {
		network string
		dst     netip.AddrPort
	}{{"tcp", ap("fd00:96::6:1", 80)}, {"udp", ap("fd00:96::6:1", 53)}, {"tcp", ap("fd00:96::6:2", 81)}} {
		if _, err := e.dial(&cli.Host, tc.network, tc.dst); !isRefused(err) {
			t.Errorf("%s %s: got %v, want refused", tc.network, tc.dst, err)
		}
	}
	hits, seen := e.spread(t, &cli.Host, "tcp", ap("fd00:96::6:2", 80), 16)
	if len(hits) != 2 {
		t.Errorf("reached %v", keys(hits))
	}
	for _, srcs := range seen {
		for s := range srcs {
			if s != cli.Addr6 {
				t.Errorf("pod to ClusterIP saw %s, want %s", s, cli.Addr6)
			}
		}
	}
	r := e.mustDial(t, &cli.Host, "tcp", netip.AddrPortFrom(c.Internet.Addr6, 9000))
	if r.Seen.Addr() != nodeA.Addr6 {
		t.Errorf("IPv6 egress: the internet host saw %s, want %s", r.Seen.Addr(), nodeA.Addr6)
	}
	r = e.mustDial(t, &cli.Host, "tcp", netip.AddrPortFrom(c.Pod("r1").Addr6, echoPort))
	if r.Seen.Addr() != cli.Addr6 {
		t.Errorf("IPv6 pod to pod saw %s", r.Seen.Addr())
	}
}
