package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/nft"
)

// Backend programs kubenat's nftables tables. The first Sync (and any Sync
// after a failure, or with Delta.Full) programs everything (see fullSync:
// a group of Services per transaction, never leaving a Service without a
// complete copy of its rules); later Syncs apply only what the changed
// Services add or remove (elements, and the chains and sets of affinity
// Services), in one transaction. It never reads the kernel ruleset back.
//
// A Backend is not safe for concurrent use.
type Backend struct {
	run nft.Runner
	o   Options

	synced bool
	modes  modes
	// What the kernel holds, in brief: the number of elements of each set
	// and map per family (which backends maps exist), and, for the sets in
	// which several Services may need the same element (sharedSets), each
	// element's number of contributors. Everything else a Service
	// contributes is recomputed from its previous ports (model.Delta.Old),
	// so the Backend keeps no copy of the ruleset.
	counts map[model.Family]map[string]int
	shared map[model.Family]map[string]map[string]int
	// node is the node's elements the kernel holds (nodeElems): they
	// change without any Service changing (the node's addresses).
	node []elem
	// holds are the tracked-endpoints elements kept for connections that
	// still use them (see Options.InUse); each counts as one contributor
	// in shared.
	holds map[held]bool
}

// held is an element of a family's tracked-endpoints held for connections.
type held struct {
	f   model.Family
	key string
}

// sharedSets are the sets whose elements several Services may contribute:
// a ClusterIP (two Services on different ports of one address) and a pod
// backing two Services. Every other element is keyed by a frontend, which
// the model gives to one Service only.
var sharedSets = map[string]bool{setClusterIPs: true, setHairpin: true, setTrackedEndpoints: true}

// New returns a Backend that applies scripts with run.
func New(run nft.Runner, o Options) *Backend {
	return &Backend{run: run, o: o.withDefaults()}
}

// SyncResult tells what a Sync did.
type SyncResult struct {
	Full     bool // the tables were replaced
	Elements int  // element additions and deletions applied
}

// Sync makes the kernel match st. d says which Services changed since the
// previous Sync; a full resync is done when d.Full is set or the previous
// Sync failed. The node's elements (its addresses in node-addrs) are
// compared on every Sync, so a change of them alone is a small
// transaction too. On error the kernel keeps its previous (complete)
// ruleset.
func (b *Backend) Sync(ctx context.Context, st *model.State, d model.Delta) (SyncResult, error) {
	if !b.synced || d.Full || modesOf(st) != b.modes {
		return b.fullSync(ctx, st)
	}
	node := nodeElems(st)
	if len(d.Changed) == 0 && slices.Equal(node, b.node) {
		return SyncResult{}, nil
	}
	script, n := b.incremental(st, d, node)
	if _, err := b.run.Run(ctx, script); err != nil {
		// The bookkeeping now describes a state the kernel does not have:
		// replace everything on the next Sync.
		b.synced = false
		return SyncResult{}, fmt.Errorf("applying changes of %d Services and the node's elements: %w", len(d.Changed), err)
	}
	return SyncResult{Elements: n}, nil
}

// chainNATPrerouting is the base chain Intact looks at: every ruleset has
// it, with its rules, in both families.
const chainNATPrerouting = "nat-prerouting"

// Intact reports whether the tables the last Sync programmed are still in
// the kernel, by counting the rules of each family's nat-prerouting chain
// (one small netlink dump each, whatever the tables hold). It finds the
// ruleset flushed (`nft flush ruleset`, which Debian's nftables service
// runs on reload) and a table deleted or flushed (`kubenat cleanup` while
// the agent runs); not a single rule or element deleted. When they are
// not intact, the next Sync replaces everything. Before a Sync has
// succeeded there is nothing to check: it reports true.
func (b *Backend) Intact() (bool, error) {
	if !b.synced {
		return true, nil
	}
	for _, a := range families {
		n, err := b.o.CountRules(a.name, b.o.Table, chainNATPrerouting)
		if err != nil {
			return false, fmt.Errorf("checking kubenat's tables: %w", err)
		}
		if n == 0 {
			b.synced = false
			return false, nil
		}
	}
	return true, nil
}

