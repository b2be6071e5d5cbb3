package kernel

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestSocketLoadBalancer runs the agent on node-a with the socket load
// balancer (attached to a cgroup of the test's own, which the test process
// and so every client it runs is in) and plain nftables on node-b. Clients
// are node-a's pods and the external client: node-b's pods would share
// the test's cgroup, which a real node-b's pods do not.
func TestSocketLoadBalancer(t *testing.T) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{
		{Name: "node-a", Pods: []string{"web-1", "cli"}},
		{Name: "node-b", Pods: []string{"web-2"}},
	}})
	cgroup, bpffs := netnstest.SocketLBSandbox(t)
	pins := filepath.Join(bpffs, "kubenat")
	a, b := e.c.Node("node-a"), e.c.Node("node-b")
	cli, web1 := e.c.Pod("cli"), e.c.Pod("web-1")
	// Dual-stack: every check below runs in both families.
	ep6 := func(pod string) k8sobj.Endpoint {
		p := e.c.Pod(pod)
		return k8sobj.Endpoint{IP: p.Addr6.String(), Node: p.Node.Name}
	}
	both := []k8sobj.Endpoint{e.ep("web-1"), e.ep("web-2"), ep6("web-1"), ep6("web-2")}
	web := k8sobj.Service{Name: "web", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.0.10", "fd00:96::10"},
		Ports: []k8sobj.Port{
			{Name: "http", Port: 80, TargetPort: echoPort, NodePort: 30080},
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort},
		}, Endpoints: both}
	e.writeService(t, web)
	// The Services nftables must keep tracking use other target ports:
	// tracking is decided per endpoint address and port, whatever the
	// Service.
	const otherPort = 8081
	for _, p := range []string{"web-1", "web-2"} {
		e.serve(&e.c.Pod(p).Host, p, otherPort)
	}
	e.writeService(t, k8sobj.Service{Name: "sticky", ClusterIPs: []string{"10.96.0.50", "fd00:96::50"}, AffinitySeconds: 60,
		Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: otherPort}}, Endpoints: both})
	e.writeService(t, k8sobj.Service{Name: "local", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.0.20", "fd00:96::20"}, ETPLocal: true,
		Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: otherPort, NodePort: 30081}}, Endpoints: []k8sobj.Endpoint{e.ep("web-2"), ep6("web-2")}})
	// sync runs the agents; mode is "" (nftables alone), "balancer" or
	// "untracked" (the balancer and --untrack-pod-tcp).
	sync := func(t *testing.T, mode string) {
		t.Helper()
		args := append(e.agentArgs(a), "--once", "--bpf-pin-dir", pins)
		if mode != "" {
			args = append(args, "--socket-lb-cgroup", cgroup)
		}
		if mode == "untracked" {
			args = append(args, "--untrack-pod-tcp")
		}
		if out, err := netnstest.Kubenat(t, &a.Host, args...); err != nil {
			t.Fatalf("kubenat agent on node-a: %v\n%s", err, out)
		}
		if out, err := netnstest.Kubenat(t, &b.Host, append(e.agentArgs(b), "--once")...); err != nil {
			t.Fatalf("kubenat agent on node-b: %v\n%s", err, out)
		}
	}
	// tracked returns node-a's conntrack entries of TCP connections from
	// the client pod's address src, with extra conntrack filters.
	tracked := func(t *testing.T, src netip.Addr, filter ...string) []string {
		t.Helper()
		family := "ipv4"
		if src.Is6() {
			family = "ipv6"
		}
		out, _ := e.c.Exec(t.Context(), &a.Host, append([]string{"conntrack", "-L", "-f", family, "-p", "tcp", "-s", src.String()}, filter...)...)
		var entries []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "tcp ") {
				entries = append(entries, l)
			}
		}
		return entries
	}
	flush := func(t *testing.T) {
		t.Helper()
		e.c.Exec(t.Context(), &a.Host, "conntrack", "-F")
	}
	vip := ap("10.96.0.10", 80)

	t.Run("the balancer alone: balanced at connect, tracked as any pod-to-pod connection", func(t *testing.T) {
		sync(t, "balancer")
		flush(t)
		hits, _ := e.spread(t, &cli.Host, "tcp", vip, 20)
		if len(hits) != 2 {
			t.Errorf("answers %s: want web-1 and web-2", keys(hits))
		}
		if n := len(tracked(t, cli.Addr, "-d", web1.Addr.String(), "--dport", "8080")); n == 0 {
			t.Errorf("no conntrack entry straight to web-1:8080: the connects were not balanced, or not tracked")
		}
		if n := len(tracked(t, cli.Addr, "-d", vip.Addr().String())); n != 0 {
			t.Errorf("%d conntrack entries to the ClusterIP: nftables translated what the balancer should have", n)
		}
	})
	sync(t, "untracked")

	// The same TCP connection through other kinds of socket: an IPv6
	// socket to the IPv4-mapped ClusterIP (Java's default) meets the
	// cgroup's connect6 hook, not connect4; Multipath TCP has a socket of
	// its own. A connect the balancer missed would be DNATed by the rules,
	// and its untracked replies never translated back.
	// The IPv6 ClusterIP too, which connect6 serves from maps of its own.
	for _, tc := range []struct {
		name, network string
		dst           netip.AddrPort
		src           netip.Addr // what the endpoint must see
	}{
		{"pod to ClusterIP over tcp", "tcp", vip, cli.Addr},
		{"pod to ClusterIP over tcp4in6", "tcp4in6", vip, cli.Addr},
		{"pod to ClusterIP over mptcp", "mptcp", vip, cli.Addr},
		{"pod to an IPv6 ClusterIP", "tcp", ap("fd00:96::10", 80), cli.Addr6},
	} {
		t.Run(tc.name+": an endpoint answers, sees the pod, and nothing is tracked", func(t *testing.T) {
			flush(t)
			hits, seen := e.spread(t, &cli.Host, tc.network, tc.dst, 30)
			if len(hits) != 2 {
				t.Errorf("answers %s: want web-1 and web-2", keys(hits))
			}
			for server, srcs := range seen {
				if len(srcs) != 1 || !srcs[tc.src] {
					t.Errorf("%s saw %v, want only the client pod %s", server, srcs, tc.src)
				}
			}
			if n := len(tracked(t, tc.src)); n != 0 {
				t.Errorf("node-a tracks %d connections of the client pod, want 0 (balanced at connect, untracked)", n)
			}
			if r := e.mustDial(t, &cli.Host, tc.network, tc.dst); r.Peer != tc.dst {
				t.Errorf("the client's getpeername says %s (answered by %s), want the ClusterIP %s", r.Peer, r.Server, tc.dst)
			}
		})
	}
	t.Run("trace says so", func(t *testing.T) {
		for _, tc := range []struct {
			src            netip.Addr
			dst, want, not string
		}{
			{cli.Addr, "10.96.0.10:80", "TCP between pods of " + topo.ClusterCIDR.String() + " is untracked", ""},
			{cli.Addr6, "[fd00:96::10]:80", "TCP between pods of " + topo.ClusterCIDR6.String() + " is untracked", ""},
			{cli.Addr, "10.96.0.50:80", "DNAT to one of 2 candidate endpoints", ""},
		} {
			dst, want := tc.dst, tc.want
			args := append(e.agentArgs(a), "--socket-lb-cgroup", cgroup, "--bpf-pin-dir", pins, "--untrack-pod-tcp",
				"--src", tc.src.String(), "--dst", dst, "--proto", "tcp")
			args[0] = "trace"
			out, err := netnstest.Kubenat(t, &a.Host, args...)
			if err != nil || !strings.Contains(out, want) || (tc.not != "" && strings.Contains(out, tc.not)) {
				t.Errorf("kubenat trace to %s: %v\n%s\nwant %q, and not %q", dst, err, out, want, tc.not)
			}
		}
	})
	t.Run("UDP is left to nftables", func(t *testing.T) {
		r := e.mustDial(t, &cli.Host, "udp", ap("10.96.0.10", 53))
		if r.Seen.Addr() != cli.Addr {
			t.Errorf("%s saw %s, want %s", r.Server, r.Seen, cli.Addr)
		}
	})
	// The paths nftables translates without masquerade, and the replies
	// to masqueraded connections, in both families: an untracked reply
	// would fail the dial.
	for _, f := range []struct {
		name           string
		src, node, pod netip.Addr
		client         netip.Addr
		sticky, vip    netip.AddrPort
	}{
		{"IPv4", cli.Addr, a.Addr, web1.Addr, e.c.Client.Addr, ap("10.96.0.50", 80), vip},
		{"IPv6", cli.Addr6, a.Addr6, web1.Addr6, e.c.Client.Addr6, ap("fd00:96::50", 80), ap("fd00:96::10", 80)},
	} {
		t.Run(f.name+": affinity is left to nftables, and its replies stay tracked", func(t *testing.T) {
			flush(t)
			first := e.mustDial(t, &cli.Host, "tcp", f.sticky)
			for range 5 {
				if r := e.mustDial(t, &cli.Host, "tcp", f.sticky); r.Server != first.Server {
					t.Fatalf("affinity broken: %s then %s", first.Server, r.Server)
				}
			}
			// ASSURED: conntrack saw the replies, so it could reverse the
			// DNAT.
			entries := tracked(t, f.src, "-d", f.sticky.Addr().String())
			if len(entries) == 0 || !strings.Contains(strings.Join(entries, "\n"), "ASSURED") {
				t.Errorf("node-a's entries for the affinity Service: %q; want DNATed connections whose replies it saw (ASSURED)", entries)
			}
		})
		t.Run(f.name+": externalTrafficPolicy Local NodePort from a pod: short-circuit, tracked replies", func(t *testing.T) {
			r := e.mustDial(t, &cli.Host, "tcp", netip.AddrPortFrom(f.node, 30081))
			if r.Server != "web-2" || r.Seen.Addr() != f.src {
				t.Errorf("got %v, want web-2 seeing the client pod %s", r, f.src)
			}
		})
		t.Run(f.name+": external client to NodePort: DNAT and masquerade as before", func(t *testing.T) {
			hits, seen := e.spread(t, e.c.Client, "tcp", netip.AddrPortFrom(f.node, 30080), 20)
			if len(hits) != 2 {
				t.Errorf("answers %s: want web-1 and web-2", keys(hits))
			}
			for server, srcs := range seen {
				if srcs[f.client] {
					t.Errorf("%s saw the external client's address: not masqueraded", server)
				}
			}
		})
		t.Run(f.name+": hairpin: the endpoint reaches itself directly", func(t *testing.T) {
			_, seen := e.spread(t, &web1.Host, "tcp", f.vip, 20)
			if srcs := seen["web-1"]; len(srcs) != 1 || !srcs[f.pod] {
				t.Errorf("web-1 reaching itself saw %v, want its own address %s", srcs, f.pod)
			}
		})
	}
	t.Run("an endpoint goes", func(t *testing.T) {
		web.Endpoints = []k8sobj.Endpoint{e.ep("web-2")}
		e.writeService(t, web)
		sync(t, "untracked")
		hits, _ := e.spread(t, &cli.Host, "tcp", vip, 10)
		if hits["web-2"] != 10 {
			t.Errorf("answers %s: want web-2 only", keys(hits))
		}
	})
	t.Run("turned off: the pins go, nftables serves and tracks", func(t *testing.T) {
		sync(t, "")
		if _, err := os.Stat(pins); err == nil {
			t.Errorf("%s still exists after an agent without the socket load balancer", pins)
		}
		flush(t)
		hits, _ := e.spread(t, &cli.Host, "tcp", vip, 5)
		if hits["web-2"] != 5 {
			t.Errorf("answers %s: want web-2 only", keys(hits))
		}
		if entries := tracked(t, cli.Addr, "-d", vip.Addr().String()); len(entries) != 5 {
			t.Errorf("node-a's entries to the ClusterIP: %q; want the 5 connections, DNATed by nftables", entries)
		}
	})
	t.Run("kubenat cleanup removes the tables and the balancer", func(t *testing.T) {
		sync(t, "untracked")
		out, err := netnstest.Kubenat(t, &a.Host, "cleanup", "--bpf-pin-dir", pins)
		if err != nil || !strings.Contains(out, "removed the socket load balancer") {
			t.Fatalf("cleanup: %v\n%s", err, out)
		}
		if _, err := os.Stat(pins); err == nil {
			t.Errorf("%s still exists after cleanup", pins)
		}
		if r, err := e.dial(&cli.Host, "tcp", vip); err == nil {
			t.Errorf("the ClusterIP still answers after cleanup (balancer or rules left): %v", r)
		}
	})
}

