package kernel

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestServiceCIDRs: with the cluster's ServiceCIDR objects, a new
// connection to an address of them that no Service takes is refused (from
// a pod, forwarded, and from the node), instead of following the default
// route out of the cluster; Services, and another proxy's DNAT to an
// address of the range, still work. Without the objects it is routed.
func TestServiceCIDRs(t *testing.T) {
	e := twoNodes(t)
	nodeA, cli, l2 := e.c.Node("node-a"), e.c.Pod("cli"), e.c.Pod("l2")
	e.writeService(t, k8sobj.Service{Name: "web", ClusterIPs: []string{"10.96.6.1", "fd00:96::6:1"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
		Endpoints: []k8sobj.Endpoint{e.ep("l1"), {IP: e.c.Pod("l1").Addr6.String(), Node: "node-a"}}})
	// Another proxy on node-a serves 10.96.6.9 and fd00:96::6:9 with its
	// own DNAT, at the nat hooks' priority.
	other := fmt.Sprintf(`table inet other-proxy {
	chain pre { type nat hook prerouting priority -100; ip daddr 10.96.6.9 tcp dport 80 dnat ip to %[1]s:%[3]d; ip6 daddr fd00:96::6:9 tcp dport 80 dnat ip6 to [%[2]s]:%[3]d; }
	chain out { type nat hook output priority -100; ip daddr 10.96.6.9 tcp dport 80 dnat ip to %[1]s:%[3]d; ip6 daddr fd00:96::6:9 tcp dport 80 dnat ip6 to [%[2]s]:%[3]d; }
}`, l2.Addr, l2.Addr6, echoPort)
	if out, err := e.c.Exec(t.Context(), &nodeA.Host, "nft", other); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sc := []byte("apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\nspec: {cidrs: [10.96.0.0/16, \"fd00:96::/108\"]}\n")
	if err := os.WriteFile(filepath.Join(e.dir, "servicecidr.yaml"), sc, 0o644); err != nil {
		t.Fatal(err)
	}
	e.syncAll(t)

	for _, f := range []struct {
		name                    string
		web, other, unallocated netip.AddrPort
	}{
		{"IPv4", ap("10.96.6.1", 80), ap("10.96.6.9", 80), ap("10.96.6.5", 80)},
		{"IPv6", netip.MustParseAddrPort("[fd00:96::6:1]:80"), netip.MustParseAddrPort("[fd00:96::6:9]:80"), netip.MustParseAddrPort("[fd00:96::6:5]:80")},
	} {
		t.Run(f.name, func(t *testing.T) {
			for _, from := range []struct {
				name string
				host *topo.Host
			}{{"a pod", &cli.Host}, {"the node", &nodeA.Host}} {
				if r, err := e.dial(from.host, "tcp", f.unallocated); !isRefused(err) {
					t.Errorf("%s to the unallocated %s: %v, %v; want refused", from.name, f.unallocated, r, err)
				}
				if r := e.mustDial(t, from.host, "tcp", f.web); r.Server != "l1" {
					t.Errorf("%s to the Service: answered by %s", from.name, r.Server)
				}
				if r := e.mustDial(t, from.host, "tcp", f.other); r.Server != "l2" {
					t.Errorf("%s to the other proxy's address: answered by %s", from.name, r.Server)
				}
			}
		})
	}

	t.Run("without the ServiceCIDR an unallocated address is routed", func(t *testing.T) {
		if err := removeManifest(e, "servicecidr.yaml"); err != nil {
			t.Fatal(err)
		}
		e.syncAll(t)
		if _, err := e.dial(&cli.Host, "tcp", ap("10.96.6.5", 80)); isRefused(err) {
			t.Errorf("to the unallocated 10.96.6.5: refused without a ServiceCIDR")
		}
	})
}
