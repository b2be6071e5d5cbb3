package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubenat/kubenat/internal/conntrack"
	"github.com/kubenat/kubenat/internal/dataplane/nftables"
	"github.com/kubenat/kubenat/internal/dataplane/socketlb"
	"github.com/kubenat/kubenat/internal/healthcheck"
	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/metrics"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
)

// fakeRunner records the scripts it is asked to apply.
type fakeRunner struct {
	mu      sync.Mutex
	scripts []string
	fail    bool
}

func (f *fakeRunner) Name() string { return "fake" }

func (f *fakeRunner) Run(_ context.Context, script string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scripts = append(f.scripts, script)
	if f.fail {
		return "", context.DeadlineExceeded
	}
	return "", nil
}

func (f *fakeRunner) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.scripts)
}

// fakeIPTables stands for the iptables commands: Save returns saved, and
// Restore records its input.
type fakeIPTables struct {
	mu       sync.Mutex
	saved    string
	restores []string
	saveErr  error // Save's error, once
}

func (f *fakeIPTables) Restore(_ context.Context, _ model.Family, input string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores = append(f.restores, input)
	return nil
}

func (f *fakeIPTables) Save(context.Context, model.Family) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.saveErr; err != nil {
		f.saveErr = nil
		return "", err
	}
	return f.saved, nil
}

func (f *fakeIPTables) Check(context.Context, model.Family, string, string, string) (bool, error) {
	return true, nil
}

func (f *fakeIPTables) Names() string { return "fake" }

// restored returns what Restore was given, joined.
func (f *fakeIPTables) restored() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.restores, "")
}

// ran reports whether a script run so far contains s.
func (f *fakeRunner) ran(s string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.scripts, func(script string) bool { return strings.Contains(script, s) })
}

func (f *fakeRunner) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.scripts[len(f.scripts)-1]
}

// chanSource delivers what the test sends, and signals Synced on demand.
type chanSource struct {
	ops chan func(Sink)
}

func (c chanSource) Load(context.Context, Sink) error { return nil }

func (c chanSource) Run(ctx context.Context, sink Sink) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case op := <-c.ops:
			op(sink)
		}
	}
}

// runAgent starts an agent with opts (by default for node-a, cluster CIDR
// 10.244.0.0/16), fed by the returned source; it is stopped, and must
// return no error, when the test ends.
func runAgent(t *testing.T, opts Options) chanSource {
	t.Helper()
	if opts.Config.NodeName == "" {
		opts.Config = testConfig()
	}
	if opts.IPTables == nil {
		opts.IPTables = &fakeIPTables{}
	}
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	src := chanSource{ops: make(chan func(Sink))}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, src) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
		a.Close()
	})
	return src
}

