// Package metrics is kubenat's Prometheus instrumentation: a private
// registry (no global state), the metrics the agent and other packages
// report through the Reporter interface, and an HTTP server for /metrics
// (127.0.0.1:10249 by default).
//
// Metric names start with kubenat_ and follow the Prometheus conventions:
// base units (seconds), _total for counters, no unit in gauges of counts.
//
//	kubenat_sync_duration_seconds{kind="full"|"partial"}  histogram
//	kubenat_sync_failures_total                           counter
//	kubenat_sync_last_success_timestamp_seconds           gauge
//	kubenat_network_programming_duration_seconds          histogram
//	kubenat_pending_changes                               gauge
//	kubenat_programmed_services                           gauge
//	kubenat_programmed_endpoints                          gauge
//	kubenat_invalid_objects                               gauge
//	kubenat_conntrack_entries_deleted_total               counter
//	kubenat_socket_lb_frontends                           gauge
//	kubenat_held_endpoints                                gauge
//	kubenat_tables_restored_total                         counter
//	kubenat_healthz_responses_total{path,code}            counter (path "/healthz", "/livez" or "other")
//	kubenat_build_info{version,go_version}                gauge (always 1)
//
// plus the Go runtime (go_*) and process (process_*) collectors.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// Reporter receives what kubenat measures. Implementations are safe for
// concurrent use. Packages take a Reporter so that they can be used
// without metrics (Nop) and tested with a Metrics of their own.
type Reporter interface {
	// ObserveSync records a sync that programmed the kernel: a full one
	// (the tables replaced) or a partial one (only changed Services), and
	// how long building and applying it took.
	ObserveSync(full bool, took time.Duration)
	// SyncFailed counts a sync that could not be applied.
	SyncFailed()
	// ObserveNetworkProgramming records the time from a change of the
	// cluster (an EndpointSlice's last-change-trigger-time) to the kernel
	// rules reflecting it.
	ObserveNetworkProgramming(latency time.Duration)
	// SetPendingChanges sets the number of object changes received and not
	// yet programmed.
	SetPendingChanges(n int)
	// SetProgrammed sets how many Services and endpoints the kernel rules
	// serve (see StateCounter).
	SetProgrammed(services, endpoints int)
	// SetInvalidObjects sets the number of input problems currently
	// reported (objects left out or kept at their last good version).
	SetInvalidObjects(n int)
	// ConntrackEntriesDeleted adds n conntrack entries deleted because the
	// endpoints they pointed at went away.
	ConntrackEntriesDeleted(n int)
	// HealthzResponse counts one response of a health endpoint ("/healthz",
	// "/livez") with its HTTP status code.
	HealthzResponse(path string, code int)
	// SetSocketLBFrontends sets the number of ClusterIP frontends the
	// socket load balancer serves (0 when it is off).
	SetSocketLBFrontends(n int)
	// SetHeldEndpoints sets the number of endpoints kept tracked, with
	// pod-to-pod TCP untracked, only for connections the rules DNATed to
	// them (see nftables.Options.InUse).
	SetHeldEndpoints(n int)
	// TablesRestored counts the agent finding its tables flushed or
	// deleted from outside (to be programmed again).
	TablesRestored()
}

// Nop is a Reporter that discards everything.
var Nop Reporter = nop{}

type nop struct{}

func (nop) ObserveSync(bool, time.Duration)         {}
func (nop) SyncFailed()                             {}
func (nop) ObserveNetworkProgramming(time.Duration) {}
func (nop) SetPendingChanges(int)                   {}
func (nop) SetProgrammed(int, int)                  {}
func (nop) SetInvalidObjects(int)                   {}
func (nop) ConntrackEntriesDeleted(int)             {}
func (nop) HealthzResponse(string, int)             {}
func (nop) SetSocketLBFrontends(int)                {}
func (nop) SetHeldEndpoints(int)                    {}
func (nop) TablesRestored()                         {}

// Metrics is the Prometheus implementation of Reporter, with its own
// registry.
type Metrics struct {
	reg *prometheus.Registry

	syncDuration    *prometheus.HistogramVec
	syncFailures    prometheus.Counter
	lastSync        prometheus.Gauge
	programming     prometheus.Histogram
	pending         prometheus.Gauge
	services        prometheus.Gauge
	endpoints       prometheus.Gauge
	invalid         prometheus.Gauge
	conntrackDelete prometheus.Counter
	healthz         *prometheus.CounterVec
	socketLB        prometheus.Gauge
	held            prometheus.Gauge
	restored        prometheus.Counter
}

