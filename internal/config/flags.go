package config

import (
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/pflag"
)

// field binds a configuration field to the command-line flag that
// overrides it.
type field struct {
	path string // the field's path in the file
	flag string // the flag's name, without "--"
	help string
	// ptr returns a pointer to the field: *string, *[]string, *bool,
	// *float32 or *int32.
	ptr func(*Configuration) any
	// duration marks a string field holding a Go duration: its flag is a
	// duration flag.
	duration bool
}

// fields lists every field that has a flag, in file order.
var fields = []field{
	{path: "datapath", flag: "datapath", help: "what programs the Services: nftables (default), or iptables (kube-proxy's iptables-mode chains, for hosts without nftables; slower with many Services) through the system's iptables commands, iptables-nft or iptables-legacy",
		ptr: func(c *Configuration) any { return &c.Datapath }},
	{path: "nodeName", flag: "node-name", help: "name of this node (default: $NODE_NAME, else the hostname)",
		ptr: func(c *Configuration) any { return &c.NodeName }},
	{path: "clusterCIDRs", flag: "cluster-cidr", help: "pod address range of the cluster, one per family (repeatable or comma-separated); required unless --detect-local-mode is an interface mode",
		ptr: func(c *Configuration) any { return &c.ClusterCIDRs }},
	{path: "detectLocalMode", flag: "detect-local-mode", help: "how traffic from this node's pods is recognized: NodeCIDR (source in the Node's podCIDRs, else the cluster CIDRs), BridgeInterface (arrives on --pod-bridge-interface) or InterfaceNamePrefix (arrives on an interface named --pod-interface-name-prefix*); the interface modes need no cluster CIDR",
		ptr: func(c *Configuration) any { return &c.DetectLocalMode }},
	{path: "detectLocal.bridgeInterface", flag: "pod-bridge-interface", help: "the bridge of the node's pods, for --detect-local-mode=BridgeInterface",
		ptr: func(c *Configuration) any { return &c.DetectLocal.BridgeInterface }},
	{path: "detectLocal.interfaceNamePrefix", flag: "pod-interface-name-prefix", help: "the name prefix of the pods' interfaces, for --detect-local-mode=InterfaceNamePrefix",
		ptr: func(c *Configuration) any { return &c.DetectLocal.InterfaceNamePrefix }},
	{path: "serviceCIDRs", flag: "service-cidr", help: "range ClusterIPs are allocated from (repeatable): new connections to its addresses no Service takes are dropped; the cluster's ServiceCIDR objects add theirs",
		ptr: func(c *Configuration) any { return &c.ServiceCIDRs }},
	{path: "nodeIPs", flag: "node-ip", help: "this node's IP address (repeatable; default: the Node object's addresses, else the source addresses of the default routes)",
		ptr: func(c *Configuration) any { return &c.NodeIPs }},
	{path: "nodePortAddresses", flag: "nodeport-addresses", help: `addresses NodePorts are served on: "primary" and/or CIDRs`,
		ptr: func(c *Configuration) any { return &c.NodePortAddresses }},
	{path: "masqueradeAll", flag: "masquerade-all", help: "masquerade all traffic to ClusterIPs, also from local pods",
		ptr: func(c *Configuration) any { return &c.MasqueradeAll }},
	{path: "masquerade.nonMasqueradeCIDRs", flag: "non-masquerade-cidr", help: "destination reached by pods without SNAT (repeatable; the cluster CIDRs are always added)",
		ptr: func(c *Configuration) any { return &c.Masquerade.NonMasqueradeCIDRs }},
	{path: "masquerade.masqLinkLocal", flag: "masq-link-local", help: "masquerade pod traffic to 169.254.0.0/16 too",
		ptr: func(c *Configuration) any { return &c.Masquerade.MasqLinkLocal }},
	{path: "masquerade.masqLinkLocalIPv6", flag: "masq-link-local-ipv6", help: "masquerade pod traffic to fe80::/10 too",
		ptr: func(c *Configuration) any { return &c.Masquerade.MasqLinkLocalIPv6 }},
	{path: "masquerade.configFile", flag: "masquerade-config", help: "ip-masq-agent config file (nonMasqueradeCIDRs, masqLinkLocal, masqLinkLocalIPv6), followed for changes; replaces the three flags above",
		ptr: func(c *Configuration) any { return &c.Masquerade.ConfigFile }},
	{path: "serviceProxyName", flag: "service-proxy-name", help: "value of the service.kubernetes.io/service-proxy-name label that selects kubenat",
		ptr: func(c *Configuration) any { return &c.ServiceProxyName }},
	{path: "minSyncPeriod", flag: "min-sync-period", help: "least time between two syncs; changes meanwhile are batched (with --untrack-pod-tcp, a change of the node's addresses is synced at once); /healthz fails when a change waited longer than 60s plus this", duration: true,
		ptr: func(c *Configuration) any { return &c.MinSyncPeriod }},
	{path: "syncPeriod", flag: "sync-period", help: "how often the agent checks that its rules are in place, and programs them again when they were flushed or deleted from outside (e.g. nft flush ruleset, iptables -F)", duration: true,
		ptr: func(c *Configuration) any { return &c.SyncPeriod }},
	{path: "metricsBindAddress", flag: "metrics-bind-address", help: `host:port of the Prometheus metrics server (/metrics); "" disables it`,
		ptr: func(c *Configuration) any { return &c.MetricsBindAddress }},
	{path: "healthzBindAddress", flag: "healthz-bind-address", help: `host:port of the kube-proxy compatible /healthz and /livez; "" disables them`,
		ptr: func(c *Configuration) any { return &c.HealthzBindAddress }},
	{path: "enableProfiling", flag: "profiling", help: "serve the Go runtime's profiles at /debug/pprof/ on the metrics server",
		ptr: func(c *Configuration) any { return &c.EnableProfiling }},
	{path: "clientConnection.kubeconfig", flag: "kubeconfig", help: "kubeconfig file of the Kubernetes API to watch (default: in-cluster when $KUBERNETES_SERVICE_HOST is set)",
		ptr: func(c *Configuration) any { return &c.ClientConnection.Kubeconfig }},
	{path: "clientConnection.contentType", flag: "kube-api-content-type", help: "encoding of API requests: " + ContentTypeProtobuf + " or " + ContentTypeJSON,
		ptr: func(c *Configuration) any { return &c.ClientConnection.ContentType }},
	{path: "clientConnection.qps", flag: "kube-api-qps", help: "API requests per second",
		ptr: func(c *Configuration) any { return &c.ClientConnection.QPS }},
	{path: "clientConnection.burst", flag: "kube-api-burst", help: "API request burst",
		ptr: func(c *Configuration) any { return &c.ClientConnection.Burst }},
	{path: "manifests", flag: "manifests", help: "directory of Kubernetes YAML manifests (Services, EndpointSlices, Nodes, ServiceCIDRs) to read instead of the API",
		ptr: func(c *Configuration) any { return &c.Manifests }},
	{path: "socketLB.cgroup", flag: "socket-lb-cgroup", help: "cgroup v2 directory whose processes' TCP connects to ClusterIPs go straight to an endpoint (eBPF socket load balancer, IPv4 and IPv6; see also --untrack-pod-tcp); the cgroup v2 root serves every pod; empty: off",
		ptr: func(c *Configuration) any { return &c.SocketLB.Cgroup }},
	{path: "socketLB.pinDir", flag: "bpf-pin-dir", help: "directory on a bpf file system where the socket load balancer and the tc NAT's connections are pinned, so they outlive the agent",
		ptr: func(c *Configuration) any { return &c.SocketLB.PinDir }},
	{path: "tcNAT.enabled", flag: "tc-nat", help: "translate new IPv4 TCP and UDP connections from outside the node to NodePorts, externalIPs and LoadBalancer IPs in eBPF programs on the node's interfaces (tc), with connection state of their own, so they never enter netfilter; what they do not take, nftables serves",
		ptr: func(c *Configuration) any { return &c.TCNAT.Enabled }},
	{path: "tcNAT.snatPorts", flag: "tc-nat-snat-ports", help: "source ports the tc NAT allocates when it masquerades (first-last); empty: the larger range outside net.ipv4.ip_local_port_range",
		ptr: func(c *Configuration) any { return &c.TCNAT.SNATPorts }},
	{path: "tcNAT.podToPod", flag: "tc-nat-pod-to-pod", help: "with the tc NAT and --untrack-pod-tcp, deliver TCP between two of this node's pods that no kubenat rule can have translated straight into the destination pod (eBPF at the pods' interfaces), past the bridge and netfilter (netfilter-based NetworkPolicy does not see it)",
		ptr: func(c *Configuration) any { return &c.TCNAT.PodToPod }},
	{path: "socketLB.untrackPodTCP", flag: "untrack-pod-tcp", help: "with the socket load balancer, leave TCP between pods untracked where no kubenat rule can have translated it (faster; only correct when every pod connects through the balancer and no one else DNATs pod traffic to pods, e.g. hostPorts)",
		ptr: func(c *Configuration) any { return &c.SocketLB.UntrackPodTCP }},
	{path: "conntrack.maxPerCore", flag: "conntrack-max-per-core", help: "size the conntrack table (nf_conntrack_max) at this many entries per CPU, at most 1048576 in all, at least --conntrack-min; 0 leaves it (needed outside the host's network namespace)",
		ptr: func(c *Configuration) any { return &c.Conntrack.MaxPerCore }},
	{path: "conntrack.min", flag: "conntrack-min", help: "least conntrack table size --conntrack-max-per-core sets",
		ptr: func(c *Configuration) any { return &c.Conntrack.Min }},
	{path: "conntrack.tcpEstablishedTimeout", flag: "conntrack-tcp-timeout-established", help: "conntrack timeout of idle established TCP connections; 0 leaves the kernel's", duration: true,
		ptr: func(c *Configuration) any { return &c.Conntrack.TCPEstablishedTimeout }},
	{path: "conntrack.tcpCloseWaitTimeout", flag: "conntrack-tcp-timeout-close-wait", help: "conntrack timeout of TCP connections in CLOSE_WAIT; 0 leaves the kernel's", duration: true,
		ptr: func(c *Configuration) any { return &c.Conntrack.TCPCloseWaitTimeout }},
	{path: "conntrack.tcpBeLiberal", flag: "conntrack-tcp-be-liberal", help: "set nf_conntrack_tcp_be_liberal: out-of-window TCP packets are translated with their connection instead of passed on as invalid",
		ptr: func(c *Configuration) any { return &c.Conntrack.TCPBeLiberal }},
	{path: "conntrack.udpTimeout", flag: "conntrack-udp-timeout", help: "conntrack timeout of UDP flows without replies; 0 leaves the kernel's", duration: true,
		ptr: func(c *Configuration) any { return &c.Conntrack.UDPTimeout }},
	{path: "conntrack.udpStreamTimeout", flag: "conntrack-udp-timeout-stream", help: "conntrack timeout of UDP flows with replies; 0 leaves the kernel's", duration: true,
		ptr: func(c *Configuration) any { return &c.Conntrack.UDPStreamTimeout }},
	{path: "conntrack.procfs", flag: "conntrack-procfs", help: "where the host's /proc is mounted (its sys/net/netfilter is written)",
		ptr: func(c *Configuration) any { return &c.Conntrack.Procfs }},
}

