package nftables

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kubenat/kubenat/internal/model"
)

// elem is one set or map element a Service (or the node) contributes.
type elem struct {
	f   model.Family
	set string
	key string
	val string // map value; empty for sets
}

// setObj is a set a Service owns (an endpoint's affine clients).
type setObj struct {
	f    model.Family
	name string
}

// chainObj is a chain a Service owns (the endpoint choice of an affinity
// Service port).
type chainObj struct {
	f     model.Family
	name  string
	rules []string
}

// contrib is everything one Service contributes to the tables.
type contrib struct {
	elems  []elem
	sets   []setObj
	chains []chainObj
}

// ref counts the contributors of an element: several Services may need
// the same set element (a pod backing two Services is one hairpin element).
type ref struct {
	val string
	n   int
}

// famContent is the element content of one family's table.
type famContent struct {
	sets map[string]map[string]*ref // set name → key → ref
}

// content is the element content of both tables.
type content struct {
	fams map[model.Family]*famContent
}

func newContent() *content {
	c := &content{fams: map[model.Family]*famContent{}}
	for _, a := range families {
		c.fams[a.f] = &famContent{sets: map[string]map[string]*ref{}}
	}
	return c
}

// add counts one contribution of e.
func (c *content) add(e elem) {
	fc := c.fams[e.f]
	m := fc.sets[e.set]
	if m == nil {
		m = map[string]*ref{}
		fc.sets[e.set] = m
	}
	if r := m[e.key]; r != nil {
		r.n++
		return
	}
	m[e.key] = &ref{val: e.val, n: 1}
}

// dynamic returns the backends maps in use.
func (fc *famContent) dynamic() dynamic {
	counts := make(map[string]int, len(fc.sets))
	for name, m := range fc.sets {
		counts[name] = len(m)
	}
	return dynamicOf(counts)
}

// mapNames returns the names of a dynamic's backends maps.
func (d dynamic) mapNames() []string {
	var out []string
	for _, n := range d.backends {
		out = append(out, backendsMap(false, n))
	}
	for _, n := range d.localBackends {
		out = append(out, backendsMap(true, n))
	}
	return out
}

// nodeElems returns the elements that come from the node and configuration.
func nodeElems(st *model.State) []elem {
	var out []elem
	for _, a := range families {
		for _, p := range st.LocalPodCIDRs(a.f) {
			out = append(out, elem{f: a.f, set: setLocalPodCIDRs, key: p.String()})
		}
		for _, p := range st.Config.ClusterCIDRs {
			if model.FamilyOf(p.Addr()) == a.f {
				out = append(out, elem{f: a.f, set: setClusterCIDRs, key: p.Masked().String()})
			}
		}
		for _, p := range st.Config.NonMasqueradeCIDRs(a.f) {
			out = append(out, elem{f: a.f, set: setNoMasqCIDRs, key: p.String()})
		}
		for _, p := range st.ServiceCIDRs {
			if model.FamilyOf(p.Addr()) == a.f {
				out = append(out, elem{f: a.f, set: setServiceCIDRs, key: p.String()})
			}
		}
	}
	m := modesOf(st)
	for _, a := range families {
		if cidr := m.untrack(a.f); cidr.IsValid() {
			for _, addr := range untrackedNodeAddrs(st, cidr) {
				out = append(out, elem{f: a.f, set: setNodeAddrs, key: addr.String()})
			}
		}
	}
	return out
}

