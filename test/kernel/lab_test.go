package kernel

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/kubenat/kubenat/internal/lab"
	"github.com/kubenat/kubenat/internal/netnstest"
)

// TestLabUpDown drives the lab's exploration mode through the binary:
// lab up leaves a lab running in the background, lab status and lab exec
// reach it, lab run checks the pipelines against it, and lab down removes
// every namespace and the background process.
func TestLabUpDown(t *testing.T) {
	netnstest.Require(t)
	bin := netnstest.KubenatBinary(t)
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(t.Context(), bin, append(args, "--state-dir", dir)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("lab", "up", "--json")
	if err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	var top lab.Topology
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &top); err != nil {
		t.Fatalf("lab up --json: %v\n%s", err, out)
	}
	down := func() {
		if out, err := run("lab", "down"); err != nil {
			t.Errorf("lab down: %v\n%s", err, out)
		}
	}
	defer func() {
		if top.Alive() {
			down()
		}
	}()

	if out, err := run("lab", "up"); err == nil || !strings.Contains(out, "already up") {
		t.Errorf("a second lab up: %v\n%s", err, out)
	}
	if out, err := run("lab", "status"); err != nil || !strings.Contains(out, top.Host("node-a").NS) {
		t.Errorf("lab status: %v\n%s", err, out)
	}
	// lab exec runs in the host's namespace and returns the command's status.
	nftOut, err := exec.Command(bin, "lab", "exec", "--state-dir", dir, "node-a", "--", "nft", "list", "table", "ip", "kubenat").CombinedOutput()
	if err != nil || !strings.Contains(string(nftOut), "chain nat-prerouting") {
		t.Errorf("lab exec node-a nft: %v\n%s", err, nftOut)
	}
	err = exec.Command(bin, "lab", "exec", "--state-dir", dir, "cli-a", "--", "sh", "-c", "exit 7").Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("lab exec exit status: %v, want 7", err)
	}
	if out, err := run("lab", "run"); err != nil || !strings.Contains(out, "all 5 pipelines behaved") {
		t.Errorf("lab run: %v\n%s", err, out)
	}

	down()
	if top.Alive() {
		t.Errorf("the lab process %d still runs after lab down", top.PID)
		_ = syscall.Kill(top.PID, syscall.SIGKILL)
	}
	list, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(list), "\n") {
		if strings.HasPrefix(line, top.Prefix) {
			t.Errorf("namespace left after lab down: %s", line)
		}
	}
	if out, err := run("lab", "status"); err == nil || !strings.Contains(out, "no lab is up") {
		t.Errorf("lab status after down: %v\n%s", err, out)
	}
	// Taking down what is not up succeeds.
	if out, err := run("lab", "down"); err != nil || !strings.Contains(out, "no lab is up; nothing to remove") {
		t.Errorf("lab down without a lab: %v\n%s", err, out)
	}
}

// TestLabInterrupted interrupts kubenat lab (SIGINT, as Ctrl-C does) while
// it builds the cluster and while it runs the pipelines, and requires that
// it exits with everything it created removed.
func TestLabInterrupted(t *testing.T) {
	netnstest.Require(t)
	bin := netnstest.KubenatBinary(t)
	for _, at := range []string{"lab: starting kubenat agent on node-a", "lab: the lab is up"} {
		t.Run(at, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), bin, "lab")
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			prefix := fmt.Sprintf("kl%d-", cmd.Process.Pid)
			var log strings.Builder
			var pids []int // processes in the lab's namespaces when interrupted
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				log.WriteString(sc.Text() + "\n")
				if sc.Text() == at {
					pids = nsPids(prefix)
					_ = cmd.Process.Signal(syscall.SIGINT)
				}
			}
			err = cmd.Wait()
			if err == nil && !strings.Contains(log.String(), "interrupted") {
				// It may finish before the signal lands; then it must have
				// cleaned up normally.
				t.Logf("the lab finished before the interruption:\n%s", log.String())
			}
			list, _ := exec.Command("ip", "netns", "list").Output()
			for _, line := range strings.Split(string(list), "\n") {
				if strings.HasPrefix(line, prefix) {
					t.Errorf("namespace left after the interruption: %s\n%s", line, log.String())
				}
			}
			t.Logf("%d processes ran in the lab's namespaces when interrupted", len(pids))
			for _, pid := range pids {
				if syscall.Kill(pid, 0) == nil {
					t.Errorf("process %d of the lab's namespaces still runs", pid)
				}
			}
		})
	}
}

// nsPids returns the processes running in the namespaces whose name starts
// with prefix.
func nsPids(prefix string) []int {
	var pids []int
	list, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(list), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], prefix) {
			continue
		}
		out, _ := exec.Command("ip", "netns", "pids", f[0]).Output()
		for _, p := range strings.Fields(string(out)) {
			if n, err := strconv.Atoi(p); err == nil {
				pids = append(pids, n)
			}
		}
	}
	return pids
}
