package socketlb

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

const echoPort = 8080

// lab is a node with three server pods and a client, no nftables at all:
// a connect to a ClusterIP reaches a pod only if the balancer rewrote it.
type lab struct {
	c      *topo.Cluster
	cli    *topo.Host
	b      *model.Builder
	slices map[string][]string // Service name → its EndpointSlices' names
}

func newLab(t *testing.T) *lab {
	c := netnstest.NewCluster(t, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a", Pods: []string{"web-1", "web-2", "web-3", "cli"}}}})
	for _, p := range c.Nodes[0].Pods {
		s, err := topo.ServeEcho(&p.Host, p.Name, echoPort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
	}
	b := model.NewBuilder(model.Config{NodeName: "node-a", ClusterCIDRs: []netip.Prefix{topo.ClusterCIDR}, SocketLB: true})
	n := c.Nodes[0]
	b.SetNode(k8sobj.Node(n.Name, []string{n.Addr.String()}, []string{n.PodCIDR.String()}), "test")
	return &lab{c: c, cli: &c.Pod("cli").Host, b: b, slices: map[string][]string{}}
}

// set gives the Builder s and its EndpointSlices, deleting the slices its
// previous version had.
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
		out = append(out, k8sobj.Endpoint{IP: l.c.Pod(n).Addr.String(), Node: "node-a"})
	}
	return out
}

// endpoints6 returns the pods' IPv6 endpoints.
func (l *lab) endpoints6(names ...string) []k8sobj.Endpoint {
	var out []k8sobj.Endpoint
	for _, n := range names {
		out = append(out, k8sobj.Endpoint{IP: l.c.Pod(n).Addr6.String(), Node: "node-a"})
	}
	return out
}

// sync builds the State and applies it: Update, then Prune.
func (l *lab) sync(t *testing.T, b *Balancer) {
	t.Helper()
	st, d := l.b.Build()
	if len(st.Errors) > 0 {
		t.Fatal(st.Errors)
	}
	if err := b.Update(st, d); err != nil {
		t.Fatal(err)
	}
	if err := b.Prune(); err != nil {
		t.Fatal(err)
	}
}

// answers connects n times to dst and returns who answered, failing t
// when a pod saw another source than the client's own address, or when
// the client's socket names another peer than dst.
func (l *lab) answers(t *testing.T, network string, dst netip.AddrPort, n int) (map[string]int, error) {
	t.Helper()
	hits := map[string]int{}
	for range n {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		r, err := topo.Dial(ctx, l.cli, network, dst, time.Second)
		cancel()
		if err != nil {
			return hits, err
		}
		want := l.c.Pod("cli").Addr
		if dst.Addr().Is6() && !dst.Addr().Is4In6() {
			want = l.c.Pod("cli").Addr6
		}
		if r.Seen.Addr().Unmap() != want {
			t.Errorf("%s answered %s having seen %s, want the client's address %s", r.Server, dst, r.Seen, want)
		}
		// There are no rules here: the balancer connected the socket,
		// and getpeername must still say the ClusterIP (for Multipath
		// TCP too: the connect hook sees its first subflow, getpeername
		// the socket the application holds).
		if network != "udp" && r.Peer != dst {
			t.Errorf("%s connect to %s answered by %s: getpeername says %s, want %s", network, dst, r.Server, r.Peer, dst)
		}
		hits[r.Server]++
	}
	return hits, nil
}

