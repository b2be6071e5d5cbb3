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

// add counts one contribution of e and reports whether e is new.
func (c *content) add(e elem) bool {
	fc := c.fams[e.f]
	m := fc.sets[e.set]
	if m == nil {
		m = map[string]*ref{}
		fc.sets[e.set] = m
	}
	r := m[e.key]
	if r == nil {
		m[e.key] = &ref{val: e.val, n: 1}
		return true
	}
	r.n++
	return false
}

// remove drops one contribution of e and reports whether e is gone.
func (c *content) remove(e elem) bool {
	fc := c.fams[e.f]
	m := fc.sets[e.set]
	r := m[e.key]
	if r == nil {
		return false
	}
	r.n--
	if r.n > 0 {
		return false
	}
	delete(m, e.key)
	if len(m) == 0 {
		delete(fc.sets, e.set)
	}
	return true
}

// dynamic returns the backends maps and affinity timeouts in use.
func (fc *famContent) dynamic() dynamic {
	var d dynamic
	for name, m := range fc.sets {
		if len(m) == 0 {
			continue
		}
		switch {
		case strings.HasPrefix(name, localBackendsPrefix):
			d.localBackends = append(d.localBackends, mapSize(name))
		case strings.HasPrefix(name, backendsPrefix):
			d.backends = append(d.backends, mapSize(name))
		case strings.HasPrefix(name, affinityPrefix):
			var t int
			fmt.Sscanf(strings.TrimPrefix(name, affinityPrefix), "%d", &t)
			d.timeouts = append(d.timeouts, t)
		}
	}
	slices.Sort(d.backends)
	slices.Sort(d.localBackends)
	slices.Sort(d.timeouts)
	return d
}

// setNames returns the sets and maps of the table in rendering order: the
// static ones, then backends maps and affinity sets by size.
func (fc *famContent) setNames() []string {
	d := fc.dynamic()
	names := append([]string(nil), staticSets...)
	for _, n := range d.backends {
		names = append(names, backendsMap(false, n))
	}
	for _, n := range d.localBackends {
		names = append(names, backendsMap(true, n))
	}
	for _, t := range d.timeouts {
		names = append(names, affinitySet(t))
	}
	return names
}

func isDynamicSet(name string) bool {
	return strings.HasPrefix(name, backendsPrefix) || strings.HasPrefix(name, localBackendsPrefix) ||
		(strings.HasPrefix(name, affinityPrefix) && name != mapAffinity)
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
	}
	return out
}

func proto(p model.Protocol) string { return strings.ToLower(string(p)) }

func frontendKey(addr netip.Addr, p model.Protocol, port uint16) string {
	return fmt.Sprintf("%s . %s . %d", addr, proto(p), port)
}

// serviceElems returns the elements one Service's ports contribute.
func serviceElems(ports []model.ServicePort) []elem {
	var out []elem
	for i := range ports {
		out = appendPortElems(out, &ports[i])
	}
	return out
}

func appendPortElems(out []elem, sp *model.ServicePort) []elem {
	f := sp.Name.Family
	p := sp.Name.Protocol
	add := func(set, key, val string) { out = append(out, elem{f: f, set: set, key: key, val: val}) }
	backends := func(local bool, k string, eps []model.Endpoint) {
		n := len(eps)
		for i, ep := range eps {
			key := k
			if n > 1 {
				key = fmt.Sprintf("%s . %d", k, i)
			}
			add(backendsMap(local, n), key, fmt.Sprintf("%s . %d", ep.Addr, ep.Port))
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
		if sp.AffinityTimeout > 0 {
			add(affinitySet(int(sp.AffinityTimeout.Seconds())), k, "")
		}
		switch {
		case fe.Kind == model.ClusterIP:
			if eps := sp.InternalEndpoints(); len(eps) > 0 {
				backends(false, k, eps)
			} else {
				add(setDropFronts, k, "")
			}
		case sp.ExternalPolicyLocal:
			backends(false, k, sp.ClusterEndpoints) // short-circuit for the node and its pods
			if len(sp.LocalEndpoints) > 0 {
				backends(true, k, sp.LocalEndpoints)
			} else {
				add(setLocalDropFronts, k, "")
			}
		default:
			backends(false, k, sp.ClusterEndpoints)
		}
	}
	for _, ep := range sp.Endpoints {
		if ep.Local {
			add(setHairpin, fmt.Sprintf("%s . %s", ep.Addr, ep.Addr), "")
		}
	}
	return out
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
