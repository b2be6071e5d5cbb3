package model

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestSocketLBChoices(t *testing.T) {
	local := Endpoint{Addr: netip.MustParseAddr("10.244.1.10"), Port: 8080, Local: true, Ready: true, Serving: true}
	remote := Endpoint{Addr: netip.MustParseAddr("10.244.2.10"), Port: 8080, Ready: true, Serving: true}
	both := []Endpoint{local, remote}
	clusterIP := Frontend{Kind: ClusterIP, Addr: netip.MustParseAddr("10.96.0.10"), Port: 80}
	nodePort := Frontend{Kind: NodePort, Addr: netip.MustParseAddr("192.168.100.11"), Port: 30080}
	port := func(edit func(sp *ServicePort)) ServicePort {
		sp := ServicePort{
			Name:      ServicePortName{ServiceKey: ServiceKey{Namespace: "default", Name: "web"}, Protocol: TCP, Family: IPv4},
			ClusterIP: clusterIP.Addr, Port: 80, Frontends: []Frontend{clusterIP},
			Endpoints: both, ClusterEndpoints: both, LocalEndpoints: []Endpoint{local},
		}
		if edit != nil {
			edit(&sp)
		}
		return sp
	}
	on := Config{SocketLB: true, UntrackPodTCP: true}
	tests := []struct {
		name     string
		cfg      Config
		sp       ServicePort
		balanced []Endpoint // nil: left to the rules
		tracked  []Endpoint
	}{
		{"off", Config{}, port(nil), nil, nil},
		{"masqueradeAll turns it off", Config{SocketLB: true, UntrackPodTCP: true, MasqueradeAll: true}, port(nil), nil, nil},
		{"the balancer alone tracks everything", Config{SocketLB: true},
			port(func(sp *ServicePort) { sp.AffinityTimeout = time.Hour }), nil, nil},
		{"untracking without the balancer does nothing", Config{UntrackPodTCP: true},
			port(func(sp *ServicePort) { sp.AffinityTimeout = time.Hour }), nil, nil},
		{"plain TCP ClusterIP", on, port(nil), both, nil},
		{"UDP is left to the rules and not tracked specially", on,
			port(func(sp *ServicePort) { sp.Name.Protocol = UDP }), nil, nil},
		{"IPv6 is balanced", on, port(func(sp *ServicePort) { sp.Name.Family = IPv6 }), both, nil},
		{"IPv6 with affinity is left to the rules, its endpoints tracked", on,
			port(func(sp *ServicePort) { sp.Name.Family, sp.AffinityTimeout = IPv6, time.Hour }), nil, both},
		{"affinity is left to the rules, its endpoints tracked", on,
			port(func(sp *ServicePort) { sp.AffinityTimeout = time.Hour }), nil, both},
		{"no endpoint: the rules refuse", on,
			port(func(sp *ServicePort) { sp.Endpoints, sp.ClusterEndpoints, sp.LocalEndpoints = nil, nil, nil }), nil, nil},
		{"internalTrafficPolicy Local balances over local endpoints", on,
			port(func(sp *ServicePort) { sp.InternalPolicyLocal = true }), []Endpoint{local}, nil},
		{"internalTrafficPolicy Local without local endpoint: the rules drop", on,
			port(func(sp *ServicePort) { sp.InternalPolicyLocal, sp.LocalEndpoints = true, nil }), nil, both},
		{"externalTrafficPolicy Cluster NodePort: masqueraded, not tracked", on,
			port(func(sp *ServicePort) { sp.Frontends = append(sp.Frontends, nodePort) }), both, nil},
		{"a ClusterIP another Service holds (its externalIP, or a duplicate) is left to the rules", on,
			port(func(sp *ServicePort) { sp.Frontends = []Frontend{nodePort} }), nil, both},
		{"externalTrafficPolicy Local NodePort: tracked", on,
			port(func(sp *ServicePort) { sp.Frontends, sp.ExternalPolicyLocal = append(sp.Frontends, nodePort), true }), both, both},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &State{Config: tt.cfg}
			eps, ok := st.SocketEndpoints(&tt.sp)
			if ok != (tt.balanced != nil) || !slices.Equal(eps, tt.balanced) {
				t.Errorf("SocketEndpoints = %v, %v; want %v", eps, ok, tt.balanced)
			}
			if got := st.TrackedEndpoints(&tt.sp); !slices.Equal(got, tt.tracked) {
				t.Errorf("TrackedEndpoints = %v; want %v", got, tt.tracked)
			}
		})
	}
}
