// Package config is kubenat's versioned configuration file, the
// KubenatConfiguration:
//
//	apiVersion: kubenat.io/v1alpha1
//	kind: KubenatConfiguration
//	clusterCIDRs: [10.244.0.0/16]
//	minSyncPeriod: 100ms
//
// A file is decoded strictly: an unknown or duplicated field is an error
// naming the field (with its path, e.g. "masquerade.masqLinkLocl"), so a
// typo never silently falls back to a default. Fields a file leaves out
// keep their defaults (see Default and the field comments). Command-line
// flags override the file: every field has a flag (FlagFor) and a flag
// given on the command line replaces the file's value, list flags the
// whole list.
//
// Validate reports every problem at once, each naming the field and its
// flag. Effective returns the configuration as kubenat runs it, the form
// `kubenat agent --write-config-to` prints.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	yamlv3 "go.yaml.in/yaml/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/kubenat/kubenat/internal/model"
)

// APIVersion and Kind identify the configuration file format.
const (
	APIVersion = "kubenat.io/v1alpha1"
	Kind       = "KubenatConfiguration"
)

// Defaults of the fields that have one.
const (
	DefaultMinSyncPeriod      = 100 * time.Millisecond
	DefaultSyncPeriod         = 30 * time.Second
	DefaultMetricsBindAddress = "127.0.0.1:10249"
	DefaultHealthzBindAddress = "0.0.0.0:10256"
	DefaultQPS                = 5
	DefaultBurst              = 10
	// MaxMinSyncPeriod bounds minSyncPeriod: longer would leave changes
	// unprogrammed for too long.
	MaxMinSyncPeriod = time.Hour
	// ContentTypeProtobuf and ContentTypeJSON are the API encodings
	// clientConnection.contentType accepts.
	ContentTypeProtobuf = "application/vnd.kubernetes.protobuf"
	ContentTypeJSON     = "application/json"
)

