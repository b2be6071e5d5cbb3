package kernel

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/kubenat/kubenat/bench/kubeproxy"
	"github.com/kubenat/kubenat/bench/nsrun"
	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestDNATBeforeAnotherProxy: kube-proxy's rules for the same ClusterIP
// (left over from a migration, at the usual NAT priority) never take the
// Service from kubenat, also when they were created after kubenat's tables
// (at equal priority the kernel would run the newer rules first), in
// kube-proxy's nftables mode and in its iptables mode through iptables-nft
// and iptables-legacy; addresses only kube-proxy serves still reach it.
func TestDNATBeforeAnotherProxy(t *testing.T) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a", Pods: []string{"web-1", "web-2", "cli"}}}})
	c := e.c
	nodeA, cli := c.Node("node-a"), c.Pod("cli")
	e.writeService(t, k8sobj.Service{Name: "web", ClusterIPs: []string{webVIP},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
		Endpoints: []k8sobj.Endpoint{{IP: c.Pod("web-1").Addr.String(), Node: "node-a"}}})
	e.syncAll(t)

	web2 := netip.AddrPortFrom(c.Pod("web-2").Addr, echoPort)
	nftMode := fmt.Sprintf(`table ip kube-proxy {
	chain nat-prerouting {
		type nat hook prerouting priority -100; policy accept;
		ip daddr { %[1]s, 10.96.0.77 } tcp dport 80 dnat to %[2]s
	}
	chain nat-output {
		type nat hook output priority -100; policy accept;
		ip daddr { %[1]s, 10.96.0.77 } tcp dport 80 dnat to %[2]s
	}
}
`, webVIP, web2)
	// kube-proxy's iptables mode, its chain structure, for the same
	// Service and for one kubenat does not have.
	var iptables strings.Builder
	if err := kubeproxy.Write(&iptables, []kubeproxy.Service{
		{Namespace: "default", Name: "web", Port: "http", ClusterIP: netip.MustParseAddr(webVIP), ServicePort: 80, Endpoints: []netip.AddrPort{web2}},
		{Namespace: "default", Name: "other", Port: "http", ClusterIP: netip.MustParseAddr("10.96.0.77"), ServicePort: 80, Endpoints: []netip.AddrPort{web2}},
	}, topo.ClusterCIDR); err != nil {
		t.Fatal(err)
	}
	flush := func(cmd string) string {
		return fmt.Sprintf("%[1]s -t nat -F && %[1]s -t nat -X && %[1]s -F && %[1]s -X", cmd)
	}
	for _, tc := range []struct {
		name, input, remove string
		load                []string
	}{
		{"kube-proxy's nftables mode", nftMode, "nft delete table ip kube-proxy", []string{"nft", "-f", "-"}},
		{"kube-proxy's iptables mode (iptables-nft)", iptables.String(), flush("iptables-nft"), []string{"iptables-nft-restore"}},
		{"kube-proxy's iptables mode (iptables-legacy)", iptables.String(), flush("iptables-legacy"), []string{"iptables-legacy-restore"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out, err := nsrun.Exec(t.Context(), nodeA.NS, strings.NewReader(tc.input), tc.load...); err != nil {
				t.Fatalf("%s: %v\n%s", tc.load, err, out)
			}
			defer func() {
				if out, err := c.Exec(t.Context(), &nodeA.Host, "sh", "-c", tc.remove); err != nil {
					t.Errorf("%s: %v\n%s", tc.remove, err, out)
				}
			}()
			for _, from := range []*topo.Host{&cli.Host, &nodeA.Host} {
				for range 4 {
					if r := e.mustDial(t, from, "tcp", ap(webVIP, 80)); r.Server != "web-1" {
						t.Fatalf("%s to the Service: answered by %s, want web-1 (kubenat's endpoint)", from.Name, r.Server)
					}
				}
				if r := e.mustDial(t, from, "tcp", ap("10.96.0.77", 80)); r.Server != "web-2" {
					t.Errorf("%s to kube-proxy's own Service: answered by %s, want web-2", from.Name, r.Server)
				}
			}
		})
	}
}

// TestRefusalsDespiteAnotherDNAT: a frontend kubenat refuses (a Service
// without endpoints, a ClusterIP port the Service lacks) stays refused
// when someone else's rule DNATs it (a proxy's leftovers), with both
// datapaths: the refusal looks at the connection's original destination.
func TestRefusalsDespiteAnotherDNAT(t *testing.T) { eachDatapath(t, testRefusalsDespiteAnotherDNAT) }

func testRefusalsDespiteAnotherDNAT(t *testing.T, datapath string) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a", Pods: []string{"web-1", "web-2", "cli"}}}})
	e.datapath = datapath
	c := e.c
	nodeA, cli := c.Node("node-a"), c.Pod("cli")
	e.writeService(t, k8sobj.Service{Name: "web", ClusterIPs: []string{webVIP},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
		Endpoints: []k8sobj.Endpoint{{IP: c.Pod("web-1").Addr.String(), Node: "node-a"}}})
	e.writeService(t, k8sobj.Service{Name: "idle", ClusterIPs: []string{"10.96.0.99"},
		Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}}})
	e.syncAll(t)
	other := fmt.Sprintf(`table ip other {
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		ip daddr . tcp dport { 10.96.0.99 . 80, %[1]s . 81 } dnat to %[2]s
	}
}
`, webVIP, netip.AddrPortFrom(c.Pod("web-2").Addr, echoPort))
	if out, err := nsrun.Exec(t.Context(), nodeA.NS, strings.NewReader(other), "nft", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, dst := range []string{"10.96.0.99:80", webVIP + ":81"} {
		if r, err := e.dial(&cli.Host, "tcp", netip.MustParseAddrPort(dst)); !isRefused(err) {
			t.Errorf("%s, which another rule DNATs: %v %v, want refused", dst, r, err)
		}
	}
	if r := e.mustDial(t, &cli.Host, "tcp", ap(webVIP, 80)); r.Server != "web-1" {
		t.Errorf("the Service: answered by %s, want web-1", r.Server)
	}
}
