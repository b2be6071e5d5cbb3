// Package topo builds small Kubernetes-like clusters out of Linux network
// namespaces: nodes with a bridge for their pods, pods, an external client,
// a router and an "internet" host, all on a LAN switch. Tests and
// `kubenat lab` run real kernels' NAT in them.
//
// Every command runs inside a namespace topo created (iproute2's "-n" or
// "ip netns exec"); the root namespace's addresses, routes and rules are
// never touched. Destroy removes every namespace created.
package topo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
)

// Host is one network namespace.
type Host struct {
	// Name is the short name ("node-a", "client", "node-a/web-1").
	Name string
	// NS is the namespace name under /run/netns.
	NS string
	// Addr is the host's main IPv4 address; Addr6 its IPv6 address.
	Addr  netip.Addr
	Addr6 netip.Addr
}

// Family selects an address family of a Host.
type Family int

// The address families.
const (
	V4 Family = 4
	V6 Family = 6
)

// String returns "IPv4" or "IPv6".
func (f Family) String() string {
	if f == V6 {
		return "IPv6"
	}
	return "IPv4"
}

// AddrOf returns the host's main address of family f.
func (h *Host) AddrOf(f Family) netip.Addr {
	if f == V6 {
		return h.Addr6
	}
	return h.Addr
}

// Node is a Kubernetes node: a host with a LAN address and a bridge (cni0)
// its pods hang off.
type Node struct {
	Host
	PodCIDR  netip.Prefix
	PodCIDR6 netip.Prefix
	Gateway  netip.Addr // the bridge address, pods' default gateway
	Gateway6 netip.Addr
	Pods     []*Pod
}

// OwnAddrs returns the node's addresses of family f that it may use as a
// source: its LAN address and its bridge address.
func (n *Node) OwnAddrs(f Family) map[netip.Addr]bool {
	if f == V6 {
		return map[netip.Addr]bool{n.Addr6: true, n.Gateway6: true}
	}
	return map[netip.Addr]bool{n.Addr: true, n.Gateway: true}
}

// Pod is a pod on a node.
type Pod struct {
	Host
	Node *Node
	// Veth is the name of the node's side of the pod's interface: a port
	// of the node's bridge, or the pod's route (AddRoutedPod).
	Veth string
}

// Spec describes a cluster to build.
type Spec struct {
	Nodes []NodeSpec
	// Edge adds a front load balancer host ("lb", on the LAN at LBLAN) and
	// an external client ("ext") on a network of its own (EdgeNet) behind
	// it: the load balancer is the external client's gateway, so whatever
	// it does (e.g. DNAT to nodeIP:NodePort, keeping the client's address)
	// sees the replies too. The router and the nodes route EdgeNet through
	// it.
	Edge bool
}

// NodeSpec describes one node and its pods.
type NodeSpec struct {
	Name string
	Pods []string
}

// Address plan. Nodes are numbered from 0.
var (
	LAN          = netip.MustParsePrefix("192.168.100.0/24")
	LAN6         = netip.MustParsePrefix("fd00:100::/64")
	RouterLAN    = netip.MustParseAddr("192.168.100.1")
	RouterLAN6   = netip.MustParseAddr("fd00:100::1")
	ClientAddr   = netip.MustParseAddr("192.168.100.50")
	ClientAddr6  = netip.MustParseAddr("fd00:100::50")
	InetNet      = netip.MustParsePrefix("203.0.113.0/24")
	InetNet6     = netip.MustParsePrefix("2001:db8:113::/64")
	RouterInet   = netip.MustParseAddr("203.0.113.1")
	RouterInet6  = netip.MustParseAddr("2001:db8:113::1")
	InetAddr     = netip.MustParseAddr("203.0.113.100")
	InetAddr6    = netip.MustParseAddr("2001:db8:113::100")
	ClusterCIDR  = netip.MustParsePrefix("10.244.0.0/16")
	ClusterCIDR6 = netip.MustParsePrefix("fd00:244::/56")
	// The edge network (Spec.Edge): the external client behind the load
	// balancer.
	EdgeNet       = netip.MustParsePrefix("198.51.100.0/24")
	EdgeNet6      = netip.MustParsePrefix("2001:db8:51::/64")
	LBLAN         = netip.MustParseAddr("192.168.100.2")
	LBLAN6        = netip.MustParseAddr("fd00:100::2")
	LBEdge        = netip.MustParseAddr("198.51.100.1")
	LBEdge6       = netip.MustParseAddr("2001:db8:51::1")
	ExternalAddr  = netip.MustParseAddr("198.51.100.10")
	ExternalAddr6 = netip.MustParseAddr("2001:db8:51::10")
)

