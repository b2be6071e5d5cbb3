// Package nftables is kubenat's nftables datapath: it renders a model.State
// into one table per address family ("ip kubenat", "ip6 kubenat") and keeps
// the kernel in step with the State through small atomic transactions.
//
// The shape of the ruleset is what makes it fast at 50,000 Services: the
// chains are static (a handful of rules that never depend on the number of
// Services) and every Service is data, as elements of named sets and maps
// keyed by "destination address . protocol . destination port". Packets pay
// a constant number of hash lookups whatever the number of Services, and a
// change to one Service is a few element additions and deletions: no rule is
// rewritten, so the kernel does not re-validate the table's jump graph.
//
// Endpoint choice: the endpoints of a frontend are the elements
// "frontend . i : endpoint" (i = 0..N-1) of the map backends-N, and the
// chain lb-N picks `numgen random mod N` in it: equal probability, one hash
// lookup, no per-Service chain or anonymous set (which the kernel loads in
// quadratic time). The lb chain jumps to each lb-N in use in turn, so a new
// connection costs one lookup per distinct endpoint count, never per
// Service.
//
// A full sync never sends every element in one transaction: see
// Backend.fullSync (groups of Services, and standby tables when the tables
// exist).
//
// ClientIP session affinity is the exception: a Service port with affinity
// gets a chain per endpoint group and a dynamic set of client addresses per
// endpoint (as kube-proxy does), reached through the verdict maps
// affinity-services and affinity-local-services. Affinity Services are few;
// only they pay for rule changes, and the kernel's validation of jumps walks
// only their chains, never the data maps.
package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/nft"
)

// DefaultTable is the name of the tables kubenat owns.
const DefaultTable = "kubenat"

// DefaultMasqueradeMark is the packet mark bit that asks for masquerade
// (the bit kube-proxy uses).
const DefaultMasqueradeMark = 0x4000

// DefaultPodEgressMark is the packet mark bit that, with the pods detected
// by their interface, carries "from a pod of this node" from the forward
// hook (where the input interface is known) to postrouting (where the
// egress masquerade is decided). Not 0x8000: older kubelets drop packets
// that carry it (KUBE-FIREWALL).
const DefaultPodEgressMark = 0x2000

// Options configure the renderer.
type Options struct {
	// Table is the table name in both families; default DefaultTable.
	Table string
	// MasqueradeMark is the mark bit; default DefaultMasqueradeMark.
	MasqueradeMark uint32
	// PodEgressMark is the mark bit of pod egress when the pods are
	// detected by their interface; default DefaultPodEgressMark.
	PodEgressMark uint32
	// AffinitySize bounds each endpoint's set of affine clients; default
	// 65535.
	AffinitySize int
	// InitialChunk is the number of elements one transaction adds when
	// the tables are created from scratch (see Backend); default
	// DefaultInitialChunk; negative programs them in one transaction.
	InitialChunk int
	// InUse, when set, returns the TCP endpoints inside cidr (a cluster
	// CIDR; it is asked once per family) that hold connections the rules DNATed from pods
	// without masquerade (from conntrack: see conntrack.Cleaner.DNATed).
	// With pod-to-pod TCP untracked, an endpoint no Service wants in
	// tracked-endpoints any more (the Service was deleted, lost its
	// affinity, its endpoint was relabelled...) stays there, held: the
	// replies of such connections still need their reverse translation.
	// Backend.ReleaseHolds lets go of the held endpoints InUse does not
	// name. A full sync holds every endpoint InUse names (after a restart
	// what the kernel held is not known). Nil: endpoints leave at once.
	// Not used by Render.
	InUse func(ctx context.Context, cidr netip.Prefix) (map[netip.AddrPort]bool, error)
	// CountRules counts the rules of a chain in the kernel, for
	// Backend.Intact; default nft.ChainRules. Not used by Render.
	CountRules func(family, table, chain string) (int, error)
}

