package kernel

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/source/manifest"
	"github.com/kubenat/kubenat/internal/topo"
	"github.com/kubenat/kubenat/internal/trace"
)

// The differential test: for a table of packets, the real datapath
// (kubenat agent --once on every node, real TCP/UDP through real nftables)
// must do what trace says — the same endpoints answer, they see the source
// trace predicts, and what trace rejects is refused and what it drops times
// out.
//
// To cover a new Service or policy, add the Service to diffServices (or
// pass your own list to runDifferential) and rows to diffRows. A row names
// its source and destination by host name (see resolve) and lists the nodes
// that see the packet as a new connection, in order; trace is asked on each
// of them and its answers are chained.

// diffSpec is the cluster of the differential test: web-1 and cli on
// node-a, web-2 and cli-b on node-b (addresses follow topo's plan:
// 10.244.1.10, 10.244.1.11, 10.244.2.10, 10.244.2.11).
var diffSpec = topo.Spec{Nodes: []topo.NodeSpec{
	{Name: "node-a", Pods: []string{"web-1", "cli"}},
	{Name: "node-b", Pods: []string{"web-2", "cli-b"}},
}}

// diffServices returns the Services of the differential test for cluster
// c. The client reaches 192.168.200.0/24 (LoadBalancer IPs) and
// 192.168.201.0/24 (externalIPs) through node-a.
func diffServices(c *topo.Cluster) []k8sobj.Service {
	web1, web2 := c.Pod("web-1"), c.Pod("web-2")
	both := []k8sobj.Endpoint{
		{IP: web1.Addr.String(), Node: "node-a"},
		{IP: web2.Addr.String(), Node: "node-b"},
	}
	both6 := append(slices.Clone(both),
		k8sobj.Endpoint{IP: web1.Addr6.String(), Node: "node-a"},
		k8sobj.Endpoint{IP: web2.Addr6.String(), Node: "node-b"})
	onlyB := []k8sobj.Endpoint{{IP: web2.Addr.String(), Node: "node-b"}}
	http := func(nodePort int32) []k8sobj.Port {
		return []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort, NodePort: nodePort}}
	}
	return []k8sobj.Service{
		{Name: "web", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.10"},
			Ports: []k8sobj.Port{
				{Name: "http", Port: 80, TargetPort: echoPort, NodePort: 30080},
				{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort, NodePort: 30053},
			},
			LoadBalancerIPs: []string{"192.168.200.10"}, ExternalIPs: []string{"192.168.201.10"}, Endpoints: both},
		{Name: "local", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.20"}, ETPLocal: true,
			Ports: http(30081), LoadBalancerIPs: []string{"192.168.200.20"}, Endpoints: onlyB},
		{Name: "itp", ClusterIPs: []string{"10.96.0.30"}, ITPLocal: true, Ports: http(0), Endpoints: onlyB},
		{Name: "fw", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.40"}, Ports: http(30083),
			LoadBalancerIPs: []string{"192.168.200.40"}, SourceRanges: []string{"10.0.0.0/8"},
			Endpoints: []k8sobj.Endpoint{{IP: web1.Addr.String(), Node: "node-a"}}},
		{Name: "sticky", ClusterIPs: []string{"10.96.0.50"}, AffinitySeconds: 60, Ports: http(0), Endpoints: both},
		{Name: "dual", Type: v1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.0.60", "fd00:96::60"}, Ports: http(30060),
			Endpoints: both6},
		// An externalIP on another Service's ClusterIP, on a port that
		// Service lacks: served, not refused as a ClusterIP port.
		{Name: "ext-on-cip", ClusterIPs: []string{"10.96.0.70"}, ExternalIPs: []string{"10.96.0.99"},
			Ports: []k8sobj.Port{{Name: "http", Port: 8081, TargetPort: echoPort}}, Endpoints: onlyB},
		{Name: "idle", ClusterIPs: []string{"10.96.0.99"}, Ports: []k8sobj.Port{
			{Name: "tcp", Port: 80, TargetPort: echoPort},
			{Name: "udp", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort},
		}},
	}
}

