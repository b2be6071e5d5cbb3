// Package controlplane measures kubenat's agent: the time from an empty
// kernel to every rule programmed, the time from one endpoint change
// reaching the agent to the nftables transaction that applies it being
// committed, and the agent's peak memory and CPU time.
//
// Each scale runs in a child process of its own (the benchmark binary
// re-executed inside a fresh network namespace with `ip netns exec`), so
// peak RSS and CPU time belong to that scale alone. The child generates the
// objects first (what the kube source's initial lists would bring), then
// starts a real agent.Agent whose Source delivers them, and drives endpoint
// changes through the agent's Sink interface, as watch events would. Commit
// times come from a wrapper around the agent's nft.Runner.
package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/kubenat/kubenat/bench/workload"
	"github.com/kubenat/kubenat/internal/topo"
)

// ChildEnv is the environment variable that turns the benchmark binary (or
// test binary) into a control-plane child; see MaybeChild.
const ChildEnv = "KUBENAT_BENCH_CHILD"

// ProfileEnv names a directory where each child writes the heap profile
// of its agent at the end (heap-<Services>.pprof), for `go tool pprof`.
const ProfileEnv = "KUBENAT_BENCH_PROFILE_DIR"

// Job is one control-plane measurement.
type Job struct {
	// Name labels the scale in reports, e.g. "10,000 × 5".
	Name     string        `json:"name"`
	Workload workload.Spec `json:"workload"`
	// Changes is the number of endpoint changes to time.
	Changes int `json:"changes"`
	// Repeats is how many times the cold sync is measured, each time in a
	// fresh child and namespace; the changes are timed in the first run
	// only. 0 means once.
	Repeats int `json:"repeats,omitempty"`
	// Restart also measures, after the first run, a second child in the
	// same namespace: an agent restarted over the tables the first one
	// left (what an upgrade or a crash makes the agent do).
	Restart bool `json:"restart,omitempty"`
	// Interval separates changes; it should exceed MinSyncPeriod so that
	// batching never delays a change.
	Interval time.Duration `json:"interval"`
	// MinSyncPeriod is the agent's batching period.
	MinSyncPeriod time.Duration `json:"min_sync_period"`
	// Seed picks the Services that change.
	Seed int64 `json:"seed"`
	// NFTBinary makes the agent pipe its scripts to the nft binary instead
	// of running libnftables in-process (the parse then happens in nft's
	// own process, outside the agent's RSS).
	NFTBinary bool `json:"nft_binary,omitempty"`
}

