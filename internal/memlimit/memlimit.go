// Package memlimit sets the Go runtime's memory knobs for the agent: a
// garbage-collection target below Go's default (SetGCPercent), and a soft
// memory limit derived from the memory limit of the container (cgroup) the
// process runs in (Apply), so that near the limit the collector works
// harder instead of the kernel killing the process. A full sync briefly
// needs more than the agent's live heap (the collector's headroom), which
// is what a limit set for the steady state would otherwise not survive.
package memlimit

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// Fraction of the cgroup's limit given to the Go runtime. The rest is for
// memory the runtime does not manage: libnftables parsing a transaction
// (~70 MiB during a full sync at 50,000 Services), glibc, the binary.
const Fraction = 0.8

// GCPercent is the agent's garbage-collection target (GOGC): the heap may
// grow 50 % over the live data between collections, instead of Go's
// default 100 %. The agent's live data is large and stable (the objects and
// the model) and it allocates in bursts (full syncs): at 50,000 Services ×
// 5 endpoints this lowers the peak RSS by ~17 % for ~15 % more CPU during a
// full sync (docs/benchmarks.md), and costs nothing measurable otherwise.
const GCPercent = 50

// SetGCPercent sets GCPercent unless the GOGC environment variable chose a
// value, and returns the percentage in effect.
func SetGCPercent() int {
	if v := os.Getenv("GOGC"); v != "" {
		p := debug.SetGCPercent(-1)
		debug.SetGCPercent(p)
		return p
	}
	debug.SetGCPercent(GCPercent)
	return GCPercent
}

// noLimit is the smallest value treated as "no limit": cgroup v1 reports
// an unlimited group as a page-rounded maximum int64.
const noLimit = 1 << 62

// Apply sets the runtime's soft memory limit to Fraction of the limit of
// the process's cgroup and returns it with the cgroup limit it was derived
// from. It changes nothing, returning 0, when GOMEMLIMIT is set (the
// runtime already honours it), when the cgroup has no limit, or when it
// cannot be read (err says why; that is not fatal).
func Apply() (soft, cgroup int64, err error) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, 0, nil
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, 0, fmt.Errorf("reading the process's cgroup: %w", err)
	}
	cgroup, err = CgroupLimit("/sys/fs/cgroup", string(self))
	if err != nil || cgroup == 0 {
		return 0, 0, err
	}
	soft = int64(float64(cgroup) * Fraction)
	debug.SetMemoryLimit(soft)
	return soft, cgroup, nil
}

// CgroupLimit returns the memory limit in bytes of the cgroup that
// selfCgroup (the content of /proc/self/cgroup) names, read under root
// (normally /sys/fs/cgroup); 0 means no limit. It reads cgroup v2's
// memory.max, else cgroup v1's memory.limit_in_bytes; in each it tries
// the process's own group, then the root of the hierarchy (inside a
// container with its own cgroup namespace the two are the same group, but
// the path /proc shows may not exist in the container's mount).
func CgroupLimit(root, selfCgroup string) (int64, error) {
	var v1Path, v2Path string
	v2 := false
	for _, line := range strings.Split(selfCgroup, "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[0] == "0" && f[1] == "":
			v2, v2Path = true, f[2]
		case hasController(f[1], "memory"):
			v1Path = f[2]
		}
	}
	var candidates []string
	if v1Path != "" {
		candidates = append(candidates,
			filepath.Join(root, "memory", v1Path, "memory.limit_in_bytes"),
			filepath.Join(root, "memory", "memory.limit_in_bytes"))
	} else if v2 {
		candidates = append(candidates, filepath.Join(root, v2Path, "memory.max"), filepath.Join(root, "memory.max"))
	}
	for _, file := range candidates {
		b, err := os.ReadFile(file)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("reading the memory limit: %w", err)
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("reading the memory limit: %s holds %q, not a number of bytes", file, s)
		}
		if n >= noLimit {
			return 0, nil
		}
		return n, nil
	}
	return 0, nil
}

func hasController(list, name string) bool {
	for _, c := range strings.Split(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}