// plan is a State taken apart for a full sync: the node's elements, the
// Services in name order, and the bookkeeping the Backend keeps afterwards
// (element counts per set, contributors of shared elements). It keeps no
// Service's elements: a full sync streams them, a group of Services at a
// time, after the tables' skeleton (see groups), so at 50,000 Services it
// never holds every element at once.
type plan struct {
	nodeElems []elem
	node      *content // nodeElems but late, and the held endpoints
	// late are the node's elements a full sync adds last, once every
	// Service is programmed: the Service CIDRs, whose addresses no DNAT
	// took are dropped (see writeLate).
	late   []elem
	holds  map[held]bool
	st     *model.State
	keys   []model.ServiceKey
	counts map[model.Family]map[string]int
	shared map[model.Family]map[string]map[string]int
}

// planOf counts what st contributes; the contributions themselves are
// computed again, a group at a time, when they are written.
func planOf(st *model.State) *plan {
	p := &plan{node: newContent(), st: st, keys: st.SortedKeys(),
		counts: map[model.Family]map[string]int{}, shared: map[model.Family]map[string]map[string]int{}}
	for _, a := range families {
		p.counts[a.f] = map[string]int{}
		p.shared[a.f] = map[string]map[string]int{}
	}
	p.nodeElems = nodeElems(st)
	for _, e := range p.nodeElems {
		if lateSets[e.set] {
			p.late = append(p.late, e)
			continue
		}
		p.node.add(e)
	}
	for _, k := range p.keys {
		for _, e := range serviceContrib(st, st.Services[k]).elems {
			if !sharedSets[e.set] {
				p.counts[e.f][e.set]++
				continue
			}
			refs := p.shared[e.f][e.set]
			if refs == nil {
				refs = map[string]int{}
				p.shared[e.f][e.set] = refs
			}
			if refs[e.key] == 0 {
				p.counts[e.f][e.set]++
			}
			refs[e.key]++
		}
	}
	return p
}

// groups calls fn with the contributions of consecutive Services (in name
// order) and the index of the first and last of them, about limit elements
// a group (a Service is never split; limit < 0 makes one group). It stops
// at the first error fn returns.
func (p *plan) groups(limit int, fn func(cs []contrib, first, last int) error) error {
	var group []contrib
	n, first := 0, 0
	for i, k := range p.keys {
		c := serviceContrib(p.st, p.st.Services[k])
		if limit >= 0 && len(group) > 0 && n+len(c.elems) > limit {
			if err := fn(group, first, i-1); err != nil {
				return err
			}
			group, n, first = nil, 0, i
		}
		group = append(group, c)
		n += len(c.elems)
	}
	if len(group) == 0 {
		return nil
	}
	return fn(group, first, len(p.keys)-1)
}

// dynamic returns the backends maps a plan uses in family f.
func (p *plan) dynamic(f model.Family) dynamic { return dynamicOf(p.counts[f]) }

// lateSets are the node's sets a full sync fills last (see writeLate).
var lateSets = map[string]bool{setServiceCIDRs: true}

// writeLate adds the late node elements to the tables named table. Until
// then the Service CIDRs' set is empty: on a node whose tables are filled
// a group of Services at a time, the Services not programmed yet would
// otherwise be dropped by the rule meant for addresses no Service has.
// Standby tables never get them (their rules are incomplete while they are
// filled).
func (p *plan) writeLate(sb *strings.Builder, table string) {
	for _, a := range families {
		var els []elem
		for _, e := range p.late {
			if e.f == a.f {
				els = append(els, e)
			}
		}
		writeElems(sb, "add", a, a.name+" "+table, els, nil, true)
	}
}

// writeSkeleton writes one family's table: every static set (with the
// node's elements), the backends maps in use, and the chains, but nothing
// of the Services. The caller decides whether m includes the untracked
// chain, which is only correct once tracked-endpoints is complete.
func (p *plan) writeSkeleton(sb *strings.Builder, a fam, o Options, m modes) {
	t := &tables{content: p.node, objects: map[model.Family]*famObjects{a.f: {}}}
	t.writeBlock(sb, a, o, m, p.dynamic(a.f))
}

