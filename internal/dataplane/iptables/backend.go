package iptables

import (
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strings"

	"github.com/kubenat/kubenat/internal/model"
)

// Backend programs kubenat's iptables chains. The first Sync (and any
// Sync after a failure, or with Delta.Full) reads which of kubenat's
// chains and jumps the kernel holds, rewrites every chain, deletes the
// chains no longer wanted and puts back missing jumps. Later Syncs render
// only the changed Services again and write only the chains whose rules
// changed (a Service's own chains, and the shared dispatch chains, which
// are rewritten whole as kube-proxy's KUBE-SERVICES is). Each table of
// each family is one atomic iptables-restore commit.
//
// A Backend is not safe for concurrent use.
type Backend struct {
	run Runner
	o   Options

	synced bool
	// pieces are the rendered Services, kept so a change renders only the
	// Services it concerns.
	pieces map[model.ServiceKey]*Pieces
	// chains are the digests of the chains the kernel holds, per family
	// (IPv4, IPv6) and table.
	chains [2]map[string]map[string]uint64
}

// New returns a Backend that applies its changes with run.
func New(run Runner, o Options) *Backend {
	return &Backend{run: run, o: o.withDefaults()}
}

// SyncResult tells what a Sync did.
type SyncResult struct {
	Full   bool // every chain was rewritten
	Chains int  // chains written or deleted
}

func famIndex(f model.Family) int {
	if f == model.IPv6 {
		return 1
	}
	return 0
}

// Sync makes the kernel match st. d says which Services changed since the
// previous Sync. Each table of each family is its own commit (IPv4 first;
// nat, mangle, filter): on error the tables committed so far hold the new
// rules and the others their previous ones, each complete, and the next
// Sync is a full one.
func (b *Backend) Sync(ctx context.Context, st *model.State, d model.Delta) (SyncResult, error) {
	full := !b.synced || d.Full
	b.synced = false
	if full {
		b.pieces = make(map[model.ServiceKey]*Pieces, len(st.Services))
		for k, ports := range st.Services {
			b.pieces[k] = ServicePieces(st, ports)
		}
	} else {
		for _, k := range d.Changed {
			if ports, ok := st.Services[k]; ok {
				b.pieces[k] = ServicePieces(st, ports)
			} else {
				delete(b.pieces, k)
			}
		}
	}
	keys := st.SortedKeys()
	res := SyncResult{Full: full}
	for _, f := range b.o.families() {
		rs := Assemble(st, b.o, f, keys, b.pieces)
		var kernel *saved
		if full {
			out, err := b.run.Save(ctx, f)
			if err != nil {
				return res, fmt.Errorf("reading the %s tables: %w", f, err)
			}
			kernel = parseSave(out)
		}
		input, digests, n := b.changes(f, &rs, kernel)
		if input != "" {
			if err := b.run.Restore(ctx, f, input); err != nil {
				return res, fmt.Errorf("programming kubenat's %s chains: %w", f, err)
			}
		}
		b.chains[famIndex(f)] = digests
		res.Chains += n
	}
	b.synced = true
	return res, nil
}

// digest identifies a chain's rules.
func digest(c Chain) uint64 {
	h := fnv.New64a()
	for _, r := range c.Rules {
		h.Write([]byte(r))
		h.Write([]byte{'\n'})
	}
	return h.Sum64()
}

