package model

import (
	"slices"
	"testing"

	"github.com/kubenat/kubenat/internal/k8sobj"
)

// TestTopologyHints builds a Service whose endpoints carry topology hints
// on node-a (zone-a unless said otherwise) and checks which endpoints each
// group gets, as kube-proxy chooses them (KEP-2433, KEP-3015).
func TestTopologyHints(t *testing.T) {
	type hinted struct {
		ip, node     string
		zones, nodes []string
		notReady     bool
		terminating  bool
	}
	a1 := hinted{ip: "10.244.1.10", node: "node-a", zones: []string{"zone-a"}}
	b1 := hinted{ip: "10.244.2.10", node: "node-b", zones: []string{"zone-b"}}
	c1 := hinted{ip: "10.244.3.10", node: "node-c", zones: []string{"zone-a", "zone-c"}}
	plain := hinted{ip: "10.244.2.11", node: "node-b"}
	onA := hinted{ip: "10.244.1.10", node: "node-a", zones: []string{"zone-a"}, nodes: []string{"node-a"}}
	onB := hinted{ip: "10.244.2.10", node: "node-b", zones: []string{"zone-a"}, nodes: []string{"node-b"}}
	tests := []struct {
		name           string
		zone           string // node-a's zone label
		eps            []hinted
		itpLocal       bool
		cluster, local []string
		why            map[string]string // ExclusionReason from the cluster group, by address
	}{
		{"zone hints: only the endpoints for this zone", "zone-a", []hinted{a1, b1, c1}, false,
			[]string{"10.244.1.10:8080", "10.244.3.10:8080"}, []string{"10.244.1.10:8080"},
			map[string]string{"10.244.2.10": "topology hints (trafficDistribution PreferClose/PreferSameZone, topology-mode Auto): meant for other zones than this node's"}},
		{"an endpoint without hints: hints are ignored", "zone-a", []hinted{a1, b1, plain}, false,
			[]string{"10.244.1.10:8080", "10.244.2.10:8080", "10.244.2.11:8080"}, []string{"10.244.1.10:8080"}, nil},
		{"no endpoint for this zone: hints are ignored", "zone-x", []hinted{a1, b1}, false,
			[]string{"10.244.1.10:8080", "10.244.2.10:8080"}, []string{"10.244.1.10:8080"}, nil},
		{"the node has no zone label: hints are ignored", "", []hinted{a1, b1}, false,
			[]string{"10.244.1.10:8080", "10.244.2.10:8080"}, []string{"10.244.1.10:8080"}, nil},
		{"hints of endpoints not ready do not count", "zone-a", []hinted{a1, b1, {ip: "10.244.2.12", node: "node-b", notReady: true}}, false,
			[]string{"10.244.1.10:8080"}, []string{"10.244.1.10:8080"}, nil},
		{"node hints: this node's endpoints", "zone-a", []hinted{onA, onB}, false,
			[]string{"10.244.1.10:8080"}, []string{"10.244.1.10:8080"},
			map[string]string{"10.244.2.10": "topology hints (trafficDistribution PreferSameNode): meant for other nodes, and this node has endpoints of its own"}},
		{"node hints, none for this node: the zone hints decide", "zone-a",
			[]hinted{{ip: "10.244.2.10", node: "node-b", zones: []string{"zone-a"}, nodes: []string{"node-b"}}, {ip: "10.244.3.10", node: "node-c", zones: []string{"zone-c"}, nodes: []string{"node-c"}}}, false,
			[]string{"10.244.2.10:8080"}, nil, nil},
		{"only terminating endpoints: the fallback ignores hints", "zone-a",
			[]hinted{{ip: "10.244.2.10", node: "node-b", zones: []string{"zone-b"}, terminating: true}}, false,
			[]string{"10.244.2.10:8080"}, nil, nil},
		{"internalTrafficPolicy Local: this node's endpoints, hints or not", "zone-a", []hinted{{ip: "10.244.1.10", node: "node-a", zones: []string{"zone-b"}}, b1}, true,
			[]string{"10.244.1.10:8080"}, []string{"10.244.1.10:8080"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBuilder(testCfg)
			node := k8sobj.Node("node-a", nil, nil)
			if tc.zone != "" {
				node = k8sobj.InZone(node, tc.zone)
			}
			b.SetNode(node, "test")
			web := k8sobj.Service{Name: "web", ClusterIPs: []string{"10.96.0.10"}, ITPLocal: tc.itpLocal,
				Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080}}}
			for _, h := range tc.eps {
				web.Endpoints = append(web.Endpoints, k8sobj.Endpoint{IP: h.ip, Node: h.node, NotReady: h.notReady,
					Terminating: h.terminating, ForZones: h.zones, ForNodes: h.nodes})
			}
			svc, eps := web.Objects()
			b.SetService(svc, "test")
			for _, sl := range eps {
				b.SetEndpointSlice(sl, "test")
			}
			st, _ := b.Build()
			if len(st.Errors) > 0 {
				t.Fatal(st.Errors)
			}
			sp := &st.Services[ServiceKey{Namespace: "default", Name: "web"}][0]
			if got := addrs(sp.InternalEndpoints()); !slices.Equal(got, tc.cluster) {
				t.Errorf("cluster traffic goes to %v, want %v", got, tc.cluster)
			}
			if got := addrs(sp.LocalEndpoints); !slices.Equal(got, tc.local) {
				t.Errorf("local endpoints %v, want %v", got, tc.local)
			}
			for _, ep := range sp.Endpoints {
				if want, ok := tc.why[ep.Addr.String()]; ok {
					if got := sp.ExclusionReason(ClusterGroup, ep); got != want {
						t.Errorf("%s excluded because %q, want %q", ep, got, want)
					}
				}
			}
		})
	}
}
