package events_test

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/kubenat/kubenat/internal/apiservertest"
	"github.com/kubenat/kubenat/internal/events"
	"github.com/kubenat/kubenat/internal/model"
)

// TestEventsReachTheAPI records events through a real kube-apiserver and
// checks that `kubectl describe service` would show them: they refer to
// the Service's UID and carry kubenat's source.
func TestEventsReachTheAPI(t *testing.T) {
	srv, err := apiservertest.Start(t.Context(), t, apiservertest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(srv.RESTConfig())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	svc, err := cs.CoreV1().Services("default").Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(ns, name string) types.UID {
		if ns == svc.Namespace && name == svc.Name {
			return svc.UID
		}
		return ""
	}
	rec := events.New(ctx, cs, "node-a", lookup)
	t.Cleanup(rec.Shutdown)

	rec.Eventf(model.ServiceKey{Namespace: "default", Name: "web"}, v1.EventTypeWarning, "NotProgrammed", "port %d: %s", 80, "broken")
	rec.Eventf(model.ServiceKey{Namespace: "default", Name: "gone"}, v1.EventTypeWarning, "NotProgrammed", "unknown Service")

	for _, tc := range []struct {
		name, uid, message string
	}{
		{"web", string(svc.UID), "port 80: broken"},
		{"gone", "", "unknown Service"},
	} {
		ev := waitForEvent(t, cs, tc.name)
		if string(ev.InvolvedObject.UID) != tc.uid || ev.InvolvedObject.Kind != "Service" {
			t.Errorf("%s: involvedObject %+v, want Service with UID %q", tc.name, ev.InvolvedObject, tc.uid)
		}
		if ev.Type != v1.EventTypeWarning || ev.Reason != "NotProgrammed" || ev.Message != tc.message {
			t.Errorf("%s: event %s %s %q", tc.name, ev.Type, ev.Reason, ev.Message)
		}
		if ev.Source.Component != "kubenat" || ev.Source.Host != "node-a" {
			t.Errorf("%s: source %+v, want kubenat on node-a", tc.name, ev.Source)
		}
	}
}

// waitForEvent returns the first NotProgrammed event on the Service: the
// API server records events of its own on Services (a ClusterIP repair
// racing the allocation: ClusterIPNotAllocated).
func waitForEvent(t *testing.T, cs kubernetes.Interface, svcName string) *v1.Event {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		list, err := cs.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Service,involvedObject.name=" + svcName + ",reason=NotProgrammed",
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) > 0 {
			return &list.Items[0]
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no event on Service %s", svcName)
	return nil
}

func TestNop(t *testing.T) {
	events.Nop.Eventf(model.ServiceKey{Namespace: "a", Name: "b"}, v1.EventTypeWarning, "R", "m")
}
