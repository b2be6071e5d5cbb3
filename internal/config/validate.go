package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kubenat/kubenat/internal/conntrack"
	"github.com/kubenat/kubenat/internal/dataplane/iptables"
	"github.com/kubenat/kubenat/internal/ipmasq"
	"github.com/kubenat/kubenat/internal/model"
)

// fieldErrors collects validation problems, each naming the field (its
// path in the file) and the flag that sets it.
type fieldErrors []error

func (e *fieldErrors) add(path, format string, args ...any) {
	name := path
	if f := FlagFor(fieldOf(path)); f != "" {
		name += " (--" + f + ")"
	}
	*e = append(*e, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
}

// fieldOf strips list indexes: "clusterCIDRs[1]" → "clusterCIDRs".
func fieldOf(path string) string {
	if i := strings.IndexByte(path, '['); i >= 0 {
		return path[:i]
	}
	return path
}

// Validate checks every field and returns all problems found, joined; each
// names the field and its flag, e.g.
//
//	clusterCIDRs[1] (--cluster-cidr): "10.0.0.0/33" is not a CIDR
func (c *Configuration) Validate() error {
	var errs fieldErrors
	if c.APIVersion != APIVersion {
		errs.add("apiVersion", "%q is not supported; use %s", c.APIVersion, APIVersion)
	}
	if c.Kind != Kind {
		errs.add("kind", "%q is not supported; use %s", c.Kind, Kind)
	}
	if c.NodeName != "" {
		if msgs := validation.IsDNS1123Subdomain(c.NodeName); len(msgs) > 0 {
			errs.add("nodeName", "%q is not a valid node name: %s", c.NodeName, strings.Join(msgs, "; "))
		}
	}
	if _, ok := iptables.DatapathVariant(c.Datapath); ok && c.SocketLB.Cgroup != "" {
		errs.add("socketLB.cgroup", "the socket load balancer needs the nftables datapath (datapath is %q)", c.Datapath)
	} else if !ok && c.Datapath != DatapathNFTables {
		names := append([]string{DatapathNFTables}, iptables.DatapathNames()...)
		errs.add("datapath", "%q is not a datapath; use one of %s", c.Datapath, strings.Join(names, ", "))
	}
	detect, detectErr := c.localDetect()
	if detectErr != nil {
		errs = append(errs, detectErr...)
	}
	if len(c.ClusterCIDRs) == 0 && !detect.ByInterface() && detectErr == nil {
		errs.add("clusterCIDRs", "at least one CIDR is required (the pod address range of the cluster), unless detectLocalMode recognizes the pods by their interface")
	}
	if len(c.ClusterCIDRs) == 0 && c.SocketLB.UntrackPodTCP && detect.ByInterface() {
		errs.add("socketLB.untrackPodTCP", "needs clusterCIDRs (--cluster-cidr): pod-to-pod TCP is recognized by its addresses")
	}
	families := map[model.Family]string{}
	for i, s := range c.ClusterCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs.add(fmt.Sprintf("clusterCIDRs[%d]", i), "%q is not a CIDR", s)
			continue
		}
		switch {
		case p.Addr().Is4In6():
			errs.add(fmt.Sprintf("clusterCIDRs[%d]", i), "%s is an IPv4-mapped IPv6 range, which no packet carries: write it as an IPv4 one", s)
			continue
		case p.Bits() == 0:
			errs.add(fmt.Sprintf("clusterCIDRs[%d]", i), "%s is the whole address space: every source would count as a pod", s)
			continue
		}
		f := model.FamilyOf(p.Addr())
		if other, ok := families[f]; ok {
			errs.add(fmt.Sprintf("clusterCIDRs[%d]", i), "%s: only one %s CIDR is allowed (%s is already given)", s, f, other)
		}
		families[f] = s
	}
	var clusterCIDRs model.Config // the valid ones, for CheckServiceCIDR
	for _, cs := range c.ClusterCIDRs {
		if cc, err := netip.ParsePrefix(cs); err == nil {
			clusterCIDRs.ClusterCIDRs = append(clusterCIDRs.ClusterCIDRs, cc.Masked())
		}
	}
	for i, s := range c.ServiceCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs.add(fmt.Sprintf("serviceCIDRs[%d]", i), "%q is not a CIDR", s)
			continue
		}
		if err := clusterCIDRs.CheckServiceCIDR(p); err != nil {
			errs.add(fmt.Sprintf("serviceCIDRs[%d]", i), "%s: %v", s, err)
		}
	}
	for i, s := range c.NodeIPs {
		if _, err := netip.ParseAddr(s); err != nil {
			errs.add(fmt.Sprintf("nodeIPs[%d]", i), "%q is not an IP address", s)
		}
	}
	for i, s := range c.NodePortAddresses {
		if s == "primary" {
			continue
		}
		if _, err := netip.ParsePrefix(s); err != nil {
			errs.add(fmt.Sprintf("nodePortAddresses[%d]", i), `%q must be "primary" or a CIDR`, s)
		}
	}
	for i, s := range c.Masquerade.NonMasqueradeCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			errs.add(fmt.Sprintf("masquerade.nonMasqueradeCIDRs[%d]", i), "%q is not a CIDR", s)
		}
	}
	if c.ServiceProxyName == "" {
		errs.add("serviceProxyName", "must not be empty")
	} else if msgs := validation.IsValidLabelValue(c.ServiceProxyName); len(msgs) > 0 {
		errs.add("serviceProxyName", "%q is not a valid label value: %s", c.ServiceProxyName, strings.Join(msgs, "; "))
	}
	if d, err := time.ParseDuration(c.MinSyncPeriod); err != nil {
		errs.add("minSyncPeriod", "%q is not a duration (e.g. 100ms, 1s)", c.MinSyncPeriod)
	} else if d < 0 || d > MaxMinSyncPeriod {
		errs.add("minSyncPeriod", "%s is out of range 0s-%s", c.MinSyncPeriod, MaxMinSyncPeriod)
	}
	if d, err := time.ParseDuration(c.SyncPeriod); err != nil {
		errs.add("syncPeriod", "%q is not a duration (e.g. 30s, 1m)", c.SyncPeriod)
	} else if d < time.Second || d > time.Hour {
		errs.add("syncPeriod", "%s is out of range 1s-1h0m0s", c.SyncPeriod)
	}
	if m := c.Masquerade; m.ConfigFile != "" && (m.MasqLinkLocal || m.MasqLinkLocalIPv6 || !slices.Equal(m.NonMasqueradeCIDRs, Default().Masquerade.NonMasqueradeCIDRs)) {
		errs.add("masquerade.configFile", "replaces masquerade.nonMasqueradeCIDRs, masqLinkLocal and masqLinkLocalIPv6 (flags --non-masquerade-cidr, --masq-link-local, --masq-link-local-ipv6); set one or the other")
	}
	for _, b := range []struct{ path, addr string }{
		{"metricsBindAddress", c.MetricsBindAddress},
		{"healthzBindAddress", c.HealthzBindAddress},
	} {
		if b.addr == "" {
			continue
		}
		if msg := checkHostPort(b.addr); msg != "" {
			errs.add(b.path, "%q %s", b.addr, msg)
		}
	}
	if clash(c.MetricsBindAddress, c.HealthzBindAddress) {
		errs.add("healthzBindAddress", "%q and metricsBindAddress %q cannot both be bound: one port on overlapping addresses", c.HealthzBindAddress, c.MetricsBindAddress)
	}
	if c.EnableProfiling && c.MetricsBindAddress == "" {
		errs.add("enableProfiling", "needs the metrics server (metricsBindAddress, --metrics-bind-address), which serves the profiles")
	}
	switch lb := c.SocketLB; {
	case lb.Cgroup == "" && lb.UntrackPodTCP:
		errs.add("socketLB.untrackPodTCP", "needs the socket load balancer (socketLB.cgroup, --socket-lb-cgroup)")
	case lb.Cgroup != "":
		if !filepath.IsAbs(lb.Cgroup) {
			errs.add("socketLB.cgroup", "%q must be an absolute path (a cgroup v2 directory)", lb.Cgroup)
		}
		if !filepath.IsAbs(lb.PinDir) {
			errs.add("socketLB.pinDir", "%q must be an absolute path on a bpf file system", lb.PinDir)
		}
	}
	if c.TCNAT.Enabled {
		if c.Datapath != DatapathNFTables {
			errs.add("tcNAT.enabled", "the tc NAT needs the nftables datapath (datapath is %q)", c.Datapath)
		}
		if !filepath.IsAbs(c.SocketLB.PinDir) && c.SocketLB.PinDir != "" {
			errs.add("socketLB.pinDir", "%q must be an absolute path on a bpf file system", c.SocketLB.PinDir)
		}
	}
	if c.TCNAT.PodToPod {
		if !c.TCNAT.Enabled {
			errs.add("tcNAT.podToPod", "needs the tc NAT (tcNAT.enabled, --tc-nat)")
		}
		if !c.SocketLB.UntrackPodTCP {
			errs.add("tcNAT.podToPod", "needs untracked pod-to-pod TCP (socketLB.untrackPodTCP, --untrack-pod-tcp): it delivers exactly the packets that leaves untracked")
		}
	}
	if _, err := c.TCNAT.PortRange(); err != nil {
		errs.add("tcNAT.snatPorts", "%v", err)
	}
	ct := c.Conntrack
	if ct.MaxPerCore < 0 {
		errs.add("conntrack.maxPerCore", "%d must not be negative (0 leaves the table's size alone)", ct.MaxPerCore)
	}
	if ct.Min < 0 {
		errs.add("conntrack.min", "%d must not be negative", ct.Min)
	}
	for _, t := range ct.timeouts(&conntrack.Settings{}) {
		d, err := time.ParseDuration(t.value)
		switch {
		case err != nil:
			errs.add(t.path, "%q is not a duration (e.g. 24h, 90s; 0s leaves the kernel's value)", t.value)
		case d < 0:
			errs.add(t.path, "%s must not be negative", t.value)
		case d%time.Second != 0:
			errs.add(t.path, "%s is not a whole number of seconds", t.value)
		case d > conntrack.MaxTimeout:
			errs.add(t.path, "%s is too long: the kernel takes at most %s", t.value, conntrack.MaxTimeout)
		}
	}
	if !filepath.IsAbs(ct.Procfs) {
		errs.add("conntrack.procfs", "%q must be an absolute path", ct.Procfs)
	}
	cc := c.ClientConnection
	if cc.ContentType != ContentTypeProtobuf && cc.ContentType != ContentTypeJSON {
		errs.add("clientConnection.contentType", "%q is not supported; use %s or %s", cc.ContentType, ContentTypeProtobuf, ContentTypeJSON)
	}
	if cc.QPS < 0 {
		errs.add("clientConnection.qps", "%v must not be negative", cc.QPS)
	}
	if cc.Burst < 0 {
		errs.add("clientConnection.burst", "%d must not be negative", cc.Burst)
	}
	if c.Manifests != "" && cc.Kubeconfig != "" {
		errs.add("manifests", "set either manifests or clientConnection.kubeconfig (--kubeconfig), not both")
	}
	return errors.Join(errs...)
}

