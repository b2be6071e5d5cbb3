package kernel

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/topo"
)

const (
	webVIP  = "10.96.0.10"
	dnsVIP  = "10.96.0.53"
	idleVIP = "10.96.0.99"
	lbIP    = "192.168.200.10"
	extIP   = "192.168.201.10"
)

// foundation builds node-a (web-1, dns-1, cli) and node-b (web-2, dns-2)
// with a LoadBalancer Service "web", a UDP+TCP Service "dns" and an
// endpoint-less Service "idle", programmed by kubenat on both nodes.
func foundation(t *testing.T) *env {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{
		{Name: "node-a", Pods: []string{"web-1", "dns-1", "cli"}},
		{Name: "node-b", Pods: []string{"web-2", "dns-2"}},
	}})
	c := e.c
	e.writeService(t, k8sobj.Service{
		Name: "web", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{webVIP},
		Ports:           []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort, NodePort: 30080}},
		ExternalIPs:     []string{extIP},
		LoadBalancerIPs: []string{lbIP},
		Endpoints: []k8sobj.Endpoint{
			{IP: c.Pod("web-1").Addr.String(), Node: "node-a"},
			{IP: c.Pod("web-2").Addr.String(), Node: "node-b"},
		},
	})
	e.writeService(t, k8sobj.Service{
		Name: "dns", ClusterIPs: []string{dnsVIP},
		Ports: []k8sobj.Port{
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort},
			{Name: "dns-tcp", Protocol: v1.ProtocolTCP, Port: 53, TargetPort: echoPort},
		},
		Endpoints: []k8sobj.Endpoint{
			{IP: c.Pod("dns-1").Addr.String(), Node: "node-a"},
			{IP: c.Pod("dns-2").Addr.String(), Node: "node-b"},
		},
	})
	e.writeService(t, k8sobj.Service{
		Name: "idle", ClusterIPs: []string{idleVIP},
		Ports: []k8sobj.Port{
			{Name: "tcp", Port: 80, TargetPort: echoPort},
			{Name: "udp", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort},
		},
	})
	// The client reaches the LoadBalancer IP and the externalIP through
	// node-a, as a load balancer or router would send them.
	for _, ip := range []string{lbIP, extIP} {
		if err := c.AddRoute(t.Context(), c.Client, netip.MustParsePrefix(ip+"/32"), c.Node("node-a").Addr); err != nil {
			t.Fatal(err)
		}
	}
	e.syncAll(t)
	return e
}

// nodeAddrs returns the addresses a node may masquerade to.
func nodeAddrs(n *topo.Node) map[netip.Addr]bool {
	return map[netip.Addr]bool{n.Addr: true, n.Gateway: true}
}

