package conntrack

import (
	"net/netip"
	"reflect"
	"testing"

	ct "github.com/ti-mo/conntrack"

	"github.com/kubenat/kubenat/internal/model"
)

var (
	key  = model.ServiceKey{Namespace: "default", Name: "dns"}
	vip  = netip.MustParseAddr("10.96.0.53")
	epA  = model.Endpoint{Addr: netip.MustParseAddr("10.244.1.10"), Port: 53, Ready: true, Serving: true}
	epB  = model.Endpoint{Addr: netip.MustParseAddr("10.244.2.10"), Port: 53, Ready: true, Serving: true}
	epBt = model.Endpoint{Addr: netip.MustParseAddr("10.244.2.10"), Port: 53, Serving: true, Terminating: true}
)

func port(proto model.Protocol, eps ...model.Endpoint) model.ServicePort {
	sp := model.ServicePort{
		Name:      model.ServicePortName{ServiceKey: key, Port: "dns", Protocol: proto, Family: model.IPv4},
		ClusterIP: vip, Port: 53,
		Frontends: []model.Frontend{{Kind: model.ClusterIP, Addr: vip, Port: 53}},
		Endpoints: eps,
	}
	sp.ClusterEndpoints, sp.LocalEndpoints = model.SelectEndpoints(eps)
	return sp
}

func TestPlan(t *testing.T) {
	fe := []netip.AddrPort{netip.AddrPortFrom(vip, 53)}
	tests := []struct {
		name     string
		old, now []model.ServicePort // nil: absent
		want     []Rule
	}{
		{"endpoint removed", []model.ServicePort{port(model.UDP, epA, epB)}, []model.ServicePort{port(model.UDP, epA)},
			[]Rule{{Frontends: fe, Endpoints: []netip.AddrPort{epB.AddrPort()}}}},
		{"endpoint terminating but serving keeps its flows", []model.ServicePort{port(model.UDP, epA, epB)}, []model.ServicePort{port(model.UDP, epA, epBt)}, nil},
		{"first endpoint", []model.ServicePort{port(model.UDP)}, []model.ServicePort{port(model.UDP, epA)},
			[]Rule{{Frontends: fe}}},
		{"Service deleted", []model.ServicePort{port(model.UDP, epA)}, nil, []Rule{{Frontends: fe}}},
		{"Service created", nil, []model.ServicePort{port(model.UDP, epA)}, []Rule{{Frontends: fe}}},
		{"Service created without endpoints", nil, []model.ServicePort{port(model.UDP)}, nil},
		{"TCP is left alone", []model.ServicePort{port(model.TCP, epA, epB)}, []model.ServicePort{port(model.TCP, epA)}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := &model.State{Services: map[model.ServiceKey][]model.ServicePort{}}
			if tc.now != nil {
				st.Services[key] = tc.now
			}
			d := model.Delta{Changed: []model.ServiceKey{key}, Old: map[model.ServiceKey][]model.ServicePort{}}
			if tc.old != nil {
				d.Old[key] = tc.old
			}
			got := Plan(st, d)
			for i := range got {
				got[i].Why = ""
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Plan = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestMatches(t *testing.T) {
	flow := func(proto uint8, dst netip.AddrPort, replySrc netip.AddrPort) ct.Flow {
		var f ct.Flow
		f.TupleOrig.Proto.Protocol = proto
		f.TupleOrig.IP.DestinationAddress = dst.Addr()
		f.TupleOrig.Proto.DestinationPort = dst.Port()
		f.TupleReply.IP.SourceAddress = replySrc.Addr()
		f.TupleReply.Proto.SourcePort = replySrc.Port()
		return f
	}
	v := netip.AddrPortFrom(vip, 53)
	rules := []Rule{{Frontends: []netip.AddrPort{v}, Endpoints: []netip.AddrPort{epB.AddrPort()}}}
	if !Matches(rules, flow(17, v, epB.AddrPort())) {
		t.Error("a UDP entry DNATed to the removed endpoint is not selected")
	}
	if Matches(rules, flow(17, v, epA.AddrPort())) {
		t.Error("an entry DNATed to a remaining endpoint is selected")
	}
	if Matches(rules, flow(6, v, epB.AddrPort())) {
		t.Error("a TCP entry is selected")
	}
	if !Matches([]Rule{{Frontends: []netip.AddrPort{v}}}, flow(17, v, v)) {
		t.Error("an un-NATed entry to the frontend is not selected by an any-endpoint rule")
	}
}