// Result is what one job measured.
type Result struct {
	Job Job `json:"job"`
	// Services, Endpoints are the generated counts.
	Services  int `json:"services"`
	Endpoints int `json:"endpoints"`

	// ColdSeconds: first object delivered → the last transaction of the
	// agent's first sync committed. ColdNFTSeconds is the part spent in
	// libnftables (parsing the scripts and the kernel committing them),
	// ColdScriptBytes their size, ColdTransactions their number.
	ColdSeconds      float64 `json:"cold_seconds"`
	ColdNFTSeconds   float64 `json:"cold_nft_seconds"`
	ColdScriptBytes  int     `json:"cold_script_bytes"`
	ColdTransactions int     `json:"cold_transactions"`
	// ColdUserCPU, ColdSysCPU are the agent process's CPU seconds during
	// the cold sync (libnftables runs in-process; the kernel's commit work
	// is system time of the process).
	ColdUserCPU float64 `json:"cold_user_cpu_seconds"`
	ColdSysCPU  float64 `json:"cold_sys_cpu_seconds"`

	// Cold holds every run's cold sync (the first is the one above), for
	// medians over Job.Repeats runs; empty in results from before repeats
	// (see ColdRuns).
	Cold []ColdRun `json:"cold_runs,omitempty"`
	// Restart is the first sync of an agent restarted over the first
	// run's tables (Job.Restart), nil when not measured.
	Restart *ColdRun `json:"restart,omitempty"`

	// ChangeLatencies: change delivered → transaction committed, ns, in
	// the order the changes were made; ChangeNFT: the libnftables part.
	ChangeLatencies []int64 `json:"change_latencies_ns"`
	ChangeNFT       []int64 `json:"change_nft_ns"`
	// ChangeFullSyncs counts changes that were applied by replacing the
	// tables instead of incrementally.
	ChangeFullSyncs int `json:"change_full_syncs"`
	// ChangesUserCPU, ChangesSysCPU are the CPU seconds of all changes.
	ChangesUserCPU float64 `json:"changes_user_cpu_seconds"`
	ChangesSysCPU  float64 `json:"changes_sys_cpu_seconds"`

	// ObjectsRSS is the process RSS after generating the objects, before
	// the agent starts (bytes): the share of the listed objects' stand-in.
	ObjectsRSS int64 `json:"objects_rss_bytes"`
	// PeakRSS is the agent process's own peak RSS (VmHWM, bytes) over the
	// whole run, changes included; ColdPeakRSS the peak when the cold sync
	// ended (0 in results from before it was recorded).
	PeakRSS     int64 `json:"peak_rss_bytes"`
	ColdPeakRSS int64 `json:"cold_peak_rss_bytes,omitempty"`
	// PeakRSSWithHelpers is the peak RSS the parent saw (getrusage), which
	// also covers processes the agent ran (the nft binary, if used).
	PeakRSSWithHelpers int64 `json:"peak_rss_with_helpers_bytes"`
	// SteadyRSS is the RSS after the changes (bytes): what the agent
	// keeps between full syncs.
	SteadyRSS int64 `json:"steady_rss_bytes"`
	// GoHeapResident is the Go heap's share of SteadyRSS (heap spans
	// obtained from the system and not returned, bytes); the rest is
	// mostly C memory (libnftables, through glibc malloc).
	GoHeapResident int64 `json:"go_heap_resident_bytes"`
	// HeapInuse is the live Go heap at the end, after a collection
	// (bytes), the objects included.
	HeapInuse int64 `json:"heap_inuse_bytes"`
	// TotalUserCPU, TotalSysCPU are the whole child's CPU seconds,
	// generation of the objects included.
	TotalUserCPU float64 `json:"total_user_cpu_seconds"`
	TotalSysCPU  float64 `json:"total_sys_cpu_seconds"`
	// Load is the 1-minute load average before and after.
	LoadBefore float64 `json:"load1_before"`
	LoadAfter  float64 `json:"load1_after"`
}

// Namespaces creates the clusters jobs run in (see datapath.Namespaces).
type Namespaces interface {
	Cluster(ctx context.Context, spec topo.Spec) (c *topo.Cluster, release func(), err error)
}

// ColdRun is one measurement of a cold sync: the fields of Result with the
// same names; PeakRSS is Result.ColdPeakRSS (the peak until the cold sync
// ended).
type ColdRun struct {
	Seconds    float64 `json:"seconds"`
	NFTSeconds float64 `json:"nft_seconds"`
	UserCPU    float64 `json:"user_cpu_seconds"`
	SysCPU     float64 `json:"sys_cpu_seconds"`
	PeakRSS    int64   `json:"peak_rss_bytes"`
}

// coldRun returns r's own cold sync.
func (r *Result) coldRun() ColdRun {
	peak := r.ColdPeakRSS
	if peak == 0 {
		peak = r.PeakRSS
	}
	return ColdRun{Seconds: r.ColdSeconds, NFTSeconds: r.ColdNFTSeconds, UserCPU: r.ColdUserCPU, SysCPU: r.ColdSysCPU, PeakRSS: peak}
}

// ColdRuns returns every measured cold sync: Cold, or for results without
// it the one run the Result describes.
func (r *Result) ColdRuns() []ColdRun {
	if len(r.Cold) > 0 {
		return r.Cold
	}
	return []ColdRun{r.coldRun()}
}

