package iptables

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
)

// variants are the iptables commands the kernel tests run with.
var variants = []string{"nft", "legacy"}

// kernelRules returns what family f's tables hold of kubenat in ns,
// canonical: each of kubenat's chains with its rules in order, and the
// jumps to them, sorted by chain; packet counters left out.
func kernelRules(t *testing.T, run Exec, f model.Family) string {
	t.Helper()
	out, err := run.Save(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	rules := map[string][]string{} // "table chain" → rules
	table := ""
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":"+Prefix):
			name, _, _ := strings.Cut(line[1:], " ")
			rules[table+" "+name] = append(rules[table+" "+name], "")
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			if strings.HasPrefix(chain, Prefix) || strings.Contains(rule, "-j "+Prefix) {
				rules[table+" "+chain] = append(rules[table+" "+chain], rule)
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(rules)) {
		blocks = append(blocks, k+"\n  "+strings.Join(rules[k], "\n  "))
	}
	return strings.Join(blocks, "\n")
}

func dump(t *testing.T, run Exec) string {
	return kernelRules(t, run, model.IPv4) + "\n" + kernelRules(t, run, model.IPv6)
}

// randomChanges adds, changes or removes a few random Services in b, and
// sometimes a ServiceCIDR object.
func randomChanges(r *rand.Rand, b *model.Builder, services map[int]bool) {
	for range 1 + r.IntN(6) {
		i := r.IntN(30)
		if services[i] && r.IntN(4) == 0 {
			delete(services, i)
			b.DeleteService(model.ServiceKey{Namespace: "default", Name: fmt.Sprintf("svc-%d", i)})
			continue
		}
		services[i] = true
		svc, sl := k8sobj.Random(r, i).Objects()
		b.SetService(svc, "")
		for _, x := range sl {
			b.SetEndpointSlice(x, "")
		}
		for j := len(sl); j < 4; j++ {
			b.DeleteEndpointSlice("default", fmt.Sprintf("svc-%d-%d", i, j))
		}
	}
	switch ranges := [][]string{{"10.200.0.0/24"}, {"10.200.0.0/16", "fd00:97::/112"}, nil}[r.IntN(3)]; ranges {
	case nil:
		b.DeleteServiceCIDR("extra")
	default:
		b.SetServiceCIDR(&networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "extra"},
			Spec: networkingv1.ServiceCIDRSpec{CIDRs: ranges}}, "")
	}
}

