package main

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/spf13/pflag"

	"github.com/kubenat/kubenat/internal/ipmasq"
	"github.com/kubenat/kubenat/internal/model"
)

// nodeFlags are the inputs that describe the node's view, shared by every
// command that builds a State.
type nodeFlags struct {
	manifests         string
	nodeName          string
	clusterCIDRs      []string
	nodeIPs           []string
	nodePortAddresses []string
	masqueradeAll     bool
	nonMasq           []string
	masqLinkLocal     bool
	masqLinkLocal6    bool
	masqConfig        string
}

func (f *nodeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.manifests, "manifests", "", "directory of Kubernetes YAML manifests (Services, EndpointSlices, Nodes)")
	fs.StringVar(&f.nodeName, "node-name", "", "name of this node (default: $NODE_NAME, else the hostname)")
	fs.StringSliceVar(&f.clusterCIDRs, "cluster-cidr", nil, "pod address range of the cluster, one per family (repeatable or comma-separated)")
	fs.StringSliceVar(&f.nodeIPs, "node-ip", nil, "this node's IP address (repeatable; default: the Node object's addresses, else the source addresses of this machine's default routes)")
	fs.StringSliceVar(&f.nodePortAddresses, "nodeport-addresses", nil, `addresses NodePorts are served on: "primary" and/or CIDRs (default "primary")`)
	fs.BoolVar(&f.masqueradeAll, "masquerade-all", false, "masquerade all traffic to ClusterIPs, also from local pods")
	fs.StringSliceVar(&f.nonMasq, "non-masquerade-cidr", nil, "destination reached by pods without SNAT (repeatable; default: RFC 1918 and fc00::/7; the cluster CIDRs are always added)")
	fs.BoolVar(&f.masqLinkLocal, "masq-link-local", false, "masquerade pod traffic to 169.254.0.0/16 too")
	fs.BoolVar(&f.masqLinkLocal6, "masq-link-local-ipv6", false, "masquerade pod traffic to fe80::/10 too")
	fs.StringVar(&f.masqConfig, "masquerade-config", "", "ip-masq-agent config file (nonMasqueradeCIDRs, masqLinkLocal, masqLinkLocalIPv6); the agent follows its changes. Replaces the three flags above")
}

// config turns the flags into a model configuration.
func (f *nodeFlags) config() (model.Config, error) {
	cfg := model.Config{
		NodeName:          f.nodeName,
		NodePortAddresses: f.nodePortAddresses,
		MasqueradeAll:     f.masqueradeAll,
		Egress:            model.EgressConfig{MasqLinkLocal: f.masqLinkLocal, MasqLinkLocalIPv6: f.masqLinkLocal6},
	}
	if cfg.NodeName == "" {
		cfg.NodeName = os.Getenv("NODE_NAME")
	}
	if cfg.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return cfg, fmt.Errorf("--node-name not given and the hostname is unknown: %w", err)
		}
		cfg.NodeName = h
	}
	for _, s := range f.clusterCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return cfg, fmt.Errorf("--cluster-cidr %q: not a CIDR", s)
		}
		cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, p.Masked())
	}
	for _, s := range f.nodeIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return cfg, fmt.Errorf("--node-ip %q: not an IP address", s)
		}
		cfg.NodeIPs = append(cfg.NodeIPs, a.Unmap())
	}
	if f.nonMasq != nil {
		cfg.Egress.NonMasqueradeCIDRs = []netip.Prefix{}
		for _, s := range f.nonMasq {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return cfg, fmt.Errorf("--non-masquerade-cidr %q: not a CIDR", s)
			}
			cfg.Egress.NonMasqueradeCIDRs = append(cfg.Egress.NonMasqueradeCIDRs, p.Masked())
		}
	}
	if f.masqConfig != "" {
		if f.nonMasq != nil || f.masqLinkLocal || f.masqLinkLocal6 {
			return cfg, fmt.Errorf("--masquerade-config replaces --non-masquerade-cidr, --masq-link-local and --masq-link-local-ipv6; give one or the other")
		}
		egress, _, err := ipmasq.Load(f.masqConfig)
		if err != nil {
			return cfg, fmt.Errorf("--masquerade-config: %w", err)
		}
		cfg.Egress = egress
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}