// FlagFor returns the name (without "--") of the flag that overrides the
// field at path (e.g. "masquerade.masqLinkLocal"), or "" if none does.
func FlagFor(path string) string {
	for _, f := range fields {
		if f.path == path {
			return f.flag
		}
	}
	return ""
}

// FlagNames returns the names of every flag ApplyFlags reads.
func FlagNames() []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = f.flag
	}
	return out
}

// RegisterFlags defines on fs every configuration flag fs does not define
// yet, with Default's values as defaults and the field named in the help.
// Flags a command already defines (with the same meaning and type) are
// kept as they are.
func RegisterFlags(fs *pflag.FlagSet) {
	d := Default()
	for _, f := range fields {
		if fs.Lookup(f.flag) != nil {
			continue
		}
		help := f.help + " (config: " + f.path + ")"
		switch p := f.ptr(d).(type) {
		case *string:
			if f.duration {
				def, _ := time.ParseDuration(*p)
				fs.Duration(f.flag, def, help)
				continue
			}
			fs.String(f.flag, *p, help)
		case *[]string:
			fs.StringSlice(f.flag, *p, help)
		case *bool:
			fs.Bool(f.flag, *p, help)
		case *float32:
			fs.Float32(f.flag, *p, help)
		case *int32:
			fs.Int32(f.flag, *p, help)
		}
	}
}