// writeServices writes what the Services cs contribute to the tables:
// their own sets and chains, then their elements. Elements of shared sets
// already in added are skipped (and recorded there).
func writeServices(sb *strings.Builder, o Options, cs []contrib, added map[elemID]bool) {
	for _, a := range families {
		tbl := a.name + " " + o.Table
		var els []elem
		for _, c := range cs {
			for _, s := range c.sets {
				if s.f == a.f {
					fmt.Fprintf(sb, "add set %s %s { %s }\n", tbl, s.name, a.affinitySetDecl(o))
				}
			}
			for _, ch := range c.chains {
				if ch.f == a.f {
					fmt.Fprintf(sb, "add chain %s %s\n", tbl, ch.name)
					writeRules(sb, tbl, ch.name, ch.rules, false)
				}
			}
			for _, e := range c.elems {
				if e.f != a.f {
					continue
				}
				if sharedSets[e.set] {
					i := elemID{e.f, e.set, e.key}
					if added[i] {
						continue
					}
					added[i] = true
				}
				els = append(els, e)
			}
		}
		writeElems(sb, "add", a, tbl, els, nil, true)
	}
}

// elemID identifies an element.
type elemID struct {
	f        model.Family
	set, key string
}

// fullSync programs st from scratch. With InitialChunk < 0 it replaces
// the tables in one transaction. Otherwise it never puts every element in
// one transaction (libnftables would hold them all: ~700 MB at 50,000
// Services × 5 endpoints):
//   - tables that do not exist yet are created, then filled a group of
//     Services per transaction (fill);
//   - tables that exist (an agent restarted, a configuration change) are
//     rebuilt through standby tables: the standby tables are filled in
//     groups, the old tables deleted in one transaction, refilled in groups,
//     and the standby tables deleted. Both copies are live while they
//     coexist and each holds every Service either completely or not at
//     all, so at every moment every Service is served by at least one
//     complete copy of its rules. (The untracked chain is taken out
//     first and comes back last: see rebuild.)
//
// Creating fresh tables also deletes standby tables an interrupted
// rebuild left behind.
func (b *Backend) fullSync(ctx context.Context, st *model.State) (SyncResult, error) {
	b.synced = false
	p := planOf(st)
	b.holdInPlan(ctx, p, modesOf(st))
	if b.o.InitialChunk < 0 {
		var sb strings.Builder
		for _, a := range families {
			// "add" first makes the delete succeed when the table is
			// absent. Standby tables an interrupted rebuild left go too.
			for _, t := range []string{b.o.Table, StandbyTable(b.o.Table)} {
				fmt.Fprintf(&sb, "add table %s %s\ndelete table %s %s\n", a.name, t, a.name, t)
			}
		}
		for _, a := range families {
			p.writeSkeleton(&sb, a, b.o, modesOf(st))
		}
		_ = p.groups(-1, func(cs []contrib, _, _ int) error {
			writeServices(&sb, b.o, cs, map[elemID]bool{})
			return nil
		})
		p.writeLate(&sb, b.o.Table)
		if _, err := b.run.Run(ctx, sb.String()); err != nil {
			return SyncResult{}, fmt.Errorf("replacing the kubenat tables: %w", err)
		}
		b.remember(p, modesOf(st))
		return SyncResult{Full: true}, nil
	}
	created, err := b.fill(ctx, st, p, b.o, true)
	if err != nil {
		return SyncResult{}, err
	}
	if created {
		// Standby tables an interrupted rebuild left (the agent killed
		// after deleting the old tables) would keep DNATing by an older
		// State; they go before the untracked chain comes.
		if err := dropTables(ctx, b.run, StandbyTable(b.o.Table)); err != nil {
			return SyncResult{}, fmt.Errorf("deleting standby tables left by an interrupted sync: %w", err)
		}
	} else if err := b.rebuild(ctx, st, p); err != nil {
		return SyncResult{}, err
	}
	if err := b.finish(ctx, p, modesOf(st)); err != nil {
		return SyncResult{}, err
	}
	b.remember(p, modesOf(st))
	return SyncResult{Full: true}, nil
}

