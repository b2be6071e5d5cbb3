package kube

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/kubenat/kubenat/internal/model"
)

// eventSink records the EndpointSlice calls it gets, in order.
type eventSink struct {
	mu     sync.Mutex
	events []string
}

func (s *eventSink) add(e string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
}

func (s *eventSink) SetEndpointSlice(sl *discovery.EndpointSlice, _ string) {
	s.add("set " + sl.Name + "@" + sl.ResourceVersion)
}
func (s *eventSink) DeleteEndpointSlice(_, name string)               { s.add("delete " + name) }
func (s *eventSink) SetService(*v1.Service, string)                   {}
func (s *eventSink) DeleteService(string, string)                     {}
func (s *eventSink) SetNode(*v1.Node, string)                         {}
func (s *eventSink) DeleteNode(string)                                {}
func (s *eventSink) SetServiceCIDR(*networkingv1.ServiceCIDR, string) {}
func (s *eventSink) DeleteServiceCIDR(string)                         {}
func (s *eventSink) SourceErrors(errs []error, warn []string)         {}
func (s *eventSink) Synced()                                          {}

func (s *eventSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.events, ", ")
}

// scriptedLW answers the reflector's lists and watches from a script:
// lists[i] for the i-th list; each watch gets the next of watches, and an
// "expired" error (which makes the reflector list again) when none is left.
type scriptedLW struct {
	mu      sync.Mutex
	lists   [][]discovery.EndpointSlice
	watches []*watch.FakeWatcher
}

func (l *scriptedLW) List(metav1.ListOptions) (runtime.Object, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lists) == 0 {
		return nil, fmt.Errorf("no more lists in the script")
	}
	items := l.lists[0]
	l.lists = l.lists[1:]
	return &discovery.EndpointSliceList{ListMeta: metav1.ListMeta{ResourceVersion: "100"}, Items: items}, nil
}

func (l *scriptedLW) Watch(metav1.ListOptions) (watch.Interface, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.watches) == 0 {
		return nil, apierrors.NewResourceExpired("too old resource version")
	}
	w := l.watches[0]
	l.watches = l.watches[1:]
	return w, nil
}

// IsWatchListSemanticsUnSupported makes the reflector list and watch
// (rather than stream the initial list), as the script expects.
func (l *scriptedLW) IsWatchListSemanticsUnSupported() bool { return true }

func testSlice(name, rv string, labels map[string]string) discovery.EndpointSlice {
	l := map[string]string{discovery.LabelServiceName: "svc"}
	for k, v := range labels {
		l[k] = v
	}
	return discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, ResourceVersion: rv, Labels: l,
		UID: types.UID("uid-" + name)},
		AddressType: discovery.AddressTypeIPv4}
}

