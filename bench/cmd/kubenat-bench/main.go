// Command kubenat-bench runs kubenat's benchmark suite and writes
// docs/benchmarks.md, its charts and the raw results. It needs root (it
// builds network namespaces), iproute2, nftables, iptables (legacy and nft)
// and conntrack, and takes about 30 minutes; -quick takes a few.
//
//	go run ./bench/cmd/kubenat-bench [-quick] [-stages datapath,controlplane,micro] [-out docs]
//	go run ./bench/cmd/kubenat-bench -render docs/bench/results.json   # rewrite the doc only
//	go run ./bench/cmd/kubenat-bench -stages datapath -merge docs/bench/results.json
//
// Every namespace it creates is removed when it ends, also on SIGINT or
// SIGTERM; namespaces left by a killed run are removed by the next one.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kubenat/kubenat/bench"
	"github.com/kubenat/kubenat/bench/controlplane"
	"github.com/kubenat/kubenat/bench/nsenv"
	"github.com/kubenat/kubenat/bench/report"
)

func main() {
	controlplane.MaybeChild()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kubenat-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		quick    = flag.Bool("quick", false, "small sizes and short loops: checks the suite in a few minutes")
		stages   = flag.String("stages", "", "comma-separated stages to run: micro, controlplane, datapath (default all)")
		out      = flag.String("out", "docs", "directory for benchmarks.md and bench/ (charts, results.json)")
		render   = flag.String("render", "", "only rewrite the report from this results.json")
		merge    = flag.String("merge", "", "take the stages not run from this results.json (e.g. re-run only -stages datapath)")
		sizes    = flag.String("sizes", "", "datapath: comma-separated numbers of other Services (default 10,1000,10000,50000)")
		rulesets = flag.String("rulesets", "", "datapath: comma-separated rulesets besides none (default kubenat,kubenat-socket-lb,kubenat-socket-lb-untracked,kubenat-tc-nat,kubenat-ebpf,nft-floor,iptables-nft,iptables-legacy)")
		repeats  = flag.Int("repeats", 0, "datapath: repeats of each measurement (default 5)")
		duration = flag.Duration("duration", 0, "datapath: length of each connect loop (default 2s)")
		changes  = flag.Int("changes", 0, "control plane: endpoint changes per scale (default 200)")
		repo     = flag.String("repo", ".", "repository root")
	)
	flag.Parse()

	if *render != "" {
		r, err := readResults(*render)
		if err != nil {
			return err
		}
		return report.Write(*out, r)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: it builds network namespaces and programs their firewalls")
	}

	o := bench.DefaultOptions(*quick)
	if *stages != "" {
		o.Stages = strings.Split(*stages, ",")
	}
	if *sizes != "" {
		o.Datapath.Sizes = nil
		for _, s := range strings.Split(*sizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("-sizes: %w", err)
			}
			o.Datapath.Sizes = append(o.Datapath.Sizes, n)
		}
	}
	if *rulesets != "" {
		o.Datapath.Rulesets = strings.Split(*rulesets, ",")
	}
	if *repeats > 0 {
		o.Datapath.Repeats = *repeats
	}
	if *duration > 0 {
		o.Datapath.Duration = *duration
	}
	if *changes > 0 {
		for i := range o.ControlPlane {
			o.ControlPlane[i].Changes = *changes
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	o.Exe, o.RepoDir = exe, *repo
	start := time.Now()
	o.Log = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	// SIGINT/SIGTERM cancel the run; the deferred Close removes the
	// namespaces. A second signal kills at once (the next run cleans up).
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	env := nsenv.New()
	defer env.Close()

	var prev *report.Results
	if *merge != "" {
		if prev, err = readResults(*merge); err != nil {
			return err
		}
	}
	res, runErr := bench.Run(ctx, env, o)
	if runErr != nil && ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", runErr)
	}
	res.Merge(prev, func(s string) bool { return o.Stages == nil || slices.Contains(o.Stages, s) })
	if err := report.Write(*out, res); err != nil {
		return errors.Join(runErr, err)
	}
	o.Log("wrote %s/benchmarks.md", *out)
	return runErr
}

// readResults reads a results.json written by an earlier run.
func readResults(file string) (*report.Results, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var r report.Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	return &r, nil
}
