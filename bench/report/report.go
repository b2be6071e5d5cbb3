// Package report turns benchmark results into docs/benchmarks.md, PNG
// charts (gonum.org/v1/plot) and a JSON file of every raw sample.
package report

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/kubenat/kubenat/bench/controlplane"
	"github.com/kubenat/kubenat/bench/datapath"
)

// Results is one invocation of the suite.
type Results struct {
	Meta         Meta                  `json:"meta"`
	Datapath     *datapath.Results     `json:"datapath,omitempty"`
	ControlPlane []controlplane.Result `json:"control_plane,omitempty"`
	Micro        []Micro               `json:"micro,omitempty"`
	// MicroRaw is the `go test -bench` output, benchstat's input.
	MicroRaw string `json:"micro_raw,omitempty"`
}

// Has reports whether r holds results of stage.
func (r *Results) Has(stage string) bool {
	switch stage {
	case StageDatapath:
		return r.Datapath != nil
	case StageControlPlane:
		return len(r.ControlPlane) > 0
	case StageMicro:
		return len(r.Micro) > 0 || r.MicroRaw != ""
	}
	return false
}

// The stages of the suite.
const (
	StageMicro        = "micro"
	StageControlPlane = "controlplane"
	StageDatapath     = "datapath"
)

// stages lists the stages in the order the suite runs them.
var stages = [...]string{StageMicro, StageControlPlane, StageDatapath}

// Merge records which run measured each stage, and takes from prev (an
// earlier run's results; nil for none) the stages this run did not (ran
// reports whether it did). A merged stage keeps the origin prev recorded
// for it, which may be a run before prev.
func (r *Results) Merge(prev *Results, ran func(stage string) bool) {
	here := StageOrigin{Started: r.Meta.Started, Commit: r.Meta.Commit}
	r.Meta.Stages = map[string]StageOrigin{}
	var merged []string
	for _, st := range stages {
		switch {
		case ran(st):
			r.Meta.Stages[st] = here
		case prev != nil && prev.Has(st):
			switch st {
			case StageDatapath:
				r.Datapath = prev.Datapath
			case StageControlPlane:
				r.ControlPlane = prev.ControlPlane
			case StageMicro:
				r.Micro, r.MicroRaw = prev.Micro, prev.MicroRaw
			}
			origin, ok := prev.Meta.Stages[st]
			if !ok {
				origin = StageOrigin{Started: prev.Meta.Started, Commit: prev.Meta.Commit}
			}
			r.Meta.Stages[st] = origin
			merged = append(merged, fmt.Sprintf("%s from %s", st, origin))
		}
	}
	r.Meta.Merged = strings.Join(merged, "; ")
}

// Meta describes the machine and the run.
type Meta struct {
	Started    time.Time `json:"started"`
	Finished   time.Time `json:"finished"`
	Quick      bool      `json:"quick"`
	Commit     string    `json:"commit"`
	CPU        string    `json:"cpu"`
	Cores      int       `json:"cores"`
	MemoryMiB  int       `json:"memory_mib"`
	Kernel     string    `json:"kernel"`
	OS         string    `json:"os"`
	Go         string    `json:"go"`
	NFT        string    `json:"nft"`
	IPTables   string    `json:"iptables"`
	NFTRunner  string    `json:"nft_runner"`
	LoadBefore string    `json:"loadavg_before"`
	LoadAfter  string    `json:"loadavg_after"`
	// Merged says which stages come from an earlier run, if any.
	Merged string `json:"merged,omitempty"`
	// Stages says, for each stage in the results, which run measured it
	// (a stage merged from an earlier run keeps that run's origin).
	Stages map[string]StageOrigin `json:"stages,omitempty"`
}

// StageOrigin is the run that measured a stage.
type StageOrigin struct {
	Started time.Time `json:"started"`
	Commit  string    `json:"commit"`
}

// String returns "the run of <date> (commit <id>)".
func (o StageOrigin) String() string {
	return fmt.Sprintf("the run of %s (commit %s)", o.Started.Format("2006-01-02 15:04 UTC"), o.Commit)
}

// CollectMeta describes this machine. dir is a directory inside the
// repository (for the commit id).
func CollectMeta(ctx context.Context, dir string) Meta {
	m := Meta{Started: time.Now().UTC(), Cores: runtime.NumCPU(), Go: runtime.Version()}
	run := func(args ...string) string {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(string(out))
	}
	m.Commit = run("git", "describe", "--always", "--dirty")
	m.Kernel = run("uname", "-r")
	m.NFT = run("nft", "--version")
	m.IPTables = run("iptables", "--version")
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		m.MemoryMiB = kb >> 10
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	m.LoadBefore = LoadAvg()
	return m
}

// LoadAvg returns the first three fields of /proc/loadavg.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// Write writes dir/benchmarks.md, the charts under dir/bench/ and
// dir/bench/results.json (plus dir/bench/micro.txt, benchstat's input).
func Write(dir string, r *Results) error {
	chartDir := filepath.Join(dir, "bench")
	if err := os.MkdirAll(chartDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", chartDir, err)
	}
	js, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return fmt.Errorf("encoding the results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(chartDir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the results: %w", err)
	}
	if r.MicroRaw != "" {
		if err := os.WriteFile(filepath.Join(chartDir, "micro.txt"), []byte(r.MicroRaw), 0o644); err != nil {
			return fmt.Errorf("writing the microbenchmarks: %w", err)
		}
	}
	charts, err := writeCharts(chartDir, r)
	if err != nil {
		return err
	}
	var md bytes.Buffer
	writeMarkdown(&md, r, charts)
	if err := os.WriteFile(filepath.Join(dir, "benchmarks.md"), md.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing benchmarks.md: %w", err)
	}
	return nil
}

// Stat is the median and range of repeated measurements.
type Stat struct {
	Median, Min, Max float64
	N                int
}

// Summarize returns the median (mean of the two middle values for an even
// count), minimum and maximum of xs; the zero Stat for none.
func Summarize(xs []float64) Stat {
	if len(xs) == 0 {
		return Stat{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: med, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// PercentileNS returns the p-th percentile (nearest rank) of durations in
// ns, as seconds.
func PercentileNS(ns []int64, p float64) float64 {
	if len(ns) == 0 {
		return 0
	}
	s := slices.Clone(ns)
	slices.SortFunc(s, cmp.Compare[int64])
	rank := int(float64(len(s))*p/100+0.999999) - 1
	rank = max(0, min(rank, len(s)-1))
	return float64(s[rank]) / 1e9
}