// DefaultInitialChunk is the default Options.InitialChunk: about 1,100
// Services of 5 endpoints, ~370 KB of script. Smaller groups hold less of
// libnftables' memory at a time (50,000 × 5 peak RSS: 503 MiB at 20,000,
// 461 MiB at 10,000, 457 MiB at 5,000) for the same total time.
const DefaultInitialChunk = 10000

func (o Options) withDefaults() Options {
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if o.MasqueradeMark == 0 {
		o.MasqueradeMark = DefaultMasqueradeMark
	}
	if o.PodEgressMark == 0 {
		o.PodEgressMark = DefaultPodEgressMark
	}
	if o.AffinitySize == 0 {
		o.AffinitySize = 65535
	}
	if o.InitialChunk == 0 {
		o.InitialChunk = DefaultInitialChunk
	}
	if o.CountRules == nil {
		o.CountRules = nft.ChainRules
	}
	return o
}

// fam holds the nft spellings of one address family.
type fam struct {
	f        model.Family
	name     string // table family: "ip" or "ip6"
	addrType string // "ipv4_addr" or "ipv6_addr"
	saddr    string // "ip saddr"
	daddr    string // "ip daddr"
}

var families = []fam{
	{model.IPv4, "ip", "ipv4_addr", "ip saddr", "ip daddr"},
	{model.IPv6, "ip6", "ipv6_addr", "ip6 saddr", "ip6 daddr"},
}

func famOf(f model.Family) fam {
	if f == model.IPv6 {
		return families[1]
	}
	return families[0]
}

// Names of the sets and maps, and what their elements mean.
const (
	setLocalPodCIDRs    = "local-pod-cidrs"      // sources that are pods on this node
	setClusterCIDRs     = "cluster-cidrs"        // sources that are pods (egress)
	setNoMasqCIDRs      = "no-masquerade-cidrs"  // egress destinations reached without SNAT
	setClusterIPs       = "cluster-ips"          // every ClusterIP (unknown ports are rejected)
	setClusterIPFronts  = "clusterip-frontends"  // ClusterIP . proto . port
	setExternalFronts   = "external-frontends"   // external frontends, externalTrafficPolicy Cluster
	setLocalFronts      = "local-frontends"      // external frontends, externalTrafficPolicy Local
	setRejectFronts     = "reject-frontends"     // frontends of ports without endpoints
	setDropFronts       = "drop-frontends"       // internalTrafficPolicy Local, no local endpoint
	setLocalDropFronts  = "local-drop-frontends" // externalTrafficPolicy Local, no local endpoint
	setFirewallFronts   = "firewall-frontends"   // LoadBalancer frontends with source ranges
	setFirewallAllow    = "firewall-allow"       // frontend . admitted source range
	setHairpin          = "hairpin"              // local endpoint . itself
	setTrackedEndpoints = "tracked-endpoints"    // TCP endpoints pod traffic may reach through DNAT (socket LB)
	setNodeAddrs        = "node-addrs"           // this node's addresses in the untracked CIDR (socket LB)
	setServiceCIDRs     = "service-cidrs"        // ranges of ClusterIPs: dropped when no DNAT took them

	chainUntracked      = "raw-prerouting"    // the untracked chain (see fam.untrackedChain)
	mapAffinitySvcs     = "affinity-services" // frontend → goto its affinity chain
	mapAffinityLocal    = "affinity-local-services"
	backendsPrefix      = "backends-"       // backends-N: frontend [. i] → endpoint
	localBackendsPrefix = "local-backends-" // the same, for externalTrafficPolicy Local from outside
)

// frontendType is the key type of frontend sets.
func (a fam) frontendType() string {
	return a.addrType + " . inet_proto . inet_service"
}

