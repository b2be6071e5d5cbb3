// Package datapath measures what a Service costs a new connection: the
// rate of connect+reset cycles one client thread achieves, and the connect
// latency, from a pod to a ClusterIP and from an external client to a
// NodePort, with N other Services installed, for kubenat and for
// kube-proxy's iptables structure (loaded with iptables-restore, legacy and
// nft back ends), against connecting to the pod IP with no ruleset at all
// (the physical limit). It also measures the throughput of one established
// TCP flow with and without NAT.
//
// The topology is node-a, with five server pods backing the target Service
// and a client pod, node-b with one server pod and one client pod and no
// ruleset ever (the no-ruleset baseline, measured in the same rounds), and
// the external client on the LAN: all network namespaces of a
// topo.Cluster. The target Service is the one
// evaluated last: its KUBE-SERVICES and KUBE-NODEPORTS rules come after
// every other Service's, and for kubenat it uses the last lb chain (it has
// 5 endpoints, the other Services 1 to 5).
package datapath

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kubenat/kubenat/bench/kubeproxy"
	"github.com/kubenat/kubenat/bench/loadgen"
	"github.com/kubenat/kubenat/bench/nsrun"
	"github.com/kubenat/kubenat/bench/workload"
	"github.com/kubenat/kubenat/internal/bpfsandbox"
	"github.com/kubenat/kubenat/internal/dataplane/nftables"
	"github.com/kubenat/kubenat/internal/dataplane/socketlb"
	"github.com/kubenat/kubenat/internal/dataplane/tcnat"
	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/topo"
)

// Rulesets.
const (
	// None is no ruleset at all: the node only routes and bridges.
	None = "none"
	// Kubenat is kubenat's nftables ruleset, programmed by its backend.
	Kubenat = "kubenat"
	// KubenatSocketLB is kubenat with the socket load balancer
	// (model.Config.SocketLB) in a table of its own ("kubenatslb"), and the
	// eBPF connect balancer attached, while this ruleset is the live one,
	// to a cgroup the benchmark process is moved into (no other process is
	// affected). Connection tracking stays as it is.
	KubenatSocketLB = "kubenat-socket-lb"
	// KubenatSocketLBUntracked is the same with model.Config.UntrackPodTCP
	// (pod-to-pod TCP untracked), in the table "kubenatslbu".
	KubenatSocketLBUntracked = "kubenat-socket-lb-untracked"
	// KubenatTen is kubenat's ruleset for the target and only 10 other
	// Services, in a table of its own ("kubenat10"), measured in the same
	// rounds as Kubenat at every size above 10: the reference for "the
	// rate at 10 Services" under the same conditions (separate clusters
	// and minutes apart, rates drift by ~10 % for all paths alike).
	KubenatTen = "kubenat-10"
	// KubenatSocketLBTen and KubenatSocketLBUntrackedTen are the same
	// references for the socket LB rulesets (tables "kubenatslb10" and
	// "kubenatslbu10", their own balancer state), measured on pod →
	// ClusterIP, the path the balancer serves.
	KubenatSocketLBTen          = "kubenat-socket-lb-10"
	KubenatSocketLBUntrackedTen = "kubenat-socket-lb-untracked-10"
	// KubenatTCNAT is kubenat with the tc NAT (model.Config.TCNAT) in a
	// table of its own ("kubenattc"), and the tc NAT's programs attached
	// to node-a's interfaces while this ruleset is the live one: external
	// connections to the NodePort are translated before netfilter.
	// KubenatTCNATTen is its 10-Service reference ("kubenattc10"),
	// measured on external → NodePort, the path the tc NAT serves.
	KubenatTCNAT    = "kubenat-tc-nat"
	KubenatTCNATTen = "kubenat-tc-nat-10"
	// KubenatEBPF is kubenat with every eBPF part ("kubenatebpf"): the
	// socket load balancer, untracked pod TCP, the tc NAT, and the tc
	// NAT's direct pod-to-pod delivery (model.Config.TCNATPodToPod), so
	// that neither path's packets enter netfilter. KubenatEBPFTen is its
	// 10-Service reference ("kubenatebpf10"), measured on both paths.
	KubenatEBPF    = "kubenat-ebpf"
	KubenatEBPFTen = "kubenat-ebpf-10"
	// IPTablesNFT is kube-proxy's iptables structure loaded with
	// iptables-nft-restore (Debian's default iptables).
	IPTablesNFT = "iptables-nft"
	// IPTablesLegacy is the same loaded with iptables-legacy-restore.
	IPTablesLegacy = "iptables-legacy"
	// Floor is a hand-written nftables ruleset of three rules that DNATs
	// the target Service only (one rule per path, plus the masquerade):
	// the least any conntrack-based NAT can cost, whatever the number of
	// Services.
	Floor = "nft-floor"
)

// rulesets are the rulesets Options.Rulesets may name (the 10-Service
// references come with theirs, see TenOf), in the order they are measured
// by default.
var rulesets = []string{Kubenat, KubenatSocketLB, KubenatSocketLBUntracked, KubenatTCNAT, KubenatEBPF, Floor, IPTablesNFT, IPTablesLegacy}