// Configuration is the KubenatConfiguration, version v1alpha1.
type Configuration struct {
	// APIVersion must be "kubenat.io/v1alpha1".
	APIVersion string `json:"apiVersion"`
	// Kind must be "KubenatConfiguration".
	Kind string `json:"kind"`

	// Datapath is what programs the Services into the kernel: "nftables"
	// (default: a constant number of lookups per packet whatever the
	// number of Services) or "iptables" (the KUBENAT-SERVICES →
	// KUBENAT-SVC-* → KUBENAT-SEP-* chains of kube-proxy's iptables mode,
	// for hosts that cannot use nftables; its cost per new connection
	// grows with the number of Services) through the system's iptables
	// commands, or "iptables-nft" / "iptables-legacy" to name the variant
	// (a host whose kernel lacks nf_tables needs iptables-legacy; in the
	// image, "iptables" is iptables-nft, whatever the host uses). Services
	// get the same treatment from all, but for the differences the README
	// lists. The agent removes the rules of the others after its first
	// sync. The socket load balancer needs nftables. Flag --datapath.
	Datapath string `json:"datapath"`
	// NodeName is the name of this node's Node object; endpoints on it are
	// local. Default: $NODE_NAME, else the host name. Flag --node-name.
	NodeName string `json:"nodeName,omitempty"`
	// ClusterCIDRs are the pod address ranges of the whole cluster, at most
	// one per address family. Required, except when detectLocalMode
	// recognizes the pods by their interface. Flag --cluster-cidr.
	ClusterCIDRs []string `json:"clusterCIDRs"`
	// DetectLocalMode says how traffic from this node's pods is told from
	// other traffic (kube-proxy's option of the same name): "NodeCIDR"
	// (default: a source in the Node's spec.podCIDRs, else in
	// clusterCIDRs), "BridgeInterface" (arriving on
	// detectLocal.bridgeInterface) or "InterfaceNamePrefix" (arriving on an
	// interface whose name starts with detectLocal.interfaceNamePrefix).
	// With the interface modes clusterCIDRs may be empty (pods addressed
	// from the node's network, e.g. AWS VPC CNI): pod egress is then
	// recognized by its interface too. Flag --detect-local-mode.
	DetectLocalMode string `json:"detectLocalMode"`
	// DetectLocal names the interfaces of the interface modes.
	DetectLocal DetectLocal `json:"detectLocal"`
	// ServiceCIDRs are the ranges ClusterIPs are allocated from (the API
	// server's --service-cluster-ip-range). A new connection to an address
	// of them that no Service (or other proxy) DNATs is dropped instead of
	// being routed out of the cluster. The cluster's ServiceCIDR objects
	// (networking.k8s.io/v1; Kubernetes 1.33+) add theirs, so with the API
	// this may stay empty. Default none. Flag --service-cidr.
	ServiceCIDRs []string `json:"serviceCIDRs,omitempty"`
	// NodeIPs override the Node object's addresses (status.addresses of
	// type InternalIP and ExternalIP). Default: none, use the Node's.
	// Flag --node-ip.
	NodeIPs []string `json:"nodeIPs,omitempty"`
	// NodePortAddresses selects the addresses NodePorts are served on:
	// "primary" (the node's first address of each family) and/or CIDRs
	// matching the node's addresses. Default ["primary"].
	// Flag --nodeport-addresses.
	NodePortAddresses []string `json:"nodePortAddresses"`
	// MasqueradeAll masquerades all traffic to ClusterIPs, also from pods
	// on this node. Default false. Flag --masquerade-all.
	MasqueradeAll bool `json:"masqueradeAll"`
	// Masquerade configures pod egress SNAT (ip-masq-agent semantics).
	Masquerade Masquerade `json:"masquerade"`
	// ServiceProxyName is the value of the service.kubernetes.io/service-proxy-name
	// label that selects kubenat; Services labelled with another value are
	// left to that proxy. Default "kubenat". Flag --service-proxy-name.
	ServiceProxyName string `json:"serviceProxyName"`
	// MinSyncPeriod is the least time between two syncs of the kernel
	// rules: changes arriving meanwhile are batched into one transaction.
	// A change after a quiet period is applied at once; 0s syncs on every
	// change. With socketLB.untrackPodTCP, a change of the node's addresses
	// is always synced at once. A Go duration ("100ms", "1s"), at most 1h.
	// Default "100ms". /healthz reports the agent unhealthy when a change
	// has waited longer than 60s plus this period.
	// Flag --min-sync-period.
	MinSyncPeriod string `json:"minSyncPeriod"`
	// SyncPeriod is how often the agent checks that its rules are still
	// in the kernel (nftables: a read of one base chain per family,
	// whatever the tables hold; iptables: ten `iptables -C` per family,
	// each jump from a built-in chain and one rule) and programs them again when they were flushed or deleted
	// from outside (`nft flush ruleset`, as Debian's nftables service runs
	// on reload; `iptables -F`). A single rule or element deleted by hand
	// is not noticed: kube-proxy's option of the same name re-applies its
	// rules, this one only checks that the tables are there. A Go
	// duration, 1s to 1h. Default "30s". Flag --sync-period.
	SyncPeriod string `json:"syncPeriod"`
	// MetricsBindAddress is the host:port the Prometheus metrics are
	// served on, at /metrics. Empty disables the server. Default
	// "127.0.0.1:10249". Flag --metrics-bind-address.
	MetricsBindAddress string `json:"metricsBindAddress"`
	// HealthzBindAddress is the host:port of the kube-proxy compatible
	// /healthz and /livez endpoints, which load balancers and the kubelet
	// probe. Empty disables them. Default "0.0.0.0:10256".
	// Flag --healthz-bind-address.
	HealthzBindAddress string `json:"healthzBindAddress"`
	// EnableProfiling serves the Go runtime's profiles (net/http/pprof) at
	// /debug/pprof/ on the metrics server, as kube-proxy's option of the
	// same name does. Default false. Flag --profiling.
	EnableProfiling bool `json:"enableProfiling"`
	// ClientConnection configures the connection to the Kubernetes API.
	ClientConnection ClientConnection `json:"clientConnection"`
	// Manifests is a directory of Kubernetes YAML manifests to read the
	// objects from instead of the API. Flag --manifests.
	Manifests string `json:"manifests,omitempty"`
	// SocketLB configures the socket load balancer (eBPF, connect-time
	// load balancing of TCP ClusterIPs). Off by default.
	SocketLB SocketLB `json:"socketLB"`
	// TCNAT configures the tc NAT (eBPF NAT of external traffic to
	// NodePorts, externalIPs and LoadBalancer IPs). Off by default.
	TCNAT TCNAT `json:"tcNAT"`
	// Conntrack sets the kernel's connection-tracking sysctls, as
	// kube-proxy's conntrack options do, with the same defaults.
	Conntrack Conntrack `json:"conntrack"`
}