// localDetect returns the model's local traffic detection the
// configuration describes, or the problems with it.
func (c *Configuration) localDetect() (model.LocalDetect, fieldErrors) {
	var errs fieldErrors
	dl := c.DetectLocal
	var d model.LocalDetect
	switch c.DetectLocalMode {
	case DetectLocalNodeCIDR, "":
	case DetectLocalBridgeInterface:
		d = model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: dl.BridgeInterface}
	case DetectLocalInterfaceNamePrefix:
		d = model.LocalDetect{Mode: model.DetectInterfacePrefix, Interface: dl.InterfaceNamePrefix}
	case "ClusterCIDR":
		errs.add("detectLocalMode", "kube-proxy's ClusterCIDR is not supported: NodeCIDR uses the Node's spec.podCIDRs and falls back to clusterCIDRs when the Node has none")
		return d, errs
	default:
		errs.add("detectLocalMode", "%q is not supported; use %s, %s or %s", c.DetectLocalMode,
			DetectLocalNodeCIDR, DetectLocalBridgeInterface, DetectLocalInterfaceNamePrefix)
		return d, errs
	}
	for _, f := range []struct {
		path, value string
		mode        model.LocalDetectMode
	}{
		{"detectLocal.bridgeInterface", dl.BridgeInterface, model.DetectBridgeInterface},
		{"detectLocal.interfaceNamePrefix", dl.InterfaceNamePrefix, model.DetectInterfacePrefix},
	} {
		switch {
		case f.mode == d.Mode:
			if err := d.Validate(); err != nil {
				errs.add(f.path, "%q: must be %s (the name of an interface)", f.value, model.InterfaceNameRule)
			}
		case f.value != "":
			errs.add(f.path, "is only used with detectLocalMode %s (it is %s)", f.mode, c.DetectLocalMode)
		}
	}
	return d, errs
}

