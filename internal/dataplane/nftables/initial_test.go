package nftables

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
)

// TestInitialSyncInChunks programs random Services into empty namespaces
// a few elements per transaction, and checks the kernel then holds what
// one transaction programs; then that a new Backend facing the existing
// tables replaces them, and goes on incrementally.
func TestInitialSyncInChunks(t *testing.T) {
	ctx := context.Background()
	b, r := randomBuilder(3, 40)
	st, d := b.Build()
	onlyConflicts(t, st)

	chunkNS, refNS := netnstest.NewNamespace(t), netnstest.NewNamespace(t)
	var scripts int
	counting := countingRunner{inner: netnstest.NSRunner{NS: chunkNS}, n: &scripts}
	res, err := New(counting, Options{InitialChunk: 7}).Sync(ctx, st, d)
	if err != nil || !res.Full {
		t.Fatalf("initial sync: %+v, %v", res, err)
	}
	if scripts < 10 {
		t.Errorf("the initial sync took %d transactions; want one per few elements", scripts)
	}
	if _, err := New(netnstest.NSRunner{NS: refNS}, Options{InitialChunk: -1}).Sync(ctx, st, d); err != nil {
		t.Fatalf("one-transaction sync: %v", err)
	}
	if got, want := canonical(t, chunkNS), canonical(t, refNS); got != want {
		t.Fatalf("chunked ruleset differs from the one-transaction one\nchunked:\n%s\none transaction:\n%s", got, want)
	}

	// A restarted agent finds the tables: it rebuilds them through standby
	// tables, and every ClusterIP frontend stays programmed in one of them
	// after every transaction.
	want := clusterIPFrontends(t, chunkNS)
	scripts = 0
	watching := watchingRunner{inner: counting, check: func() {
		if got := clusterIPFrontends(t, chunkNS); !got.covers(want) {
			t.Errorf("after script %d of the rebuild, some ClusterIP frontends are in no table", scripts)
		}
	}}
	be := New(watching, Options{InitialChunk: 7})
	if _, err := be.Sync(ctx, st, model.Delta{Full: true}); err != nil {
		t.Fatalf("rebuilding sync: %v", err)
	}
	if scripts < 6 {
		t.Errorf("the rebuild took %d scripts; want the refused creation, two fills in groups and two deletions", scripts)
	}
	if out, err := exec.Command("ip", "netns", "exec", chunkNS, "nft", "list", "tables").Output(); err != nil || strings.Contains(string(out), "standby") {
		t.Errorf("tables after the rebuild: %s %v", out, err)
	}
	if got, want := canonical(t, chunkNS), canonical(t, refNS); got != want {
		t.Fatalf("rebuilt ruleset differs from the one-transaction one\nrebuilt:\n%s\none transaction:\n%s", got, want)
	}
	svc, sl := k8sobj.Random(r, 7).Objects()
	b.SetService(svc, "")
	for _, x := range sl {
		b.SetEndpointSlice(x, "")
	}
	st, d = b.Build()
	if res, err := be.Sync(ctx, st, d); err != nil || res.Full {
		t.Fatalf("incremental sync after the replacement: %+v, %v", res, err)
	}
	if _, err := New(netnstest.NSRunner{NS: refNS}, Options{}).Sync(ctx, st, model.Delta{Full: true}); err != nil {
		t.Fatal(err)
	}
	if got, want := canonical(t, chunkNS), canonical(t, refNS); got != want {
		t.Fatalf("after a change, the rulesets differ\nchunked:\n%s\nreference:\n%s", got, want)
	}
}

// countingRunner counts the scripts it runs.
type countingRunner struct {
	inner interface {
		Run(context.Context, string) (string, error)
		Name() string
	}
	n *int
}

func (c countingRunner) Name() string { return c.inner.Name() }

func (c countingRunner) Run(ctx context.Context, s string) (string, error) {
	*c.n++
	return c.inner.Run(ctx, s)
}

