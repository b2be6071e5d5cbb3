package topo_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

func namespaces(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestDestroyRemovesEverything builds a cluster, checks it is wired, and
// checks Destroy leaves none of its namespaces behind; a Build that fails
// halfway removes what it created.
func TestDestroyRemovesEverything(t *testing.T) {
	netnstest.Require(t)
	ctx := context.Background()
	// Names of the harness's form, so its stale-namespace sweep knows them.
	c, err := topo.Build(ctx, fmt.Sprintf("kt%dx900-", os.Getpid()), topo.Spec{Nodes: []topo.NodeSpec{{Name: "n1", Pods: []string{"p1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	created := c.Namespaces()
	if len(created) != 6 { // lan, router, inet, client, n1, n1-p1
		t.Errorf("created %v", created)
	}
	// Without kubenat there is no NAT: check the wiring hop by hop.
	for _, h := range []*topo.Host{&c.Nodes[0].Host, c.Internet} {
		srv, err := topo.ServeEcho(h, h.Name, 9000)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
	}
	for _, hop := range []struct {
		from, to *topo.Host
	}{{&c.Pod("p1").Host, &c.Nodes[0].Host}, {c.Client, &c.Nodes[0].Host}, {&c.Nodes[0].Host, c.Internet}} {
		for _, f := range []topo.Family{topo.V4, topo.V6} {
			dst := netip.AddrPortFrom(hop.to.AddrOf(f), 9000)
			r, err := topo.Dial(ctx, hop.from, "tcp", dst, 2*time.Second)
			if err != nil || r.Server != hop.to.Name || r.Seen.Addr() != hop.from.AddrOf(f) {
				t.Errorf("%s -> %s: %v %v", hop.from.Name, dst, r, err)
			}
		}
	}
	if err := c.Destroy(); err != nil {
		t.Fatal(err)
	}
	left := namespaces(t)
	for _, ns := range created {
		if strings.Contains(left, ns) {
			t.Errorf("namespace %s left behind", ns)
		}
	}

	// A namespace name over the kernel's 255 bytes fails in the middle of
	// Build, after the LAN, router, internet and client namespaces exist.
	prefix := fmt.Sprintf("kt%dx901-", os.Getpid())
	prefix += strings.Repeat("x", 240-len(prefix))
	if _, err := topo.Build(ctx, prefix, topo.Spec{Nodes: []topo.NodeSpec{{Name: "a-long-node-name"}}}); err == nil {
		t.Fatal("Build with an over-long namespace name succeeded")
	}
	if strings.Contains(namespaces(t), prefix[:12]) {
		t.Errorf("a failed Build left namespaces:\n%s", namespaces(t))
	}
}

// TestRemoveStale removes the namespaces of a process that is gone and
// keeps those of a live one.
func TestRemoveStale(t *testing.T) {
	netnstest.Require(t)
	dead := "ktstale" + "99999999x1-a" // above any pid_max
	live := fmt.Sprintf("ktstale%dx1-a", os.Getpid())
	for _, ns := range []string{dead, live} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	defer exec.Command("ip", "netns", "delete", live).Run()
	defer exec.Command("ip", "netns", "delete", dead).Run()
	removed := topo.RemoveStale("ktstale")
	if len(removed) != 1 || removed[0] != dead {
		t.Errorf("removed %v, want only %s", removed, dead)
	}
	if left := namespaces(t); strings.Contains(left, dead) || !strings.Contains(left, live) {
		t.Errorf("namespaces after RemoveStale:\n%s", left)
	}
}

func TestOwnerGone(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"kt2147483647x1-node-a", true}, // no such process
		{"kt2147483647", true},
		{"kt" + self + "x1-node-a", false}, // this process
		{"kt1x1-node-a", false},            // init is alive
		{"kb2147483647x1-node-a", false},   // another tag
		{"ktx1-node-a", false},             // no pid
	} {
		if got := topo.OwnerGone(tc.name, "kt"); got != tc.want {
			t.Errorf("OwnerGone(%q, \"kt\") = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestRemoveStaleTempDirs: only the directories named for a process that
// is gone are removed; those of live processes, other tags and the older
// form without a pid stay.
func TestRemoveStaleTempDirs(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	self := strconv.Itoa(os.Getpid())
	cases := []struct {
		name string
		gone bool
	}{
		{"kubenat-x-2147483647-123", true}, // no such process
		{"kubenat-x-" + self + "-123", false},
		{"kubenat-x-1-123", false},          // init is alive
		{"kubenat-x-2147483647", false},     // the older form: no pid
		{"kubenat-y-2147483647-123", false}, // another tag
	}
	var want []string
	for _, tc := range cases {
		if err := os.Mkdir(filepath.Join(tmp, tc.name), 0o700); err != nil {
			t.Fatal(err)
		}
		if tc.gone {
			want = append(want, filepath.Join(tmp, tc.name))
		}
	}
	if removed := topo.RemoveStaleTempDirs("kubenat-x-"); !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	for _, tc := range cases {
		_, err := os.Stat(filepath.Join(tmp, tc.name))
		if exists := err == nil; exists == tc.gone {
			t.Errorf("%s: exists = %v after the sweep, want %v", tc.name, exists, !tc.gone)
		}
	}
}