// variant is how one of kubenat's rulesets is built: its nftables table
// (in both families), the configuration it is programmed with, and whether
// it holds the target and only 10 other Services (a reference: see
// KubenatTen).
type variant struct {
	table             string
	balancer, untrack bool
	tcNAT, podToPod   bool
	ten               bool
}

// variants are kubenat's rulesets.
var variants = map[string]variant{
	Kubenat:                     {table: nftables.DefaultTable},
	KubenatTen:                  {table: "kubenat10", ten: true},
	KubenatSocketLB:             {table: "kubenatslb", balancer: true},
	KubenatSocketLBTen:          {table: "kubenatslb10", balancer: true, ten: true},
	KubenatSocketLBUntracked:    {table: "kubenatslbu", balancer: true, untrack: true},
	KubenatSocketLBUntrackedTen: {table: "kubenatslbu10", balancer: true, untrack: true, ten: true},
	KubenatTCNAT:                {table: "kubenattc", tcNAT: true},
	KubenatTCNATTen:             {table: "kubenattc10", tcNAT: true, ten: true},
	KubenatEBPF:                 {table: "kubenatebpf", balancer: true, untrack: true, tcNAT: true, podToPod: true},
	KubenatEBPFTen:              {table: "kubenatebpf10", balancer: true, untrack: true, tcNAT: true, podToPod: true, ten: true},
}

// hasBalancer reports whether ruleset has the socket load balancer.
func hasBalancer(ruleset string) bool { return variants[ruleset].balancer }

// hasTCNAT reports whether ruleset has the tc NAT.
func hasTCNAT(ruleset string) bool { return variants[ruleset].tcNAT }

// tens maps a ruleset to its reference: the same ruleset for the target
// and only 10 other Services, measured in the same rounds at every size
// above 10.
var tens = map[string]string{
	Kubenat:                  KubenatTen,
	KubenatSocketLB:          KubenatSocketLBTen,
	KubenatSocketLBUntracked: KubenatSocketLBUntrackedTen,
	KubenatTCNAT:             KubenatTCNATTen,
	KubenatEBPF:              KubenatEBPFTen,
}

// TenOf returns ruleset's 10-Service reference, "" when it has none.
func TenOf(ruleset string) string { return tens[ruleset] }

// IsTen reports whether ruleset is a 10-Service reference.
func IsTen(ruleset string) bool { return variants[ruleset].ten }

// Paths a connection takes.
const (
	// PodToClusterIP: client pod → target ClusterIP:80 (DNAT, no SNAT).
	PodToClusterIP = "pod → ClusterIP"
	// ExternalToNodePort: external client → node-a:NodePort (DNAT + SNAT).
	ExternalToNodePort = "external → NodePort"
	// PodToPodIP: client pod → server pod IP:8080, no Service.
	PodToPodIP = "pod → pod IP"
	// ExternalToPodIP: external client → server pod IP:8080, routed by
	// node-a, no Service.
	ExternalToPodIP = "external → pod IP"
	// PodToPodIPs and ExternalToPodIPs are PodToPodIP and ExternalToPodIP
	// to the five server pods of node-b, one picked at random for each
	// connection (as the target Service spreads its connections over its
	// five endpoints), with no ruleset: what connecting straight to a
	// Service's pods costs, the spreading included.
	PodToPodIPs      = "pod → 5 pod IPs"
	ExternalToPodIPs = "external → 5 pod IPs"
)

// The target Service: port "http" (connect loops) and port "bulk"
// (throughput), each with a NodePort.
const (
	targetVIP      = "10.111.255.250"
	servicePort    = 80
	serverPort     = 8080 // an Acceptor: accept and close
	targetNodePort = 32767
	bulkPort       = 81
	bulkServerPort = 8081 // a discarding Server
	bulkNodePort   = 32766
	servers        = 5
)

// Namespaces creates the clusters a stage runs in. release removes the
// cluster's namespaces; it is safe to call more than once.
type Namespaces interface {
	Cluster(ctx context.Context, spec topo.Spec) (c *topo.Cluster, release func(), err error)
}

// Options say what to measure.
type Options struct {
	// Sizes are the numbers of other Services (N).
	Sizes []int
	// Rulesets to measure besides None (which is always measured).
	Rulesets []string
	// Repeats of each measurement.
	Repeats int
	// Warmup and Duration of each connect loop.
	Warmup, Duration time.Duration
	// ThroughputSizes are the N at which throughput is measured (nil: the
	// smallest and largest of Sizes); ThroughputDuration is each transfer's
	// length (0 skips throughput).
	ThroughputSizes    []int
	ThroughputDuration time.Duration
	// LoadTimeout bounds programming one ruleset; a ruleset that takes
	// longer is recorded as not loaded and skipped at that size.
	LoadTimeout time.Duration
	// Log receives progress lines; nil discards them.
	Log func(format string, args ...any)
}

// Sample is one connect loop.
type Sample struct {
	Rate   float64 `json:"rate"`   // connections per second
	P50    int64   `json:"p50_ns"` // connect latency
	P99    int64   `json:"p99_ns"`
	Max    int64   `json:"max_ns"`
	Slow   int     `json:"slow_connects"` // connects over 100 ms
	Conns  int     `json:"connections"`
	Errors int     `json:"errors"`
	// Load is the 1-minute load average when the sample was taken.
	Load float64 `json:"load1"`
	// Conntrack is the number of entries in node-a's conntrack table
	// after the loop (0 when nothing enables connection tracking).
	Conntrack int `json:"conntrack_entries"`
}