// diffRow is one packet of the differential test.
type diffRow struct {
	// from is a host name: a pod, a node (the packet is then locally
	// generated), "client" or "inet".
	from  string
	proto string // "tcp" or "udp"
	// to is "HOST:PORT" or "IP:PORT"; HOST/6 names the host's IPv6
	// address.
	to string
	// hops are the nodes that see the packet as a new connection, in
	// order; default: the source's node.
	hops []string
}

func (r diffRow) name() string {
	return fmt.Sprintf("%s %s to %s via %s", r.proto, r.from, r.to, strings.Join(r.hops, ","))
}

var diffRows = []diffRow{
	// Pod on this node.
	{from: "cli", proto: "tcp", to: "10.96.0.10:80"},
	{from: "cli", proto: "udp", to: "10.96.0.10:53"},
	{from: "cli", proto: "tcp", to: "10.96.0.10:81"},
	{from: "cli", proto: "udp", to: "10.96.0.10:80"},
	{from: "cli", proto: "tcp", to: "10.96.0.99:80"},
	{from: "cli", proto: "tcp", to: "10.96.0.99:8081"},
	{from: "cli", proto: "tcp", to: "10.96.0.99:8082"},
	{from: "cli", proto: "udp", to: "10.96.0.99:53"},
	{from: "cli", proto: "tcp", to: "node-a:30080"},
	{from: "cli", proto: "tcp", to: "192.168.200.10:80"},
	{from: "cli", proto: "tcp", to: "192.168.201.10:80"},
	{from: "cli", proto: "tcp", to: "node-a:30081"},
	{from: "cli", proto: "tcp", to: "192.168.200.20:80"},
	{from: "cli", proto: "tcp", to: "10.96.0.30:80"},
	{from: "cli", proto: "tcp", to: "192.168.200.40:80"},
	{from: "cli", proto: "tcp", to: "10.96.0.50:80"},
	{from: "web-1", proto: "tcp", to: "10.96.0.10:80"}, // hairpin
	{from: "cli", proto: "tcp", to: "inet:9000"},
	{from: "cli", proto: "udp", to: "inet:9000"},
	{from: "cli", proto: "tcp", to: "web-2:8080"},
	{from: "cli", proto: "tcp", to: "[fd00:96::60]:80"},
	// Pod on another node.
	{from: "cli-b", proto: "tcp", to: "10.96.0.10:80"},
	{from: "cli-b", proto: "tcp", to: "10.96.0.30:80"},
	{from: "cli-b", proto: "tcp", to: "node-a:30080", hops: []string{"node-b", "node-a"}},
	{from: "cli-b", proto: "tcp", to: "node-a:30081", hops: []string{"node-b", "node-a"}},
	{from: "cli-b", proto: "udp", to: "inet:9000"},
	// The node itself.
	{from: "node-a", proto: "tcp", to: "10.96.0.10:80"},
	{from: "node-a", proto: "udp", to: "10.96.0.10:53"},
	{from: "node-a", proto: "tcp", to: "node-a:30081"},
	{from: "node-a", proto: "tcp", to: "10.96.0.99:80"},
	// An external client.
	{from: "client", proto: "tcp", to: "node-a:30080", hops: []string{"node-a"}},
	{from: "client", proto: "udp", to: "node-a:30053", hops: []string{"node-a"}},
	{from: "client", proto: "tcp", to: "192.168.200.10:80", hops: []string{"node-a"}},
	{from: "client", proto: "tcp", to: "192.168.201.10:80", hops: []string{"node-a"}},
	{from: "client", proto: "tcp", to: "node-a:30081", hops: []string{"node-a"}},
	{from: "client", proto: "tcp", to: "node-b:30081", hops: []string{"node-b"}},
	{from: "client", proto: "tcp", to: "192.168.200.40:80", hops: []string{"node-a"}},
	{from: "client", proto: "tcp", to: "node-a:30083", hops: []string{"node-a"}},
	{from: "client", proto: "tcp", to: "node-b:30060", hops: []string{"node-b"}},
	{from: "client", proto: "tcp", to: "node-b/6:30060", hops: []string{"node-b"}},
}