// finish adds, in one last transaction, what a full sync adds once every
// Service is programmed and no other copy of the rules (standby tables)
// DNATs by another State: the late node elements (the Service CIDRs,
// whose drop rule would drop Services not programmed yet) and the
// untracked chains m has (which need tracked-endpoints and node-addrs
// complete).
func (b *Backend) finish(ctx context.Context, p *plan, m modes) error {
	var sb strings.Builder
	p.writeLate(&sb, b.o.Table)
	for _, a := range families {
		cidr := m.untrack(a.f)
		if !cidr.IsValid() {
			continue
		}
		tbl := a.name + " " + b.o.Table
		ch := a.untrackedChain(cidr)
		fmt.Fprintf(&sb, "add chain %s %s { %s }\n", tbl, ch.name, ch.hook)
		writeRules(&sb, tbl, ch.name, ch.rules, false)
	}
	if sb.Len() == 0 {
		return nil
	}
	if _, err := b.run.Run(ctx, sb.String()); err != nil {
		return fmt.Errorf("completing the tables %s (Service CIDRs, untracked chains): %w", b.o.Table, err)
	}
	return nil
}

// StandbyTable is the name, next to Options.Table, of the tables a full
// sync of existing tables builds first (see fullSync). They exist only
// while such a sync runs.
func StandbyTable(table string) string { return table + "-standby" }

// rebuild replaces existing tables with p through standby tables.
//
// It first takes the untracked chain out of the existing tables: while
// the standby tables are filled, they DNAT by the new State (the last
// table to get a hook of the same priority runs first), and the old
// chain would untrack the replies of connections they DNAT to endpoints
// only the new State tracks (a new affinity Service, an
// externalTrafficPolicy Local port, a node address). Until the rebuilt
// tables get the chain back, with their sets complete, every flow is
// tracked.
func (b *Backend) rebuild(ctx context.Context, st *model.State, p *plan) error {
	if err := dropUntracked(ctx, b.run, b.o.Table); err != nil {
		return err
	}
	standby := b.o
	standby.Table = StandbyTable(b.o.Table)
	if _, err := b.fill(ctx, st, p, standby, false); err != nil {
		_ = dropTables(ctx, b.run, standby.Table)
		return err
	}
	if err := dropTables(ctx, b.run, b.o.Table); err != nil {
		_ = dropTables(ctx, b.run, standby.Table)
		return fmt.Errorf("deleting the previous kubenat tables: %w", err)
	}
	if _, err := b.fill(ctx, st, p, b.o, false); err != nil {
		return err // the standby tables keep serving; the next full sync rebuilds
	}
	if err := dropTables(ctx, b.run, standby.Table); err != nil {
		return fmt.Errorf("deleting the standby tables: %w", err)
	}
	return nil
}

// dropUntracked deletes the untracked chains of the tables of that name,
// if they have them.
func dropUntracked(ctx context.Context, run nft.Runner, table string) error {
	var sb strings.Builder
	for _, a := range families {
		tbl := a.name + " " + table
		name := chainUntracked
		// "add" first makes the delete succeed when the chain (or the
		// table) is absent; a chain is deleted empty.
		fmt.Fprintf(&sb, "add table %s\nadd chain %s %s\nflush chain %s %s\ndelete chain %s %s\n", tbl, tbl, name, tbl, name, tbl, name)
	}
	if _, err := run.Run(ctx, sb.String()); err != nil {
		return fmt.Errorf("removing the untracked chains from the tables %s: %w", table, err)
	}
	return nil
}

// dropTables deletes both families' tables of that name, if they exist.
func dropTables(ctx context.Context, run nft.Runner, table string) error {
	var sb strings.Builder
	for _, a := range families {
		fmt.Fprintf(&sb, "add table %s %s\ndelete table %s %s\n", a.name, table, a.name, table)
	}
	_, err := run.Run(ctx, sb.String())
	return err
}

