// Package bench is kubenat's benchmark suite: the datapath cost of a new
// connection (bench/datapath), the control plane's speed and memory
// (bench/controlplane) and Go microbenchmarks (bench/micro), at 10 to
// 50,000 Services, with the baselines measured in the same invocation.
// `make bench` runs it through bench/cmd/kubenat-bench and writes
// docs/benchmarks.md; the smoke test runs every stage at a tiny scale.
package bench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"time"

	"github.com/kubenat/kubenat/bench/controlplane"
	"github.com/kubenat/kubenat/bench/datapath"
	"github.com/kubenat/kubenat/bench/report"
	"github.com/kubenat/kubenat/bench/workload"
	"github.com/kubenat/kubenat/internal/nft"
)

// Stages of the suite.
const (
	StageDatapath     = report.StageDatapath
	StageControlPlane = report.StageControlPlane
	StageMicro        = report.StageMicro
)

// Namespaces creates the clusters the stages run in; see
// datapath.Namespaces.
type Namespaces = datapath.Namespaces

// Options say what to run.
type Options struct {
	// Stages to run; nil runs them all.
	Stages []string
	// Quick marks a run with reduced sizes (reported as such).
	Quick bool
	// Datapath configures the datapath stage.
	Datapath datapath.Options
	// ControlPlane lists the control-plane scales.
	ControlPlane []controlplane.Job
	// Exe is the binary re-executed for control-plane children; it must
	// call controlplane.MaybeChild first thing.
	Exe string
	// RepoDir is the repository root (for `go test` of the
	// microbenchmarks and the commit id).
	RepoDir string
	// MicroArgs are extra `go test` arguments for the microbenchmarks
	// (e.g. -count 6).
	MicroArgs []string
	// Log receives progress lines; nil discards them.
	Log func(format string, args ...any)
}

// DefaultOptions returns the full suite (quick: a few minutes' check with
// small sizes and short loops).
func DefaultOptions(quick bool) Options {
	o := Options{Quick: quick}
	o.Datapath = datapath.Options{
		Sizes:              []int{10, 1000, 10000, 50000},
		Repeats:            5,
		Warmup:             500 * time.Millisecond,
		Duration:           2 * time.Second,
		ThroughputDuration: 3 * time.Second,
	}
	changes, coldRepeats := 200, 5
	scales := []int{1000, 10000, 50000}
	big := 100000
	o.MicroArgs = []string{"-count", "6"}
	if quick {
		o.Datapath.Sizes = []int{10, 1000}
		o.Datapath.Repeats = 2
		o.Datapath.Warmup = 200 * time.Millisecond
		o.Datapath.Duration = time.Second
		o.Datapath.ThroughputDuration = time.Second
		changes, coldRepeats = 20, 2
		scales = []int{1000, 10000}
		big = 10000
		o.MicroArgs = []string{"-count", "1", "-benchtime", "1x"}
	}
	for _, n := range scales {
		o.ControlPlane = append(o.ControlPlane, Job(fmt.Sprintf("%s × 5", thousands(n)), workload.Spec{Services: n, Endpoints: 5, NodePortEvery: 20}, changes))
	}
	// One change of the big Service moves all its elements (~1.5 s at
	// 100,000): 100 changes, the minimum.
	o.ControlPlane = append(o.ControlPlane, Job(fmt.Sprintf("1 × %s", thousands(big)), workload.Spec{Services: 1, Endpoints: big}, min(changes, 100)))
	for i := range o.ControlPlane {
		o.ControlPlane[i].Repeats = coldRepeats
		o.ControlPlane[i].Restart = true
	}
	return o
}

// Job returns a control-plane job with the agent's default min-sync-period
// (100 ms) and changes spaced 120 ms apart.
func Job(name string, w workload.Spec, changes int) controlplane.Job {
	return controlplane.Job{Name: name, Workload: w, Changes: changes,
		Interval: 120 * time.Millisecond, MinSyncPeriod: 100 * time.Millisecond, Seed: 1}
}

func (o *Options) runs(stage string) bool {
	if o.Stages == nil {
		return true
	}
	for _, s := range o.Stages {
		if s == stage {
			return true
		}
	}
	return false
}

// Run runs the stages and returns what they measured. On error the results
// so far are returned with it.
func Run(ctx context.Context, ns Namespaces, o Options) (*report.Results, error) {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	o.Datapath.Log = o.Log
	res := &report.Results{Meta: report.CollectMeta(ctx, o.RepoDir)}
	res.Meta.Quick = o.Quick
	res.Meta.NFTRunner = "the nft binary (libnftables not loadable)"
	if _, err := nft.NewLib(); err == nil {
		res.Meta.NFTRunner = "libnftables (in-process)"
	}
	defer func() {
		res.Meta.Finished = time.Now().UTC()
		res.Meta.LoadAfter = report.LoadAvg()
	}()
	if o.runs(StageMicro) {
		o.Log("microbenchmarks: go test -bench %v", o.MicroArgs)
		raw, err := runMicro(ctx, o.RepoDir, o.MicroArgs)
		if err != nil {
			return res, err
		}
		res.MicroRaw, res.Micro = raw, report.ParseMicro(raw)
	}
	if o.runs(StageControlPlane) {
		cp, err := controlplane.Run(ctx, ns, o.Exe, o.ControlPlane, o.Log)
		res.ControlPlane = cp
		if err != nil {
			return res, err
		}
	}
	if o.runs(StageDatapath) {
		dp, err := datapath.Run(ctx, ns, o.Datapath)
		res.Datapath = dp
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// runMicro runs the microbenchmarks with `go test` and returns the output.
func runMicro(ctx context.Context, dir string, args []string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem"}, append(args, "./bench/micro")...)...)
	cmd.Dir = dir
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go test -bench ./bench/micro: %w: %s%s", err, out.String(), errOut.String())
	}
	return out.String(), nil
}

func thousands(n int) string {
	s := fmt.Sprint(n)
	var b []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			b = append(b, ',')
		}
		b = append(b, s[i])
	}
	return string(b)
}
