package kube

import (
	"context"
	"fmt"
	"sync"

	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/kubenat/kubenat/internal/agent"
)

// sliceWatch lists and watches EndpointSlices without caching them, unlike
// an informer: each slice goes to the sink, which keeps only what the
// datapath needs of it (model.Builder parses it once), and sliceWatch
// remembers only its key, to tell which slices a re-list no longer has.
// At 50,000 Services the typed slices would otherwise take ~70 MB.
//
// It is client-go's list-watch machinery (a reflector feeding a DeltaFIFO)
// with the key set as the FIFO's "known objects": watches resume from the
// last resourceVersion, and a re-list delivers every listed slice again
// and, for the keys it no longer has, deletions. Slices labelled for
// another service proxy are not delivered (a slice that gets such a label
// is deleted), as for Services (serviceHandler).
//
// Deliveries go through a buffer, in order, drained by a goroutine of
// their own (as an informer's listener does): the sink may block for a
// whole sync (the agent holds its lock while it programs the kernel) and
// the FIFO, and so the watch, must not wait for it.
type sliceWatch struct {
	sink      agent.Sink
	proxyName string
	ctrl      cache.Controller

	mu      sync.Mutex
	keys    map[string]struct{}
	pending []func()      // deliveries not made yet, in order
	busy    bool          // a batch of pending is being delivered
	wake    chan struct{} // capacity 1: pending has work
}

func newSliceWatch(lw cache.ListerWatcher, proxyName string, sink agent.Sink) *sliceWatch {
	w := &sliceWatch{sink: sink, proxyName: proxyName, keys: map[string]struct{}{}, wake: make(chan struct{}, 1)}
	// Trimmed like the informers' objects: a slice waits in the queue until
	// it is delivered.
	fifo := cache.NewDeltaFIFOWithOptions(cache.DeltaFIFOOptions{KnownObjects: w, EmitDeltaTypeReplaced: true, Transformer: trim})
	w.ctrl = cache.New(&cache.Config{
		Queue: fifo, ListerWatcher: lw, ObjectType: &discovery.EndpointSlice{},
		ObjectDescription: "EndpointSlices", Process: w.process,
	})
	return w
}

// sliceListWatch lists and watches the EndpointSlices that selector
// matches, in every namespace.
func sliceListWatch(client kubernetes.Interface, selector string) cache.ListerWatcher {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).Watch(ctx, o)
		},
	}
}

// run lists, watches and delivers until ctx ends.
func (w *sliceWatch) run(ctx context.Context) {
	go w.deliver(ctx)
	w.ctrl.RunWithContext(ctx)
}

// hasSynced reports whether the initial list has been delivered to the
// sink: the FIFO has handed over every listed slice and the buffer is
// drained.
func (w *sliceWatch) hasSynced() bool {
	if !w.ctrl.HasSynced() {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending) == 0 && !w.busy
}

// deliver makes the buffered deliveries, in order, until ctx ends.
func (w *sliceWatch) deliver(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		w.mu.Lock()
		batch := w.pending
		w.pending, w.busy = nil, true
		w.mu.Unlock()
		for _, f := range batch {
			f()
		}
		w.mu.Lock()
		w.busy = false
		w.mu.Unlock()
	}
}

// enqueue buffers a delivery; called with w.mu held.
func (w *sliceWatch) enqueue(f func()) {
	w.pending = append(w.pending, f)
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// ListKeys and GetByKey make the key set the DeltaFIFO's known objects.
// The value of a known key is the key itself: a slice deleted while no
// watch saw it reaches process as a cache.DeletedFinalStateUnknown, of
// which only the key is used.
func (w *sliceWatch) ListKeys() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.keys))
	for k := range w.keys {
		out = append(out, k)
	}
	return out
}

func (w *sliceWatch) GetByKey(k string) (any, bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.keys[k]
	return cache.ExplicitKey(k), ok, nil
}

// count returns the number of slices delivered and not deleted.
func (w *sliceWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.keys)
}

// process records the newest state of one slice and buffers its delivery.
func (w *sliceWatch) process(obj any, _ bool) error {
	deltas, ok := obj.(cache.Deltas)
	if !ok || len(deltas) == 0 {
		return fmt.Errorf("kubernetes source: unexpected %T from the EndpointSlice queue", obj)
	}
	d := deltas.Newest()
	w.mu.Lock()
	defer w.mu.Unlock()
	if d.Type == cache.Deleted {
		ns, name, ok := key(d.Object)
		if ok && w.forget(ns, name) {
			w.enqueue(func() {
				klog.V(4).InfoS("EndpointSlice deleted", "object", klog.KRef(ns, name))
				w.sink.DeleteEndpointSlice(ns, name)
			})
		}
		return nil
	}
	s, ok := d.Object.(*discovery.EndpointSlice)
	if !ok {
		return nil // not expected: the FIFO only holds slices (resync is off)
	}
	if otherProxy(s.Labels, w.proxyName) {
		if w.forget(s.Namespace, s.Name) {
			w.enqueue(func() { w.sink.DeleteEndpointSlice(s.Namespace, s.Name) })
		}
		return nil
	}
	w.keys[cache.NewObjectName(s.Namespace, s.Name).String()] = struct{}{}
	w.enqueue(func() {
		klog.V(4).InfoS("EndpointSlice changed", "object", klog.KObj(s), "resourceVersion", s.ResourceVersion)
		w.sink.SetEndpointSlice(s, "")
	})
	return nil
}

// forget removes a slice's key and reports whether it was known; called
// with w.mu held.
func (w *sliceWatch) forget(namespace, name string) bool {
	k := cache.NewObjectName(namespace, name).String()
	_, ok := w.keys[k]
	delete(w.keys, k)
	return ok
}