// fill programs p into the tables o names, in several transactions. The
// first declares both tables with every set, map and chain, but only the
// node's elements: with create, it fails, changing nothing, when a table
// exists (fill then returns false); without, it replaces whatever tables
// of that name exist. Each next transaction adds everything a group of
// Services (in name order) contributes, about Options.InitialChunk
// elements: its own sets and chains, then its elements. A Service is thus
// either absent or completely programmed in these tables at any time. An
// error after the first transaction is returned; the tables stay partly
// filled until the next full sync.
func (b *Backend) fill(ctx context.Context, st *model.State, p *plan, o Options, create bool) (bool, error) {
	var sb strings.Builder
	for _, a := range families {
		if create {
			fmt.Fprintf(&sb, "create table %s %s\n", a.name, o.Table)
		} else {
			fmt.Fprintf(&sb, "add table %s %s\ndelete table %s %s\n", a.name, o.Table, a.name, o.Table)
		}
	}
	// The untracked chain comes after (finish); standby tables never
	// get it (their copy of the set is incomplete while they are filled,
	// and a notrack in any table wins).
	skeleton := modesOf(st).withoutUntracked()
	for _, a := range families {
		p.writeSkeleton(&sb, a, o, skeleton)
	}
	if _, err := b.run.Run(ctx, sb.String()); err != nil {
		if create {
			// A table exists, or the script or the kernel failed: a
			// rebuild replaces whatever is there, and reports its errors.
			// (With a table present, nft 1.0.6 may fail on its maps
			// before it finds the table, so the error does not tell.)
			return false, nil
		}
		return false, fmt.Errorf("creating the tables %s: %w", o.Table, err)
	}
	// The next group's script is written while libnftables runs the
	// current one: Go's part and libnftables' part of a cold sync are of
	// the same order, and they use different cores.
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	scripts := make(chan groupScript, 1)
	var werr error // the writer's; read once scripts is closed
	go func() {
		defer close(scripts)
		added := map[elemID]bool{}
		werr = p.groups(o.InitialChunk, func(cs []contrib, first, last int) error {
			if err := gctx.Err(); err != nil {
				return err
			}
			var sb strings.Builder
			writeServices(&sb, o, cs, added)
			select {
			case scripts <- groupScript{script: sb.String(), first: first, last: last}:
				return nil
			case <-gctx.Done():
				return gctx.Err()
			}
		})
	}()
	for g := range scripts {
		if _, err := b.run.Run(ctx, g.script); err != nil {
			cancel()
			for range scripts { // the writer stops; wait for it
			}
			return false, fmt.Errorf("programming Services %s to %s into the tables %s: %w", p.keys[g.first], p.keys[g.last], o.Table, err)
		}
	}
	// The writer stops early only when ctx ends: the tables miss groups.
	if werr != nil {
		return false, fmt.Errorf("programming Services into the tables %s: %w", o.Table, werr)
	}
	return true, nil
}

// groupScript is the script that adds a group of Services (p.keys[first]
// to p.keys[last]) to the tables.
type groupScript struct {
	script      string
	first, last int
}

// remember records, after a full sync of p, what incremental syncs need.
func (b *Backend) remember(p *plan, m modes) {
	b.counts, b.shared, b.node, b.holds = p.counts, p.shared, p.nodeElems, p.holds
	b.modes, b.synced = m, true
}

// holdInPlan adds to p the endpoints connections still use that p leaves
// out of tracked-endpoints: every endpoint Options.InUse names, for each
// family m untracks (what the kernel held before is not known after a
// restart or a failed sync, and a full sync rebuilds the set). When InUse
// fails, the endpoints of that family held so far stay held.
func (b *Backend) holdInPlan(ctx context.Context, p *plan, m modes) {
	p.holds = map[held]bool{}
	if b.o.InUse == nil {
		return
	}
	for _, a := range families {
		cidr := m.untrack(a.f)
		if !cidr.IsValid() {
			continue
		}
		var keys []string
		if used, err := b.o.InUse(ctx, cidr); err != nil {
			keys = b.heldKeys(a.f)
		} else {
			for ep := range used {
				if cidr.Contains(ep.Addr()) {
					keys = append(keys, endpointKey(ep))
				}
			}
			slices.Sort(keys)
		}
		wanted := p.shared[a.f][setTrackedEndpoints]
		if wanted == nil {
			wanted = map[string]int{}
			p.shared[a.f][setTrackedEndpoints] = wanted
		}
		for _, k := range keys {
			if wanted[k] > 0 {
				continue
			}
			wanted[k] = 1
			p.holds[held{a.f, k}] = true
			p.counts[a.f][setTrackedEndpoints]++
			p.node.add(elem{f: a.f, set: setTrackedEndpoints, key: k})
		}
	}
}

// heldKeys returns the tracked-endpoints keys held in family f, sorted.
func (b *Backend) heldKeys(f model.Family) []string {
	var keys []string
	for h := range b.holds {
		if h.f == f {
			keys = append(keys, h.key)
		}
	}
	slices.Sort(keys)
	return keys
}

// Holds returns the number of endpoints held in tracked-endpoints for
// connections that still use them (see Options.InUse).
func (b *Backend) Holds() int { return len(b.holds) }

