package model

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Delta says what changed between two States returned by Builder.Build.
type Delta struct {
	// Full is true when something every Service depends on changed (the
	// node, the configuration) or on the first Build: consumers should
	// treat every Service as changed.
	Full bool
	// Changed lists the Services whose ports differ from the previous
	// State (added, removed or modified), sorted.
	Changed []ServiceKey
	// Old holds the previous ports of the changed Services (absent for
	// Services that did not exist).
	Old map[ServiceKey][]ServicePort
}

// Empty reports whether nothing changed.
func (d Delta) Empty() bool { return !d.Full && len(d.Changed) == 0 }

// Then returns the Delta from the State before d to the State after next,
// where next is the Delta of the Build that followed d's: for a consumer
// that did not apply d (a failed sync), so that what changed then is not
// lost. A Service changed by both keeps its ports from before d (or their
// absence); one changed and changed back is still listed, and a consumer
// finds its ports equal.
func (d Delta) Then(next Delta) Delta {
	out := Delta{Full: d.Full || next.Full, Old: map[ServiceKey][]ServicePort{}}
	seen := map[ServiceKey]bool{}
	for _, k := range d.Changed {
		seen[k] = true
		if ports, ok := d.Old[k]; ok {
			out.Old[k] = ports
		}
	}
	for _, k := range next.Changed {
		if seen[k] {
			continue
		}
		seen[k] = true
		if ports, ok := next.Old[k]; ok {
			out.Old[k] = ports
		}
	}
	for k := range seen {
		out.Changed = append(out.Changed, k)
	}
	sortKeys(out.Changed)
	return out
}

type sliceRef struct{ Namespace, Name string }

// serviceEntry is what the Builder keeps of a Service: not the object, only
// its parsed spec.
type serviceEntry struct {
	data   *serviceData
	origin string
}

// sliceEntry is what the Builder keeps of an EndpointSlice: not the object,
// only its parsed endpoints (sliceData) and its problems.
type sliceEntry struct {
	data   sliceData
	origin string
	owner  ServiceKey
	errs   []error
}

// built is the result of building one Service, before frontend conflicts
// between Services are resolved.
type built struct {
	ports     []ServicePort // last good ports
	errs      []error       // problems of the current version of the object
	conflicts []error       // frontends lost to another Service
	created   time.Time
}

// claim is a Service's claim on a frontend, made in Build number gen.
type claim struct {
	svc ServiceKey
	gen uint64
}

// claimed returns the frontends the built ports claim, each once.
func (nb *built) claimed() []FrontendKey {
	var out []FrontendKey
	for _, sp := range nb.ports {
		for _, f := range sp.Frontends {
			if fk := f.Key(sp.Name.Protocol); !slices.Contains(out, fk) {
				out = append(out, fk)
			}
		}
	}
	return out
}

// Builder keeps the input objects and builds the State incrementally: a
// change to one Service or its EndpointSlices costs work for that Service
// only. A Service whose new version is invalid keeps its last good ports.
// Two Services claiming the same frontend (address, protocol, port): the
// older one by creation time keeps it and the other gets an error; at the
// same creation time (manifests usually have none) the one that claimed it
// first keeps it, so a Service added later never takes a frontend from a
// Service already served; Services that claim it in the same Build are
// ordered by namespace/name.
//
// A Builder is not safe for concurrent use.
type Builder struct {
	cfg      Config
	node     *v1.Node
	nodeOrig string
	nodeErrs []error
	view     nodeView

	services map[ServiceKey]*serviceEntry
	slices   map[sliceRef]*sliceEntry
	// slicesBySvc holds each Service's EndpointSlices sorted by name (a
	// Service has one or a few: a slice costs far less than a map).
	slicesBySvc map[ServiceKey][]*sliceEntry
	// names holds one copy of each namespace, node and port name the
	// objects use. It is never pruned: such names are few and long-lived.
	names map[string]string

	// serviceCIDRs are the ServiceCIDR objects' ranges by object name;
	// cidrsDirty says they changed since the last Build.
	serviceCIDRs map[string]serviceCIDREntry
	cidrsDirty   bool
	cidrErrs     []error // ranges refreshServiceCIDRs left out

	built  map[ServiceKey]*built
	claims map[FrontendKey][]claim
	// gen counts Builds: a claim made in an earlier Build is older.
	gen uint64
	// The objects that currently have problems, so that collecting them
	// costs work for those only.
	errServices map[ServiceKey]bool
	errSlices   map[sliceRef]bool

	state State
	dirty map[ServiceKey]struct{}
	full  bool
}