// Point is the repeats of one (ruleset, path, N).
type Point struct {
	Ruleset  string   `json:"ruleset"`
	Path     string   `json:"path"`
	Services int      `json:"services"`
	Samples  []Sample `json:"samples"`
}

// Load is the programming of one ruleset at one N.
type Load struct {
	Ruleset  string  `json:"ruleset"`
	Services int     `json:"services"`
	Seconds  float64 `json:"seconds"` // wall time; 0 with Error set
	Rules    int     `json:"rules,omitempty"`
	Error    string  `json:"error,omitempty"`
}

// Throughput is the repeats of one bulk transfer measurement.
type Throughput struct {
	Ruleset  string    `json:"ruleset"`
	Path     string    `json:"path"`
	Services int       `json:"services"`
	Samples  []float64 `json:"bytes_per_second"`
}

// Results are everything the stage measured.
type Results struct {
	Options struct {
		Repeats            int     `json:"repeats"`
		WarmupSeconds      float64 `json:"warmup_seconds"`
		DurationSeconds    float64 `json:"duration_seconds"`
		ThroughputDuration float64 `json:"throughput_seconds"`
	} `json:"options"`
	Points      []Point      `json:"points"`
	Loads       []Load       `json:"loads"`
	Throughputs []Throughput `json:"throughputs"`
}

// Find returns the point for (ruleset, path, services), or nil.
func (r *Results) Find(ruleset, path string, services int) *Point {
	for i := range r.Points {
		p := &r.Points[i]
		if p.Ruleset == ruleset && p.Path == path && p.Services == services {
			return p
		}
	}
	return nil
}