// TestDifferential runs the table with each datapath and each way of
// recognizing a node's pods (detectModes).
func TestDifferential(t *testing.T) {
	for _, datapath := range []string{"nftables", "iptables", "iptables-legacy", tcNATDatapath, eBPFDatapath} {
		for _, d := range detectModes {
			if datapath == eBPFDatapath && d.Mode != model.DetectNodeCIDR {
				continue // untracking needs the cluster CIDR; the tc NAT's modes run above
			}
			t.Run(datapath+"/"+d.Mode.String(), func(t *testing.T) { differentialTest(t, datapath, d) })
		}
	}
}

// tcNATDatapath names, in the differential test, the nftables datapath
// with the tc NAT (--tc-nat); eBPFDatapath the nftables datapath with
// every eBPF part: the socket load balancer, untracked pod TCP, and the
// tc NAT delivering pod-to-pod TCP directly.
const (
	tcNATDatapath = "nftables+tc-nat"
	eBPFDatapath  = "nftables+ebpf"
)

func differentialTest(t *testing.T, datapath string, detect model.LocalDetect) {
	e := newEnv(t, diffSpec)
	e.detect, e.datapath = detect, datapath
	if datapath == tcNATDatapath || datapath == eBPFDatapath {
		// Each node's agent pins in a directory of its own, as on its own
		// machine: an agent removes the pins of what it does not run.
		cgroup, bpffs := netnstest.SocketLBSandbox(t)
		e.datapath, e.extra = "", []string{"--tc-nat"}
		e.extraFor = map[string][]string{}
		for _, n := range e.c.Nodes {
			e.extraFor[n.Name] = []string{"--bpf-pin-dir", filepath.Join(bpffs, n.Name)}
		}
		if datapath == eBPFDatapath {
			// The balancer on node-a only: every namespace of the test is
			// in the test's one cgroup (see balancerRows).
			e.extraFor["node-a"] = append(e.extraFor["node-a"], "--socket-lb-cgroup", cgroup, "--untrack-pod-tcp", "--tc-nat-pod-to-pod")
		}
	}
	for _, s := range diffServices(e.c) {
		e.writeService(t, s)
	}
	for _, p := range []string{"192.168.200.0/24", "192.168.201.0/24"} {
		if err := e.c.AddRoute(t.Context(), e.c.Client, netip.MustParsePrefix(p), e.c.Node("node-a").Addr); err != nil {
			t.Fatal(err)
		}
	}
	e.syncAll(t)
	e.checkDatapath(t)
	rows := diffRows
	if datapath == eBPFDatapath {
		rows = balancerRows(t, e, rows)
	}
	runDifferential(t, e, rows)
	if datapath == tcNATDatapath || datapath == eBPFDatapath {
		// The external client's NodePort connections were the tc NAT's:
		// conntrack never saw them (nftables would have tracked them).
		for _, port := range []string{"30080", "30081"} {
			out, err := e.c.Exec(t.Context(), &e.c.Node("node-a").Host, "conntrack", "-L", "-p", "tcp",
				"--orig-src", topo.ClientAddr.String(), "--orig-port-dst", port)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, "dport="+port) {
				t.Errorf("the client's connections to node-a:%s went through conntrack:\n%s", port, out)
			}
		}
	}
	if datapath == eBPFDatapath {
		checkDirect(t, e)
	}
}

