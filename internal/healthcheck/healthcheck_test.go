package healthcheck

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/model"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func get(t *testing.T, h http.Handler, path string) (int, Status) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	var s Status
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatalf("%s: %v: %s", path, err, rec.Body.String())
	}
	return rec.Code, s
}

func TestProxyHealth(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h := NewProxyHealth(time.Minute)
	h.now = c.now
	hh := h.Handler()
	steps := []struct {
		name      string
		do        func()
		healthz   int
		livez     int
		lastEmpty bool
	}{
		{"fresh start: not programmed yet", func() {}, 503, 200, true},
		{"a change queued", func() { h.QueuedUpdate(); c.t = c.t.Add(30 * time.Second) }, 503, 200, true},
		{"queued too long", func() { c.t = c.t.Add(31 * time.Second) }, 503, 503, true},
		{"synced", func() { h.Updated() }, 200, 200, false},
		{"idle for long is fine", func() { c.t = c.t.Add(time.Hour) }, 200, 200, false},
		{"node being deleted", func() { h.SetNodeEligible(false) }, 503, 200, false},
		{"queued too long after a sync", func() { h.QueuedUpdate(); c.t = c.t.Add(2 * time.Minute) }, 503, 503, false},
	}
	var synced time.Time
	for _, s := range steps {
		s.do()
		code, st := get(t, hh, "/healthz")
		if code != s.healthz || st.Healthy != (s.healthz == 200) || st.NodeEligible == nil {
			t.Errorf("%s: /healthz %d %+v, want %d", s.name, code, st, s.healthz)
		}
		if s.name == "synced" {
			synced = c.t
		}
		// lastUpdated: now when healthy (kube-proxy's meaning), else the
		// last sync, if any.
		wantLast := c.t.Format(time.RFC3339Nano)
		switch {
		case code != 200 && s.lastEmpty:
			wantLast = ""
		case code != 200:
			wantLast = synced.Format(time.RFC3339Nano)
		}
		if st.CurrentTime != c.t.Format(time.RFC3339Nano) || st.LastUpdated != wantLast {
			t.Errorf("%s: times %+v, want lastUpdated %q", s.name, st, wantLast)
		}
		if code, st := get(t, hh, "/livez"); code != s.livez || st.NodeEligible != nil {
			t.Errorf("%s: /livez %d %+v, want %d", s.name, code, st, s.livez)
		}
	}
}

func TestServiceHealth(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := model.ServiceKey{Namespace: "default", Name: "web"}
	var reported []string
	listeners := map[uint16]net.Listener{}
	listen := func(port uint16) (net.Listener, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		listeners[port] = l
		return l, err
	}
	s := NewServiceHealth(ctx, NewProxyHealth(time.Minute), listen, func(k model.ServiceKey, err error) {
		if err != nil {
			reported = append(reported, k.String()+": "+err.Error())
		}
	})
	probe := func() (int, string, string) {
		resp, err := http.Get("http://" + listeners[32000].Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Load-Balancing-Endpoint-Weight"), strings.TrimSpace(string(b))
	}
	s.Update(key, ServiceInfo{Port: 32000, LocalEndpoints: 2})
	code, weight, body := probe()
	if code != 200 || weight != "2" || body != `{"service":{"namespace":"default","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}` {
		t.Errorf("with local endpoints: %d %q %s", code, weight, body)
	}
	s.Update(key, ServiceInfo{Port: 32000, LocalEndpoints: 0})
	if code, weight, _ := probe(); code != 503 || weight != "0" {
		t.Errorf("without local endpoints: %d %q", code, weight)
	}
	s.Update(key, ServiceInfo{})
	if _, err := http.Get("http://" + listeners[32000].Addr().String() + "/"); err == nil {
		t.Error("the server still answers after the Service went away")
	}

	// A port already in use is reported, naming the Service, and retried.
	busy := model.ServiceKey{Namespace: "default", Name: "busy"}
	fail := true
	s.listen = func(port uint16) (net.Listener, error) {
		if fail {
			return nil, &net.OpError{Op: "listen", Err: errString("address already in use")}
		}
		return listen(port)
	}
	s.Update(busy, ServiceInfo{Port: 32001, LocalEndpoints: 1})
	if len(reported) != 1 || !strings.Contains(reported[0], "Service default/busy: serving healthCheckNodePort 32001") {
		t.Errorf("reported %v", reported)
	}
	fail = false
	s.Retry()
	if s.Ports()[busy] != 32001 {
		t.Errorf("not retried: %v", s.Ports())
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func TestInfoOf(t *testing.T) {
	ep := func(ip string, local, ready bool) model.Endpoint {
		return model.Endpoint{Addr: mustAddr(ip), Port: 80, Local: local, Ready: ready}
	}
	ports := []model.ServicePort{
		{Name: model.ServicePortName{Family: model.IPv4}, HealthCheckNodePort: 32000,
			Endpoints: []model.Endpoint{ep("10.0.0.1", true, true), ep("10.0.0.2", true, false), ep("10.0.0.3", false, true)}},
		{Name: model.ServicePortName{Family: model.IPv4, Port: "b"}, HealthCheckNodePort: 32000,
			Endpoints: []model.Endpoint{ep("10.0.0.1", true, true)}},
		{Name: model.ServicePortName{Family: model.IPv6}, HealthCheckNodePort: 32000,
			Endpoints: []model.Endpoint{ep("fd00::1", true, true)}},
	}
	if got := InfoOf(ports); got != (ServiceInfo{Port: 32000, LocalEndpoints: 1}) {
		t.Errorf("InfoOf = %+v", got)
	}
	if got := InfoOf(ports[:0]); got != (ServiceInfo{}) {
		t.Errorf("no ports: %+v", got)
	}
}