// TestUntrackedFollowsNodeAddresses starts node-a's agent, with untracked
// pod TCP, while node-a's bridge has no address (as on a node whose CNI
// sets it up after the agent starts), then gives the bridge its address,
// in each family in turn. The agent must add it to that family's
// node-addrs at once, without waiting for its sync period: NodePort
// connections to node-a's pod are masqueraded to it, and their replies, if
// untracked, would never be translated back.
func TestUntrackedFollowsNodeAddresses(t *testing.T) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a", Pods: []string{"web-1"}}}})
	cgroup, bpffs := netnstest.SocketLBSandbox(t)
	a := e.c.Node("node-a")
	web1 := e.c.Pod("web-1")
	e.writeService(t, k8sobj.Service{Name: "web", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.0.10", "fd00:96::10"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort, NodePort: 30080}},
		Endpoints: []k8sobj.Endpoint{e.ep("web-1"), {IP: web1.Addr6.String(), Node: "node-a"}}})
	ip := func(t *testing.T, args ...string) {
		t.Helper()
		if out, err := e.c.Exec(t.Context(), &a.Host, append([]string{"ip"}, args...)...); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	families := []struct {
		name, table string
		bridge      netip.Prefix // the bridge's address, its pods' gateway
		node        netip.Addr   // the NodePort address
	}{
		{"IPv4", "ip", netip.PrefixFrom(a.Gateway, a.PodCIDR.Bits()), a.Addr},
		{"IPv6", "ip6", netip.PrefixFrom(a.Gateway6, a.PodCIDR6.Bits()), a.Addr6},
	}
	// holds reports whether node-a's kernel has addr in the family's
	// node-addrs, and what it listed.
	holds := func(table string, addr netip.Addr) (bool, string) {
		out, err := e.c.Exec(t.Context(), &a.Host, "nft", "list", "set", table, "kubenat", "node-addrs")
		if err != nil {
			return false, fmt.Sprintf("listing node-addrs: %v: %s", err, out)
		}
		words := strings.FieldsFunc(out, func(r rune) bool { return strings.ContainsRune(" \t\n{},", r) })
		return slices.Contains(words, addr.String()), out
	}
	for _, f := range families {
		ip(t, "addr", "del", f.bridge.String(), "dev", "cni0")
	}
	// A sync period longer than the deadlines below: the address change
	// must not wait for it (nor for the agent's 10 s check).
	p := netnstest.StartKubenat(t, &a.Host, append(e.agentArgs(a), "--min-sync-period", "5s",
		"--socket-lb-cgroup", cgroup, "--bpf-pin-dir", filepath.Join(bpffs, "kubenat"), "--untrack-pod-tcp")...)
	if msg := eventually(10*time.Second, func() string {
		for _, f := range families {
			if out, err := e.c.Exec(t.Context(), &a.Host, "nft", "list", "chain", f.table, "kubenat", "raw-prerouting"); err != nil {
				return fmt.Sprintf("no %s untracked chain yet: %v", f.name, out)
			}
		}
		return ""
	}); msg != "" {
		t.Fatalf("the agent did not program node-a: %s\n%s", msg, p.Output())
	}
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			gw := f.bridge.Addr()
			if ok, out := holds(f.table, gw); ok {
				t.Fatalf("node-addrs holds %s before node-a has it:\n%s", gw, out)
			}
			ip(t, "addr", "add", f.bridge.String(), "dev", "cni0", "nodad")
			if msg := eventually(2*time.Second, func() string {
				if ok, out := holds(f.table, gw); !ok {
					return "node-addrs lacks the bridge address:\n" + out
				}
				return ""
			}); msg != "" {
				t.Fatalf("%s\nagent:\n%s", msg, p.Output())
			}
			hits, seen := e.spread(t, e.c.Client, "tcp", netip.AddrPortFrom(f.node, 30080), 10)
			if hits["web-1"] != 10 {
				t.Errorf("answers %s: want web-1 ten times", keys(hits))
			}
			if srcs := seen["web-1"]; len(srcs) != 1 || !srcs[gw] {
				t.Errorf("web-1 saw %v, want only the bridge address %s (masqueraded, replies tracked)", srcs, gw)
			}

			ip(t, "addr", "del", f.bridge.String(), "dev", "cni0")
			if msg := eventually(2*time.Second, func() string {
				if ok, out := holds(f.table, gw); ok {
					return "node-addrs still holds the removed bridge address:\n" + out
				}
				return ""
			}); msg != "" {
				t.Errorf("%s\nagent:\n%s", msg, p.Output())
			}
		})
	}
}