// setDecl returns the declaration body (type and flags) of a set or map.
func (a fam) setDecl(name string, o Options) string {
	switch {
	case name == setLocalPodCIDRs || name == setClusterCIDRs || name == setNoMasqCIDRs || name == setServiceCIDRs:
		return "type " + a.addrType + "; flags interval;"
	case name == setClusterIPs || name == setNodeAddrs:
		return "type " + a.addrType + ";"
	case name == setFirewallAllow:
		return "type " + a.frontendType() + " . " + a.addrType + "; flags interval;"
	case name == setHairpin:
		return "type " + a.addrType + " . " + a.addrType + ";"
	case name == setTrackedEndpoints:
		return "type " + a.addrType + " . inet_service;"
	case name == mapAffinitySvcs || name == mapAffinityLocal:
		return "type " + a.frontendType() + " : verdict;"
	case strings.HasPrefix(name, backendsPrefix) || strings.HasPrefix(name, localBackendsPrefix):
		n := mapSize(name)
		if n == 1 {
			return "type " + a.frontendType() + " : " + a.addrType + " . inet_service;"
		}
		return fmt.Sprintf("typeof %s . meta l4proto . th dport . numgen random mod %d : %s . th dport;", a.daddr, n, a.daddr)
	default: // frontend sets
		return "type " + a.frontendType() + ";"
	}
}

// affinitySetDecl declares an endpoint's set of affine clients.
func (a fam) affinitySetDecl(o Options) string {
	return fmt.Sprintf("type %s; size %d; flags dynamic,timeout;", a.addrType, o.AffinitySize)
}

// staticSets lists the sets every table has, in rendering order.
var staticSets = []string{
	setLocalPodCIDRs, setClusterCIDRs, setNoMasqCIDRs, setClusterIPs,
	setClusterIPFronts, setExternalFronts, setLocalFronts,
	setRejectFronts, setDropFronts, setLocalDropFronts,
	setFirewallFronts, setFirewallAllow, setHairpin, setTrackedEndpoints, setNodeAddrs, setServiceCIDRs,
	mapAffinitySvcs, mapAffinityLocal,
}

func backendsMap(local bool, n int) string {
	if local {
		return fmt.Sprintf("%s%d", localBackendsPrefix, n)
	}
	return fmt.Sprintf("%s%d", backendsPrefix, n)
}

// mapSize returns N of backends-N / local-backends-N.
func mapSize(name string) int {
	var n int
	s := strings.TrimPrefix(strings.TrimPrefix(name, localBackendsPrefix), backendsPrefix)
	fmt.Sscanf(s, "%d", &n)
	return n
}

// chain is a chain's declaration and rules.
type chain struct {
	name  string
	hook  string // "type filter hook prerouting priority -110; policy accept;" for base chains
	rules []string
}

// dynamic is what the variable chains depend on: the backends maps in use.
type dynamic struct {
	backends      []int // N of each backends-N map, ascending
	localBackends []int
}

// modes are the configuration choices the chains depend on.
type modes struct {
	masqueradeAll bool
	// untrack4 and untrack6 are the cluster CIDRs whose pod-to-pod TCP
	// the family's untracked chain leaves untracked; the zero Prefix when
	// the family has no such chain (model.State.UntrackActive is false,
	// or no cluster CIDR of that family).
	untrack4, untrack6 netip.Prefix
	// local is how packets from this node's pods are recognized.
	local model.LocalDetect
	// svcCIDRs4 and svcCIDRs6 say the family has Service CIDRs, whose
	// addresses no DNAT took are dropped after DNAT.
	svcCIDRs4, svcCIDRs6 bool
	// masqLo and masqHi are the source ports IPv4 Service masquerade
	// keeps to (model.Config.MasqueradePorts); zero: any.
	masqLo, masqHi uint16
}

func modesOf(st *model.State) modes {
	m := modes{masqueradeAll: st.Config.MasqueradeAll, local: st.Config.LocalDetect}
	for _, p := range st.ServiceCIDRs {
		if model.FamilyOf(p.Addr()) == model.IPv4 {
			m.svcCIDRs4 = true
		} else {
			m.svcCIDRs6 = true
		}
	}
	m.untrack4, _ = st.UntrackedCIDR(model.IPv4)
	m.untrack6, _ = st.UntrackedCIDR(model.IPv6)
	m.masqLo, m.masqHi, _ = st.Config.MasqueradePorts()
	return m
}

