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
// last resourceVersion, and a re-list delivers what changed, what is new
// and, for the keys it no longer has, deletions. Slices labelled for
// another service proxy are not delivered (a slice that gets such a label
// is deleted), as for the other objects (proxiedHandler).
type sliceWatch struct {
	sink      agent.Sink
	proxyName string
	ctrl      cache.Controller

	mu   sync.Mutex
	keys map[string]struct{}
}

func newSliceWatch(lw cache.ListerWatcher, proxyName string, sink agent.Sink) *sliceWatch {
	w := &sliceWatch{sink: sink, proxyName: proxyName, keys: map[string]struct{}{}}
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
	return k, ok, nil
}

// count returns the number of slices delivered and not deleted.
func (w *sliceWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.keys)
}

// process delivers the newest state of one slice.
func (w *sliceWatch) process(obj any, _ bool) error {
	deltas, ok := obj.(cache.Deltas)
	if !ok || len(deltas) == 0 {
		return fmt.Errorf("kubernetes source: unexpected %T from the EndpointSlice queue", obj)
	}
	d := deltas.Newest()
	if d.Type == cache.Deleted {
		ns, name, ok := key(d.Object)
		if !ok {
			return nil
		}
		w.forget(ns, name)
		klog.V(4).InfoS("EndpointSlice deleted", "object", klog.KRef(ns, name))
		w.sink.DeleteEndpointSlice(ns, name)
		return nil
	}
	s, ok := d.Object.(*discovery.EndpointSlice)
	if !ok {
		return nil // a resync of a known key: nothing to deliver again
	}
	k := cache.NewObjectName(s.Namespace, s.Name).String()
	if otherProxy(s.Labels, w.proxyName) {
		if w.forget(s.Namespace, s.Name) {
			w.sink.DeleteEndpointSlice(s.Namespace, s.Name)
		}
		return nil
	}
	w.mu.Lock()
	w.keys[k] = struct{}{}
	w.mu.Unlock()
	klog.V(4).InfoS("EndpointSlice changed", "object", klog.KObj(s), "resourceVersion", s.ResourceVersion)
	w.sink.SetEndpointSlice(s, "")
	return nil
}

// forget removes a slice's key and reports whether it was known.
func (w *sliceWatch) forget(namespace, name string) bool {
	k := cache.NewObjectName(namespace, name).String()
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.keys[k]
	delete(w.keys, k)
	return ok
}
