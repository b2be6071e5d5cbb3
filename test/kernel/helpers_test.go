// Package kernel holds kubenat's kernel tests: real packets through real
// nftables in network namespaces, asserting which pod answered and which
// source address it saw.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// env is a two-node cluster with echo servers in every pod and on the
// internet host, and a manifest directory.
type env struct {
	t   *testing.T
	c   *topo.Cluster
	dir string
	// detect is how the agents recognize their pods; with the interface
	// modes they get no cluster CIDR.
	detect model.LocalDetect
	// datapath is the agents' --datapath; empty: the default (nftables).
	datapath string
	// extra are more arguments for every agent; extraFor more for the
	// agent of the node named.
	extra    []string
	extraFor map[string][]string
}

const echoPort = 8080

func newEnv(t *testing.T, spec topo.Spec) *env {
	t.Helper()
	c := netnstest.NewCluster(t, spec)
	e := &env{t: t, c: c, dir: t.TempDir()}
	for _, n := range c.Nodes {
		for _, p := range n.Pods {
			e.serve(&p.Host, p.Name, echoPort)
		}
		if err := k8sobj.WriteFile(e.dir, "node-"+n.Name+".yaml",
			k8sobj.Node(n.Name, []string{n.Addr.String(), n.Addr6.String()}, []string{n.PodCIDR.String(), n.PodCIDR6.String()})); err != nil {
			t.Fatal(err)
		}
	}
	e.serve(c.Internet, "internet", 9000)
	return e
}

func (e *env) serve(h *topo.Host, name string, port uint16) {
	s, err := topo.ServeEcho(h, name, port)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(s.Close)
}

func (e *env) writeService(t testing.TB, s k8sobj.Service) {
	t.Helper()
	if err := k8sobj.WriteService(e.dir, s); err != nil {
		t.Fatal(err)
	}
}

// agentArgs returns the arguments of n's agent. The conntrack table's
// size is global and cannot be set from a node's namespace: the agents
// leave it alone, as kube-proxy in kind does (TestConntrackSysctls
// checks the default).
func (e *env) agentArgs(n *topo.Node) []string {
	args := []string{"agent", "--manifests", e.dir, "--node-name", n.Name, "--conntrack-max-per-core=0"}
	if e.datapath != "" {
		args = append(args, "--datapath", e.datapath)
	}
	args = append(args, e.extra...)
	args = append(args, e.extraFor[n.Name]...)
	switch e.detect.Mode {
	case model.DetectBridgeInterface:
		return append(args, "--detect-local-mode=BridgeInterface", "--pod-bridge-interface="+e.detect.Interface)
	case model.DetectInterfacePrefix:
		return append(args, "--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix="+e.detect.Interface)
	}
	return append(args, "--cluster-cidr", topo.ClusterCIDR.String(), "--cluster-cidr", topo.ClusterCIDR6.String())
}

// modelConfig is the model configuration agentArgs gives n's agent.
func (e *env) modelConfig(n *topo.Node) model.Config {
	extra := append(slices.Clip(e.extra), e.extraFor[n.Name]...)
	cfg := model.Config{NodeName: n.Name, LocalDetect: e.detect, TCNAT: slices.Contains(extra, "--tc-nat"),
		SocketLB: slices.Contains(extra, "--socket-lb-cgroup"), UntrackPodTCP: slices.Contains(extra, "--untrack-pod-tcp"),
		TCNATPodToPod: slices.Contains(extra, "--tc-nat-pod-to-pod")}
	if !e.detect.ByInterface() {
		cfg.ClusterCIDRs = []netip.Prefix{topo.ClusterCIDR, topo.ClusterCIDR6}
	}
	return cfg
}

// detectModes are the ways of recognizing a node's pods the tests run
// with: by CIDR, and by interface without a cluster CIDR (the pods'
// bridge, cni0, and a name prefix matching it: with br_netfilter, the IP
// hooks see the bridge as the input interface).
var detectModes = []model.LocalDetect{
	{},
	{Mode: model.DetectBridgeInterface, Interface: "cni0"},
	{Mode: model.DetectInterfacePrefix, Interface: "cni"},
}

// syncAll runs "kubenat agent --once" on every node, with extra flags.
func (e *env) syncAll(t testing.TB, extra ...string) {
	t.Helper()
	for _, n := range e.c.Nodes {
		out, err := netnstest.Kubenat(t, &n.Host, append(append(e.agentArgs(n), "--once"), extra...)...)
		if err != nil {
			t.Fatalf("kubenat agent --once on %s: %v\n%s", n.Name, err, out)
		}
	}
}

func (e *env) dial(from *topo.Host, network string, dst netip.AddrPort) (topo.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return topo.Dial(ctx, from, network, dst, 2*time.Second)
}

// mustDial connects and fails t when no reply comes.
func (e *env) mustDial(t testing.TB, from *topo.Host, network string, dst netip.AddrPort) topo.Reply {
	t.Helper()
	r, err := e.dial(from, network, dst)
	if err != nil {
		t.Fatalf("%s %s -> %s: %v", network, from.Name, dst, err)
	}
	return r
}

// spread connects n times and returns how often each server answered and
// the sources they saw.
func (e *env) spread(t testing.TB, from *topo.Host, network string, dst netip.AddrPort, n int) (map[string]int, map[string]map[netip.Addr]bool) {
	t.Helper()
	hits := map[string]int{}
	seen := map[string]map[netip.Addr]bool{}
	for range n {
		r := e.mustDial(t, from, network, dst)
		hits[r.Server]++
		if seen[r.Server] == nil {
			seen[r.Server] = map[netip.Addr]bool{}
		}
		seen[r.Server][r.Seen.Addr()] = true
	}
	return hits, seen
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

func ap(addr string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(addr), port)
}

func keys(m map[string]int) string { return fmt.Sprint(m) }

func removeManifest(e *env, name string) error { return os.Remove(filepath.Join(e.dir, name)) }

// checkDatapath fails t unless every node's rules are the chosen
// datapath's alone: kubenat's nftables tables, or its chains through
// iptables-nft (the system's iptables here) or iptables-legacy.
func (e *env) checkDatapath(t testing.TB) {
	t.Helper()
	for _, n := range e.c.Nodes {
		has := map[string]bool{}
		for what, cmd := range map[string][]string{
			"nftables":        {"nft", "list", "tables"},
			"iptables-nft":    {"iptables-nft-save"},
			"iptables-legacy": {"iptables-legacy-save"},
		} {
			out, err := e.c.Exec(t.Context(), &n.Host, cmd...)
			if err != nil {
				t.Fatal(err)
			}
			has[what] = strings.Contains(out, "table ip kubenat") || strings.Contains(out, "-j KUBENAT-SERVICES")
		}
		want := map[string]string{"": "nftables", "iptables": "iptables-nft"}[e.datapath]
		if want == "" {
			want = e.datapath
		}
		for what, ok := range has {
			if ok != (what == want) {
				t.Fatalf("%s (datapath %q): kubenat's rules in %v", n.Name, e.datapath, has)
			}
		}
	}
}

// eachDatapath runs test once per datapath, as a subtest named for it.
func eachDatapath(t *testing.T, test func(t *testing.T, datapath string)) {
	for _, d := range []string{"nftables", "iptables"} {
		t.Run(d, func(t *testing.T) { test(t, d) })
	}
}