// Conntrack sets the node's connection-tracking sysctls once the agent's
// first sync has programmed its rules (which load the conntrack module).
// Each field has kube-proxy's default and meaning; a zero value leaves the
// kernel's setting alone. The table's size can only be set from the
// host's network namespace (the agent's DaemonSet runs there); elsewhere
// (kind-like nodes in containers) set maxPerCore to 0. A setting that
// cannot be applied is logged and does not stop the agent.
type Conntrack struct {
	// MaxPerCore sizes the table (nf_conntrack_max) at this many entries
	// per online CPU of the machine, at most 1,048,576 in all (kube-proxy's
	// cap), at least Min; the hash table
	// (nf_conntrack_buckets) grows to a quarter of it when smaller. 0
	// leaves both alone. Default 32768. Flag --conntrack-max-per-core.
	MaxPerCore int32 `json:"maxPerCore"`
	// Min is the least nf_conntrack_max MaxPerCore sets. Default 131072.
	// Flag --conntrack-min.
	Min int32 `json:"min"`
	// TCPEstablishedTimeout is how long an idle established TCP connection
	// stays in the table (the kernel's default is 5 days). Whole seconds,
	// at most 596h (the kernel's limit); "0s" leaves it. Default "24h0m0s".
	// Flag --conntrack-tcp-timeout-established.
	TCPEstablishedTimeout string `json:"tcpEstablishedTimeout"`
	// TCPCloseWaitTimeout is how long a TCP connection in CLOSE_WAIT stays
	// in the table. Whole seconds; "0s" leaves it. Default "1h0m0s".
	// Flag --conntrack-tcp-timeout-close-wait.
	TCPCloseWaitTimeout string `json:"tcpCloseWaitTimeout"`
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal: TCP packets outside
	// the window are translated with their connection instead of being
	// marked invalid and passed on untranslated (which can reset a
	// long-lived connection through a Service). false leaves the kernel's
	// setting. Default false. Flag --conntrack-tcp-be-liberal.
	TCPBeLiberal bool `json:"tcpBeLiberal"`
	// UDPTimeout is the timeout of UDP flows that saw packets in one
	// direction only. Whole seconds; "0s" (the default) leaves it.
	// Flag --conntrack-udp-timeout.
	UDPTimeout string `json:"udpTimeout"`
	// UDPStreamTimeout is the timeout of UDP flows that saw replies.
	// Whole seconds; "0s" (the default) leaves it.
	// Flag --conntrack-udp-timeout-stream.
	UDPStreamTimeout string `json:"udpStreamTimeout"`
	// Procfs is where the agent finds the host's /proc (it writes below
	// sys/net/netfilter only): an unprivileged container's own /proc/sys
	// is read-only, so the chart mounts the host's
	// /proc/sys/net/netfilter at /host/proc/sys/net/netfilter and sets
	// "/host/proc". Default "/proc". Flag --conntrack-procfs.
	Procfs string `json:"procfs"`
}

// Defaults of the conntrack section (kube-proxy's).
const (
	DefaultConntrackMaxPerCore            = 32768
	DefaultConntrackMin                   = 131072
	DefaultConntrackTCPEstablishedTimeout = 24 * time.Hour
	DefaultConntrackTCPCloseWaitTimeout   = time.Hour
	// MaxConntrackPerCoreTotal caps maxPerCore × CPUs, as kube-proxy
	// does: 1,048,576 entries (about 300 MiB of kernel memory when full).
	MaxConntrackPerCoreTotal = 1 << 20
)

// DetectLocal names the interfaces detectLocalMode's interface modes use.
type DetectLocal struct {
	// BridgeInterface is the bridge the node's pods are attached to (e.g.
	// cni0, cbr0), for detectLocalMode BridgeInterface.
	// Flag --pod-bridge-interface.
	BridgeInterface string `json:"bridgeInterface,omitempty"`
	// InterfaceNamePrefix starts the name of every pod's interface on the
	// node (e.g. veth, cali, eni), for detectLocalMode
	// InterfaceNamePrefix. Flag --pod-interface-name-prefix.
	InterfaceNamePrefix string `json:"interfaceNamePrefix,omitempty"`
}

// The datapath values.
const (
	DatapathNFTables = "nftables"
	DatapathIPTables = "iptables" // also iptables-nft, iptables-legacy: see iptables.DatapathNames
)

