package kernel

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/topo"
)

// twoNodes builds node-a (l1, l2, cli) and node-b (r1) for the semantics
// tests.
func twoNodes(t *testing.T) *env {
	return newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{
		{Name: "node-a", Pods: []string{"l1", "l2", "cli"}},
		{Name: "node-b", Pods: []string{"r1"}},
	}})
}

func (e *env) ep(pod string) k8sobj.Endpoint {
	p := e.c.Pod(pod)
	return k8sobj.Endpoint{IP: p.Addr.String(), Node: p.Node.Name}
}

func TestSessionAffinity(t *testing.T) { eachDatapath(t, testSessionAffinity) }

func testSessionAffinity(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	cli := &e.c.Pod("cli").Host
	svc := func(affinity int32) k8sobj.Service {
		return k8sobj.Service{Name: "sticky", ClusterIPs: []string{"10.96.2.1"}, AffinitySeconds: affinity,
			Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
			Endpoints: []k8sobj.Endpoint{e.ep("l1"), e.ep("l2"), e.ep("r1")}}
	}
	dst := ap("10.96.2.1", 80)
	sticky := func(t *testing.T) string {
		t.Helper()
		hits, _ := e.spread(t, cli, "tcp", dst, 20)
		if len(hits) != 1 {
			t.Errorf("with ClientIP affinity the client reached %v, want one endpoint", keys(hits))
		}
		for s := range hits {
			return s
		}
		return ""
	}
	spreads := func(t *testing.T) {
		t.Helper()
		if hits, _ := e.spread(t, cli, "tcp", dst, 30); len(hits) < 2 {
			t.Errorf("without affinity the client reached only %v", keys(hits))
		}
	}

	e.writeService(t, svc(10800))
	e.syncAll(t)
	first := sticky(t)

	t.Run("another client gets its own endpoint, the first keeps its", func(t *testing.T) {
		if _, err := e.dial(&e.c.Node("node-a").Host, "tcp", dst); err != nil {
			t.Fatal(err)
		}
		if got := sticky(t); got != first {
			t.Errorf("the client moved from %s to %s", first, got)
		}
	})
	t.Run("switching affinity off spreads again", func(t *testing.T) {
		e.writeService(t, svc(0))
		e.syncAll(t)
		spreads(t)
	})
	t.Run("switching affinity on sticks again", func(t *testing.T) {
		e.writeService(t, svc(10800))
		e.syncAll(t)
		sticky(t)
	})
	t.Run("the affine endpoint goes away: the client moves", func(t *testing.T) {
		pinned := sticky(t)
		s := svc(10800)
		var keep []k8sobj.Endpoint
		for _, ep := range s.Endpoints {
			if ep.IP != e.c.Pod(pinned).Addr.String() {
				keep = append(keep, ep)
			}
		}
		s.Endpoints = keep
		e.writeService(t, s)
		e.syncAll(t)
		if got := sticky(t); got == pinned {
			t.Errorf("still reaching removed endpoint %s", got)
		}
	})
	t.Run("affinity expires after timeoutSeconds", func(t *testing.T) {
		e.writeService(t, svc(1))
		e.syncAll(t)
		pinned := sticky(t)
		nodeA := &e.c.Node("node-a").Host
		if datapath == "iptables" {
			// The recent lists keep expired clients; what shows the
			// expiry is where the client goes once a second has passed.
			out, err := e.c.Exec(t.Context(), nodeA, "sh", "-c", "cat /proc/net/xt_recent/KUBENAT-SEP-*")
			if err != nil || !strings.Contains(out, "src="+cli.Addr.String()+" ") {
				t.Fatalf("the client is not in a recent list: %v\n%s", err, out)
			}
			seen := map[string]bool{pinned: true}
			for range 8 {
				time.Sleep(1200 * time.Millisecond)
				seen[e.mustDial(t, cli, "tcp", dst).Server] = true
			}
			if len(seen) < 2 {
				t.Errorf("the client stayed on %s across 8 expired timeouts", pinned)
			}
			return
		}
		set := "affinity-default/sticky/tcp/80__" + e.c.Pod(pinned).Addr.String() + "/8080"
		out, err := e.c.Exec(t.Context(), nodeA, "nft", "list", "set", "ip", "kubenat", set)
		if err != nil || !strings.Contains(out, cli.Addr.String()) {
			t.Fatalf("the client is not in %s: %v\n%s", set, err, out)
		}
		time.Sleep(2500 * time.Millisecond)
		out, err = e.c.Exec(t.Context(), nodeA, "nft", "list", "set", "ip", "kubenat", set)
		if err != nil || strings.Contains(out, cli.Addr.String()) {
			t.Errorf("the client is still affine after the timeout: %v\n%s", err, out)
		}
	})
}

