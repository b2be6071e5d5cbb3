// Package iptables is kubenat's iptables datapath, for hosts where
// nftables cannot be used: it renders a model.State into the chain
// structure of kube-proxy's iptables mode (KUBENAT-SERVICES →
// KUBENAT-SVC-* → KUBENAT-SEP-*), and keeps the kernel in step with the
// State through iptables-restore.
//
// It serves the same semantics as the nftables datapath, from the same
// State, but for where it refuses (after routing, with ICMP port
// unreachable: see the filter table below). Every new connection walks
// KUBENAT-SERVICES, one rule per frontend, so its cost grows with the
// number of Services (the reason nftables is the default: see
// docs/benchmarks.md).
//
// kubenat owns the chains whose names start with "KUBENAT-" in the nat,
// mangle and filter tables of both families, and the rules in the built-in chains
// that jump to them (marked with the comment "kubenat"). It touches
// nothing else.
//
// Where the rules act:
//   - mangle PREROUTING and OUTPUT → KUBENAT-PRENAT, for new connections,
//     before any NAT (as the nftables datapath's filter chains): the drops
//     (a source outside loadBalancerSourceRanges, through a SRC chain per
//     Service port; no node-local endpoint for a Local traffic policy).
//   - nat PREROUTING and OUTPUT → KUBENAT-SERVICES: DNAT, one chain per
//     Service port and endpoint group (SVC: the cluster group, SVL: the
//     node-local group), one per endpoint (SEP), and per external
//     Service port EXT (masquerade and externalTrafficPolicy) and FW
//     (loadBalancerSourceRanges: other sources are never DNATed).
//   - nat POSTROUTING → KUBENAT-POSTROUTING: the masquerade of marked
//     (Service) connections and pod egress.
//   - filter INPUT, FORWARD and OUTPUT → KUBENAT-FILTER, for new
//     connections, after NAT and routing (REJECT is only valid in the
//     filter table): by their original destination (conntrack), a Service
//     port without endpoints and a ClusterIP port the Service lacks
//     (KUBENAT-CLUSTER-IPS) are refused, whoever DNATed the connection;
//     an address of a Service CIDR that no DNAT took is dropped.
//   - filter FORWARD → KUBENAT-FORWARD: marks pod egress when the pods
//     are recognized by their interface, and accepts forwarded Service
//     traffic (new DNATed connections marked for masquerade, and the
//     packets of established DNATed connections), as kube-proxy's KUBE-FORWARD does,
//     so that a FORWARD policy of DROP (Docker's) does not stop it.
package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/kubenat/kubenat/internal/model"
)

// The mark bits, the same as the nftables datapath's (kube-proxy's
// masquerade bit; not 0x8000, which older kubelets drop).
const (
	DefaultMasqueradeMark = 0x4000
	DefaultPodEgressMark  = 0x2000
)

// Options configure the renderer.
type Options struct {
	// MasqueradeMark is the mark bit that asks for masquerade; default
	// DefaultMasqueradeMark.
	MasqueradeMark uint32
	// PodEgressMark is the mark bit of pod egress when the pods are
	// recognized by their interface; default DefaultPodEgressMark.
	PodEgressMark uint32
	// NoRandomFully masquerades without --random-fully, for iptables
	// before 1.6.2 (see Exec.Probe).
	NoRandomFully bool
	// IPv4Only programs IPv4 alone, for a kernel without IPv6 (booted
	// with ipv6.disable=1: ip6tables cannot work there); see IPv6Enabled.
	IPv4Only bool
}

// families returns the families o programs.
func (o Options) families() []model.Family {
	if o.IPv4Only {
		return []model.Family{model.IPv4}
	}
	return model.Families[:]
}

// IPv6Enabled reports whether the kernel has IPv6 (/proc/net/if_inet6
// exists), so that ip6tables can work.
func IPv6Enabled() bool {
	_, err := os.Stat("/proc/net/if_inet6")
	return err == nil
}

