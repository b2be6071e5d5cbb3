package kernel

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestEgressMasqueradeConfig follows an ip-masq-agent config file: pod
// traffic to the internet is masqueraded until the file lists the
// destination as non-masquerade; a bad file is reported and the previous
// configuration kept.
func TestEgressMasqueradeConfig(t *testing.T) { eachDatapath(t, testEgressMasqueradeConfig) }

func testEgressMasqueradeConfig(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	c := e.c
	nodeA, cli := c.Node("node-a"), c.Pod("cli")
	// Let the internet host answer pods directly, so it can be seen whether
	// their address was kept.
	if err := c.AddRoute(t.Context(), c.Router, nodeA.PodCIDR, nodeA.Addr); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(t.TempDir(), "ip-masq-agent")
	p := netnstest.StartKubenat(t, &nodeA.Host, append(e.agentArgs(nodeA), "--masquerade-config", cfgFile)...)
	internet := netip.AddrPortFrom(c.Internet.Addr, 9000)
	sees := func(want netip.Addr) func() string {
		return func() string {
			r, err := e.dial(&cli.Host, "tcp", internet)
			if err != nil {
				return err.Error()
			}
			if r.Seen.Addr() != want {
				return "the internet host saw " + r.Seen.Addr().String()
			}
			return ""
		}
	}
	if msg := eventually(10*time.Second, sees(nodeA.Addr)); msg != "" {
		t.Fatalf("default: %s\n%s", msg, p.Output())
	}
	write := func(s string) {
		if err := os.WriteFile(cfgFile, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("nonMasqueradeCIDRs:\n  - 203.0.113.0/24\n")
	if msg := eventually(5*time.Second, sees(cli.Addr)); msg != "" {
		t.Fatalf("with 203.0.113.0/24 non-masquerade: %s", msg)
	}
	write("nonMasqueradeCIDRs: [203.0.113.0/33]\n")
	time.Sleep(1500 * time.Millisecond)
	if msg := sees(cli.Addr)(); msg != "" {
		t.Errorf("a bad file changed the configuration: %s", msg)
	}
	if out := p.Output(); !strings.Contains(out, `nonMasqueradeCIDRs[0]: \"203.0.113.0/33\" is not a CIDR; keeping the previous configuration`) {
		t.Errorf("the bad file was not reported clearly:\n%s", out)
	}
	write("nonMasqueradeCIDRs: [10.0.0.0/8]\n")
	if msg := eventually(5*time.Second, sees(nodeA.Addr)); msg != "" {
		t.Errorf("after a valid file again: %s", msg)
	}
}

// TestEgressByInterface: with the pods recognized by their bridge and no
// cluster CIDR, pod egress is still masqueraded, except to the
// non-masquerade ranges, and the node's own traffic is left alone.
func TestEgressByInterface(t *testing.T) { eachDatapath(t, testEgressByInterface) }

func testEgressByInterface(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	e.detect = model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: "cni0"}
	c := e.c
	nodeA, cli := c.Node("node-a"), c.Pod("cli")
	// Let the internet host answer pods directly, so it can be seen whether
	// their address was kept.
	for _, f := range []topo.Family{topo.V4, topo.V6} {
		pods := nodeA.PodCIDR
		if f == topo.V6 {
			pods = nodeA.PodCIDR6
		}
		if err := c.AddRoute(t.Context(), c.Router, pods, nodeA.AddrOf(f)); err != nil {
			t.Fatal(err)
		}
	}
	seen := func(t *testing.T, from *topo.Host, f topo.Family) netip.Addr {
		t.Helper()
		r, err := e.dial(from, "tcp", netip.AddrPortFrom(c.Internet.AddrOf(f), 9000))
		if err != nil {
			t.Fatalf("%s to the internet: %v", f, err)
		}
		return r.Seen.Addr()
	}
	e.syncAll(t)
	for _, f := range []topo.Family{topo.V4, topo.V6} {
		if got := seen(t, &cli.Host, f); got != nodeA.AddrOf(f) {
			t.Errorf("%s: the internet saw the pod as %s, want node-a's %s", f, got, nodeA.AddrOf(f))
		}
		// The node's own traffic is never a pod's, even from its address
		// on the pods' bridge (which NodeCIDR would masquerade: it is in
		// the pod CIDR).
		gw := nodeA.Gateway
		if f == topo.V6 {
			gw = nodeA.Gateway6
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		r, err := topo.DialFrom(ctx, &nodeA.Host, gw, netip.AddrPortFrom(c.Internet.AddrOf(f), 9000), 2*time.Second)
		cancel()
		if err != nil || r.Seen.Addr() != gw {
			t.Errorf("%s: node-a from its bridge address %s: the internet saw %v (%v), want it kept", f, gw, r.Seen, err)
		}
	}
	e.syncAll(t, "--non-masquerade-cidr", topo.InetNet.String()+","+topo.InetNet6.String())
	for _, f := range []topo.Family{topo.V4, topo.V6} {
		if got := seen(t, &cli.Host, f); got != cli.AddrOf(f) {
			t.Errorf("%s, the internet a non-masquerade range: it saw the pod as %s, want %s", f, got, cli.AddrOf(f))
		}
	}
}