func (o *Options) defaults() {
	if len(o.Sizes) == 0 {
		o.Sizes = []int{10, 1000, 10000, 50000}
	}
	if o.Rulesets == nil {
		o.Rulesets = slices.Clone(rulesets)
	}
	if o.Repeats == 0 {
		o.Repeats = 3
	}
	if o.Duration == 0 {
		o.Duration = 3 * time.Second
	}
	if o.ThroughputSizes == nil && len(o.Sizes) > 0 {
		lo, hi := o.Sizes[0], o.Sizes[0]
		for _, n := range o.Sizes {
			lo, hi = min(lo, n), max(hi, n)
		}
		o.ThroughputSizes = []int{lo}
		if hi != lo {
			o.ThroughputSizes = append(o.ThroughputSizes, hi)
		}
	}
	if o.LoadTimeout == 0 {
		o.LoadTimeout = 10 * time.Minute
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
}

// Run measures every size in a fresh cluster of its own.
func Run(ctx context.Context, ns Namespaces, o Options) (*Results, error) {
	o.defaults()
	for _, rs := range o.Rulesets {
		if !slices.Contains(rulesets, rs) {
			return nil, fmt.Errorf("unknown ruleset %q (known: %s)", rs, strings.Join(rulesets, ", "))
		}
	}
	var cgroup string
	if slices.ContainsFunc(o.Rulesets, hasBalancer) {
		// The balancer serves the connects of this process only.
		bpfsandbox.RemoveStale("kubenat-b")
		cg, err := bpfsandbox.NewCgroup("kubenat-b")
		if err != nil {
			return nil, fmt.Errorf("a cgroup for %s: %w", KubenatSocketLB, err)
		}
		defer cg.Remove()
		cgroup = cg.Path
	}
	res := &Results{}
	res.Options.Repeats = o.Repeats
	res.Options.WarmupSeconds = o.Warmup.Seconds()
	res.Options.DurationSeconds = o.Duration.Seconds()
	res.Options.ThroughputDuration = o.ThroughputDuration.Seconds()
	for _, n := range o.Sizes {
		if err := runSize(ctx, ns, o, n, cgroup, res); err != nil {
			return res, fmt.Errorf("datapath with %d Services: %w", n, err)
		}
	}
	return res, nil
}

// bed is the cluster of one size.
type bed struct {
	c       *topo.Cluster
	node    *topo.Node // node-a: the rulesets under test
	cli     *topo.Pod
	servers []*topo.Pod
	bare    *topo.Node // node-b: never any ruleset
	// nft programs node-a: one libnftables context for the whole size
	// (each context keeps a cache of the ruleset it last saw, hundreds of
	// MB at 50,000 Services: one per call grew the process by gigabytes).
	nft  *nsrun.NFT
	objs *workload.Cluster // the other Services, then the target
	n    int

	cgroup    string                  // the benchmark's cgroup, for the socket LB rulesets
	slbStates map[string]*model.State // what each socket LB ruleset's balancer holds
	balancer  *socketlb.Balancer
	attached  string // the ruleset whose balancer is attached

	tcStates   map[string]*model.State // what each tc NAT ruleset's programs hold
	tcNAT      *tcnat.NAT
	tcAttached string // the ruleset whose tc NAT is attached
}

func runSize(ctx context.Context, ns Namespaces, o Options, n int, cgroup string, res *Results) error {
	// node-b, which never has a ruleset, has as many server pods as
	// node-a: srv-b and srv-b2 … srv-b5.
	spec := topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a"}, {Name: "node-b", Pods: []string{"srv-b"}}}}
	for i := range servers {
		spec.Nodes[0].Pods = append(spec.Nodes[0].Pods, fmt.Sprintf("srv-%d", i+1))
		if i > 0 {
			spec.Nodes[1].Pods = append(spec.Nodes[1].Pods, fmt.Sprintf("srv-b%d", i+1))
		}
	}
	spec.Nodes[1].Pods = append(spec.Nodes[1].Pods, "cli-b")
	spec.Nodes[0].Pods = append(spec.Nodes[0].Pods, "cli")
	c, release, err := ns.Cluster(ctx, spec)
	if err != nil {
		return err
	}
	defer release()
	b := &bed{c: c, node: c.Nodes[0], cli: c.Pod("cli"), bare: c.Nodes[1], n: n, cgroup: cgroup, nft: nsrun.NewNFT(c.Nodes[0].NS)}
	defer b.detach()
	defer b.detachTCNAT()
	for i := range servers {
		b.servers = append(b.servers, c.Pod(fmt.Sprintf("srv-%d", i+1)))
	}
	if err := b.setup(ctx); err != nil {
		return err
	}
	for _, p := range append(b.bareServers(), b.servers...) {
		a, err := loadgen.ServeAcceptClose(&p.Host, serverPort)
		if err != nil {
			return err
		}
		defer a.Close()
		s, err := loadgen.Serve(&p.Host, bulkServerPort)
		if err != nil {
			return err
		}
		defer s.Close()
	}
	if b.objs, err = objects(n, b.servers); err != nil {
		return err
	}

	vip := netip.MustParseAddr(targetVIP)
	bareIP := c.Pod("srv-b").Addr
	var bareAll []netip.AddrPort
	for _, p := range b.bareServers() {
		bareAll = append(bareAll, netip.AddrPortFrom(p.Addr, serverPort))
	}
	direct := []path{
		{name: PodToPodIP, from: &c.Pod("cli-b").Host, dsts: []netip.AddrPort{netip.AddrPortFrom(bareIP, serverPort)}, bulk: netip.AddrPortFrom(bareIP, bulkServerPort)},
		{name: ExternalToPodIP, from: c.Client, dsts: []netip.AddrPort{netip.AddrPortFrom(bareIP, serverPort)}, bulk: netip.AddrPortFrom(bareIP, bulkServerPort)},
		{name: PodToPodIPs, from: &c.Pod("cli-b").Host, dsts: bareAll},
		{name: ExternalToPodIPs, from: c.Client, dsts: bareAll},
	}
	podIP := b.servers[0].Addr
	services := []path{
		{name: PodToClusterIP, from: &b.cli.Host, dsts: []netip.AddrPort{netip.AddrPortFrom(vip, servicePort)}, bulk: netip.AddrPortFrom(vip, bulkPort)},
		{name: ExternalToNodePort, from: c.Client, dsts: []netip.AddrPort{netip.AddrPortFrom(b.node.Addr, targetNodePort)}, bulk: netip.AddrPortFrom(b.node.Addr, bulkNodePort)},
		{name: PodToPodIP, from: &b.cli.Host, dsts: []netip.AddrPort{netip.AddrPortFrom(podIP, serverPort)}, bulk: netip.AddrPortFrom(podIP, bulkServerPort)},
	}
	tput := false
	for _, s := range o.ThroughputSizes {
		tput = tput || (s == n && o.ThroughputDuration > 0)
	}

	// Phase 1: the rulesets nftables holds (kubenat, the floor,
	// iptables-nft) are loaded once and switched on one at a time by
	// making the others' tables dormant (no hooks: no cost, and no
	// conntrack when all are dormant), so every repeat measures every
	// ruleset within seconds of the others.
	arms := []*arm{{ruleset: None, paths: direct}}
	for _, rs := range o.Rulesets {
		if rs == IPTablesLegacy {
			continue
		}
		loaded, err := b.loadLogged(ctx, o, n, rs, res)
		if err != nil {
			return err
		}
		if !loaded {
			if err := b.unload(ctx, rs); err != nil {
				return err
			}
			continue
		}
		arms = append(arms, &arm{ruleset: rs, paths: services, tables: nftTables(rs)})
		if err := b.activate(ctx, arms, nil); err != nil {
			return err
		}
		if ten := TenOf(rs); ten != "" && n > 10 {
			if _, err := b.load(ctx, o, ten); err != nil {
				return fmt.Errorf("loading %s: %w", ten, err)
			}
			paths := services[:2]
			switch {
			case hasBalancer(ten) && hasTCNAT(ten): // both paths
			case hasBalancer(ten):
				paths = services[:1] // the balancer serves pod → ClusterIP only
			case hasTCNAT(ten):
				paths = services[1:2] // the tc NAT serves external → NodePort only
			}
			arms = append(arms, &arm{ruleset: ten, paths: paths, tables: nftTables(ten)})
			if err := b.activate(ctx, arms, nil); err != nil {
				return err
			}
		}
	}
	if err := b.rounds(ctx, o, arms, tput, res); err != nil {
		return err
	}
	if err := b.activate(ctx, arms, nil); err != nil {
		return err
	}
	for _, a := range arms[1:] {
		if err := b.unload(ctx, a.ruleset); err != nil {
			return err
		}
	}

	// Phase 2: iptables-legacy, whose tables cannot be switched off.
	for _, rs := range o.Rulesets {
		if rs != IPTablesLegacy {
			continue
		}
		loaded, err := b.loadLogged(ctx, o, n, rs, res)
		if err != nil {
			return err
		}
		if !loaded {
			continue
		}
		if err := b.rounds(ctx, o, []*arm{{ruleset: rs, paths: services}}, tput, res); err != nil {
			return err
		}
		if err := b.unload(ctx, rs); err != nil {
			return err
		}
	}
	return nil
}

// nftTables returns the nftables tables a switchable ruleset consists of
// (none for None and IPTablesLegacy).
func nftTables(ruleset string) []string {
	if v, ok := variants[ruleset]; ok {
		return []string{"ip " + v.table, "ip6 " + v.table}
	}
	switch ruleset {
	case Floor:
		return []string{"ip " + floorTable}
	case IPTablesNFT:
		return []string{"ip nat", "ip filter"}
	}
	return nil
}

// arm is a ruleset with the paths measured under it.
type arm struct {
	ruleset string
	paths   []path
	tables  []string // nftables tables; empty for None
	points  []int    // indexes in Results.Points, per path
	tputs   []int    // indexes in Results.Throughputs, per path
}

// activate makes on's tables live and every other arm's dormant (on nil:
// all dormant), in one transaction.
func (b *bed) activate(ctx context.Context, arms []*arm, on *arm) error {
	var script strings.Builder
	for _, a := range arms {
		for _, t := range a.tables {
			if a == on {
				fmt.Fprintf(&script, "add table %s { }\n", t)
			} else {
				fmt.Fprintf(&script, "add table %s { flags dormant; }\n", t)
			}
		}
	}
	if script.Len() == 0 {
		return nil
	}
	_, err := b.nft.Run(ctx, script.String())
	if err != nil {
		return fmt.Errorf("switching rulesets: %w", err)
	}
	if on != nil && hasTCNAT(on.ruleset) {
		if err := b.attachTCNAT(on.ruleset); err != nil {
			return err
		}
	} else if err := b.detachTCNAT(); err != nil {
		return err
	}
	if on != nil && hasBalancer(on.ruleset) {
		return b.attach(on.ruleset)
	}
	return b.detach()
}

// attachTCNAT attaches ruleset's tc NAT to node-a's interfaces and fills
// it: the same work as an agent's first sync.
func (b *bed) attachTCNAT(ruleset string) error {
	if b.tcNAT != nil && b.tcAttached == ruleset {
		return nil
	}
	if err := b.detachTCNAT(); err != nil {
		return err
	}
	st := b.tcStates[ruleset]
	if _, ok := st.DirectPodCIDR(); ok {
		// Direct delivery reaches the pods node-a's neighbour table
		// knows (on a running node: kubelet's probes, routed replies).
		addrs := []netip.Addr{b.cli.Addr}
		for _, p := range b.servers {
			addrs = append(addrs, p.Addr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := topo.Meet(ctx, &b.node.Host, addrs)
		cancel()
		if err != nil {
			return err
		}
	}
	nat, err := tcnat.Open(tcnat.Options{PortRange: st.Config.TCNATPorts})
	if err != nil {
		return err
	}
	err = topo.InNS(b.node.NS, func() error {
		if err := nat.Attach(st.NodeAddrs(model.IPv4)); err != nil {
			return err
		}
		return nat.Update(st, model.Delta{Full: true})
	})
	if err != nil {
		nat.Close()
		return err
	}
	b.tcNAT, b.tcAttached = nat, ruleset
	return nil
}

// detachTCNAT removes the tc NAT's programs from node-a's interfaces.
func (b *bed) detachTCNAT() error {
	if b.tcNAT == nil {
		return nil
	}
	err := topo.InNS(b.node.NS, func() error {
		_, err := tcnat.Cleanup("")
		return err
	})
	err = errors.Join(err, b.tcNAT.Close())
	b.tcNAT = nil
	return err
}

// attach attaches ruleset's balancer to the benchmark's cgroup and fills
// it: the same work as an agent's first sync.
func (b *bed) attach(ruleset string) error {
	if b.balancer != nil && b.attached == ruleset {
		return nil
	}
	if err := b.detach(); err != nil {
		return err
	}
	lb, err := socketlb.Open(socketlb.Options{Cgroup: b.cgroup})
	if err != nil {
		return err
	}
	if err := lb.Update(b.slbStates[ruleset], model.Delta{Full: true}); err != nil {
		lb.Close()
		return err
	}
	b.balancer, b.attached = lb, ruleset
	return nil
}

// detach detaches the balancer (it is not pinned: closing it detaches it).
func (b *bed) detach() error {
	if b.balancer == nil {
		return nil
	}
	err := b.balancer.Close()
	b.balancer = nil
	return err
}

// rounds measures every arm's paths once per repeat (connect loops, then
// throughput when tput is set).
func (b *bed) rounds(ctx context.Context, o Options, arms []*arm, tput bool, res *Results) error {
	for _, a := range arms {
		for _, p := range a.paths {
			res.Points = append(res.Points, Point{Ruleset: a.ruleset, Path: p.name, Services: b.n})
			a.points = append(a.points, len(res.Points)-1)
			if tput && p.bulk.IsValid() && (p.name != PodToPodIP || a.ruleset == None) && !IsTen(a.ruleset) {
				res.Throughputs = append(res.Throughputs, Throughput{Ruleset: a.ruleset, Path: p.name, Services: b.n})
				a.tputs = append(a.tputs, len(res.Throughputs)-1)
			} else {
				a.tputs = append(a.tputs, -1)
			}
		}
	}
	switchable := len(arms) > 1 || len(arms[0].tables) > 0
	for r := range o.Repeats {
		for _, a := range arms {
			if switchable {
				if err := b.activate(ctx, arms, a); err != nil {
					return err
				}
			}
			for i, p := range a.paths {
				if err := b.flushConntrack(ctx, a.ruleset); err != nil {
					return err
				}
				cr, err := loadgen.ConnectLoop(ctx, p.from, p.dsts, o.Warmup, o.Duration)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", a.ruleset, p.name, err)
				}
				s := Sample{Rate: cr.Rate(), P50: int64(cr.Percentile(50)), P99: int64(cr.Percentile(99)),
					Max: int64(cr.Percentile(100)), Slow: cr.Slow,
					Conns: cr.Connections, Errors: cr.Errors, Load: loadAvg(), Conntrack: b.conntrackCount(ctx, a.ruleset)}
				res.Points[a.points[i]].Samples = append(res.Points[a.points[i]].Samples, s)
				o.Log("datapath N=%d %s, %s #%d: %.0f conn/s, p50 %v, p99 %v, max %v (%d > 100 ms), errors %d, conntrack %d, load %.2f",
					b.n, a.ruleset, p.name, r+1, s.Rate, time.Duration(s.P50), time.Duration(s.P99), time.Duration(s.Max), s.Slow,
					s.Errors, s.Conntrack, s.Load)
			}
		}
	}
	if !tput {
		return nil
	}
	for range o.Repeats {
		for _, a := range arms {
			if switchable {
				if err := b.activate(ctx, arms, a); err != nil {
					return err
				}
			}
			for i, p := range a.paths {
				if a.tputs[i] < 0 {
					continue
				}
				bps, err := loadgen.Throughput(ctx, p.from, p.bulk, o.Warmup, o.ThroughputDuration)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", a.ruleset, p.name, err)
				}
				res.Throughputs[a.tputs[i]].Samples = append(res.Throughputs[a.tputs[i]].Samples, bps)
				o.Log("datapath N=%d %s, %s: %.2f Gbit/s", b.n, a.ruleset, p.name, bps*8/1e9)
			}
		}
	}
	return nil
}

// conntrackCount returns the number of connections the node of ruleset's
// paths tracks, -1 when unknown.
func (b *bed) conntrackCount(ctx context.Context, ruleset string) int {
	node := b.node
	if ruleset == None {
		node = b.bare
	}
	out, err := nsrun.Exec(ctx, node.NS, nil, "conntrack", "-C")
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		return -1
	}
	return n
}

