// Package lab runs the three NAT pipelines of kubenat's seed document live,
// in a small cluster made of network namespaces: two nodes with pods (each
// running the real kubenat agent binary), a front load balancer that does
// the first DNAT to nodeIP:NodePort, an external client behind it, and an
// "internet" host behind a router. It drives real HTTP and UDP traffic,
// reconstructs every hop's translation from the kernels' conntrack tables,
// compares each node's NAT with kubenat trace's answer, and checks each
// pipeline's promise (who sees which source address, which nodes take
// traffic).
//
// Everything happens inside namespaces the lab creates (named
// "kl<pid>-…"); the root namespace's addresses, routes and rules are never
// touched. Down removes every namespace; Up removes namespaces left by lab
// processes that no longer exist.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/topo"
)

// The lab's Services and addresses.
const (
	webVIP      = "192.0.2.80" // LoadBalancer IP of default/web (externalTrafficPolicy Cluster)
	localVIP    = "192.0.2.81" // LoadBalancer IP of default/web-local (externalTrafficPolicy Local)
	webNodePort = 30080
	localNP     = 30081
	localHCPort = 32081
	apiVIP      = "10.96.0.20" // ClusterIP of default/api (HTTP 80, UDP 53), served by web-b only
	httpPort    = 8080         // the pods' HTTP port
	udpPort     = 5353         // the pods' and the internet host's UDP echo port
	inetHTTP    = 80           // the internet host's HTTP port
	lbTable     = "lab-lb"     // the load balancer's table (in its own namespace)
)

// spec is the lab's cluster: web-a and cli-a on node-a, web-b and cli-b on
// node-b, plus the edge (load balancer and external client).
var spec = topo.Spec{
	Nodes: []topo.NodeSpec{
		{Name: "node-a", Pods: []string{"web-a", "cli-a"}},
		{Name: "node-b", Pods: []string{"web-b", "cli-b"}},
	},
	Edge: true,
}

// internetNonMasq is node-b's non-masquerade configuration: the defaults
// plus the internet network, so its pods reach the internet host with their
// own addresses (pipeline 5).
var internetNonMasq = []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", topo.InetNet.String()}

// Host is one namespace of the lab.
type Host struct {
	Name string `json:"name"`
	// Role is "node", "pod", "external client", "load balancer",
	// "internet", "router", "LAN client" or "LAN switch".
	Role  string     `json:"role"`
	NS    string     `json:"namespace"`
	Addr  netip.Addr `json:"addr,omitzero"`
	Addr6 netip.Addr `json:"addr6,omitzero"`
	// Node is the node a pod runs on.
	Node string `json:"node,omitempty"`
	// Gateway is a node's pod bridge address; PodCIDR its pod range.
	Gateway netip.Addr   `json:"gateway,omitzero"`
	PodCIDR netip.Prefix `json:"podCIDR,omitzero"`
}

// NodeSetup is how kubenat runs on one node.
type NodeSetup struct {
	Name string `json:"name"`
	// NonMasqueradeCIDRs, when set, replace the default non-masquerade
	// ranges (--non-masquerade-cidr).
	NonMasqueradeCIDRs []string `json:"nonMasqueradeCIDRs,omitempty"`
	// Datapath is the agent's --datapath; empty: the default.
	Datapath string `json:"datapath,omitempty"`
	// AgentArgs are the kubenat arguments the agent runs with.
	AgentArgs []string `json:"agentArgs"`
	// Log is the agent's log file.
	Log string `json:"log"`
}

// HealthProbe is the load balancer's health check of one node for the
// externalTrafficPolicy Local Service.
type HealthProbe struct {
	Node   string `json:"node"`
	URL    string `json:"url"`
	Status int    `json:"status"` // 0 when the node did not answer
	Body   string `json:"body,omitempty"`
}

