package kernel

import (
	"encoding/json"
	"errors"
	"os/exec"
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
}