// HeldEndpoints returns the endpoints of family f held in
// tracked-endpoints for connections that still use them (see Holds),
// sorted.
func (b *Backend) HeldEndpoints(f model.Family) []netip.AddrPort {
	var out []netip.AddrPort
	for _, k := range b.heldKeys(f) {
		addr, port, _ := strings.Cut(k, " . ")
		a, err1 := netip.ParseAddr(addr)
		p, err2 := strconv.ParseUint(port, 10, 16)
		if err1 == nil && err2 == nil {
			out = append(out, netip.AddrPortFrom(a, uint16(p)))
		}
	}
	return out
}

// ReleaseHolds lets go of the held endpoints no connection uses any more
// (asking Options.InUse once per family with holds), in one transaction,
// and returns how many are still held. When the transaction fails nothing
// changes: the next call tries again. When InUse fails for a family, that
// family's holds stay and the error is returned with the count.
func (b *Backend) ReleaseHolds(ctx context.Context) (int, error) {
	if !b.synced || len(b.holds) == 0 {
		return len(b.holds), nil
	}
	var gone []held // released holds
	var sb strings.Builder
	dels := 0 // elements no Service wants either
	var readErr error
	for _, a := range families {
		keys := b.heldKeys(a.f)
		if len(keys) == 0 {
			continue
		}
		used, err := b.o.InUse(ctx, b.modes.untrack(a.f))
		if err != nil {
			// This family's holds stay; the other's are released.
			readErr = fmt.Errorf("reading the connections of held endpoints: %w", err)
			continue
		}
		inUse := map[string]bool{}
		for ep := range used {
			inUse[endpointKey(ep)] = true
		}
		refs := b.shared[a.f][setTrackedEndpoints]
		var els []elem
		for _, k := range keys {
			if inUse[k] {
				continue
			}
			gone = append(gone, held{a.f, k})
			if refs[k] == 1 {
				els = append(els, elem{f: a.f, set: setTrackedEndpoints, key: k})
			}
		}
		writeElems(&sb, "delete", a, a.name+" "+b.o.Table, els, nil, false)
		dels += len(els)
	}
	if dels > 0 {
		if _, err := b.run.Run(ctx, sb.String()); err != nil {
			return len(b.holds), fmt.Errorf("releasing %d held endpoints: %w", dels, err)
		}
	}
	for _, h := range gone {
		delete(b.holds, h)
		refs := b.shared[h.f][setTrackedEndpoints]
		if refs[h.key]--; refs[h.key] == 0 {
			delete(refs, h.key)
			b.counts[h.f][setTrackedEndpoints]--
		}
	}
	return len(b.holds), readErr
}

// dynamic returns the backends maps in use in family f.
func (b *Backend) dynamic(f model.Family) dynamic { return dynamicOf(b.counts[f]) }

// dynamicOf returns the backends maps that have elements, given the number
// of elements of each set.
func dynamicOf(counts map[string]int) dynamic {
	var d dynamic
	for set, n := range counts {
		if n == 0 {
			continue
		}
		switch {
		case strings.HasPrefix(set, localBackendsPrefix):
			d.localBackends = append(d.localBackends, mapSize(set))
		case strings.HasPrefix(set, backendsPrefix):
			d.backends = append(d.backends, mapSize(set))
		}
	}
	slices.Sort(d.backends)
	slices.Sort(d.localBackends)
	return d
}

// objectsOf returns the sets and chains (with their rules) some Services
// own in family f.
func objectsOf(cs []contrib, f model.Family) (sets map[string]bool, chains map[string][]string) {
	sets, chains = map[string]bool{}, map[string][]string{}
	for _, c := range cs {
		for _, s := range c.sets {
			if s.f == f {
				sets[s.name] = true
			}
		}
		for _, ch := range c.chains {
			if ch.f == f {
				chains[ch.name] = ch.rules
			}
		}
	}
	return sets, chains
}

