package kernel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
	"github.com/kubenat/kubenat/internal/trace/live"
)

// TestTraceLive runs `kubenat trace --live` on node-a while real packets
// go through it, and checks that it reports the kernel's path and
// conntrack entry, agrees with the model when kubenat programmed the
// same inputs, flags a disagreement when it did not, and leaves no
// table behind.
func TestTraceLive(t *testing.T) {
	t.Run("iptables", testTraceLiveIPTables)
	e := newEnv(t, diffSpec)
	for _, s := range diffServices(e.c) {
		e.writeService(t, s)
	}
	e.syncAll(t)
	nodeA := e.c.Node("node-a")
	cli := e.c.Pod("cli")

	for _, tc := range []struct {
		name    string
		node    string // where trace runs; default node-a
		args    []string
		send    func() // sends the packet when trace does not
		verdict string
		ctSrc   netip.Addr // the conntrack entry's original source, if one is expected
		rule    string     // a rule the packet must have hit
	}{
		{name: "external client to a NodePort",
			args: []string{"--src", e.c.Client.Addr.String(), "--dst", nodeA.Addr.String() + ":30080"},
			send: func() {
				e.mustDial(t, e.c.Client, "tcp", netip.AddrPortFrom(nodeA.Addr, 30080))
			},
			verdict: "forward", ctSrc: e.c.Client.Addr, rule: "@external-frontends"},
		{name: "external client over IPv6 to a NodePort", node: "node-b",
			args: []string{"--src", e.c.Client.Addr6.String(), "--dst", "[" + e.c.Node("node-b").Addr6.String() + "]:30060"},
			send: func() {
				e.mustDial(t, e.c.Client, "tcp", netip.AddrPortFrom(e.c.Node("node-b").Addr6, 30060))
			},
			verdict: "forward", ctSrc: e.c.Client.Addr6, rule: "@external-frontends"},
		{name: "pod to the internet (egress masquerade)",
			args: []string{"--src", cli.Addr.String(), "--dst", e.c.Internet.Addr.String() + ":9000", "--proto", "udp"},
			send: func() {
				e.mustDial(t, &cli.Host, "udp", netip.AddrPortFrom(e.c.Internet.Addr, 9000))
			},
			verdict: "accept", ctSrc: cli.Addr, rule: "masquerade"},
		{name: "the node to a ClusterIP, sent by trace",
			args:    []string{"--local", "--src", nodeA.Addr.String(), "--dst", "10.96.0.10:80"},
			verdict: "forward", ctSrc: nodeA.Addr, rule: "@clusterip-frontends"},
		{name: "the node to a Service without endpoints, sent by trace",
			args:    []string{"--local", "--src", nodeA.Addr.String() + ":40123", "--dst", "10.96.0.99:80"},
			verdict: "reject", rule: "reject"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := nodeA
			if tc.node != "" {
				n = e.c.Node(tc.node)
			}
			r := e.checkLiveTrace(t, n, tc.args, tc.send, tc.verdict, tc.rule)
			switch {
			case tc.ctSrc.IsValid() && (r.Kernel.Conntrack == nil || r.Kernel.Conntrack.OrigSrc.Addr() != tc.ctSrc):
				t.Errorf("conntrack entry %v, want one from %s", r.Kernel.Conntrack, tc.ctSrc)
			case !tc.ctSrc.IsValid() && r.Kernel.Conntrack != nil:
				t.Errorf("conntrack entry %v for a refused packet", r.Kernel.Conntrack)
			}
		})
	}

	t.Run("a kernel programmed from other inputs is flagged", func(t *testing.T) {
		// The manifests now give "idle" an endpoint, but the kernel was
		// not re-synced: it still refuses what the model forwards.
		dir := t.TempDir()
		copyManifests(t, e.dir, dir)
		if err := k8sobj.WriteService(dir, k8sobj.Service{Name: "idle", ClusterIPs: []string{"10.96.0.99"},
			Ports:     []k8sobj.Port{{Name: "tcp", Port: 80, TargetPort: echoPort}},
			Endpoints: []k8sobj.Endpoint{{IP: cli.Addr.String(), Node: "node-a"}}}); err != nil {
			t.Fatal(err)
		}
		args := []string{"--manifests", dir, "--local", "--src", nodeA.Addr.String(), "--dst", "10.96.0.99:80"}
		out, err := e.traceLive(t, nodeA, args, nil)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("trace --live exit %v, want status 1\n%s", err, out)
		}
		var r live.Result
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		if r.Agree || r.Model.Verdict != "forward" || r.Kernel.Verdict != "reject" {
			t.Errorf("want model forward, kernel reject, disagreement; got model %s, kernel %s, agree %v",
				r.Model.Verdict, r.Kernel.Verdict, r.Agree)
		}
	})

	nodePort := []string{"--src", e.c.Client.Addr.String(), "--dst", nodeA.Addr.String() + ":30080"}
	dialNodePort := func() { e.mustDial(t, e.c.Client, "tcp", netip.AddrPortFrom(nodeA.Addr, 30080)) }
	t.Run("one live trace at a time", func(t *testing.T) {
		var second string
		var secondErr error
		out, err := e.traceLive(t, nodeA, nodePort, func() {
			// The first trace holds the table and waits for its packet.
			args := append(e.agentArgs(nodeA), "--live", "--timeout", "5s", "--local",
				"--src", nodeA.Addr.String(), "--dst", "10.96.0.10:80")
			args[0] = "trace"
			second, secondErr = netnstest.Kubenat(t, &nodeA.Host, args...)
			dialNodePort()
		})
		if err != nil {
			t.Fatalf("the first trace: %v\n%s", err, out)
		}
		if secondErr == nil || !strings.Contains(second, "another live trace holds the table ip kubenat-trace") {
			t.Errorf("a second trace while the first waited: %v\n%s\nwant it refused", secondErr, second)
		}
	})
	t.Run("a table left by a killed trace is replaced", func(t *testing.T) {
		stale := `create table ip kubenat-trace { comment "kubenat trace --live until 2000-01-01T00:00:00Z"; }`
		if out, err := e.c.Exec(t.Context(), &nodeA.Host, "nft", stale); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if out, err := e.traceLive(t, nodeA, nodePort, dialNodePort); err != nil {
			t.Fatalf("trace --live over a stale table: %v\n%s", err, out)
		}
	})

	t.Run("no table is left behind", func(t *testing.T) {
		out, err := e.c.Exec(t.Context(), &nodeA.Host, "nft", "list", "tables")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, live.Table) {
			t.Errorf("tables after tracing:\n%s", out)
		}
	})
	t.Run("kubenat cleanup removes a table a killed trace left", func(t *testing.T) {
		stale := `create table ip6 kubenat-trace { comment "kubenat trace --live until 2000-01-01T00:00:00Z"; }`
		if out, err := e.c.Exec(t.Context(), &nodeA.Host, "nft", stale); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		out, err := netnstest.Kubenat(t, &nodeA.Host, "cleanup", "--bpf-pin-dir", filepath.Join(t.TempDir(), "none"))
		if err != nil || !strings.Contains(out, "removed the table of a live trace") {
			t.Errorf("cleanup: %v\n%s", err, out)
		}
		if out, _ := e.c.Exec(t.Context(), &nodeA.Host, "nft", "list", "tables"); strings.Contains(out, "kubenat") {
			t.Errorf("tables after cleanup:\n%s", out)
		}
	})

	t.Run("pods recognized by their bridge: the interface the packet came in on decides", func(t *testing.T) {
		e.detect = model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: "cni0"}
		defer func() { e.detect = model.LocalDetect{} }()
		e.syncAll(t)
		args := []string{"--src", cli.Addr.String(), "--dst", e.c.Internet.Addr.String() + ":9000", "--proto", "udp"}
		send := func() { e.mustDial(t, &cli.Host, "udp", netip.AddrPortFrom(e.c.Internet.Addr, 9000)) }
		// Without --iif, the model answers for the interface the kernel
		// saw: a pod's egress, masqueraded.
		out, err := e.traceLive(t, nodeA, args, send)
		if err != nil {
			t.Fatalf("trace --live: %v\n%s", err, out)
		}
		var r live.Result
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		if !r.Agree || r.Model.Source.Class != "pod" || r.Model.Masquerade == nil || !r.Model.Masquerade.Masquerade {
			t.Errorf("agree %v, model source %+v, masquerade %+v; want a pod's egress, masqueraded, as the kernel did (%+v)",
				r.Agree, r.Model.Source, r.Model.Masquerade, r.Checks)
		}
		// A wrong --iif is a disagreement.
		out, err = e.traceLive(t, nodeA, append(args, "--iif", "eth0"), send)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("trace --live --iif eth0 exit %v, want status 1\n%s", err, out)
		}
		r = live.Result{}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("%v:\n%s", err, out)
		}
		if len(r.Checks) == 0 || r.Checks[0].Aspect != "input interface" || r.Checks[0].Agree || r.Checks[0].Kernel != "cni0" {
			t.Errorf("checks %+v: want the input interface first, the kernel's cni0 against eth0", r.Checks)
		}
	})
}