// checkDirect checks that TCP between cli and web-1 on node-a, to a port
// no Service keeps tracked (web-1:8080 is an endpoint of the sticky
// Service: nftables may DNAT pod traffic to it), straight and through the
// socket load balancer, does not cross node-a's bridge (the tc NAT's pod
// program delivers it), while UDP does: a table of the test's own counts
// both. The agents run again first, with a Service for that port: the
// pods' links come from node-a's neighbour table, which learnt cli and
// web-1 with the rows above (a running agent refreshes them with every
// sync and table check).
func checkDirect(t *testing.T, e *env) {
	t.Helper()
	const port = 9091
	cli, web1 := e.c.Pod("cli"), e.c.Pod("web-1")
	e.serve(&web1.Host, "web-1", port)
	e.writeService(t, k8sobj.Service{Name: "direct", ClusterIPs: []string{"10.96.0.90"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: port}},
		Endpoints: []k8sobj.Endpoint{{IP: web1.Addr.String(), Node: "node-a"}}})
	e.syncAll(t)
	nft := netnstest.NSRunner{NS: e.c.Node("node-a").NS}
	if _, err := nft.Run(t.Context(), fmt.Sprintf(`table bridge kubenat_test {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip saddr . ip daddr { %[1]s . %[2]s, %[2]s . %[1]s } meta l4proto tcp counter comment "tcp"
		ip saddr . ip daddr { %[1]s . %[2]s, %[2]s . %[1]s } meta l4proto udp counter comment "udp"
	}
}
`, cli.Addr, web1.Addr)); err != nil {
		t.Fatal(err)
	}
	for _, network := range []string{"tcp", "udp"} {
		if r := e.mustDial(t, &cli.Host, network, netip.AddrPortFrom(web1.Addr, port)); r.Server != "web-1" || r.Seen.Addr() != cli.Addr {
			t.Errorf("%s cli to web-1: %v, want web-1 seeing %s", network, r, cli.Addr)
		}
	}
	hits, seen := e.spread(t, &cli.Host, "tcp", netip.MustParseAddrPort("10.96.0.90:80"), 5)
	if hits["web-1"] != 5 || len(seen["web-1"]) != 1 || !seen["web-1"][cli.Addr] {
		t.Errorf("cli to the direct Service: answers %v, sources %v; want web-1 seeing %s", hits, seen, cli.Addr)
	}
	out, err := nft.Run(t.Context(), "list table bridge kubenat_test\n")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `counter packets 0 bytes 0 comment "tcp"`) || strings.Contains(out, `counter packets 0 bytes 0 comment "udp"`) {
		t.Errorf("TCP between cli and web-1 crossed the bridge, or UDP did not:\n%s", out)
	}
}

// balancerRows returns the rows a socket load balancer on node-a can be
// tested with: every connection from the test's namespaces is made by the
// test process, in one cgroup, so node-a's balancer also sees the connects
// of the other hosts (which on a real node it never does). Rows from
// node-a and its pods stay, and rows to other addresses than ClusterIPs
// (which the balancer does not take).
func balancerRows(t *testing.T, e *env, rows []diffRow) []diffRow {
	clusterIPs := map[netip.Addr]bool{}
	for _, s := range diffServices(e.c) {
		for _, ip := range s.ClusterIPs {
			clusterIPs[netip.MustParseAddr(ip)] = true
		}
	}
	var out []diffRow
	for _, r := range rows {
		if n := e.nodeOf(r.from); (n != nil && n.Name == "node-a") || !clusterIPs[e.resolve(t, r.to).Addr()] {
			out = append(out, r)
		}
	}
	return out
}

// runDifferential sends every row's packet for real and checks the
// outcome against trace's answer on each hop.
func runDifferential(t *testing.T, e *env, rows []diffRow) {
	states := map[string]*model.State{}
	for _, n := range e.c.Nodes {
		states[n.Name] = e.state(t, n)
	}
	for _, row := range rows {
		from := e.host(t, row.from)
		if len(row.hops) == 0 {
			n := e.nodeOf(row.from)
			if n == nil {
				t.Fatalf("row %+v: a source outside the nodes needs hops", row)
			}
			row.hops = []string{n.Name}
		}
		t.Run(row.name(), func(t *testing.T) {
			want := e.expect(t, states, row, from)
			e.check(t, row, from, want)
		})
	}
}

// outcome is what a connection should meet, derived from trace.
type outcome struct {
	verdict trace.Verdict // Forward or Route when answered
	// seen maps each server that may answer to the sources it may see.
	seen   map[string]map[netip.Addr]bool
	sticky bool // session affinity: every connection reaches the same server
	why    []string
}

