package kube

import (
	"context"
	"fmt"
	"reflect"
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/kubenat/kubenat/internal/agent"
)

// kind is a type of object an objectWatch delivers, and which sink calls
// receive it.
type kind struct {
	name   string         // "Service", for logs and errors
	object runtime.Object // an empty object of the type
	set    func(sink agent.Sink, obj any)
	delete func(sink agent.Sink, namespace, name string)
	// keepUID makes the watch remember each object's UID (events name a
	// Service by it).
	keepUID bool
}

// The kinds the Source watches without caching them.
var (
	serviceKind = kind{
		name: "Service", object: &v1.Service{},
		set:     func(s agent.Sink, o any) { s.SetService(o.(*v1.Service), "") },
		delete:  func(s agent.Sink, ns, name string) { s.DeleteService(ns, name) },
		keepUID: true,
	}
	sliceKind = kind{
		name: "EndpointSlice", object: &discovery.EndpointSlice{},
		set:    func(s agent.Sink, o any) { s.SetEndpointSlice(o.(*discovery.EndpointSlice), "") },
		delete: func(s agent.Sink, ns, name string) { s.DeleteEndpointSlice(ns, name) },
	}
)

// listerWatcher is the List and Watch of a typed client of one resource
// (e.g. client.CoreV1().Services(namespace)).
type listerWatcher[L runtime.Object] interface {
	List(context.Context, metav1.ListOptions) (L, error)
	Watch(context.Context, metav1.ListOptions) (watch.Interface, error)
}

// listWatch lists and watches through api the objects selector matches.
func listWatch[L runtime.Object](selector string, api listerWatcher[L]) cache.ListerWatcher {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return api.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return api.Watch(ctx, o)
		},
	}
}

// objectWatch lists and watches one kind of object without caching it,
// unlike an informer: each object goes to the sink, which keeps only what
// the datapath needs of it (model.Builder parses it once), and objectWatch
// remembers only its key (and for Services its UID), to tell which objects
// a re-list no longer has and to let events name the object. At 50,000
// Services the typed Services and EndpointSlices would otherwise take
// ~100 MB.
//
// It is client-go's list-watch machinery (a reflector feeding a DeltaFIFO)
// with the key set as the FIFO's "known objects": watches resume from the
// last resourceVersion, and a re-list delivers every listed object again
// and, for the keys it no longer has, deletions. Objects labelled for
// another service proxy are not delivered (one that gets such a label is
// deleted: it may have been served before).
//
// Deliveries go through a buffer, in order, drained by a goroutine of
// their own (as an informer's listener does): the sink may block for a
// whole sync (the agent holds its lock while it programs the kernel) and
// the FIFO, and so the watch, must not wait for it.
type objectWatch struct {
	kind      kind
	sink      agent.Sink
	proxyName string
	ctrl      cache.Controller

	mu   sync.Mutex
	keys map[string]types.UID // namespace/name (→ UID, with kind.keepUID) of the objects queued or delivered
	// pending is the newest delivery not made yet of each object, and
	// order their keys as first queued: an object changing while the
	// sink is busy (a long sync) takes one entry, however often it
	// changes, so the buffer is bounded by the number of objects.
	pending map[string]func()
	order   []string
	busy    bool          // a batch of pending is being delivered
	wake    chan struct{} // capacity 1: pending has work
}

// newObjectWatch returns a watch of kind k through lw; run starts it.
func newObjectWatch(k kind, lw cache.ListerWatcher, proxyName string) *objectWatch {
	w := &objectWatch{kind: k, proxyName: proxyName, keys: map[string]types.UID{}, pending: map[string]func(){}, wake: make(chan struct{}, 1)}
	// Trimmed like the Node informer's objects: an object waits in the
	// queue until it is delivered.
	fifo := cache.NewDeltaFIFOWithOptions(cache.DeltaFIFOOptions{KnownObjects: w, EmitDeltaTypeReplaced: true, Transformer: trim})
	w.ctrl = cache.New(&cache.Config{
		Queue: fifo, ListerWatcher: lw, ObjectType: k.object,
		ObjectDescription: k.name + "s", Process: w.process,
	})
	return w
}

