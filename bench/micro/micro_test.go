package micro

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/kubenat/kubenat/bench/workload"
	"github.com/kubenat/kubenat/internal/dataplane/nftables"
	"github.com/kubenat/kubenat/internal/model"
)

var cache sync.Map // int → *workload.Cluster

func objects(b testing.TB, n int) *workload.Cluster {
	if c, ok := cache.Load(n); ok {
		return c.(*workload.Cluster)
	}
	c, err := Objects(n)
	if err != nil {
		b.Fatal(err)
	}
	cache.Store(n, c)
	return c
}

func forSizes(b *testing.B, fn func(b *testing.B, objs *workload.Cluster)) {
	for _, n := range Sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { fn(b, objects(b, n)) })
	}
}

// BenchmarkModelBuild: every object delivered to a new Builder, then Build.
func BenchmarkModelBuild(b *testing.B) {
	forSizes(b, func(b *testing.B, objs *workload.Cluster) {
		b.ReportAllocs()
		for b.Loop() {
			NewBuilder(objs)
		}
	})
}

// BenchmarkModelChange: one EndpointSlice changed, then Build.
func BenchmarkModelChange(b *testing.B) {
	forSizes(b, func(b *testing.B, objs *workload.Cluster) {
		mb, _ := NewBuilder(objs)
		f := NewFlipper(objs)
		b.ReportAllocs()
		for b.Loop() {
			mb.SetEndpointSlice(f.Next(), "bench")
			mb.Build()
		}
	})
}

// BenchmarkRender: the complete ruleset as nft text.
func BenchmarkRender(b *testing.B) {
	forSizes(b, func(b *testing.B, objs *workload.Cluster) {
		_, st := NewBuilder(objs)
		b.ReportAllocs()
		for b.Loop() {
			nftables.Render(st, nftables.Options{})
		}
	})
}

// BenchmarkBackendFullSync: the backend's full sync (bookkeeping and
// script) with a runner that does nothing.
func BenchmarkBackendFullSync(b *testing.B) {
	forSizes(b, func(b *testing.B, objs *workload.Cluster) {
		_, st := NewBuilder(objs)
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := nftables.New(&NopRunner{}, nftables.Options{}).Sync(ctx, st, model.Delta{Full: true}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSyncChange: one endpoint change through the Builder and the
// backend's incremental sync (runner does nothing).
func BenchmarkSyncChange(b *testing.B) {
	forSizes(b, func(b *testing.B, objs *workload.Cluster) {
		mb, st := NewBuilder(objs)
		ctx := context.Background()
		be := nftables.New(&NopRunner{}, nftables.Options{})
		if _, err := be.Sync(ctx, st, model.Delta{Full: true}); err != nil {
			b.Fatal(err)
		}
		f := NewFlipper(objs)
		b.ReportAllocs()
		for b.Loop() {
			if err := SyncChange(ctx, mb, be, f); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestBodies runs every benchmark body once at a tiny size.
func TestBodies(t *testing.T) {
	objs, err := Objects(20)
	if err != nil {
		t.Fatal(err)
	}
	mb, st := NewBuilder(objs)
	if len(st.Services) != 20 || len(st.Errors) > 0 {
		t.Fatalf("built %d Services, errors %v", len(st.Services), st.Errors)
	}
	if out := nftables.Render(st, nftables.Options{}); len(out) == 0 {
		t.Fatal("empty rendering")
	}
	ctx := context.Background()
	r := &NopRunner{}
	be := nftables.New(r, nftables.Options{})
	if _, err := be.Sync(ctx, st, model.Delta{Full: true}); err != nil {
		t.Fatal(err)
	}
	f := NewFlipper(objs)
	for range 5 {
		if err := SyncChange(ctx, mb, be, f); err != nil {
			t.Fatal(err)
		}
		if r.Bytes == 0 {
			t.Fatal("a change produced no script")
		}
	}
}
