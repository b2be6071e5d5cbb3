package model

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kubenat/kubenat/internal/k8sobj"
)

var testCfg = Config{
	NodeName:     "node-a",
	ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")},
	NodeIPs:      []netip.Addr{netip.MustParseAddr("192.168.100.11"), netip.MustParseAddr("fd00:100::11")},
}

func ptr[T any](v T) *T { return &v }

type svcOpt func(*v1.Service)

func svc(name string, opts ...svcOpt) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

type ep struct {
	ip, node                  string
	ready, serving, terminate *bool
	port                      int32
}

func slice(svcName, name string, fam discovery.AddressType, port int32, eps ...ep) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: fam,
		Ports:       []discovery.EndpointPort{{Name: ptr("http"), Protocol: ptr(v1.ProtocolTCP), Port: ptr(port)}},
	}
	for _, e := range eps {
		de := discovery.Endpoint{Addresses: []string{e.ip}, Conditions: discovery.EndpointConditions{
			Ready: e.ready, Serving: e.serving, Terminating: e.terminate}}
		if e.node != "" {
			de.NodeName = ptr(e.node)
		}
		s.Endpoints = append(s.Endpoints, de)
	}
	return s
}

func addrs(eps []Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.String())
	}
	return out
}

func TestBuildServicePorts(t *testing.T) {
	lb := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30080
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
			{IP: "192.168.200.10"},
			{IP: "192.168.200.11", IPMode: ptr(v1.LoadBalancerIPModeProxy)},
			{Hostname: "lb.example.com"},
		}
	}
	tests := []struct {
		name      string
		svc       *v1.Service
		slices    []*discovery.EndpointSlice
		frontends []string // "Kind addr:port"
		cluster   []string
		local     []string
		check     func(t *testing.T, sp ServicePort)
	}{
		{
			name:      "ClusterIP",
			svc:       svc("web"),
			slices:    []*discovery.EndpointSlice{slice("web", "w1", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.10", node: "node-a"}, ep{ip: "10.244.2.10", node: "node-b"})},
			frontends: []string{"ClusterIP 10.96.0.10:80"},
			cluster:   []string{"10.244.1.10:8080", "10.244.2.10:8080"},
			local:     []string{"10.244.1.10:8080"},
		},
		{
			name: "LoadBalancer: NodePort on the node IP, VIP ingress only, externalIPs",
			svc: svc("web", lb, func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"192.168.201.10", "fd00::99"}
			}),
			frontends: []string{"ClusterIP 10.96.0.10:80", "NodePort 192.168.100.11:30080", "ExternalIP 192.168.201.10:80", "LoadBalancerIP 192.168.200.10:80"},
		},
		{
			name: "a LoadBalancer IP that is also an externalIP stays a LoadBalancer IP, filtered by its source ranges",
			svc: svc("web", lb, func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"192.168.200.10"}
				s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
			}),
			frontends: []string{"ClusterIP 10.96.0.10:80", "NodePort 192.168.100.11:30080", "LoadBalancerIP 192.168.200.10:80"},
			check: func(t *testing.T, sp ServicePort) {
				if !sp.FirewallLB || sp.AdmitsSource(netip.MustParseAddr("198.51.100.7")) {
					t.Errorf("a source outside the ranges is admitted: firewall %v", sp.FirewallLB)
				}
			},
		},
		{
			name: "a bad source-range annotation on a ClusterIP Service is not read",
			svc: svc("web", func(s *v1.Service) {
				s.Annotations = map[string]string{AnnotationSourceRanges: "not-a-cidr"}
			}),
			frontends: []string{"ClusterIP 10.96.0.10:80"},
		},
		{
			name: "addresses with leading zeros, as old API servers accepted them, are read as kube-proxy reads them",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.096.0.010", []string{"10.096.0.010"}
			}),
			slices:    []*discovery.EndpointSlice{slice("web", "w1", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.001.010"})},
			frontends: []string{"ClusterIP 10.96.0.10:80"},
			cluster:   []string{"10.244.1.10:8080"},
		},
		{
			name:      "NodePort ignored on a ClusterIP Service",
			svc:       svc("web", func(s *v1.Service) { s.Spec.Ports[0].NodePort = 30080 }),
			frontends: []string{"ClusterIP 10.96.0.10:80"},
		},
		{
			name: "several slices merged, duplicates dropped, named port resolved per slice",
			svc:  svc("web"),
			slices: []*discovery.EndpointSlice{
				slice("web", "w1", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.10"}, ep{ip: "10.244.1.11"}),
				slice("web", "w2", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.11"}),
				slice("web", "w3", discovery.AddressTypeIPv4, 9090, ep{ip: "10.244.2.10"}),
				slice("web", "w6", discovery.AddressTypeIPv6, 8080, ep{ip: "fd00:244::10"}),
			},
			frontends: []string{"ClusterIP 10.96.0.10:80"},
			cluster:   []string{"10.244.1.10:8080", "10.244.1.11:8080", "10.244.2.10:9090"},
		},
		{
			name: "not ready excluded; terminating used only when nothing is ready",
			svc:  svc("web"),
			slices: []*discovery.EndpointSlice{slice("web", "w1", discovery.AddressTypeIPv4, 8080,
				ep{ip: "10.244.1.10", node: "node-a", ready: ptr(false), serving: ptr(true), terminate: ptr(true)},
				ep{ip: "10.244.2.10", node: "node-b", ready: ptr(true)},
				ep{ip: "10.244.2.11", node: "node-b", ready: ptr(false)},
			)},
			frontends: []string{"ClusterIP 10.96.0.10:80"},
			cluster:   []string{"10.244.2.10:8080"},
			local:     []string{"10.244.1.10:8080"},
		},
		{
			name: "only terminating: serving ones used, not-serving ones not",
			svc:  svc("web"),
			slices: []*discovery.EndpointSlice{slice("web", "w1", discovery.AddressTypeIPv4, 8080,
				ep{ip: "10.244.1.10", ready: ptr(false), serving: ptr(true), terminate: ptr(true)},
				ep{ip: "10.244.1.11", ready: ptr(false), serving: ptr(false), terminate: ptr(true)},
			)},
			frontends: []string{"ClusterIP 10.96.0.10:80"},
			cluster:   []string{"10.244.1.10:8080"},
		},
		{
			name: "dual-stack: one port per family",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
			}),
			slices: []*discovery.EndpointSlice{
				slice("web", "w4", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.10"}),
				slice("web", "w6", discovery.AddressTypeIPv6, 8080, ep{ip: "fd00:244::10"}),
			},
			frontends: []string{"ClusterIP 10.96.0.10:80", "ClusterIP [fd00:96::10]:80"},
			cluster:   []string{"10.244.1.10:8080", "[fd00:244::10]:8080"},
		},
		{
			name: "policies and affinity",
			svc: svc("web", lb, func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyLocal)
				s.Spec.HealthCheckNodePort = 32000
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			}),
			frontends: []string{"ClusterIP 10.96.0.10:80", "NodePort 192.168.100.11:30080", "LoadBalancerIP 192.168.200.10:80"},
			check: func(t *testing.T, sp ServicePort) {
				if !sp.ExternalPolicyLocal || !sp.InternalPolicyLocal || sp.HealthCheckNodePort != 32000 || sp.AffinityTimeout != DefaultAffinityTimeout {
					t.Errorf("got eTP local %v, iTP local %v, hc %d, affinity %v", sp.ExternalPolicyLocal, sp.InternalPolicyLocal, sp.HealthCheckNodePort, sp.AffinityTimeout)
				}
			},
		},
		{
			name: "externalTrafficPolicy Local ignored when not externally reachable",
			svc: svc("web", func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			frontends: []string{"ClusterIP 10.96.0.10:80"},
			check: func(t *testing.T, sp ServicePort) {
				if sp.ExternalPolicyLocal {
					t.Error("ExternalPolicyLocal set on a ClusterIP Service")
				}
			},
		},
		{
			name: "source ranges: a range with the node IP admits the LB IP too",
			svc: svc("web", lb, func(s *v1.Service) {
				s.Spec.LoadBalancerSourceRanges = []string{"192.168.100.0/24", "203.0.113.0/24", "2001:db8::/32"}
			}),
			frontends: []string{"ClusterIP 10.96.0.10:80", "NodePort 192.168.100.11:30080", "LoadBalancerIP 192.168.200.10:80"},
			check: func(t *testing.T, sp ServicePort) {
				want := []netip.Prefix{netip.MustParsePrefix("192.168.100.0/24"), netip.MustParsePrefix("192.168.200.10/32"), netip.MustParsePrefix("203.0.113.0/24")}
				if !sp.FirewallLB || !reflect.DeepEqual(sp.SourceRanges, want) {
					t.Errorf("source ranges %v (firewall %v), want %v", sp.SourceRanges, sp.FirewallLB, want)
				}
				if sp.AdmitsSource(netip.MustParseAddr("198.51.100.1")) || !sp.AdmitsSource(netip.MustParseAddr("203.0.113.5")) {
					t.Error("AdmitsSource disagrees with the ranges")
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBuilder(testCfg)
			b.SetService(tc.svc, "")
			for _, s := range tc.slices {
				b.SetEndpointSlice(s, "")
			}
			st, _ := b.Build()
			if len(st.Errors) > 0 {
				t.Fatalf("errors: %v", st.Errors)
			}
			ports := st.Services[ServiceKey{"default", tc.svc.Name}]
			var fronts, cluster, local []string
			for _, sp := range ports {
				for _, f := range sp.Frontends {
					fronts = append(fronts, f.Kind.String()+" "+netip.AddrPortFrom(f.Addr, f.Port).String())
				}
				cluster = append(cluster, addrs(sp.ClusterEndpoints)...)
				local = append(local, addrs(sp.LocalEndpoints)...)
				if tc.check != nil {
					tc.check(t, sp)
				}
			}
			if !reflect.DeepEqual(fronts, tc.frontends) {
				t.Errorf("frontends %v, want %v", fronts, tc.frontends)
			}
			if !reflect.DeepEqual(cluster, tc.cluster) {
				t.Errorf("cluster endpoints %v, want %v", cluster, tc.cluster)
			}
			if !reflect.DeepEqual(local, tc.local) {
				t.Errorf("local endpoints %v, want %v", local, tc.local)
			}
		})
	}
}