// The detectLocalMode values.
const (
	DetectLocalNodeCIDR            = "NodeCIDR"
	DetectLocalBridgeInterface     = "BridgeInterface"
	DetectLocalInterfaceNamePrefix = "InterfaceNamePrefix"
)

// SocketLB configures the socket load balancer: an eBPF program on the
// cgroup connect hook that sends a TCP connect() to a ClusterIP straight
// to an endpoint, so pod-to-pod TCP needs no NAT and no connection
// tracking. See docs/design.md.
type SocketLB struct {
	// Cgroup is the cgroup v2 directory whose processes connect through the
	// balancer: on a node, the root of the cgroup v2 hierarchy
	// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts), so that
	// every pod is served. Empty (the default) turns the balancer off.
	// Ignored with masqueradeAll. Flag --socket-lb-cgroup.
	Cgroup string `json:"cgroup,omitempty"`
	// PinDir is the directory, on a bpf file system, where the balancer is
	// pinned so that it outlives the agent (it is the datapath between two
	// agents, like the nftables tables). Default "/sys/fs/bpf/kubenat".
	// Flag --bpf-pin-dir.
	PinDir string `json:"pinDir"`
	// UntrackPodTCP also leaves TCP between pods untracked where no rule of
	// kubenat's can have translated it: most of the remaining cost of a new
	// connection. Only correct when every pod's connects go through the
	// balancer (Cgroup is the cgroup v2 root, no VM-sandboxed pods) and no
	// one else DNATs pod traffic to pods (e.g. a CNI's hostPorts reached
	// from pods). Default false. Flag --untrack-pod-tcp.
	UntrackPodTCP bool `json:"untrackPodTCP"`
}

// TCNAT configures the tc NAT: eBPF programs on the node's interfaces
// that translate new IPv4 TCP and UDP connections from outside the node to
// NodePorts, externalIPs and LoadBalancer IPs, and their replies, with
// connection state of their own, so that they never enter netfilter.
// Connections it does not take (see docs/design.md) nftables serves as
// before. Its connection maps are pinned in socketLB.pinDir's "tcnat"
// directory, so connections survive the agent's restart.
type TCNAT struct {
	// Enabled turns it on. Default false. Flag --tc-nat.
	Enabled bool `json:"enabled"`
	// SNATPorts is the range of source ports it allocates when it
	// masquerades ("first-last"). Empty (the default): the larger of the
	// ranges below and above the node's net.ipv4.ip_local_port_range
	// (1024-32767 with Linux's default), which the node's own connections
	// do not use. Flag --tc-nat-snat-ports.
	SNATPorts string `json:"snatPorts,omitempty"`
	// PodToPod has its pod program deliver TCP between two of this node's
	// pods straight into the destination pod's namespace, past the bridge
	// and netfilter, where untracking (socketLB.untrackPodTCP) leaves it
	// untracked: no rule of kubenat's can have translated it. The bridge's
	// and netfilter's own processing (netfilter-based NetworkPolicy, bridge
	// VLAN filtering, packet captures on the bridge) does not see those
	// packets. Needs enabled and socketLB.untrackPodTCP. Default false.
	// Flag --tc-nat-pod-to-pod.
	PodToPod bool `json:"podToPod"`
}

// PortRange parses SNATPorts: zeros when it is empty.
func (t TCNAT) PortRange() ([2]uint16, error) {
	if t.SNATPorts == "" {
		return [2]uint16{}, nil
	}
	lo, hi, ok := strings.Cut(t.SNATPorts, "-")
	a, err1 := strconv.ParseUint(lo, 10, 16)
	b, err2 := strconv.ParseUint(hi, 10, 16)
	if !ok || err1 != nil || err2 != nil || a < 1 || a > b {
		return [2]uint16{}, fmt.Errorf("%q is not a port range first-last (1-65535)", t.SNATPorts)
	}
	return [2]uint16{uint16(a), uint16(b)}, nil
}

// TCNATPinDir is where the tc NAT pins its connections, given
// SocketLB.PinDir: its "tcnat" directory; empty when pinDir is.
func TCNATPinDir(pinDir string) string {
	if pinDir == "" {
		return ""
	}
	return filepath.Join(pinDir, "tcnat")
}

// DefaultBPFPinDir is the default SocketLB.PinDir.
const DefaultBPFPinDir = "/sys/fs/bpf/kubenat"

