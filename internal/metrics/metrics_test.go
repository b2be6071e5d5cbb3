package metrics

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/kubenat/kubenat/internal/model"
)

// TestNamesFollowConventions runs Prometheus' own linter over every
// kubenat_ metric.
func TestNamesFollowConventions(t *testing.T) {
	m := New("test")
	m.HealthzResponse("/healthz", 200)
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "kubenat_") {
			n++
		}
	}
	if n != 14 {
		t.Errorf("%d kubenat_ metric families, want 14", n)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "kubenat_") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}

func TestReporter(t *testing.T) {
	m := New("v1.2.3")
	m.ObserveSync(true, 30*time.Millisecond)
	m.ObserveSync(false, 2*time.Millisecond)
	m.ObserveSync(false, 3*time.Millisecond)
	m.SyncFailed()
	m.ObserveNetworkProgramming(150 * time.Millisecond)
	m.ObserveNetworkProgramming(-time.Second) // clock skew: dropped
	m.SetPendingChanges(4)
	m.SetProgrammed(3, 7)
	m.SetInvalidObjects(2)
	m.ConntrackEntriesDeleted(5)
	m.ConntrackEntriesDeleted(1)
	m.HealthzResponse("/healthz", 200)
	m.HealthzResponse("/healthz", 503)
	m.HealthzResponse("/healthz", 200)
	m.SetSocketLBFrontends(12)
	m.SetHeldEndpoints(3)
	m.TablesRestored()

	for _, tc := range []struct {
		metric string
		want   float64
	}{
		{"kubenat_sync_failures_total", 1},
		{"kubenat_tables_restored_total", 1},
		{"kubenat_pending_changes", 4},
		{"kubenat_programmed_services", 3},
		{"kubenat_programmed_endpoints", 7},
		{"kubenat_invalid_objects", 2},
		{"kubenat_conntrack_entries_deleted_total", 6},
		{"kubenat_socket_lb_frontends", 12},
		{"kubenat_held_endpoints", 3},
	} {
		t.Run(tc.metric, func(t *testing.T) {
			mfs, _ := m.Registry().Gather()
			for _, mf := range mfs {
				if mf.GetName() != tc.metric {
					continue
				}
				got := mf.GetMetric()[0]
				v := got.GetGauge().GetValue() + got.GetCounter().GetValue()
				if v != tc.want {
					t.Errorf("%s = %v, want %v", tc.metric, v, tc.want)
				}
				return
			}
			t.Errorf("%s not gathered", tc.metric)
		})
	}
	if got := testutil.ToFloat64(m.healthz.WithLabelValues("/healthz", "200")); got != 2 {
		t.Errorf("healthz 200 = %v, want 2", got)
	}
	if n := testutil.CollectAndCount(m.syncDuration); n != 2 {
		t.Errorf("%d sync duration series, want full and partial", n)
	}
	text := scrape(t, m)
	for _, want := range []string{
		`kubenat_sync_duration_seconds_count{kind="full"} 1`,
		`kubenat_sync_duration_seconds_count{kind="partial"} 2`,
		`kubenat_network_programming_duration_seconds_count 1`,
		`kubenat_network_programming_duration_seconds_bucket{le="0.25"} 1`,
		`kubenat_build_info{go_version="go`,
		`version="v1.2.3"} 1`,
		"go_goroutines ",
		"process_start_time_seconds ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(text, "kubenat_sync_last_success_timestamp_seconds 0") {
		t.Error("last success timestamp not set")
	}
}

// scrape runs m's server on a free loopback port and fetches /metrics.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	code, body := serveAndGet(t, m, false, "/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics: %d", code)
	}
	return body
}