func (o Options) withDefaults() Options {
	if o.MasqueradeMark == 0 {
		o.MasqueradeMark = DefaultMasqueradeMark
	}
	if o.PodEgressMark == 0 {
		o.PodEgressMark = DefaultPodEgressMark
	}
	return o
}

// Chain names: the static chains every ruleset has.
const (
	chainServices    = "KUBENAT-SERVICES"
	chainNodePorts   = "KUBENAT-NODEPORTS"
	chainPostrouting = "KUBENAT-POSTROUTING"
	chainMarkMasq    = "KUBENAT-MARK-MASQ"
	chainMasquerade  = "KUBENAT-MASQUERADE"
	chainNonPod      = "KUBENAT-MASQ-NONPOD"
	chainEgress      = "KUBENAT-EGRESS"
	chainFilter      = "KUBENAT-FILTER"
	chainForward     = "KUBENAT-FORWARD"
	chainPreNAT      = "KUBENAT-PRENAT"
	chainClusterIPs  = "KUBENAT-CLUSTER-IPS"
	chainExtDrop     = "KUBENAT-EXTERNAL-DROP"

	// Prefix starts the name of every chain kubenat owns.
	Prefix = "KUBENAT-"
	// jumpComment marks kubenat's rules in the built-in chains.
	jumpComment = "kubenat"
)

// Tables kubenat programs, in order.
const (
	TableNAT    = "nat"
	TableMangle = "mangle"
	TableFilter = "filter"
)

// tables lists the tables in the order a sync commits them: DNAT first,
// so that a frontend gaining its first endpoint is DNATed before its
// refusal goes (and a new ClusterIP before its catch-all refusal comes),
// then the drops and refusals (see Backend).
var tables = []string{TableNAT, TableMangle, TableFilter}

// Chain is a chain kubenat owns and its rules, each as the arguments that
// follow "-A NAME" in iptables-restore input.
type Chain struct {
	Name  string
	Rules []string
}

// Jump is a rule kubenat keeps in a built-in chain.
type Jump struct {
	Table, Chain string
	Rule         string // the arguments after "-A CHAIN"
}

// jumps are the rules kubenat keeps in the built-in chains, the same in
// both families and whatever the State.
// A full sync inserts a missing one at the head of its chain, in this
// order: in FORWARD, KUBENAT-FILTER's jump ends up first.
var jumps = []Jump{
	{TableMangle, "PREROUTING", preNATJump},
	{TableMangle, "OUTPUT", preNATJump},
	{TableNAT, "PREROUTING", natJump},
	{TableNAT, "OUTPUT", natJump},
	{TableNAT, "POSTROUTING", jumpRule("", chainPostrouting)},
	{TableFilter, "INPUT", filterJump},
	{TableFilter, "FORWARD", jumpRule("", chainForward)},
	{TableFilter, "FORWARD", filterJump},
	{TableFilter, "OUTPUT", filterJump},
}

// The jumps to KUBENAT-PRENAT, KUBENAT-SERVICES and KUBENAT-FILTER.
var (
	preNATJump = jumpRule("-m conntrack --ctstate NEW ", chainPreNAT)
	natJump    = jumpRule("", chainServices)
	filterJump = jumpRule("-m conntrack --ctstate NEW ", chainFilter)
)

func jumpRule(match, target string) string {
	return fmt.Sprintf("%s-m comment --comment %s -j %s", match, jumpComment, target)
}

// Ruleset is what kubenat programs in one family: the chains of each
// table, in order.
type Ruleset struct {
	Family model.Family
	NAT    []Chain
	Mangle []Chain
	Filter []Chain
}

// Chains returns the chains of one table.
func (r *Ruleset) Chains(table string) []Chain {
	switch table {
	case TableFilter:
		return r.Filter
	case TableMangle:
		return r.Mangle
	}
	return r.NAT
}