// Masquerade is ip-masq-agent's configuration: which destinations pod
// traffic reaches with its own source address.
type Masquerade struct {
	// NonMasqueradeCIDRs are destinations pods reach without SNAT. The
	// cluster CIDRs are always added. Default: 10.0.0.0/8, 172.16.0.0/12,
	// 192.168.0.0/16 and fc00::/7. An explicit empty list masquerades
	// everything outside the cluster CIDRs. Flag --non-masquerade-cidr.
	NonMasqueradeCIDRs []string `json:"nonMasqueradeCIDRs"`
	// MasqLinkLocal masquerades traffic to 169.254.0.0/16 too. Default
	// false. Flag --masq-link-local.
	MasqLinkLocal bool `json:"masqLinkLocal"`
	// MasqLinkLocalIPv6 masquerades traffic to fe80::/10 too. Default
	// false. Flag --masq-link-local-ipv6.
	MasqLinkLocalIPv6 bool `json:"masqLinkLocalIPv6"`
	// ConfigFile is an ip-masq-agent configuration file (nonMasqueradeCIDRs,
	// masqLinkLocal, masqLinkLocalIPv6) read at start and followed for
	// changes; a bad version is reported and the last good one kept. It
	// replaces the three fields above, which must then keep their
	// defaults. Flag --masquerade-config.
	ConfigFile string `json:"configFile,omitempty"`
}

// ClientConnection configures the Kubernetes API client.
type ClientConnection struct {
	// Kubeconfig is the kubeconfig file to reach the API with. When empty
	// and Manifests is empty too, kubenat uses the in-cluster configuration
	// (it runs in a pod: $KUBERNETES_SERVICE_HOST is set). Flag --kubeconfig.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// ContentType is the encoding of requests and watches:
	// "application/vnd.kubernetes.protobuf" (default, smaller and faster) or
	// "application/json". Flag --kube-api-content-type.
	ContentType string `json:"contentType"`
	// QPS and Burst limit the client's request rate (watches are long
	// requests and barely count); 0 means client-go's default. Defaults 5
	// and 10. Flags --kube-api-qps, --kube-api-burst.
	QPS   float32 `json:"qps"`
	Burst int32   `json:"burst"`
}

// Default returns the configuration with every default set. It has no
// ClusterCIDRs: they must be given.
func Default() *Configuration {
	c := &Configuration{
		APIVersion:         APIVersion,
		Kind:               Kind,
		Datapath:           DatapathNFTables,
		MinSyncPeriod:      DefaultMinSyncPeriod.String(),
		SyncPeriod:         DefaultSyncPeriod.String(),
		MetricsBindAddress: DefaultMetricsBindAddress,
		HealthzBindAddress: DefaultHealthzBindAddress,
		ClientConnection:   ClientConnection{QPS: DefaultQPS, Burst: DefaultBurst},
		SocketLB:           SocketLB{PinDir: DefaultBPFPinDir},
		Conntrack: Conntrack{
			MaxPerCore:            DefaultConntrackMaxPerCore,
			Min:                   DefaultConntrackMin,
			TCPEstablishedTimeout: DefaultConntrackTCPEstablishedTimeout.String(),
			TCPCloseWaitTimeout:   DefaultConntrackTCPCloseWaitTimeout.String(),
			UDPTimeout:            "0s",
			UDPStreamTimeout:      "0s",
			Procfs:                "/proc",
		},
	}
	c.setDefaults()
	return c
}

// setDefaults fills in the fields left empty where empty has no meaning of
// its own: nil lists (null in a file) and empty names.
func (c *Configuration) setDefaults() {
	if c.NodePortAddresses == nil {
		c.NodePortAddresses = []string{"primary"}
	}
	if c.DetectLocalMode == "" {
		c.DetectLocalMode = DetectLocalNodeCIDR
	}
	if c.Datapath == "" {
		c.Datapath = DatapathNFTables
	}
	if c.Masquerade.NonMasqueradeCIDRs == nil {
		for _, p := range model.DefaultNonMasqueradeCIDRs() {
			c.Masquerade.NonMasqueradeCIDRs = append(c.Masquerade.NonMasqueradeCIDRs, p.String())
		}
	}
	if c.ServiceProxyName == "" {
		c.ServiceProxyName = model.DefaultProxyName
	}
	if c.ClientConnection.ContentType == "" {
		c.ClientConnection.ContentType = ContentTypeProtobuf
	}
}