func TestTerminatingEndpoints(t *testing.T) { eachDatapath(t, testTerminatingEndpoints) }

func testTerminatingEndpoints(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	cli := &e.c.Pod("cli").Host
	nodeA := e.c.Node("node-a")
	term := func(ep k8sobj.Endpoint, serving bool) k8sobj.Endpoint {
		ep.Terminating, ep.NotServing = true, !serving
		return ep
	}
	write := func(t *testing.T, etp bool, eps ...k8sobj.Endpoint) {
		e.writeService(t, k8sobj.Service{Name: "web", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.2.2"},
			ETPLocal: etp, Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort, NodePort: 30202}}, Endpoints: eps})
		e.syncAll(t)
	}
	only := func(t *testing.T, from *topo.Host, dst netip.AddrPort, want string) {
		t.Helper()
		hits, _ := e.spread(t, from, "tcp", dst, 12)
		if len(hits) != 1 || hits[want] == 0 {
			t.Errorf("reached %v, want only %s", keys(hits), want)
		}
	}
	vip := ap("10.96.2.2", 80)
	nodePort := netip.AddrPortFrom(nodeA.Addr, 30202)

	t.Run("a ready endpoint is preferred to a terminating one", func(t *testing.T) {
		write(t, false, e.ep("l1"), term(e.ep("r1"), true))
		only(t, cli, vip, "l1")
	})
	t.Run("with none ready, serving terminating endpoints are used", func(t *testing.T) {
		write(t, false, term(e.ep("l1"), false), term(e.ep("r1"), true))
		only(t, cli, vip, "r1")
	})
	t.Run("terminating and not serving: refused", func(t *testing.T) {
		write(t, false, term(e.ep("r1"), false))
		if _, err := e.dial(cli, "tcp", vip); !isRefused(err) {
			t.Errorf("got %v, want connection refused", err)
		}
	})
	t.Run("externalTrafficPolicy Local falls back to local terminating endpoints", func(t *testing.T) {
		write(t, true, term(e.ep("l1"), true), e.ep("r1"))
		only(t, e.c.Client, nodePort, "l1")
		only(t, cli, vip, "r1") // cluster traffic still prefers the ready one
	})
}

// TestTopologyAwareRouting labels node-a zone-a and node-b zone-b and
// gives the endpoints topology hints, as the EndpointSlice controller does
// for trafficDistribution PreferClose (zones) and PreferSameNode (nodes):
// each node keeps cluster traffic to the endpoints meant for it, and
// ignores the hints when one endpoint has none.
func TestTopologyAwareRouting(t *testing.T) { eachDatapath(t, testTopologyAwareRouting) }

