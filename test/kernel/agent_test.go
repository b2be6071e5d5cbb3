package kernel

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// eventually retries check until it returns "" or the deadline passes, and
// returns the last complaint.
func eventually(deadline time.Duration, check func() string) string {
	end := time.Now().Add(deadline)
	for {
		msg := check()
		if msg == "" || time.Now().After(end) {
			return msg
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAgentWatchesManifests runs the agent without --once: it follows
// changes to the manifest directory, survives bad input, and on SIGTERM
// exits leaving the rules in place; cleanup then removes only its tables.
func TestAgentWatchesManifests(t *testing.T) { eachDatapath(t, testAgentWatchesManifests) }

func testAgentWatchesManifests(t *testing.T, datapath string) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{
		{Name: "node-a", Pods: []string{"web-1", "web-2", "cli"}},
	}})
	e.datapath = datapath
	c := e.c
	nodeA, cli := c.Node("node-a"), c.Pod("cli")
	web := func(pods ...string) k8sobj.Service {
		s := k8sobj.Service{Name: "web", ClusterIPs: []string{webVIP},
			Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}}}
		for _, p := range pods {
			s.Endpoints = append(s.Endpoints, k8sobj.Endpoint{IP: c.Pod(p).Addr.String(), Node: "node-a"})
		}
		return s
	}
	servedBy := func(dst string, want ...string) func() string {
		return func() string {
			hits := map[string]int{}
			for range 16 {
				r, err := e.dial(&cli.Host, "tcp", ap(dst, 80))
				if err != nil {
					return err.Error()
				}
				hits[r.Server]++
			}
			if len(hits) != len(want) {
				return "served by " + keys(hits)
			}
			for _, w := range want {
				if hits[w] == 0 {
					return "served by " + keys(hits)
				}
			}
			return ""
		}
	}

	e.writeService(t, web("web-1", "web-2"))
	p := netnstest.StartKubenat(t, &nodeA.Host, append(e.agentArgs(nodeA), "--min-sync-period", "50ms", "--sync-period", "1s")...)
	if msg := eventually(10*time.Second, servedBy(webVIP, "web-1", "web-2")); msg != "" {
		t.Fatalf("the agent did not program web: %s\n%s", msg, p.Output())
	}

	t.Run("follows an endpoint change", func(t *testing.T) {
		e.writeService(t, web("web-1"))
		if msg := eventually(5*time.Second, servedBy(webVIP, "web-1")); msg != "" {
			t.Fatalf("after removing web-2: %s", msg)
		}
	})

	t.Run("bad input is reported, the rest is served", func(t *testing.T) {
		bad := k8sobj.Service{Name: "bad", ClusterIPs: []string{"10.96.0.30"},
			Ports: []k8sobj.Port{{Name: "http", Port: 70000, TargetPort: echoPort}}}
		e.writeService(t, bad)
		if err := os.WriteFile(filepath.Join(e.dir, "broken.yaml"), []byte("kind: Service\nmetadata: [\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		e.writeService(t, k8sobj.Service{Name: "api", ClusterIPs: []string{"10.96.0.31"},
			Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
			Endpoints: []k8sobj.Endpoint{{IP: c.Pod("web-2").Addr.String(), Node: "node-a"}}})
		if msg := eventually(5*time.Second, servedBy("10.96.0.31", "web-2")); msg != "" {
			t.Fatalf("a good Service added next to bad files is not served: %s", msg)
		}
		if msg := servedBy(webVIP, "web-1")(); msg != "" {
			t.Errorf("web after bad input: %s", msg)
		}
		out := p.Output()
		for _, want := range []string{
			`Service default/bad (default-bad.yaml): spec.ports[0].port: 70000 is out of range 1-65535`,
			`broken.yaml`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("the agent did not report %q; it said:\n%s", want, out)
			}
		}
	})

	t.Run("a broken edit keeps the programmed Service", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(e.dir, "default-web.yaml"), []byte("apiVersion: v1\nkind: Service\nmetadata: {name: web\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // give the agent time to (wrongly) act
		if msg := servedBy(webVIP, "web-1")(); msg != "" {
			t.Errorf("web after a broken edit: %s", msg)
		}
	})

	t.Run("a flushed ruleset and a deleted table are programmed again", func(t *testing.T) {
		damages := [][]string{{"nft", "flush ruleset"}, {"nft", "delete table ip kubenat"}, {"nft", "delete table ip6 kubenat"}}
		inPlace := func() string {
			if out, err := c.Exec(t.Context(), &nodeA.Host, "nft", "list tables"); err != nil || strings.Count(out, " kubenat\n") != 2 {
				return fmt.Sprintf("tables: %q %v", out, err)
			}
			return ""
		}
		if datapath == "iptables" {
			damages = [][]string{{"iptables", "-t", "nat", "-F"}, {"iptables", "-F"}, {"ip6tables", "-t", "nat", "-F"}}
			inPlace = func() string {
				for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
					if out, err := c.Exec(t.Context(), &nodeA.Host, cmd); err != nil ||
						!strings.Contains(out, "-j KUBENAT-SERVICES") || !strings.Contains(out, "-j KUBENAT-FILTER") {
						return fmt.Sprintf("%s: %v\n%s", cmd, err, out)
					}
				}
				return ""
			}
		}
		for _, damage := range damages {
			if _, err := c.Exec(t.Context(), &nodeA.Host, damage...); err != nil {
				t.Fatal(err)
			}
			if msg := eventually(10*time.Second, func() string {
				if msg := inPlace(); msg != "" {
					return msg
				}
				return servedBy(webVIP, "web-1")()
			}); msg != "" {
				t.Fatalf("after %q: %s\n%s", damage, msg, p.Output())
			}
		}
		if out := p.Output(); !strings.Contains(out, "flushed or deleted from outside") {
			t.Errorf("the agent did not say why it programmed its rules again:\n%s", out)
		}
	})

	t.Run("SIGTERM leaves the rules in place", func(t *testing.T) {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Fatalf("agent exit: %v\n%s", err, p.Output())
		}
		if msg := servedBy(webVIP, "web-1")(); msg != "" {
			t.Errorf("after the agent stopped: %s", msg)
		}
	})

	t.Run("cleanup removes kubenat's rules and nothing else", func(t *testing.T) {
		// Someone else's table, chain and rule.
		for _, cmd := range [][]string{
			{"nft", "add table inet someone-else"},
			{"iptables", "-t", "nat", "-N", "SOMEONE-ELSE"},
			{"iptables", "-t", "nat", "-A", "PREROUTING", "-j", "SOMEONE-ELSE"},
		} {
			if _, err := c.Exec(t.Context(), &nodeA.Host, cmd...); err != nil {
				t.Fatal(err)
			}
		}
		said := "removed the kubenat tables"
		if datapath == "iptables" {
			said = "removed the kubenat iptables chains"
		}
		if out, err := netnstest.Kubenat(t, &nodeA.Host, "cleanup"); err != nil || !strings.Contains(out, said) {
			t.Fatalf("cleanup: %v: %s", err, out)
		}
		out, err := c.Exec(t.Context(), &nodeA.Host, "nft", "list tables")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "kubenat") || !strings.Contains(out, "table inet someone-else") {
			t.Errorf("tables after cleanup:\n%s", out)
		}
		saved, err := c.Exec(t.Context(), &nodeA.Host, "iptables-save")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(saved, "KUBENAT") || !strings.Contains(saved, "-A PREROUTING -j SOMEONE-ELSE") {
			t.Errorf("iptables after cleanup:\n%s", saved)
		}
		if r, err := e.dial(&cli.Host, "tcp", ap(webVIP, 80)); err == nil {
			t.Errorf("the ClusterIP still answers after cleanup: %v", r)
		}
		// Cleaning up twice is fine, and says there was nothing left.
		if out, err := netnstest.Kubenat(t, &nodeA.Host, "cleanup"); err != nil || !strings.Contains(out, "nothing to remove") {
			t.Errorf("second cleanup: %v: %s", err, out)
		}
		if out, err := c.Exec(t.Context(), &nodeA.Host, "nft", "list tables"); err != nil || strings.Contains(out, "kubenat") {
			t.Errorf("tables after the second cleanup (%v):\n%s", err, out)
		}
	})
}