// checkHostPort returns what is wrong with a bind address, or "".
func checkHostPort(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "is not host:port (e.g. 127.0.0.1:10249, or :10249 for all addresses)"
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return "must have an IP address as host, or none"
		}
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "has a port out of range 1-65535"
	}
	return ""
}

// clash reports whether two valid host:port bind addresses cannot both be
// bound: the same port and the same host, or on one side a wildcard that
// covers the other's host (an empty host and "::" listen on both
// families, "0.0.0.0" on every IPv4 address).
func clash(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil || pa != pb {
		return false
	}
	covers := func(wild, other string) bool {
		if wild == "" || wild == "::" {
			return true
		}
		ip, err := netip.ParseAddr(other)
		return wild == "0.0.0.0" && (other == "" || (err == nil && ip.Is4()))
	}
	return ha == hb || covers(ha, hb) || covers(hb, ha)
}

// MinSync returns MinSyncPeriod as a duration (0 when it is invalid:
// call Validate first).
func (c *Configuration) MinSync() time.Duration {
	d, _ := time.ParseDuration(c.MinSyncPeriod)
	return d
}

// TableCheckPeriod returns SyncPeriod as a duration (0 when it is
// invalid: call Validate first).
func (c *Configuration) TableCheckPeriod() time.Duration {
	d, _ := time.ParseDuration(c.SyncPeriod)
	return d
}