// TestIncrementalMatchesFullSync programs random sequences of changes
// incrementally in one namespace and from scratch in another, and checks
// that the kernel holds the same chains in both after every step, with
// both iptables variants.
func TestIncrementalMatchesFullSync(t *testing.T) {
	for _, v := range variants {
		t.Run(v, func(t *testing.T) {
			ctx := context.Background()
			inc, ref := Exec{Variant: v, NetNS: netnstest.NewNamespace(t)}, Exec{Variant: v, NetNS: netnstest.NewNamespace(t)}
			r := rand.New(rand.NewPCG(1, 2))
			b := model.NewBuilder(testConfig())
			backend := New(inc, Options{})
			services := map[int]bool{}
			for step := range 25 {
				randomChanges(r, b, services)
				st, d := b.Build()
				res, err := backend.Sync(ctx, st, d)
				if err != nil {
					t.Fatalf("step %d: incremental sync: %v", step, err)
				}
				if step > 0 && res.Full {
					t.Errorf("step %d: a partial change was applied as a full sync", step)
				}
				if _, err := New(ref, Options{}).Sync(ctx, st, model.Delta{Full: true}); err != nil {
					t.Fatalf("step %d: full sync: %v", step, err)
				}
				if got, want := dump(t, inc), dump(t, ref); got != want {
					t.Fatalf("step %d: the incremental chains differ from a full sync's\nincremental:\n%s\nfull:\n%s", step, got, want)
				}
			}
			// A full sync over chains left by another State removes those
			// no longer wanted.
			randomChanges(r, b, services)
			st, _ := b.Build()
			if _, err := New(inc, Options{}).Sync(ctx, st, model.Delta{Full: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := New(ref, Options{}).Sync(ctx, st, model.Delta{Full: true}); err != nil {
				t.Fatal(err)
			}
			if got, want := dump(t, inc), dump(t, ref); got != want {
				t.Fatalf("a full sync over other chains differs from one from scratch\nover:\n%s\nscratch:\n%s", got, want)
			}
		})
	}
}

// TestUnchangedSyncWritesNothing: a sync without changes writes no chain;
// one endpoint leaving a Service rewrites that Service's SVC chain and
// deletes the endpoint's SEP chain, and nothing else.
func TestUnchangedSyncWritesNothing(t *testing.T) {
	ctx := context.Background()
	run := Exec{NetNS: netnstest.NewNamespace(t)}
	b := model.NewBuilder(testConfig())
	set := func(s k8sobj.Service) {
		svc, sl := s.Objects()
		b.SetService(svc, "")
		for _, x := range sl {
			b.SetEndpointSlice(x, "")
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 20 {
		set(k8sobj.Random(r, i))
	}
	fixed := k8sobj.Service{Name: "fixed", ClusterIPs: []string{"10.96.9.1"},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080}},
		Endpoints: []k8sobj.Endpoint{{IP: "10.244.2.91", Node: "node-b"}, {IP: "10.244.2.92", Node: "node-b"}}}
	set(fixed)
	backend := New(run, Options{})
	st, d := b.Build()
	if _, err := backend.Sync(ctx, st, d); err != nil {
		t.Fatal(err)
	}
	st, d = b.Build()
	res, err := backend.Sync(ctx, st, d)
	if err != nil || res.Chains != 0 {
		t.Fatalf("a sync without changes wrote %d chains (%v)", res.Chains, err)
	}
	fixed.Endpoints = fixed.Endpoints[:1]
	set(fixed)
	st, d = b.Build()
	if res, err = backend.Sync(ctx, st, d); err != nil {
		t.Fatal(err)
	}
	if res.Chains != 2 {
		t.Errorf("one endpoint leaving a Service wrote or deleted %d chains, want 2 (its SVC, the endpoint's SEP)", res.Chains)
	}
}

// TestIntactAndRestore: chains flushed or deleted from outside are
// found by Intact, and the next Sync programs them again.
func TestIntactAndRestore(t *testing.T) {
	ctx := context.Background()
	st := loadDir(t, "testdata/policies", testConfig())
	for _, tc := range []struct {
		name string
		cmd  []string
	}{
		{"nat flushed", []string{"iptables", "-t", "nat", "-F"}},
		{"filter flushed", []string{"iptables", "-F"}},
		{"IPv6 nat flushed", []string{"ip6tables", "-t", "nat", "-F"}},
		{"mangle flushed", []string{"iptables", "-t", "mangle", "-F"}},
		{"the postrouting jump deleted", []string{"iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "kubenat", "-j", "KUBENAT-POSTROUTING"}},
		// Put back ahead of KUBENAT-FILTER's jump, it would be out of
		// order: the dump compares the order too.
		{"a forward jump deleted", []string{"iptables", "-D", "FORWARD", "-m", "comment", "--comment", "kubenat", "-j", "KUBENAT-FORWARD"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := Exec{NetNS: netnstest.NewNamespace(t)}
			backend := New(run, Options{})
			if _, err := backend.Sync(ctx, st, model.Delta{Full: true}); err != nil {
				t.Fatal(err)
			}
			want := dump(t, run)
			if ok, err := backend.Intact(ctx); !ok || err != nil {
				t.Fatalf("Intact = %v, %v right after a sync", ok, err)
			}
			if out, err := exec.Command("ip", append([]string{"netns", "exec", run.NetNS}, tc.cmd...)...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", tc.cmd, err, out)
			}
			if ok, err := backend.Intact(ctx); ok || err != nil {
				t.Fatalf("Intact = %v, %v after %v", ok, err, tc.cmd)
			}
			res, err := backend.Sync(ctx, st, model.Delta{})
			if err != nil || !res.Full {
				t.Fatalf("the sync after %v: full %v, %v", tc.cmd, res.Full, err)
			}
			if got := dump(t, run); got != want {
				t.Errorf("after restoring:\n%s\nwant\n%s", got, want)
			}
		})
	}
}

// TestCleanup removes kubenat's chains and jumps in both families and
// tables, and leaves a chain and rules of someone else's in place.
func TestCleanup(t *testing.T) {
	ctx := context.Background()
	for _, v := range variants {
		t.Run(v, func(t *testing.T) {
			run := Exec{Variant: v, NetNS: netnstest.NewNamespace(t)}
			if removed, err := Cleanup(ctx, run); removed || err != nil {
				t.Fatalf("Cleanup of nothing = %v, %v", removed, err)
			}
			if out, _ := run.Save(ctx, model.IPv4); strings.Contains(out, "*nat") {
				t.Fatalf("Cleanup of nothing created tables:\n%s", out)
			}
			other := "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -d 10.96.0.1/32 -j ACCEPT\nCOMMIT\n"
			if err := run.Restore(ctx, model.IPv4, other); err != nil {
				t.Fatal(err)
			}
			before := kernelRules(t, run, model.IPv4)
			st := loadDir(t, "testdata/policies", testConfig())
			if _, err := New(run, Options{}).Sync(ctx, st, model.Delta{Full: true}); err != nil {
				t.Fatal(err)
			}
			if removed, err := Cleanup(ctx, run); !removed || err != nil {
				t.Fatalf("Cleanup = %v, %v", removed, err)
			}
			for _, f := range model.Families {
				out, err := run.Save(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(out, Prefix) {
					t.Errorf("%s: kubenat's rules are left:\n%s", f, out)
				}
			}
			out, _ := run.Save(ctx, model.IPv4)
			for _, want := range []string{"-A PREROUTING -j KUBE-SERVICES", "-A KUBE-SERVICES -d 10.96.0.1/32 -j ACCEPT"} {
				if !strings.Contains(out, want) {
					t.Errorf("someone else's rule %q is gone:\n%s", want, out)
				}
			}
			if after := kernelRules(t, run, model.IPv4); after != before {
				t.Errorf("kubenat's view before %q and after %q", before, after)
			}
		})
	}
}

// TestSaveParsing reads kubenat's chains and jumps from iptables-save
// output, and nothing else.
func TestSaveParsing(t *testing.T) {
	out := `# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBENAT-SERVICES - [0:0]
:KUBENAT-SVC-ABC - [0:0]
-A PREROUTING -m comment --comment kubenat -j KUBENAT-SERVICES
-A PREROUTING -j KUBE-SERVICES
-A KUBENAT-SERVICES -d 10.96.0.1/32 -j KUBENAT-SVC-ABC
COMMIT
*filter
:INPUT ACCEPT [0:0]
COMMIT
`
	s := parseSave(out)
	if !slices.Equal(s.tables, []string{"nat", "filter"}) {
		t.Errorf("tables %v", s.tables)
	}
	if got := s.sortedChains("nat"); !slices.Equal(got, []string{"KUBENAT-SERVICES", "KUBENAT-SVC-ABC"}) {
		t.Errorf("chains %v", got)
	}
	if got := s.jumpLines["nat"]; !slices.Equal(got, []string{"PREROUTING -m comment --comment kubenat -j KUBENAT-SERVICES"}) {
		t.Errorf("jumps %v", got)
	}
}

// TestFullSyncRemovesStaleJumps: a jump to a chain of kubenat's that the
// ruleset no longer has (an earlier version's) is removed with its chain,
// instead of making every sync fail on the chain's deletion.
func TestFullSyncRemovesStaleJumps(t *testing.T) {
	ctx := context.Background()
	for _, v := range variants {
		t.Run(v, func(t *testing.T) {
			run := Exec{Variant: v, NetNS: netnstest.NewNamespace(t)}
			old := "*nat\n:KUBENAT-SEP-OLDVERSION - [0:0]\n-A PREROUTING -j KUBENAT-SEP-OLDVERSION\n" +
				"-A KUBENAT-SEP-OLDVERSION -j RETURN\nCOMMIT\n"
			if err := run.Restore(ctx, model.IPv4, old); err != nil {
				t.Fatal(err)
			}
			st := loadDir(t, "testdata/policies", testConfig())
			if _, err := New(run, Options{}).Sync(ctx, st, model.Delta{Full: true}); err != nil {
				t.Fatalf("full sync over an earlier version's jump: %v", err)
			}
			out, err := run.Save(ctx, model.IPv4)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out, "OLDVERSION") {
				t.Errorf("the earlier version's chain or jump is left:\n%s", out)
			}
		})
	}
}

// failingIPv6 fails the next IPv6 restore once armed.
type failingIPv6 struct {
	Exec
	armed bool
}

func (f *failingIPv6) Restore(ctx context.Context, fam model.Family, input string) error {
	if fam == model.IPv6 && f.armed {
		f.armed = false
		return fmt.Errorf("injected failure")
	}
	return f.Exec.Restore(ctx, fam, input)
}

// TestSyncAfterAFailure: a Sync that fails after committing IPv4 leaves
// the next Sync a full one, which programs what a Sync from scratch does.
func TestSyncAfterAFailure(t *testing.T) {
	ctx := context.Background()
	run := &failingIPv6{Exec: Exec{NetNS: netnstest.NewNamespace(t)}}
	ref := Exec{NetNS: netnstest.NewNamespace(t)}
	b := model.NewBuilder(testConfig())
	r := rand.New(rand.NewPCG(5, 6))
	services := map[int]bool{}
	randomChanges(r, b, services)
	backend := New(run, Options{})
	st, d := b.Build()
	if _, err := backend.Sync(ctx, st, d); err != nil {
		t.Fatal(err)
	}
	randomChanges(r, b, services)
	st, d = b.Build()
	run.armed = true
	if _, err := backend.Sync(ctx, st, d); err == nil {
		t.Fatal("the injected failure was not reported")
	}
	res, err := backend.Sync(ctx, st, model.Delta{})
	if err != nil || !res.Full {
		t.Fatalf("the sync after a failure: full %v, %v", res.Full, err)
	}
	if _, err := New(ref, Options{}).Sync(ctx, st, model.Delta{Full: true}); err != nil {
		t.Fatal(err)
	}
	if got, want := dump(t, run.Exec), dump(t, ref); got != want {
		t.Errorf("after a failure and a full sync:\n%s\nfrom scratch:\n%s", got, want)
	}
}

// TestKind: the variant of the commands, named or found out.
func TestKind(t *testing.T) {
	netnstest.Require(t)
	for _, tc := range []struct {
		e    Exec
		want string
	}{
		{Exec{Variant: "legacy"}, "legacy"},
		{Exec{Variant: "nft"}, "nft"},
		{Exec{}, "nft"}, // Debian 12's iptables
	} {
		if got, err := tc.e.Kind(context.Background()); err != nil || got != tc.want {
			t.Errorf("%s: Kind = %q, %v; want %q", tc.e.Names(), got, err, tc.want)
		}
	}
}

// TestIPv4Only: on a kernel without IPv6, only IPv4 is programmed (and
// checked).
func TestIPv4Only(t *testing.T) {
	ctx := context.Background()
	run := Exec{NetNS: netnstest.NewNamespace(t)}
	backend := New(run, Options{IPv4Only: true})
	st := loadDir(t, "testdata/policies", testConfig())
	if _, err := backend.Sync(ctx, st, model.Delta{Full: true}); err != nil {
		t.Fatal(err)
	}
	if v4, v6 := kernelRules(t, run, model.IPv4), kernelRules(t, run, model.IPv6); !strings.Contains(v4, "KUBENAT-SERVICES") || v6 != "" {
		t.Errorf("IPv4 only: IPv4 %q, IPv6 %q", v4, v6)
	}
	if ok, err := backend.Intact(ctx); !ok || err != nil {
		t.Errorf("Intact = %v, %v", ok, err)
	}
}
