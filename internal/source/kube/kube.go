// Package kube is the Kubernetes API source of the agent: client-go
// list-watches of Services, EndpointSlices and this node's Node object feed
// an agent.Sink, the same way the manifest source does.
//
// What is watched, and how:
//
//   - Services and EndpointSlices without the service.kubernetes.io/headless
//     label, selected by the API server (as kube-proxy does). The
//     service.kubernetes.io/service-proxy-name label is filtered here: an
//     object labelled with another proxy's name is dropped, one labelled
//     with kubenat's name (Options.ProxyName) is served. A label selector
//     cannot say "absent or equal to X", so these objects still reach
//     kubenat; one that moves between proxies is deleted from, or added
//     to, the sink.
//   - Services and EndpointSlices, the bulk of a large cluster, are not
//     cached (objectWatch): the sink keeps what it needs of each, and the
//     source only their keys and the Services' UIDs (events name a Service
//     by its UID).
//     Objects are trimmed to what kubenat reads (trim) while they wait to
//     be delivered.
//   - The Node named Options.NodeName, by field selector. Its updates reach
//     the sink only when a field the datapath depends on changes (see
//     nodeChanged): the kubelet's status heartbeats would otherwise rebuild
//     every Service every few seconds.
//   - ServiceCIDR objects (networking.k8s.io/v1, Kubernetes 1.33+), when
//     the API server serves them and kubenat may list them: an older API
//     server, or RBAC without them, leaves them out (logged once) rather
//     than keeping the agent from ever syncing; a passing error is retried
//     in the background.
//
// The sink's Synced is called only after every list-watch has listed its
// objects and delivered all of them, so a restarted agent never programs a
// partial (or empty) ruleset. The reflectors re-watch from the last
// resourceVersion when a watch ends (timeouts, API server restarts) and
// re-list when that version is too old; a re-list delivers every object
// again, and deletions for those it no longer has.
package kube

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/kubenat/kubenat/internal/agent"
	"github.com/kubenat/kubenat/internal/model"
)

// Options configure a Source.
type Options struct {
	// NodeName is the Node whose object is watched. Required.
	NodeName string
	// ProxyName is the service.kubernetes.io/service-proxy-name value that
	// names kubenat; empty means model.DefaultProxyName.
	ProxyName string
	// Resync is the Node informer's resync period: how often the cached
	// Node is delivered again although unchanged (Services and
	// EndpointSlices, which are not cached, are not). 0 (the default)
	// disables it; the datapath does not need it.
	Resync time.Duration
}

// Source watches the Kubernetes API. It runs once: call Load or Run, once.
type Source struct {
	opts        Options
	client      kubernetes.Interface
	nodeFactory informers.SharedInformerFactory
	node        cache.SharedIndexInformer
	nodeLister  corelisters.NodeLister
	services    *objectWatch
	slices      *objectWatch
}

// New returns a Source reading with client. The list-watches are created
// here and started by Load or Run.
func New(client kubernetes.Interface, opts Options) (*Source, error) {
	if opts.NodeName == "" {
		return nil, fmt.Errorf("kubernetes source: the node name is required")
	}
	if opts.ProxyName == "" {
		opts.ProxyName = model.DefaultProxyName
	}
	notHeadless, err := labels.NewRequirement(model.LabelHeadless, selection.DoesNotExist, nil)
	if err != nil {
		return nil, fmt.Errorf("kubernetes source: building the label selector: %w", err)
	}
	selector := labels.NewSelector().Add(*notHeadless).String()
	s := &Source{opts: opts, client: client,
		services: newObjectWatch(serviceKind, listWatch(selector, client.CoreV1().Services(metav1.NamespaceAll)), opts.ProxyName),
		slices:   newObjectWatch(sliceKind, listWatch(selector, client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll)), opts.ProxyName),
	}
	s.nodeFactory = informers.NewSharedInformerFactoryWithOptions(client, opts.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector(metav1.ObjectNameField, opts.NodeName).String()
		}),
		informers.WithTransform(trim))
	nodeInf := s.nodeFactory.Core().V1().Nodes()
	s.node, s.nodeLister = nodeInf.Informer(), nodeInf.Lister()
	return s, nil
}

// ServiceUID returns the UID of the Service namespace/name as last queued
// for delivery, or "" when it is unknown. It is an events.ServiceLookup.
func (s *Source) ServiceUID(namespace, name string) types.UID {
	return s.services.uid(namespace, name)
}