func TestFoundation(t *testing.T) {
	e := foundation(t)
	c := e.c
	nodeA := c.Node("node-a")
	cli := c.Pod("cli")
	webs := map[string]bool{"web-1": true, "web-2": true}

	t.Run("pod to ClusterIP keeps the pod's source, spreads over both nodes", func(t *testing.T) {
		for _, network := range []string{"tcp", "udp"} {
			dst := ap(webVIP, 80)
			if network == "udp" {
				dst = ap(dnsVIP, 53)
			}
			hits, seen := e.spread(t, &cli.Host, network, dst, 24)
			if len(hits) != 2 {
				t.Errorf("%s: answered by %v, want both endpoints", network, keys(hits))
			}
			for srv, srcs := range seen {
				if len(srcs) != 1 || !srcs[cli.Addr] {
					t.Errorf("%s: %s saw sources %v, want only the pod %s", network, srv, srcs, cli.Addr)
				}
			}
		}
	})

	t.Run("TCP and UDP on the same port reach their own endpoints", func(t *testing.T) {
		for _, network := range []string{"tcp", "udp"} {
			r := e.mustDial(t, &cli.Host, network, ap(dnsVIP, 53))
			if r.Server != "dns-1" && r.Server != "dns-2" {
				t.Errorf("%s to dns: answered by %s", network, r.Server)
			}
		}
	})

	t.Run("node to ClusterIP is masqueraded", func(t *testing.T) {
		hits, seen := e.spread(t, &nodeA.Host, "tcp", ap(webVIP, 80), 24)
		if len(hits) != 2 {
			t.Errorf("answered by %v, want both endpoints", keys(hits))
		}
		for srv, srcs := range seen {
			for s := range srcs {
				if !nodeAddrs(nodeA)[s] {
					t.Errorf("%s saw %s, want an address of node-a", srv, s)
				}
			}
		}
	})

	for _, fe := range []struct {
		name, addr string
		port       uint16
	}{
		{"NodePort", nodeA.Addr.String(), 30080},
		{"LoadBalancer IP", lbIP, 80},
		{"externalIP", extIP, 80},
	} {
		t.Run("external client to "+fe.name+" is DNATed and masqueraded", func(t *testing.T) {
			hits, seen := e.spread(t, c.Client, "tcp", ap(fe.addr, fe.port), 24)
			if len(hits) != 2 {
				t.Errorf("answered by %v, want both endpoints", keys(hits))
			}
			for srv, srcs := range seen {
				if !webs[srv] {
					t.Errorf("answered by %s", srv)
				}
				for s := range srcs {
					if !nodeAddrs(nodeA)[s] {
						t.Errorf("%s saw %s, want an address of node-a (client %s hidden)", srv, s, c.Client.Addr)
					}
				}
			}
		})
	}

	t.Run("no endpoints: refused at once", func(t *testing.T) {
		for _, tc := range []struct {
			network string
			dst     netip.AddrPort
		}{{"tcp", ap(idleVIP, 80)}, {"udp", ap(idleVIP, 53)}, {"tcp", ap(webVIP, 81)}} {
			_, err := e.dial(&cli.Host, tc.network, tc.dst)
			if !isRefused(err) {
				t.Errorf("%s to %s: got %v, want connection refused", tc.network, tc.dst, err)
			}
		}
		if _, err := e.dial(&nodeA.Host, "tcp", ap(idleVIP, 80)); !isRefused(err) {
			t.Errorf("node to idle: got %v, want connection refused", err)
		}
	})

	t.Run("hairpin: a pod reaching itself through its Service is masqueraded", func(t *testing.T) {
		web1 := c.Pod("web-1")
		hits, seen := e.spread(t, &web1.Host, "tcp", ap(webVIP, 80), 24)
		if hits["web-1"] == 0 {
			t.Fatalf("web-1 never reached itself: %v", keys(hits))
		}
		for s := range seen["web-1"] {
			if s == web1.Addr || !nodeAddrs(nodeA)[s] {
				t.Errorf("web-1 reaching itself saw %s, want node-a's address", s)
			}
		}
		for s := range seen["web-2"] {
			if s != web1.Addr {
				t.Errorf("web-2 saw %s, want web-1's own address %s", s, web1.Addr)
			}
		}
	})

	t.Run("pod egress to the internet is masqueraded to the node address", func(t *testing.T) {
		r := e.mustDial(t, &cli.Host, "tcp", netip.AddrPortFrom(c.Internet.Addr, 9000))
		if r.Seen.Addr() != nodeA.Addr {
			t.Errorf("internet host saw %s, want node-a %s", r.Seen.Addr(), nodeA.Addr)
		}
		r = e.mustDial(t, &cli.Host, "udp", netip.AddrPortFrom(c.Internet.Addr, 9000))
		if r.Seen.Addr() != nodeA.Addr {
			t.Errorf("UDP: internet host saw %s, want node-a %s", r.Seen.Addr(), nodeA.Addr)
		}
	})

	t.Run("pod to pod is never masqueraded", func(t *testing.T) {
		for _, dst := range []string{"web-1", "web-2"} {
			r := e.mustDial(t, &cli.Host, "tcp", netip.AddrPortFrom(c.Pod(dst).Addr, echoPort))
			if r.Server != dst || r.Seen.Addr() != cli.Addr {
				t.Errorf("cli -> %s: %v, want %s seeing %s", dst, r, dst, cli.Addr)
			}
		}
	})

	t.Run("endpoint removed: no new connection reaches it", func(t *testing.T) {
		e.writeService(t, k8sobj.Service{
			Name: "web", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{webVIP},
			Ports:           []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort, NodePort: 30080}},
			ExternalIPs:     []string{extIP},
			LoadBalancerIPs: []string{lbIP},
			Endpoints:       []k8sobj.Endpoint{{IP: c.Pod("web-1").Addr.String(), Node: "node-a"}},
		})
		e.syncAll(t)
		for _, from := range []*topo.Host{&cli.Host, c.Client} {
			dst := ap(webVIP, 80)
			if from == c.Client {
				dst = ap(lbIP, 80)
			}
			hits, _ := e.spread(t, from, "tcp", dst, 20)
			if hits["web-2"] > 0 || hits["web-1"] != 20 {
				t.Errorf("from %s after removing web-2: %v, want only web-1", from.Name, keys(hits))
			}
		}
	})
}
