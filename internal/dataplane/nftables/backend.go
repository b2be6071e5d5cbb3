package nftables

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/nft"
)

// Backend programs kubenat's nftables tables. The first Sync (and any Sync
// after a failure, or with Delta.Full) replaces the tables in one
// transaction; later Syncs apply only the elements the changed Services
// add or remove, also in one transaction. It never reads the kernel ruleset
// back.
//
// A Backend is not safe for concurrent use.
type Backend struct {
	run nft.Runner
	o   Options

	synced        bool
	masqueradeAll bool
	content       *content
	byService     map[model.ServiceKey][]elem
}

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
// Sync failed. On error the kernel keeps its previous (complete) ruleset.
func (b *Backend) Sync(ctx context.Context, st *model.State, d model.Delta) (SyncResult, error) {
	if !b.synced || d.Full || st.Config.MasqueradeAll != b.masqueradeAll {
		return b.fullSync(ctx, st)
	}
	if len(d.Changed) == 0 {
		return SyncResult{}, nil
	}
	script, n := b.incremental(st, d.Changed)
	if _, err := b.run.Run(ctx, script); err != nil {
		// The bookkeeping now describes a state the kernel does not have:
		// replace everything on the next Sync.
		b.synced = false
		return SyncResult{}, fmt.Errorf("applying changes of %d Services: %w", len(d.Changed), err)
	}
	return SyncResult{Elements: n}, nil
}

// fullSync replaces both tables with the rendering of st.
func (b *Backend) fullSync(ctx context.Context, st *model.State) (SyncResult, error) {
	b.synced = false
	c := newContent()
	byService := make(map[model.ServiceKey][]elem, len(st.Services))
	for _, e := range nodeElems(st) {
		c.add(e)
	}
	for k, ports := range st.Services {
		els := serviceElems(ports)
		byService[k] = els
		for _, e := range els {
			c.add(e)
		}
	}
	var sb strings.Builder
	for _, a := range families {
		// "add" first makes the delete succeed when the table is absent.
		fmt.Fprintf(&sb, "add table %s %s\ndelete table %s %s\n", a.name, b.o.Table, a.name, b.o.Table)
	}
	for _, a := range families {
		writeTable(&sb, a, c.fams[a.f], b.o, st.Config.MasqueradeAll)
	}
	if _, err := b.run.Run(ctx, sb.String()); err != nil {
		return SyncResult{}, fmt.Errorf("replacing the kubenat tables: %w", err)
	}
	b.content, b.byService, b.masqueradeAll, b.synced = c, byService, st.Config.MasqueradeAll, true
	return SyncResult{Full: true}, nil
}

// change is the net effect of a sync on one element.
type change struct {
	e           elem
	had, has    bool
	oldVal, val string
}

