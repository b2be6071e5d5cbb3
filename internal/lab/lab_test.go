package lab

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/netnstest"
)

// logWriter sends the lab's progress to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestLab builds the lab with the real kubenat binary on both nodes, runs
// the seed's pipelines and requires every check to pass, then requires
// that no namespace is left; with the default datapath and with iptables.
func TestLab(t *testing.T) {
	for _, datapath := range []string{"", "iptables"} {
		t.Run("datapath="+datapath, func(t *testing.T) { labTest(t, datapath) })
	}
}

func labTest(t *testing.T, datapath string) {
	netnstest.Require(t)
	bin := netnstest.KubenatBinary(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	l, err := Up(ctx, Options{Binary: bin, Log: logWriter{t}, Datapath: datapath})
	if err != nil {
		t.Fatal(err)
	}
	prefix := l.Prefix
	defer func() {
		if err := l.Down(); err != nil {
			t.Errorf("Down: %v", err)
		}
		out, _ := exec.Command("ip", "netns", "list").Output()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, prefix) {
				t.Errorf("namespace left after Down: %s", line)
			}
		}
	}()

	rep, err := Run(ctx, &l.Topology)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !rep.OK {
		t.Errorf("the lab's checks failed:\n%s", text.String())
	}
	if len(rep.Pipelines) != 5 {
		t.Errorf("%d pipelines, want 5", len(rep.Pipelines))
	}
	for _, p := range rep.Pipelines {
		if len(p.Checks) == 0 || len(p.Flows) == 0 {
			t.Errorf("pipeline %d (%s) has no flows or checks", p.N, p.Title)
		}
	}
	for _, want := range []string{
		"DNAT dst 192.0.2.80:80 → 192.168.100.11:30080", // the load balancer's DNAT
		"SNAT src 10.244.1.11:",                         // egress MASQUERADE
		"return path (conntrack, original | reply):",
		"[kernel agrees]",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, text.String())
		}
	}
}
