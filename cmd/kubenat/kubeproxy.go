package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// kubeProxyFlags says, for kube-proxy's flags kubenat does not have, what
// to use instead: an operator moving a node's command line over is told
// at the flag, not left to search. kube-proxy's flags kubenat has under
// the same name (--cluster-cidr, --nodeport-addresses, --conntrack-*, ...)
// are not listed.
var kubeProxyFlags = map[string]string{
	"hostname-override":               "use --node-name",
	"bind-address":                    "set the host of --healthz-bind-address and --metrics-bind-address",
	"bind-address-hard-fail":          "kubenat keeps trying to bind its health and metrics ports, logging each failure, and never stops for them",
	"proxy-mode":                      "use --datapath (nftables, the default, or iptables, iptables-nft, iptables-legacy); the eBPF socket load balancer is --socket-lb-cgroup",
	"iptables-sync-period":            "--sync-period is the nearest: how often kubenat checks that its rules are in place",
	"ipvs-sync-period":                "--sync-period is the nearest: how often kubenat checks that its rules are in place",
	"iptables-min-sync-period":        "use --min-sync-period",
	"ipvs-min-sync-period":            "use --min-sync-period",
	"iptables-masquerade-bit":         "kubenat's packet marks are its own and need no setting",
	"iptables-localhost-nodeports":    "kubenat, like kube-proxy's nftables mode, does not serve NodePorts on 127.0.0.1",
	"master":                          "use --kubeconfig",
	"cleanup":                         "use `kubenat cleanup`",
	"init-only":                       "kubenat sets its sysctls itself, after its first sync",
	"oom-score-adj":                   "give the pod a priority class instead (the chart uses system-node-critical)",
	"feature-gates":                   "kubenat has no feature gates",
	"show-hidden-metrics-for-version": "kubenat hides no metrics",
	"logging-format":                  "kubenat logs klog's text format; -v sets the verbosity",
	"ipvs-scheduler":                  "kubenat has no IPVS mode",
	"ipvs-strict-arp":                 "kubenat has no IPVS mode",
	"ipvs-exclude-cidrs":              "kubenat has no IPVS mode",
	"ipvs-tcp-timeout":                "kubenat has no IPVS mode; see --conntrack-tcp-timeout-established",
	"ipvs-tcpfin-timeout":             "kubenat has no IPVS mode; see --conntrack-tcp-timeout-close-wait",
	"ipvs-udp-timeout":                "kubenat has no IPVS mode; see --conntrack-udp-timeout",
	"config-sync-period":              "kubenat reads --config once, at start",
	"disabled-metrics":                "kubenat's metrics cannot be turned off one by one",
	"allow-metric-labels":             "kubenat's metric labels are bounded already",
	"healthz-port":                    "use --healthz-bind-address",
	"metrics-port":                    "use --metrics-bind-address",
}

// kubeProxyFlagError adds kubeProxyFlags' advice to an unknown-flag error.
func kubeProxyFlagError(_ *cobra.Command, err error) error {
	name, ok := strings.CutPrefix(err.Error(), "unknown flag: --")
	if !ok {
		return err
	}
	if advice := kubeProxyFlags[name]; advice != "" {
		return fmt.Errorf("%w (kube-proxy's flag: %s)", err, advice)
	}
	return err
}