// New returns Metrics registered in a new private registry, with the Go
// runtime and process collectors and kubenat_build_info for version.
func New(version string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kubenat_sync_duration_seconds",
			Help: "Time to build and apply one sync of the kernel rules, by kind: full (tables replaced) or partial (changed Services only).",
			// 0.5 ms to ~16 s.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"kind"}),
		syncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubenat_sync_failures_total",
			Help: "Syncs of the kernel rules that failed (they are retried with backoff).",
		}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubenat_sync_last_success_timestamp_seconds",
			Help: "Unix time of the last successful sync.",
		}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kubenat_network_programming_duration_seconds",
			Help:    "Time from a change of a Service's endpoints (the EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time) to the kernel rules reflecting it.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300},
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubenat_pending_changes",
			Help: "Object changes (Services, EndpointSlices, the Node) received and not yet programmed.",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubenat_programmed_services",
			Help: "Services with at least one port in the programmed rules.",
		}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubenat_programmed_endpoints",
			Help: "Endpoints in the programmed rules, counted once per Service port and address family that uses them.",
		}),
		invalid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubenat_invalid_objects",
			Help: "Input problems currently reported: objects left out of the rules or kept at their last valid version.",
		}),
		conntrackDelete: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubenat_conntrack_entries_deleted_total",
			Help: "conntrack entries deleted because the endpoint they pointed at went away or the Service changed.",
		}),
		healthz: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubenat_healthz_responses_total",
			Help: "Responses of the health endpoints, by path and HTTP status code.",
		}, []string{"path", "code"}),
		socketLB: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubenat_socket_lb_frontends",
			Help: "ClusterIP frontends (address, port) the eBPF socket load balancer serves; 0 when it is off.",
		}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubenat_held_endpoints",
			Help: "Endpoints kept tracked, with pod-to-pod TCP untracked, only because connections the rules DNATed to them are open.",
		}),
		restored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubenat_tables_restored_total",
			Help: "Times the agent found its rules (nftables tables, iptables chains) flushed or deleted from outside (e.g. nft flush ruleset, iptables -F) and programmed them again.",
		}),
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "kubenat_build_info",
		Help:        "Always 1; the labels tell the kubenat version and the Go version it was built with.",
		ConstLabels: prometheus.Labels{"version": version, "go_version": runtime.Version()},
	})
	build.Set(1)
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		build, m.syncDuration, m.syncFailures, m.lastSync, m.programming, m.pending,
		m.services, m.endpoints, m.invalid, m.conntrackDelete, m.healthz, m.socketLB, m.held, m.restored,
	)
	// Export the full/partial series from the start, at zero.
	m.syncDuration.WithLabelValues("full")
	m.syncDuration.WithLabelValues("partial")
	return m
}

// Registry returns the private registry (for tests and extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveSync implements Reporter.
func (m *Metrics) ObserveSync(full bool, took time.Duration) {
	kind := "partial"
	if full {
		kind = "full"
	}
	m.syncDuration.WithLabelValues(kind).Observe(took.Seconds())
	m.lastSync.SetToCurrentTime()
}

// SyncFailed implements Reporter.
func (m *Metrics) SyncFailed() { m.syncFailures.Inc() }

// ObserveNetworkProgramming implements Reporter. Negative latencies (a
// trigger time in the future: clock skew between nodes) are dropped.
func (m *Metrics) ObserveNetworkProgramming(latency time.Duration) {
	if latency < 0 {
		return
	}
	m.programming.Observe(latency.Seconds())
}

// SetPendingChanges implements Reporter.
func (m *Metrics) SetPendingChanges(n int) { m.pending.Set(float64(n)) }

// SetProgrammed implements Reporter.
func (m *Metrics) SetProgrammed(services, endpoints int) {
	m.services.Set(float64(services))
	m.endpoints.Set(float64(endpoints))
}

// SetInvalidObjects implements Reporter.
func (m *Metrics) SetInvalidObjects(n int) { m.invalid.Set(float64(n)) }

// ConntrackEntriesDeleted implements Reporter.
func (m *Metrics) ConntrackEntriesDeleted(n int) { m.conntrackDelete.Add(float64(n)) }

// SetSocketLBFrontends implements Reporter.
func (m *Metrics) SetSocketLBFrontends(n int) { m.socketLB.Set(float64(n)) }

// SetHeldEndpoints implements Reporter.
func (m *Metrics) SetHeldEndpoints(n int) { m.held.Set(float64(n)) }

// TablesRestored implements Reporter.
func (m *Metrics) TablesRestored() { m.restored.Inc() }

// HealthzResponse implements Reporter.
func (m *Metrics) HealthzResponse(path string, code int) {
	m.healthz.WithLabelValues(path, strconv.Itoa(code)).Inc()
}

// Handler returns the HTTP handler serving the registry in the Prometheus
// text (or OpenMetrics, when asked for) format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, EnableOpenMetrics: true})
}

// retryInterval is how long Run waits before binding its address again.
const retryInterval = 5 * time.Second

// Run serves the metrics at /metrics on addr (host:port) until ctx ends,
// and with profiling the Go runtime's profiles at /debug/pprof/ (as
// kube-proxy's enableProfiling does, on the same server). While addr
// cannot be bound (e.g. the previous agent on this host network is still
// exiting) it logs the error and tries again every 5 s: metrics never
// stop the agent.
func (m *Metrics) Run(ctx context.Context, addr string, profiling bool) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	for {
		err := serve(ctx, addr, mux, func(a net.Addr) {
			klog.InfoS("Serving metrics", "address", "http://"+a.String()+"/metrics")
		})
		if ctx.Err() != nil {
			return
		}
		klog.ErrorS(err, "Metrics server failed; retrying", "address", addr, "after", retryInterval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(retryInterval):
		}
	}
}

// CountResponses wraps a health handler so that every response is counted
// with HealthzResponse, by status code and by path: "/healthz", "/livez",
// or "other" for any other path, so that requests from anyone who reaches
// the port cannot add series without bound.
func CountResponses(r Reporter, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, req)
		path := req.URL.Path
		if path != "/healthz" && path != "/livez" {
			path = "other"
		}
		r.HealthzResponse(path, rec.code)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// ServeHTTP listens on addr and serves h until ctx ends, then returns nil;
// it returns the error if addr cannot be bound or serving fails.
func ServeHTTP(ctx context.Context, addr string, h http.Handler) error {
	return serve(ctx, addr, h, nil)
}

// serve is ServeHTTP, calling listening (if not nil) once addr is bound.
func serve(ctx context.Context, addr string, h http.Handler, listening func(net.Addr)) error {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	if listening != nil {
		listening(l.Addr())
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving on %s: %w", addr, err)
	}
	return nil
}