// Topology is a running lab, as written to its state file: enough for
// another kubenat process to run the pipelines, exec into namespaces and
// tear it down.
type Topology struct {
	// PID is the process that owns the lab (the agents are its children).
	PID    int    `json:"pid"`
	Prefix string `json:"prefix"`
	// Dir holds the manifests and the agents' logs.
	Dir       string      `json:"dir"`
	Manifests string      `json:"manifests"`
	Hosts     []Host      `json:"hosts"`
	Nodes     []NodeSetup `json:"nodes"`
	// Health are the load balancer's health checks; LocalBackends the
	// nodes it sends the Local Service's traffic to.
	Health        []HealthProbe `json:"health"`
	LocalBackends []string      `json:"localBackends"`
	// HealthNote explains a fallback when the health checks were not
	// answered.
	HealthNote string `json:"healthNote,omitempty"`
}

// Host returns the host named name, or nil.
func (t *Topology) Host(name string) *Host {
	for i := range t.Hosts {
		if t.Hosts[i].Name == name {
			return &t.Hosts[i]
		}
	}
	return nil
}

// mustHost returns the host named name; the lab's own names always exist.
func (t *Topology) mustHost(name string) *Host {
	if h := t.Host(name); h != nil {
		return h
	}
	panic("lab: no host " + name)
}

// Options configure a lab.
type Options struct {
	// Binary is the kubenat binary the nodes run; default: this executable.
	Binary string
	// Dir holds the manifests and logs; default: a new temporary
	// directory, removed by Down.
	Dir string
	// Prefix names the namespaces; default "kl<pid>-".
	Prefix string
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// Datapath is the agents' --datapath; empty: their default
	// (nftables).
	Datapath string
}

// Lab is a lab this process built and runs.
type Lab struct {
	Topology
	c       *topo.Cluster
	ownDir  bool
	log     io.Writer
	mu      sync.Mutex
	agents  []*agentProc
	closers []func()
}

// Up builds the lab: the namespaces, the manifests, echo and HTTP servers
// in the pods and on the internet host, the kubenat agents, and the load
// balancer's rules (after health-checking the nodes). On error everything
// created is removed. Cancelling ctx aborts it.
func Up(ctx context.Context, o Options) (l *Lab, err error) {
	if o.Binary == "" {
		if o.Binary, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("finding the kubenat binary: %w", err)
		}
	}
	if o.Prefix == "" {
		o.Prefix = fmt.Sprintf("kl%d-", os.Getpid())
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	removeStale(o.Log)
	l = &Lab{log: o.Log}
	l.PID, l.Prefix = os.Getpid(), o.Prefix
	if o.Dir == "" {
		// Named for this process, so that a later lab removes it if this
		// one is killed before it can (see removeStale).
		if o.Dir, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", labDirTag, os.Getpid())); err != nil {
			return nil, fmt.Errorf("creating the lab directory: %w", err)
		}
		l.ownDir = true
	}
	l.Dir = o.Dir
	// The error paths return nil for l: clean up through a copy.
	lab := l
	defer func() {
		if err != nil {
			_ = lab.Down()
			l = nil
		}
	}()
	l.Manifests = filepath.Join(l.Dir, "manifests")
	for _, d := range []string{l.Manifests, filepath.Join(l.Dir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("creating %s: %w", d, err)
		}
	}

	l.logf("building the network namespaces (prefix %s)", l.Prefix)
	c, err := topo.Build(ctx, l.Prefix, spec)
	if err != nil {
		return nil, fmt.Errorf("building the lab's namespaces: %w", err)
	}
	l.mu.Lock()
	l.c = c
	l.mu.Unlock()
	l.Hosts = hostsOf(c)
	// The router routes the pod networks to their nodes: the internet
	// host's replies to unmasqueraded pods (pipeline 5) need it.
	for _, n := range c.Nodes {
		if err := c.AddRoute(ctx, c.Router, n.PodCIDR, n.Addr); err != nil {
			return nil, err
		}
		if err := c.AddRoute(ctx, c.Router, n.PodCIDR6, n.Addr6); err != nil {
			return nil, err
		}
	}
	if err := l.writeManifests(); err != nil {
		return nil, err
	}
	if err := l.startServers(); err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		setup := NodeSetup{Name: n.Name, Log: filepath.Join(l.Dir, "logs", n.Name+".log"), Datapath: o.Datapath}
		if n.Name == "node-b" {
			setup.NonMasqueradeCIDRs = internetNonMasq
		}
		setup.AgentArgs = agentArgs(l.Manifests, setup)
		l.Nodes = append(l.Nodes, setup)
		l.logf("starting kubenat agent on %s", n.Name)
		if err := l.startAgent(o.Binary, n, setup); err != nil {
			return nil, err
		}
	}
	if err := l.waitProgrammed(ctx); err != nil {
		return nil, err
	}
	if err := l.setupLoadBalancer(ctx); err != nil {
		return nil, err
	}
	l.logf("the lab is up")
	return l, nil
}