func TestIgnoredServices(t *testing.T) {
	tests := []struct {
		name string
		svc  *v1.Service
		want string
	}{
		{"headless", svc("h", func(s *v1.Service) { s.Spec.ClusterIP = "None"; s.Spec.ClusterIPs = []string{"None"} }), "headless"},
		{"ExternalName", svc("x", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName }), "ExternalName"},
		{"headless label", svc("l", func(s *v1.Service) { s.Labels = map[string]string{LabelHeadless: ""} }), "headless"},
		{"other proxy", svc("p", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "other"} }), "another proxy"},
		{"kubenat proxy", svc("k", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "kubenat"} }), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := identityOf(tc.svc).ignoreReason("")
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("ignore reason = %q, want one mentioning %q", got, tc.want)
			}
			st := Build(testCfg, Objects{Services: []*v1.Service{tc.svc}})
			if _, programmed := st.Services[ServiceKey{"default", tc.svc.Name}]; programmed != (tc.want == "") {
				t.Errorf("programmed = %v", programmed)
			}
		})
	}
}

func TestInvalidInputIsReportedAndIsolated(t *testing.T) {
	tests := []struct {
		name string
		bad  *v1.Service
		want string // part of the error
	}{
		{"invalid cluster IP", svc("bad", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.300", []string{"10.96.0.300"} }), `spec.clusterIPs[0]: "10.96.0.300" is not a valid IP address`},
		{"invalid clusterIP alone names it", svc("bad", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.300", nil }), `spec.clusterIP: "10.96.0.300" is not a valid IP address`},
		{"invalid clusterIP beside valid clusterIPs", svc("bad", func(s *v1.Service) { s.Spec.ClusterIP = "10.96.0.300" }), `spec.clusterIP: "10.96.0.300" is not a valid IP address`},
		{"port out of range", svc("bad", func(s *v1.Service) { s.Spec.Ports[0].Port = 70000 }), "spec.ports[0].port: 70000 is out of range 1-65535"},
		{"nodePort out of range", svc("bad", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = -1 }), "spec.ports[0].nodePort"},
		{"bad protocol", svc("bad", func(s *v1.Service) { s.Spec.Ports[0].Protocol = "ICMP" }), `spec.ports[0].protocol: "ICMP" is not TCP, UDP or SCTP`},
		{"duplicate port", svc("bad", func(s *v1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "again", Protocol: v1.ProtocolTCP, Port: 80})
		}), "spec.ports[1]: 80/TCP is also spec.ports[0]"},
		{"hostile name", svc("bad;drop", nil...), `metadata.name: "bad;drop" is not a valid Service name`},
		{"bad policy", svc("bad", func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = "Nearby" }), `spec.externalTrafficPolicy: "Nearby" is not a traffic policy`},
		{"affinity timeout", svc("bad", func(s *v1.Service) {
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr(int32(90000))}}
		}), "timeoutSeconds: 90000 is out of range 1-86400"},
		{"source range", svc("bad", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/33"}
		}), `spec.loadBalancerSourceRanges[0]: "10.0.0.0/33" is not a CIDR`},
		{"no cluster IP", svc("bad", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil }), "spec.clusterIP: must be set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			good := svc("good", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.20", []string{"10.96.0.20"} })
			b := NewBuilder(testCfg)
			b.SetService(good, "good.yaml")
			b.SetService(tc.bad, "bad.yaml")
			st, _ := b.Build()
			if _, ok := st.Services[ServiceKey{"default", "good"}]; !ok {
				t.Error("the good Service is not programmed")
			}
			if _, ok := st.Services[ServiceKey{"default", tc.bad.Name}]; ok {
				t.Error("the bad Service is programmed")
			}
			var msgs []string
			for _, e := range st.Errors {
				msgs = append(msgs, e.Error())
			}
			all := strings.Join(msgs, "\n")
			wantPrefix := "Service default/" + tc.bad.Name + " (bad.yaml): "
			if !strings.Contains(all, wantPrefix) || !strings.Contains(all, tc.want) {
				t.Errorf("errors:\n%s\nwant one starting %q containing %q", all, wantPrefix, tc.want)
			}
		})
	}
}

