package nftables

import (
	"context"
	"testing"

	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
)

// TestInitialSyncInChunks programs random Services into empty namespaces
// a few elements per transaction, and checks the kernel then holds what
// one transaction programs; then that a new Backend facing the existing
// tables replaces them, and goes on incrementally.
func TestInitialSyncInChunks(t *testing.T) {
	ctx := context.Background()
	b, r := randomBuilder(3, 40)
	st, d := b.Build()
	onlyConflicts(t, st)

	chunkNS, refNS := netnstest.NewNamespace(t), netnstest.NewNamespace(t)
	var scripts int
	counting := countingRunner{inner: netnstest.NSRunner{NS: chunkNS}, n: &scripts}
	res, err := New(counting, Options{InitialChunk: 7}).Sync(ctx, st, d)
	if err != nil || !res.Full {
		t.Fatalf("initial sync: %+v, %v", res, err)
	}
	if scripts < 10 {
		t.Errorf("the initial sync took %d transactions; want one per few elements", scripts)
	}
	if _, err := New(netnstest.NSRunner{NS: refNS}, Options{InitialChunk: -1}).Sync(ctx, st, d); err != nil {
		t.Fatalf("one-transaction sync: %v", err)
	}
	if got, want := canonical(t, chunkNS), canonical(t, refNS); got != want {
		t.Fatalf("chunked ruleset differs from the one-transaction one\nchunked:\n%s\none transaction:\n%s", got, want)
	}

	// A restarted agent finds the tables: one replacing transaction.
	scripts = 0
	be := New(counting, Options{InitialChunk: 7})
	if _, err := be.Sync(ctx, st, model.Delta{Full: true}); err != nil {
		t.Fatalf("replacing sync: %v", err)
	}
	if scripts != 2 { // the refused creation, then the replacement
		t.Errorf("replacing the tables took %d scripts, want 2", scripts)
	}
	svc, sl := randomService(r, 7).Objects()
	b.SetService(svc, "")
	for _, x := range sl {
		b.SetEndpointSlice(x, "")
	}
	st, d = b.Build()
	if res, err := be.Sync(ctx, st, d); err != nil || res.Full {
		t.Fatalf("incremental sync after the replacement: %+v, %v", res, err)
	}
	if _, err := New(netnstest.NSRunner{NS: refNS}, Options{}).Sync(ctx, st, model.Delta{Full: true}); err != nil {
		t.Fatal(err)
	}
	if got, want := canonical(t, chunkNS), canonical(t, refNS); got != want {
		t.Fatalf("after a change, the rulesets differ\nchunked:\n%s\nreference:\n%s", got, want)
	}
}

// countingRunner counts the scripts it runs.
type countingRunner struct {
	inner interface {
		Run(context.Context, string) (string, error)
		Name() string
	}
	n *int
}

func (c countingRunner) Name() string { return c.inner.Name() }

func (c countingRunner) Run(ctx context.Context, s string) (string, error) {
	*c.n++
	return c.inner.Run(ctx, s)
}