// NewBuilder returns a Builder for the given configuration.
func NewBuilder(cfg Config) *Builder {
	b := &Builder{
		services:     map[ServiceKey]*serviceEntry{},
		slices:       map[sliceRef]*sliceEntry{},
		slicesBySvc:  map[ServiceKey][]*sliceEntry{},
		names:        map[string]string{},
		built:        map[ServiceKey]*built{},
		claims:       map[FrontendKey][]claim{},
		cidrsDirty:   true,
		serviceCIDRs: map[string]serviceCIDREntry{},
		errServices:  map[ServiceKey]bool{},
		errSlices:    map[sliceRef]bool{},
		dirty:        map[ServiceKey]struct{}{},
		full:         true,
	}
	b.state.Services = map[ServiceKey][]ServicePort{}
	b.SetConfig(cfg)
	return b
}

// SetConfig replaces the configuration; every Service is rebuilt.
func (b *Builder) SetConfig(cfg Config) {
	if cfg.ProxyName == "" {
		cfg.ProxyName = DefaultProxyName
	}
	b.cfg = cfg
	b.full = true
}

// SetLocalAddrs records the addresses of the node's interfaces
// (Config.LocalAddrs); the next Build's State carries them, and backends
// compare the node's own elements (its addresses) on every sync. Services
// change only when NodePorts are selected by CIDR and the addresses they
// select change: then the next Build is full.
func (b *Builder) SetLocalAddrs(addrs []netip.Addr) {
	b.cfg.LocalAddrs = addrs
	if b.cfg.NodePortsByCIDR() && !slices.Equal(nodePortAddrs(b.cfg, b.view.given), b.view.nodePortAddrs) {
		b.full = true
	}
}

// Config returns the configuration in use.
func (b *Builder) Config() Config { return b.cfg }

// NodeTerminating reports whether n is being deleted or carries the
// cluster autoscaler's TaintToBeDeleted: load balancers should drain it.
func NodeTerminating(n *v1.Node) bool {
	if n.DeletionTimestamp != nil {
		return true
	}
	return slices.ContainsFunc(n.Spec.Taints, func(t v1.Taint) bool { return t.Key == TaintToBeDeleted })
}

// SetNode records the Node object. Nodes other than the configured node
// name are ignored. origin names where the object came from, for errors.
func (b *Builder) SetNode(n *v1.Node, origin string) {
	if n.Name != b.cfg.NodeName {
		return
	}
	b.node, b.nodeOrig = n, origin
	b.full = true
}

// serviceCIDREntry is what a ServiceCIDR object gives: its ranges, and the
// problems with the others.
type serviceCIDREntry struct {
	cidrs  []netip.Prefix
	errs   []error
	origin string
}