// Load delivers the current objects to sink, calls Synced and stops
// watching. It fails when ctx ends before every initial list was delivered.
func (s *Source) Load(ctx context.Context, sink agent.Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	synced, err := s.start(ctx, sink)
	if err != nil {
		return err
	}
	if !synced {
		return fmt.Errorf("kubernetes source: the initial lists were not all received: %w", context.Cause(ctx))
	}
	return nil
}

// Run delivers the current objects, calls sink.Synced, then delivers every
// change until ctx ends, and returns nil. API errors are retried by the
// list-watches for as long as ctx lasts; until the first sync nothing is
// delivered as Synced.
func (s *Source) Run(ctx context.Context, sink agent.Sink) error {
	if _, err := s.start(ctx, sink); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// start registers the Node handler, starts the list-watches and waits for
// them to deliver their initial lists; it reports whether they did before
// ctx ended. They stop when ctx ends.
func (s *Source) start(ctx context.Context, sink agent.Sink) (bool, error) {
	reg, err := s.node.AddEventHandler(nodeHandler(sink))
	if err != nil {
		return false, fmt.Errorf("kubernetes source: registering an event handler: %w", err)
	}
	start := time.Now()
	klog.InfoS("Watching the Kubernetes API", "node", s.opts.NodeName, "proxyName", s.opts.ProxyName)
	synced := []cache.InformerSynced{reg.HasSynced, s.services.hasSynced, s.slices.hasSynced}
	switch usable, final := s.serviceCIDRsUsable(ctx); {
	case usable:
		cidrSynced, err := s.watchServiceCIDRs(ctx, sink)
		if err != nil {
			return false, err
		}
		synced = append(synced, cidrSynced)
	case !final:
		// A passing problem (the API server unreachable, say): Services
		// are served meanwhile, and the ServiceCIDRs come when it passes.
		go s.retryServiceCIDRs(ctx, sink)
	}
	s.nodeFactory.Start(ctx.Done())
	go s.services.run(ctx, sink)
	go s.slices.run(ctx, sink)
	go func() {
		<-ctx.Done()
		s.nodeFactory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return false, nil
	}
	klog.InfoS("Kubernetes API lists received", "duration", time.Since(start),
		"services", s.services.count(), "endpointSlices", s.slices.count())
	if _, err := s.nodeLister.Get(s.opts.NodeName); apierrors.IsNotFound(err) {
		klog.InfoS("This node's Node object does not exist (yet): NodePorts use the configured node IPs, else the default routes' addresses", "node", s.opts.NodeName)
	}
	sink.Synced()
	return true, nil
}

// serviceCIDRsUsable reports whether the API server serves ServiceCIDR
// objects (networking.k8s.io/v1, Kubernetes 1.33+) and kubenat may list
// them, and whether the answer is final: an API server without them, or
// RBAC that forbids them, is (logged; only the configured serviceCIDRs
// are then used); other errors pass and are retried.
func (s *Source) serviceCIDRsUsable(ctx context.Context) (usable, final bool) {
	const gv = "networking.k8s.io/v1"
	list, err := s.client.Discovery().ServerResourcesForGroupVersion(gv)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		klog.ErrorS(err, "Asking the API server whether it serves ServiceCIDRs; asking again later")
		return false, false
	default:
		for _, r := range list.APIResources {
			usable = usable || r.Name == "servicecidrs"
		}
	}
	if !usable {
		klog.InfoS("The API server serves no ServiceCIDRs (" + gv + ", Kubernetes 1.33+): only the configured serviceCIDRs are dropped when unallocated; an API server upgraded later is read once the agent restarts")
		return false, true
	}
	_, err = s.client.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{Limit: 1})
	switch {
	case apierrors.IsForbidden(err):
		klog.ErrorS(err, "kubenat may not list ServiceCIDRs (its ClusterRole needs list and watch on servicecidrs): only the configured serviceCIDRs are dropped when unallocated")
		return false, true
	case err != nil:
		klog.ErrorS(err, "Listing ServiceCIDRs failed; asking again later")
		return false, false
	}
	return true, true
}