// masqPorts returns the source ports family f's Service masquerade keeps
// to, and false when any will do (the tc NAT, IPv4 only, is off).
func (m modes) masqPorts(f model.Family) (lo, hi uint16, ok bool) {
	return m.masqLo, m.masqHi, f == model.IPv4 && m.masqLo != 0
}

// svcCIDRs reports whether family f has Service CIDRs (see modes).
func (m modes) svcCIDRs(f model.Family) bool {
	if f == model.IPv6 {
		return m.svcCIDRs6
	}
	return m.svcCIDRs4
}

// untrack returns the family's untracked CIDR (see modes).
func (m modes) untrack(f model.Family) netip.Prefix {
	if f == model.IPv6 {
		return m.untrack6
	}
	return m.untrack4
}

// withoutUntracked returns m without untracked chains.
func (m modes) withoutUntracked() modes {
	m.untrack4, m.untrack6 = netip.Prefix{}, netip.Prefix{}
	return m
}

// untrackedChain is the chain that skips conntrack for TCP between pods
// of the cluster CIDR cidr when no rule can have translated it (see
// model.State.TrackedEndpoints): not to or from an endpoint kept tracked,
// and not to an address of this node (node-addrs: the replies of
// masqueraded traffic, e.g. a NodePort connection SNATed to the bridge
// address). Each family's table has its own. A full sync adds it last, once tracked-endpoints
// and node-addrs are complete (see Backend.fill).
//
// Its rule runs for every packet that enters the node, so it is ordered
// and written for cost: the CIDR is matched inline (a mask and a compare;
// the cluster-cidrs interval set costs a tree lookup per address), and
// the node-address and tracked-endpoint checks (hash lookups) come only
// for pod-to-pod TCP. node-addrs replaces "fib daddr type local", a
// routing lookup that cost more than both tracked-endpoint lookups
// (docs/benchmarks.md); it is only as good as model.Config.LocalAddrs,
// which the agent keeps in step with the node's interfaces. A new CIDR
// changes the modes, which makes the next sync full.
func (a fam) untrackedChain(cidr netip.Prefix) chain {
	return chain{name: chainUntracked, hook: "type filter hook prerouting priority raw; policy accept;",
		rules: []string{fmt.Sprintf("meta l4proto tcp %s %s %s %s %s != @%s "+
			"%s . tcp sport != @%s %s . tcp dport != @%s notrack",
			a.saddr, cidr, a.daddr, cidr, a.daddr, setNodeAddrs,
			a.saddr, setTrackedEndpoints, a.daddr, setTrackedEndpoints)}}
}

// fromLocalPod returns the match for packets from this node's pods
// (model.Config.LocalDetect), or with not for the others: a source in
// local-pod-cidrs, or an input interface. The interface match is valid
// in prerouting and input only; output has no input interface (iifname
// is empty there), so its packets are never from a local pod.
func (a fam) fromLocalPod(m modes, not bool) string {
	op := ""
	if not {
		op = "!= "
	}
	switch m.local.Mode {
	case model.DetectBridgeInterface:
		return fmt.Sprintf("iifname %s%q", op, m.local.Interface)
	case model.DetectInterfacePrefix:
		return fmt.Sprintf("iifname %s%q", op, m.local.Interface+"*")
	}
	return fmt.Sprintf("%s %s@%s", a.saddr, op, setLocalPodCIDRs)
}