// TestSwitchingDatapaths: an agent started with the other datapath
// replaces the rules the previous one left, and serves.
func TestSwitchingDatapaths(t *testing.T) {
	e := newEnv(t, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a", Pods: []string{"web-1", "cli"}}}})
	e.writeService(t, k8sobj.Service{Name: "web", ClusterIPs: []string{webVIP},
		Ports:     []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort}},
		Endpoints: []k8sobj.Endpoint{{IP: e.c.Pod("web-1").Addr.String(), Node: "node-a"}}})
	for _, datapath := range []string{"iptables-legacy", "nftables", "iptables-nft", "iptables-legacy"} {
		e.datapath = datapath
		e.syncAll(t)
		e.checkDatapath(t)
		if r := e.mustDial(t, &e.c.Pod("cli").Host, "tcp", ap(webVIP, 80)); r.Server != "web-1" {
			t.Errorf("%s: served by %s", datapath, r.Server)
		}
	}

	// cleanup without iptables-legacy cannot look at the legacy tables,
	// and warns instead of saying "nothing to remove".
	bin := t.TempDir()
	for _, name := range []string{"nft", "iptables-nft", "iptables-nft-save", "iptables-nft-restore",
		"ip6tables-nft", "ip6tables-nft-save", "ip6tables-nft-restore"} {
		if err := os.Symlink("/usr/sbin/"+name, filepath.Join(bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	node := e.c.Node("node-a")
	out, err := exec.Command("ip", "netns", "exec", node.NS, "env", "PATH="+bin, netnstest.KubenatBinary(t), "cleanup").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "warning: legacy iptables tables exist here") ||
		strings.Contains(string(out), "nothing to remove") {
		t.Errorf("cleanup without iptables-legacy: %v\n%s", err, out)
	}
	if out, err := netnstest.Kubenat(t, &node.Host, "cleanup"); err != nil || !strings.Contains(out, "(iptables-legacy, ip6tables-legacy)") {
		t.Errorf("cleanup: %v\n%s", err, out)
	}
}
