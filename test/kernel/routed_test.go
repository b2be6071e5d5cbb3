package kernel

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestRoutedPodsByInterfacePrefix is a routed CNI's node (Calico-like):
// no bridge, every pod behind a veth of its own ("caliN") with a /32
// route and proxy ARP, pods addressed outside any cluster CIDR. kubenat
// runs with --detect-local-mode=InterfaceNamePrefix and no cluster CIDR:
// a pod's connection to a ClusterIP keeps its source, the node's own is
// masqueraded, and pod egress to a destination outside the
// non-masquerade ranges leaves with the node's address.
func TestRoutedPodsByInterfacePrefix(t *testing.T) {
	netnstest.Require(t)
	node := &topo.Host{Name: "node-r", NS: netnstest.NewNamespace(t), Addr: ap("192.0.2.1", 0).Addr()}
	ext := &topo.Host{Name: "ext", NS: netnstest.NewNamespace(t), Addr: ap("192.0.2.2", 0).Addr()}
	client := &topo.Host{Name: "client", NS: netnstest.NewNamespace(t), Addr: ap("10.99.1.5", 0).Addr()}
	server := &topo.Host{Name: "server", NS: netnstest.NewNamespace(t), Addr: ap("10.99.1.6", 0).Addr()}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	inNode := func(args ...string) { ip(append([]string{"-n", node.NS}, args...)...) }
	if out, err := exec.Command("ip", "netns", "exec", node.NS, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// The node's LAN link to an outside host, which has no route to the
	// pods: only masqueraded traffic gets its replies back.
	ip("link", "add", "eth0", "netns", node.NS, "type", "veth", "peer", "name", "eth0", "netns", ext.NS)
	inNode("addr", "add", "192.0.2.1/24", "dev", "eth0")
	inNode("link", "set", "eth0", "up")
	ip("-n", ext.NS, "addr", "add", "192.0.2.2/24", "dev", "eth0")
	ip("-n", ext.NS, "link", "set", "eth0", "up")
	// The node's default route, which also makes its proxy ARP answer for
	// the pods' gateway 169.254.1.1.
	inNode("route", "add", "default", "via", "192.0.2.2")
	// The pods, routed.
	for i, pod := range []*topo.Host{client, server} {
		veth := []string{"cali1", "cali2"}[i]
		ip("link", "add", veth, "netns", node.NS, "type", "veth", "peer", "name", "eth0", "netns", pod.NS)
		inNode("link", "set", veth, "up")
		if out, err := exec.Command("ip", "netns", "exec", node.NS, "sysctl", "-qw", "net.ipv4.conf."+veth+".proxy_arp=1").CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		inNode("route", "add", pod.Addr.String()+"/32", "dev", veth)
		ip("-n", pod.NS, "addr", "add", pod.Addr.String()+"/32", "dev", "eth0")
		ip("-n", pod.NS, "link", "set", "eth0", "up")
		ip("-n", pod.NS, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
		ip("-n", pod.NS, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
	}
	for _, h := range []*topo.Host{server, ext} {
		s, err := topo.ServeEcho(h, h.Name, echoPort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
	}

	dir := t.TempDir()
	if err := k8sobj.WriteFile(dir, "node.yaml", k8sobj.Node("node-r", []string{"192.0.2.1"}, nil)); err != nil {
		t.Fatal(err)
	}
	if err := k8sobj.WriteService(dir, k8sobj.Service{Name: "web", ClusterIPs: []string{"10.96.7.1"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
		Endpoints: []k8sobj.Endpoint{{IP: server.Addr.String(), Node: "node-r"}}}); err != nil {
		t.Fatal(err)
	}
	out, err := netnstest.Kubenat(t, node, "agent", "--once", "--manifests", dir, "--node-name", "node-r",
		"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=cali", "--conntrack-max-per-core=0")
	if err != nil {
		t.Fatalf("kubenat agent: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		name         string
		from         *topo.Host
		dst          string // the ClusterIP is dialed on port 80, the others on echoPort
		server, seen string
	}{
		{"a pod to the ClusterIP keeps its source", client, "10.96.7.1", "server", "10.99.1.5"},
		{"the node to the ClusterIP is masqueraded", node, "10.96.7.1", "server", "192.0.2.1"},
		{"pod egress outside the non-masquerade ranges is masqueraded", client, "192.0.2.2", "ext", "192.0.2.1"},
		{"a pod to a pod keeps its source", client, "10.99.1.6", "server", "10.99.1.5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := tc.dst
			port := uint16(echoPort)
			if dst == "10.96.7.1" {
				port = 80
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			r, err := topo.Dial(ctx, tc.from, "tcp", ap(dst, port), 2*time.Second)
			if err != nil {
				t.Fatalf("%s to %s:%d: %v", tc.from.Name, dst, port, err)
			}
			if r.Server != tc.server || r.Seen.Addr().String() != tc.seen {
				t.Errorf("answered by %s, which saw %s; want %s seeing %s", r.Server, r.Seen.Addr(), tc.server, tc.seen)
			}
		})
	}
}