// TestObjectWatch follows EndpointSlices through a list, watch events and a
// re-list that misses a deletion: the sink gets every change, slices of
// another proxy never, and the deletion the re-list implies.
func TestObjectWatch(t *testing.T) {
	other := map[string]string{model.LabelServiceProxyName: "other"}
	w1 := watch.NewFakeWithChanSize(10, false)
	lw := &scriptedLW{
		lists: [][]discovery.EndpointSlice{
			{testSlice("a", "1", nil), testSlice("b", "2", nil), testSlice("c", "3", other)},
			// The re-list: d was deleted while no watch saw it; e is new.
			{testSlice("a", "1", nil), testSlice("e", "8", nil)},
		},
		watches: []*watch.FakeWatcher{w1},
	}
	s := &eventSink{}
	k := sliceKind
	k.keepUID = true // as for Services
	sw := newObjectWatch(k, lw, model.DefaultProxyName)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sw.run(ctx, s)

	waitFor := func(what, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for s.String() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the sink got %q, want %q", what, s.String(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("the list", "set a@1, set b@2")
	if !sw.hasSynced() {
		t.Error("not synced after the list was delivered")
	}
	b := testSlice("b", "4", other) // b moves to another proxy
	d := testSlice("d", "5", nil)
	c := testSlice("c", "6", nil) // c moves to kubenat
	w1.Modify(&b)
	w1.Add(&d)
	w1.Modify(&c)
	waitFor("the watch", "set a@1, set b@2, delete b, set d@5, set c@6")
	cDel := testSlice("c", "7", nil)
	w1.Delete(&cDel)
	w1.Stop() // the next watch is refused as expired: the reflector lists again
	waitFor("the re-list", "set a@1, set b@2, delete b, set d@5, set c@6, delete c, set a@1, set e@8, delete d")
	if got := sw.count(); got != 2 {
		t.Errorf("%d slices known, want 2 (a and e)", got)
	}
	for name, want := range map[string]types.UID{"a": "uid-a", "e": "uid-e", "d": "", "b": ""} {
		if got := sw.uid("default", name); got != want {
			t.Errorf("uid of %s = %q, want %q", name, got, want)
		}
	}
}

// blockingSink blocks every delivery until release is closed, as the agent
// does while it programs the kernel.
type blockingSink struct {
	eventSink
	release chan struct{}
}

func (s *blockingSink) SetEndpointSlice(sl *discovery.EndpointSlice, origin string) {
	<-s.release
	s.eventSink.SetEndpointSlice(sl, origin)
}

// watchWithBusySink runs a watch of EndpointSlices whose list holds slice
// "a" at version 1 and whose watch is w1 (a send waits for the reader),
// delivering to a sink that blocks until its release is closed; it stops
// when the test ends.
func watchWithBusySink(t *testing.T) (*watch.FakeWatcher, *blockingSink, *objectWatch) {
	w1 := watch.NewFakeWithChanSize(0, false)
	lw := &scriptedLW{lists: [][]discovery.EndpointSlice{{testSlice("a", "1", nil)}}, watches: []*watch.FakeWatcher{w1}}
	s := &blockingSink{release: make(chan struct{})}
	sw := newObjectWatch(sliceKind, lw, model.DefaultProxyName)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go sw.run(ctx, s)
	return w1, s, sw
}

// TestObjectWatchDoesNotWaitForTheSink: while the sink is busy, the watch
// keeps being read (the slices are recorded), and everything is delivered,
// in order, once the sink is free; the source is not synced before.
func TestObjectWatchDoesNotWaitForTheSink(t *testing.T) {
	w1, s, sw := watchWithBusySink(t)

	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := range 20 {
			sl := testSlice(fmt.Sprintf("n%02d", i), fmt.Sprint(10+i), nil)
			w1.Add(&sl)
		}
	}()
	select {
	case <-sent:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch stopped being read while the sink was busy")
	}
	deadline := time.Now().Add(10 * time.Second)
	for sw.count() != 21 {
		if time.Now().After(deadline) {
			t.Fatalf("%d slices recorded while the sink was busy, want 21", sw.count())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if sw.hasSynced() {
		t.Error("synced before the sink got the listed slice")
	}
	close(s.release)
	want := []string{"set a@1"}
	for i := range 20 {
		want = append(want, fmt.Sprintf("set n%02d@%d", i, 10+i))
	}
	deadline = time.Now().Add(10 * time.Second)
	for s.String() != strings.Join(want, ", ") {
		if time.Now().After(deadline) {
			t.Fatalf("the sink got %q", s.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !sw.hasSynced() {
		t.Error("not synced after everything was delivered")
	}
}

// TestObjectWatchCoalescesWhileTheSinkIsBusy: an object changing many times
// while the sink is busy waits as one delivery, its newest version (the
// delivery buffer is bounded by the number of objects).
func TestObjectWatchCoalescesWhileTheSinkIsBusy(t *testing.T) {
	w1, s, sw := watchWithBusySink(t)
	for i := 2; i <= 50; i++ {
		sl := testSlice("a", fmt.Sprint(i), nil)
		w1.Modify(&sl) // returns once the watch has read it
	}
	// While the sink is busy the changes are processed: never more than
	// one delivery waits for the one object.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		sw.mu.Lock()
		n := len(sw.order)
		sw.mu.Unlock()
		if n > 1 {
			t.Fatalf("%d deliveries waiting for one object, want at most 1", n)
		}
	}
	close(s.release)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.HasSuffix(s.String(), "set a@50") {
		if time.Now().After(deadline) {
			t.Fatalf("the sink got %q, want the newest version last", s.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The version being delivered when the sink blocked, and the newest
	// (one in between when the release came while changes were read).
	if got := strings.Split(s.String(), ", "); len(got) > 3 {
		t.Errorf("the sink got %q: want at most 3 of the 50 versions", got)
	}
}