// SetServiceCIDR adds or replaces a ServiceCIDR object (networking.k8s.io/v1):
// its spec.cidrs join State.ServiceCIDRs. A version with a range that does
// not parse or is unsafe (Config.CheckServiceCIDR) is reported, and the
// object's last valid version stays (none, the first time).
func (b *Builder) SetServiceCIDR(sc *networkingv1.ServiceCIDR, origin string) {
	e := &objErrs{kind: "ServiceCIDR", name: sc.Name, origin: origin}
	var cidrs []netip.Prefix
	for i, c := range sc.Spec.CIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			e.add(fmt.Sprintf("spec.cidrs[%d]", i), "%q is not a CIDR", c)
			continue
		}
		if err := b.cfg.CheckServiceCIDR(p); err != nil {
			e.add(fmt.Sprintf("spec.cidrs[%d]", i), "%s: %v", c, err)
			continue
		}
		cidrs = append(cidrs, p.Masked())
	}
	entry := serviceCIDREntry{cidrs: cidrs, origin: origin}
	if len(e.errs) > 0 {
		entry = b.serviceCIDRs[sc.Name]
		entry.errs = e.errs
		if len(entry.cidrs) > 0 {
			entry.errs = append(entry.errs, &ObjectError{Kind: "ServiceCIDR", Name: sc.Name, Origin: origin,
				Msg: "keeping the last valid version"})
		}
	}
	b.serviceCIDRs[sc.Name] = entry
	b.cidrsDirty = true
}

// DeleteServiceCIDR forgets a ServiceCIDR object.
func (b *Builder) DeleteServiceCIDR(name string) {
	if _, ok := b.serviceCIDRs[name]; ok {
		delete(b.serviceCIDRs, name)
		b.cidrsDirty = true
	}
}

// refreshServiceCIDRs recomputes State.ServiceCIDRs, leaving out, with an
// error, a range that holds this node's pods or one of its addresses:
// traffic to them that no DNAT took would be dropped. Called after
// refreshNode.
func (b *Builder) refreshServiceCIDRs() {
	b.cidrErrs = nil
	var all []netip.Prefix
	keep := func(p netip.Prefix, report func(msg string)) {
		for _, pods := range b.state.Node.PodCIDRs {
			if pods.Overlaps(p) {
				report(fmt.Sprintf("%s overlaps this node's pod CIDR %s: pod traffic would be dropped; left out", p, pods))
				return
			}
		}
		for _, a := range b.state.Node.Addrs {
			if p.Contains(a) {
				report(fmt.Sprintf("%s holds this node's address %s: traffic to the node network would be dropped; left out", p, a))
				return
			}
		}
		all = append(all, p)
	}
	for _, p := range b.cfg.ServiceCIDRs {
		keep(p, func(msg string) {
			b.cidrErrs = append(b.cidrErrs, fmt.Errorf("serviceCIDRs (the configuration): %s", msg))
		})
	}
	for _, name := range slices.Sorted(maps.Keys(b.serviceCIDRs)) {
		e := b.serviceCIDRs[name]
		for _, p := range e.cidrs {
			keep(p, func(msg string) {
				b.cidrErrs = append(b.cidrErrs, &ObjectError{Kind: "ServiceCIDR", Name: name, Origin: e.origin, Field: "spec.cidrs", Msg: msg})
			})
		}
	}
	b.state.ServiceCIDRs = mergePrefixes(all)
	b.cidrsDirty = false
}

// HasNode reports whether the Builder has this node's Node object.
func (b *Builder) HasNode() bool { return b.node != nil }

// DeleteNode forgets the Node object when it is this node.
func (b *Builder) DeleteNode(name string) {
	if name != b.cfg.NodeName || b.node == nil {
		return
	}
	b.node, b.nodeOrig = nil, ""
	b.full = true
}

// SetService adds or replaces a Service. The Builder keeps what it needs of
// svc, parsed; not svc itself.
func (b *Builder) SetService(svc *v1.Service, origin string) {
	d := parseService(svc, origin, b.intern)
	b.services[d.key] = &serviceEntry{data: d, origin: origin}
	b.dirty[d.key] = struct{}{}
}

// DeleteService removes a Service.
func (b *Builder) DeleteService(k ServiceKey) {
	if _, ok := b.services[k]; !ok {
		return
	}
	delete(b.services, k)
	b.dirty[k] = struct{}{}
}