func TestBuilderKeepsLastGoodVersion(t *testing.T) {
	b := NewBuilder(testCfg)
	b.SetService(svc("web"), "web.yaml")
	st, d := b.Build()
	want := st.Services[ServiceKey{"default", "web"}]
	if !d.Full || len(want) != 1 {
		t.Fatalf("first build: delta %+v, ports %v", d, want)
	}
	b.SetService(svc("web", func(s *v1.Service) { s.Spec.Ports[0].Port = 0 }), "web.yaml")
	st, d = b.Build()
	if got := st.Services[ServiceKey{"default", "web"}]; !reflect.DeepEqual(got, want) {
		t.Errorf("after an invalid update the ports are %v, want the last good %v", got, want)
	}
	if len(d.Changed) != 0 {
		t.Errorf("invalid update reported changes %v", d.Changed)
	}
	if len(st.Errors) != 2 || !strings.Contains(st.Errors[1].Error()+st.Errors[0].Error(), "keeping the last valid version") {
		t.Errorf("errors %v", st.Errors)
	}
	b.DeleteService(ServiceKey{"default", "web"})
	st, d = b.Build()
	if len(st.Services) != 0 || !reflect.DeepEqual(d.Changed, []ServiceKey{{"default", "web"}}) || len(st.Errors) != 0 {
		t.Errorf("after delete: services %v, delta %v, errors %v", st.Services, d, st.Errors)
	}
}

// TestBuilderKeepsNoObject: the Builder parses what it needs of each object
// when it arrives (the source does not keep them): objects scribbled over
// afterwards change nothing, also when every Service is rebuilt (a new
// configuration, which may name another proxy).
func TestBuilderKeepsNoObject(t *testing.T) {
	labelled := svc("labelled", func(s *v1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.20", []string{"10.96.0.20"}
		s.Labels = map[string]string{LabelServiceProxyName: "other"}
	})
	objs := []any{svc("web"), slice("web", "web-1", discovery.AddressTypeIPv4, 8080, ep{ip: "10.0.1.5", node: "node-a"}), labelled}
	b := NewBuilder(testCfg)
	b.SetService(objs[0].(*v1.Service), "")
	b.SetEndpointSlice(objs[1].(*discovery.EndpointSlice), "")
	b.SetService(labelled, "")
	st, _ := b.Build()
	want := st.Services[ServiceKey{"default", "web"}]
	if len(want) != 1 || len(want[0].Endpoints) != 1 || len(st.Services) != 1 {
		t.Fatalf("first build: %v", st.Services)
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *v1.Service:
			*o = v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "y"}}
		case *discovery.EndpointSlice:
			*o = discovery.EndpointSlice{}
		}
	}
	cfg := testCfg
	cfg.ProxyName = "other"
	b.SetConfig(cfg)
	st, _ = b.Build()
	if len(st.Services) != 2 {
		t.Fatalf("with proxy name %q: Services %v, want web and labelled", cfg.ProxyName, st.Services)
	}
	if got := st.Services[ServiceKey{"default", "web"}]; !reflect.DeepEqual(got, want) {
		t.Errorf("after the objects changed under the Builder: %v, want %v", got, want)
	}
}

