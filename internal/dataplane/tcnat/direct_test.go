package tcnat

import (
	"context"
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// forwardCounters is a table of the test's own in node-a that counts the
// TCP and UDP packets the node forwards to and from the pods' echo port:
// bridged between two ports of cni0 (bridge), and routed (ip: with
// br_netfilter on, bridged packets pass the IP hooks too, from cni0 to
// cni0, so routing is what leaves or enters through another link). A
// packet the pod program delivers directly is counted by none.
const forwardCounters = `table bridge kubenat_test {
	chain forward {
		type filter hook forward priority 0; policy accept;
		meta l4proto { tcp, udp } th dport 8080 counter comment "bridged_to"
		meta l4proto { tcp, udp } th sport 8080 counter comment "bridged_from"
	}
}
table ip kubenat_test {
	chain forward {
		type filter hook forward priority 0; policy accept;
		meta l4proto { tcp, udp } th dport 8080 iifname . oifname != { "cni0" . "cni0" } counter comment "routed_to"
		meta l4proto { tcp, udp } th sport 8080 iifname . oifname != { "cni0" . "cni0" } counter comment "routed_from"
	}
}
`

var counterRE = regexp.MustCompile(`counter packets (\d+) bytes \d+ comment "(\w+)"`)

// forwarded returns how many packets node-a bridged and routed so far, by
// counter (bridged_to, bridged_from, routed_to, routed_from: towards the
// echo port and back).
func forwarded(t *testing.T, nft netnstest.NSRunner) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for _, family := range []string{"bridge", "ip"} {
		out, err := nft.Run(t.Context(), "list table "+family+" kubenat_test\n")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range counterRE.FindAllStringSubmatch(out, -1) {
			counts[m[2]], _ = strconv.Atoi(m[1])
		}
	}
	if len(counts) != 4 {
		t.Fatalf("counters %v, want 4", counts)
	}
	return counts
}

