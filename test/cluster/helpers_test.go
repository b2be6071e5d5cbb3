// Package cluster holds kubenat's end-to-end tests against a real
// kube-apiserver: the API server and etcd run in a control-plane network
// namespace on the LAN of a topo cluster, the real kubenat binary runs
// with --kubeconfig in a node's namespace and reaches the API over that
// LAN, and real traffic between the cluster's namespaces checks what it
// programmed. Nothing is added to the root namespace.
//
// Like the kernel tests, they need root, iproute2 and nftables, and skip
// without them unless CI=true; they also need the kube-apiserver and etcd
// binaries (see docs/apiserver-tests.md).
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kubenat/kubenat/internal/apiservertest"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// Ports the pods serve: echoPort answers one line per connection
// (topo.ServeEcho), streamPort echoes every line of a long-lived
// connection.
const (
	echoPort   = 8080
	streamPort = 9090
)

// env is a two-node topo cluster (node-a: web-1, web-2, cli; node-b:
// web-3) with a control-plane host running a real kube-apiserver, the
// Node objects created through the API, and a kubenat agent on node-a.
type env struct {
	t     *testing.T
	c     *topo.Cluster
	cp    *topo.Host
	srv   *apiservertest.Server
	cs    kubernetes.Interface
	nodeA *topo.Node
	cli   *topo.Pod
	agent *netnstest.Process
}

func newEnv(t *testing.T) *env {
	t.Helper()
	start := time.Now()
	c := netnstest.NewCluster(t, topo.Spec{Nodes: []topo.NodeSpec{
		{Name: "node-a", Pods: []string{"web-1", "web-2", "cli"}},
		{Name: "node-b", Pods: []string{"web-3"}},
	}})
	cp, err := c.AddLANHost(t.Context(), "control-plane", topo.ControlPlaneAddr, topo.ControlPlaneAddr6)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := apiservertest.Start(t.Context(), t, apiservertest.Options{
		NetNS:   cp.NS,
		Address: topo.ControlPlaneAddr,
		// --request-timeout also bounds how long a stopping API server
		// waits for open watches: a restart takes ~5 s instead of ~17 s.
		ExtraAPIServerArgs: []string{"--request-timeout=5s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, c: c, cp: cp, srv: srv, cs: kubernetes.NewForConfigOrDie(srv.RESTConfig()),
		nodeA: c.Node("node-a"), cli: c.Pod("cli")}
	for _, n := range c.Nodes {
		for _, p := range n.Pods {
			e.serve(p)
		}
		e.createNode(n)
	}
	t.Logf("cluster, API server in %s at %s, Nodes: %v", cp.NS, srv.Host(), time.Since(start).Round(time.Millisecond))
	return e
}

// serve starts both echo servers in pod p.
func (e *env) serve(p *topo.Pod) {
	s, err := topo.ServeEcho(&p.Host, p.Name, echoPort)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(s.Close)
	l, err := topo.ServeStream(&p.Host, p.Name, streamPort)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { l.Close() })
}

// createNode creates n's Node object with its LAN address and pod CIDR.
func (e *env) createNode(n *topo.Node) {
	e.t.Helper()
	ctx := context.Background()
	node, err := e.cs.CoreV1().Nodes().Create(ctx, &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name},
		Spec:       v1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("creating Node %s: %v", n.Name, err)
	}
	node.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: n.Addr.String()}}
	if _, err := e.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		e.t.Fatalf("setting the addresses of Node %s: %v", n.Name, err)
	}
}

// startAgent runs kubenat agent on node-a against the API server. The
// conntrack table's size is global: a node's namespace leaves it alone.
func (e *env) startAgent(extra ...string) *netnstest.Process {
	e.t.Helper()
	args := append([]string{"agent", "--kubeconfig", e.srv.KubeconfigPath(), "--node-name", "node-a",
		"--cluster-cidr", topo.ClusterCIDR.String(), "--min-sync-period", "100ms", "--conntrack-max-per-core=0"}, extra...)
	e.agent = netnstest.StartKubenat(e.t, &e.nodeA.Host, args...)
	return e.agent
}