// watchingRunner calls check after each script.
type watchingRunner struct {
	inner countingRunner
	check func()
}

func (w watchingRunner) Name() string { return w.inner.Name() }

func (w watchingRunner) Run(ctx context.Context, s string) (string, error) {
	out, err := w.inner.Run(ctx, s)
	w.check()
	return out, err
}

// frontendSet is a set of "table family: element" strings, by element.
type frontendSet map[string]bool

func (f frontendSet) covers(other frontendSet) bool {
	for k := range other {
		if !f[k] {
			return false
		}
	}
	return true
}

// clusterIPFrontends returns the elements of every clusterip-frontends set
// in ns, whichever table holds them.
func clusterIPFrontends(t *testing.T, ns string) frontendSet {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset").Output()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	got := frontendSet{}
	for _, o := range doc.Nftables {
		raw, ok := o["set"]
		if !ok {
			continue
		}
		var set struct {
			Family string            `json:"family"`
			Name   string            `json:"name"`
			Elem   []json.RawMessage `json:"elem"`
		}
		if err := json.Unmarshal(raw, &set); err != nil || set.Name != setClusterIPFronts {
			continue
		}
		for _, e := range set.Elem {
			got[set.Family+": "+string(e)] = true
		}
	}
	return got
}

// failingRunner accepts every script but the failAt-th (counting from 1).
type failingRunner struct {
	failAt int
	n      *int
}

func (f failingRunner) Name() string { return "failing" }

func (f failingRunner) Run(_ context.Context, s string) (string, error) {
	*f.n++
	if *f.n == f.failAt {
		return "", fmt.Errorf("refused script %d", *f.n)
	}
	return "", nil
}