// TestDirectPodToPod checks direct pod-to-pod delivery: TCP between two
// of node-a's pods that no rule can have translated goes straight into
// the destination pod (neither bridged nor routed by the node), with the
// addresses unchanged; what it must not take (a tracked endpoint, UDP, a
// path between a bridge and a routed pod, everything once it is off) the
// node forwards as before.
func TestDirectPodToPod(t *testing.T) {
	cfg := model.Config{SocketLB: true, UntrackPodTCP: true, TCNATPodToPod: true}
	l := newLabWith(t, []string{"web-1", "web-2", "web-3"}, []string{"r-1", "r-2"}, cfg)
	// web-2 is the endpoint of a Local NodePort, which the rules may DNAT
	// pod traffic to without masquerade: it stays tracked.
	l.set(k8sobj.Service{Name: "local", ClusterIPs: []string{"10.96.0.11"}, Type: v1.ServiceTypeNodePort, ETPLocal: true,
		Ports:     []k8sobj.Port{{Port: 80, TargetPort: echoPort, NodePort: 30081}},
		Endpoints: l.endpoints("web-2")})
	nft := netnstest.NSRunner{NS: l.a.NS}
	if _, err := nft.Run(t.Context(), forwardCounters); err != nil {
		t.Fatal(err)
	}
	// The node meets its pods: its neighbour and bridge tables learn them.
	var pods []netip.Addr
	for _, p := range l.a.Pods {
		pods = append(pods, p.Addr)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if err := topo.Meet(ctx, &l.a.Host, pods); err != nil {
		t.Fatal(err)
	}
	n := open(t)
	l.sync(t, n)

	type via struct{ bridged, routed bool }
	tests := []struct {
		name     string
		from, to string
		network  string
		want     via
	}{
		{"bridged pods: delivered directly", "web-1", "web-3", "tcp", via{}},
		{"a tracked endpoint: bridged", "web-1", "web-2", "tcp", via{bridged: true}},
		{"UDP: bridged", "web-1", "web-3", "udp", via{bridged: true}},
		{"routed pods: delivered directly", "r-1", "r-2", "tcp", via{}},
		{"bridged pod to routed pod, through the gateway: delivered directly", "web-1", "r-1", "tcp", via{}},
		{"routed pod to bridged pod: delivered directly", "r-2", "web-3", "tcp", via{}},
	}
	check := func(t *testing.T, from, to, network string, want via) {
		t.Helper()
		src, dst := l.c.Pod(from), l.c.Pod(to)
		before := forwarded(t, nft)
		for range 5 {
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			r, err := topo.Dial(ctx, &src.Host, network, netip.AddrPortFrom(dst.Addr, echoPort), time.Second)
			cancel()
			if err != nil {
				t.Fatalf("%s %s to %s: %v", network, from, to, err)
			}
			if r.Server != to || r.Seen.Addr() != src.Addr {
				t.Fatalf("%s %s to %s: answered by %s, want %s seeing %s", network, from, to, r, to, src.Addr)
			}
		}
		after := forwarded(t, nft)
		// Each direction on its own: both are taken, or neither.
		for _, c := range []struct {
			counter string
			want    bool
		}{{"bridged_to", want.bridged}, {"bridged_from", want.bridged}, {"routed_to", want.routed}, {"routed_from", want.routed}} {
			if got := after[c.counter] - before[c.counter]; (got > 0) != c.want {
				t.Errorf("%s %s to %s: %s counted %d packets; want some: %v", network, from, to, c.counter, got, c.want)
			}
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { check(t, tt.from, tt.to, tt.network, tt.want) })
	}

	t.Run("off: bridged and routed again", func(t *testing.T) {
		off := l.b.Config()
		off.TCNATPodToPod = false
		l.b.SetConfig(off)
		l.sync(t, n)
		check(t, "web-1", "web-3", "tcp", via{bridged: true})
		check(t, "r-1", "r-2", "tcp", via{routed: true})
	})
}

// trackedInMap returns the endpoints the tracked map holds.
func trackedInMap(t *testing.T, n *NAT) []netip.AddrPort {
	t.Helper()
	var out []netip.AddrPort
	var k bpfBackend
	var v uint8
	it := n.objs.Tracked.Iterate()
	for it.Next(&k, &v) {
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], k.Addr)
		var p [2]byte
		binary.NativeEndian.PutUint16(p[:], k.Port)
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4(a), binary.BigEndian.Uint16(p[:])))
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return out
}

