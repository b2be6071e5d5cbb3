package nftables

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
)

// TestHeldEndpoints: with untracked pod TCP, an endpoint leaving
// tracked-endpoints stays, held, until ReleaseHolds finds it unused
// (Options.InUse); a full sync holds what InUse names; a Service wanting
// a held endpoint again keeps it after the release.
func TestHeldEndpoints(t *testing.T) {
	ctx := context.Background()
	ns := netnstest.NewNamespace(t)
	inUse := map[netip.AddrPort]bool{}
	failV6 := false // conntrack cannot be read for IPv6
	o := Options{InUse: func(_ context.Context, cidr netip.Prefix) (map[netip.AddrPort]bool, error) {
		if !slices.Contains(socketLBConfig().ClusterCIDRs, cidr) {
			t.Errorf("InUse asked for %s, want a cluster CIDR", cidr)
		}
		if failV6 && cidr.Addr().Is6() {
			return nil, errors.New("no IPv6 conntrack today")
		}
		out := map[netip.AddrPort]bool{}
		for ep := range inUse {
			if cidr.Contains(ep.Addr()) {
				out[ep] = true
			}
		}
		return out, nil
	}}
	b := model.NewBuilder(socketLBConfig())
	// Dual-stack: each family's table holds its own endpoints.
	sticky, stickySlices := k8sobj.Service{Name: "sticky", ClusterIPs: []string{"10.96.0.50", "fd00:96::50"}, AffinitySeconds: 60,
		Ports:     []k8sobj.Port{{Name: "tcp", Port: 80, TargetPort: 8080}},
		Endpoints: []k8sobj.Endpoint{{IP: "10.244.1.10", Node: "node-a"}, {IP: "fd00:244::10", Node: "node-a"}}}.Objects()
	ep, ep6 := netip.MustParseAddrPort("10.244.1.10:8080"), netip.MustParseAddrPort("[fd00:244::10]:8080")
	set := func() {
		b.SetService(sticky, "test")
		for _, sl := range stickySlices {
			b.SetEndpointSlice(sl, "test")
		}
	}
	del := func() {
		b.DeleteService(model.ServiceKey{Namespace: sticky.Namespace, Name: sticky.Name})
		for _, sl := range stickySlices {
			b.DeleteEndpointSlice(sl.Namespace, sl.Name)
		}
	}
	members := func(table string) string {
		out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "set", table, DefaultTable, setTrackedEndpoints).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		_, after, _ := strings.Cut(string(out), "elements = { ")
		got, _, _ := strings.Cut(after, " }")
		return got
	}
	backend := New(runnerIn(ns), o)
	sync := func(step string, full bool) *model.State {
		st, d := b.Build()
		res, err := backend.Sync(ctx, st, d)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if res.Full != full {
			t.Errorf("%s: full sync %v, want %v", step, res.Full, full)
		}
		return st
	}
	release := func(step string, wantHeld int) {
		n, err := backend.ReleaseHolds(ctx)
		if err != nil || n != wantHeld || backend.Holds() != wantHeld {
			t.Errorf("%s: ReleaseHolds = %d, %v (Holds %d); want %d held", step, n, err, backend.Holds(), wantHeld)
		}
	}
	check := func(step, want, want6 string) {
		t.Helper()
		if got := members("ip"); got != want {
			t.Errorf("%s: tracked-endpoints holds %q, want %q", step, got, want)
		}
		if got := members("ip6"); got != want6 {
			t.Errorf("%s: ip6 tracked-endpoints holds %q, want %q", step, got, want6)
		}
	}
	const both4, both6 = "10.244.1.10 . 8080", "fd00:244::10 . 8080"

	set()
	sync("first", true)
	check("first", both4, both6)

	inUse[ep], inUse[ep6] = true, true
	del()
	sync("deleted while in use", false)
	check("deleted while in use", both4, both6)
	release("still in use", 2)
	check("still in use", both4, both6)

	set()
	sync("wanted again", false)
	delete(inUse, ep)
	delete(inUse, ep6)
	release("unused, but wanted", 0)
	check("unused, but wanted", both4, both6)

	// A sync never reads conntrack: what leaves is held until released.
	del()
	st := sync("deleted, unused", false)
	check("deleted, unused", both4, both6)
	failV6 = true
	if n, err := backend.ReleaseHolds(ctx); err == nil || n != 1 {
		t.Errorf("IPv6 unreadable: ReleaseHolds = %d, %v; want the IPv6 hold kept, and the error", n, err)
	}
	check("IPv6 unreadable: the IPv4 hold is released anyway", "", both6)
	failV6 = false
	inUse[ep6] = true
	release("released (IPv6 still in use)", 1)
	check("released (IPv6 still in use)", "", both6)
	clear(inUse)
	release("released", 0)
	check("released", "", "")
	if got, want := canonical(t, ns), rendered(t, st); got != want {
		t.Errorf("without holds the kernel differs from the rendering:\n%s\nrendering:\n%s", got, want)
	}

	// A new backend (an agent restarted) holds what conntrack names.
	inUse[netip.MustParseAddrPort("10.244.2.20:9090")] = true
	inUse[netip.MustParseAddrPort("[fd00:244:0:2::20]:9090")] = true
	backend = New(runnerIn(ns), o)
	sync("restarted", true)
	check("restarted", "10.244.2.20 . 9090", "fd00:244:0:2::20 . 9090")
	if got, want := backend.HeldEndpoints(model.IPv4), []netip.AddrPort{netip.MustParseAddrPort("10.244.2.20:9090")}; !slices.Equal(got, want) {
		t.Errorf("HeldEndpoints(IPv4) = %v, want %v", got, want)
	}
	if got, want := backend.HeldEndpoints(model.IPv6), []netip.AddrPort{netip.MustParseAddrPort("[fd00:244:0:2::20]:9090")}; !slices.Equal(got, want) {
		t.Errorf("HeldEndpoints(IPv6) = %v, want %v", got, want)
	}
	release("restarted, in use", 2)
	clear(inUse)
	release("restarted, closed", 0)
	check("restarted, closed", "", "")
	if got := backend.HeldEndpoints(model.IPv4); len(got) != 0 {
		t.Errorf("HeldEndpoints(IPv4) = %v after the release, want none", got)
	}
}