// TestInitialSyncStopsAtAFailedGroup: when a group of Services fails, the
// full sync runs no further group, names the failed group's Services, and
// leaves no goroutine behind (the next group is written while one runs).
func TestInitialSyncStopsAtAFailedGroup(t *testing.T) {
	b, _ := randomBuilder(5, 60)
	st, d := b.Build()
	before := runtime.NumGoroutine()
	var scripts int
	_, err := New(failingRunner{failAt: 3, n: &scripts}, Options{InitialChunk: 7}).Sync(context.Background(), st, d)
	if err == nil || !strings.Contains(err.Error(), "programming Services") || !strings.Contains(err.Error(), "refused script 3") {
		t.Fatalf("Sync = %v, want the second group's failure", err)
	}
	if scripts != 3 {
		t.Errorf("%d scripts run, want 3 (the tables, a group, the failed group)", scripts)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after the failed sync, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cancellingRunner accepts every script and cancels the sync's context
// during the cancelAt-th one (a transaction in progress completes).
type cancellingRunner struct {
	cancelAt int
	cancel   context.CancelFunc
	n        *int
}

func (c cancellingRunner) Name() string { return "cancelling" }

func (c cancellingRunner) Run(ctx context.Context, _ string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	*c.n++
	if *c.n == c.cancelAt {
		c.cancel()
	}
	return "", nil
}

// TestInitialSyncCancelledIsNotASuccess: a full sync whose context ends
// between two groups reports the error, never success over partial tables
// (the next group may already be written when the context ends).
func TestInitialSyncCancelledIsNotASuccess(t *testing.T) {
	b, _ := randomBuilder(5, 60)
	st, d := b.Build()
	for range 50 {
		ctx, cancel := context.WithCancel(context.Background())
		var scripts int
		_, err := New(cancellingRunner{cancelAt: 2, cancel: cancel, n: &scripts}, Options{InitialChunk: 7}).Sync(ctx, st, d)
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Sync after %d scripts = %v, want the cancellation", scripts, err)
		}
	}
}

// recordingRunner keeps the scripts it runs.
type recordingRunner struct {
	inner   netnstest.NSRunner
	scripts *[]string
}

func (r recordingRunner) Name() string { return r.inner.Name() }

func (r recordingRunner) Run(ctx context.Context, s string) (string, error) {
	*r.scripts = append(*r.scripts, s)
	return r.inner.Run(ctx, s)
}

// TestUntrackedChainComesLast: a full sync in groups adds the untracked
// chain only in its last transaction, once tracked-endpoints is complete,
// and never to the standby tables of a rebuild; a rebuild takes the old
// tables' chain out in its first transaction, before the standby tables
// DNAT by the new State: until the end every pod flow is tracked.
func TestUntrackedChainComesLast(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig()
	cfg.SocketLB, cfg.UntrackPodTCP = true, true
	b, _ := randomBuilder(4, 40)
	b.SetConfig(cfg)
	st, d := b.Build()
	onlyConflicts(t, st)
	var scripts []string
	run := recordingRunner{inner: netnstest.NSRunner{NS: netnstest.NewNamespace(t)}, scripts: &scripts}
	for _, full := range []string{"created", "rebuilt"} {
		scripts = scripts[:0]
		if _, err := New(run, Options{InitialChunk: 7}).Sync(ctx, st, d); err != nil {
			t.Fatalf("%s: %v", full, err)
		}
		if len(scripts) < 4 {
			t.Fatalf("%s in %d transactions; want groups", full, len(scripts))
		}
		// scripts[0] tried to create the tables, and found them.
		if full == "rebuilt" && !strings.Contains(scripts[1], "delete chain ip kubenat raw-prerouting") {
			t.Errorf("the rebuild's first transaction keeps the old untracked chain:\n%s", scripts[1])
		}
		for i, s := range scripts {
			has := strings.Contains(s, "priority raw") // the chain is added
			if has && (i != len(scripts)-1 && !strings.Contains(scripts[i+1], "standby")) {
				t.Errorf("%s: transaction %d of %d adds the untracked chain before the tables are complete", full, i+1, len(scripts))
			}
			if has && strings.Contains(s, StandbyTable(DefaultTable)) {
				t.Errorf("%s: transaction %d adds the untracked chain to the standby tables", full, i+1)
			}
		}
		if !strings.Contains(strings.Join(scripts, ""), "priority raw") {
			t.Errorf("%s: no transaction adds the untracked chain", full)
		}
	}
}

// TestUntrackedRuleFollowsTheConfig: the untracked rule matches the IPv4
// cluster CIDR inline, so a configuration with another CIDR makes the
// next sync full and leaves the kernel's rule on the new CIDR, and
// turning untracking off removes the chain. After each step the kernel
// holds what Render gives for the State.
func TestUntrackedRuleFollowsTheConfig(t *testing.T) {
	ctx := context.Background()
	ns := netnstest.NewNamespace(t)
	backend := New(runnerIn(ns), Options{})
	b, _ := randomBuilder(3, 20)
	untracked := func(cidr string) model.Config {
		cfg := testConfig()
		cfg.ClusterCIDRs[0] = netip.MustParsePrefix(cidr)
		cfg.SocketLB, cfg.UntrackPodTCP = true, true
		return cfg
	}
	off := untracked("10.240.0.0/12")
	off.UntrackPodTCP = false
	for i, step := range []struct {
		cfg      model.Config
		wantRule string // "" when there must be no untracked chain
	}{
		{untracked("10.244.0.0/16"), "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 "},
		{untracked("10.240.0.0/12"), "ip saddr 10.240.0.0/12 ip daddr 10.240.0.0/12 "},
		{off, ""},
	} {
		b.SetConfig(step.cfg)
		st, d := b.Build()
		onlyConflicts(t, st)
		res, err := backend.Sync(ctx, st, d)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if i > 0 && !res.Full {
			t.Errorf("step %d: a new cluster CIDR or untracking mode was applied incrementally", i)
		}
		outb, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "ip", DefaultTable).CombinedOutput()
		out := string(outb)
		if err != nil {
			t.Fatalf("step %d: %v: %s", i, err, out)
		}
		if got := strings.Contains(out, "raw-prerouting"); got != (step.wantRule != "") {
			t.Errorf("step %d: untracked chain present = %v, want %v", i, got, step.wantRule != "")
		}
		if step.wantRule != "" && !strings.Contains(out, step.wantRule) {
			t.Errorf("step %d: the untracked rule does not match %q:\n%s", i, step.wantRule, out)
		}
		if got, want := canonical(t, ns), rendered(t, st); got != want {
			t.Errorf("step %d: the kernel differs from the rendering:\n%s\nrendering:\n%s", i, got, want)
		}
	}
}