// untrackedNodeAddrs returns the node's addresses inside cidr, whose
// traffic the untracked chain must leave tracked: the addresses of its
// interfaces (Config.LocalAddrs) and of the Node object, sorted, without
// duplicates. An address missing here would leave the replies to
// connections masqueraded to it untracked, and so broken.
func untrackedNodeAddrs(st *model.State, cidr netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, list := range [][]netip.Addr{st.Config.LocalAddrs, st.Node.Addrs} {
		for _, addr := range list {
			if cidr.Contains(addr) {
				out = append(out, addr)
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

func proto(p model.Protocol) string { return strings.ToLower(string(p)) }

func frontendKey(addr netip.Addr, p model.Protocol, port uint16) string {
	return fmt.Sprintf("%s . %s . %d", addr, proto(p), port)
}

// serviceContrib returns what one Service's ports contribute to the
// tables of st (whose configuration decides the tracked endpoints).
func serviceContrib(st *model.State, ports []model.ServicePort) contrib {
	var c contrib
	for i := range ports {
		sp := &ports[i]
		c.addPort(sp)
		// Empty unless pod-to-pod TCP is untracked.
		for _, ep := range st.TrackedEndpoints(sp) {
			c.elems = append(c.elems, elem{f: sp.Name.Family, set: setTrackedEndpoints, key: endpointKey(ep.AddrPort())})
		}
	}
	return c
}

// endpointKey is the key of ep in tracked-endpoints.
func endpointKey(ep netip.AddrPort) string { return fmt.Sprintf("%s . %d", ep.Addr(), ep.Port()) }

// portID names a Service port in chain and set names:
// "namespace/name/proto/port". Names are DNS labels, so it is a valid nft
// identifier.
func portID(sp *model.ServicePort) string {
	return fmt.Sprintf("%s/%s/%s/%d", sp.Name.Namespace, sp.Name.Name, proto(sp.Name.Protocol), sp.Port)
}

// affinityChain names the chain choosing among a group with affinity.
func affinityChain(sp *model.ServicePort, local bool) string {
	if local {
		return "affinity-local-" + portID(sp)
	}
	return "affinity-" + portID(sp)
}

// affinitySet names the set of clients affine to one endpoint.
func affinitySet(sp *model.ServicePort, ep model.Endpoint) string {
	return fmt.Sprintf("affinity-%s__%s/%d", portID(sp), strings.ReplaceAll(ep.Addr.String(), ":", "."), ep.Port)
}

func (c *contrib) addPort(sp *model.ServicePort) {
	f := sp.Name.Family
	a := famOf(f)
	p := sp.Name.Protocol
	add := func(set, key, val string) { c.elems = append(c.elems, elem{f: f, set: set, key: key, val: val}) }
	affinity := sp.AffinityTimeout > 0 && sp.HasEndpoints()
	usedGroups := map[bool]bool{} // local? → used by an affinity path
	// backends adds the endpoint choice of frontend key k on one path.
	backends := func(localPath bool, k string, eps []model.Endpoint, localGroup bool) {
		if affinity {
			vmap := mapAffinitySvcs
			if localPath {
				vmap = mapAffinityLocal
			}
			add(vmap, k, "goto "+affinityChain(sp, localGroup))
			usedGroups[localGroup] = true
			return
		}
		n := len(eps)
		for i, ep := range eps {
			key := k
			if n > 1 {
				key = fmt.Sprintf("%s . %d", k, i)
			}
			add(backendsMap(localPath, n), key, fmt.Sprintf("%s . %d", ep.Addr, ep.Port))
		}
	}
	for _, fe := range sp.Frontends {
		k := frontendKey(fe.Addr, p, fe.Port)
		switch {
		case fe.Kind == model.ClusterIP:
			add(setClusterIPs, fe.Addr.String(), "")
			add(setClusterIPFronts, k, "")
		case sp.ExternalPolicyLocal:
			add(setLocalFronts, k, "")
		default:
			add(setExternalFronts, k, "")
		}
		if fe.Kind == model.LoadBalancerIP && sp.FirewallLB {
			add(setFirewallFronts, k, "")
			for _, r := range sp.SourceRanges {
				add(setFirewallAllow, k+" . "+r.String(), "")
			}
		}
		if !sp.HasEndpoints() {
			add(setRejectFronts, k, "")
			continue
		}
		switch {
		case fe.Kind == model.ClusterIP:
			if eps := sp.InternalEndpoints(); len(eps) > 0 {
				backends(false, k, eps, sp.InternalPolicyLocal)
			} else {
				add(setDropFronts, k, "")
			}
		case sp.ExternalPolicyLocal:
			backends(false, k, sp.ClusterEndpoints, false) // short-circuit for the node and its pods
			if len(sp.LocalEndpoints) > 0 {
				backends(true, k, sp.LocalEndpoints, true)
			} else {
				add(setLocalDropFronts, k, "")
			}
		default:
			backends(false, k, sp.ClusterEndpoints, false)
		}
	}
	for _, ep := range sp.Endpoints {
		if ep.Local {
			add(setHairpin, fmt.Sprintf("%s . %s", ep.Addr, ep.Addr), "")
		}
	}
	if !affinity {
		return
	}
	seenSets := map[string]bool{}
	for _, local := range []bool{false, true} {
		if !usedGroups[local] {
			continue
		}
		eps := sp.GroupEndpoints(model.ClusterGroup)
		if local {
			eps = sp.GroupEndpoints(model.LocalGroup)
		}
		c.chains = append(c.chains, chainObj{f: f, name: affinityChain(sp, local), rules: a.affinityRules(sp, eps)})
		for _, ep := range eps {
			if name := affinitySet(sp, ep); !seenSets[name] {
				seenSets[name] = true
				c.sets = append(c.sets, setObj{f: f, name: name})
			}
		}
	}
}

// affinityRules returns the rules choosing an endpoint of eps with ClientIP
// affinity: a client seen within the timeout goes back to its endpoint (and
// the timeout restarts); a new client is spread with equal probability and
// remembered.
func (a fam) affinityRules(sp *model.ServicePort, eps []model.Endpoint) []string {
	timeout := int(sp.AffinityTimeout.Seconds())
	l4 := "meta l4proto " + proto(sp.Name.Protocol)
	var rules []string
	for _, ep := range eps {
		set := affinitySet(sp, ep)
		rules = append(rules, fmt.Sprintf("%s %s @%s update @%s { %s timeout %ds } dnat %s to %s",
			l4, a.saddr, set, set, a.saddr, timeout, a.name, netip.AddrPortFrom(ep.Addr, ep.Port)))
	}
	for i, ep := range eps {
		set := affinitySet(sp, ep)
		pick := ""
		if left := len(eps) - i; left > 1 {
			// Rule i takes 1/left of what rules before it left over: each
			// endpoint gets 1/N.
			pick = fmt.Sprintf(" numgen random mod %d == 0", left)
		}
		rules = append(rules, fmt.Sprintf("%s%s update @%s { %s timeout %ds } dnat %s to %s",
			l4, pick, set, a.saddr, timeout, a.name, netip.AddrPortFrom(ep.Addr, ep.Port)))
	}
	return rules
}

// sortedElems returns the elements of one set in a stable order, formatted
// for nft ("key" or "key : value").
func (fc *famContent) sortedElems(set string) []string {
	m := fc.sets[set]
	out := make([]string, 0, len(m))
	for k, r := range m {
		out = append(out, elemText(k, r.val))
	}
	slices.SortFunc(out, cmp.Compare[string])
	return out
}

func elemText(key, val string) string {
	if val == "" {
		return key
	}
	return key + " : " + val
}