// Render returns the rulesets of the families o programs (both by
// default) for st, IPv4 first.
func Render(st *model.State, o Options) []Ruleset {
	o = o.withDefaults()
	pieces := map[model.ServiceKey]*Pieces{}
	for key, ports := range st.Services {
		pieces[key] = ServicePieces(st, ports)
	}
	var out []Ruleset
	for _, f := range o.families() {
		out = append(out, Assemble(st, o, f, st.SortedKeys(), pieces))
	}
	return out
}

// Text returns r as iptables-restore input that replaces kubenat's chains
// (to be applied with --noflush): each table declares its chains (which
// flushes them) and adds their rules. The jumps from the built-in chains
// are not in it (see Backend).
func (r *Ruleset) Text() string {
	var b strings.Builder
	for _, table := range tables {
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range r.Chains(table) {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
		}
		for _, c := range r.Chains(table) {
			writeRules(&b, c)
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func writeRules(b *strings.Builder, c Chain) {
	for _, rule := range c.Rules {
		fmt.Fprintf(b, "-A %s %s\n", c.Name, rule)
	}
}

// Pieces is what one Service contributes to one family's ruleset: rules
// of the shared chains and chains of its own. The backend keeps them per
// Service, so a change renders only the Services it concerns.
type Pieces struct {
	fams [2]famPieces
}

type famPieces struct {
	services  []string // KUBENAT-SERVICES
	nodePorts []string // KUBENAT-NODEPORTS
	preNAT    []string // KUBENAT-PRENAT
	filter    []string // KUBENAT-FILTER, before the ClusterIP catch-alls
	// clusterIPs are the Service's ClusterIPs: a new connection to one is
	// refused unless it is for a frontend of that address (a port the
	// Service does not have).
	clusterIPs []netip.Addr
	// frontends are the Service's frontends, which the catch-all of a
	// ClusterIP with the same address lets through.
	frontends    []model.FrontendKey
	chains       []Chain // nat chains of its own
	mangleChains []Chain // mangle chains of its own (source ranges)
}

func (p *Pieces) fam(f model.Family) *famPieces {
	if f == model.IPv6 {
		return &p.fams[1]
	}
	return &p.fams[0]
}

// ServicePieces renders one Service's ports (all families) for st.
func ServicePieces(st *model.State, ports []model.ServicePort) *Pieces {
	p := &Pieces{}
	for i := range ports {
		sp := &ports[i]
		p.fam(sp.Name.Family).addPort(st, sp)
	}
	return p
}

// hostPrefix returns a as a one-address prefix ("10.0.0.1/32").
func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

func proto(p model.Protocol) string { return strings.ToLower(string(p)) }

// destMatch matches a frontend: destination, protocol and port.
func destMatch(addr netip.Addr, p model.Protocol, port uint16) string {
	return fmt.Sprintf("-d %s -p %s -m %s --dport %d", hostPrefix(addr), proto(p), proto(p), port)
}

func comment(sp *model.ServicePort, what string) string {
	port := sp.Name.Port
	if port != "" {
		port = ":" + port
	}
	return fmt.Sprintf("-m comment --comment \"%s%s %s\"", sp.Name.ServiceKey, port, what)
}

// chainID is a chain name: prefix plus 16 characters of a hash of the
// parts (iptables allows 28 characters).
func chainID(prefix string, parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return prefix + base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// Names of a Service port's chains.
func svcChain(sp *model.ServicePort) string { return chainID("KUBENAT-SVC-", sp.Name.String()) }
func svlChain(sp *model.ServicePort) string { return chainID("KUBENAT-SVL-", sp.Name.String()) }
func extChain(sp *model.ServicePort) string { return chainID("KUBENAT-EXT-", sp.Name.String()) }
func srcChain(sp *model.ServicePort) string { return chainID("KUBENAT-SRC-", sp.Name.String()) }
func fwChain(sp *model.ServicePort) string  { return chainID("KUBENAT-FW-", sp.Name.String()) }
func sepChain(sp *model.ServicePort, ep model.Endpoint) string {
	return chainID("KUBENAT-SEP-", sp.Name.String(), ep.String())
}

// groupChain is the chain spreading over one endpoint group.
func groupChain(sp *model.ServicePort, g model.Group) string {
	if g == model.LocalGroup {
		return svlChain(sp)
	}
	return svcChain(sp)
}

// addPort renders one Service port into fp: its rules in the dispatch
// chains (KUBENAT-SERVICES, -NODEPORTS, -PRENAT, -FILTER) and its own
// chains (SVC, SVL, EXT, FW, SEP; SRC in mangle). A port without
// endpoints gets refusals only; one whose groups are empty for a Local
// policy gets drops instead of the DNAT of those frontends.
func (fp *famPieces) addPort(st *model.State, sp *model.ServicePort) {
	p := sp.Name.Protocol
	var clusterIP netip.Addr // the ClusterIP frontend, when this port has one
	for _, fe := range sp.Frontends {
		if fe.Kind == model.ClusterIP {
			clusterIP = fe.Addr
			fp.clusterIPs = append(fp.clusterIPs, fe.Addr)
		}
	}
	// Which group chains DNAT, and whether the ClusterIP path enters them.
	groups := map[model.Group]bool{} // used
	clusterVia := map[model.Group]bool{}
	ext := false
	firewalled := false
	for _, fe := range sp.Frontends {
		dst := destMatch(fe.Addr, p, fe.Port)
		fp.frontends = append(fp.frontends, fe.Key(p))
		firewalled = fp.addFilter(sp, fe, dst) || firewalled
		if !sp.HasEndpoints() {
			continue
		}
		switch {
		case fe.Kind == model.ClusterIP:
			if len(sp.InternalEndpoints()) == 0 {
				continue
			}
			g := model.ClusterGroup
			if sp.InternalPolicyLocal {
				g = model.LocalGroup
			}
			groups[g], clusterVia[g] = true, true
			fp.services = append(fp.services, fmt.Sprintf("%s %s -j %s", dst, comment(sp, "cluster IP"), groupChain(sp, g)))
		case fe.Kind == model.NodePort:
			ext = true
			fp.nodePorts = append(fp.nodePorts, fmt.Sprintf("%s %s -j %s", dst, comment(sp, "node port"), extChain(sp)))
		case fe.Kind == model.LoadBalancerIP && sp.FirewallLB:
			// Only admitted sources are DNATed (KUBENAT-FW); the others
			// are dropped before NAT, and are never DNATed even while
			// that drop is not committed yet.
			ext = true
			fp.services = append(fp.services, fmt.Sprintf("%s %s -j %s", dst, comment(sp, "load balancer IP"), fwChain(sp)))
		default:
			ext = true
			what := "external IP"
			if fe.Kind == model.LoadBalancerIP {
				what = "load balancer IP"
			}
			fp.services = append(fp.services, fmt.Sprintf("%s %s -j %s", dst, comment(sp, what), extChain(sp)))
		}
	}
	if ext {
		fp.chains = append(fp.chains, extChainOf(st, sp))
		groups[model.ClusterGroup] = true
		if sp.ExternalPolicyLocal && len(sp.LocalEndpoints) > 0 {
			groups[model.LocalGroup] = true
		}
	}
	if firewalled && ext {
		fw := Chain{Name: fwChain(sp)}
		for _, r := range sp.SourceRanges {
			fw.Rules = append(fw.Rules, fmt.Sprintf("-s %s -j %s", r, extChain(sp)))
		}
		fp.chains = append(fp.chains, fw)
	}
	if firewalled {
		src := Chain{Name: srcChain(sp)}
		for _, r := range sp.SourceRanges {
			src.Rules = append(src.Rules, fmt.Sprintf("-s %s -j RETURN", r))
		}
		src.Rules = append(src.Rules, fmt.Sprintf("%s -j DROP", comment(sp, "source not in loadBalancerSourceRanges")))
		fp.mangleChains = append(fp.mangleChains, src)
	}
	seps := map[string]bool{}
	for _, g := range []model.Group{model.ClusterGroup, model.LocalGroup} {
		if !groups[g] {
			continue
		}
		eps := sp.GroupEndpoints(g)
		c := Chain{Name: groupChain(sp, g)}
		if clusterVia[g] {
			// ClusterIP traffic asks for masquerade unless it comes from
			// this node's pods (KUBENAT-MASQ-NONPOD decides).
			c.Rules = append(c.Rules, fmt.Sprintf("%s -j %s", destMatch(clusterIP, p, sp.Port), chainNonPod))
		}
		c.Rules = append(c.Rules, spreadRules(sp, eps)...)
		fp.chains = append(fp.chains, c)
		for _, ep := range eps {
			if name := sepChain(sp, ep); !seps[name] {
				seps[name] = true
				fp.chains = append(fp.chains, sepChainOf(st, sp, ep))
			}
		}
	}
}

// addFilter adds what one frontend contributes to the drops before NAT
// (KUBENAT-PRENAT) and to the refusals (KUBENAT-FILTER, after NAT: they
// match the connection's original destination, so that no DNAT, kubenat's
// or another's, hides a frontend that is to be refused, and no connection
// DNATed to an endpoint with a refused frontend's address is refused),
// and reports whether the frontend is filtered by source range.
func (fp *famPieces) addFilter(sp *model.ServicePort, fe model.Frontend, dst string) bool {
	firewalled := fe.Kind == model.LoadBalancerIP && sp.FirewallLB
	if firewalled {
		fp.preNAT = append(fp.preNAT, fmt.Sprintf("%s %s -j %s", dst, comment(sp, "loadBalancerSourceRanges"), srcChain(sp)))
	}
	switch {
	case !sp.HasEndpoints():
		fp.filter = append(fp.filter, fmt.Sprintf("%s %s -j %s", origDestMatch(fe.Key(sp.Name.Protocol)), comment(sp, "has no endpoints"),
			refuseTarget(sp.Name.Family)))
	case fe.Kind == model.ClusterIP && len(sp.InternalEndpoints()) == 0:
		fp.preNAT = append(fp.preNAT, fmt.Sprintf("%s %s -j DROP", dst, comment(sp, "has no local endpoints")))
	case fe.Kind != model.ClusterIP && sp.ExternalPolicyLocal && len(sp.LocalEndpoints) == 0:
		// The node and its pods reach any endpoint.
		fp.preNAT = append(fp.preNAT, fmt.Sprintf("%s %s -j %s", dst, comment(sp, "has no local endpoints"), chainExtDrop))
	}
	return firewalled
}

// origDestMatch matches a connection whose original destination (before
// any DNAT) is the frontend k.
func origDestMatch(k model.FrontendKey) string {
	return fmt.Sprintf("-p %s -m conntrack --ctorigdst %s --ctorigdstport %d", proto(k.Protocol), hostPrefix(k.Addr), k.Port)
}

// refuseTarget refuses a connection with ICMP port unreachable, for TCP
// too (connect() fails with ECONNREFUSED, as with a reset). Not a TCP
// reset: the filter table sees a connection after NAT, and a reset is
// built from the packet as it is there, so a connection someone DNATed
// would get it from the endpoint's address, which the client ignores; an
// ICMP error is translated back with its connection.
func refuseTarget(f model.Family) string {
	if f == model.IPv6 {
		return "REJECT --reject-with icmp6-port-unreachable"
	}
	return "REJECT --reject-with icmp-port-unreachable"
}

// extChainOf returns the chain external traffic to sp enters: it asks
// for masquerade and picks the endpoint group (externalTrafficPolicy).
func extChainOf(st *model.State, sp *model.ServicePort) Chain {
	c := Chain{Name: extChain(sp)}
	svc := svcChain(sp)
	if !sp.ExternalPolicyLocal {
		c.Rules = []string{"-j " + chainMarkMasq, "-j " + svc}
		return c
	}
	// Local: the node itself is masqueraded and, like this node's pods,
	// reaches every endpoint; others keep their source and reach the
	// node's endpoints only (none: no DNAT, KUBENAT-FILTER drops).
	c.Rules = []string{
		"-m addrtype --src-type LOCAL -j " + chainMarkMasq,
		"-m addrtype --src-type LOCAL -j " + svc,
	}
	for _, m := range localPodMatches(st, sp.Name.Family) {
		c.Rules = append(c.Rules, fmt.Sprintf("%s -j %s", m, svc))
	}
	if len(sp.LocalEndpoints) > 0 {
		c.Rules = append(c.Rules, "-j "+svlChain(sp))
	}
	return c
}

// localPodMatches returns the matches, one per rule, of packets from this
// node's pods (model.Config.LocalDetect): one per pod CIDR, or the
// interface. No packet of the OUTPUT hook matches an interface.
func localPodMatches(st *model.State, f model.Family) []string {
	d := st.Config.LocalDetect
	switch d.Mode {
	case model.DetectBridgeInterface:
		return []string{"-i " + d.Interface}
	case model.DetectInterfacePrefix:
		return []string{"-i " + d.Interface + "+"}
	}
	var out []string
	for _, p := range st.LocalPodCIDRs(f) {
		out = append(out, "-s "+p.String())
	}
	return out
}

// spreadRules pick one of eps with equal probability; with ClientIP
// affinity, a client seen within the timeout goes back to its endpoint.
func spreadRules(sp *model.ServicePort, eps []model.Endpoint) []string {
	var rules []string
	if secs := affinitySeconds(sp); secs > 0 {
		for _, ep := range eps {
			sep := sepChain(sp, ep)
			rules = append(rules, fmt.Sprintf("-m recent --name %s --rcheck --seconds %d --reap -j %s", sep, secs, sep))
		}
	}
	for i, ep := range eps {
		sep := sepChain(sp, ep)
		if left := len(eps) - i; left > 1 {
			// Rule i takes 1/left of what the rules before it left over:
			// each endpoint gets 1/N.
			rules = append(rules, fmt.Sprintf("-m statistic --mode random --probability %.10f -j %s", 1/float64(left), sep))
			continue
		}
		rules = append(rules, "-j "+sep)
	}
	return rules
}

// affinitySeconds is the ClientIP affinity timeout in whole seconds, or 0.
func affinitySeconds(sp *model.ServicePort) int {
	if sp.AffinityTimeout <= 0 {
		return 0
	}
	return max(int(sp.AffinityTimeout.Seconds()), 1)
}

// sepChainOf returns an endpoint's chain: a pod reaching itself through
// the Service (hairpin) is masqueraded, affinity remembers the client,
// and the connection is DNATed.
func sepChainOf(st *model.State, sp *model.ServicePort, ep model.Endpoint) Chain {
	name := sepChain(sp, ep)
	c := Chain{Name: name, Rules: []string{fmt.Sprintf("-s %s -j %s", hostPrefix(ep.Addr), chainMarkMasq)}}
	if affinitySeconds(sp) > 0 {
		c.Rules = append(c.Rules, fmt.Sprintf("-m recent --name %s --set", name))
	}
	c.Rules = append(c.Rules, fmt.Sprintf("-p %s -m %s -j DNAT --to-destination %s",
		proto(sp.Name.Protocol), proto(sp.Name.Protocol), netip.AddrPortFrom(ep.Addr, ep.Port)))
	return c
}

// Assemble builds family f's ruleset from the pieces of the Services in
// keys (in that order) and the node's configuration in st.
func Assemble(st *model.State, o Options, f model.Family, keys []model.ServiceKey, pieces map[model.ServiceKey]*Pieces) Ruleset {
	o = o.withDefaults()
	services := Chain{Name: chainServices}
	nodePorts := Chain{Name: chainNodePorts}
	preNAT := Chain{Name: chainPreNAT}
	filter := Chain{Name: chainFilter}
	var own, ownMangle []Chain
	var clusterIPs []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, k := range keys {
		fp := pieces[k].fam(f)
		services.Rules = append(services.Rules, fp.services...)
		nodePorts.Rules = append(nodePorts.Rules, fp.nodePorts...)
		preNAT.Rules = append(preNAT.Rules, fp.preNAT...)
		filter.Rules = append(filter.Rules, fp.filter...)
		own = append(own, fp.chains...)
		ownMangle = append(ownMangle, fp.mangleChains...)
		for _, a := range fp.clusterIPs {
			if !seen[a] {
				seen[a] = true
				clusterIPs = append(clusterIPs, a)
			}
		}
	}
	if len(nodePorts.Rules) > 0 {
		services.Rules = append(services.Rules, "-m addrtype --dst-type LOCAL -j "+chainNodePorts)
	}
	// A ClusterIP port the Service lacks is refused, in a chain of its
	// own: the frontends at a ClusterIP address (its Service's ports,
	// another's externalIP) pass, then the rest of the address is refused
	// (ICMP port unreachable: connect() fails with ECONNREFUSED, as with
	// a reset). When the Service CIDRs hold every ClusterIP, only
	// connections to them enter the chain; else every new connection.
	cips := Chain{Name: chainClusterIPs}
	for _, k := range keys {
		for _, fe := range pieces[k].fam(f).frontends {
			if seen[fe.Addr] {
				cips.Rules = append(cips.Rules, origDestMatch(fe)+" -j RETURN")
			}
		}
	}
	for _, a := range clusterIPs {
		cips.Rules = append(cips.Rules, fmt.Sprintf("-m conntrack --ctorigdst %s -m comment --comment \"no such Service port\" -j %s",
			hostPrefix(a), refuseTarget(f)))
	}
	if len(clusterIPs) > 0 {
		filter.Rules = append(filter.Rules, clusterIPsJumps(st, f, clusterIPs)...)
	}
	// After every DNAT, a new connection to a Service CIDR that no DNAT
	// took is dropped, not routed out of the cluster (the node's own
	// addresses are delivered); see model.State.ServiceCIDRs.
	for _, p := range st.ServiceCIDRs {
		if model.FamilyOf(p.Addr()) == f {
			filter.Rules = append(filter.Rules, fmt.Sprintf("-d %s -m conntrack ! --ctstate DNAT -m addrtype ! --dst-type LOCAL "+
				"-m comment --comment \"Service CIDR address without a Service\" -j DROP", p))
		}
	}

	mark := fmt.Sprintf("0x%x", o.MasqueradeMark)
	nat := []Chain{
		services, nodePorts,
		{Name: chainMarkMasq, Rules: []string{"-j MARK --or-mark " + mark}},
		nonPodChain(st, f),
	}
	nat = append(nat, postroutingChains(st, o, f)...)
	nat = append(nat, own...)
	forward := Chain{Name: chainForward}
	if st.Config.LocalDetect.ByInterface() {
		for _, m := range localPodMatches(st, f) {
			forward.Rules = append(forward.Rules, fmt.Sprintf("-m conntrack --ctstate NEW %s -j MARK --or-mark 0x%x", m, o.PodEgressMark))
		}
	}
	forward.Rules = append(forward.Rules,
		fmt.Sprintf("-m mark --mark 0x%x/0x%x -m conntrack --ctstate DNAT -m comment --comment \"Service traffic to masquerade\" -j ACCEPT",
			o.MasqueradeMark, o.MasqueradeMark),
		"-m conntrack --ctstate DNAT -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"DNATed connections\" -j ACCEPT")
	extDrop := Chain{Name: chainExtDrop, Rules: []string{"-m addrtype --src-type LOCAL -j RETURN"}}
	for _, m := range localPodMatches(st, f) {
		extDrop.Rules = append(extDrop.Rules, m+" -j RETURN")
	}
	extDrop.Rules = append(extDrop.Rules, "-j DROP")
	mangle := append([]Chain{preNAT, extDrop}, ownMangle...)
	return Ruleset{Family: f, NAT: nat, Mangle: mangle, Filter: []Chain{filter, cips, forward}}
}

// clusterIPsJumps returns the rules of KUBENAT-FILTER that lead to
// KUBENAT-CLUSTER-IPS: one per Service CIDR of family f when they hold
// every ClusterIP, else one for every connection.
func clusterIPsJumps(st *model.State, f model.Family, clusterIPs []netip.Addr) []string {
	for _, a := range clusterIPs {
		if _, ok := st.ServiceCIDR(a); !ok {
			return []string{"-j " + chainClusterIPs}
		}
	}
	var out []string
	for _, p := range st.ServiceCIDRs {
		if model.FamilyOf(p.Addr()) == f {
			out = append(out, fmt.Sprintf("-m conntrack --ctorigdst %s -j %s", p, chainClusterIPs))
		}
	}
	return out
}

// nonPodChain marks ClusterIP traffic for masquerade unless it comes from
// a pod of this node (with masqueradeAll: always). The node's own
// addresses count as the node, also inside a pod CIDR (a bridge address).
func nonPodChain(st *model.State, f model.Family) Chain {
	c := Chain{Name: chainNonPod}
	if !st.Config.MasqueradeAll {
		c.Rules = append(c.Rules,
			"-m addrtype --src-type LOCAL -j "+chainMarkMasq,
			"-m addrtype --src-type LOCAL -j RETURN")
		for _, m := range localPodMatches(st, f) {
			c.Rules = append(c.Rules, m+" -j RETURN")
		}
	}
	c.Rules = append(c.Rules, "-j "+chainMarkMasq)
	return c
}

// postroutingChains masquerade marked connections (Services) and pod
// egress to destinations outside the non-masquerade CIDRs, with random
// source ports. Every rule that can see a mark clears it.
func postroutingChains(st *model.State, o Options, f model.Family) []Chain {
	clear := ^o.MasqueradeMark
	byIface := st.Config.LocalDetect.ByInterface()
	if byIface {
		clear &^= o.PodEgressMark
	}
	post := Chain{Name: chainPostrouting, Rules: []string{
		fmt.Sprintf("-m mark --mark 0x%x/0x%x -j %s", o.MasqueradeMark, o.MasqueradeMark, chainMasquerade),
	}}
	egress := Chain{Name: chainEgress}
	if byIface {
		post.Rules = append(post.Rules, fmt.Sprintf("-m mark --mark 0x%x/0x%x -j %s", o.PodEgressMark, o.PodEgressMark, chainEgress))
		egress.Rules = append(egress.Rules, fmt.Sprintf("-j MARK --and-mark 0x%x", ^o.PodEgressMark))
	} else {
		for _, p := range st.Config.ClusterCIDRs {
			if model.FamilyOf(p.Addr()) == f {
				post.Rules = append(post.Rules, fmt.Sprintf("-s %s -j %s", p.Masked(), chainEgress))
			}
		}
	}
	for _, p := range st.Config.NonMasqueradeCIDRs(f) {
		egress.Rules = append(egress.Rules, fmt.Sprintf("-d %s -j RETURN", p))
	}
	masquerade := "-j MASQUERADE --random-fully"
	if o.NoRandomFully {
		masquerade = "-j MASQUERADE"
	}
	egress.Rules = append(egress.Rules, masquerade)
	masq := Chain{Name: chainMasquerade, Rules: []string{
		fmt.Sprintf("-j MARK --and-mark 0x%x", clear),
		masquerade,
	}}
	return []Chain{post, masq, egress}
}

// RenderText returns st's rulesets as iptables-restore input, for people
// to read: per family, a comment naming e's restore command, the jumps
// from the built-in chains as comments, then Ruleset.Text.
func RenderText(st *model.State, o Options, e Exec) string {
	var b strings.Builder
	for i, rs := range Render(st, o) {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "# %s: %s --noflush\n", rs.Family, e.command(rs.Family, "-restore"))
		for _, j := range jumps {
			fmt.Fprintf(&b, "# -t %s -I %s 1 %s\n", j.Table, j.Chain, j.Rule)
		}
		b.WriteString(rs.Text())
	}
	return b.String()
}
