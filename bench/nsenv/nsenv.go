// Package nsenv owns the network namespaces of one benchmark process: it
// builds topo clusters with names that identify the process
// ("kb<pid>x<seq>-…"), removes each when released or when the process
// ends normally, and at start removes namespaces that earlier benchmark
// processes left behind when they were killed.
package nsenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/kubenat/kubenat/internal/topo"
)

// Env creates and tracks clusters. It is safe for concurrent use.
type Env struct {
	mu       sync.Mutex
	seq      int
	clusters map[*topo.Cluster]bool
}

// New returns an Env after removing stale benchmark namespaces: those whose
// names carry the pid of a process that no longer exists.
func New() *Env {
	topo.RemoveStale("kb")
	return &Env{clusters: map[*topo.Cluster]bool{}}
}

// Cluster builds spec. release destroys it (idempotent).
func (e *Env) Cluster(ctx context.Context, spec topo.Spec) (*topo.Cluster, func(), error) {
	e.mu.Lock()
	e.seq++
	prefix := fmt.Sprintf("kb%dx%d-", os.Getpid(), e.seq)
	e.mu.Unlock()
	c, err := topo.Build(ctx, prefix, spec)
	if err != nil {
		return nil, nil, fmt.Errorf("building the benchmark cluster: %w", err)
	}
	e.mu.Lock()
	e.clusters[c] = true
	e.mu.Unlock()
	var once sync.Once
	release := func() {
		once.Do(func() {
			e.mu.Lock()
			delete(e.clusters, c)
			e.mu.Unlock()
			_ = c.Destroy()
		})
	}
	return c, release, nil
}

// Close destroys every cluster not yet released.
func (e *Env) Close() error {
	e.mu.Lock()
	cs := e.clusters
	e.clusters = map[*topo.Cluster]bool{}
	e.mu.Unlock()
	var errs []error
	for c := range cs {
		errs = append(errs, c.Destroy())
	}
	return errors.Join(errs...)
}