// setup tunes the clients and servers for connect loops (wide source port
// ranges, long accept queues) and routes the external client to node-b's
// pods through node-b (the no-ruleset baseline).
func (b *bed) setup(ctx context.Context) error {
	for _, p := range []*topo.Pod{b.cli, b.c.Pod("cli-b")} {
		if err := b.c.SetSysctls(ctx, &p.Host, map[string]string{"net/ipv4/ip_local_port_range": "1024 65535"}); err != nil {
			return err
		}
	}
	if err := b.c.SetSysctls(ctx, b.c.Client, map[string]string{"net/ipv4/ip_local_port_range": "1024 65535"}); err != nil {
		return err
	}
	for _, p := range append(b.bareServers(), b.servers...) {
		if err := b.c.SetSysctls(ctx, &p.Host, map[string]string{
			"net/core/somaxconn": "65535", "net/ipv4/tcp_max_syn_backlog": "65535",
		}); err != nil {
			return err
		}
	}
	return b.c.AddRoute(ctx, b.c.Client, b.bare.PodCIDR, b.bare.Addr)
}

// path is where a client connects: dsts for connect loops (one picked at
// random for each connection when there are several), bulk for the
// throughput flow (none when invalid).
type path struct {
	name string
	from *topo.Host
	dsts []netip.AddrPort
	bulk netip.AddrPort
}

