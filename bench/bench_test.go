package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubenat/kubenat/bench/controlplane"
	"github.com/kubenat/kubenat/bench/datapath"
	"github.com/kubenat/kubenat/bench/report"
	"github.com/kubenat/kubenat/bench/workload"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

func TestMain(m *testing.M) {
	// The control-plane stage re-executes this test binary as its child.
	controlplane.MaybeChild()
	os.Exit(m.Run())
}

// testNamespaces builds clusters through the kernel test harness, which
// removes them when the test ends (also on failure or interruption).
type testNamespaces struct{ t *testing.T }

func (n testNamespaces) Cluster(_ context.Context, spec topo.Spec) (*topo.Cluster, func(), error) {
	c := netnstest.NewCluster(n.t, spec)
	return c, func() { _ = c.Destroy() }, nil
}

// TestSmoke runs the datapath and control-plane stages at a tiny scale and
// writes the report, so that the suite cannot rot. The microbenchmarks
// have their own test (bench/micro).
func TestSmoke(t *testing.T) {
	netnstest.Require(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Stages: []string{StageControlPlane, StageDatapath},
		Datapath: datapath.Options{
			Sizes: []int{20}, Repeats: 1,
			Warmup: 50 * time.Millisecond, Duration: 200 * time.Millisecond,
			ThroughputDuration: 200 * time.Millisecond, LoadTimeout: time.Minute,
		},
		ControlPlane: []controlplane.Job{
			{Name: "20 × 2", Workload: workload.Spec{Services: 20, Endpoints: 2, NodePortEvery: 5}, Changes: 4,
				Interval: 5 * time.Millisecond, Seed: 1, Repeats: 2, Restart: true},
			{Name: "1 × 300", Workload: workload.Spec{Services: 1, Endpoints: 300}, Changes: 2,
				Interval: 5 * time.Millisecond, Seed: 1},
		},
		Exe: exe, RepoDir: ".", Log: t.Logf,
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, testNamespaces{t}, o)
	if err != nil {
		t.Fatal(err)
	}

	d := res.Datapath
	for _, rs := range []string{datapath.Kubenat, datapath.KubenatTen, datapath.KubenatSocketLB, datapath.KubenatSocketLBTen,
		datapath.KubenatSocketLBUntracked, datapath.KubenatSocketLBUntrackedTen, datapath.KubenatTCNAT, datapath.KubenatTCNATTen,
		datapath.KubenatEBPF, datapath.KubenatEBPFTen, datapath.Floor, datapath.IPTablesNFT, datapath.IPTablesLegacy} {
		for _, p := range []string{datapath.PodToClusterIP, datapath.ExternalToNodePort, datapath.PodToPodIP} {
			// The references measure the Service paths; the balancer's
			// and the tc NAT's, only the one each serves.
			switch {
			case !datapath.IsTen(rs) || rs == datapath.KubenatTen && p != datapath.PodToPodIP:
			case rs == datapath.KubenatTCNATTen && p == datapath.ExternalToNodePort:
			case rs == datapath.KubenatEBPFTen && p != datapath.PodToPodIP:
			case rs != datapath.KubenatTCNATTen && rs != datapath.KubenatTen && rs != datapath.KubenatEBPFTen && p == datapath.PodToClusterIP:
			default:
				continue
			}
			pt := d.Find(rs, p, 20)
			if pt == nil || len(pt.Samples) != 1 || pt.Samples[0].Conns == 0 {
				t.Errorf("%s, %s: no connections measured: %+v", rs, p, pt)
			}
		}
	}
	// The balancer sends the pod's connects straight to the servers;
	// untracked, nothing tracks them.
	for _, rs := range []string{datapath.KubenatSocketLBUntracked, datapath.KubenatSocketLBUntrackedTen, datapath.KubenatEBPF, datapath.KubenatEBPFTen} {
		if pt := d.Find(rs, datapath.PodToClusterIP, 20); pt != nil && len(pt.Samples) == 1 && pt.Samples[0].Conntrack != 0 {
			t.Errorf("%s, %s: node-a tracked %d connections, want 0", rs, datapath.PodToClusterIP, pt.Samples[0].Conntrack)
		}
	}
	// The tc NAT translates the external client's connections before
	// netfilter: nothing tracks them.
	for _, rs := range []string{datapath.KubenatTCNAT, datapath.KubenatTCNATTen, datapath.KubenatEBPF, datapath.KubenatEBPFTen} {
		if pt := d.Find(rs, datapath.ExternalToNodePort, 20); pt != nil && len(pt.Samples) == 1 && pt.Samples[0].Conntrack != 0 {
			t.Errorf("%s, %s: node-a tracked %d connections, want 0", rs, datapath.ExternalToNodePort, pt.Samples[0].Conntrack)
		}
	}
	if pt := d.Find(datapath.KubenatSocketLB, datapath.PodToClusterIP, 20); pt != nil && len(pt.Samples) == 1 && pt.Samples[0].Conntrack == 0 {
		t.Errorf("%s, %s: node-a tracked no connection; the balancer alone keeps conntrack", datapath.KubenatSocketLB, datapath.PodToClusterIP)
	}
	for _, p := range []string{datapath.PodToPodIP, datapath.ExternalToPodIP, datapath.PodToPodIPs, datapath.ExternalToPodIPs} {
		pt := d.Find(datapath.None, p, 20)
		if pt == nil || len(pt.Samples) != 1 || pt.Samples[0].Conns == 0 {
			t.Errorf("no ruleset, %s: no connections measured: %+v", p, pt)
		} else if ct := pt.Samples[0].Conntrack; ct != 0 {
			t.Errorf("no ruleset, %s: %d conntrack entries: the baseline is not free of connection tracking", p, ct)
		}
	}
	if len(d.Throughputs) == 0 {
		t.Error("no throughput measured")
	}
	for _, tp := range d.Throughputs {
		if len(tp.Samples) != 1 || tp.Samples[0] <= 0 {
			t.Errorf("throughput %s, %s: %v", tp.Ruleset, tp.Path, tp.Samples)
		}
	}

	if len(res.ControlPlane) != 2 {
		t.Fatalf("%d control-plane results, want 2", len(res.ControlPlane))
	}
	for _, c := range res.ControlPlane {
		if c.ColdSeconds <= 0 || c.PeakRSS <= 0 || len(c.ChangeLatencies) != c.Job.Changes {
			t.Errorf("control plane %s: cold %.3fs, peak RSS %d, %d of %d changes", c.Job.Name, c.ColdSeconds, c.PeakRSS,
				len(c.ChangeLatencies), c.Job.Changes)
		}
		if c.ChangeFullSyncs != 0 {
			t.Errorf("control plane %s: %d changes needed a full resync", c.Job.Name, c.ChangeFullSyncs)
		}
		if want := max(c.Job.Repeats, 1); len(c.Cold) != want {
			t.Errorf("control plane %s: %d cold syncs measured, want %d", c.Job.Name, len(c.Cold), want)
		}
		for i, r := range c.Cold {
			if r.Seconds <= 0 || r.PeakRSS <= 0 {
				t.Errorf("control plane %s: cold sync %d: %+v", c.Job.Name, i+1, r)
			}
		}
		if rs := c.Restart; (rs != nil) != c.Job.Restart || (rs != nil && (rs.Seconds <= 0 || rs.PeakRSS <= 0)) {
			t.Errorf("control plane %s: restart %+v, want one measured: %v", c.Job.Name, rs, c.Job.Restart)
		}
	}

	dir := t.TempDir()
	if err := report.Write(dir, res); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "benchmarks.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Datapath", "## Control plane", "pod → ClusterIP", "bench/datapath-rate-pod.png"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("benchmarks.md lacks %q", want)
		}
	}
	for _, f := range []string{"datapath-rate-pod.png", "datapath-latency-external.png", "datapath-throughput.png", "controlplane-change.png", "results.json"} {
		if st, err := os.Stat(filepath.Join(dir, "bench", f)); err != nil || st.Size() == 0 {
			t.Errorf("bench/%s not written: %v", f, err)
		}
	}
}
