// Package netnstest is the kernel test harness: it builds topo clusters in
// network namespaces for a test, runs kubenat inside them, and removes every
// namespace it created when the test ends, also when it fails or the test
// binary is interrupted (SIGINT/SIGTERM).
//
// Kernel tests need root, iproute2 and nftables. When they are missing the
// test is skipped, except under CI (CI=true), where it fails.
package netnstest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/bpfsandbox"
	"github.com/kubenat/kubenat/internal/topo"
)

// Require skips (or under CI fails) the test when kernel tests cannot run
// here.
func Require(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "kernel test needs " + strings.Join(missing, ", ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: kernel tests must run)")
	}
	t.Skip(msg)
}

// live tracks the clusters of this process for the signal handler: the
// interruption of a test binary is process-wide by nature.
var live = struct {
	sync.Mutex
	removers map[int]func() // what to delete on interruption, by prefix number
	seq      int
	once     sync.Once
}{removers: map[int]func(){}}

func handleSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-ch
		live.Lock()
		for _, remove := range live.removers {
			remove()
		}
		live.Unlock()
		fmt.Fprintf(os.Stderr, "netnstest: %v: removed the test namespaces\n", sig)
		os.Exit(2)
	}()
}

// reserve returns a new namespace-name prefix of this process ("kt<pid>x<n>-")
// and its number, after checking kernel tests can run and (once) sweeping
// namespaces of dead test processes.
func reserve(t testing.TB) (string, int) {
	t.Helper()
	Require(t)
	live.once.Do(func() {
		topo.RemoveStale("kt")
		handleSignals()
	})
	live.Lock()
	defer live.Unlock()
	live.seq++
	return fmt.Sprintf("kt%dx%d-", os.Getpid(), live.seq), live.seq
}

// onInterrupt registers remove to run if the test binary is interrupted,
// until the returned function unregisters it.
func onInterrupt(n int, remove func()) (done func()) {
	live.Lock()
	live.removers[n] = remove
	live.Unlock()
	return func() {
		live.Lock()
		delete(live.removers, n)
		live.Unlock()
	}
}

// NewCluster builds spec for the test and removes it when the test ends.
func NewCluster(t testing.TB, spec topo.Spec) *topo.Cluster {
	t.Helper()
	prefix, n := reserve(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := topo.Build(ctx, prefix, spec)
	if err != nil {
		t.Fatalf("building the test cluster: %v", err)
	}
	unregister := onInterrupt(n, func() { _ = c.Destroy() })
	t.Cleanup(func() {
		unregister()
		if err := c.Destroy(); err != nil {
			t.Errorf("removing the test namespaces: %v", err)
		}
	})
	return c
}

var kubenatBin = struct {
	once sync.Once
	path string
	err  error
}{}

// KubenatBinary builds cmd/kubenat once per test process and returns its
// path, in a temporary directory named for the process
// ("kubenat-bin-<pid>-*"). A test process cannot remove it when it ends,
// so each build first removes those of processes that no longer exist.
func KubenatBinary(t testing.TB) string {
	t.Helper()
	kubenatBin.once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		removeStaleBinaries()
		dir, err := os.MkdirTemp("", fmt.Sprintf("kubenat-bin-%d-", os.Getpid()))
		if err != nil {
			kubenatBin.err = err
			return
		}
		kubenatBin.path = filepath.Join(dir, "kubenat")
		cmd := exec.Command("go", "build", "-o", kubenatBin.path, "./cmd/kubenat")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			kubenatBin.err = fmt.Errorf("building kubenat: %v: %s", err, out)
		}
	})
	if kubenatBin.err != nil {
		t.Fatal(kubenatBin.err)
	}
	return kubenatBin.path
}

// removeStaleBinaries removes the directories KubenatBinary made for
// processes that no longer exist.
func removeStaleBinaries() { topo.RemoveStaleTempDirs("kubenat-bin-") }

// Kubenat runs the kubenat binary with args inside h's namespace and
// returns its combined output.
func Kubenat(t testing.TB, h *topo.Host, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, KubenatBinary(t)}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Process is a long-running kubenat inside a namespace.
type Process struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

// StartKubenat starts the kubenat binary with args inside h's namespace.
// It is killed when the test ends, if still running.
func StartKubenat(t testing.TB, h *topo.Host, args ...string) *Process {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, KubenatBinary(t)}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &Process{cmd: cmd, out: &lockedBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting kubenat in %s: %v", h.Name, err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("kubenat in %s said:\n%s", h.Name, p.out.String())
		}
	})
	return p
}

// Stop sends SIGTERM and waits up to timeout for the process to exit,
// returning its exit error.
func (p *Process) Stop(timeout time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(timeout):
		return fmt.Errorf("kubenat did not exit within %v of SIGTERM", timeout)
	}
}

// Output returns what the process printed so far.
func (p *Process) Output() string { return p.out.String() }

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// NewNamespace creates one bare network namespace (loopback up) for the
// test and removes it when the test ends.
func NewNamespace(t testing.TB) string {
	t.Helper()
	prefix, n := reserve(t)
	name := prefix + "ns"
	remove := func() error { return exec.Command("ip", "netns", "delete", name).Run() }
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("creating namespace %s: %v: %s", name, err, out)
	}
	unregister := onInterrupt(n, func() { _ = remove() })
	t.Cleanup(func() {
		unregister()
		if err := remove(); err != nil {
			t.Errorf("deleting namespace %s: %v", name, err)
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("in %s: %v: %s", name, err, out)
	}
	return name
}

// NSRunner applies nft scripts inside a named namespace with the nft
// binary (ip netns exec NS nft -f -).
type NSRunner struct{ NS string }

// Name describes the runner.
func (r NSRunner) Name() string { return "nft in " + r.NS }

// Run pipes script to nft inside the namespace.
func (r NSRunner) Run(ctx context.Context, script string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", r.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("nft in %s: %w: %s\nscript:\n%s", r.NS, err, out, script)
	}
	return string(out), nil
}

// SocketLBSandbox moves the test process into a cgroup of its own and
// mounts a bpf file system for it (see bpfsandbox), so that the socket
// load balancer can be attached to the test's own cgroup and pinned
// without reaching any other process of the machine. It returns the
// cgroup's directory, as seen from inside the test's namespaces too (in a
// view of the cgroup hierarchy mounted for the test), and the bpf file
// system's mount point. All is removed when the test ends (after the
// processes the test started are stopped, if they were started after this
// call) or when the binary is interrupted. Processes the test starts
// afterwards inherit the cgroup.
func SocketLBSandbox(t testing.TB) (cgroup, bpffs string) {
	t.Helper()
	_, n := reserve(t)
	bpfsandbox.RemoveStale("kubenat-t")
	var undo []func() error
	remove := func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		return errors.Join(errs...)
	}
	fail := func(err error) {
		_ = remove()
		t.Fatalf("socket LB sandbox: %v", err)
	}
	cg, err := bpfsandbox.NewCgroup("kubenat-t")
	if err != nil {
		fail(err)
	}
	undo = append(undo, cg.Remove)
	view, err := bpfsandbox.NewCgroupView("kubenat-t")
	if err != nil {
		fail(err)
	}
	undo = append(undo, view.Remove)
	fs, err := bpfsandbox.NewBPFFS("kubenat-t")
	if err != nil {
		fail(err)
	}
	undo = append(undo, fs.Remove)
	unregister := onInterrupt(n, func() { _ = remove() })
	t.Cleanup(func() {
		unregister()
		if err := remove(); err != nil {
			t.Errorf("removing the socket LB sandbox: %v", err)
		}
	})
	return filepath.Join(view.Dir, cg.Rel), fs.Dir
}