// serveAndGet runs m's server on a free loopback port and fetches path.
func serveAndGet(t *testing.T, m *Metrics, profiling bool, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := freeAddr(t)
	go m.Run(ctx, addr, profiling)
	var resp *http.Response
	var err error
	for range 100 {
		if resp, err = http.Get("http://" + addr + path); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// TestProfiling: /debug/pprof/ is served only when profiling is on.
func TestProfiling(t *testing.T) {
	for _, on := range []bool{false, true} {
		code, body := serveAndGet(t, New("x"), on, "/debug/pprof/heap?debug=1")
		if got := code == 200 && strings.Contains(body, "heap profile"); got != on {
			t.Errorf("profiling %v: GET /debug/pprof/heap: %d %.80q", on, code, body)
		}
	}
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestServeHTTPReportsABusyPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = ServeHTTP(t.Context(), l.Addr().String(), http.NotFoundHandler())
	if err == nil || !strings.Contains(err.Error(), "listening on "+l.Addr().String()) {
		t.Errorf("ServeHTTP on a busy port: %v, want an error naming the address", err)
	}
}

func TestTriggerTimes(t *testing.T) {
	start := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	ann := func(ts time.Time) map[string]string {
		return map[string]string{AnnotationLastChangeTriggerTime: ts.Format(time.RFC3339Nano)}
	}
	at := func(s int) time.Time { return start.Add(time.Duration(s) * time.Second) }
	type ev struct {
		name    string
		ann     map[string]string
		deleted bool
	}
	tests := []struct {
		name   string
		events []ev
		want   []time.Time
	}{
		{"new trigger times are pending", []ev{{"a", ann(at(1)), false}, {"b", ann(at(2)), false}}, []time.Time{at(1), at(2)}},
		{"an unchanged annotation is not a new change", []ev{{"a", ann(at(1)), false}, {"a", ann(at(1)), false}}, []time.Time{at(1)}},
		{"a changed annotation is, but before a sync the earliest change waits", []ev{{"a", ann(at(1)), false}, {"a", ann(at(3)), false}}, []time.Time{at(1)}},
		{"changes before the start are ignored", []ev{{"a", ann(at(-5)), false}}, nil},
		{"no annotation, or a bad one", []ev{{"a", nil, false}, {"b", map[string]string{AnnotationLastChangeTriggerTime: "yesterday"}, false}}, nil},
		{"a recreated slice waits once", []ev{{"a", ann(at(1)), false}, {"a", nil, true}, {"a", ann(at(1)), false}}, []time.Time{at(1)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tt := NewTriggerTimes(start)
			for _, e := range tc.events {
				if e.deleted {
					tt.SliceDeleted("ns", e.name)
				} else {
					tt.SliceChanged("ns", e.name, e.ann)
				}
			}
			got := tt.Take()
			slices.SortFunc(got, time.Time.Compare)
			if len(got) != len(tc.want) {
				t.Fatalf("Take = %v, want %v", got, tc.want)
			}
			for i := range got {
				if !got[i].Equal(tc.want[i]) {
					t.Errorf("Take = %v, want %v", got, tc.want)
				}
			}
			if again := tt.Take(); len(again) != 0 {
				t.Errorf("second Take = %v, want nothing", again)
			}
		})
	}
}

func TestStateCounter(t *testing.T) {
	key := func(n string) model.ServiceKey { return model.ServiceKey{Namespace: "ns", Name: n} }
	port := func(eps int) model.ServicePort {
		sp := model.ServicePort{}
		for i := range eps {
			sp.Endpoints = append(sp.Endpoints, model.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), Port: 80})
		}
		return sp
	}
	st := &model.State{Services: map[model.ServiceKey][]model.ServicePort{
		key("a"): {port(2), port(2)},
		key("b"): {port(0)},
	}}
	c := NewStateCounter()
	steps := []struct {
		name      string
		change    func()
		delta     model.Delta
		svcs, eps int
	}{
		{"full count", func() {}, model.Delta{Full: true}, 2, 4},
		{"a Service gains endpoints", func() { st.Services[key("b")] = []model.ServicePort{port(3)} }, model.Delta{Changed: []model.ServiceKey{key("b")}}, 2, 7},
		{"a Service goes away", func() { delete(st.Services, key("a")) }, model.Delta{Changed: []model.ServiceKey{key("a")}}, 1, 3},
		{"unchanged Services are not recounted", func() { st.Services[key("c")] = []model.ServicePort{port(1)} }, model.Delta{}, 1, 3},
		{"a full delta recounts", func() {}, model.Delta{Full: true}, 2, 4},
	}
	for _, s := range steps {
		s.change()
		svcs, eps := c.Update(st, s.delta)
		if svcs != s.svcs || eps != s.eps {
			t.Errorf("%s: %d Services, %d endpoints; want %d, %d", s.name, svcs, eps, s.svcs, s.eps)
		}
	}
}

func TestNopIsAReporter(t *testing.T) {
	var r Reporter = Nop
	r.ObserveSync(true, time.Second)
	r.ConntrackEntriesDeleted(3)
}

func TestCountResponses(t *testing.T) {
	m := New("x")
	h := CountResponses(m, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write([]byte("{}"))
	}))
	ctx, cancel := context.WithCancel(context.Background())
	addr := freeAddr(t)
	done := make(chan error, 1)
	go func() { done <- ServeHTTP(ctx, addr, h) }()
	get := func(path string) {
		for range 50 {
			resp, err := http.Get("http://" + addr + path)
			if err == nil {
				resp.Body.Close()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("GET %s failed", path)
	}
	get("/healthz")
	get("/livez")
	get("/livez")
	get("/scan-1")
	get("/scan-2?x=1")
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ServeHTTP after cancel: %v", err)
	}
	for _, tc := range []struct {
		path, code string
		want       float64
	}{{"/healthz", "503", 1}, {"/livez", "200", 2}, {"other", "200", 2}} {
		if got := testutil.ToFloat64(m.healthz.WithLabelValues(tc.path, tc.code)); got != tc.want {
			t.Errorf("%s %s: %v responses counted, want %v", tc.path, tc.code, got, tc.want)
		}
	}
	if n := testutil.CollectAndCount(m.healthz); n != 3 {
		t.Errorf("%d health response series, want 3 (any other path is one)", n)
	}
}

// TestTriggerTimesAfterASync: once taken, a slice's next change is
// pending again.
func TestTriggerTimesAfterASync(t *testing.T) {
	start := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tt := NewTriggerTimes(start)
	for _, s := range []int{1, 3} {
		ts := start.Add(time.Duration(s) * time.Second)
		tt.SliceChanged("ns", "a", map[string]string{AnnotationLastChangeTriggerTime: ts.Format(time.RFC3339Nano)})
		if got := tt.Take(); len(got) != 1 || !got[0].Equal(ts) {
			t.Errorf("Take after the change at %v = %v", ts, got)
		}
	}
}