// SetEndpointSlice adds or replaces an EndpointSlice.
func (b *Builder) SetEndpointSlice(s *discovery.EndpointSlice, origin string) {
	ref := sliceRef{s.Namespace, s.Name}
	b.DeleteEndpointSlice(ref.Namespace, ref.Name)
	owner := ServiceKey{Namespace: s.Namespace, Name: s.Labels[LabelServiceName]}
	data, errs := parseSlice(s, origin, b.intern)
	e := &sliceEntry{data: data, origin: origin, owner: owner, errs: errs}
	b.slices[ref] = e
	if len(e.errs) > 0 {
		b.errSlices[ref] = true
	}
	if owner.Name == "" {
		return
	}
	list := b.slicesBySvc[owner]
	i, _ := slices.BinarySearchFunc(list, s.Name, func(e *sliceEntry, name string) int { return strings.Compare(e.data.name, name) })
	b.slicesBySvc[owner] = slices.Insert(list, i, e)
	b.dirty[owner] = struct{}{}
}

// intern returns the Builder's copy of s.
func (b *Builder) intern(s string) string {
	if c, ok := b.names[s]; ok {
		return c
	}
	s = strings.Clone(s)
	b.names[s] = s
	return s
}

// DeleteEndpointSlice removes an EndpointSlice.
func (b *Builder) DeleteEndpointSlice(namespace, name string) {
	ref := sliceRef{namespace, name}
	e, ok := b.slices[ref]
	if !ok {
		return
	}
	delete(b.slices, ref)
	delete(b.errSlices, ref)
	if list, ok := b.slicesBySvc[e.owner]; ok {
		list = slices.DeleteFunc(list, func(s *sliceEntry) bool { return s == e })
		if len(list) == 0 {
			delete(b.slicesBySvc, e.owner)
		} else {
			b.slicesBySvc[e.owner] = list
		}
		b.dirty[e.owner] = struct{}{}
	}
}

// Build applies the changes recorded since the last Build and returns the
// State and what changed. The State is owned by the Builder and stays valid
// until the next call that changes the Builder.
func (b *Builder) Build() (*State, Delta) {
	b.gen++
	full := b.full
	if full {
		b.refreshNode()
		for k := range b.services {
			b.dirty[k] = struct{}{}
		}
		for k := range b.built {
			b.dirty[k] = struct{}{}
		}
	}
	if full || b.cidrsDirty {
		b.refreshServiceCIDRs()
	}
	resolve := map[ServiceKey]struct{}{}
	for k := range b.dirty {
		b.rebuild(k, resolve)
	}
	var changed []ServiceKey
	old := map[ServiceKey][]ServicePort{}
	for k := range resolve {
		prev, had := b.state.Services[k]
		if b.resolve(k) {
			changed = append(changed, k)
			if had {
				old[k] = prev
			}
		}
		if nb := b.built[k]; nb != nil && len(nb.errs)+len(nb.conflicts) > 0 {
			b.errServices[k] = true
		} else {
			delete(b.errServices, k)
		}
	}
	sortKeys(changed)
	b.state.Config = b.cfg // SetLocalAddrs changes it without a full Build
	b.dirty = map[ServiceKey]struct{}{}
	b.full = false
	b.collectErrors()
	return &b.state, Delta{Full: full, Changed: changed, Old: old}
}