// TestUntrackedKeepsDNATedConnections: with untracked pod TCP, a
// connection nftables DNATed (an affinity Service, which the balancer
// leaves to the rules) keeps working after its Service lets go of the
// endpoint — deleted, or its affinity removed — as with conntrack alone:
// the running agent keeps the endpoint in tracked-endpoints (held), so
// its replies are still translated back. A restarted agent holds it too,
// from conntrack, and lets go of it once the connection is gone. With the
// tc NAT's direct pod-to-pod delivery, the held endpoint's replies are
// not delivered past conntrack either.
func TestUntrackedKeepsDNATedConnections(t *testing.T) {
	t.Run("untracked", func(t *testing.T) { testUntrackedKeepsDNATedConnections(t, false) })
	t.Run("direct delivery", func(t *testing.T) { testUntrackedKeepsDNATedConnections(t, true) })
}

func testUntrackedKeepsDNATedConnections(t *testing.T, direct bool) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a", Pods: []string{"web-1", "cli"}}}})
	cgroup, bpffs := netnstest.SocketLBSandbox(t)
	a, cli, web1 := e.c.Node("node-a"), e.c.Pod("cli"), e.c.Pod("web-1")
	const linePort = 8082
	l, err := topo.ServeStream(&web1.Host, "web-1", linePort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	args := append(e.agentArgs(a), "--socket-lb-cgroup", cgroup,
		"--bpf-pin-dir", filepath.Join(bpffs, "kubenat"), "--untrack-pod-tcp")
	if direct {
		args = append(args, "--tc-nat", "--tc-nat-pod-to-pod")
		// node-a knows its pods, as a node whose kubelet probes them.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if err := topo.Meet(ctx, &a.Host, []netip.Addr{cli.Addr, web1.Addr}); err != nil {
			t.Fatal(err)
		}
	}
	// list returns what nft lists, nothing before the agent made it.
	list := func(t *testing.T, what ...string) string {
		out, err := e.c.Exec(t.Context(), &a.Host, append([]string{"nft", "list"}, what...)...)
		if err != nil {
			return ""
		}
		return out
	}
	for _, f := range []struct {
		name, table, conntrackFamily string
		vip, pod                     netip.Addr
	}{
		{"IPv4", "ip", "ipv4", netip.MustParseAddr("10.96.0.50"), web1.Addr},
		{"IPv6", "ip6", "ipv6", netip.MustParseAddr("fd00:96::50"), web1.Addr6},
	} {
		sticky := k8sobj.Service{Name: "sticky", ClusterIPs: []string{f.vip.String()}, AffinitySeconds: 60,
			Ports:     []k8sobj.Port{{Name: "tcp", Port: 80, TargetPort: linePort}},
			Endpoints: []k8sobj.Endpoint{{IP: f.pod.String(), Node: "node-a"}}}
		tracked := func(t *testing.T) bool {
			return strings.Contains(list(t, "set", f.table, "kubenat", "tracked-endpoints"), fmt.Sprintf("%s . %d", f.pod, linePort))
		}
		// affine reports whether the rules DNAT the ClusterIP with affinity.
		affine := func(t *testing.T) bool {
			return strings.Contains(list(t, "map", f.table, "kubenat", "affinity-services"), f.vip.String())
		}
		for _, tc := range []struct {
			name   string
			change func(t *testing.T)
		}{
			{"the Service is deleted", func(t *testing.T) {
				if err := removeManifest(e, "default-sticky.yaml"); err != nil {
					t.Fatal(err)
				}
			}},
			{"the Service loses its affinity (the balancer takes it)", func(t *testing.T) {
				plain := sticky
				plain.AffinitySeconds = 0
				e.writeService(t, plain)
			}},
		} {
			t.Run(f.name+": "+tc.name, func(t *testing.T) {
				e.writeService(t, sticky)
				agent := netnstest.StartKubenat(t, &a.Host, args...)
				if msg := eventually(10*time.Second, func() string {
					if !affine(t) || !tracked(t) {
						return "the affinity Service is not programmed"
					}
					return ""
				}); msg != "" {
					t.Fatalf("%s\n%s", msg, agent.Output())
				}
				conn, err := topo.OpenStream(&cli.Host, netip.AddrPortFrom(f.vip, 80))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				exchange := func(msg string) {
					t.Helper()
					if server, err := conn.Ping(msg); err != nil || server != "web-1" {
						t.Fatalf("%q over the connection: answered by %q, %v; want web-1", msg, server, err)
					}
				}
				exchange("before")
				tc.change(t)
				if msg := eventually(10*time.Second, func() string {
					if affine(t) {
						return "the change is not programmed"
					}
					return ""
				}); msg != "" {
					t.Fatalf("%s\n%s", msg, agent.Output())
				}
				if !tracked(t) {
					t.Errorf("web-1:%d left tracked-endpoints while a DNATed connection uses it", linePort)
				}
				exchange("after")
				if err := agent.Stop(5 * time.Second); err != nil {
					t.Fatal(err)
				}
				// A restarted agent learns the connection from conntrack.
				if out, err := netnstest.Kubenat(t, &a.Host, append(args, "--once")...); err != nil {
					t.Fatalf("kubenat agent --once: %v\n%s", err, out)
				}
				if !tracked(t) {
					t.Errorf("web-1:%d left tracked-endpoints on a restart while a DNATed connection uses it", linePort)
				}
				exchange("after a restart")
				conn.Close()
				// The connection gone from conntrack, a sync lets go of it.
				e.c.Exec(t.Context(), &a.Host, "conntrack", "-D", "-f", f.conntrackFamily, "-p", "tcp", "--reply-src", f.pod.String())
				if out, err := netnstest.Kubenat(t, &a.Host, append(args, "--once")...); err != nil {
					t.Fatalf("kubenat agent --once: %v\n%s", err, out)
				}
				if tracked(t) {
					t.Errorf("web-1:%d still in tracked-endpoints after its connection closed", linePort)
				}
			})
		}
	}
}