// changes returns the iptables-restore input that takes family f's tables
// from what the Backend last programmed (or, on a full sync, from kernel)
// to rs, the digests of rs's chains, and the number of chains written or
// deleted.
func (b *Backend) changes(f model.Family, rs *Ruleset, kernel *saved) (string, map[string]map[string]uint64, int) {
	var out strings.Builder
	digests := map[string]map[string]uint64{}
	n := 0
	for _, table := range tables {
		var decl, rules, dels strings.Builder
		want := map[string]uint64{}
		prev := b.chains[famIndex(f)][table]
		for _, c := range rs.Chains(table) {
			d := digest(c)
			want[c.Name] = d
			if old, ok := prev[c.Name]; kernel == nil && ok && old == d {
				continue
			}
			fmt.Fprintf(&decl, ":%s - [0:0]\n", c.Name)
			writeRules(&rules, c)
			n++
		}
		stale := func(name string) {
			if _, ok := want[name]; !ok {
				fmt.Fprintf(&decl, ":%s - [0:0]\n", name)
				fmt.Fprintf(&dels, "-X %s\n", name)
				n++
			}
		}
		var jumpLines strings.Builder
		if kernel != nil {
			for _, name := range kernel.sortedChains(table) {
				stale(name)
			}
			// Jumps to kubenat's chains that are not wanted (an earlier
			// version's) go first: a chain cannot be deleted while a rule
			// jumps to it. In a built-in chain that misses one of its
			// jumps, all of them are put back, in order, at its head.
			wanted := map[string]bool{}
			missing := map[string]bool{} // built-in chain → a jump is missing
			for _, j := range jumps {
				if j.Table == table {
					wanted[j.Chain+" "+j.Rule] = true
					missing[j.Chain] = missing[j.Chain] || !kernel.jumps[table][j.Chain+" "+j.Rule]
				}
			}
			for _, line := range kernel.jumpLines[table] {
				chain, _, _ := strings.Cut(line, " ")
				if !wanted[line] || missing[chain] {
					fmt.Fprintf(&jumpLines, "-D %s\n", line)
				}
			}
			for _, j := range jumps {
				if j.Table == table && missing[j.Chain] {
					fmt.Fprintf(&jumpLines, "-I %s 1 %s\n", j.Chain, j.Rule)
				}
			}
		} else {
			for _, name := range slices.Sorted(maps.Keys(prev)) {
				stale(name)
			}
		}
		digests[table] = want
		if decl.Len()+jumpLines.Len() == 0 {
			continue
		}
		fmt.Fprintf(&out, "*%s\n%s%s%s%sCOMMIT\n", table, decl.String(), jumpLines.String(), rules.String(), dels.String())
	}
	return out.String(), digests, n
}

// Intact reports whether kubenat's chains are still in the kernel: every
// jump from a built-in chain, and the rule of KUBENAT-MARK-MASQ (`iptables
// -t nat -F` flushes every chain of the table), with `iptables -C`. It
// finds tables flushed, jumps and chains deleted from outside; not a
// single rule deleted, nor a jump that another rule inserted ahead of.
// When they are not intact, the next Sync is a full one. Before a Sync
// has succeeded there is nothing to check: it reports true.
func (b *Backend) Intact(ctx context.Context) (bool, error) {
	if !b.synced {
		return true, nil
	}
	checks := append(slices.Clip(jumps), Jump{TableNAT, chainMarkMasq, fmt.Sprintf("-j MARK --or-mark 0x%x", b.o.MasqueradeMark)})
	for _, f := range b.o.families() {
		for _, c := range checks {
			ok, err := b.run.Check(ctx, f, c.Table, c.Chain, c.Rule)
			if err != nil {
				return false, fmt.Errorf("checking kubenat's %s chains: %w", f, err)
			}
			if !ok {
				b.synced = false
				return false, nil
			}
		}
	}
	return true, nil
}

// Holds returns 0: the iptables datapath holds no endpoints for open
// connections (it leaves no traffic untracked).
func (b *Backend) Holds() int { return 0 }

// Cleanup removes every chain kubenat owns and the jumps to them, in both
// families (IPv4 alone on a kernel without IPv6: see IPv6Enabled), and
// reports whether there was any. Tables that do not exist are not
// created.
func Cleanup(ctx context.Context, run Runner) (bool, error) {
	removed := false
	for _, f := range (Options{IPv4Only: !IPv6Enabled()}).families() {
		out, err := run.Save(ctx, f)
		if err != nil {
			return removed, fmt.Errorf("reading the %s tables: %w", f, err)
		}
		kernel := parseSave(out)
		var input strings.Builder
		for _, table := range kernel.tables {
			chains := kernel.sortedChains(table)
			if len(chains) == 0 && len(kernel.jumpLines[table]) == 0 {
				continue
			}
			fmt.Fprintf(&input, "*%s\n", table)
			for _, c := range chains {
				fmt.Fprintf(&input, ":%s - [0:0]\n", c)
			}
			for _, j := range kernel.jumpLines[table] {
				fmt.Fprintf(&input, "-D %s\n", j)
			}
			for _, c := range chains {
				fmt.Fprintf(&input, "-X %s\n", c)
			}
			input.WriteString("COMMIT\n")
		}
		if input.Len() == 0 {
			continue
		}
		if err := run.Restore(ctx, f, input.String()); err != nil {
			return removed, fmt.Errorf("removing kubenat's %s chains: %w", f, err)
		}
		removed = true
	}
	return removed, nil
}