// expect asks trace on each hop and chains the answers.
func (e *env) expect(t *testing.T, states map[string]*model.State, row diffRow, from *topo.Host) outcome {
	t.Helper()
	dst := e.resolve(t, row.to)
	proto, err := trace.ParseProtocol(row.proto)
	if err != nil {
		t.Fatal(err)
	}
	src := from.Addr
	if dst.Addr().Is6() {
		src = from.Addr6
	}
	local := e.c.Node(row.from) != nil
	var o outcome
	for i, hop := range row.hops {
		node := e.c.Node(hop)
		p := trace.Packet{Protocol: proto, Src: netip.AddrPortFrom(src, 0), Dst: dst, Local: local && i == 0}
		if !p.Local {
			// A pod's first hop is its node, reached over the pods'
			// bridge; everything else arrives over the LAN.
			p.IIF = "eth0"
			if n := e.nodeOf(row.from); i == 0 && n != nil && n.Name == hop {
				p.IIF = "cni0"
			}
		}
		r, err := trace.Trace(states[hop], p)
		if err != nil {
			t.Fatal(err)
		}
		o.why = append(o.why, fmt.Sprintf("%s: %s: %s", hop, r.Verdict, r.Reason))
		last := i == len(row.hops)-1
		masqTo := masqAddrs(node, dst.Addr().Is6())
		switch r.Verdict {
		case trace.Reject, trace.Drop:
			o.verdict = r.Verdict
			return o
		case trace.Route:
			if r.Masquerade.Masquerade {
				src = node.Addr // it leaves through the LAN
				if dst.Addr().Is6() {
					src = node.Addr6
				}
			}
			if last {
				o.verdict = trace.Route
				seen := map[netip.Addr]bool{src: true}
				if r.Masquerade.Masquerade {
					seen = masqTo
				}
				o.seen = map[string]map[netip.Addr]bool{e.owner(t, dst.Addr()): seen}
				return o
			}
		case trace.Forward:
			if !last {
				t.Fatalf("row %s: trace forwards on %s, which is not the last hop", row.name(), hop)
			}
			o.verdict, o.sticky = trace.Forward, r.Affinity.ClientIP
			o.seen = map[string]map[netip.Addr]bool{}
			for _, c := range r.Endpoints.Candidates {
				seen := map[netip.Addr]bool{src: true}
				if c.Masquerade || (r.SocketLB && p.Local) {
					// The node's own socket, connected to the endpoint
					// by the balancer, has the source address routing
					// picks for it: one of the node's.
					seen = masqTo
				}
				o.seen[e.owner(t, c.Addr)] = seen
			}
			return o
		default:
			t.Fatalf("row %s: trace says %s on %s; rows must reach a pod or the internet host", row.name(), r.Verdict, hop)
		}
	}
	return o
}

// check sends the row's packet for real and compares with want.
func (e *env) check(t *testing.T, row diffRow, from *topo.Host, want outcome) {
	dst := e.resolve(t, row.to)
	explain := strings.Join(want.why, "; ")
	switch want.verdict {
	case trace.Reject:
		r, err := e.dial(from, row.proto, dst)
		if !isRefused(err) {
			t.Errorf("trace says reject (%s); the kernel gave %v (reply %v)", explain, err, r)
		}
		return
	case trace.Drop:
		r, err := e.dialTimeout(from, row.proto, dst, 400*time.Millisecond)
		if !isTimeout(err) {
			t.Errorf("trace says drop (%s); the kernel gave %v (reply %v), want a timeout", explain, err, r)
		}
		return
	}
	tries := triesFor(len(want.seen))
	if want.sticky {
		tries = 8
	}
	hits := map[string]int{}
	for range tries {
		r, err := e.dial(from, row.proto, dst)
		if err != nil {
			t.Fatalf("trace says %s (%s); the kernel gave %v", want.verdict, explain, err)
		}
		hits[r.Server]++
		seen, ok := want.seen[r.Server]
		switch {
		case !ok:
			t.Errorf("answered by %s; trace says one of %v (%s)", r.Server, sortedKeys(want.seen), explain)
		case !seen[r.Seen.Addr()]:
			t.Errorf("%s saw source %s; trace says one of %v (%s)", r.Server, r.Seen.Addr(), sortedAddrs(seen), explain)
		}
	}
	switch {
	case want.sticky && len(hits) != 1:
		t.Errorf("trace says ClientIP affinity; connections reached %v", hits)
	case !want.sticky && len(hits) != len(want.seen):
		t.Errorf("after %d connections only %v answered; trace says %v may (%s)", tries, hits, sortedKeys(want.seen), explain)
	}
}

