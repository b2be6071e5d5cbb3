package kernel

import (
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/conntrack"
	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestStaleUDPConntrack keeps one UDP socket open to a Service (like a DNS
// client that reuses its socket) while the Service changes under it. Each
// change must take effect for that same flow: kubenat deletes the conntrack
// entries the change made stale.
func TestStaleUDPConntrack(t *testing.T) { eachDatapath(t, testStaleUDPConntrack) }

func testStaleUDPConntrack(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	nodeA, cli := e.c.Node("node-a"), e.c.Pod("cli")
	dns := func(eps ...k8sobj.Endpoint) k8sobj.Service {
		return k8sobj.Service{Name: "dns", ClusterIPs: []string{"10.96.4.53"},
			Ports:     []k8sobj.Port{{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort}},
			Endpoints: eps}
	}
	e.writeService(t, dns(e.ep("r1")))
	p := netnstest.StartKubenat(t, &nodeA.Host, append(e.agentArgs(nodeA), "--min-sync-period", "50ms")...)

	flow, err := topo.OpenUDPFlow(&cli.Host, ap("10.96.4.53", 53))
	if err != nil {
		t.Fatal(err)
	}
	defer flow.Close()
	// answeredBy pings on the same socket until the reply comes from want.
	answeredBy := func(want string) string {
		return eventually(8*time.Second, func() string {
			r, err := flow.Ping(300 * time.Millisecond)
			switch {
			case err != nil:
				return err.Error()
			case r.Server != want:
				return "answered by " + r.Server
			}
			return ""
		})
	}
	if msg := answeredBy("r1"); msg != "" {
		t.Fatalf("the flow never reached r1: %s\n%s", msg, p.Output())
	}

	t.Run("the endpoint is replaced: the same flow moves", func(t *testing.T) {
		e.writeService(t, dns(e.ep("l1")))
		if msg := answeredBy("l1"); msg != "" {
			t.Fatalf("the flow stayed stale: %s", msg)
		}
	})
	t.Run("the Service is deleted: the flow is no longer DNATed", func(t *testing.T) {
		if err := removeManifest(e, "default-dns.yaml"); err != nil {
			t.Fatal(err)
		}
		msg := eventually(8*time.Second, func() string {
			if r, err := flow.Ping(300 * time.Millisecond); err == nil {
				return "still answered by " + r.Server
			}
			return ""
		})
		if msg != "" {
			t.Fatal(msg)
		}
	})
	t.Run("a Service gets its first endpoint: the waiting flow reaches it", func(t *testing.T) {
		e.writeService(t, dns())
		time.Sleep(300 * time.Millisecond)
		if _, err := flow.Ping(300 * time.Millisecond); err == nil {
			t.Fatal("a Service without endpoints answered")
		}
		e.writeService(t, dns(e.ep("l2")))
		if msg := answeredBy("l2"); msg != "" {
			t.Fatalf("the flow never reached the new endpoint: %s", msg)
		}
	})
}

// TestConntrackSysctls runs the agent with kube-proxy's conntrack options
// and checks that a connection through a Service lives in conntrack with
// the timeout they set, in the node's network namespace only.
func TestConntrackSysctls(t *testing.T) {
	e := twoNodes(t)
	nodeA, cli := e.c.Node("node-a"), e.c.Pod("cli")
	const linePort = 8082
	l, err := topo.ServeStream(&e.c.Pod("l1").Host, "l1", linePort)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e.writeService(t, k8sobj.Service{Name: "web", ClusterIPs: []string{"10.96.4.80"},
		Ports:     []k8sobj.Port{{Name: "tcp", Port: 80, TargetPort: linePort}},
		Endpoints: []k8sobj.Endpoint{e.ep("l1")}})
	const dir = "/proc/sys/net/netfilter/"
	names := []string{"nf_conntrack_max", "nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_close_wait",
		"nf_conntrack_tcp_be_liberal", "nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"}
	// read returns the sysctls, in the node's namespace or (h nil) the
	// test's own, the host's.
	read := func(t *testing.T, h *topo.Host) map[string]string {
		t.Helper()
		out := map[string]string{}
		for _, n := range names {
			var b []byte
			var err error
			if h == nil {
				b, err = os.ReadFile(dir + n)
			} else {
				var s string
				s, err = e.c.Exec(t.Context(), h, "cat", dir+n)
				b = []byte(s)
			}
			if err != nil {
				t.Fatalf("reading %s: %v", n, err)
			}
			out[n] = strings.TrimSpace(string(b))
		}
		return out
	}
	host := read(t, nil)
	t.Cleanup(func() {
		if after := read(t, nil); !reflect.DeepEqual(after, host) {
			t.Errorf("the host's conntrack sysctls changed: %v → %v", host, after)
		}
	})
	sync := func(t *testing.T, extra ...string) string {
		t.Helper()
		out, err := netnstest.Kubenat(t, &nodeA.Host, append(append(e.agentArgs(nodeA), "--once"), extra...)...)
		if err != nil {
			t.Fatalf("kubenat agent: %v\n%s", err, out)
		}
		return out
	}
	// timeout returns the conntrack timeout of an open connection from
	// cli through the Service.
	timeout := func(t *testing.T) int {
		t.Helper()
		conn, err := topo.OpenStream(&cli.Host, ap("10.96.4.80", 80))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if server, err := conn.Ping("hello"); err != nil || server != "l1" {
			t.Fatalf("over the connection: answered by %q, %v; want l1", server, err)
		}
		out, _ := e.c.Exec(t.Context(), &nodeA.Host, "conntrack", "-L", "-p", "tcp", "-s", cli.Addr.String(), "-d", "10.96.4.80")
		for _, l := range strings.Split(out, "\n") {
			// tcp      6 86399 ESTABLISHED src=…
			if f := strings.Fields(l); len(f) > 3 && f[0] == "tcp" && f[3] == "ESTABLISHED" {
				n, err := strconv.Atoi(f[2])
				if err != nil {
					t.Fatalf("conntrack entry %q: %v", l, err)
				}
				return n
			}
		}
		t.Fatalf("no established conntrack entry of the connection:\n%s", out)
		return 0
	}

	t.Run("kube-proxy's defaults", func(t *testing.T) {
		// maxPerCore's default too: the table's size is global, so the
		// node's namespace cannot set it, which the agent reports and
		// goes on.
		out := sync(t, "--conntrack-max-per-core=32768")
		got := read(t, &nodeA.Host)
		if got["nf_conntrack_tcp_timeout_established"] != "86400" || got["nf_conntrack_tcp_timeout_close_wait"] != "3600" {
			t.Errorf("node-a's sysctls %v: want established 86400, close_wait 3600", got)
		}
		if got["nf_conntrack_max"] != host["nf_conntrack_max"] {
			t.Errorf("nf_conntrack_max %s in node-a's namespace, the host's is %s", got["nf_conntrack_max"], host["nf_conntrack_max"])
		}
		if max := strconv.Itoa(max(32768*conntrack.OnlineCPUs(), 131072)); max != host["nf_conntrack_max"] &&
			!strings.Contains(out, "setting net.netfilter.nf_conntrack_max to "+max) || !strings.Contains(out, "host's network namespace") {
			t.Errorf("the agent did not say why it could not set nf_conntrack_max to %s:\n%s", max, out)
		}
		if n := timeout(t); n > 86400 || n < 86400-60 {
			t.Errorf("the connection's conntrack timeout is %d s, want 86400", n)
		}
	})
	t.Run("set by flags", func(t *testing.T) {
		closeWait := read(t, &nodeA.Host)["nf_conntrack_tcp_timeout_close_wait"]
		sync(t, "--conntrack-tcp-timeout-established=2h", "--conntrack-tcp-timeout-close-wait=0", "--conntrack-tcp-be-liberal",
			"--conntrack-udp-timeout=45s", "--conntrack-udp-timeout-stream=3m")
		got := read(t, &nodeA.Host)
		want := map[string]string{"nf_conntrack_tcp_timeout_established": "7200", "nf_conntrack_tcp_timeout_close_wait": closeWait,
			"nf_conntrack_tcp_be_liberal": "1", "nf_conntrack_udp_timeout": "45", "nf_conntrack_udp_timeout_stream": "180"}
		for n, v := range want {
			if got[n] != v {
				t.Errorf("%s is %s, want %s", n, got[n], v)
			}
		}
		if n := timeout(t); n > 7200 || n < 7200-60 {
			t.Errorf("the connection's conntrack timeout is %d s, want 7200", n)
		}
	})
}
