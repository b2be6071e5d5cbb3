package nftables

import (
	"fmt"
	"strings"

	"github.com/kubenat/kubenat/internal/model"
)

// Render returns the complete ruleset for st: the "ip" and "ip6" tables,
// in nft syntax. Applying it with `nft -f` (after deleting kubenat's
// tables) gives exactly what the agent programs.
func Render(st *model.State, o Options) string {
	o = o.withDefaults()
	c := contentOf(st)
	var b strings.Builder
	for _, a := range families {
		writeTable(&b, a, c.fams[a.f], o, st.Config.MasqueradeAll)
	}
	return b.String()
}

// contentOf computes the element content of a State.
func contentOf(st *model.State) *content {
	c := newContent()
	for _, e := range nodeElems(st) {
		c.add(e)
	}
	for _, k := range st.SortedKeys() {
		for _, e := range serviceElems(st.Services[k]) {
			c.add(e)
		}
	}
	return c
}

// writeTable writes one table block.
func writeTable(b *strings.Builder, a fam, fc *famContent, o Options, masqueradeAll bool) {
	fmt.Fprintf(b, "table %s %s {\n", a.name, o.Table)
	for _, name := range fc.setNames() {
		kind := "set"
		if strings.Contains(a.setDecl(name, o), " : ") {
			kind = "map"
		}
		fmt.Fprintf(b, "\t%s %s {\n", kind, name)
		for _, part := range strings.Split(strings.TrimSuffix(a.setDecl(name, o), ";"), "; ") {
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
	for _, ch := range a.chains(o, masqueradeAll, fc.dynamic()) {
		fmt.Fprintf(b, "\tchain %s {\n", ch.name)
		if ch.hook != "" {
			fmt.Fprintf(b, "\t\t%s\n", ch.hook)
		}
		for _, r := range ch.rules {
			fmt.Fprintf(b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
}