// incremental returns the script that takes the kernel from the changed
// Services' previous ports (d.Old) to their ports in st, and from the
// node's elements it holds to node, and its number of element operations,
// and updates the bookkeeping.
func (b *Backend) incremental(st *model.State, d model.Delta, node []elem) (string, int) {
	var olds, news []contrib
	for _, k := range d.Changed {
		olds = append(olds, serviceContrib(st, d.Old[k]))
		news = append(news, serviceContrib(st, st.Services[k]))
	}

	// Element changes, netted per element: a frontend leaving one Service
	// for another in the same sync is only touched if its value changes.
	type id = elemID
	type state struct {
		had, has   bool
		oldV, newV string
	}
	touched := map[id]*state{}
	var order []id
	touch := func(e elem) *state {
		i := id{e.f, e.set, e.key}
		st := touched[i]
		if st == nil {
			st = &state{}
			if sharedSets[e.set] {
				st.had = b.shared[e.f][e.set][e.key] > 0
			}
			touched[i] = st
			order = append(order, i)
		}
		return st
	}
	refs := func(e elem) map[string]int {
		m := b.shared[e.f][e.set]
		if m == nil {
			m = map[string]int{}
			b.shared[e.f][e.set] = m
		}
		return m
	}
	for _, c := range olds {
		for _, e := range c.elems {
			st := touch(e)
			if sharedSets[e.set] {
				if m := refs(e); m[e.key] > 1 {
					m[e.key]--
				} else {
					delete(m, e.key)
				}
				continue
			}
			st.had, st.oldV = true, e.val
		}
	}
	for _, c := range news {
		for _, e := range c.elems {
			st := touch(e)
			if sharedSets[e.set] {
				refs(e)[e.key]++
				continue
			}
			st.has, st.newV = true, e.val
		}
	}
	// Endpoints leaving tracked-endpoints stay, held, until ReleaseHolds
	// finds no connection using them (see Options.InUse): reading
	// conntrack here would make this sync as slow as a dump of it.
	if b.o.InUse != nil {
		for _, i := range order {
			if i.set == setTrackedEndpoints && b.modes.untrack(i.f).IsValid() && touched[i].had && b.shared[i.f][i.set][i.key] == 0 {
				b.shared[i.f][i.set][i.key] = 1
				if b.holds == nil {
					b.holds = map[held]bool{}
				}
				b.holds[held{i.f, i.key}] = true
			}
		}
	}

	var dels, adds []elem
	before := map[model.Family]dynamic{}
	for _, a := range families {
		before[a.f] = b.dynamic(a.f)
	}
	for _, i := range order {
		st := touched[i]
		if sharedSets[i.set] {
			st.has = b.shared[i.f][i.set][i.key] > 0
		}
		switch {
		case st.had && (!st.has || st.oldV != st.newV):
			dels = append(dels, elem{f: i.f, set: i.set, key: i.key})
			b.counts[i.f][i.set]--
			if st.has {
				adds = append(adds, elem{f: i.f, set: i.set, key: i.key, val: st.newV})
				b.counts[i.f][i.set]++
			}
		case !st.had && st.has:
			adds = append(adds, elem{f: i.f, set: i.set, key: i.key, val: st.newV})
			b.counts[i.f][i.set]++
		}
	}

	nodeDels, nodeAdds := diff(b.node, node)
	dels, adds = append(dels, nodeDels...), append(adds, nodeAdds...)
	b.node = node

	var sb strings.Builder
	for _, a := range families {
		oldSets, oldChains := objectsOf(olds, a.f)
		nowSets, nowChains := objectsOf(news, a.f)
		oldDyn, nowDyn := before[a.f], b.dynamic(a.f)
		tbl := a.name + " " + b.o.Table
		goneMaps, newMaps := diff(oldDyn.mapNames(), nowDyn.mapNames())
		goneSets, newSets := diff(sortedKeys(oldSets), sortedKeys(nowSets))
		goneChains, newChains := diff(sortedKeys(oldChains), sortedKeys(nowChains))

		// 1. New maps (each with its chain), sets and (empty) chains.
		for _, name := range newMaps {
			decl := a.setDecl(name, b.o)
			fmt.Fprintf(&sb, "add %s %s %s { %s }\n", setKind(decl), tbl, name, decl)
			ch := a.lbMapChain(strings.HasPrefix(name, localBackendsPrefix), mapSize(name))
			fmt.Fprintf(&sb, "add chain %s %s\n", tbl, ch.name)
			writeRules(&sb, tbl, ch.name, ch.rules, false)
		}
		for _, name := range newSets {
			fmt.Fprintf(&sb, "add set %s %s { %s }\n", tbl, name, a.affinitySetDecl(b.o))
		}
		for _, name := range newChains {
			fmt.Fprintf(&sb, "add chain %s %s\n", tbl, name)
		}
		// 2. Rules: the load-balancing chains when the maps in use
		// changed, and the Services' chains that are new or changed.
		if len(newMaps)+len(goneMaps) > 0 {
			for _, ch := range a.chains(b.o, b.modes, nowDyn) {
				if ch.name == "lb" || ch.name == "lb-local" {
					writeRules(&sb, tbl, ch.name, ch.rules, true)
				}
			}
		}
		for _, name := range sortedKeys(nowChains) {
			rules := nowChains[name]
			if prev, ok := oldChains[name]; !ok || !slices.Equal(prev, rules) {
				writeRules(&sb, tbl, name, rules, ok)
			}
		}
		// 3. Elements.
		writeElems(&sb, "delete", a, tbl, dels, goneMaps, false)
		writeElems(&sb, "add", a, tbl, adds, nil, true)
		// 4. What nothing references any more.
		for _, name := range goneChains {
			fmt.Fprintf(&sb, "flush chain %s %s\ndelete chain %s %s\n", tbl, name, tbl, name)
		}
		for _, name := range goneSets {
			fmt.Fprintf(&sb, "delete set %s %s\n", tbl, name)
		}
		for _, name := range goneMaps {
			ch := lbChain(strings.HasPrefix(name, localBackendsPrefix), mapSize(name))
			fmt.Fprintf(&sb, "flush chain %s %s\ndelete chain %s %s\n", tbl, ch, tbl, ch)
			fmt.Fprintf(&sb, "delete %s %s %s\n", setKind(a.setDecl(name, b.o)), tbl, name)
		}
	}
	return sb.String(), len(dels) + len(adds)
}

