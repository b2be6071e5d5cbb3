// Package bpfsandbox gives a test or a benchmark a cgroup and a BPF file
// system of its own, so that cgroup BPF programs (kubenat's socket load
// balancer) can be attached and pinned without reaching any process of the
// machine but the caller and its children.
//
// Cgroup moves the calling process into a new cgroup v2 directory below
// its own; BPFFS mounts a bpf file system on a new directory under the
// temporary directory. Both are undone by their Remove, also after a
// failure; RemoveStale sweeps what a killed process left behind. Nothing
// here touches a network namespace.
package bpfsandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kubenat/kubenat/internal/topo"
)

// Cgroup is a cgroup v2 directory the calling process was moved into.
type Cgroup struct {
	// Path is the cgroup's directory: the cgroup to attach programs to.
	Path string
	// Rel is its path in the cgroup v2 hierarchy, relative to the root.
	Rel  string
	home string // the process's cgroup before
}

// NewCgroup creates the cgroup "<tag><pid>" below the calling process's
// cgroup v2 and moves the process (all its threads) into it. Processes
// started afterwards inherit it.
func NewCgroup(tag string) (*Cgroup, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	self, err := ownCgroup()
	if err != nil {
		return nil, err
	}
	home := filepath.Join(mnt, self)
	rel := filepath.Join(self, tag+strconv.Itoa(os.Getpid()))
	c := &Cgroup{Path: filepath.Join(mnt, rel), Rel: rel, home: home}
	if err := os.Mkdir(c.Path, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("creating cgroup %s: %w", c.Path, err)
	}
	if err := moveSelf(c.Path); err != nil {
		os.Remove(c.Path)
		return nil, err
	}
	return c, nil
}

// Remove moves the process back to its cgroup and removes the cgroup.
// Programs attached to it go with it.
func (c *Cgroup) Remove() error {
	if err := moveSelf(c.home); err != nil {
		return err
	}
	if err := os.Remove(c.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing cgroup %s: %w", c.Path, err)
	}
	return nil
}

func moveSelf(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return fmt.Errorf("moving process %d into cgroup %s: %w", os.Getpid(), dir, err)
	}
	return nil
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "id parent major:minor root mountpoint options ... - fstype source super"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields := strings.Fields(pre)
		if len(fields) >= 5 && strings.HasPrefix(post, "cgroup2 ") {
			return fields[4], nil
		}
	}
	return "", errors.New("no cgroup v2 file system is mounted")
}

// ownCgroup returns the calling process's cgroup v2 path ("0::/path").
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("the process has no cgroup v2 membership")
}

// Mount is a file system mounted for the caller.
type Mount struct {
	// Dir is the mount point.
	Dir string
}

// NewBPFFS mounts a bpf file system on a new directory "<tag><pid>-*"
// under the temporary directory.
func NewBPFFS(tag string) (*Mount, error) { return mount(tag, "bpf", "mode=0700") }

// NewCgroupView mounts the cgroup v2 hierarchy again on a new directory
// "<tag><pid>-*" under the temporary directory: a view of the cgroups
// that processes entering a network namespace with "ip netns exec" (which
// mounts a fresh /sys) still see. A Cgroup is at Dir/Cgroup.Rel in it.
func NewCgroupView(tag string) (*Mount, error) { return mount(tag, "cgroup2", "") }

func mount(tag, fstype, data string) (*Mount, error) {
	dir, err := os.MkdirTemp("", tag+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, err
	}
	if err := unix.Mount(fstype, dir, fstype, 0, data); err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("mounting a %s file system on %s: %w", fstype, dir, err)
	}
	return &Mount{Dir: dir}, nil
}

// Remove unmounts the file system (everything pinned in a bpf file system
// is released) and removes its directory.
func (m *Mount) Remove() error {
	if err := unix.Unmount(m.Dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmounting %s: %w", m.Dir, err)
	}
	return os.Remove(m.Dir)
}

// RemoveStale removes the cgroups and bpf file systems that NewCgroup and
// NewBPFFS made with tag for processes that no longer exist, and returns
// their paths.
func RemoveStale(tag string) []string {
	var removed []string
	if mnt, err := cgroup2Mount(); err == nil {
		if self, err := ownCgroup(); err == nil {
			home := filepath.Join(mnt, self)
			entries, _ := os.ReadDir(home)
			for _, e := range entries {
				if e.IsDir() && topo.OwnerGone(e.Name(), tag) && os.Remove(filepath.Join(home, e.Name())) == nil {
					removed = append(removed, filepath.Join(home, e.Name()))
				}
			}
		}
	}
	entries, _ := os.ReadDir(os.TempDir())
	for _, e := range entries {
		if !e.IsDir() || !topo.OwnerGone(e.Name(), tag) {
			continue
		}
		dir := filepath.Join(os.TempDir(), e.Name())
		unix.Unmount(dir, unix.MNT_DETACH)
		if os.Remove(dir) == nil {
			removed = append(removed, dir)
		}
	}
	return removed
}