// webService is a NodePort Service without a selector (no controller
// manager runs: the test writes its EndpointSlice), with an "http" port to
// the one-shot echo server and a "stream" port to the line echo server.
func webService(name string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeNodePort,
			Ports: []v1.ServicePort{
				{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(echoPort)},
				{Name: "stream", Protocol: v1.ProtocolTCP, Port: 90, TargetPort: intstr.FromInt32(streamPort)},
			},
		},
	}
}

// endpointSlice returns the EndpointSlice of Service svc with the given
// pods as ready endpoints, stamped with a last-change-trigger-time of now
// (as the EndpointSlice controller does).
func endpointSlice(svc string, pods ...*topo.Pod) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: svc + "-abcde", Namespace: "default",
			Labels:      map[string]string{discovery.LabelServiceName: svc},
			Annotations: map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": time.Now().UTC().Format(time.RFC3339Nano)},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports: []discovery.EndpointPort{
			{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](echoPort)},
			{Name: ptr.To("stream"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](streamPort)},
		},
		Endpoints: []discovery.Endpoint{},
	}
	for _, p := range pods {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{
			Addresses:  []string{p.Addr.String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(p.Node.Name),
		})
	}
	return es
}

// createService creates a web Service and its EndpointSlice, and returns
// the Service as allocated by the API server (ClusterIP, NodePorts).
func (e *env) createService(name string, pods ...*topo.Pod) *v1.Service {
	e.t.Helper()
	ctx := context.Background()
	svc, err := e.cs.CoreV1().Services("default").Create(ctx, webService(name), metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("creating Service %s: %v", name, err)
	}
	if _, err := e.cs.DiscoveryV1().EndpointSlices("default").Create(ctx, endpointSlice(name, pods...), metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("creating the EndpointSlice of %s: %v", name, err)
	}
	return svc
}

// setEndpoints replaces the endpoints of Service svc.
func (e *env) setEndpoints(svc string, pods ...*topo.Pod) {
	e.t.Helper()
	ctx := context.Background()
	es, err := e.cs.DiscoveryV1().EndpointSlices("default").Get(ctx, svc+"-abcde", metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	want := endpointSlice(svc, pods...)
	es.Endpoints, es.Annotations = want.Endpoints, want.Annotations
	if _, err := e.cs.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		e.t.Fatalf("updating the endpoints of %s: %v", svc, err)
	}
}

func clusterIP(svc *v1.Service, port int) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), uint16(port))
}

func nodePort(n *topo.Node, svc *v1.Service, name string) netip.AddrPort {
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			return netip.AddrPortFrom(n.Addr, uint16(p.NodePort))
		}
	}
	panic("no port " + name)
}

func dial(from *topo.Host, dst netip.AddrPort) (topo.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return topo.Dial(ctx, from, "tcp", dst, time.Second)
}

// spread connects n times and counts the servers that answered; the
// first failure is returned.
func spread(from *topo.Host, dst netip.AddrPort, n int) (map[string]int, map[string]map[netip.Addr]bool, error) {
	hits := map[string]int{}
	seen := map[string]map[netip.Addr]bool{}
	for range n {
		r, err := dial(from, dst)
		if err != nil {
			return hits, seen, err
		}
		hits[r.Server]++
		if seen[r.Server] == nil {
			seen[r.Server] = map[netip.Addr]bool{}
		}
		seen[r.Server][r.Seen.Addr()] = true
	}
	return hits, seen, nil
}

// servedBy returns a check that connections to dst from h are answered by
// exactly the pods named.
func servedBy(from *topo.Host, dst netip.AddrPort, want ...string) func() string {
	return func() string {
		hits, _, err := spread(from, dst, 8*len(want))
		if err != nil {
			return err.Error()
		}
		var got []string
		for s := range hits {
			got = append(got, s)
		}
		sort.Strings(got)
		sort.Strings(want)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return fmt.Sprintf("answered by %v, want %v", hits, want)
		}
		return ""
	}
}

// refused returns a check that connections to dst from h are refused.
func refused(from *topo.Host, dst netip.AddrPort) func() string {
	return func() string {
		r, err := dial(from, dst)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return ""
		}
		return fmt.Sprintf("got %v, %v; want connection refused", r, err)
	}
}

