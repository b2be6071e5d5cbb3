package bpfsandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (CI=true: it must run)")
	}
	t.Skip("needs root")
}

func TestCgroupMovesTheProcessAndBack(t *testing.T) {
	requireRoot(t)
	before, err := ownCgroup()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCgroup("kubenat-st")
	if err != nil {
		t.Fatal(err)
	}
	in, _ := ownCgroup()
	if in != c.Rel || !strings.HasSuffix(c.Path, c.Rel) {
		t.Errorf("in cgroup %q; want %q (path %s)", in, c.Rel, c.Path)
	}
	view, err := NewCgroupView("kubenat-st")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(view.Dir, c.Rel, "cgroup.procs")); err != nil {
		t.Errorf("the view does not show the cgroup: %v", err)
	}
	if err := view.Remove(); err != nil {
		t.Error(err)
	}
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}
	if after, _ := ownCgroup(); after != before {
		t.Errorf("back in %q, want %q", after, before)
	}
	if _, err := os.Stat(c.Path); !os.IsNotExist(err) {
		t.Errorf("%s still exists: %v", c.Path, err)
	}
}

func TestBPFFSIsMountedAndRemoved(t *testing.T) {
	requireRoot(t)
	m, err := NewBPFFS("kubenat-st")
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(m.Dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Errorf("%s: statfs %v, type %#x; want a bpf file system", m.Dir, err, st.Type)
	}
	if err := m.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists: %v", m.Dir, err)
	}
}
