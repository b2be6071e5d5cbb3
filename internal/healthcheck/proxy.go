// Package healthcheck serves kube-proxy compatible health endpoints: the
// proxy's own /healthz and /livez (default port 10256), and one HTTP server
// per externalTrafficPolicy Local LoadBalancer Service on its
// healthCheckNodePort, which cloud load balancers probe to send traffic
// only to nodes with local endpoints.
package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// ProxyHealth tracks whether the datapath keeps up with changes.
//
// It is unhealthy when a change has been waiting to be programmed for
// longer than the timeout. /healthz, which load balancers probe, is also
// unhealthy until the first successful sync (unlike kube-proxy's: a node
// whose rules are not programmed yet takes no load-balanced traffic), and
// while the Node is being deleted or carries the
// ToBeDeletedByClusterAutoscaler taint, so load balancers drain it. /livez,
// which the kubelet's liveness probe asks, only looks at changes waiting:
// a restart would not bring a slow initial list sooner.
type ProxyHealth struct {
	timeout time.Duration
	now     func() time.Time

	mu            sync.Mutex
	lastUpdated   time.Time
	oldestPending time.Time
	nodeEligible  bool
}

// NewProxyHealth returns a tracker with the given timeout.
func NewProxyHealth(timeout time.Duration) *ProxyHealth {
	return &ProxyHealth{timeout: timeout, now: time.Now, nodeEligible: true}
}

// QueuedUpdate records that a change is waiting to be programmed (the
// first one since the last successful sync counts).
func (h *ProxyHealth) QueuedUpdate() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.oldestPending.IsZero() {
		h.oldestPending = h.now()
	}
}

// Updated records a successful sync: nothing is pending any more.
func (h *ProxyHealth) Updated() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated = h.now()
	h.oldestPending = time.Time{}
}

// SetNodeEligible records whether the Node may take load-balanced traffic.
func (h *ProxyHealth) SetNodeEligible(ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nodeEligible = ok
}

// Status is the JSON body of /healthz and /livez. LastUpdated is
// CurrentTime when healthy (kube-proxy's meaning), else the last
// successful sync ("" before the first).
type Status struct {
	LastUpdated  string `json:"lastUpdated"`
	CurrentTime  string `json:"currentTime"`
	NodeEligible *bool  `json:"nodeEligible,omitempty"`
	Healthy      bool   `json:"healthy"`
}

// Healthy reports whether no change has waited longer than the timeout.
func (h *ProxyHealth) Healthy() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.syncHealthy(h.now())
}

func (h *ProxyHealth) syncHealthy(now time.Time) bool {
	return h.oldestPending.IsZero() || now.Sub(h.oldestPending) <= h.timeout
}

// status returns the body and whether the endpoint is healthy.
func (h *ProxyHealth) status(withNode bool) Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	s := Status{CurrentTime: now.UTC().Format(time.RFC3339Nano), Healthy: h.syncHealthy(now)}
	if withNode {
		eligible := h.nodeEligible
		s.NodeEligible = &eligible
		s.Healthy = s.Healthy && eligible && !h.lastUpdated.IsZero()
	}
	switch {
	case s.Healthy:
		// As kube-proxy says it, for the clients of its older releases
		// (where lastUpdated was the last run of an idle sync loop): a
		// healthy proxy was updated now.
		s.LastUpdated = s.CurrentTime
	case !h.lastUpdated.IsZero():
		s.LastUpdated = h.lastUpdated.UTC().Format(time.RFC3339Nano)
	}
	return s
}

// Handler serves /healthz and /livez.
func (h *ProxyHealth) Handler() http.Handler {
	mux := http.NewServeMux()
	serve := func(withNode bool) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			s := h.status(withNode)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			if !s.Healthy {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			_ = json.NewEncoder(w).Encode(s)
		}
	}
	mux.Handle("/healthz", serve(true))
	mux.Handle("/livez", serve(false))
	return mux
}

// Serve listens on addr and serves the handler until ctx ends.
func (h *ProxyHealth) Serve(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening for health checks on %s: %w", addr, err)
	}
	return serveUntil(ctx, l, h.Handler())
}

func serveUntil(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = srv.Close()
		case <-done:
		}
	}()
	err := srv.Serve(l)
	close(done)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
