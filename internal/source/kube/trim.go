package kube

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubenat/kubenat/internal/model"
)

// trim is the list-watches' transform: before an object is queued (and,
// for the Node, cached) it drops every field kubenat never reads, so that
// the objects waiting for delivery, which during a list are every Service
// and EndpointSlice of the cluster, stay small. What is kept:
//
//   - all objects: name, namespace, UID (events refer to a Service by it)
//     and resourceVersion (logged), labels (service-proxy-name, headless, service-name,
//     topology), creation and deletion timestamps;
//   - Service: the spec, status.loadBalancer, and of the annotations only
//     the legacy load-balancer-source-ranges one;
//   - EndpointSlice: address type, ports, and of each endpoint its
//     addresses, conditions, node name and topology hints; of the annotations only
//     last-change-trigger-time (the programming-latency metric);
//   - Node: spec.podCIDR(s), spec.taints and status.addresses.
//
// Dropped are, among others, managedFields, ownerReferences, other
// annotations (kubectl's last-applied-configuration can be larger than the
// rest of the object), endpoints' targetRef and zone, and the
// Node's images, conditions and system info. A model or source that starts
// reading another field must keep it here (TestTrimKeepsWhatTheModelReads
// checks the model's view of trimmed objects). Objects of other types
// only lose managedFields.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *v1.Service:
		o.ObjectMeta = trimMeta(o.ObjectMeta, model.AnnotationSourceRanges)
		o.Status = v1.ServiceStatus{LoadBalancer: o.Status.LoadBalancer}
	case *discovery.EndpointSlice:
		o.ObjectMeta = trimMeta(o.ObjectMeta, v1.EndpointsLastChangeTriggerTime)
		for i := range o.Endpoints {
			ep := &o.Endpoints[i]
			*ep = discovery.Endpoint{Addresses: ep.Addresses, Conditions: ep.Conditions, NodeName: ep.NodeName, Hints: ep.Hints}
		}
	case *v1.Node:
		o.ObjectMeta = trimMeta(o.ObjectMeta)
		o.Spec = v1.NodeSpec{PodCIDR: o.Spec.PodCIDR, PodCIDRs: o.Spec.PodCIDRs, Taints: o.Spec.Taints}
		o.Status = v1.NodeStatus{Addresses: o.Status.Addresses}
	default:
		if a, err := meta.Accessor(obj); err == nil {
			a.SetManagedFields(nil)
		}
	}
	return obj, nil
}

// trimMeta keeps the identity, labels and timestamps of m, and of its
// annotations only those named.
func trimMeta(m metav1.ObjectMeta, annotations ...string) metav1.ObjectMeta {
	out := metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Labels: m.Labels, CreationTimestamp: m.CreationTimestamp, DeletionTimestamp: m.DeletionTimestamp,
	}
	for _, k := range annotations {
		if v, ok := m.Annotations[k]; ok {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out
}