// chains returns the table's chains. They depend on the configuration and
// on which maps exist, never on the number of Services.
func (a fam) chains(o Options, m modes, d dynamic) []chain {
	key := a.daddr + " . meta l4proto . th dport"
	mark := fmt.Sprintf("meta mark set meta mark | 0x%x", o.MasqueradeMark)
	var cs []chain

	if cidr := m.untrack(a.f); cidr.IsValid() {
		cs = append(cs, a.untrackedChain(cidr))
	}
	cs = append(cs,
		chain{name: "filter-prerouting", hook: "type filter hook prerouting priority -110; policy accept;",
			rules: []string{"ct state new jump filter-services"}},
		chain{name: "filter-output", hook: "type filter hook output priority -110; policy accept;",
			rules: []string{"ct state new jump filter-services"}},
		chain{name: "filter-services", rules: []string{
			fmt.Sprintf("%s @%s %s . %s != @%s drop", key, setFirewallFronts, key, a.saddr, setFirewallAllow),
			fmt.Sprintf("%s @%s goto refuse", key, setRejectFronts),
			fmt.Sprintf("%s @%s drop", key, setDropFronts),
			fmt.Sprintf("%s @%s fib saddr type != local %s drop", key, setLocalDropFronts, a.fromLocalPod(m, true)),
			// Another Service's externalIP may be a ClusterIP's address.
			fmt.Sprintf("%s @%s %s != @%s %s != @%s %s != @%s goto refuse", a.daddr, setClusterIPs, key, setClusterIPFronts,
				key, setExternalFronts, key, setLocalFronts),
		}},
		chain{name: "refuse", rules: []string{"meta l4proto tcp reject with tcp reset", "reject"}},
	)

	// nat-services classifies the frontend (one lookup per frontend set,
	// up to the set that holds it: every frontend is in exactly one);
	// traffic to anything else leaves at once (no walk through lb).
	svc := []string{
		fmt.Sprintf("%s @%s goto nat-clusterip", key, setClusterIPFronts),
		fmt.Sprintf("%s @%s %s goto lb", key, setExternalFronts, mark),
		fmt.Sprintf("%s @%s goto external-local", key, setLocalFronts),
	}
	clusterIP := []string{fmt.Sprintf("%s goto lb", mark)}
	if !m.masqueradeAll {
		clusterIP = []string{
			fmt.Sprintf("%s %s goto lb", a.fromLocalPod(m, true), mark),
			fmt.Sprintf("fib saddr type local %s goto lb", mark),
			"goto lb",
		}
	}
	// Pod egress is masqueraded in postrouting, after any DNAT, when its
	// destination is outside no-masq-cidrs. By CIDR the source says it is
	// pod traffic. By interface, postrouting knows no input interface: the
	// forward hook marks a new connection's first packet from a pod
	// (after routing, so the mark steers no routing decision, and never
	// on packets delivered to the node), and every postrouting rule that
	// can see the mark clears it.
	// egress and hairpin are the matches (and mark changes) of their
	// masquerade rules; the statement comes in postrouting.
	egress := fmt.Sprintf("%s @%s %s != @%s", a.saddr, setClusterCIDRs, a.daddr, setNoMasqCIDRs)
	hairpin := fmt.Sprintf("ct status dnat %s . %s @%s", a.saddr, a.daddr, setHairpin)
	clear := ^o.MasqueradeMark
	if m.local.ByInterface() {
		cs = append(cs, chain{name: "filter-forward", hook: "type filter hook forward priority -110; policy accept;",
			rules: []string{fmt.Sprintf("ct state new %s meta mark set meta mark | 0x%x", a.fromLocalPod(m, false), o.PodEgressMark)}})
		unmark := fmt.Sprintf("meta mark set meta mark & 0x%x", ^o.PodEgressMark)
		egress = fmt.Sprintf("meta mark & 0x%x == 0x%x %s %s != @%s",
			o.PodEgressMark, o.PodEgressMark, unmark, a.daddr, setNoMasqCIDRs)
		hairpin = fmt.Sprintf("ct status dnat %s . %s @%s %s", a.saddr, a.daddr, setHairpin, unmark)
		clear &^= o.PodEgressMark
	}
	// The DNAT chains run just before the usual NAT priority (dstnat,
	// -100) of kube-proxy, Docker and CNI port maps: the first chain that
	// translates a connection decides it, and at equal priority the kernel
	// runs the most recently created table first. So the rules of a proxy
	// left over from a migration (or being replaced) never take a Service
	// from kubenat, whichever was programmed last.
	cs = append(cs,
		chain{name: chainNATPrerouting, hook: "type nat hook prerouting priority -101; policy accept;",
			rules: []string{"jump nat-services"}},
		chain{name: "nat-output", hook: "type nat hook output priority -101; policy accept;",
			rules: []string{"jump nat-services"}},
		chain{name: "nat-services", rules: svc},
		chain{name: "nat-clusterip", rules: clusterIP},
		chain{name: "external-local", rules: []string{
			fmt.Sprintf("fib saddr type local %s goto lb", mark),
			fmt.Sprintf("%s goto lb", a.fromLocalPod(m, false)),
			"goto lb-local",
		}},
		chain{name: "lb", rules: a.lbRules(false, d.backends)},
		chain{name: "lb-local", rules: a.lbRules(true, d.localBackends)},
	)

	var post []string
	if m.svcCIDRs(a.f) {
		// After every DNAT, a new connection addressed to a Service CIDR
		// that no DNAT took (kubenat's or another proxy's; an endpoint may
		// well be in the range) is dropped, not routed out of the cluster,
		// as kube-proxy does.
		// Dropped, not refused: a client of a Service created a moment
		// ago (DNS answers before the rules exist) resends its SYN and
		// finds the DNAT. The node's own addresses are delivered. Here,
		// not in a filter chain: nat chains see only a connection's first
		// packet, so the check costs established and untracked flows
		// nothing.
		post = append(post, fmt.Sprintf("%s @%s ct status & dnat == 0 fib daddr type != local drop", a.daddr, setServiceCIDRs))
	}
	masq := []string{
		fmt.Sprintf("meta mark & 0x%x == 0x%x meta mark set meta mark & 0x%x", o.MasqueradeMark, o.MasqueradeMark, clear),
		hairpin,
		egress,
	}
	for _, match := range masq {
		if lo, hi, ok := m.masqPorts(a.f); ok {
			// The tc NAT allocates its own source ports (from the node's
			// addresses, to endpoints any of these may reach too)
			// without seeing conntrack's: the kernel keeps to the others.
			post = append(post, fmt.Sprintf("meta l4proto { tcp, udp } %s masquerade to :%d-%d fully-random", match, lo, hi))
		}
		post = append(post, match+" masquerade fully-random")
	}
	cs = append(cs, chain{name: "nat-postrouting", hook: "type nat hook postrouting priority 100; policy accept;", rules: post})
	return cs
}