// traceLive runs `kubenat trace --live --json` in node n with the test's
// node flags (args may override --manifests), calls send once tracing is
// in place, and returns what it printed on stdout.
func (e *env) traceLive(t *testing.T, n *topo.Node, args []string, send func()) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	full := append(append([]string{"netns", "exec", n.NS, netnstest.KubenatBinary(t)}, e.agentArgs(n)...),
		append([]string{"--json", "--live", "--timeout", "10s"}, args...)...)
	full[4] = "trace" // agentArgs starts with "agent"
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	ready, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !once && strings.HasPrefix(sc.Text(), "tracing ") {
				once = true
				close(ready)
			}
		}
		if !once {
			close(ready)
		}
	}()
	<-ready
	if send != nil {
		send()
	}
	<-done // stderr is read to the end before Wait
	err = cmd.Wait()
	if err != nil {
		t.Logf("trace --live stderr:\n%s", log.String())
	}
	return stdout.Bytes(), err
}

// copyManifests copies the manifest files of dir src into dst.
func copyManifests(t *testing.T, src, dst string) {
	t.Helper()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range entries {
		b, err := os.ReadFile(filepath.Join(src, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, ent.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// testTraceLiveIPTables: with the iptables datapath (through iptables-nft,
// whose rules nftables' tracing sees), trace --live follows the packet
// through kubenat's chains and agrees with the model.
func testTraceLiveIPTables(t *testing.T) {
	e := newEnv(t, diffSpec)
	e.datapath = "iptables"
	for _, s := range diffServices(e.c) {
		e.writeService(t, s)
	}
	e.syncAll(t)
	nodeA, cli := e.c.Node("node-a"), e.c.Pod("cli")
	for _, tc := range []struct {
		name    string
		args    []string
		send    func()
		verdict string
		rule    string // a rule the packet must have hit
	}{
		{name: "external client to a NodePort",
			args: []string{"--src", e.c.Client.Addr.String(), "--dst", nodeA.Addr.String() + ":30080"},
			send: func() {
				e.mustDial(t, e.c.Client, "tcp", netip.AddrPortFrom(nodeA.Addr, 30080))
			},
			verdict: "forward", rule: "jump KUBENAT-NODEPORTS"},
		{name: "pod to the internet (egress masquerade)",
			args: []string{"--src", cli.Addr.String(), "--dst", e.c.Internet.Addr.String() + ":9000", "--proto", "udp"},
			send: func() {
				e.mustDial(t, &cli.Host, "udp", netip.AddrPortFrom(e.c.Internet.Addr, 9000))
			},
			verdict: "accept", rule: "masquerade"},
		{name: "the node to a ClusterIP, sent by trace",
			args:    []string{"--local", "--src", nodeA.Addr.String(), "--dst", "10.96.0.10:80"},
			verdict: "forward", rule: "jump KUBENAT-SVC-"},
		{name: "the node to a Service without endpoints, sent by trace",
			args:    []string{"--local", "--src", nodeA.Addr.String() + ":40123", "--dst", "10.96.0.99:80"},
			verdict: "reject", rule: "reject"},
	} {
		t.Run(tc.name, func(t *testing.T) { e.checkLiveTrace(t, nodeA, tc.args, tc.send, tc.verdict, tc.rule) })
	}
}

// checkLiveTrace runs trace --live on n (send makes the packet when trace
// does not) and requires that the kernel agrees with the model, with
// verdict, having hit a rule containing rule. It returns the trace.
func (e *env) checkLiveTrace(t *testing.T, n *topo.Node, args []string, send func(), verdict, rule string) live.Result {
	t.Helper()
	out, err := e.traceLive(t, n, args, send)
	if err != nil {
		t.Fatalf("trace --live: %v\n%s", err, out)
	}
	var r live.Result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if !r.Agree {
		t.Errorf("model and kernel disagree: %+v", r.Checks)
	}
	if r.Kernel.Verdict != verdict {
		t.Errorf("kernel verdict %q, want %q", r.Kernel.Verdict, verdict)
	}
	hit := false
	for _, ev := range r.Kernel.Events {
		hit = hit || (ev.Kind == "rule" && strings.Contains(ev.Rule, rule))
	}
	if !hit {
		t.Errorf("no rule containing %q among the events: %+v", rule, r.Kernel.Events)
	}
	return r
}