// TestNodeAddrsFollowTheNode changes the node's addresses under untracked
// pod TCP: each change is a small incremental transaction (no Service
// changed), node-addrs keeps only IPv4 addresses inside the cluster CIDR,
// and the kernel equals a fresh render after each step.
func TestNodeAddrsFollowTheNode(t *testing.T) {
	ctx := context.Background()
	ns := netnstest.NewNamespace(t)
	backend := New(runnerIn(ns), Options{})
	b, _ := randomBuilder(3, 20)
	cfg := testConfig()
	cfg.SocketLB, cfg.UntrackPodTCP = true, true
	b.SetConfig(cfg)
	st, d := b.Build()
	onlyConflicts(t, st)
	if _, err := backend.Sync(ctx, st, d); err != nil {
		t.Fatal(err)
	}
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	for i, step := range []struct {
		local       []netip.Addr
		want, want6 string // node-addrs' elements in each family, as nft lists them
		elements    int
	}{
		{addrs("192.168.100.11", "10.244.0.1", "fd00:244::1", "fd00:100::11"), "10.244.0.1", "fd00:244::1", 2},
		{addrs("192.168.100.11", "10.244.0.1", "10.244.9.0"), "10.244.0.1, 10.244.9.0", "", 2},
		{addrs("192.168.100.11", "10.244.9.0"), "10.244.9.0", "", 1},
		{addrs("192.168.100.11", "fd00:244:0:9::"), "", "fd00:244:0:9::", 2},
		{addrs("192.168.100.11"), "", "", 1},
		{addrs("192.168.100.11"), "", "", 0},
	} {
		b.SetLocalAddrs(step.local)
		st, d := b.Build()
		res, err := backend.Sync(ctx, st, d)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if res.Full || res.Elements != step.elements {
			t.Errorf("step %d: full %v, %d element changes; want an incremental sync of %d", i, res.Full, res.Elements, step.elements)
		}
		for _, f := range []struct{ table, want string }{{"ip", step.want}, {"ip6", step.want6}} {
			out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "set", f.table, DefaultTable, setNodeAddrs).CombinedOutput()
			if err != nil {
				t.Fatalf("step %d: %v: %s", i, err, out)
			}
			got := ""
			if _, after, ok := strings.Cut(string(out), "elements = { "); ok {
				got, _, _ = strings.Cut(after, " }")
			}
			if got != f.want {
				t.Errorf("step %d: %s node-addrs holds %q, want %q", i, f.table, got, f.want)
			}
		}
		if got, want := canonical(t, ns), rendered(t, st); got != want {
			t.Errorf("step %d: the kernel differs from the rendering:\n%s\nrendering:\n%s", i, got, want)
		}
	}
}

// refusingRunner runs scripts in a namespace, but refuses the first one
// refuse matches (once).
type refusingRunner struct {
	inner   netnstest.NSRunner
	refuse  func(script string) bool
	refused *bool
}

func (r refusingRunner) Name() string { return r.inner.Name() }

func (r refusingRunner) Run(ctx context.Context, s string) (string, error) {
	if !*r.refused && r.refuse(s) {
		*r.refused = true
		return "", errors.New("refused")
	}
	return r.inner.Run(ctx, s)
}