func (l *Lab) logf(format string, args ...any) {
	fmt.Fprintf(l.log, "lab: "+format+"\n", args...)
}

// agentArgs returns the kubenat arguments of a node's agent. A lab node
// is a network namespace, where the conntrack table's size (global) cannot
// be set: the agents leave it alone, as kube-proxy in kind does.
func agentArgs(manifests string, s NodeSetup) []string {
	args := []string{"agent", "--manifests", manifests, "--node-name", s.Name,
		"--cluster-cidr", topo.ClusterCIDR.String(), "--cluster-cidr", topo.ClusterCIDR6.String(),
		"--conntrack-max-per-core=0"}
	if len(s.NonMasqueradeCIDRs) > 0 {
		args = append(args, "--non-masquerade-cidr", strings.Join(s.NonMasqueradeCIDRs, ","))
	}
	if s.Datapath != "" {
		args = append(args, "--datapath", s.Datapath)
	}
	return args
}

func hostsOf(c *topo.Cluster) []Host {
	hosts := []Host{
		{Name: "ext", Role: "external client", NS: c.External.NS, Addr: c.External.Addr, Addr6: c.External.Addr6},
		{Name: "lb", Role: "load balancer", NS: c.LB.NS, Addr: c.LB.Addr, Addr6: c.LB.Addr6},
	}
	for _, n := range c.Nodes {
		hosts = append(hosts, Host{Name: n.Name, Role: "node", NS: n.NS, Addr: n.Addr, Addr6: n.Addr6,
			Gateway: n.Gateway, PodCIDR: n.PodCIDR})
	}
	for _, n := range c.Nodes {
		for _, p := range n.Pods {
			hosts = append(hosts, Host{Name: p.Name, Role: "pod", NS: p.NS, Addr: p.Addr, Addr6: p.Addr6, Node: n.Name})
		}
	}
	return append(hosts,
		Host{Name: "router", Role: "router", NS: c.Router.NS, Addr: c.Router.Addr, Addr6: c.Router.Addr6},
		Host{Name: "internet", Role: "internet", NS: c.Internet.NS, Addr: c.Internet.Addr, Addr6: c.Internet.Addr6},
		Host{Name: "client", Role: "LAN client", NS: c.Client.NS, Addr: c.Client.Addr, Addr6: c.Client.Addr6},
		Host{Name: "lan", Role: "LAN switch", NS: c.LAN.NS},
	)
}