// triesFor returns how many connections make it very unlikely (< 1e-6)
// that one of k equally likely endpoints is never chosen.
func triesFor(k int) int {
	if k <= 1 {
		return 2
	}
	n := math.Ceil(math.Log(1e-6/float64(k)) / math.Log(1-1/float64(k)))
	return min(int(n), 80)
}

// state builds node n's State from the manifest directory, with the same
// configuration agentArgs gives the agent.
func (e *env) state(t *testing.T, n *topo.Node) *model.State {
	t.Helper()
	snap, err := manifest.NewReader(e.dir).Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Errors) > 0 {
		t.Fatalf("manifests: %v", snap.Errors)
	}
	st := model.Build(e.modelConfig(n), model.Objects{Services: snap.Services, EndpointSlices: snap.EndpointSlices, Nodes: snap.Nodes,
		ServiceCIDRs: snap.ServiceCIDRs})
	if len(st.Errors) > 0 {
		t.Fatalf("model: %v", st.Errors)
	}
	return st
}

// host returns the host named name: a pod, a node, "client" or "inet".
func (e *env) host(t *testing.T, name string) *topo.Host {
	t.Helper()
	switch {
	case name == "client":
		return e.c.Client
	case name == "inet":
		return e.c.Internet
	case e.c.Node(name) != nil:
		return &e.c.Node(name).Host
	case e.c.Pod(name) != nil:
		return &e.c.Pod(name).Host
	}
	t.Fatalf("no host %q", name)
	return nil
}

// nodeOf returns the node a host is or runs on, or nil.
func (e *env) nodeOf(name string) *topo.Node {
	if n := e.c.Node(name); n != nil {
		return n
	}
	if p := e.c.Pod(name); p != nil {
		return p.Node
	}
	return nil
}

// resolve turns "HOST:PORT", "HOST/6:PORT" or "IP:PORT" into an address.
func (e *env) resolve(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap
	}
	i := strings.LastIndexByte(s, ':')
	port, err := strconv.ParseUint(s[i+1:], 10, 16)
	if i < 0 || err != nil {
		t.Fatalf("bad destination %q", s)
	}
	name, v6 := strings.CutSuffix(s[:i], "/6")
	h := e.host(t, name)
	if v6 {
		return netip.AddrPortFrom(h.Addr6, uint16(port))
	}
	return netip.AddrPortFrom(h.Addr, uint16(port))
}

// owner returns the name of the echo server at address a.
func (e *env) owner(t *testing.T, a netip.Addr) string {
	t.Helper()
	if a == e.c.Internet.Addr || a == e.c.Internet.Addr6 {
		return "internet"
	}
	for _, n := range e.c.Nodes {
		for _, p := range n.Pods {
			if p.Addr == a || p.Addr6 == a {
				return p.Name
			}
		}
	}
	t.Fatalf("no echo server at %s", a)
	return ""
}

// masqAddrs returns the addresses node n may masquerade to: its LAN
// address and its pod bridge address.
func masqAddrs(n *topo.Node, v6 bool) map[netip.Addr]bool {
	if v6 {
		return map[netip.Addr]bool{n.Addr6: true, n.Gateway6: true}
	}
	return map[netip.Addr]bool{n.Addr: true, n.Gateway: true}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedAddrs(m map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// dialTimeout connects like dial with a given reply timeout (short ones
// for packets that are expected to be dropped).
func (e *env) dialTimeout(from *topo.Host, network string, dst netip.AddrPort, timeout time.Duration) (topo.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Second)
	defer cancel()
	return topo.Dial(ctx, from, network, dst, timeout)
}
