package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/kubenat/kubenat/bench/workload"
	"github.com/kubenat/kubenat/internal/agent"
	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/memlimit"
	"github.com/kubenat/kubenat/internal/metrics"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/nft"
)

// childJob is what the parent sends the child on stdin.
type childJob struct {
	Job
	NodeAddr string `json:"node_addr"`
	PodCIDR  string `json:"pod_cidr"`
}

// MaybeChild runs the control-plane child and exits when the process was
// started as one (ChildEnv set); otherwise it returns at once. Call it
// first thing in main (or TestMain).
func MaybeChild() {
	if os.Getenv(ChildEnv) != "controlplane" {
		return
	}
	if err := child(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "control-plane child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// commit is one nftables transaction the agent ran.
type commit struct {
	start, end time.Time
	full       bool
	bytes      int
}

// timingRunner records every transaction the agent runs.
type timingRunner struct {
	inner nft.Runner
	mu    sync.Mutex
	done  []commit
}

func (t *timingRunner) Name() string { return t.inner.Name() }

func (t *timingRunner) Run(ctx context.Context, script string) (string, error) {
	start := time.Now()
	out, err := t.inner.Run(ctx, script)
	if err == nil {
		t.mu.Lock()
		t.done = append(t.done, commit{start: start, end: time.Now(), full: strings.HasPrefix(script, "add table") ||
			strings.HasPrefix(script, "create table"), bytes: len(script)})
		t.mu.Unlock()
	}
	return out, err
}

// take returns the transactions committed since the last take.
func (t *timingRunner) take() []commit {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := t.done
	t.done = nil
	return out
}

// syncReporter tells the child about every successful sync of the agent
// (ObserveSync) and ignores the other metrics.
type syncReporter struct {
	metrics.Reporter
	syncs chan<- bool
}

func (r syncReporter) ObserveSync(full bool, _ time.Duration) { r.syncs <- full }

// memSource delivers generated objects, as the kube source's initial lists
// would, then nothing: the child makes changes through the Sink itself. Like
// the kube source, it lets each Service and EndpointSlice go once delivered
// (it caches none).
type memSource struct {
	node *v1.Node
	objs *workload.Cluster
}

func (m *memSource) Load(_ context.Context, sink agent.Sink) error {
	sink.SetNode(m.node, "bench")
	for i, s := range m.objs.Services {
		sink.SetService(s, "bench")
		m.objs.Services[i] = nil // the kube source does not keep them either
	}
	for i, s := range m.objs.EndpointSlices {
		sink.SetEndpointSlice(s, "bench")
		m.objs.EndpointSlices[i] = nil // the kube source does not keep them either
	}
	sink.Synced()
	return nil
}

func (m *memSource) Run(ctx context.Context, sink agent.Sink) error {
	if err := m.Load(ctx, sink); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

func child(in io.Reader, out io.Writer) error {
	var j childJob
	if err := json.NewDecoder(in).Decode(&j); err != nil {
		return fmt.Errorf("reading the job: %w", err)
	}
	objs, err := workload.Generate(j.Workload)
	if err != nil {
		return err
	}
	res := Result{Job: j.Job, Services: len(objs.Services)}
	for _, sl := range objs.EndpointSlices {
		res.Endpoints += len(sl.Endpoints)
	}
	node := k8sobj.Node("node-a", []string{j.NodeAddr}, []string{j.PodCIDR})
	memlimit.SetGCPercent() // as the agent binary does
	runtime.GC()
	debug.FreeOSMemory()
	res.ObjectsRSS = vmRSS()
	resetPeakRSS()

	var inner nft.Runner
	if j.NFTBinary {
		inner, err = nft.NewBinary("")
	} else {
		inner, err = nft.New()
	}
	if err != nil {
		return err
	}
	tr := &timingRunner{inner: inner}
	cfg := model.Config{NodeName: "node-a", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	syncs := make(chan bool, 1024)
	a, err := agent.New(agent.Options{Config: cfg, Runner: tr, MinSyncPeriod: j.MinSyncPeriod,
		Metrics: syncReporter{Reporter: metrics.Nop, syncs: syncs}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)

	slices := changedSlices(objs, j.Seed, j.Changes)
	ru0 := rusage()
	t0 := time.Now()
	go func() { done <- a.Run(ctx, &memSource{node: node, objs: objs}) }()
	cs, err := next(syncs, tr, done, 30*time.Minute)
	if err != nil {
		return fmt.Errorf("cold sync: %w", err)
	}
	ru1 := rusage()
	res.ColdSeconds = cs[len(cs)-1].end.Sub(t0).Seconds()
	for _, c := range cs {
		res.ColdNFTSeconds += c.end.Sub(c.start).Seconds()
		res.ColdScriptBytes += c.bytes
	}
	res.ColdTransactions = len(cs)
	res.ColdUserCPU, res.ColdSysCPU = cpu(ru0, ru1)
	res.ColdPeakRSS = procStatus("VmHWM")

	// Changes: flip the readiness of the first endpoint of a random
	// Service (a readiness probe failing, then passing again).
	rng := rand.New(rand.NewSource(j.Seed))
	time.Sleep(j.Interval)
	ru2 := rusage()
	for range j.Changes {
		k := rng.Intn(len(objs.Services))
		idx := objs.SlicesOf[k][0]
		sl := slices[idx]
		if len(sl.Endpoints) == 0 {
			continue
		}
		sl = flipReady(sl)
		slices[idx] = sl
		t := time.Now()
		a.SetEndpointSlice(sl, "bench")
		cs, err := next(syncs, tr, done, 10*time.Minute)
		if err != nil {
			return fmt.Errorf("change %d: %w", len(res.ChangeLatencies), err)
		}
		res.ChangeLatencies = append(res.ChangeLatencies, int64(cs[len(cs)-1].end.Sub(t)))
		var nftTime time.Duration
		for _, c := range cs {
			nftTime += c.end.Sub(c.start)
			if c.full {
				res.ChangeFullSyncs++
			}
		}
		res.ChangeNFT = append(res.ChangeNFT, int64(nftTime))
		time.Sleep(j.Interval)
	}
	ru3 := rusage()
	res.ChangesUserCPU, res.ChangesSysCPU = cpu(ru2, ru3)
	res.SteadyRSS = vmRSS()
	res.PeakRSS = procStatus("VmHWM")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.GoHeapResident = int64(ms.HeapSys - ms.HeapReleased)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	res.HeapInuse = int64(ms.HeapInuse)
	if dir := os.Getenv(ProfileEnv); dir != "" {
		// While the agent still holds its state.
		if err := writeHeapProfile(filepath.Join(dir, fmt.Sprintf("heap-%d.pprof", res.Services))); err != nil {
			return err
		}
	}
	cancel()
	if err := <-done; err != nil {
		return fmt.Errorf("agent: %w", err)
	}

	runtime.KeepAlive(objs)
	return json.NewEncoder(out).Encode(res)
}

// changedSlices returns, by index, the EndpointSlices the change loop
// (same seed, same number of changes) will modify: the child keeps those
// and lets the others go once the source delivered them.
func changedSlices(objs *workload.Cluster, seed int64, changes int) map[int]*discovery.EndpointSlice {
	rng := rand.New(rand.NewSource(seed))
	out := map[int]*discovery.EndpointSlice{}
	for range changes {
		idx := objs.SlicesOf[rng.Intn(len(objs.Services))][0]
		out[idx] = objs.EndpointSlices[idx]
	}
	return out
}

// writeHeapProfile writes the in-use heap profile to file.
func writeHeapProfile(file string) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", file, err)
	}
	return f.Close()
}

// next waits for the agent's next successful sync and returns the
// transactions it committed.
func next(syncs <-chan bool, tr *timingRunner, done <-chan error, timeout time.Duration) ([]commit, error) {
	deadline := time.After(timeout)
	for {
		select {
		case <-syncs:
			// A sync with nothing to do (e.g. a retry) commits nothing.
			if cs := tr.take(); len(cs) > 0 {
				return cs, nil
			}
		case err := <-done:
			return nil, fmt.Errorf("the agent stopped: %v", err)
		case <-deadline:
			return nil, errors.New("no sync within " + timeout.String())
		}
	}
}

// flipReady returns a copy of sl whose first endpoint's readiness is
// flipped.
func flipReady(sl *discovery.EndpointSlice) *discovery.EndpointSlice {
	n := sl.DeepCopy()
	c := &n.Endpoints[0].Conditions
	ready := c.Ready == nil || *c.Ready
	ready = !ready
	c.Ready = &ready
	return n
}

func rusage() syscall.Rusage {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru
}

func cpu(a, b syscall.Rusage) (user, sys float64) {
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(b.Utime) - tv(a.Utime), tv(b.Stime) - tv(a.Stime)
}

// vmRSS returns the process's current resident set size in bytes.
func vmRSS() int64 { return procStatus("VmRSS") }

// procStatus returns a size field of /proc/self/status in bytes, 0 when
// unknown.
func procStatus(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field+":" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// resetPeakRSS resets VmHWM to the current RSS (writing 5 to
// /proc/self/clear_refs), so that the peak does not count the generation
// of the objects. Best effort.
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }
