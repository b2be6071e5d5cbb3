package apiservertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// KubernetesVersion is the kube-apiserver release the helpers run. It must
// match tools/apiserver/go.mod and scripts/build-apiserver.sh.
const KubernetesVersion = "v1.37.2"

// Environment variables read by Start.
const (
	// envBinDir names a directory holding kube-apiserver and etcd. When set,
	// only that directory is used and nothing is built.
	envBinDir = "KUBENAT_APISERVER_BIN_DIR"
	// envToolsCache overrides the cache root ($HOME/.cache/kubenat) that
	// scripts/build-apiserver.sh fills.
	envToolsCache = "KUBENAT_TOOLS_CACHE"
	// envBuild controls building missing binaries: "1"/"true" builds,
	// "0"/"false" never builds; unset builds only when CI=true.
	envBuild = "KUBENAT_APISERVER_BUILD"
	// envCI is "true" in CI, where a missing apiserver fails instead of
	// skipping.
	envCI = "CI"
)

const buildScript = "scripts/build-apiserver.sh"

// ErrBinariesNotFound is wrapped by the error Start returns when the
// binaries are missing and neither building nor skipping applies.
var ErrBinariesNotFound = errors.New("kube-apiserver and etcd binaries not found")

// cacheBinDir returns the directory scripts/build-apiserver.sh fills:
// ${KUBENAT_TOOLS_CACHE:-$HOME/.cache/kubenat}/k8s-<version>/bin.
func cacheBinDir() (string, error) {
	root := os.Getenv(envToolsCache)
	if root == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("locate tools cache: %w", err)
		}
		root = filepath.Join(home, ".cache", "kubenat")
	}
	return filepath.Join(root, "k8s-"+KubernetesVersion, "bin"), nil
}

// haveBinaries reports whether dir holds executable kube-apiserver and etcd
// files. It does not run them.
func haveBinaries(dir string) bool {
	for _, name := range []string{"kube-apiserver", "etcd"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// locateBinaries returns the directory holding kube-apiserver and etcd.
//
// Order: opts.BinDir, then $KUBENAT_APISERVER_BIN_DIR (an explicit directory
// that lacks the binaries is an error), then the build cache. When the cache
// is empty it builds them with scripts/build-apiserver.sh if envBuild allows
// (the default in CI); otherwise, outside CI, it skips the test through tb, and
// in CI (or with a nil tb) it returns an error wrapping ErrBinariesNotFound.
func locateBinaries(ctx context.Context, tb testing.TB, explicit string) (string, error) {
	if tb != nil {
		tb.Helper()
	}
	if explicit == "" {
		explicit = os.Getenv(envBinDir)
	}
	if explicit != "" {
		if !haveBinaries(explicit) {
			return "", fmt.Errorf("%w in %s (set by Options.BinDir or $%s)", ErrBinariesNotFound, explicit, envBinDir)
		}
		return explicit, nil
	}

	dir, err := cacheBinDir()
	if err != nil {
		return "", err
	}
	if haveBinaries(dir) {
		return dir, nil
	}

	inCI := os.Getenv(envCI) == "true"
	build := inCI
	switch strings.ToLower(os.Getenv(envBuild)) {
	case "1", "true", "yes":
		build = true
	case "0", "false", "no":
		build = false
	}
	if build {
		if tb != nil {
			tb.Logf("apiservertest: %s is empty; building kube-apiserver %s with %s (cold: ~7 min)", dir, KubernetesVersion, buildScript)
		}
		built, err := runBuildScript(ctx)
		if err != nil {
			return "", err
		}
		if !haveBinaries(built) {
			return "", fmt.Errorf("%w in %s after running %s", ErrBinariesNotFound, built, buildScript)
		}
		return built, nil
	}

	msg := fmt.Sprintf("%v in %s; build them with %s (~7 min once; cached), set $%s=1 to build from the test, or point $%s at them",
		ErrBinariesNotFound, dir, buildScript, envBuild, envBinDir)
	if inCI || tb == nil {
		return "", fmt.Errorf("%w in %s (CI=%q, %s=%q); run %s", ErrBinariesNotFound, dir, os.Getenv(envCI), envBuild, os.Getenv(envBuild), buildScript)
	}
	tb.Skip("apiservertest: " + msg)
	return "", nil // unreachable: Skip ends the test goroutine.
}

// runBuildScript runs scripts/build-apiserver.sh from the enclosing checkout
// and returns the bin directory it prints. The script serialises concurrent
// builds with a lock file, so parallel test binaries wait for one build.
// Cancelling ctx kills the script's whole process group; if the test process
// dies instead, the build finishes in the background and fills the cache.
func runBuildScript(ctx context.Context) (string, error) {
	script, err := findBuildScript()
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("run %s: %w\n%s", script, err, stderr.String())
	}
	dir := strings.TrimSpace(stdout.String())
	if dir == "" {
		return "", fmt.Errorf("run %s: printed no directory\n%s", script, stderr.String())
	}
	return dir, nil
}

// findBuildScript walks up from the working directory (a package directory
// under `go test`) to the checkout that contains scripts/build-apiserver.sh.
func findBuildScript() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find %s: %w", buildScript, err)
	}
	for dir := wd; ; {
		p := filepath.Join(dir, buildScript)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find %s: not found above %s", buildScript, wd)
		}
		dir = parent
	}
}
