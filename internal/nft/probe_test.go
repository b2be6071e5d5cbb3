package nft

import (
	"context"
	"testing"

	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestChainRules counts a chain's rules in a namespace of the test's, as
// nft would list them, and finds none in a flushed chain and a missing
// table or chain.
func TestChainRules(t *testing.T) {
	c := netnstest.NewCluster(t, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a"}}})
	bin, err := NewBinary("")
	if err != nil {
		t.Fatal(err)
	}
	in := func(fn func() error) {
		t.Helper()
		if err := topo.InNS(c.Nodes[0].NS, fn); err != nil {
			t.Fatal(err)
		}
	}
	run := func(script string) {
		t.Helper()
		in(func() error { _, err := bin.Run(context.Background(), script); return err })
	}
	count := func(family, table, chain string) int {
		t.Helper()
		var n int
		in(func() error {
			var err error
			n, err = ChainRules(family, table, chain)
			return err
		})
		return n
	}
	run(`table ip probe {
	set big {
		type ipv4_addr
		elements = { 10.0.0.1, 10.0.0.2 }
	}
	chain other {
	}
	chain pre {
		type nat hook prerouting priority -100; policy accept;
		ip daddr @big accept
		jump other
		counter
	}
}
table ip6 probe {
	chain pre {
		type filter hook prerouting priority 0; policy accept;
		counter
	}
}
`)
	for _, tc := range []struct {
		family, table, chain string
		want                 int
	}{
		{"ip", "probe", "pre", 3},
		{"ip", "probe", "other", 0},
		{"ip6", "probe", "pre", 1},
		{"inet", "probe", "pre", 0},
		{"ip", "probe", "missing", 0},
		{"ip", "missing", "pre", 0},
	} {
		if got := count(tc.family, tc.table, tc.chain); got != tc.want {
			t.Errorf("ChainRules(%s %s %s) = %d, want %d", tc.family, tc.table, tc.chain, got, tc.want)
		}
	}
	run("flush table ip probe")
	if got := count("ip", "probe", "pre"); got != 0 {
		t.Errorf("after flush table: %d rules, want 0", got)
	}
	if _, err := ChainRules("bridge", "probe", "pre"); err == nil {
		t.Error("an unknown family is not an error")
	}
}