func testTopologyAwareRouting(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	for _, n := range e.c.Nodes {
		node := k8sobj.Node(n.Name, []string{n.Addr.String(), n.Addr6.String()}, []string{n.PodCIDR.String(), n.PodCIDR6.String()})
		if err := k8sobj.WriteFile(e.dir, "node-"+n.Name+".yaml", k8sobj.InZone(node, "zone-"+n.Name[len("node-"):])); err != nil {
			t.Fatal(err)
		}
	}
	cli, r1 := &e.c.Pod("cli").Host, &e.c.Pod("r1").Host
	vip := ap("10.96.2.40", 80)
	hinted := func(pod string, zones, nodes []string) k8sobj.Endpoint {
		ep := e.ep(pod)
		ep.ForZones, ep.ForNodes = zones, nodes
		return ep
	}
	for _, tc := range []struct {
		name         string
		eps          []k8sobj.Endpoint
		fromA, fromB []string // who answers node-a's client pod, node-b's pod
	}{
		{"zone hints: each node stays in its zone",
			[]k8sobj.Endpoint{hinted("l1", []string{"zone-a"}, nil), hinted("l2", []string{"zone-a"}, nil), hinted("r1", []string{"zone-b"}, nil)},
			[]string{"l1", "l2"}, []string{"r1"}},
		{"node hints: each node keeps to its own endpoints",
			[]k8sobj.Endpoint{hinted("l1", []string{"zone-a"}, []string{"node-a"}), hinted("l2", []string{"zone-a"}, []string{"node-a"}),
				hinted("r1", []string{"zone-a"}, []string{"node-b"})},
			[]string{"l1", "l2"}, []string{"r1"}},
		{"an endpoint without hints: every endpoint is used",
			[]k8sobj.Endpoint{hinted("l1", []string{"zone-a"}, nil), e.ep("l2"), hinted("r1", []string{"zone-b"}, nil)},
			[]string{"l1", "l2", "r1"}, []string{"l1", "l2", "r1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.writeService(t, k8sobj.Service{Name: "zonal", ClusterIPs: []string{vip.Addr().String()},
				Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}}, Endpoints: tc.eps})
			e.syncAll(t)
			for _, from := range []struct {
				h    *topo.Host
				want []string
			}{{cli, tc.fromA}, {r1, tc.fromB}} {
				hits, _ := e.spread(t, from.h, "tcp", vip, 10*len(from.want))
				var got []string
				for server := range hits {
					got = append(got, server)
				}
				slices.Sort(got)
				if !slices.Equal(got, from.want) {
					t.Errorf("from %s: answered by %v, want %v", from.h.Name, keys(hits), from.want)
				}
			}
		})
	}
}

func TestLoadBalancerSourceRanges(t *testing.T) { eachDatapath(t, testLoadBalancerSourceRanges) }

func testLoadBalancerSourceRanges(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	c := e.c
	nodeA := c.Node("node-a")
	e.writeService(t, k8sobj.Service{Name: "fw", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.2.3"},
		Ports:           []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort, NodePort: 30203}},
		LoadBalancerIPs: []string{"192.168.200.30"}, SourceRanges: []string{c.Client.Addr.String() + "/32"},
		Endpoints: []k8sobj.Endpoint{e.ep("l1"), e.ep("r1")}})
	for _, h := range []*topo.Host{c.Client, c.Router} {
		if err := c.AddRoute(t.Context(), h, netip.MustParsePrefix("192.168.200.30/32"), nodeA.Addr); err != nil {
			t.Fatal(err)
		}
	}
	e.syncAll(t)
	lb := ap("192.168.200.30", 80)
	if _, err := e.dial(c.Client, "tcp", lb); err != nil {
		t.Errorf("a source inside the ranges: %v", err)
	}
	if r, err := e.dial(c.Router, "tcp", lb); !isTimeout(err) {
		t.Errorf("a source outside the ranges: got %v, %v; want dropped (timeout)", r, err)
	}
	if _, err := e.dial(c.Router, "tcp", netip.AddrPortFrom(nodeA.Addr, 30203)); err != nil {
		t.Errorf("NodePort is not filtered by loadBalancerSourceRanges: %v", err)
	}
}

func TestPortsAndNamedTargetPorts(t *testing.T) { eachDatapath(t, testPortsAndNamedTargetPorts) }