func TestBalancesConnectsToClusterIPs(t *testing.T) {
	l := newLab(t)
	cgroup, bpffs := netnstest.SocketLBSandbox(t)
	pins := filepath.Join(bpffs, "kubenat")
	vip := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.10"), 80)
	sticky := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.50"), 80)
	web := k8sobj.Service{Name: "web", ClusterIPs: []string{vip.Addr().String()},
		Ports: []k8sobj.Port{
			{Name: "http", Port: 80, TargetPort: echoPort},
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort},
		},
		Endpoints: l.endpoints("web-1", "web-2", "web-3")}
	l.set(web)
	l.set(k8sobj.Service{Name: "sticky", ClusterIPs: []string{sticky.Addr().String()}, AffinitySeconds: 60,
		Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}}, Endpoints: l.endpoints("web-1")})

	b, err := Open(Options{Cgroup: cgroup, PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { b.Close() }()
	l.sync(t, b)
	if got := b.Frontends(); got != 1 {
		t.Errorf("the balancer holds %d frontends, want 1 (web's TCP port; not UDP, not affinity)", got)
	}

	hits, err := l.answers(t, "tcp", vip, 60)
	if err != nil {
		t.Fatalf("connect to %s: %v", vip, err)
	}
	if len(hits) != 3 {
		t.Errorf("answers %v: want all three pods", hits)
	}
	// The same TCP connection made through other kinds of socket: an IPv6
	// socket to the IPv4-mapped address (Java's default) meets the
	// connect6 hook, not connect4; Multipath TCP has a socket of its own.
	for _, network := range []string{"tcp4in6", "mptcp"} {
		hits, err := l.answers(t, network, vip, 30)
		if err != nil {
			t.Errorf("%s connect to %s: %v", network, vip, err)
		} else if len(hits) < 2 {
			t.Errorf("%s answers %v: want the connects spread over the pods", network, hits)
		}
	}
	if _, err := l.answers(t, "udp", netip.AddrPortFrom(vip.Addr(), 53), 1); err == nil {
		t.Errorf("UDP to %s:53 was answered: the balancer must leave UDP to the rules (there are none here)", vip.Addr())
	}
	if _, err := l.answers(t, "tcp", sticky, 1); err == nil {
		t.Errorf("%s (ClientIP affinity) was answered: the balancer must leave it to the rules (there are none here)", sticky)
	}

	t.Run("an endpoint goes", func(t *testing.T) {
		web.Endpoints = l.endpoints("web-1", "web-3")
		l.set(web)
		l.sync(t, b)
		hits, err := l.answers(t, "tcp", vip, 40)
		if err != nil {
			t.Fatal(err)
		}
		if hits["web-2"] > 0 || len(hits) != 2 {
			t.Errorf("answers %v: want web-1 and web-3 only", hits)
		}
	})

	t.Run("affinity toggled, ClusterIP moved: the frontends follow", func(t *testing.T) {
		web.AffinitySeconds = 30
		l.set(web)
		l.sync(t, b)
		if got := b.Frontends(); got != 0 {
			t.Errorf("with affinity the balancer holds %d frontends, want 0", got)
		}
		if _, err := l.answers(t, "tcp", vip, 1); err == nil {
			t.Errorf("%s with affinity was answered (there are no rules here)", vip)
		}
		web.AffinitySeconds = 0
		moved := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.11"), 80)
		web.ClusterIPs = []string{moved.Addr().String()}
		l.set(web)
		l.sync(t, b)
		if _, err := l.answers(t, "tcp", moved, 5); err != nil {
			t.Errorf("the new ClusterIP %s: %v", moved, err)
		}
		if _, err := l.answers(t, "tcp", vip, 1); err == nil {
			t.Errorf("the old ClusterIP %s is still balanced", vip)
		}
		web.ClusterIPs = []string{vip.Addr().String()}
		l.set(web)
		l.sync(t, b)
	})

	t.Run("pinned: it outlives the process's descriptors, and a new Open takes it over", func(t *testing.T) {
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := l.answers(t, "tcp", vip, 5); err != nil {
			t.Fatalf("after Close: %v", err)
		}
		// As an agent from before the connect6 and getpeername programs
		// and the IPv6 maps left it: only connect4 and the IPv4 maps
		// pinned. The new Open adds the others.
		for _, m := range []string{"frontends6", "backends6", "origins6"} {
			if err := os.Remove(filepath.Join(pins, m)); err != nil {
				t.Fatal(err)
			}
		}
		for _, h := range hooks()[1:] {
			pin := h.pin
			l, err := link.LoadPinnedLink(filepath.Join(pins, pin), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := errors.Join(os.Remove(filepath.Join(pins, pin)), l.Close()); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := l.answers(t, "tcp4in6", vip, 1); err == nil {
			t.Fatalf("tcp4in6 to %s answered with connect6 detached (there are no rules here)", vip)
		}
		if b, err = Open(Options{Cgroup: cgroup, PinDir: pins}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.answers(t, "tcp4in6", vip, 5); err != nil {
			t.Errorf("tcp4in6 after the new Open: %v", err)
		}
		if got := b.Frontends(); got != 1 {
			t.Errorf("the reopened balancer holds %d frontends, want 1", got)
		}
		for _, hook := range allHooks {
			if n := attached(t, cgroup, hook); n != 1 {
				t.Errorf("%d programs on the cgroup's %s hook, want 1 (the new one replaces the old)", n, hook)
			}
		}
		web.Endpoints = l.endpoints("web-2")
		l.set(web)
		l.sync(t, b)
		hits, err := l.answers(t, "tcp", vip, 10)
		if err != nil || len(hits) != 1 || hits["web-2"] != 10 {
			t.Errorf("answers %v (%v): want web-2 only", hits, err)
		}
	})

	t.Run("no endpoint: left to the rules", func(t *testing.T) {
		web.Endpoints = nil
		l.set(web)
		l.sync(t, b)
		if got := b.Frontends(); got != 0 {
			t.Errorf("the balancer holds %d frontends, want 0", got)
		}
		if _, err := l.answers(t, "tcp", vip, 1); err == nil {
			t.Errorf("%s was answered without endpoints", vip)
		}
	})

	t.Run("cleanup detaches it", func(t *testing.T) {
		web.Endpoints = l.endpoints("web-1")
		l.set(web)
		l.sync(t, b)
		if _, err := l.answers(t, "tcp", vip, 1); err != nil {
			t.Fatal(err)
		}
		b.Close()
		// Another program's pin in the same directory is not kubenat's.
		other, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if err := other.Pin(filepath.Join(pins, "someone-elses")); err != nil {
			t.Fatal(err)
		}
		if removed, err := Cleanup(pins); err != nil || !removed {
			t.Fatalf("Cleanup: %v, %v; want the balancer removed", removed, err)
		}
		if entries, err := os.ReadDir(pins); err != nil || len(entries) != 1 || entries[0].Name() != "someone-elses" {
			t.Errorf("the pin directory after Cleanup: %v %v; want only someone-elses", entries, err)
		}
		if err := other.Unpin(); err != nil {
			t.Fatal(err)
		}
		if removed, err := Cleanup(pins); err != nil || removed {
			t.Errorf("a second Cleanup: %v, %v; want nothing to remove", removed, err)
		}
		if _, err := os.Stat(pins); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the emptied pin directory is still there: %v", err)
		}
		if _, err := l.answers(t, "tcp", vip, 1); err == nil {
			t.Errorf("%s was answered after Cleanup", vip)
		}
		for _, hook := range allHooks {
			if n := attached(t, cgroup, hook); n != 0 {
				t.Errorf("%d programs on the cgroup's %s hook after Cleanup, want 0", n, hook)
			}
		}
	})
}

func TestBalancesIPv6ClusterIPs(t *testing.T) {
	l := newLab(t)
	cgroup, bpffs := netnstest.SocketLBSandbox(t)
	vip := netip.MustParseAddrPort("10.96.0.20:80")
	vip6 := netip.MustParseAddrPort("[fd00:96::20]:80")
	dual := k8sobj.Service{Name: "dual", ClusterIPs: []string{vip.Addr().String(), vip6.Addr().String()},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
		Endpoints: append(l.endpoints("web-1", "web-2", "web-3"), l.endpoints6("web-1", "web-2", "web-3")...)}
	l.set(dual)
	b, err := Open(Options{Cgroup: cgroup, PinDir: filepath.Join(bpffs, "kubenat")})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { b.Close() }()
	// reopen closes the balancer and opens it again over its pins, as a
	// restarted agent does.
	reopen := func(t *testing.T) {
		t.Helper()
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if b, err = Open(Options{Cgroup: cgroup, PinDir: filepath.Join(bpffs, "kubenat")}); err != nil {
			t.Fatal(err)
		}
	}
	l.sync(t, b)
	if got := b.Frontends(); got != 2 {
		t.Errorf("the balancer holds %d frontends, want 2 (one per family)", got)
	}
	// answers checks the source each pod saw and what getpeername says.
	for _, dst := range []netip.AddrPort{vip6, vip} {
		hits, err := l.answers(t, "tcp", dst, 40)
		if err != nil {
			t.Fatalf("connect to %s: %v", dst, err)
		}
		if len(hits) != 3 {
			t.Errorf("%s: answers %v, want all three pods", dst, hits)
		}
	}

	t.Run("the IPv6 endpoints change alone", func(t *testing.T) {
		dual.Endpoints = append(l.endpoints("web-1", "web-2", "web-3"), l.endpoints6("web-3")...)
		l.set(dual)
		l.sync(t, b)
		if hits, err := l.answers(t, "tcp", vip6, 10); err != nil || hits["web-3"] != 10 {
			t.Errorf("%s: answers %v (%v), want web-3 only", vip6, hits, err)
		}
		if hits, err := l.answers(t, "tcp", vip, 40); err != nil || len(hits) != 3 {
			t.Errorf("%s: answers %v (%v), want all three pods", vip, hits, err)
		}
	})

	t.Run("reopened from the pins", func(t *testing.T) {
		reopen(t)
		if got := b.Frontends(); got != 2 {
			t.Errorf("the reopened balancer holds %d frontends, want 2", got)
		}
	})

	t.Run("reopened after an agent without IPv6 maps ran: they are emptied", func(t *testing.T) {
		// Such an agent's connect6 program does not read frontends6:
		// what the maps hold is of unknown age.
		old, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet6Connect,
			Instructions: asm.Instructions{asm.LoadImm(asm.R0, 1, asm.DWord), asm.Return()}, License: "GPL"})
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		pinned, err := link.LoadPinnedLink(filepath.Join(bpffs, "kubenat", "connect6"), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = pinned.Update(old)
		pinned.Close()
		if err != nil {
			t.Fatal(err)
		}
		reopen(t)
		if got := b.Frontends(); got != 1 {
			t.Errorf("the reopened balancer holds %d frontends, want 1 (IPv4 only)", got)
		}
		if _, err := l.answers(t, "tcp", vip6, 1); err == nil {
			t.Errorf("%s answered before the first Update (there are no rules here)", vip6)
		}
		l.sync(t, b)
		if got := b.Frontends(); got != 2 {
			t.Errorf("after an Update the balancer holds %d frontends, want 2", got)
		}
	})

	t.Run("no IPv6 endpoint: the IPv6 frontend goes", func(t *testing.T) {
		dual.Endpoints = l.endpoints("web-1")
		l.set(dual)
		l.sync(t, b)
		if got := b.Frontends(); got != 1 {
			t.Errorf("the balancer holds %d frontends, want 1", got)
		}
		if _, err := l.answers(t, "tcp", vip6, 1); err == nil {
			t.Errorf("%s was answered without IPv6 endpoints (there are no rules here)", vip6)
		}
		if hits, err := l.answers(t, "tcp", vip, 5); err != nil || hits["web-1"] != 5 {
			t.Errorf("%s: answers %v (%v), want web-1 only", vip, hits, err)
		}
	})
}

// allHooks are the cgroup hooks the balancer has a program on.
var allHooks = []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
	ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername}

// attached returns the number of programs on cgroup's hook.
func attached(t *testing.T, cgroup string, hook ebpf.AttachType) int {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: hook})
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Programs)
}