// ApplyFlags overrides the configuration with every flag of fs that was
// set on the command line (Changed); flags left at their defaults do not
// touch it, and flags fs does not define are skipped. A list flag replaces
// the whole list. Values are checked by Validate, except that booleans and
// numbers must parse here.
func (c *Configuration) ApplyFlags(fs *pflag.FlagSet) error {
	for _, f := range fields {
		fl := fs.Lookup(f.flag)
		if fl == nil || !fl.Changed {
			continue
		}
		v := fl.Value.String()
		switch p := f.ptr(c).(type) {
		case *string:
			*p = v
		case *[]string:
			sv, ok := fl.Value.(pflag.SliceValue)
			if !ok {
				return fmt.Errorf("--%s: not a list flag", f.flag)
			}
			*p = append([]string{}, sv.GetSlice()...)
		case *bool:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("--%s: %q is not a boolean", f.flag, v)
			}
			*p = b
		case *float32:
			x, err := strconv.ParseFloat(v, 32)
			if err != nil {
				return fmt.Errorf("--%s: %q is not a number", f.flag, v)
			}
			*p = float32(x)
		case *int32:
			n, err := strconv.ParseInt(v, 10, 32)
			if err != nil {
				return fmt.Errorf("--%s: %q is not an integer", f.flag, v)
			}
			*p = int32(n)
		}
	}
	return nil
}