// rebuild recomputes one Service's candidate ports and frontend claims, and
// adds every Service whose frontends may have changed owner to resolve.
func (b *Builder) rebuild(k ServiceKey, resolve map[ServiceKey]struct{}) {
	old := b.built[k]
	var had []FrontendKey
	if old != nil {
		had = old.claimed()
	}
	resolve[k] = struct{}{}
	entry, ok := b.services[k]
	if !ok {
		for _, fk := range had {
			b.unclaim(fk, k, resolve)
		}
		delete(b.built, k)
		return
	}
	d := entry.data
	nb := &built{created: d.created}
	if d.id.ignoreReason(b.cfg.ProxyName) == "" {
		switch {
		case len(d.errs) == 0:
			nb.ports = buildService(d, b.slicesBySvc[k], &b.view)
		case old != nil && len(old.ports) > 0:
			nb.ports = old.ports
			nb.errs = append(slices.Clip(d.errs), &ObjectError{Kind: "Service", Namespace: k.Namespace, Name: k.Name,
				Origin: entry.origin, Msg: "keeping the last valid version programmed"})
		default:
			nb.errs = d.errs
		}
	}
	b.built[k] = nb
	// Claims the Service keeps stay as old as they are.
	has := nb.claimed()
	for _, fk := range had {
		if !slices.Contains(has, fk) {
			b.unclaim(fk, k, resolve)
		}
	}
	for _, fk := range has {
		if !slices.Contains(had, fk) {
			b.claims[fk] = append(b.claims[fk], claim{svc: k, gen: b.gen})
		}
		if list := b.claims[fk]; len(list) > 1 {
			for _, c := range list {
				resolve[c.svc] = struct{}{}
			}
		}
	}
}

func (b *Builder) unclaim(fk FrontendKey, k ServiceKey, resolve map[ServiceKey]struct{}) {
	list := b.claims[fk]
	for i, c := range list {
		if c.svc == k {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(b.claims, fk)
		return
	}
	b.claims[fk] = list
	for _, other := range list {
		resolve[other.svc] = struct{}{}
	}
}

// owner returns the Service that holds a frontend: the oldest claimant by
// creation time, then by claim (the Build that made it), then by
// namespace/name.
func (b *Builder) owner(fk FrontendKey) ServiceKey {
	list := b.claims[fk]
	best := list[0]
	for _, c := range list[1:] {
		bc, cc := b.built[best.svc].created, b.built[c.svc].created
		switch {
		case cc.Before(bc):
			best = c
		case !cc.Equal(bc):
		case c.gen < best.gen || c.gen == best.gen && c.svc.Less(best.svc):
			best = c
		}
	}
	return best.svc
}

// resolve computes a Service's effective ports (without frontends another
// Service owns) and reports whether they changed.
func (b *Builder) resolve(k ServiceKey) bool {
	nb := b.built[k]
	var ports []ServicePort
	if nb != nil {
		nb.conflicts = nil
		entry := b.services[k]
		for _, sp := range nb.ports {
			var kept []Frontend // nil while every frontend is this Service's
			for i, f := range sp.Frontends {
				fk := f.Key(sp.Name.Protocol)
				if o := b.owner(fk); o != k {
					nb.conflicts = append(nb.conflicts, &ObjectError{
						Kind: "Service", Namespace: k.Namespace, Name: k.Name, Origin: entry.origin,
						Field: "spec.ports",
						Msg:   fmt.Sprintf("%s frontend %s is already used by Service %s; not programmed", f.Kind, fk, o),
					})
					if kept == nil {
						kept = append(make([]Frontend, 0, len(sp.Frontends)), sp.Frontends[:i]...)
					}
					continue
				}
				if kept != nil {
					kept = append(kept, f)
				}
			}
			if kept != nil {
				sp.Frontends = kept
			}
			ports = append(ports, sp)
		}
		if len(nb.conflicts) == 0 {
			// Nothing was taken away: the State shares the built ports
			// (neither is ever modified in place).
			ports = nb.ports
		}
	}
	old, had := b.state.Services[k]
	if len(ports) == 0 {
		delete(b.state.Services, k)
		return had
	}
	b.state.Services[k] = ports
	return !had || !reflect.DeepEqual(old, ports)
}

// refreshNode recomputes what the model knows of the node.
func (b *Builder) refreshNode() {
	b.nodeErrs = nil
	n := Node{Name: b.cfg.NodeName}
	addrs := append([]netip.Addr(nil), b.cfg.NodeIPs...)
	if b.node != nil {
		e := &objErrs{kind: "Node", name: b.node.Name, origin: b.nodeOrig}
		if len(addrs) == 0 {
			for i, a := range b.node.Status.Addresses {
				if a.Type != v1.NodeInternalIP && a.Type != v1.NodeExternalIP {
					continue
				}
				ip, err := netip.ParseAddr(a.Address)
				if err != nil {
					e.add(fmt.Sprintf("status.addresses[%d].address", i), "%q is not a valid IP address", a.Address)
					continue
				}
				addrs = append(addrs, ip.Unmap())
			}
		}
		cidrs := b.node.Spec.PodCIDRs
		if len(cidrs) == 0 && b.node.Spec.PodCIDR != "" {
			cidrs = []string{b.node.Spec.PodCIDR}
		}
		for i, c := range cidrs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				e.add(fmt.Sprintf("spec.podCIDRs[%d]", i), "%q is not a CIDR", c)
				continue
			}
			n.PodCIDRs = append(n.PodCIDRs, p.Masked())
		}
		n.Zone = b.node.Labels[v1.LabelTopologyZone]
		b.nodeErrs = e.errs
	}
	if len(addrs) == 0 {
		addrs = append(addrs, b.cfg.FallbackNodeIPs...)
	}
	n.Addrs = uniqueAddrs(addrs)
	b.state.Node = n
	b.state.Config = b.cfg
	b.view = nodeView{name: b.cfg.NodeName, zone: n.Zone, addrs: n.Addrs, nodePortAddrs: nodePortAddrs(b.cfg, addrs), given: addrs}
}