func TestBuilderIsIncremental(t *testing.T) {
	b := NewBuilder(testCfg)
	b.SetService(svc("a"), "")
	b.SetService(svc("b", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", []string{"10.96.0.11"} }), "")
	b.Build()
	b.SetEndpointSlice(slice("b", "b-1", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.10"}), "")
	_, d := b.Build()
	if d.Full || !reflect.DeepEqual(d.Changed, []ServiceKey{{"default", "b"}}) {
		t.Errorf("slice change: delta %+v, want only default/b", d)
	}
	// An identical update changes nothing.
	b.SetEndpointSlice(slice("b", "b-1", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.10"}), "")
	if _, d := b.Build(); !d.Empty() {
		t.Errorf("identical update: delta %+v", d)
	}
	b.DeleteEndpointSlice("default", "b-1")
	if _, d := b.Build(); !reflect.DeepEqual(d.Changed, []ServiceKey{{"default", "b"}}) {
		t.Errorf("slice delete: delta %+v", d)
	}
	b.SetNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, "")
	if _, d := b.Build(); !d.Full {
		t.Errorf("node change: delta %+v, want full", d)
	}
}

func TestFrontendConflicts(t *testing.T) {
	now := time.Now()
	older := svc("older", func(s *v1.Service) { s.CreationTimestamp = metav1.NewTime(now.Add(-time.Hour)) })
	newer := svc("newer", func(s *v1.Service) { s.CreationTimestamp = metav1.NewTime(now) })
	b := NewBuilder(testCfg)
	b.SetService(newer, "newer.yaml")
	b.SetService(older, "older.yaml")
	st, _ := b.Build()
	if len(st.Services[ServiceKey{"default", "older"}][0].Frontends) != 1 {
		t.Error("the older Service lost its ClusterIP")
	}
	if _, ok := st.Services[ServiceKey{"default", "newer"}]; !ok {
		t.Fatal("the newer Service is missing entirely")
	}
	if n := len(st.Services[ServiceKey{"default", "newer"}][0].Frontends); n != 0 {
		t.Errorf("the newer Service kept %d frontends", n)
	}
	if len(st.Errors) != 1 || !strings.Contains(st.Errors[0].Error(), "already used by Service default/older") {
		t.Errorf("errors: %v", st.Errors)
	}
	// When the owner goes, the other Service takes the frontend.
	b.DeleteService(ServiceKey{"default", "older"})
	st, d := b.Build()
	if n := len(st.Services[ServiceKey{"default", "newer"}][0].Frontends); n != 1 || len(st.Errors) != 0 {
		t.Errorf("after the owner left: %d frontends, errors %v", n, st.Errors)
	}
	if !reflect.DeepEqual(d.Changed, []ServiceKey{{"default", "newer"}, {"default", "older"}}) {
		t.Errorf("delta %+v", d)
	}
}

// TestFrontendConflictsWithoutCreationTimes: manifests usually carry no
// creation time. A Service added later does not take a frontend from one
// already served, whatever their names; Services arriving together are
// ordered by name.
func TestFrontendConflictsWithoutCreationTimes(t *testing.T) {
	api, aaa, zzz := ServiceKey{"default", "api"}, ServiceKey{"default", "aaa"}, ServiceKey{"default", "zzz"}
	frontends := func(st *State, k ServiceKey) int {
		n := 0
		for _, sp := range st.Services[k] {
			n += len(sp.Frontends)
		}
		return n
	}
	b := NewBuilder(testCfg)
	b.SetService(svc("api"), "api.yaml")
	if st, _ := b.Build(); frontends(st, api) != 1 {
		t.Fatal("api is not served")
	}
	b.SetService(svc("aaa"), "aaa.yaml")
	st, _ := b.Build()
	if frontends(st, api) != 1 || frontends(st, aaa) != 0 {
		t.Errorf("a Service added later took the frontend: api %d, aaa %d", frontends(st, api), frontends(st, aaa))
	}
	if len(st.Errors) != 1 || !strings.Contains(st.Errors[0].Error(), "Service default/aaa") ||
		!strings.Contains(st.Errors[0].Error(), "already used by Service default/api") {
		t.Errorf("errors: %v", st.Errors)
	}
	// A change to the holder keeps its claim; a change to the other does
	// not win it.
	b.SetService(svc("api", func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "b", Protocol: v1.ProtocolTCP, Port: 81})
	}), "api.yaml")
	b.SetService(svc("aaa", func(s *v1.Service) { s.Labels = map[string]string{"x": "y"} }), "aaa.yaml")
	if st, _ := b.Build(); frontends(st, api) != 2 || frontends(st, aaa) != 0 {
		t.Errorf("after changes: api %d frontends, aaa %d", frontends(st, api), frontends(st, aaa))
	}
	// A full rebuild (a configuration change) keeps the claims too.
	cfg := testCfg
	cfg.MasqueradeAll = true
	b.SetConfig(cfg)
	if st, _ := b.Build(); frontends(st, api) != 2 || frontends(st, aaa) != 0 {
		t.Errorf("after a full rebuild: api %d frontends, aaa %d", frontends(st, api), frontends(st, aaa))
	}
	// The holder goes: the other takes the frontend.
	b.DeleteService(api)
	if st, _ := b.Build(); frontends(st, aaa) != 1 || len(st.Errors) != 0 {
		t.Errorf("after api left: aaa %d frontends, errors %v", frontends(st, aaa), st.Errors)
	}
	// Two arriving together: by name.
	b = NewBuilder(testCfg)
	b.SetService(svc("zzz"), "zzz.yaml")
	b.SetService(svc("aaa"), "aaa.yaml")
	if st, _ := b.Build(); frontends(st, aaa) != 1 || frontends(st, zzz) != 0 {
		t.Errorf("arriving together: aaa %d, zzz %d", frontends(st, aaa), frontends(st, zzz))
	}
}

func TestNodeInputs(t *testing.T) {
	cfg := testCfg
	cfg.NodeIPs = nil
	cfg.NodePortAddresses = []string{"primary", "192.168.50.0/24"}
	cfg.LocalAddrs = []netip.Addr{netip.MustParseAddr("192.168.50.7"), netip.MustParseAddr("172.17.0.1")}
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Spec: v1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24"}, Taints: []v1.Taint{{Key: TaintToBeDeleted}}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "192.168.100.11"}, {Type: v1.NodeHostName, Address: "node-a"},
		}}}
	other := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}, Spec: v1.NodeSpec{PodCIDRs: []string{"10.244.2.0/24"}}}
	st := Build(cfg, Objects{Nodes: []*v1.Node{node, other}, Services: []*v1.Service{svc("web", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	})}})
	if got := st.LocalPodCIDRs(IPv4); !reflect.DeepEqual(got, []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}) {
		t.Errorf("local pod CIDRs %v", got)
	}
	if got := st.LocalPodCIDRs(IPv6); !reflect.DeepEqual(got, []netip.Prefix{netip.MustParsePrefix("fd00:244::/56")}) {
		t.Errorf("IPv6 local pod CIDRs fall back to the cluster CIDR: %v", got)
	}
	if !NodeTerminating(node) {
		t.Error("the autoscaler taint does not mark the node terminating")
	}
	var nps []string
	for _, f := range st.Services[ServiceKey{"default", "web"}][0].Frontends {
		if f.Kind == NodePort {
			nps = append(nps, f.Addr.String())
		}
	}
	if !reflect.DeepEqual(nps, []string{"192.168.50.7", "192.168.100.11"}) {
		t.Errorf("NodePort addresses %v", nps)
	}
}

// TestSetLocalAddrs: new interface addresses rebuild every Service only
// when NodePorts are selected by CIDR and the addresses they select
// change; otherwise no Service changes and the State's Config carries
// them at once.
func TestSetLocalAddrs(t *testing.T) {
	addr := netip.MustParseAddr("192.168.50.7")
	for _, tc := range []struct {
		name       string
		nodePorts  []string
		full       bool
		nodePorts2 []string // NodePort addresses after the change
	}{
		{"primary", nil, false, []string{"192.168.100.11"}},
		{"by CIDR", []string{"primary", "192.168.50.0/24"}, true, []string{"192.168.50.7", "192.168.100.11"}},
		{"by CIDR, outside it", []string{"primary", "192.168.60.0/24"}, false, []string{"192.168.100.11"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testCfg
			cfg.NodePortAddresses = tc.nodePorts
			b := NewBuilder(cfg)
			b.SetService(svc("web", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
			}), "test")
			b.Build()
			b.SetLocalAddrs([]netip.Addr{addr})
			st, d := b.Build()
			if d.Full != tc.full || (!tc.full && len(d.Changed) != 0) {
				t.Errorf("delta %+v, want full %v", d, tc.full)
			}
			if !reflect.DeepEqual(st.Config.LocalAddrs, []netip.Addr{addr}) || !reflect.DeepEqual(b.Config().LocalAddrs, st.Config.LocalAddrs) {
				t.Errorf("LocalAddrs: State %v, Builder %v", st.Config.LocalAddrs, b.Config().LocalAddrs)
			}
			var nps []string
			for _, f := range st.Services[ServiceKey{"default", "web"}][0].Frontends {
				if f.Kind == NodePort {
					nps = append(nps, f.Addr.String())
				}
			}
			if !reflect.DeepEqual(nps, tc.nodePorts2) {
				t.Errorf("NodePort addresses %v, want %v", nps, tc.nodePorts2)
			}
		})
	}
}

