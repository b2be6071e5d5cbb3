package kernel

import (
	"fmt"
	"testing"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestDNATBeforeAnotherProxy: rules of another proxy for the same
// ClusterIP (kube-proxy's left over from a migration, at the usual NAT
// priority) never take the Service from kubenat, also when they were
// created after kubenat's tables (at equal priority the kernel would run
// the newer table first); addresses only the other proxy serves still
// reach it.
func TestDNATBeforeAnotherProxy(t *testing.T) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a", Pods: []string{"web-1", "web-2", "cli"}}}})
	c := e.c
	nodeA, cli := c.Node("node-a"), c.Pod("cli")
	e.writeService(t, k8sobj.Service{Name: "web", ClusterIPs: []string{webVIP},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
		Endpoints: []k8sobj.Endpoint{{IP: c.Pod("web-1").Addr.String(), Node: "node-a"}}})
	e.syncAll(t)
	other := fmt.Sprintf(`table ip kube-proxy {
	chain nat-prerouting {
		type nat hook prerouting priority -100; policy accept;
		ip daddr { %[1]s, 10.96.0.77 } tcp dport 80 dnat to %[2]s:%[3]d
	}
	chain nat-output {
		type nat hook output priority -100; policy accept;
		ip daddr { %[1]s, 10.96.0.77 } tcp dport 80 dnat to %[2]s:%[3]d
	}
}`, webVIP, c.Pod("web-2").Addr, echoPort)
	if out, err := c.Exec(t.Context(), &nodeA.Host, "nft", other); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, from := range []*topo.Host{&cli.Host, &nodeA.Host} {
		for range 4 {
			if r := e.mustDial(t, from, "tcp", ap(webVIP, 80)); r.Server != "web-1" {
				t.Fatalf("%s to the Service: answered by %s, want web-1 (kubenat's endpoint)", from.Name, r.Server)
			}
		}
		if r := e.mustDial(t, from, "tcp", ap("10.96.0.77", 80)); r.Server != "web-2" {
			t.Errorf("%s to the other proxy's own address: answered by %s, want web-2", from.Name, r.Server)
		}
	}
}
