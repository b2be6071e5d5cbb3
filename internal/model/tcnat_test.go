package model

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestTCNATChoices(t *testing.T) {
	local := Endpoint{Addr: netip.MustParseAddr("10.244.1.10"), Port: 8080, Local: true, Ready: true, Serving: true}
	remote := Endpoint{Addr: netip.MustParseAddr("10.244.2.10"), Port: 8080, Ready: true, Serving: true}
	nodeAddr := netip.MustParseAddr("192.168.100.11")
	hostNet := Endpoint{Addr: nodeAddr, Port: 8080, Local: true, Ready: true, Serving: true}
	both := []Endpoint{local, remote}
	clusterIP := Frontend{Kind: ClusterIP, Addr: netip.MustParseAddr("10.96.0.10"), Port: 80}
	nodePort := Frontend{Kind: NodePort, Addr: nodeAddr, Port: 30080}
	lbIP := Frontend{Kind: LoadBalancerIP, Addr: netip.MustParseAddr("203.0.113.7"), Port: 80}
	port := func(edit func(sp *ServicePort)) ServicePort {
		sp := ServicePort{
			Name:      ServicePortName{ServiceKey: ServiceKey{Namespace: "default", Name: "web"}, Protocol: TCP, Family: IPv4},
			ClusterIP: clusterIP.Addr, Port: 80, NodePort: 30080, Frontends: []Frontend{clusterIP, nodePort, lbIP},
			Endpoints: both, ClusterEndpoints: both, LocalEndpoints: []Endpoint{local},
		}
		if edit != nil {
			edit(&sp)
		}
		return sp
	}
	on := Config{TCNAT: true}
	tests := []struct {
		name string
		cfg  Config
		sp   ServicePort
		fe   Frontend
		want *TCNATService // nil: left to the rules
	}{
		{"off", Config{}, port(nil), nodePort, nil},
		{"Cluster NodePort: every endpoint, masqueraded", on, port(nil), nodePort,
			&TCNATService{Endpoints: both, Masquerade: true}},
		{"Cluster LoadBalancer IP", on, port(nil), lbIP, &TCNATService{Endpoints: both, Masquerade: true}},
		{"a ClusterIP is reached through the stack", on, port(nil), clusterIP, nil},
		{"UDP", on, port(func(sp *ServicePort) { sp.Name.Protocol = UDP }), nodePort,
			&TCNATService{Endpoints: both, Masquerade: true}},
		{"SCTP is left to the rules", on, port(func(sp *ServicePort) { sp.Name.Protocol = SCTP }), nodePort, nil},
		{"IPv6 is left to the rules", on, port(func(sp *ServicePort) { sp.Name.Family = IPv6 }), nodePort, nil},
		{"affinity is left to the rules", on, port(func(sp *ServicePort) { sp.AffinityTimeout = time.Hour }), nodePort, nil},
		{"source ranges: the LoadBalancer IP is left to the rules", on,
			port(func(sp *ServicePort) { sp.FirewallLB = true }), lbIP, nil},
		{"source ranges do not filter the NodePort", on,
			port(func(sp *ServicePort) { sp.FirewallLB = true }), nodePort, &TCNATService{Endpoints: both, Masquerade: true}},
		{"no endpoint: the rules refuse", on,
			port(func(sp *ServicePort) { sp.Endpoints, sp.ClusterEndpoints, sp.LocalEndpoints = nil, nil, nil }), nodePort, nil},
		{"Local: the local endpoints, source kept", on,
			port(func(sp *ServicePort) { sp.ExternalPolicyLocal = true }), nodePort,
			&TCNATService{Endpoints: []Endpoint{local}, LocalPolicy: true}},
		{"Local without a local endpoint: the rules drop", on,
			port(func(sp *ServicePort) { sp.ExternalPolicyLocal, sp.LocalEndpoints = true, nil }), nodePort, nil},
		{"an endpoint at the node's address is delivered by the stack", on,
			port(func(sp *ServicePort) { sp.ClusterEndpoints = []Endpoint{local, hostNet} }), nodePort, nil},
		{"an endpoint at another local address is delivered by the stack",
			Config{TCNAT: true, LocalAddrs: []netip.Addr{local.Addr}}, port(nil), nodePort, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &State{Config: tt.cfg, Node: Node{Name: "node-a", Addrs: []netip.Addr{nodeAddr}}}
			got, ok := st.TCNAT(&tt.sp, tt.fe)
			if (tt.want != nil) != ok {
				t.Fatalf("TCNAT ok = %v, want %v", ok, tt.want != nil)
			}
			if !ok {
				return
			}
			if !slices.Equal(got.Endpoints, tt.want.Endpoints) || got.Masquerade != tt.want.Masquerade || got.LocalPolicy != tt.want.LocalPolicy {
				t.Errorf("TCNAT = %+v, want %+v", got, *tt.want)
			}
		})
	}
}

func TestMasqueradePorts(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		lo, hi uint16
		ok     bool
	}{
		{"tc NAT off", Config{TCNATPorts: [2]uint16{1024, 32767}}, 0, 0, false},
		{"below Linux's ephemeral range: the rest above", Config{TCNAT: true, TCNATPorts: [2]uint16{1024, 32767}}, 32768, 65535, true},
		{"above a wide ephemeral range: the rest below", Config{TCNAT: true, TCNATPorts: [2]uint16{61000, 65535}}, 1024, 60999, true},
		{"all ports: nothing left", Config{TCNAT: true, TCNATPorts: [2]uint16{1024, 65535}}, 0, 0, false},
		{"no ports set", Config{TCNAT: true}, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lo, hi, ok := tt.cfg.MasqueradePorts()
			if lo != tt.lo || hi != tt.hi || ok != tt.ok {
				t.Errorf("MasqueradePorts() = %d, %d, %v; want %d, %d, %v", lo, hi, ok, tt.lo, tt.hi, tt.ok)
			}
		})
	}
}

func TestDirectPodCIDR(t *testing.T) {
	v4 := netip.MustParsePrefix("10.244.0.0/16")
	v6 := netip.MustParsePrefix("fd00:10:244::/56")
	all := Config{TCNAT: true, TCNATPodToPod: true, SocketLB: true, UntrackPodTCP: true, ClusterCIDRs: []netip.Prefix{v6, netip.MustParsePrefix("10.244.1.7/16")}}
	tests := []struct {
		name string
		edit func(c *Config)
		want netip.Prefix // zero: no direct delivery
	}{
		{"on: the IPv4 cluster CIDR, masked", func(*Config) {}, v4},
		{"without the option", func(c *Config) { c.TCNATPodToPod = false }, netip.Prefix{}},
		{"without the tc NAT", func(c *Config) { c.TCNAT = false }, netip.Prefix{}},
		{"pod TCP tracked", func(c *Config) { c.UntrackPodTCP = false }, netip.Prefix{}},
		{"no socket load balancer (no untracking)", func(c *Config) { c.SocketLB = false }, netip.Prefix{}},
		{"masqueradeAll turns the balancer off", func(c *Config) { c.MasqueradeAll = true }, netip.Prefix{}},
		{"no IPv4 cluster CIDR", func(c *Config) { c.ClusterCIDRs = []netip.Prefix{v6} }, netip.Prefix{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := all
			cfg.ClusterCIDRs = slices.Clone(all.ClusterCIDRs)
			tt.edit(&cfg)
			st := &State{Config: cfg}
			got, ok := st.DirectPodCIDR()
			if ok != tt.want.IsValid() || got != tt.want {
				t.Errorf("DirectPodCIDR() = %v, %v; want %v", got, ok, tt.want)
			}
		})
	}
}