// bareServers returns node-b's server pods: srv-b, then srv-b2 … srv-b5.
func (b *bed) bareServers() []*topo.Pod {
	out := []*topo.Pod{b.c.Pod("srv-b")}
	for i := 2; i <= servers; i++ {
		out = append(out, b.c.Pod(fmt.Sprintf("srv-b%d", i)))
	}
	return out
}

// flushConntrack empties the connection tracking table of the node of
// ruleset's paths, so that every loop starts from the same state.
func (b *bed) flushConntrack(ctx context.Context, ruleset string) error {
	node := b.node
	if ruleset == None {
		node = b.bare
	}
	out, err := nsrun.Exec(ctx, node.NS, nil, "conntrack", "-F")
	if err != nil && !strings.Contains(out, "flushed") {
		return err
	}
	return nil
}

// loadLogged loads a ruleset for n Services, records its load in res and
// logs it. It returns false (and no error) when the ruleset could not be
// loaded, so the run goes on without it; an error only when ctx ended.
func (b *bed) loadLogged(ctx context.Context, o Options, n int, ruleset string, res *Results) (bool, error) {
	o.Log("datapath N=%d: loading %s", n, ruleset)
	load, err := b.load(ctx, o, ruleset)
	res.Loads = append(res.Loads, load)
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		o.Log("datapath N=%d: %s not loaded: %v", n, ruleset, err)
		return false, nil
	}
	o.Log("datapath N=%d: %s loaded in %.2fs", n, ruleset, load.Seconds)
	return true, nil
}

