package kube_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kubenat/kubenat/internal/apiservertest"
	"github.com/kubenat/kubenat/internal/source/kube"
)

// sink records what a Source delivers.
type sink struct {
	mu       sync.Mutex
	services map[string]*v1.Service
	slices   map[string]*discovery.EndpointSlice
	nodes    map[string]*v1.Node
	nodeSets int
	// cidrs are the ServiceCIDR objects' ranges by name (not in content:
	// they are not part of the objects at Synced that TestSource compares).
	cidrs  map[string][]string
	synced bool
	// atSynced is the content when Synced was first called.
	atSynced []string
}

func newSink() *sink {
	return &sink{services: map[string]*v1.Service{}, slices: map[string]*discovery.EndpointSlice{}, nodes: map[string]*v1.Node{},
		cidrs: map[string][]string{}}
}

func (s *sink) SetService(svc *v1.Service, _ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.services[svc.Namespace+"/"+svc.Name] = svc
}
func (s *sink) DeleteService(ns, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.services, ns+"/"+name)
}
func (s *sink) SetEndpointSlice(es *discovery.EndpointSlice, _ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slices[es.Namespace+"/"+es.Name] = es
}
func (s *sink) DeleteEndpointSlice(ns, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.slices, ns+"/"+name)
}
func (s *sink) SetNode(n *v1.Node, _ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes[n.Name] = n
	s.nodeSets++
}
func (s *sink) DeleteNode(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.nodes, name)
}
func (s *sink) SetServiceCIDR(sc *networkingv1.ServiceCIDR, _ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cidrs[sc.Name] = sc.Spec.CIDRs
}
func (s *sink) DeleteServiceCIDR(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.cidrs, name)
}
func (s *sink) SourceErrors([]error, []string) {}
func (s *sink) Synced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced {
		s.synced = true
		s.atSynced = s.contentLocked()
	}
}

// content lists everything held, sorted: "svc ns/name", "slice ns/name", "node name".
func (s *sink) content() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.contentLocked()
}

func (s *sink) contentLocked() []string {
	var out []string
	for k := range s.services {
		out = append(out, "svc "+k)
	}
	for k := range s.slices {
		out = append(out, "slice "+k)
	}
	for k := range s.nodes {
		out = append(out, "node "+k)
	}
	sort.Strings(out)
	return out
}

// waitFor polls cond until it holds, or fails t after 20 s.
func (s *sink) waitFor(t *testing.T, what string, cond func(s *sink) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		ok := cond(s)
		s.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; the sink holds %v", what, s.content())
}

func service(name string, labels map[string]string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
}

func slice(name, svc string, labels map[string]string, ips ...string) *discovery.EndpointSlice {
	l := map[string]string{discovery.LabelServiceName: svc}
	for k, v := range labels {
		l[k] = v
	}
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "default", Labels: l},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{ip}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}})
	}
	return es
}

// api wraps a clientset with create/update helpers that fail the test.
type api struct {
	t  *testing.T
	cs kubernetes.Interface
}

func (a api) createService(svc *v1.Service) *v1.Service {
	a.t.Helper()
	out, err := a.cs.CoreV1().Services(svc.Namespace).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		a.t.Fatalf("creating Service %s: %v", svc.Name, err)
	}
	return out
}

func (a api) createSlice(es *discovery.EndpointSlice) *discovery.EndpointSlice {
	a.t.Helper()
	out, err := a.cs.DiscoveryV1().EndpointSlices(es.Namespace).Create(context.Background(), es, metav1.CreateOptions{})
	if err != nil {
		a.t.Fatalf("creating EndpointSlice %s: %v", es.Name, err)
	}
	return out
}

func (a api) createNode(name, ip string) *v1.Node {
	a.t.Helper()
	ctx := context.Background()
	n, err := a.cs.CoreV1().Nodes().Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		a.t.Fatalf("creating Node %s: %v", name, err)
	}
	n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: ip}}
	n, err = a.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		a.t.Fatalf("setting the addresses of Node %s: %v", name, err)
	}
	return n
}

func startServer(t *testing.T, extraArgs ...string) (*apiservertest.Server, api) {
	t.Helper()
	srv, err := apiservertest.Start(t.Context(), t, apiservertest.Options{ExtraAPIServerArgs: extraArgs})
	if err != nil {
		t.Fatal(err)
	}
	return srv, api{t: t, cs: kubernetes.NewForConfigOrDie(srv.RESTConfig())}
}

