// Package micro holds Go microbenchmarks of kubenat's control plane: the
// model build and the nftables rendering, full and for one endpoint change,
// at 1,000 to 50,000 Services × 5 endpoints. Run them with
//
//	go test -run '^$' -bench . -benchmem -count 6 ./bench/micro
//
// and compare runs with benchstat. The functions here are the benchmark
// bodies; a test runs each once at a tiny size so they cannot rot.
package micro

import (
	"context"
	"fmt"
	"net/netip"

	discovery "k8s.io/api/discovery/v1"

	"github.com/kubenat/kubenat/bench/workload"
	"github.com/kubenat/kubenat/internal/dataplane/nftables"
	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
)

// Sizes are the numbers of Services the benchmarks use.
var Sizes = []int{1000, 10000, 50000}

// Config is the configuration the benchmarks build with.
var Config = model.Config{NodeName: "node-a", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}

// Objects generates n Services × 5 endpoints (every 20th a NodePort).
func Objects(n int) (*workload.Cluster, error) {
	return workload.Generate(workload.Spec{Services: n, Endpoints: 5, NodePortEvery: 20})
}

// NewBuilder returns a Builder loaded with objs and built once.
func NewBuilder(objs *workload.Cluster) (*model.Builder, *model.State) {
	b := model.NewBuilder(Config)
	b.SetNode(k8sobj.Node("node-a", []string{"192.168.100.11"}, []string{"10.244.1.0/24"}), "bench")
	for _, s := range objs.Services {
		b.SetService(s, "bench")
	}
	for _, s := range objs.EndpointSlices {
		b.SetEndpointSlice(s, "bench")
	}
	st, _ := b.Build()
	return b, st
}

// Flipper makes endpoint changes: each Next flips the readiness of the
// first endpoint of the next Service (round robin).
type Flipper struct {
	objs   *workload.Cluster
	slices map[int]*discovery.EndpointSlice
	i      int
}

// NewFlipper returns a Flipper over objs.
func NewFlipper(objs *workload.Cluster) *Flipper {
	return &Flipper{objs: objs, slices: map[int]*discovery.EndpointSlice{}}
}

// Next returns the next changed slice.
func (f *Flipper) Next() *discovery.EndpointSlice {
	idx := f.objs.SlicesOf[f.i%len(f.objs.Services)][0]
	f.i += 7919 // a prime: spread over the Services
	sl := f.slices[idx]
	if sl == nil {
		sl = f.objs.EndpointSlices[idx]
	}
	n := sl.DeepCopy()
	c := &n.Endpoints[0].Conditions
	r := c.Ready == nil || *c.Ready
	r = !r
	c.Ready = &r
	f.slices[idx] = n
	return n
}

// NopRunner accepts every script without running it: it measures the
// backend's own work.
type NopRunner struct{ Bytes int }

// Name returns "no-op".
func (*NopRunner) Name() string { return "no-op" }

// Run records the script's size.
func (r *NopRunner) Run(_ context.Context, script string) (string, error) {
	r.Bytes = len(script)
	return "", nil
}

// SyncChange applies one endpoint change through the Builder and the
// backend, as the agent does.
func SyncChange(ctx context.Context, b *model.Builder, be *nftables.Backend, f *Flipper) error {
	b.SetEndpointSlice(f.Next(), "bench")
	st, d := b.Build()
	if len(d.Changed) != 1 {
		return fmt.Errorf("one endpoint change changed %d Services", len(d.Changed))
	}
	_, err := be.Sync(ctx, st, d)
	return err
}