// ConntrackSettings returns the conntrack sysctls the agent sets on a node
// with cpus CPUs (conntrack.OnlineCPUs): nf_conntrack_max is MaxPerCore × cpus,
// at most MaxConntrackPerCoreTotal, and at least Min (0 when MaxPerCore is
// 0). Call Validate first.
func (c *Configuration) ConntrackSettings(cpus int) conntrack.Settings {
	ct := c.Conntrack
	s := conntrack.Settings{TCPBeLiberal: ct.TCPBeLiberal, Procfs: ct.Procfs}
	if ct.MaxPerCore > 0 {
		// The per-core size stops at kube-proxy's cap (many-core machines
		// would otherwise reserve a table far beyond any node's need);
		// an explicit min still wins, up to the kernel's int.
		s.Max = min(max(min(int(ct.MaxPerCore)*cpus, MaxConntrackPerCoreTotal), int(ct.Min)), math.MaxInt32)
	}
	for _, t := range ct.timeouts(&s) {
		*t.target, _ = time.ParseDuration(t.value)
	}
	return s
}

// conntrackTimeout is one timeout of the conntrack section: its path, its
// value, and the Settings field it sets.
type conntrackTimeout struct {
	path, value string
	target      *time.Duration
}

// timeouts lists the section's timeouts, with their fields in s.
func (ct Conntrack) timeouts(s *conntrack.Settings) []conntrackTimeout {
	return []conntrackTimeout{
		{"conntrack.tcpEstablishedTimeout", ct.TCPEstablishedTimeout, &s.TCPEstablishedTimeout},
		{"conntrack.tcpCloseWaitTimeout", ct.TCPCloseWaitTimeout, &s.TCPCloseWaitTimeout},
		{"conntrack.udpTimeout", ct.UDPTimeout, &s.UDPTimeout},
		{"conntrack.udpStreamTimeout", ct.UDPStreamTimeout, &s.UDPStreamTimeout},
	}
}