// writeRules writes a chain's rules, flushing it first when it existed.
func writeRules(sb *strings.Builder, tbl, chain string, rules []string, flush bool) {
	if flush {
		fmt.Fprintf(sb, "flush chain %s %s\n", tbl, chain)
	}
	for _, r := range rules {
		fmt.Fprintf(sb, "add rule %s %s %s\n", tbl, chain, r)
	}
}

// diff returns what is only in old, and what is only in now.
func diff[T comparable](old, now []T) (removed, added []T) {
	for _, x := range old {
		if !slices.Contains(now, x) {
			removed = append(removed, x)
		}
	}
	for _, x := range now {
		if !slices.Contains(old, x) {
			added = append(added, x)
		}
	}
	return removed, added
}

// writeElems writes "add element"/"delete element" commands for one
// family, grouped by set, skipping sets that are being deleted.
func writeElems(sb *strings.Builder, verb string, a fam, tbl string, els []elem, skip []string, withVal bool) {
	bySet := map[string][]string{}
	for _, e := range els {
		if e.f != a.f || slices.Contains(skip, e.set) {
			continue
		}
		t := e.key
		if withVal {
			t = elemText(e.key, e.val)
		}
		bySet[e.set] = append(bySet[e.set], t)
	}
	const chunk = 1000
	for _, s := range sortedKeys(bySet) {
		list := bySet[s]
		slices.Sort(list)
		for i := 0; i < len(list); i += chunk {
			j := min(i+chunk, len(list))
			fmt.Fprintf(sb, "%s element %s %s { %s }\n", verb, tbl, s, strings.Join(list[i:j], ", "))
		}
	}
}

// Cleanup deletes kubenat's tables (and standby tables a full sync may
// have left), and nothing else. It succeeds when they do not exist, and
// reports whether any did.
func Cleanup(ctx context.Context, run nft.Runner, o Options) (bool, error) {
	o = o.withDefaults()
	existed := false
	for _, table := range []string{o.Table, StandbyTable(o.Table)} {
		for _, a := range families {
			// "create" fails, changing nothing, on a table that exists;
			// one it creates is deleted below. Cheaper than listing a
			// table, which fetches every element.
			if _, err := run.Run(ctx, fmt.Sprintf("create table %s %s\n", a.name, table)); err != nil {
				existed = true
			}
		}
		if err := dropTables(ctx, run, table); err != nil {
			return existed, fmt.Errorf("deleting the kubenat tables: %w", err)
		}
	}
	return existed, nil
}
