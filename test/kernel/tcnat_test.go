package kernel

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestTCNAT runs the agent with the tc NAT (--tc-nat) on node-a and
// checks what the differential test cannot: connections it translated
// survive the agent's restart, UDP flows to a removed endpoint move on,
// programs removed from outside are put back, turning it off hands
// everything to nftables, and kubenat cleanup removes it.
func TestTCNAT(t *testing.T) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{
		{Name: "node-a", Pods: []string{"web-1"}},
		{Name: "node-b", Pods: []string{"web-2"}},
	}})
	_, bpffs := netnstest.SocketLBSandbox(t)
	pins := filepath.Join(bpffs, "kubenat")
	a := e.c.Node("node-a")
	web1, web2 := e.c.Pod("web-1"), e.c.Pod("web-2")
	eps := func(pods ...*topo.Pod) []k8sobj.Endpoint {
		var out []k8sobj.Endpoint
		for _, p := range pods {
			out = append(out, k8sobj.Endpoint{IP: p.Addr.String(), Node: p.Node.Name})
		}
		return out
	}
	web := k8sobj.Service{Name: "web", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.0.10"},
		Ports: []k8sobj.Port{
			{Name: "http", Port: 80, TargetPort: echoPort, NodePort: 30080},
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort, NodePort: 30053},
		},
		Endpoints: eps(web1, web2)}
	e.writeService(t, web)
	// A server on web-1 that keeps its connections open and echoes lines.
	const longPort = 9090
	stopCopy, err := topo.ServeCopy(&web1.Host, longPort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopCopy)
	e.writeService(t, k8sobj.Service{Name: "long", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.0.11"},
		Ports:     []k8sobj.Port{{Name: "echo", Port: 90, TargetPort: longPort, NodePort: 30090}},
		Endpoints: eps(web1)})

	args := append(e.agentArgs(a), "--tc-nat", "--bpf-pin-dir", pins, "--min-sync-period", "50ms", "--sync-period", "1s")
	// start starts an agent that lives until the test ends (StartKubenat
	// stops it with the test it is given: the whole test's, not a
	// subtest's).
	top := t
	start := func(t *testing.T, args []string) *netnstest.Process {
		t.Helper()
		p := netnstest.StartKubenat(top, &a.Host, args...)
		if msg := eventually(10*time.Second, func() string {
			if !strings.Contains(p.Output(), "Programmed nftables") {
				return "not programmed yet"
			}
			return ""
		}); msg != "" {
			t.Fatalf("the agent did not program its rules:\n%s", p.Output())
		}
		return p
	}
	stop := func(t *testing.T, p *netnstest.Process) {
		t.Helper()
		if err := p.Stop(10 * time.Second); err != nil {
			t.Fatalf("stopping the agent: %v\n%s", err, p.Output())
		}
	}
	nodePort := func(p uint16) netip.AddrPort { return netip.AddrPortFrom(a.Addr, p) }
	// conntracked returns node-a's conntrack entries of the client's
	// connections to port.
	conntracked := func(t *testing.T, proto string, port uint16) string {
		t.Helper()
		out, err := e.c.Exec(t.Context(), &a.Host, "conntrack", "-L", "-p", proto, "--orig-src", topo.ClientAddr.String(), "--orig-port-dst", fmt.Sprint(port))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// udpFrom makes one UDP exchange from the client's port sport.
	udpFrom := func(t *testing.T, sport int) topo.Reply {
		t.Helper()
		var conn net.Conn
		if err := topo.InNS(e.c.Client.NS, func() (err error) {
			d := net.Dialer{LocalAddr: &net.UDPAddr{Port: sport}}
			conn, err = d.Dial("udp", nodePort(30053).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write([]byte("q\n")); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			t.Fatalf("UDP from port %d to node-a:30053: %v", sport, err)
		}
		r, err := topo.ParseReply(line)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	p := start(t, args)
	t.Run("external connections are translated without conntrack", func(t *testing.T) {
		hits, seen := e.spread(t, e.c.Client, "tcp", nodePort(30080), 20)
		if len(hits) != 2 {
			t.Errorf("answers %s: want web-1 and web-2", keys(hits))
		}
		for server, srcs := range seen {
			if len(srcs) != 1 || !srcs[a.Addr] {
				t.Errorf("%s saw %v, want node-a's address %s", server, srcs, a.Addr)
			}
		}
		if out := conntracked(t, "tcp", 30080); strings.Contains(out, "dport=30080") {
			t.Errorf("node-a tracked the client's connections:\n%s", out)
		}
	})

	t.Run("a connection survives the agent's restart", func(t *testing.T) {
		var conn net.Conn
		if err := topo.InNS(e.c.Client.NS, func() (err error) {
			conn, err = net.DialTimeout("tcp", nodePort(30090).String(), 2*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		echo := func(msg string) error {
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := fmt.Fprintln(conn, msg); err != nil {
				return err
			}
			got, err := r.ReadString('\n')
			if err == nil && got != msg+"\n" {
				err = fmt.Errorf("echoed %q, want %q", got, msg)
			}
			return err
		}
		if err := echo("before"); err != nil {
			t.Fatal(err)
		}
		flow := udpFrom(t, 40053)
		stop(t, p)
		if err := echo("while stopped"); err != nil {
			t.Errorf("with the agent stopped: %v", err)
		}
		p = start(t, args)
		if err := echo("after"); err != nil {
			t.Errorf("after the restart: %v\n%s", err, p.Output())
		}
		if again := udpFrom(t, 40053); again != flow {
			t.Errorf("a UDP flow answered by %s before the restart was answered by %s after", flow, again)
		}
	})

	t.Run("a UDP flow to a removed endpoint moves on", func(t *testing.T) {
		// A flow that reached web-2.
		sport := 40100
		for ; udpFrom(t, sport).Server != "web-2"; sport++ {
			if sport > 40200 {
				t.Fatal("no flow reached web-2")
			}
		}
		web.Endpoints = eps(web1)
		e.writeService(t, web)
		if msg := eventually(5*time.Second, func() string {
			if r := udpFrom(t, sport); r.Server != "web-1" {
				return "answered by " + r.String()
			}
			return ""
		}); msg != "" {
			t.Errorf("the flow to the removed web-2: %s", msg)
		}
	})

	t.Run("programs removed from outside are put back", func(t *testing.T) {
		if _, err := e.c.Exec(t.Context(), &a.Host, "tc", "qdisc", "del", "dev", "eth0", "clsact"); err != nil {
			t.Fatal(err)
		}
		if msg := eventually(10*time.Second, func() string {
			out, err := e.c.Exec(t.Context(), &a.Host, "tc", "filter", "show", "dev", "eth0", "ingress")
			if err != nil || !strings.Contains(out, "kubenat-external") {
				return fmt.Sprintf("eth0's filters: %v %s", err, out)
			}
			return ""
		}); msg != "" {
			t.Fatalf("%s\n%s", msg, p.Output())
		}
		if r := e.mustDial(t, e.c.Client, "tcp", nodePort(30080)); r.Seen.Addr() != a.Addr {
			t.Errorf("%s saw %s, want node-a's address", r.Server, r.Seen)
		}
	})

	t.Run("turned off: nftables serves, the filters and pins go", func(t *testing.T) {
		stop(t, p)
		off := start(t, append(e.agentArgs(a), "--bpf-pin-dir", pins))
		defer stop(t, off)
		for _, dev := range []string{"eth0", web1.Veth} {
			out, err := e.c.Exec(t.Context(), &a.Host, "tc", "filter", "show", "dev", dev, "ingress")
			if err != nil || strings.Contains(out, "kubenat") {
				t.Errorf("%s's filters after an agent without the tc NAT: %v\n%s", dev, err, out)
			}
		}
		if _, err := os.Stat(filepath.Join(pins, "tcnat")); err == nil {
			t.Errorf("%s/tcnat is left after an agent without the tc NAT", pins)
		}
		if r := e.mustDial(t, e.c.Client, "tcp", nodePort(30080)); r.Server != "web-1" {
			t.Errorf("answered by %s, want web-1", r)
		}
		if out := conntracked(t, "tcp", 30080); !strings.Contains(out, "dport=30080") {
			t.Errorf("nftables did not serve the connection:\n%s", out)
		}
	})

	t.Run("kubenat cleanup removes it", func(t *testing.T) {
		out, err := netnstest.Kubenat(t, &a.Host, append(append(e.agentArgs(a), "--tc-nat", "--bpf-pin-dir", pins), "--once")...)
		if err != nil {
			t.Fatalf("agent --once: %v\n%s", err, out)
		}
		out, err = netnstest.Kubenat(t, &a.Host, "cleanup", "--bpf-pin-dir", pins)
		if err != nil || !strings.Contains(out, "removed the tc NAT") {
			t.Fatalf("cleanup: %v\n%s", err, out)
		}
		if out, err := e.c.Exec(t.Context(), &a.Host, "tc", "filter", "show", "dev", "eth0", "ingress"); err != nil || strings.Contains(out, "kubenat") {
			t.Errorf("eth0's filters after cleanup: %v\n%s", err, out)
		}
		if r, err := e.dial(e.c.Client, "tcp", nodePort(30080)); err == nil {
			t.Errorf("node-a:30080 still answers after cleanup: %v", r)
		}
	})
}

// TestDirectDeliveryFollowsPods: with direct pod-to-pod delivery, a pod
// that appears while the agent runs is delivered to directly once the
// node has met it, without waiting for a sync or a table check (an hour
// away here): the agent follows the kernel's link and neighbour
// notifications.
func TestDirectDeliveryFollowsPods(t *testing.T) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a", Pods: []string{"cli"}}}})
	cgroup, bpffs := netnstest.SocketLBSandbox(t)
	a, cli := e.c.Node("node-a"), e.c.Pod("cli")
	args := append(e.agentArgs(a), "--socket-lb-cgroup", cgroup, "--bpf-pin-dir", filepath.Join(bpffs, "kubenat"),
		"--untrack-pod-tcp", "--tc-nat", "--tc-nat-pod-to-pod", "--sync-period", "1h")
	agent := netnstest.StartKubenat(t, &a.Host, args...)
	if msg := eventually(10*time.Second, func() string {
		if !strings.Contains(agent.Output(), "Programmed nftables") {
			return "not programmed yet"
		}
		return ""
	}); msg != "" {
		t.Fatalf("%s\n%s", msg, agent.Output())
	}
	late, err := e.c.AddPod(t.Context(), a, "late")
	if err != nil {
		t.Fatal(err)
	}
	e.serve(&late.Host, "late", echoPort)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := topo.Meet(ctx, &a.Host, []netip.Addr{cli.Addr, late.Addr}); err != nil {
		t.Fatal(err)
	}
	nft := netnstest.NSRunner{NS: a.NS}
	if _, err := nft.Run(t.Context(), fmt.Sprintf(`table bridge kubenat_test {
	chain forward { type filter hook forward priority 0; policy accept; ip saddr . ip daddr { %[1]s . %[2]s, %[2]s . %[1]s } meta l4proto tcp counter; }
}
`, cli.Addr, late.Addr)); err != nil {
		t.Fatal(err)
	}
	bridged := func() string {
		out, err := nft.Run(t.Context(), "list table bridge kubenat_test\n")
		if err != nil {
			t.Fatal(err)
		}
		_, after, _ := strings.Cut(out, "counter packets ")
		n, _, _ := strings.Cut(after, " ")
		return n
	}
	if msg := eventually(5*time.Second, func() string {
		before := bridged()
		if r := e.mustDial(t, &cli.Host, "tcp", netip.AddrPortFrom(late.Addr, echoPort)); r.Server != "late" || r.Seen.Addr() != cli.Addr {
			t.Fatalf("cli to late: %v, want late seeing %s", r, cli.Addr)
		}
		if after := bridged(); after != before {
			return fmt.Sprintf("the connection crossed the bridge (counter %s → %s)", before, after)
		}
		return ""
	}); msg != "" {
		t.Errorf("%s\n%s", msg, agent.Output())
	}
}