// run starts a Source on node-a and stops it when the test ends (before
// the server stops: cleanups run last-in first-out).
func run(t *testing.T, srv *apiservertest.Server) *sink {
	t.Helper()
	src, err := kube.New(kubernetes.NewForConfigOrDie(srv.RESTConfig()), kube.Options{NodeName: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	s := newSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, s) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

// TestSource runs the source against a real kube-apiserver: what it
// selects, that Synced comes after the complete initial content, and that
// it follows every kind of change.
func TestSource(t *testing.T) {
	srv, a := startServer(t)
	ctx := context.Background()
	const n = 40
	for i := range n {
		a.createService(service(fmt.Sprintf("svc-%d", i), nil))
		a.createSlice(slice(fmt.Sprintf("svc-%d-abc", i), fmt.Sprintf("svc-%d", i), nil, fmt.Sprintf("10.244.1.%d", i+1)))
	}
	headless := map[string]string{"service.kubernetes.io/headless": ""}
	other := map[string]string{"service.kubernetes.io/service-proxy-name": "other-proxy"}
	ours := map[string]string{"service.kubernetes.io/service-proxy-name": "kubenat"}
	a.createService(service("headless", headless))
	a.createSlice(slice("headless-abc", "headless", headless, "10.244.1.100"))
	a.createService(service("other", other))
	a.createSlice(slice("other-abc", "other", other, "10.244.1.101"))
	a.createService(service("ours", ours))
	a.createSlice(slice("ours-abc", "ours", ours, "10.244.1.102"))
	a.createNode("node-a", "192.168.100.11")
	a.createNode("node-b", "192.168.100.12")

	s := run(t, srv)
	s.waitFor(t, "Synced", func(s *sink) bool { return s.synced })

	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("svc default/svc-%d", i), fmt.Sprintf("slice default/svc-%d-abc", i))
	}
	// The API server creates the "kubernetes" Service itself.
	want = append(want, "svc default/kubernetes", "svc default/ours", "slice default/ours-abc", "node node-a")
	sort.Strings(want)
	if got := strings.Join(s.atSynced, ","); got != strings.Join(want, ",") {
		t.Fatalf("at Synced the sink held\n%v\nwant (no headless, no other proxy, only this node)\n%v", s.atSynced, want)
	}

	t.Run("a new Service and its slice arrive", func(t *testing.T) {
		a.createService(service("new", nil))
		a.createSlice(slice("new-abc", "new", nil, "10.244.1.50"))
		s.waitFor(t, "the new Service", func(s *sink) bool {
			return s.services["default/new"] != nil && s.slices["default/new-abc"] != nil
		})
	})

	t.Run("an endpoint change arrives", func(t *testing.T) {
		es, err := a.cs.DiscoveryV1().EndpointSlices("default").Get(ctx, "new-abc", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		es.Endpoints = append(es.Endpoints, slice("", "", nil, "10.244.1.51").Endpoints...)
		if _, err := a.cs.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		s.waitFor(t, "two endpoints", func(s *sink) bool { return len(s.slices["default/new-abc"].Endpoints) == 2 })
		if s.slices["default/new-abc"].ManagedFields != nil {
			t.Error("managedFields are cached; they should be dropped")
		}
	})

	t.Run("a Service labelled for another proxy leaves, and comes back", func(t *testing.T) {
		svc, err := a.cs.CoreV1().Services("default").Get(ctx, "new", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Labels = other
		if svc, err = a.cs.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		s.waitFor(t, "the relabelled Service to leave", func(s *sink) bool { return s.services["default/new"] == nil })
		svc.Labels = ours
		if _, err := a.cs.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		s.waitFor(t, "the Service to come back", func(s *sink) bool { return s.services["default/new"] != nil })
	})

	t.Run("deletions arrive", func(t *testing.T) {
		if err := a.cs.CoreV1().Services("default").Delete(ctx, "new", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := a.cs.DiscoveryV1().EndpointSlices("default").Delete(ctx, "new-abc", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		s.waitFor(t, "the deletions", func(s *sink) bool {
			return s.services["default/new"] == nil && s.slices["default/new-abc"] == nil
		})
	})

	t.Run("only Node changes the datapath depends on are delivered", func(t *testing.T) {
		s.mu.Lock()
		before := s.nodeSets
		s.mu.Unlock()
		node, err := a.cs.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// A heartbeat: conditions change, nothing else.
		node.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
		if node, err = a.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Then an address change, which must arrive; the heartbeat before
		// it must not have.
		node.Status.Addresses = append(node.Status.Addresses, v1.NodeAddress{Type: v1.NodeExternalIP, Address: "203.0.113.11"})
		if _, err := a.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		s.waitFor(t, "the new address", func(s *sink) bool { return len(s.nodes["node-a"].Status.Addresses) == 2 })
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.nodeSets != before+1 {
			t.Errorf("%d Node deliveries for a heartbeat and an address change, want 1", s.nodeSets-before)
		}
	})

	t.Run("ServiceCIDRs arrive, change and leave", func(t *testing.T) {
		// The API server makes the default one from its
		// --service-cluster-ip-range.
		s.waitFor(t, "the default ServiceCIDR", func(s *sink) bool {
			return slices.Equal(s.cidrs["kubernetes"], []string{apiservertest.DefaultServiceClusterIPRange})
		})
		sc := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "extra"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.100.0.0/24"}}}
		if _, err := a.cs.NetworkingV1().ServiceCIDRs().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		s.waitFor(t, "the new ServiceCIDR", func(s *sink) bool { return slices.Equal(s.cidrs["extra"], []string{"10.100.0.0/24"}) })
		if err := a.cs.NetworkingV1().ServiceCIDRs().Delete(ctx, "extra", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		s.waitFor(t, "the ServiceCIDR's deletion", func(s *sink) bool { _, ok := s.cidrs["extra"]; return !ok })
	})

	t.Run("Load delivers once and returns", func(t *testing.T) {
		src, err := kube.New(a.cs, kube.Options{NodeName: "node-a"})
		if err != nil {
			t.Fatal(err)
		}
		s2 := newSink()
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := src.Load(ctx, s2); err != nil {
			t.Fatal(err)
		}
		if !s2.synced || len(s2.content()) != len(want) {
			t.Errorf("Load delivered %d objects (synced %v), want %d", len(s2.content()), s2.synced, len(want))
		}
		svc, err := a.cs.CoreV1().Services("default").Get(ctx, "svc-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := src.ServiceUID("default", "svc-1"); got != svc.UID {
			t.Errorf("ServiceUID = %q, want %q", got, svc.UID)
		}
		if got := src.ServiceUID("default", "other"); got != "" {
			t.Errorf("ServiceUID of another proxy's Service = %q, want none", got)
		}
	})
}

// TestSourceSurvivesWatchTimeoutsAndRestarts runs the API server with
// watches cut every few seconds (--min-request-timeout) and restarts it:
// the source keeps following changes without losing any.
func TestSourceSurvivesWatchTimeoutsAndRestarts(t *testing.T) {
	// --request-timeout also bounds how long a stopping API server waits
	// for open watches (else a restart takes 15 s here).
	srv, a := startServer(t, "--min-request-timeout=2", "--request-timeout=3s")
	a.createNode("node-a", "192.168.100.11")
	s := run(t, srv)
	s.waitFor(t, "Synced", func(s *sink) bool { return s.synced })

	a.createService(service("before", nil))
	s.waitFor(t, "Service before", func(s *sink) bool { return s.services["default/before"] != nil })

	// Watches end after 2-4 s; wait for a few rounds of re-watching.
	time.Sleep(5 * time.Second)
	a.createService(service("after-timeouts", nil))
	s.waitFor(t, "a Service created after watch timeouts", func(s *sink) bool { return s.services["default/after-timeouts"] != nil })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart took %v", time.Since(t0))
	t0 = time.Now()
	defer func() { t.Logf("changes after the restart arrived after %v", time.Since(t0)) }()
	if err := a.cs.CoreV1().Services("default").Delete(ctx, "before", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	a.createService(service("after-restart", nil))
	a.createSlice(slice("after-restart-abc", "after-restart", nil, "10.244.1.9"))
	s.waitFor(t, "changes after the restart", func(s *sink) bool {
		return s.services["default/before"] == nil && s.services["default/after-restart"] != nil && s.slices["default/after-restart-abc"] != nil
	})
}

// TestLoadGivesUpWithTheContext checks that Load against an unreachable
// API fails when its context ends instead of hanging or reporting Synced.
func TestLoadGivesUpWithTheContext(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(&restConfigUnreachable)
	src, err := kube.New(cs, kube.Options{NodeName: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	s := newSink()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err = src.Load(ctx, s)
	if err == nil || s.synced {
		t.Fatalf("Load = %v, synced %v; want an error and no Synced", err, s.synced)
	}
}

func TestNewNeedsANodeName(t *testing.T) {
	if _, err := kube.New(kubernetes.NewForConfigOrDie(&restConfigUnreachable), kube.Options{}); err == nil {
		t.Error("New without a node name succeeded")
	}
}