// ControlPlaneAddr and ControlPlaneAddr6 are the LAN addresses
// conventionally given to a control-plane host (AddLANHost), e.g. a
// kube-apiserver for tests.
var (
	ControlPlaneAddr  = netip.MustParseAddr("192.168.100.5")
	ControlPlaneAddr6 = netip.MustParseAddr("fd00:100::5")
)

// NodeAddr returns the LAN address of node i.
func NodeAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 100, byte(11 + i)}) }

// NodeAddr6 returns the LAN IPv6 address of node i.
func NodeAddr6(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:100::%x", 0x11+i))
}

// PodCIDR returns node i's pod range.
func PodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(1 + i), 0}), 24)
}

// PodCIDR6 returns node i's IPv6 pod range.
func PodCIDR6(i int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("fd00:244:0:%x::/64", 1+i))
}

// Cluster is a built topology.
type Cluster struct {
	Prefix   string
	Nodes    []*Node
	Client   *Host
	Router   *Host
	Internet *Host
	LAN      *Host // the switch
	// LB and External exist when Spec.Edge is set: the front load
	// balancer (eth0 on the LAN, eth1 on the edge network) and the
	// external client behind it.
	LB       *Host
	External *Host

	mu      sync.Mutex
	created []string
	hostSeq int
}