// nodePortAddrs returns the addresses NodePorts are served on.
func nodePortAddrs(cfg Config, nodeAddrs []netip.Addr) []netip.Addr {
	sel := cfg.NodePortAddresses
	if len(sel) == 0 {
		sel = []string{"primary"}
	}
	var out []netip.Addr
	for _, s := range sel {
		if s == "primary" {
			for _, f := range Families {
				if as := filterAddrs(nodeAddrs, f); len(as) > 0 {
					out = append(out, as[0])
				}
			}
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue // rejected by Config.Validate
		}
		for _, a := range append(append([]netip.Addr(nil), cfg.LocalAddrs...), nodeAddrs...) {
			if p.Contains(a) {
				out = append(out, a)
			}
		}
	}
	return uniqueAddrs(out)
}

func uniqueAddrs(as []netip.Addr) []netip.Addr {
	out := append([]netip.Addr(nil), as...)
	sortAddrs(out)
	return slices.Compact(out)
}

// collectErrors gathers every current problem into State.Errors, sorted by
// message.
func (b *Builder) collectErrors() {
	var errs []error
	errs = append(errs, b.nodeErrs...)
	errs = append(errs, b.cidrErrs...)
	for _, e := range b.serviceCIDRs {
		errs = append(errs, e.errs...)
	}
	for k := range b.errServices {
		errs = append(errs, b.built[k].errs...)
		errs = append(errs, b.built[k].conflicts...)
	}
	for ref := range b.errSlices {
		errs = append(errs, b.slices[ref].errs...)
	}
	slices.SortFunc(errs, func(a, c error) int {
		if a.Error() < c.Error() {
			return -1
		}
		if a.Error() > c.Error() {
			return 1
		}
		return 0
	})
	b.state.Errors = errs
}

// Objects is a complete set of input objects.
type Objects struct {
	Services       []*v1.Service
	EndpointSlices []*discovery.EndpointSlice
	Nodes          []*v1.Node
	ServiceCIDRs   []*networkingv1.ServiceCIDR
}

// Build computes the State for a complete set of objects in one go.
func Build(cfg Config, objs Objects) *State {
	b := NewBuilder(cfg)
	for _, n := range objs.Nodes {
		b.SetNode(n, "")
	}
	for _, sc := range objs.ServiceCIDRs {
		b.SetServiceCIDR(sc, "")
	}
	for _, s := range objs.Services {
		b.SetService(s, "")
	}
	for _, s := range objs.EndpointSlices {
		b.SetEndpointSlice(s, "")
	}
	st, _ := b.Build()
	return st
}
