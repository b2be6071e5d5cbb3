package tcnat

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestSourcePortsReused checks when a masqueraded connection's source
// port may serve another: not while the endpoint may hold it in
// TIME_WAIT (closed with FINs: 120 s), at once after a reset. With two
// ports, a third FIN-closed connection finds none free and is left to
// the stack (which, with no rules here, refuses it).
func TestSourcePortsReused(t *testing.T) {
	l := newLab(t)
	l.set(k8sobj.Service{Name: "web", ClusterIPs: []string{"10.96.0.20"}, Type: v1.ServiceTypeNodePort,
		Ports: []k8sobj.Port{
			{Name: "fin", Port: 80, TargetPort: echoPort, NodePort: 30080},
		},
		Endpoints: l.endpoints("web-1")})
	l.set(k8sobj.Service{Name: "reset", ClusterIPs: []string{"10.96.0.21"}, Type: v1.ServiceTypeNodePort,
		Ports:     []k8sobj.Port{{Port: 80, TargetPort: echoPort, NodePort: 30081}},
		Endpoints: l.endpoints("web-2")})
	n, err := Open(Options{PortRange: [2]uint16{40000, 40001}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	l.sync(t, n)

	// Reset by the client: the ports serve again at once.
	seen := map[uint16]bool{}
	for i := range 6 {
		r, err := l.dialReset(t, 30081)
		if err != nil {
			t.Fatalf("connection %d closed with a reset, over 2 ports: %v", i, err)
		}
		seen[r.Seen.Port()] = true
	}
	if !seen[40000] && !seen[40001] || len(seen) > 2 {
		t.Errorf("source ports seen %v, want 40000 and 40001", seen)
	}
	// Closed with FINs (the server closes first): the ports stay taken.
	used := map[uint16]bool{}
	for i := range 2 {
		r, err := l.dial(t, "tcp", 30080, 0)
		if err != nil {
			t.Fatalf("FIN-closed connection %d: %v", i, err)
		}
		used[r.Seen.Port()] = true
	}
	if !used[40000] || !used[40001] {
		t.Fatalf("source ports %v, want 40000 and 40001", used)
	}
	if r, err := l.dial(t, "tcp", 30080, 0); err == nil {
		t.Errorf("a third connection was answered by %s with both ports in TIME_WAIT at the endpoint", r)
	}
}

// dialReset makes one exchange with node-a's port p and closes the
// connection with a reset.
func (l *lab) dialReset(t *testing.T, p uint16) (topo.Reply, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	var conn net.Conn
	err := topo.InNS(l.c.Client.NS, func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(l.a.Addr, p).String())
		return err
	})
	if err != nil {
		return topo.Reply{}, err
	}
	defer func() {
		_ = conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 512)
	k, err := conn.Read(buf)
	if err != nil {
		return topo.Reply{}, err
	}
	return topo.ParseReply(string(buf[:k]))
}

// TestTakeOver checks what a NAT opened over an earlier one's pins does:
// it keeps the earlier connections, replaces the programs, removes an
// earlier filter from a link that no longer has a role, and forgets the
// UDP flows to endpoints removed while no NAT was updated.
func TestTakeOver(t *testing.T) {
	l := newLab(t)
	_, bpffs := netnstest.SocketLBSandbox(t)
	pins := filepath.Join(bpffs, "tcnat")
	svc := k8sobj.Service{Name: "dns", ClusterIPs: []string{"10.96.0.22"}, Type: v1.ServiceTypeNodePort,
		Ports:     []k8sobj.Port{{Name: "udp", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort, NodePort: 30053}},
		Endpoints: l.endpoints("web-1", "web-2")}
	l.set(svc)
	first, err := Open(Options{PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	l.sync(t, first)
	// Two flows, one to each endpoint.
	flows := map[string]int{}
	seen := map[string]netip.AddrPort{}
	for sport := 41000; len(flows) < 2 && sport < 41100; sport++ {
		r, err := l.dial(t, "udp", 30053, sport)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := flows[r.Server]; !ok {
			flows[r.Server], seen[r.Server] = sport, r.Seen
		}
	}
	if len(flows) != 2 {
		t.Fatalf("flows %v: want one to each endpoint", flows)
	}
	// A link the first NAT attached to, which has no role for the next:
	// the pods' bridge, given a node address (its own) by the first.
	tc := func(dev string) string {
		out, err := exec.Command("ip", "netns", "exec", l.a.NS, "tc", "filter", "show", "dev", dev, "ingress").CombinedOutput()
		if err != nil {
			t.Fatalf("tc: %v: %s", err, out)
		}
		return string(out)
	}
	if err := topo.InNS(l.a.NS, func() error { return first.Attach([]netip.Addr{l.a.Addr, l.a.Gateway}) }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tc("cni0"), "kubenat-external") {
		t.Fatal("cni0 lacks the external program")
	}
	first.Close()

	svc.Endpoints = l.endpoints("web-1")
	l.set(svc)
	next, err := Open(Options{PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })
	l.sync(t, next)
	if out := tc("cni0"); strings.Contains(out, "kubenat") {
		t.Errorf("cni0 still has the earlier NAT's filter:\n%s", out)
	}
	if !strings.Contains(tc("eth0"), "kubenat-external") {
		t.Error("eth0 lacks the external program")
	}
	for server, sport := range flows {
		r, err := l.dial(t, "udp", 30053, sport)
		if err != nil {
			t.Fatalf("the flow from port %d: %v", sport, err)
		}
		switch {
		case r.Server != "web-1":
			t.Errorf("the flow from port %d, earlier to %s, is answered by %s: want web-1 (web-2 was removed)", sport, server, r.Server)
		case server == "web-1" && r.Seen != seen[server]:
			t.Errorf("the flow to web-1 came from %s, then from %s: the connection was not kept", seen[server], r.Seen)
		}
	}
}
