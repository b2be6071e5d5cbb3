package iptables

import (
	"maps"
	"slices"
	"strings"
)

// saved is what iptables-save shows of kubenat in one family.
type saved struct {
	tables []string                   // the tables that exist, in order
	chains map[string]map[string]bool // table → kubenat's chains
	// jumps are kubenat's rules in built-in chains, per table, as "CHAIN
	// RULE"; jumpLines the same rules in order.
	jumps     map[string]map[string]bool
	jumpLines map[string][]string
}

// parseSave reads iptables-save output. A rule counts as kubenat's jump
// when a built-in chain's rule jumps to a chain named with Prefix.
func parseSave(out string) *saved {
	s := &saved{chains: map[string]map[string]bool{}, jumps: map[string]map[string]bool{}, jumpLines: map[string][]string{}}
	table := ""
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			s.tables = append(s.tables, table)
			s.chains[table] = map[string]bool{}
			s.jumps[table] = map[string]bool{}
		case strings.HasPrefix(line, ":"+Prefix):
			name, _, _ := strings.Cut(line[1:], " ")
			s.chains[table][name] = true
		case strings.HasPrefix(line, "-A "):
			rule := line[len("-A "):]
			chain, _, _ := strings.Cut(rule, " ")
			if !strings.HasPrefix(chain, Prefix) && strings.Contains(rule, " -j "+Prefix) {
				s.jumps[table][rule] = true
				s.jumpLines[table] = append(s.jumpLines[table], rule)
			}
		}
	}
	return s
}

// sortedChains returns kubenat's chains in table, sorted.
func (s *saved) sortedChains(table string) []string {
	return slices.Sorted(maps.Keys(s.chains[table]))
}
