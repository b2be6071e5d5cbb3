package deploy

import (
	"context"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubenat/kubenat/internal/apiservertest"
	"github.com/kubenat/kubenat/internal/events"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/source/kube"
)

// TestManifestsAgainstAPIServer creates the objects of kubenat.yaml in a
// real kube-apiserver that enforces RBAC (so they pass its validation, not
// only decoding), then acts as the DaemonSet's ServiceAccount: the Kubernetes
// source lists and watches what it needs and events are recorded with
// exactly the ClusterRole's permissions, and writing Services is refused.
func TestManifestsAgainstAPIServer(t *testing.T) {
	srv, err := apiservertest.Start(t.Context(), t, apiservertest.Options{AuthorizationMode: "RBAC"})
	if err != nil {
		t.Fatal(err)
	}
	admin := kubernetes.NewForConfigOrDie(srv.RESTConfig())
	ctx := context.Background()
	data, err := os.ReadFile(plainFile)
	if err != nil {
		t.Fatal(err)
	}
	var sa *v1.ServiceAccount
	var role *rbacv1.ClusterRole
	for _, obj := range decodeAll(t, string(data)) {
		var err error
		switch o := obj.(type) {
		case *v1.ServiceAccount:
			sa = o
			_, err = admin.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			role = o
			_, err = admin.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = admin.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *v1.ConfigMap:
			_, err = admin.CoreV1().ConfigMaps(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *appsv1.DaemonSet:
			_, err = admin.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("unexpected object %T", obj)
		}
		if err != nil {
			t.Fatalf("the API server rejects %T: %v", obj, err)
		}
	}
	if _, err := admin.CoreV1().Services("default").Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The DaemonSet's identity.
	cfg := srv.RESTConfig()
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + sa.Namespace + ":" + sa.Name,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + sa.Namespace, "system:authenticated"},
	}
	as := kubernetes.NewForConfigOrDie(cfg)

	src, err := kube.New(as, kube.Options{NodeName: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	s := &countSink{}
	lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := src.Load(lctx, s); err != nil {
		t.Fatalf("the ServiceAccount cannot list and watch what kubenat needs: %v", err)
	}
	if s.services == 0 {
		t.Error("the source delivered no Service")
	}
	if s.serviceCIDRs == 0 {
		t.Error("the source delivered no ServiceCIDR (the API server has its default one)")
	}

	// A ClusterRole of an older kubenat, without ServiceCIDRs: the source
	// still syncs, without them.
	old := role.DeepCopy()
	old.ObjectMeta = metav1.ObjectMeta{Name: "kubenat-old"}
	old.Rules = slices.DeleteFunc(old.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "servicecidrs") })
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, old, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubenat-old"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "kubenat-old"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: "rbac.authorization.k8s.io", Name: "kubenat-old"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	oldCfg := srv.RESTConfig()
	oldCfg.Impersonate = rest.ImpersonationConfig{UserName: "kubenat-old", Groups: []string{"system:authenticated"}}
	oldSrc, err := kube.New(kubernetes.NewForConfigOrDie(oldCfg), kube.Options{NodeName: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	oldSink := &countSink{}
	octx, ocancel := context.WithTimeout(ctx, 20*time.Second)
	defer ocancel()
	if err := oldSrc.Load(octx, oldSink); err != nil || oldSink.services == 0 || oldSink.serviceCIDRs != 0 {
		t.Errorf("without ServiceCIDRs in the role: Load %v, %d Services, %d ServiceCIDRs; want the Services alone", err, oldSink.services, oldSink.serviceCIDRs)
	}

	ectx, ecancel := context.WithCancel(ctx)
	defer ecancel()
	rec := events.New(ectx, as, "node-a", src.ServiceUID)
	defer rec.Shutdown()
	rec.Eventf(model.ServiceKey{Namespace: "default", Name: "web"}, v1.EventTypeWarning, "NotProgrammed", "test event")
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, err := admin.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=web"})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs.Items) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ServiceAccount could not record an event")
		}
		time.Sleep(100 * time.Millisecond)
	}

	_, err = as.CoreV1().Services("default").Update(ctx, &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"}}, metav1.UpdateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("updating a Service as kubenat: %v, want forbidden", err)
	}
	_, err = as.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "secrets") {
		t.Errorf("listing Secrets as kubenat: %v, want forbidden", err)
	}
	// The source leaves ServiceCIDRs out when it may not list them: the
	// role must allow it.
	if _, err := as.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("listing ServiceCIDRs as kubenat: %v", err)
	}
}

// countSink counts what a source delivers.
type countSink struct {
	mu           sync.Mutex
	services     int
	serviceCIDRs int
}

func (c *countSink) SetService(*v1.Service, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.services++
}
func (c *countSink) DeleteService(string, string)                      {}
func (c *countSink) SetEndpointSlice(*discovery.EndpointSlice, string) {}
func (c *countSink) DeleteEndpointSlice(string, string)                {}
func (c *countSink) SetNode(*v1.Node, string)                          {}
func (c *countSink) DeleteNode(string)                                 {}
func (c *countSink) SetServiceCIDR(*networkingv1.ServiceCIDR, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.serviceCIDRs++
}
func (c *countSink) DeleteServiceCIDR(string)       {}
func (c *countSink) SourceErrors([]error, []string) {}
func (c *countSink) Synced()                        {}