// TestTrackedEndpoints checks that the tracked map follows the model's
// tracked endpoints through full and incremental Updates, that Track adds
// a Service's endpoints before its Update, and that it is empty while
// direct delivery is off.
func TestTrackedEndpoints(t *testing.T) {
	netnstest.Require(t)
	cfg := model.Config{NodeName: "node-a", ClusterCIDRs: []netip.Prefix{topo.ClusterCIDR},
		TCNAT: true, SocketLB: true, UntrackPodTCP: true, TCNATPodToPod: true}
	b := model.NewBuilder(cfg)
	b.SetNode(k8sobj.Node("node-a", []string{"192.168.100.11"}, []string{"10.244.1.0/24"}), "test")
	local := func(name, ip string, eps ...string) k8sobj.Service {
		s := k8sobj.Service{Name: name, ClusterIPs: []string{ip}, Type: v1.ServiceTypeNodePort, ETPLocal: true,
			Ports: []k8sobj.Port{{Port: 80, TargetPort: echoPort, NodePort: 30000 + int32(name[0])}}}
		for _, e := range eps {
			s.Endpoints = append(s.Endpoints, k8sobj.Endpoint{IP: e, Node: "node-a"})
		}
		return s
	}
	set := func(s k8sobj.Service) {
		svc, sl := s.Objects()
		b.SetService(svc, "test")
		for _, e := range sl {
			b.SetEndpointSlice(e, "test")
		}
	}
	ap := func(s ...string) []netip.AddrPort {
		var out []netip.AddrPort
		for _, a := range s {
			out = append(out, netip.AddrPortFrom(netip.MustParseAddr(a), echoPort))
		}
		return out
	}
	n := open(t)
	update := func(st *model.State, d model.Delta) {
		t.Helper()
		if err := n.Update(st, d); err != nil {
			t.Fatal(err)
		}
	}
	want := func(step string, w []netip.AddrPort) {
		t.Helper()
		if got := trackedInMap(t, n); !slices.Equal(got, w) {
			t.Errorf("%s: tracked %v, want %v", step, got, w)
		}
	}

	set(local("a", "10.96.0.10", "10.244.1.10"))
	set(k8sobj.Service{Name: "cluster", ClusterIPs: []string{"10.96.0.11"}, Ports: []k8sobj.Port{{Port: 80, TargetPort: echoPort}},
		Endpoints: []k8sobj.Endpoint{{IP: "10.244.1.12", Node: "node-a"}}})
	update(b.Build())
	want("first Update", ap("10.244.1.10"))

	set(local("b", "10.96.0.12", "10.244.1.10", "10.244.1.11"))
	st, d := b.Build()
	if err := n.Track(st, d); err != nil {
		t.Fatal(err)
	}
	want("Track before the Update", ap("10.244.1.10", "10.244.1.11"))
	update(st, d)
	want("Update", ap("10.244.1.10", "10.244.1.11"))

	b.DeleteService(model.ServiceKey{Namespace: "default", Name: "a"})
	update(b.Build())
	want("a removed: its endpoint is still b's", ap("10.244.1.10", "10.244.1.11"))

	// Track ahead of a State whose Update never comes: the next Update
	// removes what it added and its State does not want.
	set(local("c", "10.96.0.13", "10.244.1.13"))
	st, d = b.Build()
	if err := n.Track(st, d); err != nil {
		t.Fatal(err)
	}
	// An endpoint the rules hold for connections still using it stays
	// when its Service goes, until it is no longer held.
	if err := n.Hold([]netip.AddrPort{netip.MustParseAddrPort("10.244.1.11:8080")}); err != nil {
		t.Fatal(err)
	}
	b.DeleteService(model.ServiceKey{Namespace: "default", Name: "c"})
	b.DeleteService(model.ServiceKey{Namespace: "default", Name: "b"})
	update(b.Build())
	want("c and b gone, 10.244.1.11:8080 held", ap("10.244.1.11"))
	if err := n.Hold(nil); err != nil {
		t.Fatal(err)
	}
	want("released", nil)

	on := func() bool {
		t.Helper()
		var c bpfDirectCfg
		if err := n.objs.Direct.Lookup(uint32(0), &c); err != nil {
			t.Fatal(err)
		}
		return c.On == 1
	}
	if !on() {
		t.Error("direct delivery is off after the Updates")
	}
	// Without direct delivery (here the option goes; in the agent, a
	// balancer that failed), Track turns it off before the rules change.
	off := cfg
	off.TCNATPodToPod = false
	b.SetConfig(off)
	set(local("d", "10.96.0.14", "10.244.1.14"))
	st, d = b.Build()
	if err := n.Track(st, d); err != nil {
		t.Fatal(err)
	}
	if on() {
		t.Error("direct delivery is still on after Track of a State without it")
	}
	update(st, d)
	want("direct delivery off", nil)
}

// TestStopDelivery checks that an agent without the tc NAT turns off the
// direct delivery of the programs an earlier agent left, through the
// switch pinned with the connections.
func TestStopDelivery(t *testing.T) {
	netnstest.Require(t)
	_, bpffs := netnstest.SocketLBSandbox(t)
	pins := filepath.Join(bpffs, "tcnat")
	if err := StopDelivery(pins); err != nil {
		t.Fatalf("nothing pinned: %v", err)
	}
	n, err := Open(Options{PinDir: pins})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.writeDirect(topo.ClusterCIDR); err != nil {
		t.Fatal(err)
	}
	if err := StopDelivery(pins); err != nil {
		t.Fatal(err)
	}
	var c bpfDirectCfg
	if err := n.objs.Direct.Lookup(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
	if c.On != 0 {
		t.Errorf("direct delivery still on: %+v", c)
	}
	if _, err := Cleanup(pins); err != nil {
		t.Fatal(err)
	}
}