// writeManifests writes the Nodes and the three Services.
func (l *Lab) writeManifests() error {
	c := l.c
	for _, n := range c.Nodes {
		node := k8sobj.Node(n.Name, []string{n.Addr.String(), n.Addr6.String()}, []string{n.PodCIDR.String(), n.PodCIDR6.String()})
		if err := k8sobj.WriteFile(l.Manifests, "node-"+n.Name+".yaml", node); err != nil {
			return fmt.Errorf("writing the manifests: %w", err)
		}
	}
	webA, webB := c.Pod("web-a"), c.Pod("web-b")
	http := func(nodePort int32) []k8sobj.Port {
		return []k8sobj.Port{{Name: "http", Port: 80, TargetPort: httpPort, NodePort: nodePort}}
	}
	for _, s := range []k8sobj.Service{
		{Name: "web", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.10"}, Ports: http(webNodePort),
			LoadBalancerIPs: []string{webVIP},
			Endpoints: []k8sobj.Endpoint{
				{IP: webA.Addr.String(), Node: "node-a"},
				{IP: webB.Addr.String(), Node: "node-b"},
			}},
		{Name: "web-local", Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.11"}, Ports: http(localNP),
			LoadBalancerIPs: []string{localVIP}, ETPLocal: true, HealthCheckNodePort: localHCPort,
			Endpoints: []k8sobj.Endpoint{{IP: webA.Addr.String(), Node: "node-a"}}},
		{Name: "api", ClusterIPs: []string{apiVIP},
			Ports: []k8sobj.Port{
				{Name: "http", Port: 80, TargetPort: httpPort},
				{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: udpPort},
			},
			Endpoints: []k8sobj.Endpoint{{IP: webB.Addr.String(), Node: "node-b"}}},
	} {
		if err := k8sobj.WriteService(l.Manifests, s); err != nil {
			return fmt.Errorf("writing the manifests: %w", err)
		}
	}
	return nil
}

// startServers starts an HTTP server and a UDP echo server in each web pod
// and on the internet host.
func (l *Lab) startServers() error {
	type srv struct {
		name, node string
		h          *topo.Host
		http       uint16
	}
	list := []srv{{"internet", "", l.c.Internet, inetHTTP}}
	for _, name := range []string{"web-a", "web-b"} {
		p := l.c.Pod(name)
		list = append(list, srv{name, p.Node.Name, &p.Host, httpPort})
	}
	for _, s := range list {
		stop, err := serveHTTP(s.h, s.name, s.node, s.http)
		if err != nil {
			return err
		}
		l.addCloser(stop)
		echo, err := topo.ServeEcho(s.h, s.name, udpPort)
		if err != nil {
			return err
		}
		l.addCloser(echo.Close)
	}
	return nil
}

func (l *Lab) addCloser(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closers = append(l.closers, f)
}

// agentProc is a kubenat agent running in a node's namespace.
type agentProc struct {
	node string
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// startAgent starts the kubenat agent in node n's namespace. The process
// is started from an OS thread that stays locked until it exits, so the
// parent-death signal (SIGKILL when this process dies) fires only then.
func (l *Lab) startAgent(bin string, n *topo.Node, s NodeSetup) error {
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening the agent log: %w", err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS, bin}, s.AgentArgs...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &agentProc{node: n.Name, cmd: cmd, done: make(chan struct{}), log: logf}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			close(p.done)
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		logf.Close()
		return fmt.Errorf("starting kubenat agent on %s: %w", n.Name, err)
	}
	l.mu.Lock()
	l.agents = append(l.agents, p)
	l.mu.Unlock()
	return nil
}