// Build creates the namespaces and links of spec. Namespace names start
// with prefix (keep it short: names are limited). On error, everything
// created so far is removed.
func Build(ctx context.Context, prefix string, spec Spec) (_ *Cluster, err error) {
	c := &Cluster{Prefix: prefix}
	defer func() {
		if err != nil {
			_ = c.Destroy()
		}
	}()
	if c.LAN, err = c.newHost(ctx, "lan"); err != nil {
		return nil, err
	}
	if err = c.run(ctx, "ip", "-n", c.LAN.NS, "link", "add", "br0", "type", "bridge"); err != nil {
		return nil, err
	}
	if err = c.run(ctx, "ip", "-n", c.LAN.NS, "link", "set", "br0", "up"); err != nil {
		return nil, err
	}

	// Router between the LAN and the internet host.
	if c.Router, err = c.newHost(ctx, "router"); err != nil {
		return nil, err
	}
	c.Router.Addr, c.Router.Addr6 = RouterLAN, RouterLAN6
	if err = c.attachLAN(ctx, c.Router, "eth0"); err != nil {
		return nil, err
	}
	if c.Internet, err = c.newHost(ctx, "inet"); err != nil {
		return nil, err
	}
	c.Internet.Addr, c.Internet.Addr6 = InetAddr, InetAddr6
	if err = c.link(ctx, c.Router, "eth1", c.Internet, "eth0"); err != nil {
		return nil, err
	}
	cmds := [][]string{
		{"ip", "-n", c.Router.NS, "addr", "add", pfx(RouterInet, InetNet), "dev", "eth1"},
		{"ip", "-n", c.Router.NS, "-6", "addr", "add", pfx(RouterInet6, InetNet6), "dev", "eth1", "nodad"},
		{"ip", "-n", c.Internet.NS, "addr", "add", pfx(InetAddr, InetNet), "dev", "eth0"},
		{"ip", "-n", c.Internet.NS, "-6", "addr", "add", pfx(InetAddr6, InetNet6), "dev", "eth0", "nodad"},
		{"ip", "-n", c.Internet.NS, "route", "add", "default", "via", RouterInet.String()},
		{"ip", "-n", c.Internet.NS, "-6", "route", "add", "default", "via", RouterInet6.String()},
	}
	if err = c.runAll(ctx, cmds); err != nil {
		return nil, err
	}
	if err = c.forwarding(ctx, c.Router); err != nil {
		return nil, err
	}

	// External client on the LAN.
	if c.Client, err = c.newHost(ctx, "client"); err != nil {
		return nil, err
	}
	c.Client.Addr, c.Client.Addr6 = ClientAddr, ClientAddr6
	if err = c.attachLAN(ctx, c.Client, "eth0"); err != nil {
		return nil, err
	}
	if err = c.defaultRoute(ctx, c.Client); err != nil {
		return nil, err
	}

	for i, ns := range spec.Nodes {
		n, err := c.addNode(ctx, i, ns)
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	if spec.Edge {
		if err := c.addEdge(ctx); err != nil {
			return nil, err
		}
	}
	// Pod routes between nodes (the CNI's job in a real cluster).
	for _, n := range c.Nodes {
		for j, m := range c.Nodes {
			if n == m {
				continue
			}
			if err := c.runAll(ctx, [][]string{
				{"ip", "-n", n.NS, "route", "add", PodCIDR(j).String(), "via", m.Addr.String()},
				{"ip", "-n", n.NS, "-6", "route", "add", PodCIDR6(j).String(), "via", m.Addr6.String()},
			}); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

// addEdge creates the load balancer and the external client behind it, and
// routes the edge network through the load balancer.
func (c *Cluster) addEdge(ctx context.Context) error {
	var err error
	if c.LB, err = c.newHost(ctx, "lb"); err != nil {
		return err
	}
	c.LB.Addr, c.LB.Addr6 = LBLAN, LBLAN6
	if err := c.attachLAN(ctx, c.LB, "eth0"); err != nil {
		return err
	}
	if c.External, err = c.newHost(ctx, "ext"); err != nil {
		return err
	}
	c.External.Addr, c.External.Addr6 = ExternalAddr, ExternalAddr6
	if err := c.link(ctx, c.LB, "eth1", c.External, "eth0"); err != nil {
		return err
	}
	cmds := [][]string{
		{"ip", "-n", c.LB.NS, "addr", "add", pfx(LBEdge, EdgeNet), "dev", "eth1"},
		{"ip", "-n", c.LB.NS, "-6", "addr", "add", pfx(LBEdge6, EdgeNet6), "dev", "eth1", "nodad"},
		{"ip", "-n", c.LB.NS, "route", "add", "default", "via", RouterLAN.String()},
		{"ip", "-n", c.LB.NS, "-6", "route", "add", "default", "via", RouterLAN6.String()},
		{"ip", "-n", c.External.NS, "addr", "add", pfx(ExternalAddr, EdgeNet), "dev", "eth0"},
		{"ip", "-n", c.External.NS, "-6", "addr", "add", pfx(ExternalAddr6, EdgeNet6), "dev", "eth0", "nodad"},
		{"ip", "-n", c.External.NS, "route", "add", "default", "via", LBEdge.String()},
		{"ip", "-n", c.External.NS, "-6", "route", "add", "default", "via", LBEdge6.String()},
	}
	for _, h := range append([]*Host{c.Router}, nodeHosts(c.Nodes)...) {
		cmds = append(cmds,
			[]string{"ip", "-n", h.NS, "route", "add", EdgeNet.String(), "via", LBLAN.String()},
			[]string{"ip", "-n", h.NS, "-6", "route", "add", EdgeNet6.String(), "via", LBLAN6.String()})
	}
	if err := c.runAll(ctx, cmds); err != nil {
		return err
	}
	return c.forwarding(ctx, c.LB)
}

func nodeHosts(ns []*Node) []*Host {
	out := make([]*Host, len(ns))
	for i, n := range ns {
		out[i] = &n.Host
	}
	return out
}

func pfx(a netip.Addr, p netip.Prefix) string { return netip.PrefixFrom(a, p.Bits()).String() }

// addNode creates node i with its bridge and pods.
func (c *Cluster) addNode(ctx context.Context, i int, spec NodeSpec) (*Node, error) {
	h, err := c.newHost(ctx, spec.Name)
	if err != nil {
		return nil, err
	}
	n := &Node{Host: *h, PodCIDR: PodCIDR(i), PodCIDR6: PodCIDR6(i)}
	n.Addr, n.Addr6 = NodeAddr(i), NodeAddr6(i)
	n.Gateway = n.PodCIDR.Addr().Next()
	n.Gateway6 = n.PodCIDR6.Addr().Next()
	if err := c.attachLAN(ctx, &n.Host, "eth0"); err != nil {
		return nil, err
	}
	if err := c.defaultRoute(ctx, &n.Host); err != nil {
		return nil, err
	}
	if err := c.forwarding(ctx, &n.Host); err != nil {
		return nil, err
	}
	if err := c.runAll(ctx, [][]string{
		{"ip", "-n", n.NS, "link", "add", "cni0", "type", "bridge"},
		{"ip", "-n", n.NS, "addr", "add", pfx(n.Gateway, n.PodCIDR), "dev", "cni0"},
		{"ip", "-n", n.NS, "-6", "addr", "add", pfx(n.Gateway6, n.PodCIDR6), "dev", "cni0", "nodad"},
		{"ip", "-n", n.NS, "link", "set", "cni0", "up"},
	}); err != nil {
		return nil, err
	}
	for _, name := range spec.Pods {
		if _, err := c.AddPod(ctx, n, name); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// AddLANHost creates a host plugged into the LAN switch with addresses
// addr and addr6 and the router as its default gateway, like a machine
// beside the nodes (e.g. the control plane at ControlPlaneAddr). Destroy
// removes it with the rest of the cluster.
func (c *Cluster) AddLANHost(ctx context.Context, name string, addr, addr6 netip.Addr) (*Host, error) {
	h, err := c.newHost(ctx, name)
	if err != nil {
		return nil, err
	}
	h.Addr, h.Addr6 = addr, addr6
	if err := c.attachLAN(ctx, h, "eth0"); err != nil {
		return nil, err
	}
	if err := c.defaultRoute(ctx, h); err != nil {
		return nil, err
	}
	return h, nil
}

// AddPod creates a pod on node n with the next free address of its range.
func (c *Cluster) AddPod(ctx context.Context, n *Node, name string) (*Pod, error) {
	p, err := c.newPod(ctx, n, name)
	if err != nil {
		return nil, err
	}
	if err := c.runAll(ctx, [][]string{
		{"ip", "-n", n.NS, "link", "set", p.Veth, "master", "cni0"},
		// A pod reaching itself through a Service comes back on its own port.
		{"ip", "-n", n.NS, "link", "set", p.Veth, "type", "bridge_slave", "hairpin", "on"},
		{"ip", "-n", p.NS, "addr", "add", pfx(p.Addr, n.PodCIDR), "dev", "eth0"},
		{"ip", "-n", p.NS, "-6", "addr", "add", pfx(p.Addr6, n.PodCIDR6), "dev", "eth0", "nodad"},
		{"ip", "-n", p.NS, "route", "add", "default", "via", n.Gateway.String()},
		{"ip", "-n", p.NS, "-6", "route", "add", "default", "via", n.Gateway6.String()},
	}); err != nil {
		return nil, err
	}
	n.Pods = append(n.Pods, p)
	return p, nil
}

// newPod creates the namespace of pod name on node n, its addresses (the
// next free ones of the node's ranges) and its link to the node, up.
func (c *Cluster) newPod(ctx context.Context, n *Node, name string) (*Pod, error) {
	h, err := c.newHost(ctx, n.Name+"-"+name)
	if err != nil {
		return nil, err
	}
	idx := len(n.Pods)
	p := &Pod{Host: *h, Node: n, Veth: fmt.Sprintf("veth%d", idx)}
	p.Name = name
	a4 := n.PodCIDR.Addr().As4()
	a4[3] = byte(10 + idx)
	p.Addr = netip.AddrFrom4(a4)
	p.Addr6 = netip.MustParseAddr(strings.TrimSuffix(n.PodCIDR6.Addr().String(), "::") + fmt.Sprintf("::%x", 0x10+idx))
	if err := c.link(ctx, &n.Host, p.Veth, &p.Host, "eth0"); err != nil {
		return nil, err
	}
	return p, nil
}

// RoutedGateway is the gateway routed pods (AddRoutedPod) point their
// default route at: an address no host holds, which the node's side of
// their link answers for (proxy ARP), as Calico does.
var RoutedGateway = netip.MustParseAddr("169.254.1.1")

// AddRoutedPod creates a pod on node n with the next free address of its
// range, reached by routing instead of the bridge: its veth is not a
// bridge port, the pod holds its address as a /32 with a default route to
// RoutedGateway through its link, and the node routes the address to the
// pod's link and answers ARP for it there and on its bridge (proxy ARP),
// so that the bridge's pods reach it through the node. IPv4 only.
func (c *Cluster) AddRoutedPod(ctx context.Context, n *Node, name string) (*Pod, error) {
	p, err := c.newPod(ctx, n, name)
	if err != nil {
		return nil, err
	}
	p.Addr6 = netip.Addr{}
	// The bridge answers too: its pods take the routed pod's address,
	// in their subnet, for a neighbour on the bridge.
	if err := c.SetSysctls(ctx, &n.Host, map[string]string{
		"net/ipv4/conf/" + p.Veth + "/proxy_arp": "1",
		"net/ipv4/conf/cni0/proxy_arp":           "1",
	}); err != nil {
		return nil, err
	}
	if err := c.runAll(ctx, [][]string{
		{"ip", "-n", n.NS, "route", "add", netip.PrefixFrom(p.Addr, 32).String(), "dev", p.Veth},
		{"ip", "-n", p.NS, "addr", "add", netip.PrefixFrom(p.Addr, 32).String(), "dev", "eth0"},
		{"ip", "-n", p.NS, "route", "add", "default", "via", RoutedGateway.String(), "dev", "eth0", "onlink"},
	}); err != nil {
		return nil, err
	}
	n.Pods = append(n.Pods, p)
	return p, nil
}

// newHost creates a namespace with loopback up.
func (c *Cluster) newHost(ctx context.Context, name string) (*Host, error) {
	c.mu.Lock()
	c.hostSeq++
	ns := fmt.Sprintf("%s%d-%s", c.Prefix, c.hostSeq, sanitize(name))
	c.mu.Unlock()
	if err := c.run(ctx, "ip", "netns", "add", ns); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.created = append(c.created, ns)
	c.mu.Unlock()
	if err := c.run(ctx, "ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	h := &Host{Name: name, NS: ns}
	// Without duplicate address detection, link-local addresses are usable
	// at once and IPv6 neighbour discovery works from the first packet.
	if err := c.SetSysctls(ctx, h, map[string]string{
		"net/ipv6/conf/all/accept_dad":     "0",
		"net/ipv6/conf/default/accept_dad": "0",
	}); err != nil {
		return nil, err
	}
	return h, nil
}

func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, strings.ToLower(s))
	if len(s) > 24 {
		s = s[:24]
	}
	return s
}

// link connects a and b with a veth pair (ifA in a, ifB in b), both up.
// The pair is created inside a's namespace: it never exists in the root
// namespace.
func (c *Cluster) link(ctx context.Context, a *Host, ifA string, b *Host, ifB string) error {
	return c.runAll(ctx, [][]string{
		{"ip", "-n", a.NS, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b.NS},
		{"ip", "-n", a.NS, "link", "set", ifA, "up"},
		{"ip", "-n", b.NS, "link", "set", ifB, "up"},
	})
}

// attachLAN plugs h into the LAN switch and gives it its addresses.
func (c *Cluster) attachLAN(ctx context.Context, h *Host, ifName string) error {
	c.mu.Lock()
	c.hostSeq++
	port := fmt.Sprintf("p%d", c.hostSeq)
	c.mu.Unlock()
	if err := c.link(ctx, c.LAN, port, h, ifName); err != nil {
		return err
	}
	return c.runAll(ctx, [][]string{
		{"ip", "-n", c.LAN.NS, "link", "set", port, "master", "br0"},
		{"ip", "-n", h.NS, "addr", "add", pfx(h.Addr, LAN), "dev", ifName},
		{"ip", "-n", h.NS, "-6", "addr", "add", pfx(h.Addr6, LAN6), "dev", ifName, "nodad"},
	})
}

func (c *Cluster) defaultRoute(ctx context.Context, h *Host) error {
	return c.runAll(ctx, [][]string{
		{"ip", "-n", h.NS, "route", "add", "default", "via", RouterLAN.String()},
		{"ip", "-n", h.NS, "-6", "route", "add", "default", "via", RouterLAN6.String()},
	})
}

// forwarding turns on IP forwarding inside h.
func (c *Cluster) forwarding(ctx context.Context, h *Host) error {
	return c.SetSysctls(ctx, h, map[string]string{
		"net/ipv4/ip_forward":          "1",
		"net/ipv6/conf/all/forwarding": "1",
	})
}

// SetSysctls writes /proc/sys values inside h's namespace.
func (c *Cluster) SetSysctls(ctx context.Context, h *Host, kv map[string]string) error {
	var script strings.Builder
	for k, v := range kv {
		fmt.Fprintf(&script, "echo %s > /proc/sys/%s\n", v, k)
	}
	return c.run(ctx, "ip", "netns", "exec", h.NS, "sh", "-ec", script.String())
}

// AddRoute adds a route to dst via gw inside h (e.g. a client's route to a
// LoadBalancer IP through a node).
func (c *Cluster) AddRoute(ctx context.Context, h *Host, dst netip.Prefix, gw netip.Addr) error {
	args := []string{"ip", "-n", h.NS}
	if dst.Addr().Is6() {
		args = append(args, "-6")
	}
	return c.run(ctx, append(args, "route", "replace", dst.String(), "via", gw.String())...)
}

// Exec runs a command inside h's namespace and returns its combined output.
func (c *Cluster) Exec(ctx context.Context, h *Host, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", h.Name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Namespaces returns the names of the namespaces created so far.
func (c *Cluster) Namespaces() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.created...)
}

// Destroy deletes every namespace the cluster created (which removes their
// links too). It keeps going past errors and returns them joined.
func (c *Cluster) Destroy() error {
	c.mu.Lock()
	names := c.created
	c.created = nil
	c.mu.Unlock()
	var errs []error
	for i := len(names) - 1; i >= 0; i-- {
		if err := exec.Command("ip", "netns", "delete", names[i]).Run(); err != nil {
			errs = append(errs, fmt.Errorf("deleting namespace %s: %w", names[i], err))
		}
	}
	return errors.Join(errs...)
}

func (c *Cluster) runAll(ctx context.Context, cmds [][]string) error {
	for _, args := range cmds {
		if err := c.run(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// run runs one command; every use passes a namespace ("-n NS" or
// "netns exec NS"), or manages namespaces themselves.
func (c *Cluster) run(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Node returns the node with the given name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Pod returns the pod with the given name on any node, or nil.
func (c *Cluster) Pod(name string) *Pod {
	for _, n := range c.Nodes {
		for _, p := range n.Pods {
			if p.Name == name {
				return p
			}
		}
	}
	return nil
}
