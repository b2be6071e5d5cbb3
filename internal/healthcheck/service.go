package healthcheck

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"github.com/kubenat/kubenat/internal/model"
)

// ServiceInfo is what a Service's health check reports.
type ServiceInfo struct {
	Port uint16 // the healthCheckNodePort
	// LocalEndpoints is the number of ready endpoints on this node.
	LocalEndpoints int
}

// serviceStatus is the JSON body of a Service health check.
type serviceStatus struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// ServiceHealth runs one HTTP server per Service health check port. A
// probe gets 200 when the Service has local endpoints and the proxy is
// healthy, else 503, with the JSON body kube-proxy serves and the header
// X-Load-Balancing-Endpoint-Weight: N.
type ServiceHealth struct {
	ctx    context.Context
	proxy  *ProxyHealth
	listen func(port uint16) (net.Listener, error)
	// report is told when a Service's health check cannot be served (or
	// can again, with a nil error).
	report func(svc model.ServiceKey, err error)

	mu       sync.Mutex
	services map[model.ServiceKey]*svcServer
}

type svcServer struct {
	key    model.ServiceKey
	port   uint16
	local  int
	cancel context.CancelFunc // nil when the port could not be bound
	done   chan struct{}      // closed when the server has stopped
	err    error
}

// NewServiceHealth returns a manager whose servers live until ctx ends.
// listen opens the port (nil: all addresses of this network namespace);
// report may be nil.
func NewServiceHealth(ctx context.Context, proxy *ProxyHealth, listen func(uint16) (net.Listener, error), report func(model.ServiceKey, error)) *ServiceHealth {
	if listen == nil {
		listen = func(port uint16) (net.Listener, error) {
			return net.Listen("tcp", ":"+strconv.Itoa(int(port)))
		}
	}
	if report == nil {
		report = func(model.ServiceKey, error) {}
	}
	return &ServiceHealth{ctx: ctx, proxy: proxy, listen: listen, report: report, services: map[model.ServiceKey]*svcServer{}}
}

// Update sets (or, with a zero Port, removes) a Service's health check.
// A server whose port cannot be bound is retried on the next Update or
// Retry; the error is reported naming the Service.
func (s *ServiceHealth) Update(key model.ServiceKey, info ServiceInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.services[key]
	if cur != nil && (info.Port == 0 || cur.port != info.Port) {
		s.stop(cur)
		cur = nil
	}
	if info.Port == 0 {
		return
	}
	if cur == nil {
		cur = &svcServer{key: key, port: info.Port}
		s.services[key] = cur
	}
	cur.local = info.LocalEndpoints
	if cur.cancel == nil {
		s.start(cur)
	}
}

// Retry tries again to bind the ports that failed.
func (s *ServiceHealth) Retry() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, srv := range s.services {
		if srv.cancel == nil {
			s.start(srv)
		}
	}
}

// Ports returns the health check ports being served, by Service.
func (s *ServiceHealth) Ports() map[model.ServiceKey]uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[model.ServiceKey]uint16{}
	for k, srv := range s.services {
		if srv.cancel != nil {
			out[k] = srv.port
		}
	}
	return out
}

// Services returns every Service with a health check, served or waiting
// for its port, in no particular order.
func (s *ServiceHealth) Services() []model.ServiceKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.services))
}

func (s *ServiceHealth) stop(srv *svcServer) {
	if srv.cancel != nil {
		// Wait for the listener to close, so the port is free (and no
		// longer answers) when Update returns.
		srv.cancel()
		<-srv.done
	}
	delete(s.services, srv.key)
	if srv.err != nil {
		s.report(srv.key, nil)
	}
}

func (s *ServiceHealth) start(srv *svcServer) {
	l, err := s.listen(srv.port)
	if err != nil {
		err = fmt.Errorf("Service %s: serving healthCheckNodePort %d: %w", srv.key, srv.port, err)
		if srv.err == nil || srv.err.Error() != err.Error() {
			s.report(srv.key, err)
		}
		srv.err = err
		return
	}
	if srv.err != nil {
		s.report(srv.key, nil)
		srv.err = nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	srv.cancel, srv.done = cancel, make(chan struct{})
	key, done := srv.key, srv.done
	go func() {
		defer close(done)
		_ = serveUntil(ctx, l, s.handler(key))
	}()
}

func (s *ServiceHealth) handler(key model.ServiceKey) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		local := 0
		if srv := s.services[key]; srv != nil {
			local = srv.local
		}
		s.mu.Unlock()
		var st serviceStatus
		st.Service.Namespace, st.Service.Name = key.Namespace, key.Name
		st.LocalEndpoints = local
		st.ServiceProxyHealthy = s.proxy == nil || s.proxy.Healthy()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(local))
		if local == 0 || !st.ServiceProxyHealthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(st)
	})
}

// InfoOf computes a Service's health check from its ports: the
// healthCheckNodePort, and the number of ready local endpoints (the most of
// any family, so a dual-stack pod counts once).
func InfoOf(ports []model.ServicePort) ServiceInfo {
	var info ServiceInfo
	perFamily := map[model.Family]map[string]bool{}
	for _, sp := range ports {
		if sp.HealthCheckNodePort != 0 {
			info.Port = sp.HealthCheckNodePort
		}
		m := perFamily[sp.Name.Family]
		if m == nil {
			m = map[string]bool{}
			perFamily[sp.Name.Family] = m
		}
		for _, ep := range sp.Endpoints {
			if ep.Local && ep.Ready {
				m[ep.Addr.String()] = true
			}
		}
	}
	for _, m := range perFamily {
		info.LocalEndpoints = max(info.LocalEndpoints, len(m))
	}
	if info.Port == 0 {
		return ServiceInfo{}
	}
	return info
}