func TestEgressMasquerade(t *testing.T) {
	st := Build(testCfg, Objects{})
	tests := []struct {
		src, dst string
		masq     bool
	}{
		{"10.244.1.10", "203.0.113.100", true},
		{"10.244.1.10", "10.244.2.10", false},
		{"10.244.1.10", "192.168.100.12", false},
		{"10.244.1.10", "172.20.0.1", false},
		{"10.244.1.10", "169.254.169.254", false},
		{"192.168.100.11", "203.0.113.100", false},
		{"fd00:244::10", "2001:db8::1", true},
		{"fd00:244::10", "fe80::1", false},
		{"fd00:244::10", "fd12::1", false},
	}
	for _, tc := range tests {
		// By CIDR the source address decides, whatever its class.
		for _, class := range []SourceClass{FromLocalPod, FromOutside} {
			if got := st.EgressMasquerade(class, netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst)); got != tc.masq {
				t.Errorf("%s (%s) -> %s: masquerade %v, want %v", tc.src, class, tc.dst, got, tc.masq)
			}
		}
	}
	cfg := testCfg
	cfg.Egress = EgressConfig{NonMasqueradeCIDRs: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, MasqLinkLocal: true}
	st = Build(cfg, Objects{})
	for _, tc := range []struct {
		dst  string
		masq bool
	}{{"203.0.113.100", false}, {"192.168.100.12", true}, {"169.254.169.254", true}, {"10.244.2.1", false}} {
		if got := st.EgressMasquerade(FromLocalPod, netip.MustParseAddr("10.244.1.10"), netip.MustParseAddr(tc.dst)); got != tc.masq {
			t.Errorf("custom config: -> %s: masquerade %v, want %v", tc.dst, got, tc.masq)
		}
	}
}

// TestLocalDetect checks how sources are classified, and which egress is
// masqueraded, with each way of recognizing this node's pods.
func TestLocalDetect(t *testing.T) {
	node := k8sobj.Node("node-a", []string{"192.168.100.11"}, []string{"10.244.1.0/24"})
	bridge := LocalDetect{Mode: DetectBridgeInterface, Interface: "cni0"}
	prefix := LocalDetect{Mode: DetectInterfacePrefix, Interface: "cali"}
	tests := []struct {
		name     string
		detect   LocalDetect
		noCIDR   bool // no cluster CIDR configured
		src      string
		iif      string
		local    bool
		class    SourceClass
		toPublic bool // its egress to 203.0.113.100 is masqueraded
	}{
		{"by CIDR: a pod of the node", LocalDetect{}, false, "10.244.1.10", "", false, FromLocalPod, true},
		{"by CIDR: the interface does not matter", LocalDetect{}, false, "10.244.1.10", "eth0", false, FromLocalPod, true},
		{"by CIDR: a pod of another node", LocalDetect{}, false, "10.244.2.10", "eth0", false, FromOutside, true},
		{"by CIDR: an external client", LocalDetect{}, false, "192.168.100.50", "eth0", false, FromOutside, false},
		{"by CIDR: the node", LocalDetect{}, false, "192.168.100.11", "", true, FromNode, false},
		{"bridge: arriving on it", bridge, true, "10.244.1.10", "cni0", false, FromLocalPod, true},
		{"bridge: any address arriving on it", bridge, true, "172.31.5.6", "cni0", false, FromLocalPod, true},
		{"bridge: a pod address arriving elsewhere", bridge, true, "10.244.1.10", "eth0", false, FromOutside, false},
		{"bridge: a longer name is another interface", bridge, true, "10.244.1.10", "cni01", false, FromOutside, false},
		{"bridge: no interface given", bridge, true, "10.244.1.10", "", false, FromOutside, false},
		{"bridge: the node", bridge, true, "10.244.1.1", "", true, FromNode, false},
		{"bridge with a cluster CIDR: egress follows the interface", bridge, false, "10.244.2.10", "eth0", false, FromOutside, false},
		{"prefix: a matching interface", prefix, true, "172.31.5.6", "cali1234abcd", false, FromLocalPod, true},
		{"prefix: the prefix alone", prefix, true, "172.31.5.6", "cali", false, FromLocalPod, true},
		{"prefix: another interface", prefix, true, "172.31.5.6", "eth0", false, FromOutside, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testCfg
			cfg.LocalDetect = tc.detect
			if tc.noCIDR {
				cfg.ClusterCIDRs = nil
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			st := Build(cfg, Objects{Nodes: []*v1.Node{node}})
			src := netip.MustParseAddr(tc.src)
			class := st.Classify(src, tc.iif, tc.local)
			if class != tc.class {
				t.Errorf("class %s, want %s", class, tc.class)
			}
			if got := st.EgressMasquerade(class, src, netip.MustParseAddr("203.0.113.100")); got != tc.toPublic {
				t.Errorf("egress to 203.0.113.100 masqueraded: %v, want %v", got, tc.toPublic)
			}
		})
	}
}

func TestLocalDetectValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func(c *Config)
		wantErr string
	}{
		{"by CIDR", func(c *Config) {}, ""},
		{"by CIDR needs a cluster CIDR", func(c *Config) { c.ClusterCIDRs = nil }, "cluster CIDR: at least one must be set"},
		{"bridge without a cluster CIDR", func(c *Config) {
			c.ClusterCIDRs, c.LocalDetect = nil, LocalDetect{Mode: DetectBridgeInterface, Interface: "cni0"}
		}, ""},
		{"prefix without a cluster CIDR", func(c *Config) {
			c.ClusterCIDRs, c.LocalDetect = nil, LocalDetect{Mode: DetectInterfacePrefix, Interface: "eni"}
		}, ""},
		{"untracking needs a cluster CIDR", func(c *Config) {
			c.ClusterCIDRs, c.UntrackPodTCP = nil, true
			c.LocalDetect = LocalDetect{Mode: DetectBridgeInterface, Interface: "cni0"}
		}, "untracking pod TCP needs a cluster CIDR"},
		{"bridge without a name", func(c *Config) { c.LocalDetect = LocalDetect{Mode: DetectBridgeInterface} }, `interface ""`},
		{"hostile name", func(c *Config) { c.LocalDetect = LocalDetect{Mode: DetectInterfacePrefix, Interface: `a" accept; #`} }, "must be 1 to 15"},
		{"name too long", func(c *Config) {
			c.LocalDetect = LocalDetect{Mode: DetectBridgeInterface, Interface: "abcdefghijklmnop"}
		}, "must be 1 to 15"},
		{"CIDR mode with a name", func(c *Config) { c.LocalDetect = LocalDetect{Interface: "cni0"} }, "takes no interface"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testCfg
			tc.cfg(&cfg)
			err := cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Validate: %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestDecide is the masquerade/destination matrix in the model: the same
// table the kernel tests send real packets for.
func TestDecide(t *testing.T) {
	local := Endpoint{Addr: netip.MustParseAddr("10.244.1.10"), Port: 80, Local: true, Ready: true}
	remote := Endpoint{Addr: netip.MustParseAddr("10.244.2.10"), Port: 80, Ready: true}
	mk := func(etp, itp bool, eps ...Endpoint) *ServicePort {
		sp := &ServicePort{ExternalPolicyLocal: etp, InternalPolicyLocal: itp, Endpoints: eps}
		sp.ClusterEndpoints, sp.LocalEndpoints = SelectEndpoints(eps)
		return sp
	}
	type row struct {
		name    string
		sp      *ServicePort
		kind    FrontendKind
		src     SourceClass
		verdict Verdict
		group   Group
		masq    bool
	}
	rows := []row{
		{"pod→ClusterIP", mk(false, false, local, remote), ClusterIP, FromLocalPod, Forward, ClusterGroup, false},
		{"node→ClusterIP", mk(false, false, local, remote), ClusterIP, FromNode, Forward, ClusterGroup, true},
		{"outside→ClusterIP", mk(false, false, local, remote), ClusterIP, FromOutside, Forward, ClusterGroup, true},
		{"pod→NodePort", mk(false, false, local, remote), NodePort, FromLocalPod, Forward, ClusterGroup, true},
		{"outside→LB", mk(false, false, local, remote), LoadBalancerIP, FromOutside, Forward, ClusterGroup, true},
		{"eTP Local: outside→NodePort", mk(true, false, local, remote), NodePort, FromOutside, Forward, LocalGroup, false},
		{"eTP Local: pod→NodePort short-circuits", mk(true, false, local, remote), NodePort, FromLocalPod, Forward, ClusterGroup, false},
		{"eTP Local: node→NodePort", mk(true, false, local, remote), NodePort, FromNode, Forward, ClusterGroup, true},
		{"eTP Local: no local endpoint drops", mk(true, false, remote), ExternalIP, FromOutside, Drop, LocalGroup, false},
		{"eTP Local: no local endpoint, pod still served", mk(true, false, remote), ExternalIP, FromLocalPod, Forward, ClusterGroup, false},
		{"eTP Local: ClusterIP unaffected", mk(true, false, remote), ClusterIP, FromLocalPod, Forward, ClusterGroup, false},
		{"iTP Local: pod→ClusterIP", mk(false, true, local, remote), ClusterIP, FromLocalPod, Forward, LocalGroup, false},
		{"iTP Local: no local endpoint drops", mk(false, true, remote), ClusterIP, FromLocalPod, Drop, LocalGroup, false},
		{"iTP Local: NodePort unaffected", mk(false, true, remote), NodePort, FromOutside, Forward, ClusterGroup, true},
		{"no endpoints rejects", mk(false, false), ClusterIP, FromLocalPod, Reject, ClusterGroup, false},
		{"no endpoints rejects under Local too", mk(true, true), NodePort, FromOutside, Reject, ClusterGroup, false},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			d := r.sp.Decide(r.kind, r.src, true, false)
			if d.Verdict != r.verdict || (d.Verdict != Reject && d.Group != r.group) || d.Masquerade != r.masq {
				t.Errorf("Decide = %+v, want %v %v masquerade=%v", d, r.verdict, r.group, r.masq)
			}
			if d.Why == "" {
				t.Error("no explanation")
			}
		})
	}
	sp := mk(false, false, local)
	if d := sp.Decide(ClusterIP, FromLocalPod, true, true); !d.Masquerade {
		t.Error("masqueradeAll does not masquerade pod→ClusterIP")
	}
	if d := sp.Decide(LoadBalancerIP, FromOutside, false, false); d.Verdict != Drop {
		t.Errorf("source outside loadBalancerSourceRanges: %+v", d)
	}
}

