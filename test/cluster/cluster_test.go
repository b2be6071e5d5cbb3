package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubenat/kubenat/internal/apiservertest"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestAgentAgainstAPIServer is the end-to-end scenario: Services and
// EndpointSlices created through a real kube-apiserver, the agent
// programming node-a from them, and real connections checking the result
// while endpoints change, the Service goes away, the API server restarts,
// and the agent restarts (also while the API is unreachable).
//
// The subtests run in order on one cluster; each leaves the state the next
// one starts from.
func TestAgentAgainstAPIServer(t *testing.T) {
	suite := time.Now()
	e := newEnv(t)
	c, cli, nodeA := e.c, e.cli, e.nodeA
	web1, web2, web3 := c.Pod("web-1"), c.Pod("web-2"), c.Pod("web-3")

	svc := e.createService("web", web1, web2)
	e.startAgent()
	vip, vipStream := clusterIP(svc, 80), clusterIP(svc, 90)
	np := nodePort(nodeA, svc, "http")
	took, msg := eventually(20*time.Second, servedBy(&cli.Host, vip, "web-1", "web-2"))
	if msg != "" {
		t.Fatalf("the agent did not program web (ClusterIP %s, allocated by the API server): %s\n%s", vip, msg, e.agent.Output())
	}
	t.Logf("from agent start to traffic: %v", took.Round(time.Millisecond))

	t.Run("traffic reaches the pods through the ClusterIP and the NodePort", func(t *testing.T) {
		hits, seen, err := spread(c.Client, np, 24)
		if err != nil || len(hits) != 2 {
			t.Fatalf("external client to NodePort %s: %v, %v; want web-1 and web-2", np, hits, err)
		}
		for srv, srcs := range seen {
			for s := range srcs {
				if !nodeA.OwnAddrs(topo.V4)[s] {
					t.Errorf("%s saw %s through the NodePort, want node-a's address", srv, s)
				}
			}
		}
		_, seen, err = spread(&cli.Host, vip, 16)
		if err != nil {
			t.Fatal(err)
		}
		for srv, srcs := range seen {
			if len(srcs) != 1 || !srcs[cli.Addr] {
				t.Errorf("%s saw %v through the ClusterIP, want the pod's own address %s", srv, srcs, cli.Addr)
			}
		}
	})

	t.Run("the API server's ServiceCIDR reaches the rules", func(t *testing.T) {
		// The API server makes the "kubernetes" ServiceCIDR from its
		// --service-cluster-ip-range; what the rules do with it is
		// TestServiceCIDRs' (test/kernel).
		_, msg := eventually(10*time.Second, func() string {
			out, err := c.Exec(t.Context(), &nodeA.Host, "nft", "list", "set", "ip", "kubenat", "service-cidrs")
			if err != nil || !strings.Contains(out, apiservertest.DefaultServiceClusterIPRange) {
				return fmt.Sprintf("%v: %s", err, out)
			}
			return ""
		})
		if msg != "" {
			t.Errorf("service-cidrs: %s\n%s", msg, e.agent.Output())
		}
	})

	t.Run("agent --once programs a node from the API and exits", func(t *testing.T) {
		nodeB := c.Node("node-b")
		out, err := netnstest.Kubenat(t, &nodeB.Host, "agent", "--once", "--kubeconfig", e.srv.KubeconfigPath(),
			"--node-name", "node-b", "--cluster-cidr", topo.ClusterCIDR.String(), "--conntrack-max-per-core=0")
		if err != nil {
			t.Fatalf("kubenat agent --once: %v\n%s", err, out)
		}
		got, err := programmed(&nodeB.Host)
		if err != nil {
			t.Fatal(err)
		}
		want := vip.String()[:strings.LastIndex(vip.String(), ":")] + " . tcp . 80 -> " + web1.Addr.String() + " . 8080"
		if !got[want] {
			t.Errorf("node-b's rules lack %q: %v", want, got)
		}
		if _, msg := eventually(0, servedBy(&nodeB.Host, nodePort(nodeB, svc, "http"), "web-1", "web-2")); msg != "" {
			t.Errorf("node-b's NodePort: %s", msg)
		}
	})

	t.Run("render and trace read the API like the agent", func(t *testing.T) {
		nodeB := c.Node("node-b")
		args := []string{"--kubeconfig", e.srv.KubeconfigPath(), "--node-name", "node-b", "--cluster-cidr", topo.ClusterCIDR.String()}
		out, err := netnstest.Kubenat(t, &nodeB.Host, append([]string{"render"}, args...)...)
		if err != nil || !strings.Contains(out, web1.Addr.String()+" . 8080") || !strings.Contains(out, "table ip kubenat {") {
			t.Errorf("render from the API: %v\n%s", err, out)
		}
		out, err = netnstest.Kubenat(t, &nodeB.Host, append([]string{"trace", "--src", cli.Addr.String(), "--dst", vip.String()}, args...)...)
		if err != nil || !strings.Contains(out, "Service default/web") || !strings.Contains(out, web2.Addr.String()+":8080") {
			t.Errorf("trace from the API: %v\n%s", err, out)
		}
	})

	t.Run("scale up and down: traffic follows the endpoints", func(t *testing.T) {
		for _, step := range []struct {
			name string
			pods []*topo.Pod
			want []string
		}{
			{"add web-3 on node-b", []*topo.Pod{web1, web2, web3}, []string{"web-1", "web-2", "web-3"}},
			{"down to web-3", []*topo.Pod{web3}, []string{"web-3"}},
			{"back to web-1 and web-2", []*topo.Pod{web1, web2}, []string{"web-1", "web-2"}},
		} {
			e.setEndpoints("web", step.pods...)
			took, msg := eventually(10*time.Second, servedBy(&cli.Host, vip, step.want...))
			if msg != "" {
				t.Fatalf("%s: %s", step.name, msg)
			}
			t.Logf("%s: traffic followed within %v", step.name, took.Round(time.Millisecond))
		}
		e.setEndpoints("web")
		for _, dst := range []struct {
			from *topo.Host
			to   netip.AddrPort
		}{{&cli.Host, vip}, {c.Client, np}} {
			if _, msg := eventually(10*time.Second, refused(dst.from, dst.to)); msg != "" {
				t.Errorf("no endpoints, %s from %s: %s", dst.to, dst.from.Name, msg)
			}
		}
		e.setEndpoints("web", web1, web2)
		if _, msg := eventually(10*time.Second, servedBy(&cli.Host, vip, "web-1", "web-2")); msg != "" {
			t.Fatalf("endpoints back: %s", msg)
		}
	})

	t.Run("metrics and health are served", func(t *testing.T) {
		code, text, err := scrape(&nodeA.Host, 10249, "/metrics")
		if err != nil || code != 200 {
			t.Fatalf("GET /metrics in node-a: %d %v", code, err)
		}
		for _, m := range []struct {
			series string
			min    float64
		}{
			{"kubenat_programmed_services", 2}, // web and the API server's "kubernetes"
			{"kubenat_programmed_endpoints", 4},
			{`kubenat_sync_duration_seconds_count{kind="full"}`, 1},
			{`kubenat_sync_duration_seconds_count{kind="partial"}`, 4},
			{"kubenat_network_programming_duration_seconds_count", 4},
		} {
			if v, ok := metricValue(text, m.series); !ok || v < m.min {
				t.Errorf("%s = %v (present %v), want at least %v", m.series, v, ok, m.min)
			}
		}
		if v, _ := metricValue(text, "kubenat_network_programming_duration_seconds_sum"); v > 30 {
			t.Errorf("network programming took %v s in total, implausibly long", v)
		}
		code, body, err := scrape(&nodeA.Host, 10256, "/healthz")
		if err != nil || code != 200 || !strings.Contains(body, `"healthy":true`) {
			t.Errorf("GET /healthz: %d %q %v", code, body, err)
		}
		_, text, _ = scrape(&nodeA.Host, 10249, "/metrics")
		if v, _ := metricValue(text, `kubenat_healthz_responses_total{code="200",path="/healthz"}`); v < 1 {
			t.Errorf("the /healthz response was not counted:\n%s", grep(text, "kubenat_healthz"))
		}
	})

	t.Run("a Service the agent cannot program gets a Warning event", func(t *testing.T) {
		// Two Services claiming the same externalIP and port: the younger
		// one loses the frontend.
		ctx := context.Background()
		for _, name := range []string{"first", "second"} {
			s := webService(name)
			s.Spec.Type = v1.ServiceTypeClusterIP
			s.Spec.ExternalIPs = []string{"192.168.201.10"}
			if _, err := e.cs.CoreV1().Services("default").Create(ctx, s, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // distinct creation times
		}
		_, msg := eventually(10*time.Second, func() string {
			evs, err := e.cs.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=second"})
			if err != nil {
				return err.Error()
			}
			for _, ev := range evs.Items {
				if ev.Type == v1.EventTypeWarning && ev.Reason == "NotProgrammed" && ev.Source.Host == "node-a" &&
					strings.Contains(ev.Message, "already used by Service default/first") && ev.InvolvedObject.UID != "" {
					return ""
				}
			}
			return "no NotProgrammed event on default/second"
		})
		if msg != "" {
			t.Error(msg)
		}
		for _, name := range []string{"first", "second"} {
			if err := e.cs.CoreV1().Services("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("API server restart: the rules stay, and the agent resyncs", func(t *testing.T) {
		st, err := topo.OpenStream(&cli.Host, vipStream)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		first, err := st.Ping("before")
		if err != nil {
			t.Fatal(err)
		}
		// Connect all through the restart.
		stop := make(chan struct{})
		failures := make(chan string, 1000)
		probes := make(chan int, 1)
		go func() {
			n := 0
			defer func() { probes <- n }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := dial(&cli.Host, vip); err != nil {
					failures <- err.Error()
				}
				n++
				time.Sleep(50 * time.Millisecond)
			}
		}()
		start := time.Now()
		if err := e.srv.Restart(t.Context()); err != nil {
			t.Fatal(err)
		}
		restart := time.Since(start)
		close(stop)
		n := <-probes
		close(failures)
		for f := range failures {
			t.Errorf("a new connection failed during the API server restart: %s", f)
		}
		if server, err := st.Ping("after"); err != nil || server != first {
			t.Errorf("established connection after the restart: %q, %v; want %s", server, err, first)
		}
		t.Logf("API server restart took %v; %d new connections during it all succeeded", restart.Round(time.Millisecond), n)

		e.setEndpoints("web", web3)
		took, msg := eventually(30*time.Second, servedBy(&cli.Host, vip, "web-3"))
		if msg != "" {
			t.Fatalf("after the restart the agent does not follow changes: %s\n%s", msg, e.agent.Output())
		}
		t.Logf("first change after the restart programmed within %v", took.Round(time.Millisecond))
		e.setEndpoints("web", web1, web2)
		if _, msg := eventually(10*time.Second, servedBy(&cli.Host, vip, "web-1", "web-2")); msg != "" {
			t.Fatal(msg)
		}
	})

	t.Run("agent restart: connections survive, the rules never shrink", func(t *testing.T) {
		for _, unreachable := range []bool{false, true} {
			name := "API reachable"
			if unreachable {
				name = "API unreachable until after the restart"
			}
			st, err := topo.OpenStream(&cli.Host, vipStream)
			if err != nil {
				t.Fatal(err)
			}
			first, err := st.Ping("before")
			if err != nil {
				t.Fatal(err)
			}
			baseline, err := programmed(&nodeA.Host)
			if err != nil || len(baseline) == 0 {
				t.Fatalf("reading the programmed rules: %v (%d pairs)", err, len(baseline))
			}
			w := watchProgrammed(&nodeA.Host, baseline)
			if err := e.agent.Stop(10 * time.Second); err != nil {
				t.Fatalf("%s: stopping the agent: %v", name, err)
			}
			if server, err := st.Ping("agent down"); err != nil || server != first {
				t.Errorf("%s: established connection with the agent stopped: %q, %v", name, server, err)
			}
			var heal func()
			if unreachable {
				heal = e.partition()
			}
			p := e.startAgent()
			if unreachable {
				// The new agent cannot list anything: it must not touch
				// the rules, which keep serving old and new connections.
				time.Sleep(3 * time.Second)
				if strings.Contains(p.Output(), "Programmed nftables") {
					t.Errorf("the agent programmed nftables without the API:\n%s", p.Output())
				}
				if _, msg := eventually(0, servedBy(&cli.Host, vip, "web-1", "web-2")); msg != "" {
					t.Errorf("new connections while the agent waits for the API: %s", msg)
				}
				heal()
			}
			took, msg := eventually(30*time.Second, func() string {
				if !strings.Contains(p.Output(), "Programmed nftables") {
					return "the restarted agent has not programmed nftables yet"
				}
				return ""
			})
			if msg != "" {
				t.Fatalf("%s: %s\n%s", name, msg, p.Output())
			}
			samples, problems := w.stop()
			for _, pr := range problems {
				t.Errorf("%s: while restarting: %s", name, pr)
			}
			if server, err := st.Ping("after"); err != nil || server != first {
				t.Errorf("%s: established connection after the restart: %q, %v; want %s", name, server, err, first)
			}
			st.Close()
			after := "its start"
			if unreachable {
				after = "the API became reachable"
			}
			t.Logf("%s: the new agent synced %v after %s; %d samples of the ruleset, none missing any of the %d programmed frontend-endpoint pairs",
				name, took.Round(time.Millisecond), after, samples, len(baseline))
		}
		// The restarted agent follows changes.
		e.setEndpoints("web", web2)
		if _, msg := eventually(10*time.Second, servedBy(&cli.Host, vip, "web-2")); msg != "" {
			t.Fatalf("the restarted agent does not follow changes: %s", msg)
		}
	})

	t.Run("delete the Service: new connections are no longer served", func(t *testing.T) {
		ctx := context.Background()
		if err := e.cs.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// No garbage collector runs: delete the EndpointSlice too.
		if err := e.cs.DiscoveryV1().EndpointSlices("default").Delete(ctx, "web-abcde", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// The NodePort is the node's own address: with no rule left, the
		// node itself refuses the connection.
		if _, msg := eventually(10*time.Second, refused(c.Client, np)); msg != "" {
			t.Errorf("NodePort %s after deleting the Service: %s", np, msg)
		}
		// The ClusterIP is no longer anyone's: the packet is routed like
		// any other and no pod answers (here the router reports the
		// network unreachable).
		if r, err := dial(&cli.Host, vip); err == nil {
			t.Errorf("ClusterIP %s after deleting the Service: answered by %s", vip, r)
		}
	})

	t.Logf("whole scenario: %v", time.Since(suite).Round(time.Millisecond))
}

func grep(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