func testPortsAndNamedTargetPorts(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	cli := &e.c.Pod("cli").Host
	e.serve(&e.c.Pod("r1").Host, "r1-9090", 9090)
	r1 := e.ep("r1")
	r1.Ports = map[string]int32{"http": 9090}
	e.writeService(t, k8sobj.Service{Name: "multi", ClusterIPs: []string{"10.96.2.4"},
		Ports: []k8sobj.Port{
			{Name: "http", Port: 80, TargetPort: echoPort},
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort},
			{Name: "dns-tcp", Port: 53, TargetPort: echoPort},
		},
		Endpoints: []k8sobj.Endpoint{e.ep("l1"), r1}})
	e.syncAll(t)
	hits, _ := e.spread(t, cli, "tcp", ap("10.96.2.4", 80), 20)
	if hits["l1"] == 0 || hits["r1-9090"] == 0 || len(hits) != 2 {
		t.Errorf("named target port: reached %v, want l1 (8080) and r1 on 9090", keys(hits))
	}
	for _, network := range []string{"tcp", "udp"} {
		hits, _ := e.spread(t, cli, network, ap("10.96.2.4", 53), 12)
		if hits["l1"]+hits["r1"] != 12 {
			t.Errorf("%s 53: reached %v", network, keys(hits))
		}
	}
	if _, err := e.dial(cli, "udp", ap("10.96.2.4", 80)); !isRefused(err) {
		t.Errorf("UDP to a TCP-only port: got %v, want refused", err)
	}
}

func TestMasqueradeAllAndNodePortAddresses(t *testing.T) {
	eachDatapath(t, testMasqueradeAllAndNodePortAddresses)
}

func testMasqueradeAllAndNodePortAddresses(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	c := e.c
	nodeA := c.Node("node-a")
	cli := c.Pod("cli")
	extra := netip.MustParseAddr("192.168.100.111")
	if _, err := c.Exec(t.Context(), &nodeA.Host, "ip", "addr", "add", extra.String()+"/24", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	e.writeService(t, k8sobj.Service{Name: "web", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.2.5"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort, NodePort: 30205}},
		Endpoints: []k8sobj.Endpoint{e.ep("l1"), e.ep("r1")}})
	e.syncAll(t, "--masquerade-all", "--nodeport-addresses", extra.String()+"/32")

	hits, seen := e.spread(t, &cli.Host, "tcp", ap("10.96.2.5", 80), 16)
	if len(hits) != 2 {
		t.Errorf("reached %v", keys(hits))
	}
	for srv, srcs := range seen {
		for s := range srcs {
			if !nodeA.OwnAddrs(topo.V4)[s] {
				t.Errorf("masqueradeAll: %s saw %s, want node-a", srv, s)
			}
		}
	}
	if _, err := e.dial(c.Client, "tcp", netip.AddrPortFrom(extra, 30205)); err != nil {
		t.Errorf("NodePort on the selected address: %v", err)
	}
	if r, err := e.dial(c.Client, "tcp", netip.AddrPortFrom(nodeA.Addr, 30205)); err == nil {
		t.Errorf("NodePort answered on an address nodePortAddresses excludes: %v", r)
	}
}

func TestIgnoredServicesAreNotProgrammed(t *testing.T) {
	eachDatapath(t, testIgnoredServicesAreNotProgrammed)
}

func testIgnoredServicesAreNotProgrammed(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	cli := &e.c.Pod("cli").Host
	for i, labels := range []map[string]string{
		{"service.kubernetes.io/service-proxy-name": "other-proxy"},
		{"service.kubernetes.io/headless": ""},
		{"service.kubernetes.io/service-proxy-name": "kubenat"},
	} {
		e.writeService(t, k8sobj.Service{Name: "s" + string(rune('a'+i)), ClusterIPs: []string{"10.96.3." + string(rune('1'+i))},
			Labels: labels, Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
			Endpoints: []k8sobj.Endpoint{e.ep("l1")}})
	}
	e.syncAll(t)
	show := []string{"nft", "list", "set", "ip", "kubenat", "cluster-ips"}
	if datapath == "iptables" {
		show = []string{"iptables-save"}
	}
	out, err := e.c.Exec(t.Context(), &e.c.Node("node-a").Host, show...)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "10.96.3.1") || strings.Contains(out, "10.96.3.2") {
		t.Errorf("an ignored Service is programmed:\n%s", out)
	}
	if _, err := e.dial(cli, "tcp", ap("10.96.3.3", 80)); err != nil {
		t.Errorf("the Service naming kubenat is not served: %v", err)
	}
}