// NodeNameOrDefault returns NodeName, else $NODE_NAME, else the host name
// in lower case (as the kubelet registers it).
func (c *Configuration) NodeNameOrDefault() (string, error) {
	if c.NodeName != "" {
		return c.NodeName, nil
	}
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("nodeName (--node-name) not set, $NODE_NAME empty, and the host name is unknown: %w", err)
	}
	return strings.ToLower(h), nil
}

// Warnings says what in a valid configuration is used otherwise than
// written: a CIDR with address bits set beyond its prefix length (e.g.
// 10.244.1.0/16, a typo of /24 or of 10.244.0.0/16) is used as its
// network, as kube-proxy uses it. Each warning names the field and its
// flag, as Validate's errors do.
func (c *Configuration) Warnings() []string {
	var warns []string
	check := func(field string, values []string) {
		for i, s := range values {
			p, err := netip.ParsePrefix(s)
			if err != nil || p == p.Masked() {
				continue
			}
			name := fmt.Sprintf("%s[%d]", field, i)
			if f := FlagFor(field); f != "" {
				name += " (--" + f + ")"
			}
			warns = append(warns, fmt.Sprintf("%s: %s has address bits set after the prefix length; it is used as %s", name, s, p.Masked()))
		}
	}
	check("clusterCIDRs", c.ClusterCIDRs)
	check("serviceCIDRs", c.ServiceCIDRs)
	check("nodePortAddresses", c.NodePortAddresses)
	check("masquerade.nonMasqueradeCIDRs", c.Masquerade.NonMasqueradeCIDRs)
	return warns
}

// ModelConfig returns the model configuration this file describes, with
// the node name resolved (NodeNameOrDefault) and, when
// masquerade.configFile is set, the egress settings read from that file.
// It fails when the configuration does not Validate or the file cannot be
// used.
func (c *Configuration) ModelConfig() (model.Config, error) {
	if err := c.Validate(); err != nil {
		return model.Config{}, err
	}
	name, err := c.NodeNameOrDefault()
	if err != nil {
		return model.Config{}, err
	}
	detect, _ := c.localDetect()
	mc := model.Config{
		NodeName:          name,
		LocalDetect:       detect,
		NodePortAddresses: append([]string(nil), c.NodePortAddresses...),
		MasqueradeAll:     c.MasqueradeAll,
		ProxyName:         c.ServiceProxyName,
		SocketLB:          c.SocketLB.Cgroup != "",
		UntrackPodTCP:     c.SocketLB.UntrackPodTCP,
		TCNAT:             c.TCNAT.Enabled,
		TCNATPodToPod:     c.TCNAT.PodToPod,
		Egress: model.EgressConfig{
			NonMasqueradeCIDRs: []netip.Prefix{},
			MasqLinkLocal:      c.Masquerade.MasqLinkLocal,
			MasqLinkLocalIPv6:  c.Masquerade.MasqLinkLocalIPv6,
		},
	}
	for _, s := range c.ClusterCIDRs {
		mc.ClusterCIDRs = append(mc.ClusterCIDRs, netip.MustParsePrefix(s).Masked())
	}
	for _, s := range c.NodeIPs {
		mc.NodeIPs = append(mc.NodeIPs, netip.MustParseAddr(s).Unmap())
	}
	for _, s := range c.ServiceCIDRs {
		mc.ServiceCIDRs = append(mc.ServiceCIDRs, netip.MustParsePrefix(s).Masked())
	}
	for _, s := range c.Masquerade.NonMasqueradeCIDRs {
		mc.Egress.NonMasqueradeCIDRs = append(mc.Egress.NonMasqueradeCIDRs, netip.MustParsePrefix(s).Masked())
	}
	if path := c.Masquerade.ConfigFile; path != "" {
		egress, _, err := ipmasq.Load(path)
		if err != nil {
			return model.Config{}, fmt.Errorf("masquerade.configFile (--masquerade-config): %w", err)
		}
		mc.Egress = egress
	}
	if err := mc.Validate(); err != nil {
		return model.Config{}, err
	}
	return mc, nil
}
