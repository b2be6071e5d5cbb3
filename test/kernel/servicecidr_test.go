package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestServiceCIDRs: an address of the Service CIDRs that no Service has
// would follow the default route out of the cluster (here to the
// "internet" host, which owns it). With the cluster's ServiceCIDR objects
// a new connection to it is dropped once every DNAT is done, from a pod
// and from the node, in both families; a Service, and another proxy's
// DNAT to an address of the range, still work.
func TestServiceCIDRs(t *testing.T) { eachDatapath(t, testServiceCIDRs) }

func testServiceCIDRs(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	c := e.c
	nodeA, cli, l2 := c.Node("node-a"), c.Pod("cli"), c.Pod("l2")
	e.writeService(t, k8sobj.Service{Name: "web", ClusterIPs: []string{"10.96.6.1", "fd00:96::6:1"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
		Endpoints: []k8sobj.Endpoint{e.ep("l1"), {IP: c.Pod("l1").Addr6.String(), Node: "node-a"}}})
	// Another proxy on node-a serves 10.96.6.9 and fd00:96::6:9 with its
	// own DNAT, at the nat hooks' priority.
	other := fmt.Sprintf(`table inet other-proxy {
	chain pre { type nat hook prerouting priority -100; ip daddr 10.96.6.9 tcp dport 80 dnat ip to %[1]s:%[3]d; ip6 daddr fd00:96::6:9 tcp dport 80 dnat ip6 to [%[2]s]:%[3]d; }
	chain out { type nat hook output priority -100; ip daddr 10.96.6.9 tcp dport 80 dnat ip to %[1]s:%[3]d; ip6 daddr fd00:96::6:9 tcp dport 80 dnat ip6 to [%[2]s]:%[3]d; }
}`, l2.Addr, l2.Addr6, echoPort)
	if out, err := c.Exec(t.Context(), &nodeA.Host, "nft", other); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	type family struct {
		name                    string
		web, other, unallocated netip.AddrPort
	}
	families := []family{
		{"IPv4", ap("10.96.6.1", 80), ap("10.96.6.9", 80), ap("10.96.6.5", 9000)},
		{"IPv6", netip.MustParseAddrPort("[fd00:96::6:1]:80"), netip.MustParseAddrPort("[fd00:96::6:9]:80"),
			netip.MustParseAddrPort("[fd00:96::6:5]:9000")},
	}
	// The unallocated addresses lead to the internet host, which answers
	// (and reaches node-a's pods through the router).
	for _, pods := range []netip.Prefix{nodeA.PodCIDR, nodeA.PodCIDR6} {
		if err := c.AddRoute(t.Context(), c.Router, pods, nodeA.AddrOf(familyOf(pods.Addr()))); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range families {
		a := f.unallocated.Addr()
		if out, err := c.Exec(t.Context(), c.Internet, "ip", "addr", "add", netip.PrefixFrom(a, a.BitLen()).String(), "dev", "lo"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if err := c.AddRoute(t.Context(), c.Router, netip.PrefixFrom(a, a.BitLen()), c.Internet.AddrOf(familyOf(a))); err != nil {
			t.Fatal(err)
		}
	}
	sources := []struct {
		name string
		host *topo.Host
	}{{"a pod", &cli.Host}, {"the node", &nodeA.Host}}
	leaks := func(t *testing.T) {
		t.Helper()
		for _, f := range families {
			for _, from := range sources {
				if r, err := e.dial(from.host, "tcp", f.unallocated); err != nil || r.Server != "internet" {
					t.Errorf("%s to %s: %v, %v; want it routed out to the internet host", from.name, f.unallocated, r, err)
				}
			}
		}
	}
	e.syncAll(t)
	t.Run("without a ServiceCIDR an unallocated address leaves the cluster", leaks)

	// An endpoint inside a Service CIDR (here the internet host, in a
	// second ServiceCIDR): DNATed traffic to it is not dropped.
	e.writeService(t, k8sobj.Service{Name: "outside", ClusterIPs: []string{"10.96.6.2"},
		Ports:     []k8sobj.Port{{Name: "tcp", Port: 80, TargetPort: 9000}},
		Endpoints: []k8sobj.Endpoint{{IP: c.Internet.Addr.String()}}})
	sc := []byte("apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\nspec: {cidrs: [10.96.0.0/16, \"fd00:96::/108\"]}\n" +
		"---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: odd}\nspec: {cidrs: [" + c.Internet.Addr.String() + "/32]}\n")
	if err := os.WriteFile(filepath.Join(e.dir, "servicecidr.yaml"), sc, 0o644); err != nil {
		t.Fatal(err)
	}
	e.syncAll(t)
	for _, f := range families {
		t.Run(f.name+": with the ServiceCIDR it is dropped", func(t *testing.T) {
			for _, from := range sources {
				if r, err := e.dial(from.host, "tcp", f.unallocated); !dropped(err) {
					t.Errorf("%s to the unallocated %s: %v, %v; want no answer", from.name, f.unallocated, r, err)
				}
				if r := e.mustDial(t, from.host, "tcp", f.web); r.Server != "l1" {
					t.Errorf("%s to the Service: answered by %s", from.name, r.Server)
				}
				if r := e.mustDial(t, from.host, "tcp", f.other); r.Server != "l2" {
					t.Errorf("%s to the other proxy's address: answered by %s", from.name, r.Server)
				}
				if f.name == "IPv4" {
					if r := e.mustDial(t, from.host, "tcp", ap("10.96.6.2", 80)); r.Server != "internet" {
						t.Errorf("%s to a Service whose endpoint is in a Service CIDR: answered by %s", from.name, r.Server)
					}
				}
			}
		})
	}

	if err := removeManifest(e, "servicecidr.yaml"); err != nil {
		t.Fatal(err)
	}
	e.syncAll(t)
	t.Run("the ServiceCIDR removed, the address is routed again", leaks)
}

// dropped reports whether a connection's error is a drop: a timeout for
// a forwarded SYN, EPERM for one the node sends.
func dropped(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EPERM)
}

func familyOf(a netip.Addr) topo.Family {
	if a.Is6() {
		return topo.V6
	}
	return topo.V4
}