// incremental updates the bookkeeping for the changed Services and returns
// the script that makes the kernel follow, and its number of element
// operations.
func (b *Backend) incremental(st *model.State, changed []model.ServiceKey) (string, int) {
	before := map[model.Family]dynamic{}
	for _, a := range families {
		before[a.f] = b.content.fams[a.f].dynamic()
	}
	type id struct {
		f        model.Family
		set, key string
	}
	touched := map[id]*change{}
	var order []id
	touch := func(e elem) *change {
		i := id{e.f, e.set, e.key}
		c := touched[i]
		if c == nil {
			r := b.content.fams[e.f].sets[e.set][e.key]
			c = &change{e: e, had: r != nil}
			if r != nil {
				c.oldVal = r.val
			}
			touched[i] = c
			order = append(order, i)
		}
		return c
	}
	for _, k := range changed {
		old := b.byService[k]
		ports, ok := st.Services[k]
		var now []elem
		if ok {
			now = serviceElems(ports)
			b.byService[k] = now
		} else {
			delete(b.byService, k)
		}
		for _, e := range old {
			touch(e)
			b.content.remove(e)
		}
		for _, e := range now {
			touch(e)
			b.content.add(e)
		}
	}

	var dels, adds []elem
	for _, i := range order {
		c := touched[i]
		r := b.content.fams[i.f].sets[i.set][i.key]
		c.has = r != nil
		if r != nil {
			c.val = r.val
		}
		switch {
		case c.had && !c.has:
			dels = append(dels, c.e)
		case !c.had && c.has:
			adds = append(adds, elem{f: i.f, set: i.set, key: i.key, val: c.val})
		case c.had && c.has && c.oldVal != c.val:
			dels = append(dels, c.e)
			adds = append(adds, elem{f: i.f, set: i.set, key: i.key, val: c.val})
		}
	}

	var sb strings.Builder
	for _, a := range families {
		fc := b.content.fams[a.f]
		after := fc.dynamic()
		old := before[a.f]
		created, removed := diffDynamic(old, after)
		for _, name := range created {
			kind := "set"
			if strings.Contains(a.setDecl(name, b.o), " : ") {
				kind = "map"
			}
			fmt.Fprintf(&sb, "add %s %s %s %s { %s }\n", kind, a.name, b.o.Table, name, a.setDecl(name, b.o))
		}
		if !slices.Equal(old.backends, after.backends) || !slices.Equal(old.localBackends, after.localBackends) ||
			!slices.Equal(old.timeouts, after.timeouts) {
			for _, ch := range a.chains(b.o, b.masqueradeAll, after) {
				if ch.name != "lb" && ch.name != "lb-local" && ch.name != "nat-postrouting" {
					continue
				}
				fmt.Fprintf(&sb, "flush chain %s %s %s\n", a.name, b.o.Table, ch.name)
				for _, r := range ch.rules {
					fmt.Fprintf(&sb, "add rule %s %s %s %s\n", a.name, b.o.Table, ch.name, r)
				}
			}
		}
		writeElems(&sb, "delete", a, b.o.Table, dels, removed, false)
		writeElems(&sb, "add", a, b.o.Table, adds, nil, true)
		for _, name := range removed {
			kind := "set"
			if strings.Contains(a.setDecl(name, b.o), " : ") {
				kind = "map"
			}
			fmt.Fprintf(&sb, "delete %s %s %s %s\n", kind, a.name, b.o.Table, name)
		}
	}
	return sb.String(), len(dels) + len(adds)
}

// diffDynamic returns the dynamic sets and maps to create and to delete.
func diffDynamic(old, now dynamic) (created, removed []string) {
	names := func(d dynamic) []string {
		var out []string
		for _, n := range d.backends {
			out = append(out, backendsMap(false, n))
		}
		for _, n := range d.localBackends {
			out = append(out, backendsMap(true, n))
		}
		for _, t := range d.timeouts {
			out = append(out, affinitySet(t))
		}
		return out
	}
	o, n := names(old), names(now)
	for _, s := range n {
		if !slices.Contains(o, s) {
			created = append(created, s)
		}
	}
	for _, s := range o {
		if !slices.Contains(n, s) {
			removed = append(removed, s)
		}
	}
	return created, removed
}

// writeElems writes "add element"/"delete element" commands for one
// family, grouped by set, skipping sets that are being deleted.
func writeElems(sb *strings.Builder, verb string, a fam, table string, els []elem, skip []string, withVal bool) {
	bySet := map[string][]string{}
	var sets []string
	for _, e := range els {
		if e.f != a.f || slices.Contains(skip, e.set) {
			continue
		}
		if _, ok := bySet[e.set]; !ok {
			sets = append(sets, e.set)
		}
		t := e.key
		if withVal {
			t = elemText(e.key, e.val)
		}
		bySet[e.set] = append(bySet[e.set], t)
	}
	slices.Sort(sets)
	const chunk = 1000
	for _, s := range sets {
		list := bySet[s]
		slices.Sort(list)
		for i := 0; i < len(list); i += chunk {
			j := min(i+chunk, len(list))
			fmt.Fprintf(sb, "%s element %s %s %s { %s }\n", verb, a.name, table, s, strings.Join(list[i:j], ", "))
		}
	}
}

// Cleanup deletes kubenat's tables, and nothing else. It succeeds when they
// do not exist.
func Cleanup(ctx context.Context, run nft.Runner, o Options) error {
	o = o.withDefaults()
	var sb strings.Builder
	for _, a := range families {
		fmt.Fprintf(&sb, "add table %s %s\ndelete table %s %s\n", a.name, o.Table, a.name, o.Table)
	}
	if _, err := run.Run(ctx, sb.String()); err != nil {
		return fmt.Errorf("deleting the kubenat tables: %w", err)
	}
	return nil
}
