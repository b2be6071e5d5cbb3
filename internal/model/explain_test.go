package model

import (
	"net/netip"
	"testing"
)

func TestExclusionReason(t *testing.T) {
	mk := func(ip, node string, ready, serving, terminating bool) Endpoint {
		return Endpoint{Addr: netip.MustParseAddr(ip), Port: 8080, NodeName: node, Local: node == "node-a",
			Ready: ready, Serving: serving, Terminating: terminating}
	}
	localReady := mk("10.244.1.10", "node-a", true, true, false)
	remoteReady := mk("10.244.2.10", "node-b", true, true, false)
	notReady := mk("10.244.1.11", "node-a", false, false, false)
	termServing := mk("10.244.2.11", "node-b", false, true, true)
	termGone := mk("10.244.2.12", "node-b", false, false, true)
	noNode := mk("10.244.3.10", "", true, true, false)

	all := []Endpoint{localReady, remoteReady, notReady, termServing, termGone, noNode}
	sp := ServicePort{Endpoints: all}
	sp.ClusterEndpoints, sp.LocalEndpoints = SelectEndpoints(all)

	onlyTerm := []Endpoint{termServing, termGone}
	spTerm := ServicePort{Endpoints: onlyTerm}
	spTerm.ClusterEndpoints, spTerm.LocalEndpoints = SelectEndpoints(onlyTerm)

	for _, tc := range []struct {
		name string
		sp   *ServicePort
		g    Group
		ep   Endpoint
		want string
	}{
		{"ready endpoint is in the cluster group", &sp, ClusterGroup, remoteReady, ""},
		{"local ready endpoint is in the local group", &sp, LocalGroup, localReady, ""},
		{"remote endpoint under Local", &sp, LocalGroup, remoteReady, "on node node-b, not this one: a Local traffic policy uses this node's endpoints only"},
		{"endpoint without a node under Local", &sp, LocalGroup, noNode, "on no known node, not this one: a Local traffic policy uses this node's endpoints only"},
		{"not ready", &sp, ClusterGroup, notReady, "not ready"},
		{"serving terminating while others are ready", &sp, ClusterGroup, termServing, "terminating (still serving): used only when no endpoint is ready"},
		{"terminating, not serving", &sp, ClusterGroup, termGone, "terminating and no longer serving"},
		{"serving terminating is used when nothing is ready", &spTerm, ClusterGroup, termServing, ""},
		{"not-serving terminating is never used", &spTerm, ClusterGroup, termGone, "terminating and no longer serving"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.sp.ExclusionReason(tc.g, tc.ep); got != tc.want {
				t.Errorf("ExclusionReason = %q, want %q", got, tc.want)
			}
		})
	}
}
