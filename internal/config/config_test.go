package config

import (
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/kubenat/kubenat/internal/conntrack"
	"github.com/kubenat/kubenat/internal/model"
)

const header = "apiVersion: kubenat.io/v1alpha1\nkind: KubenatConfiguration\n"

func TestDecode(t *testing.T) {
	withDefaults := func(f func(c *Configuration)) *Configuration {
		c := Default()
		f(c)
		return c
	}
	tests := []struct {
		name    string
		in      string
		want    *Configuration
		wantErr []string // substrings of the error, all required
	}{
		{name: "minimal file gets every default", in: header,
			want: Default()},
		{name: "values replace defaults", in: header + `
datapath: nftables
nodeName: node-a
clusterCIDRs: [10.244.0.0/16, fd00:244::/56]
detectLocalMode: BridgeInterface
detectLocal:
  bridgeInterface: cni0
nodeIPs: [192.168.100.11]
nodePortAddresses: [192.168.100.0/24]
masqueradeAll: true
masquerade:
  nonMasqueradeCIDRs: [10.0.0.0/8]
  masqLinkLocal: true
  masqLinkLocalIPv6: true
serviceProxyName: other
minSyncPeriod: 1s
syncPeriod: 1m
metricsBindAddress: 0.0.0.0:9999
healthzBindAddress: 127.0.0.1:10256
clientConnection:
  kubeconfig: /etc/kubenat/kubeconfig
  contentType: application/json
  qps: 20
  burst: 40
socketLB:
  cgroup: /sys/fs/cgroup
  pinDir: /sys/fs/bpf/kn
  untrackPodTCP: true
conntrack:
  maxPerCore: 0
  min: 1000
  tcpEstablishedTimeout: 2h
  tcpCloseWaitTimeout: 0s
  tcpBeLiberal: true
  udpTimeout: 45s
  udpStreamTimeout: 3m
  procfs: /host/proc
`, want: &Configuration{APIVersion: APIVersion, Kind: Kind, Datapath: DatapathNFTables, NodeName: "node-a",
			ClusterCIDRs: []string{"10.244.0.0/16", "fd00:244::/56"}, NodeIPs: []string{"192.168.100.11"},
			DetectLocalMode: DetectLocalBridgeInterface, DetectLocal: DetectLocal{BridgeInterface: "cni0"},
			NodePortAddresses: []string{"192.168.100.0/24"}, MasqueradeAll: true,
			Masquerade:       Masquerade{NonMasqueradeCIDRs: []string{"10.0.0.0/8"}, MasqLinkLocal: true, MasqLinkLocalIPv6: true},
			ServiceProxyName: "other", MinSyncPeriod: "1s", SyncPeriod: "1m", MetricsBindAddress: "0.0.0.0:9999", HealthzBindAddress: "127.0.0.1:10256",
			ClientConnection: ClientConnection{Kubeconfig: "/etc/kubenat/kubeconfig", ContentType: ContentTypeJSON, QPS: 20, Burst: 40},
			SocketLB:         SocketLB{Cgroup: "/sys/fs/cgroup", PinDir: "/sys/fs/bpf/kn", UntrackPodTCP: true},
			Conntrack: Conntrack{Min: 1000, TCPEstablishedTimeout: "2h", TCPCloseWaitTimeout: "0s", TCPBeLiberal: true,
				UDPTimeout: "45s", UDPStreamTimeout: "3m", Procfs: "/host/proc"}}},
		{name: "explicit zero values are kept", in: header + "minSyncPeriod: 0s\nmetricsBindAddress: \"\"\nmasquerade:\n  nonMasqueradeCIDRs: []\n",
			want: withDefaults(func(c *Configuration) {
				c.MinSyncPeriod, c.MetricsBindAddress, c.Masquerade.NonMasqueradeCIDRs = "0s", "", []string{}
			})},
		{name: "null list means the default", in: header + "nodePortAddresses: null\n", want: Default()},
		{name: "JSON works too", in: `{"apiVersion":"kubenat.io/v1alpha1","kind":"KubenatConfiguration","masqueradeAll":true}`,
			want: withDefaults(func(c *Configuration) { c.MasqueradeAll = true })},
		{name: "unknown top-level field", in: header + "clusterCIDR: 10.244.0.0/16\n",
			wantErr: []string{`unknown field "clusterCIDR"`}},
		{name: "unknown nested field names its path", in: header + "masquerade:\n  masqLinkLocl: true\n",
			wantErr: []string{`unknown field "masquerade.masqLinkLocl"`}},
		{name: "every unknown field is named", in: header + "foo: 1\nclientConnection:\n  bar: 2\n",
			wantErr: []string{`unknown field "foo"`, `unknown field "clientConnection.bar"`}},
		{name: "duplicate field", in: header + "masqueradeAll: true\nmasqueradeAll: false\n",
			wantErr: []string{`"masqueradeAll"`, "already set"}},
		{name: "wrong type names the field", in: header + "clientConnection:\n  qps: fast\n",
			wantErr: []string{"clientConnection.qps: a string, want a number"}},
		{name: "a duration given as a number", in: header + "minSyncPeriod: 100\n",
			wantErr: []string{`minSyncPeriod: a number, want a duration such as "100ms"`}},
		{name: "a nested duration given as a number", in: header + "conntrack:\n  udpTimeout: 30\n",
			wantErr: []string{`conntrack.udpTimeout: a number, want a duration`}},
		{name: "a list given as a string", in: header + "clusterCIDRs: 10.244.0.0/16\n",
			wantErr: []string{"clusterCIDRs: a string, want a list of strings"}},
		{name: "a count out of range", in: header + "conntrack:\n  maxPerCore: 1e20\n",
			wantErr: []string{"conntrack.maxPerCore: a number 100000000000000000000, want a whole number (at most 32 bits)"}},
		{name: "a mapping given as a list", in: header + "masquerade: [a]\n",
			wantErr: []string{"masquerade: a list, want a mapping"}},
		{name: "a flag given as a string", in: header + "masqueradeAll: \"yes\"\n",
			wantErr: []string{"masqueradeAll: a string, want true or false"}},
		{name: "field names are case-sensitive", in: header + "MasqueradeAll: true\n",
			wantErr: []string{`unknown field "MasqueradeAll"`}},
		{name: "wrong apiVersion", in: "apiVersion: kubenat.io/v1\nkind: KubenatConfiguration\n",
			wantErr: []string{`apiVersion "kubenat.io/v1"`, "want apiVersion: kubenat.io/v1alpha1"}},
		{name: "wrong kind", in: "apiVersion: kubenat.io/v1alpha1\nkind: KubeProxyConfiguration\n",
			wantErr: []string{`kind "KubeProxyConfiguration"`}},
		{name: "empty file", in: "", wantErr: []string{"empty"}},
		{name: "not YAML", in: "apiVersion: [\n", wantErr: []string{"parsing the configuration"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode([]byte(tc.in))
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Decode succeeded: %+v; want an error containing %q", got, tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Decode =\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func valid() *Configuration {
	c := Default()
	c.ClusterCIDRs = []string{"10.244.0.0/16"}
	return c
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(c *Configuration)
		wantErr []string // substrings; none means valid
	}{
		{"defaults plus a cluster CIDR", func(c *Configuration) {}, nil},
		{"dual stack", func(c *Configuration) { c.ClusterCIDRs = []string{"10.244.0.0/16", "fd00::/48"} }, nil},
		{"metrics disabled", func(c *Configuration) { c.MetricsBindAddress = "" }, nil},
		{"metrics on all addresses", func(c *Configuration) { c.MetricsBindAddress = ":10249" }, nil},
		{"no batching", func(c *Configuration) { c.MinSyncPeriod = "0s" }, nil},
		{"iptables", func(c *Configuration) { c.Datapath = DatapathIPTables }, nil},
		{"unknown datapath", func(c *Configuration) { c.Datapath = "ipvs" },
			[]string{`datapath (--datapath): "ipvs" is not a datapath; use one of nftables, iptables, iptables-nft, iptables-legacy`}},
		{"iptables-legacy", func(c *Configuration) { c.Datapath = "iptables-legacy" }, nil},
		{"socket load balancer with iptables", func(c *Configuration) {
			c.Datapath, c.SocketLB.Cgroup = DatapathIPTables, "/sys/fs/cgroup"
		}, []string{`socketLB.cgroup (--socket-lb-cgroup): the socket load balancer needs the nftables datapath (datapath is "iptables")`}},
		{"tc NAT", func(c *Configuration) { c.TCNAT = TCNAT{Enabled: true, SNATPorts: "40000-50000"} }, nil},
		{"tc NAT with iptables", func(c *Configuration) { c.Datapath, c.TCNAT.Enabled = "iptables-legacy", true },
			[]string{`tcNAT.enabled (--tc-nat): the tc NAT needs the nftables datapath (datapath is "iptables-legacy")`}},
		{"tc NAT ports", func(c *Configuration) { c.TCNAT.SNATPorts = "3000-2000" },
			[]string{`tcNAT.snatPorts (--tc-nat-snat-ports): "3000-2000" is not a port range first-last (1-65535)`}},
		{"tc NAT delivering pod-to-pod TCP", func(c *Configuration) {
			c.TCNAT = TCNAT{Enabled: true, PodToPod: true}
			c.SocketLB = SocketLB{Cgroup: "/sys/fs/cgroup", PinDir: DefaultBPFPinDir, UntrackPodTCP: true}
		}, nil},
		{"pod-to-pod delivery without the tc NAT or untracking", func(c *Configuration) { c.TCNAT.PodToPod = true },
			[]string{"tcNAT.podToPod (--tc-nat-pod-to-pod): needs the tc NAT (tcNAT.enabled, --tc-nat)",
				"tcNAT.podToPod (--tc-nat-pod-to-pod): needs untracked pod-to-pod TCP (socketLB.untrackPodTCP, --untrack-pod-tcp)"}},
		{"tc NAT with a relative pin directory", func(c *Configuration) { c.TCNAT.Enabled, c.SocketLB.PinDir = true, "bpf" },
			[]string{`socketLB.pinDir (--bpf-pin-dir): "bpf" must be an absolute path`}},
		{"no cluster CIDR", func(c *Configuration) { c.ClusterCIDRs = nil },
			[]string{"clusterCIDRs (--cluster-cidr): at least one CIDR is required"}},
		{"bad cluster CIDR", func(c *Configuration) { c.ClusterCIDRs = []string{"10.244.0.0/16", "10.0.0.0/33"} },
			[]string{`clusterCIDRs[1] (--cluster-cidr): "10.0.0.0/33" is not a CIDR`}},
		{"two IPv4 cluster CIDRs", func(c *Configuration) { c.ClusterCIDRs = []string{"10.244.0.0/16", "10.245.0.0/16"} },
			[]string{"clusterCIDRs[1] (--cluster-cidr): 10.245.0.0/16: only one IPv4 CIDR is allowed"}},
		{"service CIDRs", func(c *Configuration) { c.ServiceCIDRs = []string{"10.96.0.0/12", "fd00:96::/112"} }, nil},
		{"bad service CIDR", func(c *Configuration) { c.ServiceCIDRs = []string{"10.96.0.0/12", "10.96.0.1"} },
			[]string{`serviceCIDRs[1] (--service-cidr): "10.96.0.1" is not a CIDR`}},
		{"unsafe service CIDRs", func(c *Configuration) {
			c.ServiceCIDRs = []string{"::ffff:10.96.0.0/108", "0.0.0.0/0", "10.244.5.0/24"}
		},
			[]string{"serviceCIDRs[0] (--service-cidr): ::ffff:10.96.0.0/108: an IPv4-mapped IPv6 prefix",
				"serviceCIDRs[1] (--service-cidr): 0.0.0.0/0: the whole address space",
				"serviceCIDRs[2] (--service-cidr): 10.244.5.0/24: overlaps the cluster CIDR 10.244.0.0/16"}},
		{"bad node IP", func(c *Configuration) { c.NodeIPs = []string{"node-a"} },
			[]string{`nodeIPs[0] (--node-ip): "node-a" is not an IP address`}},
		{"bad node name", func(c *Configuration) { c.NodeName = "Node_A" },
			[]string{`nodeName (--node-name): "Node_A" is not a valid node name`}},
		{"bad nodePortAddresses", func(c *Configuration) { c.NodePortAddresses = []string{"primary", "eth0"} },
			[]string{`nodePortAddresses[1] (--nodeport-addresses): "eth0" must be "primary" or a CIDR`}},
		{"bad non-masquerade CIDR", func(c *Configuration) { c.Masquerade.NonMasqueradeCIDRs = []string{"10.0.0.1"} },
			[]string{`masquerade.nonMasqueradeCIDRs[0] (--non-masquerade-cidr): "10.0.0.1" is not a CIDR`}},
		{"empty proxy name", func(c *Configuration) { c.ServiceProxyName = "" },
			[]string{"serviceProxyName (--service-proxy-name): must not be empty"}},
		{"bad proxy name", func(c *Configuration) { c.ServiceProxyName = "not a label" },
			[]string{`serviceProxyName (--service-proxy-name): "not a label" is not a valid label value`}},
		{"socket load balancer", func(c *Configuration) { c.SocketLB.Cgroup = "/sys/fs/cgroup" }, nil},
		{"untracking without the balancer", func(c *Configuration) { c.SocketLB.UntrackPodTCP = true },
			[]string{"socketLB.untrackPodTCP (--untrack-pod-tcp): needs the socket load balancer"}},
		{"relative socket LB paths", func(c *Configuration) { c.SocketLB = SocketLB{Cgroup: "cgroup", PinDir: "bpf"} },
			[]string{`socketLB.cgroup (--socket-lb-cgroup): "cgroup" must be an absolute path`,
				`socketLB.pinDir (--bpf-pin-dir): "bpf" must be an absolute path`}},
		{"bad duration", func(c *Configuration) { c.MinSyncPeriod = "5" },
			[]string{`minSyncPeriod (--min-sync-period): "5" is not a duration`}},
		{"negative duration", func(c *Configuration) { c.MinSyncPeriod = "-1s" },
			[]string{"minSyncPeriod (--min-sync-period): -1s is out of range 0s-1h0m0s"}},
		{"duration too long", func(c *Configuration) { c.MinSyncPeriod = "2h" },
			[]string{"out of range"}},
		{"a cluster CIDR of everything", func(c *Configuration) { c.ClusterCIDRs = []string{"0.0.0.0/0"} },
			[]string{"clusterCIDRs[0] (--cluster-cidr): 0.0.0.0/0 is the whole address space"}},
		{"an IPv4-mapped cluster CIDR", func(c *Configuration) { c.ClusterCIDRs = []string{"10.244.0.0/16", "::ffff:10.244.0.0/112"} },
			[]string{"clusterCIDRs[1] (--cluster-cidr): ::ffff:10.244.0.0/112 is an IPv4-mapped IPv6 range"}},
		{"sync period not a duration", func(c *Configuration) { c.SyncPeriod = "30" },
			[]string{`syncPeriod (--sync-period): "30" is not a duration`}},
		{"sync period too short", func(c *Configuration) { c.SyncPeriod = "100ms" },
			[]string{"syncPeriod (--sync-period): 100ms is out of range 1s-1h0m0s"}},
		{"metrics address without port", func(c *Configuration) { c.MetricsBindAddress = "127.0.0.1" },
			[]string{`metricsBindAddress (--metrics-bind-address): "127.0.0.1" is not host:port`}},
		{"metrics address with a name", func(c *Configuration) { c.MetricsBindAddress = "localhost:10249" },
			[]string{"must have an IP address as host"}},
		{"metrics port out of range", func(c *Configuration) { c.MetricsBindAddress = "127.0.0.1:70000" },
			[]string{"port out of range"}},
		{"masquerade file alone", func(c *Configuration) { c.Masquerade.ConfigFile = "/etc/ip-masq-agent/config" }, nil},
		{"masquerade file and inline settings", func(c *Configuration) {
			c.Masquerade.ConfigFile = "/etc/ip-masq-agent/config"
			c.Masquerade.MasqLinkLocal = true
		}, []string{"masquerade.configFile (--masquerade-config): replaces masquerade.nonMasqueradeCIDRs"}},
		{"metrics and health on one port", func(c *Configuration) { c.MetricsBindAddress = "127.0.0.1:10256" },
			[]string{`healthzBindAddress (--healthz-bind-address): "0.0.0.0:10256" and metricsBindAddress "127.0.0.1:10256" cannot both be bound`}},
		{"one port on two addresses", func(c *Configuration) {
			c.MetricsBindAddress, c.HealthzBindAddress = "127.0.0.1:10256", "192.168.1.1:10256"
		}, nil},
		{"one port on IPv4's wildcard and an IPv6 address", func(c *Configuration) {
			c.MetricsBindAddress, c.HealthzBindAddress = "[::1]:10256", "0.0.0.0:10256"
		}, nil},
		{"one port on both families' wildcard and an IPv4 address", func(c *Configuration) {
			c.MetricsBindAddress, c.HealthzBindAddress = "127.0.0.1:10256", "[::]:10256"
		}, []string{"cannot both be bound"}},
		{"profiling without metrics", func(c *Configuration) { c.EnableProfiling, c.MetricsBindAddress = true, "" },
			[]string{"enableProfiling (--profiling): needs the metrics server"}},
		{"bad healthz address", func(c *Configuration) { c.HealthzBindAddress = "10256" },
			[]string{`healthzBindAddress (--healthz-bind-address): "10256" is not host:port`}},
		{"bad content type", func(c *Configuration) { c.ClientConnection.ContentType = "text/plain" },
			[]string{`clientConnection.contentType (--kube-api-content-type): "text/plain" is not supported`}},
		{"negative qps and burst", func(c *Configuration) { c.ClientConnection.QPS, c.ClientConnection.Burst = -1, -1 },
			[]string{"clientConnection.qps (--kube-api-qps): -1 must not be negative", "clientConnection.burst (--kube-api-burst): -1 must not be negative"}},
		{"two sources", func(c *Configuration) { c.Manifests, c.ClientConnection.Kubeconfig = "/m", "/k" },
			[]string{"manifests (--manifests): set either manifests or clientConnection.kubeconfig"}},
		{"pods by their bridge, no cluster CIDR", func(c *Configuration) {
			c.ClusterCIDRs, c.DetectLocalMode, c.DetectLocal.BridgeInterface = nil, "BridgeInterface", "cni0"
		}, nil},
		{"pods by their interfaces' prefix, no cluster CIDR", func(c *Configuration) {
			c.ClusterCIDRs, c.DetectLocalMode, c.DetectLocal.InterfaceNamePrefix = nil, "InterfaceNamePrefix", "eni"
		}, nil},
		{"bridge mode without the bridge", func(c *Configuration) { c.DetectLocalMode = "BridgeInterface" },
			[]string{`detectLocal.bridgeInterface (--pod-bridge-interface): "": must be 1 to 15 letters`}},
		{"hostile interface prefix", func(c *Configuration) {
			c.DetectLocalMode, c.DetectLocal.InterfaceNamePrefix = "InterfaceNamePrefix", "eth\"; accept"
		}, []string{`detectLocal.interfaceNamePrefix (--pod-interface-name-prefix): "eth\"; accept": must be 1 to 15 letters`}},
		{"an interface the mode does not use", func(c *Configuration) { c.DetectLocal.BridgeInterface = "cni0" },
			[]string{"detectLocal.bridgeInterface (--pod-bridge-interface): is only used with detectLocalMode BridgeInterface (it is NodeCIDR)"}},
		{"empty detectLocalMode is the default", func(c *Configuration) { c.DetectLocalMode = "" }, nil},
		{"kube-proxy's ClusterCIDR mode", func(c *Configuration) { c.DetectLocalMode = "ClusterCIDR" },
			[]string{"detectLocalMode (--detect-local-mode): kube-proxy's ClusterCIDR is not supported"}},
		{"unknown detectLocalMode", func(c *Configuration) { c.DetectLocalMode = "Magic" },
			[]string{`detectLocalMode (--detect-local-mode): "Magic" is not supported; use NodeCIDR, BridgeInterface or InterfaceNamePrefix`}},
		{"untracking without a cluster CIDR", func(c *Configuration) {
			c.ClusterCIDRs, c.DetectLocalMode, c.DetectLocal.BridgeInterface = nil, "BridgeInterface", "cni0"
			c.SocketLB = SocketLB{Cgroup: "/sys/fs/cgroup", PinDir: DefaultBPFPinDir, UntrackPodTCP: true}
		}, []string{"socketLB.untrackPodTCP (--untrack-pod-tcp): needs clusterCIDRs"}},
		{"conntrack left alone", func(c *Configuration) {
			c.Conntrack = Conntrack{TCPEstablishedTimeout: "0s", TCPCloseWaitTimeout: "0s", UDPTimeout: "0s", UDPStreamTimeout: "0s",
				Procfs: "/proc"}
		}, nil},
		{"bad conntrack values", func(c *Configuration) {
			c.Conntrack = Conntrack{MaxPerCore: -1, Min: -2, TCPEstablishedTimeout: "1d", TCPCloseWaitTimeout: "-1s",
				UDPTimeout: "1500ms", UDPStreamTimeout: "600h", Procfs: "proc"}
		}, []string{
			"conntrack.maxPerCore (--conntrack-max-per-core): -1 must not be negative",
			"conntrack.min (--conntrack-min): -2 must not be negative",
			`conntrack.tcpEstablishedTimeout (--conntrack-tcp-timeout-established): "1d" is not a duration`,
			"conntrack.tcpCloseWaitTimeout (--conntrack-tcp-timeout-close-wait): -1s must not be negative",
			"conntrack.udpTimeout (--conntrack-udp-timeout): 1500ms is not a whole number of seconds",
			"conntrack.udpStreamTimeout (--conntrack-udp-timeout-stream): 600h is too long: the kernel takes at most 596h31m23s",
			`conntrack.procfs (--conntrack-procfs): "proc" must be an absolute path`,
		}},
		{"wrong kind", func(c *Configuration) { c.Kind = "Other" }, []string{`kind: "Other" is not supported`}},
		{"every problem is reported", func(c *Configuration) {
			c.ClusterCIDRs = []string{"x"}
			c.MinSyncPeriod = "y"
		}, []string{"clusterCIDRs[0]", "minSyncPeriod"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.mutate(c)
			err := c.Validate()
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate succeeded; want %q", tc.wantErr)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestApplyFlags(t *testing.T) {
	file := header + `
clusterCIDRs: [10.244.0.0/16]
nodePortAddresses: [192.168.0.0/16]
masqueradeAll: true
minSyncPeriod: 2s
clientConnection:
  qps: 7
`
	tests := []struct {
		name   string
		args   []string
		mutate func(c *Configuration) // applied to the decoded file
	}{
		{"no flags keep the file", nil, func(c *Configuration) {}},
		{"a list flag replaces the whole list", []string{"--cluster-cidr=10.1.0.0/16", "--cluster-cidr=fd00::/48"},
			func(c *Configuration) { c.ClusterCIDRs = []string{"10.1.0.0/16", "fd00::/48"} }},
		{"a bool flag set to false overrides true", []string{"--masquerade-all=false"},
			func(c *Configuration) { c.MasqueradeAll = false }},
		{"durations and numbers", []string{"--min-sync-period=250ms", "--kube-api-qps=1.5", "--kube-api-burst=3"},
			func(c *Configuration) {
				c.MinSyncPeriod = "250ms"
				c.ClientConnection.QPS, c.ClientConnection.Burst = 1.5, 3
			}},
		{"strings, also empty", []string{"--metrics-bind-address=", "--kubeconfig=/k", "--node-name=node-b"},
			func(c *Configuration) {
				c.MetricsBindAddress, c.ClientConnection.Kubeconfig, c.NodeName = "", "/k", "node-b"
			}},
		{"local detection", []string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"},
			func(c *Configuration) {
				c.DetectLocalMode, c.DetectLocal.InterfaceNamePrefix = "InterfaceNamePrefix", "veth"
			}},
		{"conntrack", []string{"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=2h", "--conntrack-tcp-be-liberal", "--conntrack-procfs=/host/proc"},
			func(c *Configuration) {
				c.Conntrack.MaxPerCore, c.Conntrack.TCPEstablishedTimeout = 0, "2h0m0s"
				c.Conntrack.TCPBeLiberal, c.Conntrack.Procfs = true, "/host/proc"
			}},
		{"nested fields", []string{"--non-masquerade-cidr=10.0.0.0/8", "--masq-link-local"},
			func(c *Configuration) {
				c.Masquerade.NonMasqueradeCIDRs = []string{"10.0.0.0/8"}
				c.Masquerade.MasqLinkLocal = true
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			RegisterFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			got, err := Decode([]byte(file))
			if err != nil {
				t.Fatal(err)
			}
			want, _ := Decode([]byte(file))
			tc.mutate(want)
			if err := got.ApplyFlags(fs); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("after flags:\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

// TestFlagDefaultsMatchDefault checks that flags left alone describe the
// defaults: applying every flag as if set changes nothing.
func TestFlagDefaultsMatchDefault(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	RegisterFlags(fs)
	fs.VisitAll(func(f *pflag.Flag) { f.Changed = true })
	c := Default()
	if err := c.ApplyFlags(fs); err != nil {
		t.Fatal(err)
	}
	d := Default()
	d.ClusterCIDRs, d.NodeIPs, d.ServiceCIDRs = []string{}, []string{}, []string{} // lists from flags are never nil
	if !reflect.DeepEqual(c, d) {
		t.Errorf("flag defaults\n%+v\ndiffer from Default()\n%+v", c, d)
	}
}

// TestEveryFieldHasAFlag keeps the flag table complete as fields are added.
func TestEveryFieldHasAFlag(t *testing.T) {
	var paths []string
	var walk func(t reflect.Type, prefix string)
	walk = func(typ reflect.Type, prefix string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if f.Type.Kind() == reflect.Struct {
				walk(f.Type, prefix+name+".")
				continue
			}
			paths = append(paths, prefix+name)
		}
	}
	walk(reflect.TypeFor[Configuration](), "")
	for _, p := range paths {
		if p == "apiVersion" || p == "kind" {
			continue
		}
		if FlagFor(p) == "" {
			t.Errorf("field %s has no flag", p)
		}
	}
	if len(FlagNames()) != len(paths)-2 {
		t.Errorf("%d flags for %d fields", len(FlagNames()), len(paths)-2)
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	c := valid()
	c.NodeIPs = []string{"192.168.100.11"}
	c.Masquerade.NonMasqueradeCIDRs = []string{}
	c.MetricsBindAddress = ""
	out, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(out)
	if err != nil {
		t.Fatalf("decoding what Encode wrote: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(back, c) {
		t.Errorf("round trip:\n%s\ngave %+v\nwant %+v", out, back, c)
	}
	if !strings.HasPrefix(string(out), "apiVersion: kubenat.io/v1alpha1\nkind: KubenatConfiguration\n") {
		t.Errorf("Encode output does not start with the apiVersion:\n%s", out)
	}
}

func TestModelConfig(t *testing.T) {
	t.Setenv("NODE_NAME", "from-env")
	c := valid()
	c.ClusterCIDRs = []string{"10.244.1.0/16"}
	c.NodeIPs = []string{"::ffff:192.168.100.11"}
	c.MasqueradeAll = true
	c.Masquerade.MasqLinkLocal = true
	c.ServiceProxyName = "mine"
	mc, err := c.ModelConfig()
	if err != nil {
		t.Fatal(err)
	}
	want := model.Config{
		NodeName:          "from-env",
		ClusterCIDRs:      []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		NodeIPs:           []netip.Addr{netip.MustParseAddr("192.168.100.11")},
		NodePortAddresses: []string{"primary"},
		MasqueradeAll:     true,
		ProxyName:         "mine",
		Egress:            model.EgressConfig{NonMasqueradeCIDRs: model.DefaultNonMasqueradeCIDRs(), MasqLinkLocal: true},
	}
	if !reflect.DeepEqual(mc, want) {
		t.Errorf("ModelConfig =\n%+v\nwant\n%+v", mc, want)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "masq"), []byte("nonMasqueradeCIDRs: [100.64.0.0/10]\nmasqLinkLocal: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.Masquerade = Masquerade{NonMasqueradeCIDRs: Default().Masquerade.NonMasqueradeCIDRs, ConfigFile: filepath.Join(dir, "masq")}
	mc, err = c.ModelConfig()
	if err != nil {
		t.Fatal(err)
	}
	if want := (model.EgressConfig{NonMasqueradeCIDRs: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}, MasqLinkLocal: true}); !reflect.DeepEqual(mc.Egress, want) {
		t.Errorf("egress from the masquerade file = %+v, want %+v", mc.Egress, want)
	}
	if err := os.WriteFile(c.Masquerade.ConfigFile, []byte("nonMasqueradeCIDRs: [nope]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ModelConfig(); err == nil || !strings.Contains(err.Error(), "masquerade.configFile") {
		t.Errorf("a bad masquerade file gave %v, want an error naming masquerade.configFile", err)
	}
	c.Masquerade = Default().Masquerade
	c.ServiceCIDRs = []string{"10.96.0.1/12"}
	if mc, err := c.ModelConfig(); err != nil || !reflect.DeepEqual(mc.ServiceCIDRs, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}) {
		t.Errorf("service CIDRs: %v, %v", mc.ServiceCIDRs, err)
	}
	c.ServiceCIDRs = nil
	c.ClusterCIDRs, c.DetectLocalMode, c.DetectLocal.BridgeInterface = nil, DetectLocalBridgeInterface, "cbr0"
	if mc, err := c.ModelConfig(); err != nil || mc.LocalDetect != (model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: "cbr0"}) {
		t.Errorf("bridge detection: %+v, %v", mc.LocalDetect, err)
	}
	c.ClusterCIDRs, c.DetectLocalMode, c.DetectLocal.BridgeInterface = []string{"10.244.1.0/16"}, DetectLocalNodeCIDR, ""
	c.NodeName = "explicit"
	if mc, _ := c.ModelConfig(); mc.NodeName != "explicit" {
		t.Errorf("node name %q, want the configured one", mc.NodeName)
	}
	c.ClusterCIDRs = nil
	if _, err := c.ModelConfig(); err == nil {
		t.Error("ModelConfig of an invalid configuration succeeded")
	}
}

func TestConntrackSettings(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *Conntrack)
		cpus   int
		want   conntrack.Settings
	}{
		{"kube-proxy's defaults on two CPUs: the minimum", func(c *Conntrack) {}, 2,
			conntrack.Settings{Max: 131072, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}},
		{"on 16 CPUs: per core", func(c *Conntrack) {}, 16,
			conntrack.Settings{Max: 16 * 32768, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}},
		{"many cores: kube-proxy's cap", func(c *Conntrack) {}, 64,
			conntrack.Settings{Max: 1 << 20, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}},
		{"a huge per-core size is capped", func(c *Conntrack) { c.MaxPerCore = math.MaxInt32 }, 2,
			conntrack.Settings{Max: 1 << 20, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}},
		{"an explicit min above the cap wins", func(c *Conntrack) { c.Min = 2000000 }, 64,
			conntrack.Settings{Max: 2000000, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}},
		{"maxPerCore 0 leaves the size, whatever min", func(c *Conntrack) { c.MaxPerCore, c.Min = 0, 500000 }, 16,
			conntrack.Settings{TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}},
		{"everything set", func(c *Conntrack) {
			*c = Conntrack{MaxPerCore: 1000, Min: 10, TCPEstablishedTimeout: "2h", TCPCloseWaitTimeout: "0s", TCPBeLiberal: true,
				UDPTimeout: "45s", UDPStreamTimeout: "3m", Procfs: "/host/proc"}
		}, 4, conntrack.Settings{Max: 4000, TCPEstablishedTimeout: 2 * time.Hour, TCPBeLiberal: true, UDPTimeout: 45 * time.Second,
			UDPStreamTimeout: 3 * time.Minute, Procfs: "/host/proc"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.mutate(&c.Conntrack)
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want.Procfs == "" {
				want.Procfs = "/proc"
			}
			if got := c.ConntrackSettings(tc.cpus); got != want {
				t.Errorf("ConntrackSettings(%d) =\n%+v\nwant\n%+v", tc.cpus, got, want)
			}
		})
	}
}

func TestFlagNamesAreUnique(t *testing.T) {
	names := FlagNames()
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	if len(slices.Compact(sorted)) != len(names) {
		t.Errorf("duplicate flag names in %v", names)
	}
}

func TestWarnings(t *testing.T) {
	tests := []struct {
		name string
		edit func(c *Configuration)
		want []string
	}{
		{name: "canonical CIDRs: none", edit: func(*Configuration) {}},
		{name: "a cluster CIDR with host bits", edit: func(c *Configuration) { c.ClusterCIDRs = []string{"10.244.1.0/16"} },
			want: []string{"clusterCIDRs[0] (--cluster-cidr): 10.244.1.0/16 has address bits set after the prefix length; it is used as 10.244.0.0/16"}},
		{name: "every CIDR list is checked", edit: func(c *Configuration) {
			c.ServiceCIDRs = []string{"10.96.0.0/12", "fd00:10:96::1/112"}
			c.NodePortAddresses = []string{"primary", "192.168.1.5/24"}
			c.Masquerade.NonMasqueradeCIDRs = []string{"172.16.0.1/12"}
		}, want: []string{
			"serviceCIDRs[1] (--service-cidr): fd00:10:96::1/112 has address bits set after the prefix length; it is used as fd00:10:96::/112",
			"nodePortAddresses[1] (--nodeport-addresses): 192.168.1.5/24 has address bits set after the prefix length; it is used as 192.168.1.0/24",
			"masquerade.nonMasqueradeCIDRs[0] (--non-masquerade-cidr): 172.16.0.1/12 has address bits set after the prefix length; it is used as 172.16.0.0/12",
		}},
		{name: "invalid CIDRs are Validate's", edit: func(c *Configuration) { c.ServiceCIDRs = []string{"10.96.0.0/33"} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.edit(c)
			if got := c.Warnings(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Warnings() =\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}