// load programs ruleset on node-a and returns what it cost.
func (b *bed) load(ctx context.Context, o Options, ruleset string) (Load, error) {
	l := Load{Ruleset: ruleset, Services: b.n}
	lctx, cancel := context.WithTimeout(ctx, o.LoadTimeout)
	defer cancel()
	start := time.Now()
	var err error
	v, isKubenat := variants[ruleset]
	switch {
	case isKubenat:
		err = b.loadKubenat(lctx, ruleset, v)
	case ruleset == Floor:
		_, err = b.nft.Run(lctx, b.floorScript())
	case ruleset == IPTablesNFT || ruleset == IPTablesLegacy:
		var script bytes.Buffer
		kp := kubeProxyServices(b.objs)
		l.Rules = kubeproxy.Rules(kp)
		if err = kubeproxy.Write(&script, kp, topo.ClusterCIDR); err == nil {
			start = time.Now()
			_, err = nsrun.Exec(lctx, b.node.NS, &script, ruleset+"-restore")
		}
	default:
		err = fmt.Errorf("unknown ruleset %q", ruleset)
	}
	if err != nil {
		if lctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("not loaded within %v", o.LoadTimeout)
		}
		l.Error = err.Error()
		return l, err
	}
	l.Seconds = time.Since(start).Seconds()
	return l, nil
}

// config is kubenat's configuration for node-a. LocalAddrs are node-a's
// addresses, as the agent would read them: untracked pod TCP keeps the
// replies to them (to masqueraded NodePort connections) tracked.
func (b *bed) config() model.Config {
	return model.Config{NodeName: b.node.Name, ClusterCIDRs: []netip.Prefix{topo.ClusterCIDR},
		LocalAddrs: []netip.Addr{b.node.Addr, b.node.Gateway}}
}

// loadKubenat builds kubenat's State for v (the benchmark's Services, or
// the target and 10 others for a reference) and programs its nftables
// ruleset on node-a; a balancer's State is kept for attach.
func (b *bed) loadKubenat(ctx context.Context, ruleset string, v variant) error {
	objs := b.objs
	if v.ten {
		var err error
		if objs, err = objects(10, b.servers); err != nil {
			return err
		}
	}
	cfg := b.config()
	cfg.SocketLB, cfg.UntrackPodTCP, cfg.TCNATPodToPod = v.balancer, v.untrack, v.podToPod
	if v.tcNAT {
		cfg.TCNAT = true
		err := topo.InNS(b.node.NS, func() (err error) {
			cfg.TCNATPorts, err = tcnat.FreePorts()
			return err
		})
		if err != nil {
			return err
		}
	}
	mb := model.NewBuilder(cfg)
	mb.SetNode(k8sobj.Node(b.node.Name, []string{b.node.Addr.String()}, []string{b.node.PodCIDR.String()}), "bench")
	for _, s := range objs.Services {
		mb.SetService(s, "bench")
	}
	for _, s := range objs.EndpointSlices {
		mb.SetEndpointSlice(s, "bench")
	}
	st, d := mb.Build()
	if len(st.Errors) > 0 {
		return fmt.Errorf("the benchmark's objects are invalid: %v", st.Errors[0])
	}
	if v.balancer {
		if b.slbStates == nil {
			b.slbStates = map[string]*model.State{}
		}
		b.slbStates[ruleset] = st
	}
	if v.tcNAT {
		if b.tcStates == nil {
			b.tcStates = map[string]*model.State{}
		}
		b.tcStates[ruleset] = st
	}
	_, err := nftables.New(b.nft, nftables.Options{Table: v.table}).Sync(ctx, st, d)
	return err
}

