package nftables

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/kubenat/kubenat/internal/model"
)

// okRunner accepts every script.
type okRunner struct{}

func (okRunner) Run(context.Context, string) (string, error) { return "", nil }
func (okRunner) Name() string                                { return "ok" }

// TestIntactChecksEveryFamily: Intact counts the rules of nat-prerouting
// in both families' tables; an empty one in either makes the next Sync a
// full one, and a failed count is an error, not a verdict.
func TestIntactChecksEveryFamily(t *testing.T) {
	st, _ := model.NewBuilder(model.Config{NodeName: "node-a",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}).Build()
	for _, tc := range []struct {
		name   string
		rules  map[string]int
		err    error
		intact bool
	}{
		{"both families in place", map[string]int{"ip": 1, "ip6": 1}, nil, true},
		{"the IPv4 table flushed", map[string]int{"ip": 0, "ip6": 1}, nil, false},
		{"the IPv6 table deleted", map[string]int{"ip": 1, "ip6": 0}, nil, false},
		{"the count fails", map[string]int{"ip": 1, "ip6": 1}, errors.New("netlink: permission denied"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var asked []string
			b := New(okRunner{}, Options{InitialChunk: -1, CountRules: func(family, table, chain string) (int, error) {
				asked = append(asked, family+" "+table+" "+chain)
				return tc.rules[family], tc.err
			}})
			if ok, err := b.Intact(); !ok || err != nil || len(asked) != 0 {
				t.Fatalf("before any Sync: Intact = %v, %v after asking %q; want true without asking", ok, err, asked)
			}
			if _, err := b.Sync(context.Background(), st, model.Delta{Full: true}); err != nil {
				t.Fatal(err)
			}
			ok, err := b.Intact()
			if ok != tc.intact || (err != nil) != (tc.err != nil) {
				t.Errorf("Intact = %v, %v; want %v (error: %v)", ok, err, tc.intact, tc.err != nil)
			}
			if want := []string{"ip kubenat nat-prerouting", "ip6 kubenat nat-prerouting"}; tc.err == nil && tc.intact && !slices.Equal(asked, want) {
				t.Errorf("asked %q, want %q", asked, want)
			}
			if !tc.intact && tc.err == nil && b.synced {
				t.Error("the next Sync would not be a full one")
			}
		})
	}
}