// eventually retries check until it returns "" or timeout passes, and
// returns how long it took and the last complaint.
func eventually(timeout time.Duration, check func() string) (time.Duration, string) {
	start := time.Now()
	for {
		msg := check()
		if msg == "" || time.Since(start) > timeout {
			return time.Since(start), msg
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// backendRE matches the elements of the backends maps in
// `nft list table ip kubenat`: "frontend . proto . port [. i] : endpoint . port".
var backendRE = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+ \. [a-z]+ \. \d+)(?: \. \d+)? : (\d+\.\d+\.\d+\.\d+ \. \d+)`)

// programmed returns the frontend → endpoint pairs of h's kubenat table,
// or nil when the table does not exist.
func programmed(h *topo.Host) (map[string]bool, error) {
	// One listing of the whole ruleset (nft retries it until it reads one
	// consistent generation): while a full sync rebuilds existing tables,
	// the standby tables hold the complete ruleset (see nftables.Backend),
	// and the datapath serves what either table holds.
	out, err := exec.Command("ip", "netns", "exec", h.NS, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("listing the ruleset in %s: %v: %s", h.Name, err, out)
	}
	pairs := map[string]bool{}
	for _, table := range strings.Split(string(out), "\ntable ")[0:] {
		table = strings.TrimPrefix(table, "table ")
		if !strings.HasPrefix(table, "ip kubenat {") && !strings.HasPrefix(table, "ip kubenat-standby {") {
			continue
		}
		for _, m := range backendRE.FindAllStringSubmatch(table, -1) {
			pairs[m[1]+" -> "+m[2]] = true
		}
	}
	if len(pairs) == 0 {
		return nil, nil
	}
	return pairs, nil
}

// watchRuleset samples h's programmed pairs until stop is called, and
// reports every sample that lacks one of the baseline pairs.
type watchRuleset struct {
	stopOnce sync.Once
	stopCh   chan struct{}
	done     chan struct{}
	samples  int
	problems []string
}

func watchProgrammed(h *topo.Host, baseline map[string]bool) *watchRuleset {
	w := &watchRuleset{stopCh: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stopCh:
				return
			default:
			}
			got, err := programmed(h)
			w.samples++
			switch {
			case err != nil:
				w.problems = append(w.problems, err.Error())
			case got == nil:
				w.problems = append(w.problems, "the kubenat table was gone")
			default:
				for p := range baseline {
					if !got[p] {
						w.problems = append(w.problems, "missing "+p)
						break
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return w
}

// stop ends the sampling and returns the number of samples and problems.
func (w *watchRuleset) stop() (int, []string) {
	w.stopOnce.Do(func() { close(w.stopCh) })
	<-w.done
	return w.samples, w.problems
}

// scrape fetches http://127.0.0.1:<port><path> inside h.
func scrape(h *topo.Host, port int, path string) (int, string, error) {
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := topo.InNS(h.NS, func() error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metricValue returns the value of the series that starts with prefix
// (name and labels) in a Prometheus text exposition.
func metricValue(text, prefix string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, prefix+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v, true
			}
		}
	}
	return 0, false
}

// partition drops, in the control-plane namespace, every packet that
// reaches the API server's port from the LAN: the agent cannot reach the
// API, while the test process (connecting inside that namespace) still
// can. The returned function heals it.
func (e *env) partition() (heal func()) {
	e.t.Helper()
	port := e.srv.Host()[strings.LastIndex(e.srv.Host(), ":")+1:]
	script := fmt.Sprintf(`table inet kt-partition {
	chain input {
		type filter hook input priority -300; policy accept;
		iifname "eth0" tcp dport %s drop
	}
}
`, port)
	cmd := exec.Command("ip", "netns", "exec", e.cp.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("partitioning the API server: %v: %s", err, out)
	}
	return func() {
		if out, err := exec.Command("ip", "netns", "exec", e.cp.NS, "nft", "delete", "table", "inet", "kt-partition").CombinedOutput(); err != nil {
			e.t.Errorf("healing the partition: %v: %s", err, out)
		}
	}
}
