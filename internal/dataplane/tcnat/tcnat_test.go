package tcnat

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

const echoPort = 8080

// lab is two nodes with server pods and the LAN's external client, and
// no nftables or iptables at all: a connection to a NodePort reaches a pod
// only if the programs translated it, and its reply reaches the client
// only if they translated that too.
type lab struct {
	c      *topo.Cluster
	a      *topo.Node
	b      *model.Builder
	slices map[string][]string
}

func newLab(t *testing.T) *lab {
	return newLabWith(t, []string{"web-1", "web-2"}, nil, model.Config{})
}

// newLabWith is newLab with pods on node-a's bridge, routed pods of
// node-a (topo.Cluster.AddRoutedPod), and cfg for the model (its node,
// cluster CIDR and TCNAT set here).
func newLabWith(t *testing.T, bridged, routed []string, cfg model.Config) *lab {
	netnstest.Require(t)
	c := netnstest.NewCluster(t, topo.Spec{Nodes: []topo.NodeSpec{
		{Name: "node-a", Pods: bridged},
		{Name: "node-b", Pods: []string{"web-b"}},
	}})
	for _, name := range routed {
		if _, err := c.AddRoutedPod(t.Context(), c.Nodes[0], name); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.Nodes {
		for _, p := range n.Pods {
			s, err := topo.ServeEcho(&p.Host, p.Name, echoPort)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
		}
	}
	a := c.Nodes[0]
	cfg.NodeName, cfg.ClusterCIDRs, cfg.TCNAT = "node-a", []netip.Prefix{topo.ClusterCIDR}, true
	b := model.NewBuilder(cfg)
	b.SetNode(k8sobj.Node(a.Name, []string{a.Addr.String()}, []string{a.PodCIDR.String()}), "test")
	return &lab{c: c, a: a, b: b, slices: map[string][]string{}}
}

func (l *lab) set(s k8sobj.Service) {
	svc, slices := s.Objects()
	l.b.SetService(svc, "test")
	for _, name := range l.slices[s.Name] {
		l.b.DeleteEndpointSlice(svc.Namespace, name)
	}
	l.slices[s.Name] = nil
	for _, sl := range slices {
		l.b.SetEndpointSlice(sl, "test")
		l.slices[s.Name] = append(l.slices[s.Name], sl.Name)
	}
}

func (l *lab) endpoints(names ...string) []k8sobj.Endpoint {
	var out []k8sobj.Endpoint
	for _, n := range names {
		p := l.c.Pod(n)
		out = append(out, k8sobj.Endpoint{IP: p.Addr.String(), Node: p.Node.Name})
	}
	return out
}

// sync builds the State and applies it on node-a.
func (l *lab) sync(t *testing.T, n *NAT) {
	t.Helper()
	st, d := l.b.Build()
	if len(st.Errors) > 0 {
		t.Fatal(st.Errors)
	}
	err := topo.InNS(l.a.NS, func() error {
		if err := n.Attach(st.NodeAddrs(model.IPv4)); err != nil {
			return err
		}
		return n.Update(st, d)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// podLinks returns what the pod_links map holds: pod address → link.
func podLinks(t *testing.T, n *NAT) map[netip.Addr]uint32 {
	t.Helper()
	out := map[netip.Addr]uint32{}
	var k uint32
	var v bpfPodLink
	it := n.objs.PodLinks.Iterate()
	for it.Next(&k, &v) {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], k)
		out[netip.AddrFrom4(b)] = v.Ifindex
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func open(t *testing.T) *NAT {
	t.Helper()
	n, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// dial makes one exchange from the external client to node-a's port p
// (from source port sport when not 0) and returns the answer.
func (l *lab) dial(t *testing.T, network string, p uint16, sport int) (topo.Reply, error) {
	t.Helper()
	dst := netip.AddrPortFrom(l.a.Addr, p)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if sport == 0 {
		return topo.Dial(ctx, l.c.Client, network, dst, time.Second)
	}
	var conn net.Conn
	err := topo.InNS(l.c.Client.NS, func() error {
		// SO_REUSEADDR: the client's previous socket on the port may not
		// be gone yet (LAST_ACK).
		d := net.Dialer{Timeout: time.Second, Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			})
			return errors.Join(err, serr)
		}}
		if network == "udp" {
			d.LocalAddr = &net.UDPAddr{Port: sport}
		} else {
			d.LocalAddr = &net.TCPAddr{Port: sport}
		}
		var err error
		conn, err = d.DialContext(ctx, network, dst.String())
		return err
	})
	if err != nil {
		return topo.Reply{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("hello\n")); err != nil {
		return topo.Reply{}, err
	}
	buf := make([]byte, 512)
	k, err := conn.Read(buf)
	if err != nil {
		return topo.Reply{}, err
	}
	return topo.ParseReply(string(buf[:k]))
}

func TestExternalTrafficTranslated(t *testing.T) {
	l := newLab(t)
	l.set(k8sobj.Service{Name: "cluster", ClusterIPs: []string{"10.96.0.10"}, Type: v1.ServiceTypeNodePort,
		Ports: []k8sobj.Port{
			{Name: "tcp", Port: 80, TargetPort: echoPort, NodePort: 30080},
			{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: echoPort, NodePort: 30080},
		},
		Endpoints: l.endpoints("web-1", "web-2", "web-b")})
	l.set(k8sobj.Service{Name: "local", ClusterIPs: []string{"10.96.0.11"}, Type: v1.ServiceTypeNodePort, ETPLocal: true,
		Ports:     []k8sobj.Port{{Port: 80, TargetPort: echoPort, NodePort: 30081}},
		Endpoints: l.endpoints("web-1", "web-b")})
	n := open(t)
	l.sync(t, n)

	tests := []struct {
		name    string
		network string
		port    uint16
		servers []string
		source  netip.Addr
	}{
		{"Cluster TCP: every endpoint, masqueraded to the node", "tcp", 30080, []string{"web-1", "web-2", "web-b"}, l.a.Addr},
		{"Cluster UDP", "udp", 30080, []string{"web-1", "web-2", "web-b"}, l.a.Addr},
		{"Local: the local endpoint, the client's address kept", "tcp", 30081, []string{"web-1"}, topo.ClientAddr},
	}
	// First through the FIB's interface (the bridge: the node has not
	// met the pods yet), then, once a sync has learnt the pods' links
	// from the neighbour and bridge tables, straight into the pods.
	for _, phase := range []string{"through the bridge", "into the pods' namespaces"} {
		if phase != "through the bridge" {
			l.sync(t, n)
			links := podLinks(t, n)
			for _, pod := range []string{"web-1", "web-2"} {
				if links[l.c.Pod(pod).Addr] == 0 {
					t.Fatalf("pod_links %v lacks %s", links, pod)
				}
			}
		}
		for _, tt := range tests {
			t.Run(phase+"/"+tt.name, func(t *testing.T) {
				hits := map[string]int{}
				for range 40 {
					r, err := l.dial(t, tt.network, tt.port, 0)
					if err != nil {
						t.Fatalf("%s to node-a:%d: %v", tt.network, tt.port, err)
					}
					if r.Seen.Addr() != tt.source {
						t.Errorf("%s saw source %s, want %s", r.Server, r.Seen, tt.source)
					}
					hits[r.Server]++
				}
				if len(hits) != len(tt.servers) {
					t.Errorf("answered by %v, want each of %v", hits, tt.servers)
				}
				for _, s := range tt.servers {
					if hits[s] == 0 {
						t.Errorf("%s never answered (%v)", s, hits)
					}
				}
			})
		}
	}
	if c, err := n.Connections(); err != nil || c == 0 {
		t.Errorf("Connections() = %d, %v: want the connections above", c, err)
	}
}

// TestLeftToTheStack checks that what the model leaves to the kernel's
// rules is not translated: here, with no rules, it is not served at all.
func TestLeftToTheStack(t *testing.T) {
	l := newLab(t)
	l.set(k8sobj.Service{Name: "affinity", ClusterIPs: []string{"10.96.0.12"}, Type: v1.ServiceTypeNodePort, AffinitySeconds: 60,
		Ports:     []k8sobj.Port{{Port: 80, TargetPort: echoPort, NodePort: 30090}},
		Endpoints: l.endpoints("web-1")})
	l.set(k8sobj.Service{Name: "local-none", ClusterIPs: []string{"10.96.0.13"}, Type: v1.ServiceTypeNodePort, ETPLocal: true,
		Ports:     []k8sobj.Port{{Port: 80, TargetPort: echoPort, NodePort: 30091}},
		Endpoints: l.endpoints("web-b")})
	n := open(t)
	l.sync(t, n)
	if got := n.Frontends(); got != 0 {
		t.Errorf("Frontends() = %d, want 0", got)
	}
	for _, p := range []uint16{30090, 30091} {
		if r, err := l.dial(t, "tcp", p, 0); err == nil {
			t.Errorf("node-a:%d answered by %s with no rules", p, r)
		}
	}
}

// TestEndpointChanges checks that a UDP flow to an endpoint that leaves is
// forgotten (its next datagram goes to an endpoint the Service has), that
// a TCP connection's client port can be used again, and that a removed
// Service is no longer translated.
func TestEndpointChanges(t *testing.T) {
	l := newLab(t)
	svc := k8sobj.Service{Name: "dns", ClusterIPs: []string{"10.96.0.14"}, Type: v1.ServiceTypeNodePort,
		Ports: []k8sobj.Port{
			{Name: "udp", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort, NodePort: 30053},
			{Name: "tcp", Port: 53, TargetPort: echoPort, NodePort: 30053},
		},
		Endpoints: l.endpoints("web-1", "web-2")}
	l.set(svc)
	n := open(t)
	l.sync(t, n)

	first, err := l.dial(t, "udp", 30053, 40053)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		r, err := l.dial(t, "udp", 30053, 40053)
		if err != nil {
			t.Fatal(err)
		}
		if r.Server != first.Server || r.Seen != first.Seen {
			t.Fatalf("the same UDP flow was answered by %s, then %s", first, r)
		}
	}
	other := map[string]string{"web-1": "web-2", "web-2": "web-1"}[first.Server]
	svc.Endpoints = l.endpoints(other)
	l.set(svc)
	l.sync(t, n)
	r, err := l.dial(t, "udp", 30053, 40053)
	if err != nil {
		t.Fatal(err)
	}
	if r.Server != other {
		t.Errorf("after %s left, the flow was answered by %s, want %s", first.Server, r.Server, other)
	}
	for range 3 {
		// A new TCP connection from the same client port each time (the
		// previous one closed with FINs: its entries are still there).
		var r topo.Reply
		var err error
		for try := 0; try < 20; try++ {
			if r, err = l.dial(t, "tcp", 30053, 40054); !errors.Is(err, syscall.EADDRINUSE) && !errors.Is(err, syscall.EADDRNOTAVAIL) {
				break
			}
			time.Sleep(50 * time.Millisecond) // the client's previous socket is closing
		}
		if err != nil || r.Server != other {
			t.Errorf("TCP from a reused client port: %v, %v; want %s", r, err, other)
		}
	}

	l.b.DeleteService(model.ServiceKey{Namespace: "default", Name: "dns"})
	l.sync(t, n)
	if got := n.Frontends(); got != 0 {
		t.Errorf("Frontends() = %d after the Service went, want 0", got)
	}
	if r, err := l.dial(t, "tcp", 30053, 0); err == nil {
		t.Errorf("a removed Service answered: %s", r)
	}
}

// TestCleanup checks that Cleanup removes kubenat's filters and leaves
// another's.
func TestCleanup(t *testing.T) {
	l := newLab(t)
	l.set(k8sobj.Service{Name: "web", ClusterIPs: []string{"10.96.0.15"}, Type: v1.ServiceTypeNodePort,
		Ports:     []k8sobj.Port{{Port: 80, TargetPort: echoPort, NodePort: 30080}},
		Endpoints: l.endpoints("web-1")})
	n := open(t)
	l.sync(t, n)
	if _, err := l.dial(t, "tcp", 30080, 0); err != nil {
		t.Fatal(err)
	}
	tc := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", l.a.NS, "tc"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tc %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	// Another's filter, before kubenat's.
	other, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	err = topo.InNS(l.a.NS, func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		f := filter(eth0.Attrs().Index, other.FD(), "other")
		f.Priority = 7
		return netlink.FilterAdd(f)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.dial(t, "tcp", 30080, 0); err != nil {
		t.Fatalf("after another's filter passed the packet on: %v", err)
	}
	if err := topo.InNS(l.a.NS, func() error { return n.Intact() }); err != nil {
		t.Errorf("Intact: %v", err)
	}
	var removed bool
	err = topo.InNS(l.a.NS, func() (err error) {
		removed, err = Cleanup("")
		return err
	})
	if err != nil || !removed {
		t.Fatalf("Cleanup = %v, %v", removed, err)
	}
	for _, dev := range []string{"eth0", l.c.Pod("web-1").Veth} {
		if out := tc("filter", "show", "dev", dev, "ingress"); strings.Contains(out, "kubenat") {
			t.Errorf("a kubenat filter is left on %s:\n%s", dev, out)
		}
	}
	if out := tc("filter", "show", "dev", "eth0", "ingress"); !strings.Contains(out, "other") {
		t.Errorf("Cleanup removed another's filter:\n%s", out)
	}
	if err := topo.InNS(l.a.NS, func() error { return n.Intact() }); err == nil {
		t.Error("Intact after Cleanup: nil, want the missing program")
	}
	if r, err := l.dial(t, "tcp", 30080, 0); err == nil {
		t.Errorf("answered by %s after Cleanup", r)
	}
}

// TestBulkTransfer sends megabytes both ways through a translated
// connection: the stack hands the programs GSO packets (tens of KB
// each) on the veths, which the MTU check must let through.
func TestBulkTransfer(t *testing.T) {
	l := newLab(t)
	const port = 9090
	web1 := l.c.Pod("web-1")
	stop, err := topo.ServeCopy(&web1.Host, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	l.set(k8sobj.Service{Name: "echo", ClusterIPs: []string{"10.96.0.16"}, Type: v1.ServiceTypeNodePort,
		Ports:     []k8sobj.Port{{Port: 90, TargetPort: port, NodePort: 30095}},
		Endpoints: l.endpoints("web-1")})
	n := open(t)
	const size = 16 << 20
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	// Through the bridge, then, with the pod's link learnt, into its
	// namespace.
	for range 2 {
		l.sync(t, n)
		var conn net.Conn
		if err := topo.InNS(l.c.Client.NS, func() (err error) {
			conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(l.a.Addr, 30095).String(), time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		errc := make(chan error, 1)
		go func() { _, err := conn.Write(data); errc <- err }()
		got := make([]byte, size)
		if _, err := io.ReadFull(conn, got); err != nil {
			t.Fatalf("reading the echo (pod links %v): %v", podLinks(t, n), err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("writing: %v", err)
		}
		conn.Close()
		if !bytes.Equal(got, data) {
			t.Error("the echo differs from what was sent")
		}
	}
	if links := podLinks(t, n); links[web1.Addr] == 0 {
		t.Errorf("pod_links %v lacks web-1", links)
	}
}