// waitProgrammed waits until every agent has programmed its node.
func (l *Lab) waitProgrammed(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range l.Nodes {
		datapath := s.Datapath
		if datapath == "" {
			datapath = "nftables"
		}
		for {
			b, _ := os.ReadFile(s.Log)
			if strings.Contains(string(b), "Programmed "+datapath) {
				break
			}
			for _, a := range l.agents {
				select {
				case <-a.done:
					return fmt.Errorf("kubenat agent on %s exited: %s", a.node, tail(s.Log))
				default:
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("kubenat agent on %s did not program the node within 30s: %s", s.Name, tail(s.Log))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// tail returns the last lines of a log file.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, "\n")
}

// setupLoadBalancer health-checks the nodes for the Local Service and
// programs the load balancer: web's LoadBalancer IP goes to both nodes'
// NodePort in turn, web-local's to the nodes whose health check passes.
func (l *Lab) setupLoadBalancer(ctx context.Context) error {
	l.logf("health-checking the nodes from the load balancer")
	lb := l.mustHost("lb")
	var healthy []string
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range l.Nodes {
		n := l.mustHost(s.Name)
		url := fmt.Sprintf("http://%s:%d/", n.Addr, localHCPort)
		var p HealthProbe
		for {
			p = probe(ctx, lb, s.Name, url)
			if p.Status != 0 || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		l.Health = append(l.Health, p)
		if p.Status == 200 {
			healthy = append(healthy, s.Name)
		}
	}
	if len(healthy) == 0 {
		// No health check answered: fall back to the endpoints' nodes, and
		// say so.
		l.HealthNote = "no node answered the health check; sending to the nodes of the Service's endpoints (node-a)"
		healthy = []string{"node-a"}
	}
	l.LocalBackends = healthy

	var all, local []string
	for i, s := range l.Nodes {
		all = append(all, fmt.Sprintf("%d : %s . %d", i, l.mustHost(s.Name).Addr, webNodePort))
	}
	for i, name := range healthy {
		local = append(local, fmt.Sprintf("%d : %s . %d", i, l.mustHost(name).Addr, localNP))
	}
	script := fmt.Sprintf(`table ip %s {
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		ip daddr %s tcp dport 80 dnat ip to numgen inc mod %d map { %s }
		ip daddr %s tcp dport 80 dnat ip to numgen inc mod %d map { %s }
	}
}
`, lbTable, webVIP, len(all), strings.Join(all, ", "), localVIP, len(local), strings.Join(local, ", "))
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", lb.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("programming the load balancer: %v: %s", err, out)
	}
	return nil
}

// Down stops the agents and the servers and removes every namespace and,
// when the lab created it, its directory. It keeps going past errors.
func (l *Lab) Down() error {
	l.mu.Lock()
	agents, closers, c := l.agents, l.closers, l.c
	l.agents, l.closers, l.c = nil, nil, nil
	l.mu.Unlock()
	var errs []error
	for _, a := range agents {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, a := range agents {
		select {
		case <-a.done:
		case <-time.After(5 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.done
		}
		a.log.Close()
	}
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	if c != nil {
		if err := c.Destroy(); err != nil {
			errs = append(errs, err)
		}
	}
	if l.ownDir && l.Dir != "" {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Cleanup removes the namespaces of a lab whose owning process is gone
// (its state file's topology).
func Cleanup(t *Topology) error {
	var errs []error
	for i := len(t.Hosts) - 1; i >= 0; i-- {
		ns := t.Hosts[i].NS
		if !strings.HasPrefix(ns, t.Prefix) {
			continue // never delete a namespace the lab did not name
		}
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %v: %s", ns, err, out))
		}
	}
	return errors.Join(errs...)
}

// WriteState writes the topology to path atomically.
func (t *Topology) WriteState(path string) error {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("writing the lab state: %w", err)
	}
	return os.Rename(tmp, path)
}

// ReadState reads a topology written by WriteState.
func ReadState(path string) (*Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var t Topology
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("reading the lab state %s: %w", path, err)
	}
	return &t, nil
}

// Alive reports whether the process that owns the lab still runs.
func (t *Topology) Alive() bool {
	return topo.ProcessAlive(t.PID)
}

// removeStale deletes namespaces of the form kl<pid>-… and lab
// directories of the form kubenat-lab-<pid>-… whose process is gone (a lab
// killed with SIGKILL).
func removeStale(log io.Writer) {
	for _, ns := range topo.RemoveStale("kl") {
		fmt.Fprintf(log, "lab: removed namespace %s left by a process that is gone\n", ns)
	}
	for _, d := range topo.RemoveStaleTempDirs(labDirTag) {
		fmt.Fprintf(log, "lab: removed directory %s left by a process that is gone\n", d)
	}
}

// labDirTag starts the name of a lab's own temporary directory, followed
// by the pid of the process that made it.
const labDirTag = "kubenat-lab-"