// lbRules picks an endpoint: Services with affinity go to their own
// chain, the others to the chain of their backends map.
func (a fam) lbRules(local bool, sizes []int) []string {
	key := a.daddr + " . meta l4proto . th dport"
	vmap := mapAffinitySvcs
	if local {
		vmap = mapAffinityLocal
	}
	rules := []string{fmt.Sprintf("%s vmap @%s", key, vmap)}
	for _, n := range sizes {
		rules = append(rules, "jump "+lbChain(local, n))
	}
	return rules
}

// lbChain names the chain that DNATs through backends map N. Each map has
// its own chain, created with it and never changed: nft 1.0.6 cannot add a
// rule that refers to an existing map declared with "typeof" (it fails to
// read the declaration back), so a map is only ever referred to by the
// rule created in the same transaction.
func lbChain(local bool, n int) string {
	if local {
		return fmt.Sprintf("lb-local-%d", n)
	}
	return fmt.Sprintf("lb-%d", n)
}

// lbMapChain returns the chain of backends map N.
func (a fam) lbMapChain(local bool, n int) chain {
	key := a.daddr + " . meta l4proto . th dport"
	rule := fmt.Sprintf("dnat %s to %s map @%s", a.name, key, backendsMap(local, n))
	if n > 1 {
		rule = fmt.Sprintf("dnat %s to %s . numgen random mod %d map @%s", a.name, key, n, backendsMap(local, n))
	}
	return chain{name: lbChain(local, n), rules: []string{rule}}
}

// lbMapChains returns the chains of the backends maps in use.
func (a fam) lbMapChains(d dynamic) []chain {
	var out []chain
	for _, n := range d.backends {
		out = append(out, a.lbMapChain(false, n))
	}
	for _, n := range d.localBackends {
		out = append(out, a.lbMapChain(true, n))
	}
	return out
}