// Run runs each job in a child process inside node-a of a fresh cluster
// and returns the results in order. exe is the binary to re-execute; it
// must call MaybeChild first thing.
func Run(ctx context.Context, ns Namespaces, exe string, jobs []Job, log func(string, ...any)) ([]Result, error) {
	if log == nil {
		log = func(string, ...any) {}
	}
	var out []Result
	for _, j := range jobs {
		log("control plane %s: starting", j.Name)
		r, err := runJob(ctx, ns, exe, j)
		if err != nil {
			return out, fmt.Errorf("control plane %s: %w", j.Name, err)
		}
		log("control plane %s: cold %.3fs (nft %.3fs), %d changes, peak RSS %d MiB (%d MiB until the cold sync ended)",
			j.Name, r.ColdSeconds, r.ColdNFTSeconds, len(r.ChangeLatencies), r.PeakRSS>>20, r.ColdPeakRSS>>20)
		if r.Restart != nil {
			log("control plane %s: restart over existing tables %.3fs (nft %.3fs), peak RSS %d MiB",
				j.Name, r.Restart.Seconds, r.Restart.NFTSeconds, r.Restart.PeakRSS>>20)
		}
		r.Cold = []ColdRun{r.coldRun()}
		for i := 1; i < j.Repeats; i++ {
			cj := j
			cj.Changes, cj.Restart = 0, false
			c, err := runJob(ctx, ns, exe, cj)
			if err != nil {
				return append(out, r), fmt.Errorf("control plane %s, cold sync %d: %w", j.Name, i+1, err)
			}
			log("control plane %s: cold sync %d of %d: %.3fs (nft %.3fs), peak RSS %d MiB",
				j.Name, i+1, j.Repeats, c.ColdSeconds, c.ColdNFTSeconds, c.ColdPeakRSS>>20)
			r.Cold = append(r.Cold, c.coldRun())
		}
		out = append(out, r)
	}
	return out, nil
}

func runJob(ctx context.Context, ns Namespaces, exe string, j Job) (Result, error) {
	c, release, err := ns.Cluster(ctx, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a"}}})
	if err != nil {
		return Result{}, err
	}
	defer release()
	node := c.Nodes[0]
	r, err := runChild(ctx, node, exe, j)
	if err != nil || !j.Restart {
		return r, err
	}
	// The first agent left its tables in place, as it does when it stops.
	rj := j
	rj.Changes, rj.Restart = 0, false
	rr, err := runChild(ctx, node, exe, rj)
	if err != nil {
		return r, fmt.Errorf("restart over existing tables: %w", err)
	}
	restart := rr.coldRun()
	r.Restart = &restart
	return r, nil
}

// runChild runs one child for j in node's namespace.
func runChild(ctx context.Context, node *topo.Node, exe string, j Job) (Result, error) {
	in, err := json.Marshal(childJob{Job: j, NodeAddr: node.Addr.String(), PodCIDR: node.PodCIDR.String()})
	if err != nil {
		return Result{}, err
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", node.NS, exe)
	cmd.Env = append(os.Environ(), ChildEnv+"=controlplane")
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	before := loadAvg()
	if err := cmd.Run(); err != nil {
		return Result{}, fmt.Errorf("child: %w: %s", err, tail(stderr.String()))
	}
	var r Result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		return Result{}, fmt.Errorf("reading the child's result: %w: %s", err, tail(stdout.String()))
	}
	// `ip netns exec` execs the child in place: the process the parent
	// waited for is the child.
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.PeakRSSWithHelpers = ru.Maxrss << 10
	}
	r.TotalUserCPU = cmd.ProcessState.UserTime().Seconds()
	r.TotalSysCPU = cmd.ProcessState.SystemTime().Seconds()
	r.LoadBefore, r.LoadAfter = before, loadAvg()
	return r, nil
}

func tail(s string) string {
	if len(s) > 4000 {
		return "…" + s[len(s)-4000:]
	}
	return s
}

// loadAvg returns the 1-minute load average, 0 when unknown.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	fmt.Sscanf(string(b), "%f", &l)
	return l
}
