package agent

import (
	"context"
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/kubenat/kubenat/internal/model"
)

// Snapshot is the State a source describes at one moment, with the
// problems the source itself found.
type Snapshot struct {
	State        *model.State
	SourceErrors []error
	Warnings     []string
	// NodeFound says the source had a Node named as the configured node.
	NodeFound bool
}

// Collect loads src once (waiting for its complete initial content) and
// builds the State for cfg, without programming anything: what render and
// trace show.
func Collect(ctx context.Context, cfg model.Config, src Source) (*Snapshot, error) {
	c := &collector{b: model.NewBuilder(cfg)}
	if err := src.Load(ctx, c); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st, _ := c.b.Build()
	return &Snapshot{State: st, SourceErrors: c.errs, Warnings: c.warnings, NodeFound: c.b.HasNode()}, nil
}

// collector is a Sink that only records into a Builder.
type collector struct {
	mu       sync.Mutex
	b        *model.Builder
	errs     []error
	warnings []string
}

func (c *collector) do(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
}

func (c *collector) SetService(svc *v1.Service, origin string) {
	c.do(func() { c.b.SetService(svc, origin) })
}

func (c *collector) DeleteService(namespace, name string) {
	c.do(func() { c.b.DeleteService(model.ServiceKey{Namespace: namespace, Name: name}) })
}

func (c *collector) SetEndpointSlice(s *discovery.EndpointSlice, origin string) {
	c.do(func() { c.b.SetEndpointSlice(s, origin) })
}

func (c *collector) DeleteEndpointSlice(namespace, name string) {
	c.do(func() { c.b.DeleteEndpointSlice(namespace, name) })
}

func (c *collector) SetNode(n *v1.Node, origin string) { c.do(func() { c.b.SetNode(n, origin) }) }

func (c *collector) DeleteNode(name string) { c.do(func() { c.b.DeleteNode(name) }) }

func (c *collector) SetServiceCIDR(sc *networkingv1.ServiceCIDR, origin string) {
	c.do(func() { c.b.SetServiceCIDR(sc, origin) })
}

func (c *collector) DeleteServiceCIDR(name string) { c.do(func() { c.b.DeleteServiceCIDR(name) }) }

func (c *collector) SourceErrors(errs []error, warnings []string) {
	c.do(func() { c.errs, c.warnings = errs, warnings })
}

func (c *collector) Synced() {}
