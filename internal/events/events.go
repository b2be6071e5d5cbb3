// Package events records Kubernetes Events about Services: failures that
// concern one Service (an input kubenat cannot program, a health-check port
// that cannot be bound) appear in `kubectl describe service` and
// `kubectl get events`, where the Service's owner looks.
//
// Code that finds such a failure takes a Recorder and calls Eventf with the
// Service's key. Without the Kubernetes API (manifest mode) the Recorder is
// Nop.
package events

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/kubenat/kubenat/internal/model"
)

// Component is the event source's component name.
const Component = "kubenat"

// Recorder records events on Services. Implementations are safe for
// concurrent use and never block on the API.
type Recorder interface {
	// Eventf records an event of eventType (v1.EventTypeNormal or
	// v1.EventTypeWarning) with a CamelCase reason on the Service svc.
	Eventf(svc model.ServiceKey, eventType, reason, messageFmt string, args ...any)
}

// Nop is a Recorder that discards events.
var Nop Recorder = nop{}

type nop struct{}

func (nop) Eventf(model.ServiceKey, string, string, string, ...any) {}

// ServiceLookup returns the UID of the Service namespace/name as last seen
// (e.g. by the source's watch), or "" when it is unknown.
type ServiceLookup func(namespace, name string) types.UID

// KubeRecorder records events through the Kubernetes API as component
// "kubenat" on this node. Repeated identical events are aggregated by
// client-go into one Event with a count.
type KubeRecorder struct {
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
	lookup      ServiceLookup
}

// New returns a KubeRecorder sending events with client until ctx ends or
// Shutdown. lookup finds the Service's UID, so that the event refers to it
// (kubectl describe matches on it); nil, or a Service it does not know,
// gives a reference by namespace and name only.
func New(ctx context.Context, client kubernetes.Interface, nodeName string, lookup ServiceLookup) *KubeRecorder {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	b.StartStructuredLogging(4)
	return &KubeRecorder{
		broadcaster: b,
		recorder:    b.NewRecorder(scheme.Scheme, v1.EventSource{Component: Component, Host: nodeName}),
		lookup:      lookup,
	}
}

// Eventf implements Recorder. It returns at once; the event is sent in the
// background.
func (r *KubeRecorder) Eventf(svc model.ServiceKey, eventType, reason, messageFmt string, args ...any) {
	ref := &v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: svc.Namespace, Name: svc.Name}
	if r.lookup != nil {
		ref.UID = r.lookup(svc.Namespace, svc.Name)
	}
	if ref.UID == "" {
		klog.V(5).InfoS("Event on a Service of unknown UID", "service", svc.String(), "reason", reason, "message", fmt.Sprintf(messageFmt, args...))
	}
	r.recorder.Eventf(ref, eventType, reason, messageFmt, args...)
}

// Shutdown stops sending events. Events not sent yet are dropped.
func (r *KubeRecorder) Shutdown() { r.broadcaster.Shutdown() }
