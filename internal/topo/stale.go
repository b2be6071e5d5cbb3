package topo

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ProcessAlive reports whether a process with this pid exists.
func ProcessAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// OwnerGone reports whether name is tag followed by the pid of a process
// that no longer exists and is not this one ("kt1234x5-node-a", tag "kt"):
// something a killed process named after itself and left behind.
func OwnerGone(name, tag string) bool {
	rest, ok := strings.CutPrefix(name, tag)
	if !ok {
		return false
	}
	end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(rest)
	}
	pid, err := strconv.Atoi(rest[:end])
	return err == nil && pid != os.Getpid() && !ProcessAlive(pid)
}

// RemoveStale deletes the namespaces whose names start with tag followed by
// the pid of a process that no longer exists ("kt1234x5-node-a" for tag
// "kt": left by a test, lab or benchmark killed with SIGKILL), and returns
// their names. Namespaces of other forms, and of live processes, are left
// alone.
func RemoveStale(tag string) []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var removed []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !OwnerGone(f[0], tag) {
			continue
		}
		if exec.Command("ip", "netns", "delete", f[0]).Run() == nil {
			removed = append(removed, f[0])
		}
	}
	return removed
}

// RemoveStaleTempDirs deletes the directories of the temporary directory
// named tag, the pid of a process that no longer exists, a dash and
// anything ("kubenat-lab-1234-567" for tag "kubenat-lab-": made with
// os.MkdirTemp by a process killed before it could remove it), and
// returns their paths. Names without the pid and its dash (an older
// form) are left alone: their suffix is not a pid.
func RemoveStaleTempDirs(tag string) []string {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tag+"*-*"))
	var removed []string
	for _, d := range dirs {
		if OwnerGone(filepath.Base(d), tag) && os.RemoveAll(d) == nil {
			removed = append(removed, d)
		}
	}
	return removed
}
