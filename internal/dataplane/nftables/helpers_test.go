package nftables

import (
	"testing"

	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/nft"
)

func newNamespace(t *testing.T) string { return netnstest.NewNamespace(t) }

func runnerIn(ns string) nft.Runner { return netnstest.NSRunner{NS: ns} }

// loadRendering replaces kubenat's tables in ns with Render(st).
func loadRendering(t *testing.T, ns string, st *model.State) {
	t.Helper()
	script := "add table ip kubenat\ndelete table ip kubenat\nadd table ip6 kubenat\ndelete table ip6 kubenat\n" + Render(st, Options{})
	if _, err := runnerIn(ns).Run(t.Context(), script); err != nil {
		t.Fatalf("loading the rendering: %v", err)
	}
}

// rendered returns the canonical ruleset (see canonical) a fresh
// namespace holds once Render(st) is loaded into it.
func rendered(t *testing.T, st *model.State) string {
	t.Helper()
	ns := newNamespace(t)
	loadRendering(t, ns, st)
	return canonical(t, ns)
}