// watchServiceCIDRs starts an informer delivering ServiceCIDR objects to
// sink until ctx ends, and returns whether it has synced.
func (s *Source) watchServiceCIDRs(ctx context.Context, sink agent.Sink) (cache.InformerSynced, error) {
	inf := networkinginformers.NewServiceCIDRInformer(s.client, s.opts.Resync, cache.Indexers{})
	reg, err := inf.AddEventHandler(serviceCIDRHandler(sink))
	if err != nil {
		return nil, fmt.Errorf("kubernetes source: registering an event handler: %w", err)
	}
	go inf.Run(ctx.Done())
	return reg.HasSynced, nil
}

// retryServiceCIDRs asks again, backing off up to five minutes, until
// ServiceCIDRs are usable (then watches them) or finally not, or ctx ends.
func (s *Source) retryServiceCIDRs(ctx context.Context, sink agent.Sink) {
	for delay := time.Second; ; delay = min(2*delay, 5*time.Minute) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		usable, final := s.serviceCIDRsUsable(ctx)
		if usable {
			if _, err := s.watchServiceCIDRs(ctx, sink); err != nil {
				klog.ErrorS(err, "Watching ServiceCIDRs")
			}
			return
		}
		if final {
			return
		}
	}
}

func serviceCIDRHandler(sink agent.Sink) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if sc, ok := obj.(*networkingv1.ServiceCIDR); ok {
				klog.V(2).InfoS("ServiceCIDR seen", "serviceCIDR", klog.KObj(sc), "cidrs", sc.Spec.CIDRs)
				sink.SetServiceCIDR(sc, "")
			}
		},
		UpdateFunc: func(oldObj, obj any) {
			old, ok1 := oldObj.(*networkingv1.ServiceCIDR)
			sc, ok2 := obj.(*networkingv1.ServiceCIDR)
			if ok1 && ok2 && !slices.Equal(old.Spec.CIDRs, sc.Spec.CIDRs) {
				sink.SetServiceCIDR(sc, "")
			}
		},
		DeleteFunc: func(obj any) {
			if _, name, ok := key(obj); ok {
				klog.V(2).InfoS("ServiceCIDR deleted", "serviceCIDR", name)
				sink.DeleteServiceCIDR(name)
			}
		},
	}
}

// otherProxy reports whether an object's labels name another service proxy.
func otherProxy(l map[string]string, proxyName string) bool {
	name, ok := l[model.LabelServiceProxyName]
	return ok && name != proxyName
}

// key returns namespace and name of obj, which may be a tombstone.
func key(obj any) (namespace, name string, ok bool) {
	if t, isTomb := obj.(cache.DeletedFinalStateUnknown); isTomb {
		ns, n, err := cache.SplitMetaNamespaceKey(t.Key)
		return ns, n, err == nil
	}
	a, err := meta.Accessor(obj)
	if err != nil {
		return "", "", false
	}
	return a.GetNamespace(), a.GetName(), true
}

func nodeHandler(sink agent.Sink) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*v1.Node); ok {
				klog.V(2).InfoS("Node seen", "node", klog.KObj(n))
				sink.SetNode(n, "")
			}
		},
		UpdateFunc: func(oldObj, obj any) {
			old, ok1 := oldObj.(*v1.Node)
			n, ok2 := obj.(*v1.Node)
			if !ok1 || !ok2 || !nodeChanged(old, n) {
				return
			}
			klog.V(2).InfoS("Node changed", "node", klog.KObj(n))
			sink.SetNode(n, "")
		},
		DeleteFunc: func(obj any) {
			if _, name, ok := key(obj); ok {
				klog.InfoS("Node deleted", "node", name)
				sink.DeleteNode(name)
			}
		},
	}
}

// nodeChanged reports whether an update of the Node changes anything the
// datapath may depend on: its addresses, pod CIDRs, labels (topology),
// taints, or whether it is being deleted. Anything else (conditions,
// heartbeats, images, annotations) is ignored. A model that starts reading
// another field of the Node must be added here.
func nodeChanged(old, n *v1.Node) bool {
	return !reflect.DeepEqual(old.Status.Addresses, n.Status.Addresses) ||
		old.Spec.PodCIDR != n.Spec.PodCIDR ||
		!slices.Equal(old.Spec.PodCIDRs, n.Spec.PodCIDRs) ||
		!maps.Equal(old.Labels, n.Labels) ||
		!reflect.DeepEqual(old.Spec.Taints, n.Spec.Taints) ||
		(old.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil)
}
