package kube

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
)

// withAPINoise adds what an API server's objects carry and kubenat does not
// read, as a cluster would have it.
func withAPINoise(objs []any) {
	meta := func(m *metav1.ObjectMeta) {
		m.UID = "0b5c2b7e-0000-4000-8000-000000000001"
		m.ResourceVersion = "4711"
		m.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}}
		m.OwnerReferences = []metav1.OwnerReference{{Kind: "Service", Name: "owner", UID: "u"}}
		if m.Annotations == nil {
			m.Annotations = map[string]string{}
		}
		m.Annotations["kubectl.kubernetes.io/last-applied-configuration"] = strings.Repeat("x", 4000)
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *v1.Service:
			meta(&o.ObjectMeta)
			o.Status.Conditions = []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue}}
		case *discovery.EndpointSlice:
			meta(&o.ObjectMeta)
			o.Annotations[v1.EndpointsLastChangeTriggerTime] = "2026-11-27T10:00:00Z"
			for i := range o.Endpoints {
				ep := &o.Endpoints[i]
				ep.TargetRef = &v1.ObjectReference{Kind: "Pod", Namespace: o.Namespace, Name: "pod", UID: "p"}
				ep.Zone = ptr.To("zone-a")
				ep.Hostname = ptr.To("pod")
				ep.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "zone-a"}}}
			}
		case *v1.Node:
			meta(&o.ObjectMeta)
			o.Spec.ProviderID = "kind://node-a"
			o.Status.Images = []v1.ContainerImage{{Names: []string{strings.Repeat("registry/image", 20)}, SizeBytes: 1 << 30}}
			o.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}}
			o.Status.NodeInfo = v1.NodeSystemInfo{KernelVersion: "6.18"}
		}
	}
}