// TestLoadsWithoutTheMPTCPHelper loads the programs with the constant Open
// sets on kernels with bpf_skc_to_mptcp_sock left unset, as on a kernel
// without it: they must verify. (This kernel has the helper, so this does
// not show that an older kernel's verifier skips the call; it relies on
// the verifier not checking a branch a read-only constant rules out.)
func TestLoadsWithoutTheMPTCPHelper(t *testing.T) {
	netnstest.Require(t)
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	var objs bpfObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("loading without the MPTCP helper: %v", err)
	}
	objs.Close()
}

// withChartCapabilities runs fn on an OS thread of its own with only the
// capabilities the chart gives the agent's container (NET_ADMIN, NET_RAW,
// BPF, PERFMON). The thread is never unlocked, so it ends with fn and its
// capabilities never serve another goroutine.
func withChartCapabilities(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		for _, c := range []int{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW, unix.CAP_BPF, unix.CAP_PERFMON} {
			data[c/32].Effective |= 1 << (c % 32)
			data[c/32].Permitted |= 1 << (c % 32)
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- fmt.Errorf("setting the chart's capabilities: %w", err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// TestReopensWithTheChartsCapabilities: an agent restarted over a pinned
// balancer, with only the chart's capabilities (no CAP_SYS_ADMIN, which
// opening a program by its ID needs), takes the balancer over.
func TestReopensWithTheChartsCapabilities(t *testing.T) {
	cgroup, bpffs := netnstest.SocketLBSandbox(t)
	pins := filepath.Join(bpffs, "kubenat")
	for i := range 2 {
		err := withChartCapabilities(func() error {
			b, err := Open(Options{Cgroup: cgroup, PinDir: pins})
			if err != nil {
				return err
			}
			return b.Close()
		})
		if err != nil {
			t.Fatalf("Open %d with the chart's capabilities: %v", i+1, err)
		}
	}
	if _, err := Cleanup(pins); err != nil {
		t.Fatal(err)
	}
}

// TestGetpeernameAfterAReconnect: a socket balanced to an endpoint, then
// disconnected (connect to AF_UNSPEC) and connected straight to that same
// endpoint, names the endpoint as its peer, not the ClusterIP it was
// first connected to.
func TestGetpeernameAfterAReconnect(t *testing.T) {
	l := newLab(t)
	cgroup, bpffs := netnstest.SocketLBSandbox(t)
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	l.set(k8sobj.Service{Name: "web", ClusterIPs: []string{vip.Addr().String()},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
		Endpoints: l.endpoints("web-1")})
	b, err := Open(Options{Cgroup: cgroup, PinDir: filepath.Join(bpffs, "kubenat")})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l.sync(t, b)
	web1 := l.c.Pod("web-1").Addr.As4()
	err = topo.InNS(l.cli.NS, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		peer := func() string {
			sa, err := unix.Getpeername(fd)
			if err != nil {
				return err.Error()
			}
			p := sa.(*unix.SockaddrInet4)
			return netip.AddrPortFrom(netip.AddrFrom4(p.Addr), uint16(p.Port)).String()
		}
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: vip.Addr().As4(), Port: int(vip.Port())}); err != nil {
			return fmt.Errorf("connecting to %s: %w", vip, err)
		}
		if got := peer(); got != vip.String() {
			t.Errorf("getpeername after the balanced connect: %s, want %s", got, vip)
		}
		// x/sys/unix has no AF_UNSPEC address: a zeroed sockaddr is one.
		var unspec [unix.SizeofSockaddrInet4]byte
		if _, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&unspec[0])), uintptr(len(unspec))); e != 0 {
			return fmt.Errorf("disconnecting: %w", e)
		}
		direct := netip.AddrPortFrom(netip.AddrFrom4(web1), echoPort)
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: web1, Port: echoPort}); err != nil {
			return fmt.Errorf("connecting to %s: %w", direct, err)
		}
		if got := peer(); got != direct.String() {
			t.Errorf("getpeername after connecting straight to %s: %s", direct, got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
