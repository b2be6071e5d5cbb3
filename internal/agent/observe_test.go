package agent

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kubenat/kubenat/internal/metrics"
	"github.com/kubenat/kubenat/internal/model"
)

// recordingMetrics is a metrics.Reporter that remembers what it was told.
type recordingMetrics struct {
	mu          sync.Mutex
	syncs       []bool // full?
	failures    int
	programming []time.Duration
	pending     int
	maxPending  int
	services    int
	endpoints   int
	invalid     int
	socketLB    int
	held        int
	restored    int
}

func (r *recordingMetrics) ObserveSync(full bool, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncs = append(r.syncs, full)
}
func (r *recordingMetrics) SyncFailed() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures++
}
func (r *recordingMetrics) ObserveNetworkProgramming(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.programming = append(r.programming, d)
}
func (r *recordingMetrics) SetPendingChanges(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending = n
	r.maxPending = max(r.maxPending, n)
}
func (r *recordingMetrics) SetProgrammed(s, e int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.services, r.endpoints = s, e
}
func (r *recordingMetrics) SetInvalidObjects(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.invalid = n
}
func (r *recordingMetrics) ConntrackEntriesDeleted(int) {}
func (r *recordingMetrics) HealthzResponse(string, int) {}
func (r *recordingMetrics) SetSocketLBFrontends(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.socketLB = n
}
func (r *recordingMetrics) SetHeldEndpoints(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held = n
}

func (r *recordingMetrics) TablesRestored() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restored++
}

func (r *recordingMetrics) get(f func(r *recordingMetrics) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return f(r)
}

var _ metrics.Reporter = (*recordingMetrics)(nil)

// recordingEvents is an events.Recorder that remembers the events.
type recordingEvents struct {
	mu     sync.Mutex
	events []string
}

func (r *recordingEvents) Eventf(svc model.ServiceKey, eventType, reason, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%s %s %s: %s", svc, eventType, reason, fmt.Sprintf(format, args...)))
}

func (r *recordingEvents) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

func sliceFor(svc string, trigger time.Time, ips ...string) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: svc + "-1",
			Labels:      map[string]string{discovery.LabelServiceName: svc},
			Annotations: map[string]string{metrics.AnnotationLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{ip}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}})
	}
	return es
}

// TestAgentReportsMetricsAndEvents drives the agent through syncs and
// checks what it reports: full then partial syncs, the network programming
// latency of each EndpointSlice change, pending changes reset by a sync,
// programmed counts, a failed sync, and a Warning event for a Service it
// cannot program (only once while the problem lasts).
func TestAgentReportsMetricsAndEvents(t *testing.T) {
	run := &fakeRunner{}
	rm := &recordingMetrics{}
	ev := &recordingEvents{}
	src := runAgent(t, Options{Runner: run, Metrics: rm, Events: ev, MinSyncPeriod: 10 * time.Millisecond})

	// Before Synced: pending grows, nothing is observed.
	src.ops <- func(s Sink) { s.SetService(service("web", "10.96.0.1"), "") }
	src.ops <- func(s Sink) {
		s.SetEndpointSlice(sliceFor("web", time.Now().Add(-time.Hour), "10.244.1.10"), "") // older than the agent: ignored
	}
	waitFor(t, "two pending changes", func() bool { return rm.get(func(r *recordingMetrics) bool { return r.pending == 2 }) })
	src.ops <- func(s Sink) { s.Synced() }
	waitFor(t, "the full sync", func() bool { return rm.get(func(r *recordingMetrics) bool { return len(r.syncs) == 1 }) })
	rm.get(func(r *recordingMetrics) bool {
		if !r.syncs[0] || r.pending != 0 || r.services != 1 || r.endpoints != 1 || len(r.programming) != 0 {
			t.Errorf("after the first sync: full %v, pending %d, %d Services, %d endpoints, %d latencies; want full, 0, 1, 1, 0",
				r.syncs[0], r.pending, r.services, r.endpoints, len(r.programming))
		}
		return true
	})

	// An endpoint change triggered 200 ms before it arrives (after the
	// agent started): one partial sync, one latency of at least 200 ms.
	trigger := time.Now()
	time.Sleep(200 * time.Millisecond)
	src.ops <- func(s Sink) {
		s.SetEndpointSlice(sliceFor("web", trigger, "10.244.1.10", "10.244.1.11"), "")
	}
	waitFor(t, "the endpoint change", func() bool { return rm.get(func(r *recordingMetrics) bool { return r.endpoints == 2 }) })
	rm.get(func(r *recordingMetrics) bool {
		if r.syncs[len(r.syncs)-1] || len(r.programming) != 1 || r.programming[0] < 200*time.Millisecond || r.programming[0] > 5*time.Second {
			t.Errorf("after an endpoint change: syncs %v (want the last partial), latencies %v (want one of 200 ms or more)", r.syncs, r.programming)
		}
		return true
	})

	// Two Services claiming the same externalIP: an event on the younger.
	older := service("first", "10.96.0.2")
	older.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Minute))
	older.Spec.ExternalIPs = []string{"192.168.201.10"}
	younger := service("second", "10.96.0.3")
	younger.CreationTimestamp = metav1.NewTime(time.Now())
	younger.Spec.ExternalIPs = []string{"192.168.201.10"}
	src.ops <- func(s Sink) { s.SetService(older, "") }
	src.ops <- func(s Sink) { s.SetService(younger, "") }
	waitFor(t, "an event", func() bool { return len(ev.list()) == 1 })
	if got := ev.list()[0]; !strings.HasPrefix(got, "default/second Warning NotProgrammed: ") ||
		!strings.Contains(got, "192.168.201.10") || !strings.Contains(got, "default/first") {
		t.Errorf("event %q", got)
	}
	waitFor(t, "the invalid object count", func() bool { return rm.get(func(r *recordingMetrics) bool { return r.invalid == 1 }) })
	// Another sync while the problem lasts: no second event.
	src.ops <- func(s Sink) { s.SetService(service("third", "10.96.0.4"), "") }
	waitFor(t, "the next sync", func() bool { return rm.get(func(r *recordingMetrics) bool { return r.services == 4 }) })
	if n := len(ev.list()); n != 1 {
		t.Errorf("%d events, want the one event while the problem lasts", n)
	}

	// A failed sync is counted, and its changes stay pending.
	run.mu.Lock()
	run.fail = true
	run.mu.Unlock()
	src.ops <- func(s Sink) { s.DeleteService("default", "third") }
	waitFor(t, "a failure", func() bool { return rm.get(func(r *recordingMetrics) bool { return r.failures == 1 }) })
	if !rm.get(func(r *recordingMetrics) bool { return r.pending == 1 }) {
		t.Error("the failed change is not pending")
	}
	run.mu.Lock()
	run.fail = false
	run.mu.Unlock()
	waitFor(t, "the retry", func() bool {
		return rm.get(func(r *recordingMetrics) bool { return r.pending == 0 && r.services == 3 && r.syncs[len(r.syncs)-1] })
	})
}