// run lists, watches and delivers to sink until ctx ends. It runs once.
func (w *objectWatch) run(ctx context.Context, sink agent.Sink) {
	w.sink = sink
	go w.deliver(ctx)
	w.ctrl.RunWithContext(ctx)
}

// hasSynced reports whether the initial list has been delivered to the
// sink: the FIFO has handed over every listed object and the buffer is
// drained.
func (w *objectWatch) hasSynced() bool {
	if !w.ctrl.HasSynced() {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.order) == 0 && !w.busy
}

// deliver makes the buffered deliveries, in order, until ctx ends.
func (w *objectWatch) deliver(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		w.mu.Lock()
		batch, order := w.pending, w.order
		w.pending, w.order, w.busy = map[string]func(){}, nil, true
		w.mu.Unlock()
		for _, k := range order {
			batch[k]()
			delete(batch, k) // the object it delivered may go
		}
		w.mu.Lock()
		w.busy = false
		w.mu.Unlock()
	}
}

// enqueue buffers the delivery of the object namespace/name, replacing one
// of it not made yet; called with w.mu held.
func (w *objectWatch) enqueue(namespace, name string, f func()) {
	k := cache.NewObjectName(namespace, name).String()
	if _, ok := w.pending[k]; !ok {
		w.order = append(w.order, k)
	}
	w.pending[k] = f
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// ListKeys and GetByKey make the key set the DeltaFIFO's known objects.
// The value of a known key is the key itself: an object deleted while no
// watch saw it reaches process as a cache.DeletedFinalStateUnknown, of
// which only the key is used.
func (w *objectWatch) ListKeys() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.keys))
	for k := range w.keys {
		out = append(out, k)
	}
	return out
}

func (w *objectWatch) GetByKey(k string) (any, bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.keys[k]
	return cache.ExplicitKey(k), ok, nil
}

// count returns the number of objects delivered and not deleted.
func (w *objectWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.keys)
}

// uid returns the UID of the object namespace/name as last queued for
// delivery, or "" when it is unknown (never seen, deleted, another proxy's,
// or of a kind whose UIDs are not kept).
func (w *objectWatch) uid(namespace, name string) types.UID {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.keys[cache.NewObjectName(namespace, name).String()]
}

// process records the newest state of one object and buffers its delivery.
func (w *objectWatch) process(obj any, _ bool) error {
	deltas, ok := obj.(cache.Deltas)
	if !ok || len(deltas) == 0 {
		return fmt.Errorf("kubernetes source: unexpected %T from the %s queue", obj, w.kind.name)
	}
	d := deltas.Newest()
	w.mu.Lock()
	defer w.mu.Unlock()
	if d.Type == cache.Deleted {
		ns, name, ok := key(d.Object)
		if ok && w.forget(ns, name) {
			w.enqueue(ns, name, func() {
				klog.V(4).InfoS(w.kind.name+" deleted", "object", klog.KRef(ns, name))
				w.kind.delete(w.sink, ns, name)
			})
		}
		return nil
	}
	o, ok := d.Object.(metav1.Object)
	if !ok || reflect.TypeOf(d.Object) != reflect.TypeOf(w.kind.object) {
		return nil // not expected: the FIFO only holds this kind (resync is off)
	}
	ns, name := o.GetNamespace(), o.GetName()
	if otherProxy(o.GetLabels(), w.proxyName) {
		if w.forget(ns, name) {
			w.enqueue(ns, name, func() { w.kind.delete(w.sink, ns, name) })
		}
		return nil
	}
	var uid types.UID
	if w.kind.keepUID {
		uid = o.GetUID()
	}
	w.keys[cache.NewObjectName(ns, name).String()] = uid
	w.enqueue(ns, name, func() {
		klog.V(4).InfoS(w.kind.name+" changed", "object", klog.KRef(ns, name), "resourceVersion", o.GetResourceVersion())
		w.kind.set(w.sink, d.Object)
	})
	return nil
}

// forget removes an object's key and reports whether it was known; called
// with w.mu held.
func (w *objectWatch) forget(namespace, name string) bool {
	k := cache.NewObjectName(namespace, name).String()
	_, ok := w.keys[k]
	delete(w.keys, k)
	return ok
}