// TestRebuildFailures: a rebuild whose new tables cannot be created after
// the old ones were deleted reports the error (the standby tables keep
// serving), never success over no tables; and standby tables an
// interrupted rebuild left are deleted by the next full sync, which must
// find none of an older State hooked.
func TestRebuildFailures(t *testing.T) {
	ctx := context.Background()
	ns := netnstest.NewNamespace(t)
	b, _ := randomBuilder(4, 40)
	st, d := b.Build()
	onlyConflicts(t, st)
	tables := func() string {
		out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "tables").Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	refused := false
	run := refusingRunner{inner: netnstest.NSRunner{NS: ns}, refused: &refused, refuse: func(s string) bool {
		// The rebuilt tables' first transaction (not the standby's).
		return strings.HasPrefix(s, "add table ip kubenat\ndelete table ip kubenat\n") && strings.Contains(s, "table ip kubenat {")
	}}
	if _, err := New(run, Options{InitialChunk: 7}).Sync(ctx, st, d); err != nil {
		t.Fatal(err)
	}
	if _, err := New(run, Options{InitialChunk: 7}).Sync(ctx, st, d); err == nil || !refused {
		t.Fatalf("a rebuild whose new tables were refused: Sync = %v, want the error", err)
	}
	if got := tables(); !strings.Contains(got, "table ip kubenat-standby") || strings.Contains(got, "table ip kubenat\n") {
		t.Errorf("tables after the failed rebuild:\n%s\nwant only the standby tables, serving", got)
	}
	// As after an agent killed at that point: a new agent creates the
	// tables afresh, and must drop the standby tables.
	if _, err := New(run, Options{InitialChunk: 7}).Sync(ctx, st, d); err != nil {
		t.Fatal(err)
	}
	if got := tables(); strings.Contains(got, "standby") {
		t.Errorf("tables after the next full sync:\n%s\nwant no standby tables", got)
	}
	if got, want := canonical(t, ns), rendered(t, st); got != want {
		t.Errorf("the kernel differs from a fresh render\nkernel:\n%s\nrender:\n%s", got, want)
	}
}

// TestServiceCIDRsComeLast: a full sync in groups adds the Service CIDRs'
// elements in its last transaction, once every Service is programmed (the
// rule that drops unallocated addresses would otherwise drop the Services
// not programmed yet), never to the standby tables, and the kernel then
// holds what Render gives.
func TestServiceCIDRsComeLast(t *testing.T) {
	ctx := context.Background()
	b, _ := randomBuilder(6, 40)
	b.SetConfig(serviceCIDRConfig())
	st, d := b.Build()
	onlyConflicts(t, st)
	ns := netnstest.NewNamespace(t)
	var scripts []string
	run := recordingRunner{inner: netnstest.NSRunner{NS: ns}, scripts: &scripts}
	for _, full := range []string{"created", "rebuilt"} {
		scripts = scripts[:0]
		if _, err := New(run, Options{InitialChunk: 7}).Sync(ctx, st, d); err != nil {
			t.Fatalf("%s: %v", full, err)
		}
		adds := 0
		for i, s := range scripts {
			if !strings.Contains(s, "service-cidrs { 10.96.0.0/12") {
				continue
			}
			adds++
			if i != len(scripts)-1 || strings.Contains(s, StandbyTable(DefaultTable)) {
				t.Errorf("%s: transaction %d of %d adds the Service CIDRs:\n%s", full, i+1, len(scripts), s)
			}
		}
		if adds != 1 {
			t.Errorf("%s: %d transactions add the Service CIDRs, want the last one", full, adds)
		}
		if got, want := canonical(t, ns), rendered(t, st); got != want {
			t.Errorf("%s: the kernel differs from the rendering:\n%s\nrendering:\n%s", full, got, want)
		}
	}
}
