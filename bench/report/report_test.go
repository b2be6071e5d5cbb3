package report

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kubenat/kubenat/bench/controlplane"
	"github.com/kubenat/kubenat/bench/datapath"
)

func TestSummarize(t *testing.T) {
	s := Summarize([]float64{5, 1, 3, 2})
	if s.Median != 2.5 || s.Min != 1 || s.Max != 5 || s.N != 4 {
		t.Errorf("Summarize = %+v", s)
	}
	if s := Summarize([]float64{3, 1, 2}); s.Median != 2 {
		t.Errorf("odd median = %v", s.Median)
	}
	if s := Summarize(nil); s != (Stat{}) {
		t.Errorf("empty = %+v", s)
	}
}

func TestPercentileNS(t *testing.T) {
	var xs []int64
	for i := 1; i <= 200; i++ {
		xs = append(xs, int64(i)*1e6)
	}
	if got := PercentileNS(xs, 99); got != 0.198 {
		t.Errorf("p99 of 1..200 ms = %v s, want 0.198", got)
	}
	if got := PercentileNS(xs, 50); got != 0.1 {
		t.Errorf("p50 = %v", got)
	}
	if got := PercentileNS(xs, 100); got != 0.2 {
		t.Errorf("p100 = %v", got)
	}
}

func TestParseMicro(t *testing.T) {
	out := `goos: linux
BenchmarkModelBuild/services=1000-2   	      40	  30149332 ns/op	 4950688 B/op	   21407 allocs/op
BenchmarkModelBuild/services=1000-2   	      40	  30000000 ns/op	 4950688 B/op	   21407 allocs/op
BenchmarkRender/services=1000-2       	     100	  10791787 ns/op	 4754584 B/op	   75371 allocs/op
PASS
`
	ms := ParseMicro(out)
	if len(ms) != 2 || ms[0].Name != "BenchmarkModelBuild/services=1000" || len(ms[0].NsPerOp) != 2 ||
		ms[1].AllocsOp[0] != 75371 {
		t.Errorf("ParseMicro = %+v", ms)
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 50000: "50,000", 1234567: "1,234,567", -1000: "-1,000"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestMergeKeepsEachStagesOrigin: a stage taken from an earlier run keeps
// the origin that run recorded for it, through several merges.
func TestMergeKeepsEachStagesOrigin(t *testing.T) {
	at := func(h int) time.Time { return time.Date(2026, 11, 27, h, 0, 0, 0, time.UTC) }
	only := func(stage string) func(string) bool { return func(s string) bool { return s == stage } }

	full := &Results{Meta: Meta{Started: at(10), Commit: "aaa"}, Datapath: &datapath.Results{},
		ControlPlane: []controlplane.Result{{}}, Micro: []Micro{{}}}
	full.Merge(nil, func(string) bool { return true })
	cp1 := &Results{Meta: Meta{Started: at(11), Commit: "bbb"}, ControlPlane: []controlplane.Result{{}}}
	cp1.Merge(full, only(StageControlPlane))
	cp2 := &Results{Meta: Meta{Started: at(12), Commit: "ccc"}, ControlPlane: []controlplane.Result{{}}}
	cp2.Merge(cp1, only(StageControlPlane))

	want := map[string]StageOrigin{
		StageMicro: {at(10), "aaa"}, StageDatapath: {at(10), "aaa"}, StageControlPlane: {at(12), "ccc"},
	}
	if !reflect.DeepEqual(cp2.Meta.Stages, want) {
		t.Errorf("stages %v, want %v", cp2.Meta.Stages, want)
	}
	if cp2.Datapath == nil || len(cp2.Micro) != 1 {
		t.Error("the merged stages' results were not taken")
	}
	if got := cp2.Meta.Merged; !strings.Contains(got, "datapath from the run of 2026-11-27 10:00 UTC (commit aaa)") || strings.Contains(got, "bbb") {
		t.Errorf("Merged = %q", got)
	}
}