// TestNodeAddressFallback: without --node-ip and without a Node object, the
// NodePort is served on the address of the node's default route.
func TestNodeAddressFallback(t *testing.T) { eachDatapath(t, testNodeAddressFallback) }

func testNodeAddressFallback(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	nodeA := e.c.Node("node-a")
	if err := removeManifest(e, "node-node-a.yaml"); err != nil {
		t.Fatal(err)
	}
	e.writeService(t, k8sobj.Service{Name: "web", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.2.6", "fd00:96::2:6"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort, NodePort: 30206}},
		Endpoints: []k8sobj.Endpoint{e.ep("l1"), {IP: e.c.Pod("l1").Addr6.String(), Node: "node-a"}}})
	e.syncAll(t)
	for _, a := range []netip.Addr{nodeA.Addr, nodeA.Addr6} {
		if r, err := e.dial(e.c.Client, "tcp", netip.AddrPortFrom(a, 30206)); err != nil || r.Server != "l1" {
			t.Errorf("NodePort on %s: %v %v", a, r, err)
		}
	}
}

// TestEndpointAtAnotherFrontend: an endpoint may have the address and
// port of a frontend, its own Service's or another's. The connection is
// the endpoint's once DNATed: the other frontend's refusal or source
// ranges do not apply to it, and a frontend DNATed to itself (a
// LoadBalancer IP that is the node's, with a host-network endpoint, as
// k3s's ServiceLB makes them) keeps serving admitted clients.
func TestEndpointAtAnotherFrontend(t *testing.T) { eachDatapath(t, testEndpointAtAnotherFrontend) }

func testEndpointAtAnotherFrontend(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	nodeA := e.c.Node("node-a")
	e.serve(&nodeA.Host, "node-a", 8090)
	inet := e.c.Internet.Addr.String()
	e.writeService(t, k8sobj.Service{Name: "idle-lb", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.4.1"},
		Ports:           []k8sobj.Port{{Name: "tcp", Port: 9000, TargetPort: 9000, NodePort: 30400}},
		LoadBalancerIPs: []string{inet}})
	e.writeService(t, k8sobj.Service{Name: "via", ClusterIPs: []string{"10.96.4.2"},
		Ports:     []k8sobj.Port{{Name: "tcp", Port: 80, TargetPort: 9000}},
		Endpoints: []k8sobj.Endpoint{{IP: inet}}})
	e.writeService(t, k8sobj.Service{Name: "hostfw", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.4.3"},
		Ports:           []k8sobj.Port{{Name: "tcp", Port: 8090, TargetPort: 8090, NodePort: 30401}},
		LoadBalancerIPs: []string{nodeA.Addr.String()}, SourceRanges: []string{"192.168.100.0/24"},
		Endpoints: []k8sobj.Endpoint{{IP: nodeA.Addr.String(), Node: "node-a"}}})
	e.syncAll(t)
	cli := &e.c.Pod("cli").Host
	if r, err := e.dial(cli, "tcp", ap("10.96.4.2", 80)); err != nil || r.Server != "internet" {
		t.Errorf("pod → a ClusterIP whose endpoint is another Service's idle LoadBalancer IP: %v %v", r, err)
	}
	if r, err := e.dial(e.c.Client, "tcp", netip.AddrPortFrom(nodeA.Addr, 8090)); err != nil || r.Server != "node-a" {
		t.Errorf("admitted client → a LoadBalancer IP DNATed to itself: %v %v", r, err)
	}
	if r, err := e.dial(cli, "tcp", ap("10.96.4.3", 8090)); err != nil || r.Server != "node-a" {
		t.Errorf("pod → the ClusterIP of a Service whose endpoint is its own firewalled LoadBalancer IP: %v %v", r, err)
	}
}