// TestBuilderSlicesOfAService follows a Service's endpoints as its
// EndpointSlices come, change owner and go, in any order.
func TestBuilderSlicesOfAService(t *testing.T) {
	s1 := slice("a", "a-1", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.1"})
	s2 := slice("a", "a-2", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.2"})
	s3 := slice("a", "a-3", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.3"})
	s2b := slice("b", "a-2", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.2"}) // a-2 now labelled for b
	type step struct {
		set    *discovery.EndpointSlice
		delete string
		want   []string // endpoints of default/a
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"added out of order", []step{{set: s3, want: []string{"10.244.1.3"}}, {set: s1, want: []string{"10.244.1.1", "10.244.1.3"}},
			{set: s2, want: []string{"10.244.1.1", "10.244.1.2", "10.244.1.3"}}}},
		{"one of three deleted", []step{{set: s1}, {set: s2}, {set: s3}, {delete: "a-2", want: []string{"10.244.1.1", "10.244.1.3"}},
			{delete: "a-1", want: []string{"10.244.1.3"}}, {delete: "a-3"}}},
		{"replaced in place", []step{{set: s1}, {set: s2}, {set: slice("a", "a-1", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.9"}),
			want: []string{"10.244.1.2", "10.244.1.9"}}}},
		{"moved to another Service", []step{{set: s1}, {set: s2, want: []string{"10.244.1.1", "10.244.1.2"}}, {set: s2b, want: []string{"10.244.1.1"}}}},
		{"deleting an unknown slice", []step{{set: s1}, {delete: "a-7", want: []string{"10.244.1.1"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder(testCfg)
			b.SetService(svc("a", func(s *v1.Service) { s.Spec.Ports[0].TargetPort = intstr.FromInt32(8080) }), "")
			for i, s := range tt.steps {
				if s.set != nil {
					b.SetEndpointSlice(s.set, "")
				} else {
					b.DeleteEndpointSlice("default", s.delete)
				}
				st, _ := b.Build()
				if s.want == nil && i < len(tt.steps)-1 {
					continue
				}
				var got []string
				for _, e := range st.Services[ServiceKey{"default", "a"}][0].Endpoints {
					got = append(got, e.Addr.String())
				}
				if !slices.Equal(got, s.want) {
					t.Errorf("step %d: endpoints %v, want %v", i, got, s.want)
				}
			}
		})
	}
}

// TestBuilderDuplicateEndpointFirstSliceWins: an endpoint listed in two
// slices of a Service (as during an EndpointSlice controller's move) is
// taken from the slice first by name, whatever order the slices came in.
func TestBuilderDuplicateEndpointFirstSliceWins(t *testing.T) {
	ready := slice("a", "a-1", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.5", ready: ptr(true)})
	notReady := slice("a", "a-2", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.5", ready: ptr(false)})
	for _, order := range [][]*discovery.EndpointSlice{{ready, notReady}, {notReady, ready}} {
		b := NewBuilder(testCfg)
		b.SetService(svc("a", func(s *v1.Service) { s.Spec.Ports[0].TargetPort = intstr.FromInt32(8080) }), "")
		for _, s := range order {
			b.SetEndpointSlice(s, "")
		}
		st, _ := b.Build()
		eps := st.Services[ServiceKey{"default", "a"}][0].Endpoints
		if len(eps) != 1 || !eps[0].Ready {
			t.Errorf("slices added %s then %s: endpoints %+v, want one, ready (from a-1)", order[0].Name, order[1].Name, eps)
		}
	}
}

// TestEndpointConditionsAsKubeProxyReadsThem: a pod's address listed by
// the slice of a terminating pod and by a live pod's is the live pod's,
// whatever the slices' names; an endpoint ready while terminating (its
// Service publishes not-ready addresses) keeps its traffic; an unset
// serving condition means serving.
func TestEndpointConditionsAsKubeProxyReadsThem(t *testing.T) {
	tests := []struct {
		name   string
		slices []*discovery.EndpointSlice
		want   []string // the cluster group of default/a
		local  []string // this node's ready endpoints (node-a)
	}{
		{"the live copy of a reused address wins", []*discovery.EndpointSlice{
			slice("a", "a-1", discovery.AddressTypeIPv4, 8080,
				ep{ip: "10.244.1.5", node: "node-b", ready: ptr(false), serving: ptr(true), terminate: ptr(true)},
				ep{ip: "10.244.1.6", node: "node-b"}),
			slice("a", "a-2", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.5", node: "node-a", ready: ptr(true)}),
		}, []string{"10.244.1.5:8080", "10.244.1.6:8080"}, []string{"10.244.1.5:8080"}},
		{"ready while terminating: still used", []*discovery.EndpointSlice{
			slice("a", "a-1", discovery.AddressTypeIPv4, 8080,
				ep{ip: "10.244.1.5", node: "node-a", ready: ptr(true), serving: ptr(true), terminate: ptr(true)},
				ep{ip: "10.244.1.6", node: "node-a", ready: ptr(true)}),
		}, []string{"10.244.1.5:8080", "10.244.1.6:8080"}, []string{"10.244.1.5:8080", "10.244.1.6:8080"}},
		{"serving unset means serving: the terminating fallback", []*discovery.EndpointSlice{
			slice("a", "a-1", discovery.AddressTypeIPv4, 8080, ep{ip: "10.244.1.5", node: "node-a", ready: ptr(false), terminate: ptr(true)}),
		}, []string{"10.244.1.5:8080"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBuilder(testCfg)
			b.SetService(svc("a", func(s *v1.Service) { s.Spec.Ports[0].TargetPort = intstr.FromInt32(8080) }), "")
			for _, s := range tc.slices {
				b.SetEndpointSlice(s, "")
			}
			st, _ := b.Build()
			sp := &st.Services[ServiceKey{"default", "a"}][0]
			if got := addrs(sp.GroupEndpoints(ClusterGroup)); !slices.Equal(got, tc.want) {
				t.Errorf("cluster endpoints %v, want %v", got, tc.want)
			}
			var local []string
			for _, e := range sp.Endpoints {
				if e.Local && e.Ready {
					local = append(local, e.String())
				}
			}
			if !slices.Equal(local, tc.local) {
				t.Errorf("local ready endpoints %v, want %v", local, tc.local)
			}
		})
	}
}

func TestDeltaThen(t *testing.T) {
	key := func(n string) ServiceKey { return ServiceKey{Namespace: "default", Name: n} }
	ports := func(p uint16) []ServicePort { return []ServicePort{{Port: p}} }
	for _, tc := range []struct {
		name        string
		first, next Delta
		want        Delta
	}{
		{name: "disjoint changes are both kept",
			first: Delta{Changed: []ServiceKey{key("b")}, Old: map[ServiceKey][]ServicePort{key("b"): ports(1)}},
			next:  Delta{Changed: []ServiceKey{key("a")}, Old: map[ServiceKey][]ServicePort{key("a"): ports(2)}},
			want: Delta{Changed: []ServiceKey{key("a"), key("b")},
				Old: map[ServiceKey][]ServicePort{key("a"): ports(2), key("b"): ports(1)}}},
		{name: "changed twice: the ports from before the first",
			first: Delta{Changed: []ServiceKey{key("a")}, Old: map[ServiceKey][]ServicePort{key("a"): ports(1)}},
			next:  Delta{Changed: []ServiceKey{key("a")}, Old: map[ServiceKey][]ServicePort{key("a"): ports(2)}},
			want:  Delta{Changed: []ServiceKey{key("a")}, Old: map[ServiceKey][]ServicePort{key("a"): ports(1)}}},
		{name: "created, then changed: still new",
			first: Delta{Changed: []ServiceKey{key("a")}, Old: map[ServiceKey][]ServicePort{}},
			next:  Delta{Changed: []ServiceKey{key("a")}, Old: map[ServiceKey][]ServicePort{key("a"): ports(2)}},
			want:  Delta{Changed: []ServiceKey{key("a")}, Old: map[ServiceKey][]ServicePort{}}},
		{name: "full if either is",
			first: Delta{Full: true, Changed: []ServiceKey{key("a")}, Old: map[ServiceKey][]ServicePort{}},
			next:  Delta{},
			want:  Delta{Full: true, Changed: []ServiceKey{key("a")}, Old: map[ServiceKey][]ServicePort{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.first.Then(tc.next); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Then = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestObjectErrorQuotesHostileNames(t *testing.T) {
	tests := []struct {
		e    ObjectError
		want string
	}{
		{ObjectError{Kind: "Service", Namespace: "default", Name: "web", Origin: "web.yaml (document 2)", Field: "spec.ports[0].port", Msg: "bad"},
			"Service default/web (web.yaml (document 2)): spec.ports[0].port: bad"},
		{ObjectError{Kind: "Service", Namespace: "default", Name: "line1\nerror: forged", Msg: "bad"},
			`Service "default/line1\nerror: forged": bad`},
		{ObjectError{Kind: "Node", Name: "n\x1b[2J", Origin: "a\rb.yaml", Msg: "bad"},
			`Node "n\x1b[2J" ("a\rb.yaml"): bad`},
	}
	for _, tc := range tests {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

func TestServiceCIDRs(t *testing.T) {
	sc := func(name string, cidrs ...string) *networkingv1.ServiceCIDR {
		return &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: cidrs}}
	}
	prefixes := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	errorsOf := func(st *State) []string {
		var out []string
		for _, e := range st.Errors {
			out = append(out, e.Error())
		}
		return out
	}
	cfg := testCfg
	cfg.ServiceCIDRs = prefixes("10.96.0.0/16")
	b := NewBuilder(cfg)
	st, _ := b.Build()
	if !reflect.DeepEqual(st.ServiceCIDRs, prefixes("10.96.0.0/16")) {
		t.Errorf("from the configuration: %v", st.ServiceCIDRs)
	}
	// The default ServiceCIDR, dual-stack, holding the configured range;
	// another valid one; one whose first version is bad (left out).
	b.SetServiceCIDR(sc("kubernetes", "10.96.0.0/12", "fd00:96::/112"), "")
	b.SetServiceCIDR(sc("extra", "10.200.0.1/24"), "extra.yaml")
	b.SetServiceCIDR(sc("unsafe", "10.244.0.0/20", "::ffff:10.96.0.0/108", "nope"), "")
	st, _ = b.Build()
	if want := prefixes("10.96.0.0/12", "10.200.0.0/24", "fd00:96::/112"); !reflect.DeepEqual(st.ServiceCIDRs, want) {
		t.Errorf("with objects: %v, want %v", st.ServiceCIDRs, want)
	}
	want := []string{
		"ServiceCIDR unsafe: spec.cidrs[0]: 10.244.0.0/20: overlaps the cluster CIDR 10.244.0.0/16: pod traffic would be dropped",
		"ServiceCIDR unsafe: spec.cidrs[1]: ::ffff:10.96.0.0/108: an IPv4-mapped IPv6 prefix: write it as an IPv4 one",
		`ServiceCIDR unsafe: spec.cidrs[2]: "nope" is not a CIDR`,
	}
	if got := errorsOf(st); !slices.Equal(got, want) {
		t.Errorf("errors\n%q\nwant\n%q", got, want)
	}
	if p, ok := st.ServiceCIDR(netip.MustParseAddr("10.100.0.1")); !ok || p != netip.MustParsePrefix("10.96.0.0/12") {
		t.Errorf("ServiceCIDR(10.100.0.1) = %v, %v", p, ok)
	}
	if _, ok := st.ServiceCIDR(netip.MustParseAddr("192.168.0.1")); ok {
		t.Error("ServiceCIDR(192.168.0.1) found a range")
	}
	// A bad version of "extra" keeps its last valid one.
	b.SetServiceCIDR(sc("extra", "10.200.0.0/16", "nope"), "extra.yaml")
	b.DeleteServiceCIDR("unsafe")
	st, _ = b.Build()
	if want := prefixes("10.96.0.0/12", "10.200.0.0/24", "fd00:96::/112"); !reflect.DeepEqual(st.ServiceCIDRs, want) {
		t.Errorf("after a bad version: %v, want %v", st.ServiceCIDRs, want)
	}
	want = []string{`ServiceCIDR extra (extra.yaml): keeping the last valid version`, `ServiceCIDR extra (extra.yaml): spec.cidrs[1]: "nope" is not a CIDR`}
	if got := errorsOf(st); !slices.Equal(got, want) {
		t.Errorf("errors\n%q\nwant\n%q", got, want)
	}
	b.DeleteServiceCIDR("kubernetes")
	b.DeleteServiceCIDR("extra")
	st, _ = b.Build()
	if !reflect.DeepEqual(st.ServiceCIDRs, prefixes("10.96.0.0/16")) || len(st.Errors) != 0 {
		t.Errorf("after the objects went: %v, errors %v", st.ServiceCIDRs, st.Errors)
	}
	// Ranges that hold this node's pods or addresses are left out, from
	// the configuration and from objects alike (the cluster CIDR check
	// cannot see them without a cluster CIDR).
	cfg = testCfg
	cfg.ClusterCIDRs, cfg.LocalDetect = nil, LocalDetect{Mode: DetectBridgeInterface, Interface: "cni0"}
	cfg.ServiceCIDRs = prefixes("10.96.0.0/16", "192.168.100.0/24")
	b = NewBuilder(cfg)
	b.SetNode(k8sobj.Node("node-a", []string{"192.168.100.11"}, []string{"10.244.1.0/24"}), "")
	b.SetServiceCIDR(sc("pods", "10.244.0.0/16"), "")
	st, _ = b.Build()
	if !reflect.DeepEqual(st.ServiceCIDRs, prefixes("10.96.0.0/16")) {
		t.Errorf("node ranges: %v, want 10.96.0.0/16 alone", st.ServiceCIDRs)
	}
	want = []string{
		"ServiceCIDR pods: spec.cidrs: 10.244.0.0/16 overlaps this node's pod CIDR 10.244.1.0/24: pod traffic would be dropped; left out",
		"serviceCIDRs (the configuration): 192.168.100.0/24 holds this node's address 192.168.100.11: traffic to the node network would be dropped; left out",
	}
	if got := errorsOf(st); !slices.Equal(got, want) {
		t.Errorf("errors\n%q\nwant\n%q", got, want)
	}
}

func TestWarnings(t *testing.T) {
	node := k8sobj.Node("node-a", []string{"192.168.100.11"}, []string{"10.244.1.0/24"})
	bridge := LocalDetect{Mode: DetectBridgeInterface, Interface: "cni0"}
	tests := []struct {
		name   string
		detect LocalDetect
		noMasq []netip.Prefix // nil: the defaults
		want   int
	}{
		{"by CIDR: the cluster CIDR is never masqueraded", LocalDetect{}, []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, 0},
		{"by interface, the defaults cover the pods", bridge, nil, 0},
		{"by interface, ranges that miss the pods", bridge, []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, 1},
		{"by interface, a range holding the pod CIDR", bridge, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, 0},
		{"by interface, a range inside the pod CIDR only", bridge, []netip.Prefix{netip.MustParsePrefix("10.244.1.0/25")}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testCfg
			cfg.LocalDetect = tc.detect
			if tc.detect.ByInterface() {
				cfg.ClusterCIDRs = nil
			}
			cfg.Egress.NonMasqueradeCIDRs = tc.noMasq
			st := Build(cfg, Objects{Nodes: []*v1.Node{node}})
			if got := st.Warnings(); len(got) != tc.want {
				t.Errorf("warnings %q, want %d", got, tc.want)
			}
		})
	}
}