// unload removes ruleset from node-a.
func (b *bed) unload(ctx context.Context, ruleset string) error {
	if v, ok := variants[ruleset]; ok {
		var err error
		if v.balancer {
			delete(b.slbStates, ruleset)
			err = b.detach()
		}
		if v.tcNAT {
			delete(b.tcStates, ruleset)
			if b.tcAttached == ruleset {
				err = errors.Join(err, b.detachTCNAT())
			}
		}
		_, cerr := nftables.Cleanup(ctx, b.nft, nftables.Options{Table: v.table})
		return errors.Join(err, cerr)
	}
	switch ruleset {
	case Floor:
		_, err := b.nft.Run(ctx, "add table ip "+floorTable+"\ndelete table ip "+floorTable+"\n")
		return err
	case IPTablesNFT:
		// iptables-nft keeps its rules in these nftables tables.
		_, err := nsrun.Exec(ctx, b.node.NS, strings.NewReader(
			"add table ip nat\ndelete table ip nat\nadd table ip filter\ndelete table ip filter\n"), "nft", "-f", "-")
		return err
	case IPTablesLegacy:
		// Legacy tables cannot be unregistered: empty them. Later rulesets
		// at this size see empty legacy nat and filter tables (their hooks
		// cost a few ns per packet); IPTablesLegacy comes last by default.
		_, err := nsrun.Exec(ctx, b.node.NS, strings.NewReader("*nat\nCOMMIT\n*filter\nCOMMIT\n"), "iptables-legacy-restore")
		return err
	}
	return nil
}

// floorTable is the table of the Floor ruleset.
const floorTable = "benchfloor"

// floorScript returns the Floor ruleset: DNAT of the target ClusterIP and
// NodePorts to the servers at random, and masquerade of the NodePort
// traffic.
func (b *bed) floorScript() string {
	pick := func(port int) string {
		var m strings.Builder
		for i, p := range b.servers {
			if i > 0 {
				m.WriteString(", ")
			}
			fmt.Fprintf(&m, "%d : %s . %d", i, p.Addr, port)
		}
		return fmt.Sprintf("dnat ip to numgen random mod %d map { %s }", len(b.servers), m.String())
	}
	var rules strings.Builder
	for _, r := range []struct{ port, nodePort, target int }{
		{servicePort, targetNodePort, serverPort}, {bulkPort, bulkNodePort, bulkServerPort},
	} {
		fmt.Fprintf(&rules, "\t\tip daddr %s tcp dport %d %s\n", targetVIP, r.port, pick(r.target))
		fmt.Fprintf(&rules, "\t\tip daddr %s tcp dport %d meta mark set 0x4000 %s\n", b.node.Addr, r.nodePort, pick(r.target))
	}
	return fmt.Sprintf(`table ip %s {
	chain pre {
		type nat hook prerouting priority -100; policy accept;
%s	}
	chain post {
		type nat hook postrouting priority 100; policy accept;
		meta mark 0x4000 masquerade fully-random
	}
}
`, floorTable, rules.String())
}

// objects returns n other Services (1 to 5 endpoints each, every 20th a
// NodePort Service) followed by the target Service, whose 5 endpoints are
// the server pods.
func objects(n int, srv []*topo.Pod) (*workload.Cluster, error) {
	c, err := workload.Generate(workload.Spec{Services: n, EndpointsCycle: 5, NodePortEvery: 20, NodeName: "node-a"})
	if err != nil {
		return nil, err
	}
	svc := workload.NewService("target", netip.MustParseAddr(targetVIP), servicePort, serverPort, targetNodePort)
	svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: "bulk", Protocol: v1.ProtocolTCP,
		Port: bulkPort, TargetPort: intstr.FromInt32(bulkServerPort), NodePort: bulkNodePort})
	var eps []workload.Endpoint
	for _, p := range srv {
		eps = append(eps, workload.Endpoint{Addr: p.Addr, Node: "node-a", Ready: true})
	}
	sl := workload.NewSlice("target-0", "target", serverPort, eps)
	name, proto, port := "bulk", v1.ProtocolTCP, int32(bulkServerPort)
	sl.Ports = append(sl.Ports, discovery.EndpointPort{Name: &name, Protocol: &proto, Port: &port})
	c.Services = append(c.Services, svc)
	c.SlicesOf = append(c.SlicesOf, []int{len(c.EndpointSlices)})
	c.EndpointSlices = append(c.EndpointSlices, sl)
	return c, nil
}

// kubeProxyServices converts the generated objects, in order, for the
// kube-proxy renderer: one entry per Service port.
func kubeProxyServices(c *workload.Cluster) []kubeproxy.Service {
	out := make([]kubeproxy.Service, 0, len(c.Services))
	for i, svc := range c.Services {
		for _, p := range svc.Spec.Ports {
			s := kubeproxy.Service{
				Namespace: svc.Namespace, Name: svc.Name, Port: p.Name,
				ClusterIP:   netip.MustParseAddr(svc.Spec.ClusterIP),
				ServicePort: uint16(p.Port), NodePort: uint16(p.NodePort),
			}
			for _, j := range c.SlicesOf[i] {
				sl := c.EndpointSlices[j]
				for _, sp := range sl.Ports {
					if sp.Name == nil || *sp.Name != p.Name || sp.Port == nil {
						continue
					}
					for _, ep := range sl.Endpoints {
						if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
							continue
						}
						s.Endpoints = append(s.Endpoints, netip.AddrPortFrom(netip.MustParseAddr(ep.Addresses[0]), uint16(*sp.Port)))
					}
				}
			}
			out = append(out, s)
		}
	}
	return out
}

// loadAvg returns the 1-minute load average, 0 when unknown.
func loadAvg() float64 {
	out, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	fmt.Sscanf(string(out), "%f", &l)
	return l
}