// TestTrimKeepsWhatTheModelReads builds the State from objects as an API
// server sends them and from the same objects trimmed: they must be equal,
// and the trimmed objects must have lost what kubenat does not read.
func TestTrimKeepsWhatTheModelReads(t *testing.T) {
	node := k8sobj.Node("node-a", []string{"192.168.1.10", "fd00::10"}, []string{"10.1.1.0/24", "fd01::/64"})
	node.Labels = map[string]string{"topology.kubernetes.io/zone": "zone-a"}
	node.Spec.Taints = []v1.Taint{{Key: "example", Effect: v1.TaintEffectNoSchedule}}
	objs := []any{node}
	services := []k8sobj.Service{
		{Namespace: "default", Name: "web", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.10", "fd02::10"},
			Ports:           []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30080}},
			LoadBalancerIPs: []string{"203.0.113.10"}, ExternalIPs: []string{"198.51.100.10"}, ETPLocal: true,
			HealthCheckNodePort: 32000, AffinitySeconds: 60,
			Endpoints: []k8sobj.Endpoint{{IP: "10.1.1.2", Node: "node-a"}, {IP: "10.1.2.2", Node: "node-b"},
				{IP: "10.1.1.3", Node: "node-a", Terminating: true}, {IP: "fd01::2", Node: "node-a"}}},
		{Namespace: "default", Name: "dns", ClusterIPs: []string{"10.96.0.53"}, ITPLocal: true,
			Ports:     []k8sobj.Port{{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: 5353}},
			Endpoints: []k8sobj.Endpoint{{IP: "10.1.1.4", Node: "node-a", NotReady: true}, {IP: "10.1.2.4", Node: "node-b"}}},
	}
	for _, s := range services {
		svc, slices := s.Objects()
		objs = append(objs, svc)
		for _, sl := range slices {
			objs = append(objs, sl)
		}
	}
	// The legacy source-ranges annotation is read; a firewall needs a
	// LoadBalancer Service.
	objs[1].(*v1.Service).Annotations = map[string]string{model.AnnotationSourceRanges: "198.51.100.0/24"}
	withAPINoise(objs)
	// Read too: the creation time decides frontend conflicts between
	// Services, the deletion time makes the Node terminating.
	for i, o := range objs {
		o.(metav1.Object).SetCreationTimestamp(metav1.Unix(1700000000+int64(i), 0))
	}
	node.DeletionTimestamp = ptr.To(metav1.Unix(1800000000, 0))

	trimmed := make([]any, len(objs))
	for i, o := range objs {
		c := reflect.ValueOf(o).MethodByName("DeepCopy").Call(nil)[0].Interface()
		var err error
		if trimmed[i], err = trim(c); err != nil {
			t.Fatal(err)
		}
	}
	cfg := model.Config{NodeName: "node-a", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd01::/48")}}
	build := func(objs []any) *model.State {
		b := model.NewBuilder(cfg)
		for _, o := range objs {
			switch o := o.(type) {
			case *v1.Node:
				b.SetNode(o, "test")
			case *v1.Service:
				b.SetService(o, "test")
			case *discovery.EndpointSlice:
				b.SetEndpointSlice(o, "test")
			}
		}
		st, _ := b.Build()
		return st
	}
	want, got := build(objs), build(trimmed)
	if len(want.Services) != 2 || len(want.Errors) != 0 {
		t.Fatalf("the test objects should build 2 Services without errors: %d Services, errors %v", len(want.Services), want.Errors)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the State of trimmed objects differs:\n got %+v\nwant %+v", got, want)
	}
	if nodeChanged(objs[0].(*v1.Node), trimmed[0].(*v1.Node)) {
		t.Error("nodeChanged sees a difference between a Node and the same Node trimmed")
	}

	for i, o := range trimmed {
		m := o.(metav1.Object)
		if m.GetManagedFields() != nil || m.GetOwnerReferences() != nil || m.GetUID() == "" || m.GetResourceVersion() == "" {
			t.Errorf("trimmed %T %s: managedFields %v, ownerReferences %v, uid %q, resourceVersion %q",
				o, m.GetName(), m.GetManagedFields(), m.GetOwnerReferences(), m.GetUID(), m.GetResourceVersion())
		}
		orig := objs[i].(metav1.Object)
		created, origCreated := m.GetCreationTimestamp(), orig.GetCreationTimestamp()
		if !created.Equal(&origCreated) || !m.GetDeletionTimestamp().Equal(orig.GetDeletionTimestamp()) {
			t.Errorf("trimmed %T %s: creation %v, deletion %v; want %v, %v", o, m.GetName(),
				m.GetCreationTimestamp(), m.GetDeletionTimestamp(), orig.GetCreationTimestamp(), orig.GetDeletionTimestamp())
		}
		if _, ok := m.GetAnnotations()["kubectl.kubernetes.io/last-applied-configuration"]; ok {
			t.Errorf("trimmed %T %s keeps last-applied-configuration", o, m.GetName())
		}
		switch o := o.(type) {
		case *v1.Service:
			if o.Status.Conditions != nil {
				t.Errorf("trimmed Service %s keeps status.conditions", o.Name)
			}
		case *discovery.EndpointSlice:
			for j, ep := range o.Endpoints {
				if ep.TargetRef != nil || ep.Zone != nil || ep.Hostname != nil {
					t.Errorf("trimmed EndpointSlice %s keeps an endpoint's targetRef, zone or hostname: %+v", o.Name, ep)
				}
				// Topology hints are read (the State comparison above
				// sees them too).
				if want := objs[i].(*discovery.EndpointSlice).Endpoints[j].Hints; !reflect.DeepEqual(ep.Hints, want) {
					t.Errorf("trimmed EndpointSlice %s: an endpoint's hints are %+v, want %+v", o.Name, ep.Hints, want)
				}
			}
		case *v1.Node:
			if o.Status.Images != nil || o.Status.Conditions != nil || o.Status.NodeInfo != (v1.NodeSystemInfo{}) || o.Spec.ProviderID != "" {
				t.Errorf("trimmed Node keeps images, conditions, nodeInfo or providerID: %+v", o)
			}
		}
		full, _ := json.Marshal(objs[i])
		small, _ := json.Marshal(o)
		if len(small) >= len(full)/2 {
			t.Errorf("trimmed %T %s is %d bytes of JSON, the original %d", o, m.GetName(), len(small), len(full))
		}
	}
	if sl := trimmed[len(trimmed)-1].(*discovery.EndpointSlice); sl.Annotations[v1.EndpointsLastChangeTriggerTime] == "" {
		t.Error("the trigger-time annotation (programming latency) was dropped")
	}
}