// testConfig is the model configuration of the agents under test: node-a,
// cluster CIDR 10.244.0.0/16.
func testConfig() model.Config {
	return model.Config{NodeName: "node-a", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
}

// newAgent returns an agent made with opts (testConfig when opts has no
// Config, a fakeRunner when it has no Runner), closed when the test ends.
// Unlike runAgent, it does not run: the test calls sync itself.
func newAgent(t *testing.T, opts Options) *Agent {
	t.Helper()
	if opts.Config.NodeName == "" {
		opts.Config = testConfig()
	}
	if opts.Runner == nil {
		opts.Runner = &fakeRunner{}
	}
	if opts.IPTables == nil {
		opts.IPTables = &fakeIPTables{}
	}
	a, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func service(name, ip string) *v1.Service {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{ClusterIP: ip, Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}}}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestAgentProgramsOnlyAfterSyncAndBatches(t *testing.T) {
	run := &fakeRunner{}
	src := runAgent(t, Options{
		Runner: run, MinSyncPeriod: 200 * time.Millisecond,
		// One transaction even for the first sync (the fake runner would
		// let the backend create the tables in several).
		NFT: nftables.Options{InitialChunk: -1},
	})

	// Objects before Synced: nothing is programmed, however long we wait.
	src.ops <- func(s Sink) { s.SetService(service("a", "10.96.0.1"), "") }
	time.Sleep(300 * time.Millisecond)
	if n := run.count(); n != 0 {
		t.Fatalf("%d scripts applied before the source was synced", n)
	}
	src.ops <- func(s Sink) { s.Synced() }
	waitFor(t, "the first sync", func() bool { return run.count() == 1 })
	if s := run.last(); !strings.Contains(s, "delete table ip kubenat") || !strings.Contains(s, "10.96.0.1 . tcp . 80") {
		t.Errorf("the first sync is not a full replacement with the Service:\n%s", s)
	}

	// A burst of changes within the min sync period is one transaction.
	for i, ip := range []string{"10.96.0.2", "10.96.0.3", "10.96.0.4"} {
		src.ops <- func(s Sink) { s.SetService(service(string(rune('b'+i)), ip), "") }
	}
	waitFor(t, "the batched sync", func() bool { return run.count() >= 2 })
	time.Sleep(300 * time.Millisecond)
	if n := run.count(); n != 2 {
		t.Errorf("a burst of 3 changes took %d transactions, want 1", n-1)
	}
	if s := run.last(); strings.Contains(s, "delete table") || !strings.Contains(s, "10.96.0.4 . tcp . 80") {
		t.Errorf("the burst was not applied as one incremental change:\n%s", s)
	}

	// A failed transaction is retried as a full replacement.
	run.mu.Lock()
	run.fail = true
	run.mu.Unlock()
	src.ops <- func(s Sink) { s.DeleteService("default", "a") }
	waitFor(t, "the failed sync", func() bool { return run.count() == 3 })
	run.mu.Lock()
	run.fail = false
	run.mu.Unlock()
	waitFor(t, "the retry", func() bool { return run.count() == 4 })
	if s := run.last(); !strings.Contains(s, "delete table ip kubenat") || strings.Contains(s, "10.96.0.1 ") {
		t.Errorf("the retry is not a full replacement without the deleted Service:\n%s", s)
	}
}

// TestTablesGoneFromOutsideAreProgrammedAgain: when the periodic check
// finds the tables emptied (a flushed ruleset), the agent programs them
// again, fully, with no change from the source.
func TestTablesGoneFromOutsideAreProgrammedAgain(t *testing.T) {
	run := &fakeRunner{}
	rm := &recordingMetrics{}
	var rules atomic.Int64
	rules.Store(1)
	src := runAgent(t, Options{Runner: run, Metrics: rm, TableCheckPeriod: 20 * time.Millisecond,
		NFT: nftables.Options{InitialChunk: -1, CountRules: func(family, table, chain string) (int, error) {
			if table != nftables.DefaultTable || chain != "nat-prerouting" {
				return 0, fmt.Errorf("unexpected chain %s %s %s", family, table, chain)
			}
			return int(rules.Load()), nil
		}}})
	src.ops <- func(s Sink) { s.SetService(service("a", "10.96.0.1"), "") }
	src.ops <- func(s Sink) { s.Synced() }
	waitFor(t, "the first sync", func() bool { return run.count() == 1 })
	time.Sleep(100 * time.Millisecond) // checks that find the tables in place
	if n := run.count(); n != 1 {
		t.Fatalf("%d syncs while the tables were in place, want 1", n)
	}
	rules.Store(0) // flushed from outside
	waitFor(t, "the tables programmed again", func() bool { return run.count() == 2 })
	if s := run.last(); !strings.Contains(s, "table ip kubenat") || !strings.Contains(s, "10.96.0.1 . tcp . 80") {
		t.Errorf("the tables were not programmed again in full:\n%s", s)
	}
	if !rm.get(func(r *recordingMetrics) bool { return r.restored >= 1 }) {
		t.Error("kubenat_tables_restored_total was not counted")
	}
}

// TestChangesDoNotHurryARetry: after a failed sync, a stream of changes
// waits for the backoff (a second) instead of retrying the failing sync
// on every change.
func TestChangesDoNotHurryARetry(t *testing.T) {
	run := &fakeRunner{fail: true}
	src := runAgent(t, Options{Runner: run, MinSyncPeriod: 0, NFT: nftables.Options{InitialChunk: -1}})
	src.ops <- func(s Sink) { s.Synced() }
	waitFor(t, "the failed sync", func() bool { return run.count() == 1 })
	for i := range 40 {
		src.ops <- func(s Sink) { s.SetService(service(fmt.Sprint("s", i), fmt.Sprint("10.96.0.", i+1)), "") }
		time.Sleep(10 * time.Millisecond)
	}
	// 400 ms of changes, within the first backoff: at most the one
	// failure (two if the machine stalled for the whole backoff).
	if n := run.count(); n > 2 {
		t.Errorf("%d sync attempts during 40 changes after a failure; want the failure alone", n)
	}
	run.mu.Lock()
	run.fail = false
	run.mu.Unlock()
	waitFor(t, "the retry", func() bool { return run.ran("10.96.0.40 . tcp . 80") })
}

// TestFailedSyncChangesAreApplied: what changed in a sync that failed is
// applied by the next one, also outside nftables: a LoadBalancer Service
// with externalTrafficPolicy Local created then gets its health-check
// server (the Builder reports a change once).
func TestFailedSyncChangesAreApplied(t *testing.T) {
	ctx := t.Context()
	run := &fakeRunner{}
	rep := &programmedReporter{Reporter: metrics.Nop}
	a := newAgent(t, Options{Runner: run, Metrics: rep, NFT: nftables.Options{InitialChunk: -1}})
	a.svcHealth = healthcheck.NewServiceHealth(ctx, a.health, func(uint16) (net.Listener, error) {
		return net.Listen("tcp", "127.0.0.1:0")
	}, nil)
	a.Synced()
	if err := a.sync(ctx); err != nil {
		t.Fatal(err)
	}
	svc := setLocalLoadBalancer(a)
	run.mu.Lock()
	run.fail = true
	run.mu.Unlock()
	if err := a.sync(ctx); err == nil {
		t.Fatal("the sync succeeded with a failing runner")
	}
	run.mu.Lock()
	run.fail = false
	run.mu.Unlock()
	if err := a.sync(ctx); err != nil {
		t.Fatal(err)
	}
	key := model.ServiceKey{Namespace: svc.Namespace, Name: svc.Name}
	if got := a.svcHealth.Ports()[key]; got != 32123 {
		t.Errorf("health-check port of %s after the retry: %d, want 32123", key, got)
	}
	if rep.services != 1 || rep.endpoints != 1 {
		t.Errorf("programmed after the retry: %d Services, %d endpoints; want 1 and 1", rep.services, rep.endpoints)
	}
}

// TestABalancerLeftInPlaceIsNotASuccess: a sync whose rules were
// programmed but that could not remove a pinned socket load balancer is
// one failure, not a success: its duration is not observed and /healthz
// keeps counting the wait, until a retry removes it.
func TestABalancerLeftInPlaceIsNotASuccess(t *testing.T) {
	ctx := t.Context()
	rm := &recordingMetrics{}
	a := newAgent(t, Options{Metrics: rm, HealthTimeout: time.Millisecond, NFT: nftables.Options{InitialChunk: -1}})
	// A file where the pin directory should be: Cleanup cannot read it.
	a.dropPins = filepath.Join(t.TempDir(), "pins")
	if err := os.WriteFile(a.dropPins, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a.Synced()
	if err := a.sync(ctx); err == nil || !strings.Contains(err.Error(), "removing the socket load balancer") {
		t.Fatalf("sync = %v, want the balancer's removal to fail", err)
	}
	time.Sleep(5 * time.Millisecond)
	rm.get(func(r *recordingMetrics) bool {
		if r.failures != 1 || len(r.syncs) != 0 {
			t.Errorf("after the failed removal: %d failures, %d syncs observed; want 1 and 0", r.failures, len(r.syncs))
		}
		return true
	})
	if a.health.Healthy() {
		t.Error("healthy past the timeout while the balancer is left in place")
	}
	if err := os.Remove(a.dropPins); err != nil {
		t.Fatal(err)
	}
	if err := a.sync(ctx); err != nil {
		t.Fatalf("the retry: %v", err)
	}
	rm.get(func(r *recordingMetrics) bool {
		if r.failures != 1 || len(r.syncs) != 1 {
			t.Errorf("after the retry: %d failures, %d syncs observed; want 1 and 1", r.failures, len(r.syncs))
		}
		return true
	})
	if !a.health.Healthy() {
		t.Error("unhealthy after the retry removed the balancer")
	}
}

// TestHealthCheckOfADeletedServiceGoes: a health check whose port could
// not be bound goes with its Service, also when the Service is deleted in
// a full sync (with a Node change).
func TestHealthCheckOfADeletedServiceGoes(t *testing.T) {
	ctx := t.Context()
	a := newAgent(t, Options{NFT: nftables.Options{InitialChunk: -1}})
	a.svcHealth = healthcheck.NewServiceHealth(ctx, a.health, func(port uint16) (net.Listener, error) {
		return nil, fmt.Errorf("port %d is busy", port)
	}, nil)
	a.Synced()
	svc := setLocalLoadBalancer(a)
	if err := a.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := a.svcHealth.Services(); len(got) != 1 {
		t.Fatalf("health checks after the Service came: %v, want its own (waiting for its port)", got)
	}
	a.DeleteService(svc.Namespace, svc.Name)
	a.SetNode(k8sobj.Node("node-a", []string{"192.168.1.11"}, []string{"10.244.1.0/24"}), "test") // a full sync
	if err := a.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := a.svcHealth.Services(); len(got) != 0 {
		t.Errorf("health checks after the Service was deleted: %v, want none", got)
	}
}

// TestABalancerThatCannotOpenIsOff: when the socket load balancer cannot
// be opened (here: its pin directory is not on a bpf file system), the
// agent starts with it off, nftables serving every connection, and removes
// what an earlier agent pinned there after its first sync.
func TestABalancerThatCannotOpenIsOff(t *testing.T) {
	pins := t.TempDir()
	cfg := testConfig()
	cfg.SocketLB, cfg.UntrackPodTCP = true, true
	a := newAgent(t, Options{NFT: nftables.Options{InitialChunk: -1}, Config: cfg,
		SocketLB: socketlb.Options{Cgroup: filepath.Join(pins, "no-such-cgroup"), PinDir: pins}})
	if a.balancer != nil || a.dropPins != pins || a.builder.Config().SocketLB {
		t.Errorf("balancer %v, pins to drop %q, model with the balancer %v; want none, %q, false",
			a.balancer, a.dropPins, a.builder.Config().SocketLB, pins)
	}
}

// setLocalLoadBalancer gives a the LoadBalancer Service "lb" with
// externalTrafficPolicy Local, health-check port 32123 and one endpoint on
// node-a, with its EndpointSlices, and returns the Service.
func setLocalLoadBalancer(a *Agent) *v1.Service {
	svc, slices := k8sobj.Service{Name: "lb", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.7"},
		ETPLocal: true, HealthCheckNodePort: 32123, LoadBalancerIPs: []string{"192.0.2.7"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080, NodePort: 30007}},
		Endpoints: []k8sobj.Endpoint{{IP: "10.244.1.7", Node: "node-a"}}}.Objects()
	a.SetService(svc, "test")
	for _, s := range slices {
		a.SetEndpointSlice(s, "test")
	}
	return svc
}

// programmedReporter records the programmed-objects gauges.
type programmedReporter struct {
	metrics.Reporter
	services, endpoints int
}

func (r *programmedReporter) SetProgrammed(services, endpoints int) {
	r.services, r.endpoints = services, endpoints
}

// invalidReporter records the invalid-objects gauge.
type invalidReporter struct {
	metrics.Reporter
	n atomic.Int64
}

func (r *invalidReporter) SetInvalidObjects(n int) { r.n.Store(int64(n)) }

// TestSourceErrorsAloneAreReported: a source whose only change is a new
// error (a manifest file broken, its objects kept) still gets it
// reported by a sync.
func TestSourceErrorsAloneAreReported(t *testing.T) {
	run := &fakeRunner{}
	rep := &invalidReporter{Reporter: metrics.Nop}
	src := runAgent(t, Options{Runner: run, Metrics: rep, NFT: nftables.Options{InitialChunk: -1}})
	src.ops <- func(s Sink) { s.Synced() }
	waitFor(t, "the first sync", func() bool { return run.count() == 1 })
	src.ops <- func(s Sink) { s.SourceErrors([]error{errors.New("web.yaml: keeping its previous content")}, nil) }
	waitFor(t, "the error reported", func() bool { return rep.n.Load() == 1 })
	src.ops <- func(s Sink) { s.SourceErrors(nil, nil) }
	waitFor(t, "the error gone", func() bool { return rep.n.Load() == 0 })
}

// TestHealthClockStartsAtSynced: objects arriving before the source's
// initial content is complete do not start the health clock (/livez
// would restart an agent waiting for a slow initial list); Synced does.
func TestHealthClockStartsAtSynced(t *testing.T) {
	a := newAgent(t, Options{HealthTimeout: time.Millisecond})
	a.SetService(service("a", "10.96.0.1"), "test")
	time.Sleep(5 * time.Millisecond)
	if !a.health.Healthy() {
		t.Error("unhealthy while the initial lists are still arriving")
	}
	a.Synced()
	time.Sleep(5 * time.Millisecond)
	if a.health.Healthy() {
		t.Error("healthy past the timeout after Synced, with nothing programmed")
	}
}

// TestNodeEligibilityFollowsTheNodeAtOnce: a Node tainted for deletion
// fails /healthz before the (full) sync its change causes.
func TestNodeEligibilityFollowsTheNodeAtOnce(t *testing.T) {
	a := newAgent(t, Options{NFT: nftables.Options{InitialChunk: -1}})
	a.Synced()
	if err := a.sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	healthz := func() int {
		rec := httptest.NewRecorder()
		a.health.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		return rec.Code
	}
	if code := healthz(); code != 200 {
		t.Fatalf("/healthz after the first sync: %d", code)
	}
	other := k8sobj.Node("node-b", []string{"192.168.1.12"}, []string{"10.244.2.0/24"})
	other.Spec.Taints = []v1.Taint{{Key: model.TaintToBeDeleted, Effect: v1.TaintEffectNoSchedule}}
	a.SetNode(other, "test")
	if code := healthz(); code != 200 {
		t.Errorf("/healthz after another Node was tainted: %d, want 200", code)
	}
	node := k8sobj.Node("node-a", []string{"192.168.1.11"}, []string{"10.244.1.0/24"})
	node.Spec.Taints = other.Spec.Taints
	a.SetNode(node, "test")
	if code := healthz(); code != 503 {
		t.Errorf("/healthz right after the Node was tainted for deletion: %d, want 503", code)
	}
	a.DeleteNode("node-b")
	if code := healthz(); code != 503 {
		t.Errorf("/healthz after another Node was deleted: %d, want 503", code)
	}
	a.DeleteNode("node-a")
	if code := healthz(); code != 200 {
		t.Errorf("/healthz right after the Node object went: %d, want 200", code)
	}
}

// TestHealthTimeoutFollowsTheSyncPeriod: a change waits up to
// MinSyncPeriod by design, so /healthz allows that much more than 60s.
func TestHealthTimeoutFollowsTheSyncPeriod(t *testing.T) {
	for _, tc := range []struct{ period, set, want time.Duration }{
		{period: 100 * time.Millisecond, want: 60*time.Second + 100*time.Millisecond},
		{period: time.Hour, want: time.Hour + time.Minute},
		{period: time.Hour, set: 5 * time.Second, want: 5 * time.Second},
	} {
		a := newAgent(t, Options{MinSyncPeriod: tc.period, HealthTimeout: tc.set})
		if got := a.opts.HealthTimeout; got != tc.want {
			t.Errorf("MinSyncPeriod %v, HealthTimeout %v: timeout %v, want %v", tc.period, tc.set, got, tc.want)
		}
	}
}

// TestHeldEndpointsAreReleased: with untracked pod TCP, an endpoint its
// Service lets go of stays in tracked-endpoints while conntrack (here a
// stand-in) has connections DNATed to it, and the agent lets go of it on
// its own once they are gone.
func TestHeldEndpointsAreReleased(t *testing.T) {
	cgroup, bpffs := netnstest.SocketLBSandbox(t)
	var mu sync.Mutex
	ep := netip.MustParseAddrPort("10.244.1.10:8080")
	inUse := map[netip.AddrPort]bool{ep: true}
	run := &fakeRunner{}
	m := &recordingMetrics{}
	src := runAgent(t, Options{Runner: run, HoldCheckPeriod: 20 * time.Millisecond, Metrics: m,
		SocketLB: socketlb.Options{Cgroup: cgroup, PinDir: filepath.Join(bpffs, "kubenat")},
		NFT: nftables.Options{InitialChunk: -1, InUse: func(context.Context, netip.Prefix) (map[netip.AddrPort]bool, error) {
			mu.Lock()
			defer mu.Unlock()
			return maps.Clone(inUse), nil
		}},
		Config: model.Config{NodeName: "node-a", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
			SocketLB: true, UntrackPodTCP: true, LocalAddrs: []netip.Addr{netip.MustParseAddr("10.244.1.1")}},
	})
	svc, slices := k8sobj.Service{Name: "sticky", ClusterIPs: []string{"10.96.0.50"}, AffinitySeconds: 60,
		Ports:     []k8sobj.Port{{Name: "tcp", Port: 80, TargetPort: 8080}},
		Endpoints: []k8sobj.Endpoint{{IP: ep.Addr().String(), Node: "node-a"}}}.Objects()
	web, webSlices := k8sobj.Service{Name: "web", ClusterIPs: []string{"10.96.0.10"},
		Ports:     []k8sobj.Port{{Name: "tcp", Port: 80, TargetPort: 8080}},
		Endpoints: []k8sobj.Endpoint{{IP: "10.244.1.11", Node: "node-a"}}}.Objects()
	src.ops <- func(s Sink) {
		s.SetService(svc, "test")
		s.SetService(web, "test")
		for _, sl := range append(slices, webSlices...) {
			s.SetEndpointSlice(sl, "test")
		}
		s.Synced()
	}
	// Not the last script: the agent also follows the addresses of the
	// namespace it runs in (node-addrs), in scripts of their own.
	waitFor(t, "the first sync", func() bool { return run.ran("10.244.1.10 . 8080") })
	// The metrics are set after the script ran.
	var frontends, held int
	waitFor(t, "the first sync's metrics", func() bool {
		return m.get(func(r *recordingMetrics) bool { frontends, held = r.socketLB, r.held; return frontends != 0 })
	})
	if frontends != 1 || held != 0 {
		t.Errorf("metrics: %d socket LB frontends, %d held endpoints; want 1 (web; sticky has affinity), 0", frontends, held)
	}
	released := func() bool { return run.ran("delete element ip kubenat tracked-endpoints") }
	n := run.count()
	src.ops <- func(s Sink) { s.DeleteService(svc.Namespace, svc.Name) }
	waitFor(t, "the deletion's sync", func() bool { return run.count() > n })
	time.Sleep(200 * time.Millisecond) // ten hold checks
	if released() {
		t.Fatalf("tracked-endpoints lost %s while conntrack has connections to it", ep)
	}
	if m.get(func(r *recordingMetrics) bool { held = r.held; return held != 1 }) {
		t.Errorf("metrics: %d held endpoints, want 1", held)
	}
	mu.Lock()
	clear(inUse)
	mu.Unlock()
	waitFor(t, "the endpoint released", released)
	waitFor(t, "the held endpoints metric at 0", func() bool { return m.get(func(r *recordingMetrics) bool { return r.held == 0 }) })
}

// TestConntrackIsTunedAfterTheFirstSync: the conntrack sysctls are written
// once the first sync succeeded (its rules load the conntrack module),
// and not again by later syncs.
func TestConntrackIsTunedAfterTheFirstSync(t *testing.T) {
	ctx := t.Context()
	procfs := t.TempDir()
	file := filepath.Join(procfs, "sys/net/netfilter/nf_conntrack_tcp_timeout_established")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(v string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func() string {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	write("432000\n")
	run := &fakeRunner{fail: true}
	a := newAgent(t, Options{Runner: run, NFT: nftables.Options{InitialChunk: -1},
		Conntrack: conntrack.Settings{TCPEstablishedTimeout: 24 * time.Hour, Procfs: procfs}})
	a.Synced()
	if err := a.sync(ctx); err == nil {
		t.Fatal("the sync succeeded with a failing runner")
	}
	if v := read(); v != "432000\n" {
		t.Errorf("after a failed first sync the timeout is %q, want it untouched", v)
	}
	run.mu.Lock()
	run.fail = false
	run.mu.Unlock()
	if err := a.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if v := read(); v != "86400" {
		t.Errorf("after the first sync the timeout is %q, want 86400", v)
	}
	write("600")
	a.SetService(service("a", "10.96.0.1"), "test")
	if err := a.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if v := read(); v != "600" {
		t.Errorf("a later sync set the timeout again: %q", v)
	}
}

// TestDatapathsRemoveEachOther: after its first sync, each datapath
// removes the rules the other left (an agent switched between them), once.
func TestDatapathsRemoveEachOther(t *testing.T) {
	ctx := context.Background()
	t.Run("iptables removes the nftables tables", func(t *testing.T) {
		run, ipt := &fakeRunner{}, &fakeIPTables{}
		a := newAgent(t, Options{Datapath: "iptables", Runner: run, IPTables: ipt})
		a.Synced()
		if err := a.sync(ctx); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(ipt.restored(), "-A KUBENAT-MARK-MASQ") {
			t.Errorf("the iptables chains were not programmed:\n%s", ipt.restored())
		}
		if !run.ran("delete table ip kubenat") || run.ran("nat-prerouting") {
			t.Errorf("nftables: want the tables deleted and nothing programmed, ran %q", run.scripts)
		}
	})
	t.Run("nftables removes the iptables chains", func(t *testing.T) {
		ipt := &fakeIPTables{saved: "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBENAT-SERVICES - [0:0]\n" +
			"-A PREROUTING -m comment --comment kubenat -j KUBENAT-SERVICES\nCOMMIT\n"}
		a := newAgent(t, Options{IPTables: ipt})
		a.Synced()
		for range 2 {
			if err := a.sync(ctx); err != nil {
				t.Fatal(err)
			}
			setLocalLoadBalancer(a)
		}
		want := "*nat\n:KUBENAT-SERVICES - [0:0]\n-D PREROUTING -m comment --comment kubenat -j KUBENAT-SERVICES\n-X KUBENAT-SERVICES\nCOMMIT\n"
		// Once per family (the fake shows both the same), and not again.
		if got := ipt.restored(); got != want+want {
			t.Errorf("iptables-restore input:\n%s\nwant twice:\n%s", got, want)
		}
	})
}

// TestRemovingTheOtherDatapathIsRetried: a failed removal of the other
// datapath's rules does not fail the sync, and is tried again with the
// next table check, not with every sync.
func TestRemovingTheOtherDatapathIsRetried(t *testing.T) {
	ctx := context.Background()
	ipt := &fakeIPTables{saveErr: errors.New("iptables-save: injected failure"),
		saved: "*nat\n:KUBENAT-SERVICES - [0:0]\nCOMMIT\n"}
	a := newAgent(t, Options{IPTables: ipt})
	a.Synced()
	if err := a.sync(ctx); err != nil {
		t.Fatalf("a failed removal failed the sync: %v", err)
	}
	setLocalLoadBalancer(a)
	if err := a.sync(ctx); err != nil {
		t.Fatal(err)
	}
	if a.removedOther || ipt.restored() != "" {
		t.Fatalf("removed %v after a failure, without a table check: %q", a.removedOther, ipt.restored())
	}
	a.checkTables(ctx)
	if !a.removedOther || !strings.Contains(ipt.restored(), "-X KUBENAT-SERVICES") {
		t.Errorf("the table check did not remove the chains: %v %q", a.removedOther, ipt.restored())
	}
}