// Decode parses a configuration file (YAML or JSON). Fields the file
// leaves out keep their defaults; a field set explicitly keeps its value,
// also a zero one (minSyncPeriod: 0s syncs on every change,
// metricsBindAddress: "" disables metrics, nonMasqueradeCIDRs: [] is an
// empty list), except null lists and empty names, which mean the default.
// It fails on syntax errors, on unknown or duplicate fields (naming each
// with its path), and on a wrong apiVersion or kind. It does not Validate
// the values.
func Decode(data []byte) (*Configuration, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("parsing the configuration: %w", err)
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" {
		return nil, errors.New("the configuration is empty: it needs at least apiVersion and kind")
	}
	var tm metav1.TypeMeta
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &tm); err != nil {
		return nil, fmt.Errorf("parsing the configuration: %w", err)
	}
	if tm.APIVersion != APIVersion || tm.Kind != Kind {
		return nil, fmt.Errorf("apiVersion %q, kind %q: not a kubenat configuration (want apiVersion: %s, kind: %s)",
			tm.APIVersion, tm.Kind, APIVersion, Kind)
	}
	c := Default()
	strict, err := kjson.UnmarshalStrict(js, c, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return nil, fmt.Errorf("decoding the configuration: %w", typeError(err))
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("decoding the configuration: %w", errors.Join(strict...))
	}
	c.setDefaults()
	return c, nil
}

// typeError rewrites a JSON type mismatch into the file's terms: the
// field's path, what it holds and what it needs ("minSyncPeriod: a number,
// want a duration such as \"100ms\"") instead of Go's type names. Other
// errors are returned as they are.
func typeError(err error) error {
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) || te.Field == "" {
		return err
	}
	return fmt.Errorf("%s: %s, want %s", te.Field, jsonValue(te.Value), wantFor(te.Field, te.Type))
}

// jsonValue names a JSON value as encoding/json describes it ("number",
// "number 1.5", "string", "array", "object", "bool") in the file's terms.
func jsonValue(v string) string {
	kind, _, _ := strings.Cut(v, " ")
	switch kind {
	case "array":
		return "a list"
	case "object":
		return "a mapping"
	case "bool":
		return "true or false"
	case "string":
		return "a string"
	default:
		return "a " + v
	}
}

// wantFor says what a field of Go type t at path needs. The string fields
// whose names end in Period or Timeout hold durations.
func wantFor(path string, t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		if strings.HasSuffix(path, "Period") || strings.HasSuffix(path, "Timeout") {
			return `a duration such as "100ms" or "1h"`
		}
		return "a string"
	case reflect.Slice:
		return "a list of " + strings.TrimPrefix(wantFor("", t.Elem()), "a ") + "s"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return fmt.Sprintf("a whole number (at most %d bits)", t.Bits())
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Struct, reflect.Map:
		return "a mapping"
	default:
		return t.String()
	}
}

// Load reads and decodes the configuration file at path (see Decode).
func Load(path string) (*Configuration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the configuration file: %w", err)
	}
	c, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Encode returns the configuration as YAML, every field spelled out, in
// the order of the type's fields (apiVersion and kind first).
func (c *Configuration) Encode() ([]byte, error) {
	js, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encoding the configuration: %w", err)
	}
	// JSON is YAML: decoding it into a node keeps the field order, and
	// clearing the styles turns flow style ({...}, "...") into block style.
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(js, &doc); err != nil {
		return nil, fmt.Errorf("encoding the configuration: %w", err)
	}
	blockStyle(&doc)
	var buf bytes.Buffer
	enc := yamlv3.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("encoding the configuration: %w", err)
	}
	return buf.Bytes(), nil
}

// blockStyle clears the presentation style of n and its children, except
// where a plain scalar would be read back as another type or value.
func blockStyle(n *yamlv3.Node) {
	if n.Kind == yamlv3.ScalarNode && n.Tag == "!!str" {
		// Keep quotes only when needed ("", "true", "10", "a: b").
		n.Style = 0
		var back any
		if out, err := yamlv3.Marshal(n); err != nil || yamlv3.Unmarshal(out, &back) != nil || back != n.Value {
			n.Style = yamlv3.DoubleQuotedStyle
		}
	} else {
		n.Style = 0
	}
	for _, child := range n.Content {
		blockStyle(child)
	}
}
