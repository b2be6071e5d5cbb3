package nftables

import (
	"fmt"
	"slices"
	"strings"

	"github.com/kubenat/kubenat/internal/model"
)

// Render returns the complete ruleset for st: the "ip" and "ip6" tables,
// in nft syntax. Applying it with `nft -f` (after deleting kubenat's
// tables) gives exactly what the agent programs.
//
// Render groups each set's elements, sorted, inside the set's declaration,
// for people to read; the agent's full sync sends the same ruleset with the
// elements added Service by Service (see plan), which needs far less
// memory. The kernel ends up holding the same thing either way (tested).
func Render(st *model.State, o Options) string {
	o = o.withDefaults()
	t := tablesOf(st)
	var b strings.Builder
	for _, a := range families {
		t.writeBlock(&b, a, o, modesOf(st), t.content.fams[a.f].dynamic())
	}
	return b.String()
}

// famObjects are the sets and chains Services own in one family's table.
type famObjects struct {
	sets   map[string]bool
	chains map[string][]string
}

// tables is the complete content of both tables.
type tables struct {
	content *content
	objects map[model.Family]*famObjects
}

// tablesOf computes the content of a State.
func tablesOf(st *model.State) *tables {
	t := &tables{content: newContent(), objects: map[model.Family]*famObjects{}}
	for _, a := range families {
		t.objects[a.f] = &famObjects{sets: map[string]bool{}, chains: map[string][]string{}}
	}
	for _, e := range nodeElems(st) {
		t.content.add(e)
	}
	for _, ports := range st.Services {
		c := serviceContrib(st, ports)
		for _, e := range c.elems {
			t.content.add(e)
		}
		for _, s := range c.sets {
			t.objects[s.f].sets[s.name] = true
		}
		for _, ch := range c.chains {
			t.objects[ch.f].chains[ch.name] = ch.rules
		}
	}
	return t
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func setKind(decl string) string {
	if strings.Contains(decl, " : ") {
		return "map"
	}
	return "set"
}

// writeBlock writes one family's table block: the static sets, the
// backends maps of d, the Services' own sets, the static chains, the
// backends maps' chains and the Services' own chains, with t's elements.
func (t *tables) writeBlock(b *strings.Builder, a fam, o Options, m modes, d dynamic) {
	fc := t.content.fams[a.f]
	objs := t.objects[a.f]
	fmt.Fprintf(b, "table %s %s {\n", a.name, o.Table)
	writeSet := func(name, decl string) {
		fmt.Fprintf(b, "\t%s %s {\n", setKind(decl), name)
		for _, part := range strings.Split(strings.TrimSuffix(decl, ";"), "; ") {
			fmt.Fprintf(b, "\t\t%s\n", part)
		}
		if els := fc.sortedElems(name); len(els) > 0 {
			b.WriteString("\t\telements = {\n")
			for i, e := range els {
				sep := ","
				if i == len(els)-1 {
					sep = ""
				}
				fmt.Fprintf(b, "\t\t\t%s%s\n", e, sep)
			}
			b.WriteString("\t\t}\n")
		}
		b.WriteString("\t}\n")
	}
	for _, name := range append(slices.Clone(staticSets), d.mapNames()...) {
		writeSet(name, a.setDecl(name, o))
	}
	for _, name := range sortedKeys(objs.sets) {
		writeSet(name, a.affinitySetDecl(o))
	}
	writeChain := func(name, hook string, rules []string) {
		fmt.Fprintf(b, "\tchain %s {\n", name)
		if hook != "" {
			fmt.Fprintf(b, "\t\t%s\n", hook)
		}
		for _, r := range rules {
			fmt.Fprintf(b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	for _, ch := range append(a.chains(o, m, d), a.lbMapChains(d)...) {
		writeChain(ch.name, ch.hook, ch.rules)
	}
	for _, name := range sortedKeys(objs.chains) {
		writeChain(name, "", objs.chains[name])
	}
	b.WriteString("}\n")
}
