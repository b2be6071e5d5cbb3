package trace

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kubenat/kubenat/internal/model"
)

// TestTraceSemantics checks Trace's answer for the packets of the
// masquerade matrix and the traffic policies, on node-a of the fixture.
func TestTraceSemantics(t *testing.T) {
	nonMasqInet := func(c *model.Config) {
		c.Egress.NonMasqueradeCIDRs = append(model.DefaultNonMasqueradeCIDRs(), netip.MustParsePrefix("203.0.113.0/24"))
	}
	masqAll := func(c *model.Config) { c.MasqueradeAll = true }
	// bridge recognizes the pods by their bridge, without a cluster CIDR.
	bridge := func(c *model.Config) {
		c.LocalDetect = model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: "cni0"}
		c.ClusterCIDRs = nil
	}
	iif := func(p Packet, name string) Packet { p.IIF = name; return p }
	svcCIDR := func(c *model.Config) { c.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")} }
	v6 := func(src, dst string) Packet { return pkt(src, dst) }

	for _, tc := range []struct {
		name   string
		cfg    func(*model.Config)
		p      Packet
		want   Verdict
		kind   string   // matched frontend kind, "" for none
		cands  []string // candidate endpoints
		masq   []string // candidates that are masqueraded (Forward), or "yes" for other verdicts
		class  string
		reason string // substring of the reason
		excl   []string
	}{
		{name: "pod to ClusterIP: all endpoints, source kept", p: pkt(podA, webVIP+":80"), want: Forward, kind: "ClusterIP",
			cands: []string{web1 + ":8080", web2 + ":8080"}, class: "pod",
			excl: []string{"10.244.1.11:8080=terminating (still serving): used only when no endpoint is ready", "10.244.2.11:8080=not ready",
				"[fd00:244:0:1::10]:8080=an IPv6 endpoint; this packet is IPv4"}},
		{name: "hairpin: a pod reaching itself is masqueraded", p: pkt(web1, webVIP+":80"), want: Forward, kind: "ClusterIP",
			cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080"}, class: "pod"},
		{name: "node to ClusterIP is masqueraded", p: local(pkt(nodeA, webVIP+":80")), want: Forward, kind: "ClusterIP",
			cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}, class: "node"},
		{name: "a node address as source counts as the node", p: pkt(nodeA, webVIP+":80"), want: Forward, kind: "ClusterIP",
			cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}, class: "node"},
		{name: "pod on another node to ClusterIP is masqueraded", p: pkt(podB, webVIP+":80"), want: Forward, kind: "ClusterIP",
			cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}, class: "outside",
			reason: "DNAT to one of 2 candidate endpoints"},
		{name: "masqueradeAll masquerades pod to ClusterIP", cfg: masqAll, p: pkt(podA, webVIP+":80"), want: Forward, kind: "ClusterIP",
			cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}, class: "pod"},
		{name: "external to NodePort (Cluster) is masqueraded", p: pkt(client, nodeA+":30080"), want: Forward, kind: "NodePort",
			cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}, class: "outside"},
		{name: "external to LoadBalancer IP (Cluster) is masqueraded", p: pkt(client, lbIP+":80"), want: Forward, kind: "LoadBalancerIP",
			cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}},
		{name: "external to externalIP (Cluster) is masqueraded", p: pkt(client, extIP+":80"), want: Forward, kind: "ExternalIP",
			cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}},
		{name: "pod to LoadBalancer IP (Cluster) is masqueraded", p: pkt(podA, lbIP+":80"), want: Forward, kind: "LoadBalancerIP",
			cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}},
		{name: "UDP NodePort", p: udp(pkt(client, nodeA+":30053")), want: Forward, kind: "NodePort",
			cands: []string{web1 + ":5353", web2 + ":5353"}, masq: []string{web1 + ":5353", web2 + ":5353"}},
		{name: "UDP ClusterIP from a pod", p: udp(pkt(podA, webVIP+":53")), want: Forward, kind: "ClusterIP",
			cands: []string{web1 + ":5353", web2 + ":5353"}},
		{name: "Local, no local endpoint: external traffic dropped", p: pkt(client, nodeA+":30081"), want: Drop, kind: "NodePort",
			reason: "externalTrafficPolicy Local and no endpoint on this node",
			excl:   []string{"10.244.2.20:8080=on node node-b, not this one: a Local traffic policy uses this node's endpoints only"}},
		{name: "Local, no local endpoint: LB IP dropped", p: pkt(client, "192.168.200.20:80"), want: Drop, kind: "LoadBalancerIP"},
		{name: "Local from a local pod: short-circuit to all endpoints, source kept", p: pkt(podA, nodeA+":30081"), want: Forward,
			kind: "NodePort", cands: []string{"10.244.2.20:8080"}, reason: "DNAT to the only candidate endpoint"},
		{name: "Local from the node: all endpoints, masqueraded", p: local(pkt(nodeA, nodeA+":30081")), want: Forward,
			kind: "NodePort", cands: []string{"10.244.2.20:8080"}, masq: []string{"10.244.2.20:8080"}},
		{name: "Local with a local endpoint: client source kept", p: pkt(client, nodeA+":30082"), want: Forward, kind: "NodePort",
			cands: []string{"10.244.1.21:8080"},
			excl:  []string{"10.244.2.21:8080=on node node-b, not this one: a Local traffic policy uses this node's endpoints only"}},
		{name: "Local Service's ClusterIP uses all endpoints", p: pkt(podA, "10.96.0.21:80"), want: Forward, kind: "ClusterIP",
			cands: []string{"10.244.1.21:8080", "10.244.2.21:8080"}},
		{name: "internalTrafficPolicy Local, no local endpoint: dropped", p: pkt(podA, "10.96.0.30:80"), want: Drop, kind: "ClusterIP",
			reason: "internalTrafficPolicy Local and no endpoint on this node"},
		{name: "source outside loadBalancerSourceRanges: dropped", p: pkt(client, "192.168.200.40:80"), want: Drop,
			kind: "LoadBalancerIP", reason: "outside loadBalancerSourceRanges"},
		{name: "source inside loadBalancerSourceRanges: forwarded", p: pkt("192.168.100.5", "192.168.200.40:80"), want: Forward,
			kind: "LoadBalancerIP", cands: []string{"10.244.1.40:8080"}, masq: []string{"10.244.1.40:8080"}},
		{name: "loadBalancerSourceRanges do not filter the NodePort", p: pkt(client, nodeA+":30083"), want: Forward,
			kind: "NodePort", cands: []string{"10.244.1.40:8080"}, masq: []string{"10.244.1.40:8080"}},
		{name: "affinity", p: pkt(podA, "10.96.0.50:80"), want: Forward, kind: "ClusterIP",
			cands: []string{"10.244.1.50:8080", "10.244.2.50:8080"}, reason: "(or to the client's affinity endpoint)"},
		{name: "only terminating endpoints: the serving ones are used", p: pkt(podA, "10.96.0.60:80"), want: Forward, kind: "ClusterIP",
			cands: []string{"10.244.2.60:8080"}, excl: []string{"10.244.2.61:8080=terminating and no longer serving"}},
		{name: "no usable endpoint: rejected", p: pkt(podA, "10.96.0.99:80"), want: Reject, kind: "ClusterIP",
			reason: "no usable endpoints", excl: []string{"10.244.2.99:8080=not ready"}},
		{name: "ClusterIP on a port the Service lacks: rejected", p: pkt(podA, webVIP+":81"), want: Reject,
			reason: "which has no port 81/TCP"},
		{name: "ClusterIP with a protocol the port lacks: rejected", p: udp(pkt(podA, webVIP+":80")), want: Reject,
			reason: "which has no port 80/UDP"},
		{name: "endpoint outside the cluster network: egress masquerade after DNAT", p: pkt(podA, "10.96.0.70:80"), want: Forward,
			kind: "ClusterIP", cands: []string{"203.0.113.70:8080"}, masq: []string{"203.0.113.70:8080"}},
		{name: "host-network endpoint on this node: delivered, not masqueraded", p: pkt(client, nodeA+":30084"), want: Forward,
			kind: "NodePort", cands: []string{nodeA + ":10250"}, class: "outside"},
		{name: "host-network endpoint on this node, from the node: masqueraded", p: local(pkt(nodeA, "10.96.0.80:443")), want: Forward,
			kind: "ClusterIP", cands: []string{nodeA + ":10250"}, masq: []string{nodeA + ":10250"}, class: "node"},
		{name: "pod to the internet: egress masquerade", p: pkt(podA, inet+":443"), want: Route, masq: []string{"yes"},
			reason: "no Service frontend"},
		{name: "pod to the internet, non-masquerade range: source kept", cfg: nonMasqInet, p: pkt(podA, inet+":443"), want: Route},
		{name: "pod to a pod on another node: source kept", p: pkt(podA, web2+":8080"), want: Route},
		{name: "external client to the internet (routed): not a pod, source kept", p: pkt(client, inet+":443"), want: Route},
		{name: "to the node itself: delivered", p: pkt(client, nodeA+":22"), want: Deliver},
		{name: "bridge: a pod arrives on the bridge, source kept", cfg: bridge, p: iif(pkt(podA, webVIP+":80"), "cni0"), want: Forward,
			kind: "ClusterIP", cands: []string{web1 + ":8080", web2 + ":8080"}, class: "pod"},
		{name: "bridge: a pod's address arriving elsewhere is outside", cfg: bridge, p: iif(pkt(podA, webVIP+":80"), "eth0"), want: Forward,
			kind: "ClusterIP", cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}, class: "outside"},
		{name: "bridge: without --iif the packet is outside", cfg: bridge, p: pkt(podA, webVIP+":80"), want: Forward,
			kind: "ClusterIP", cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}, class: "outside"},
		{name: "bridge: the node is the node", cfg: bridge, p: local(pkt(nodeA, webVIP+":80")), want: Forward,
			kind: "ClusterIP", cands: []string{web1 + ":8080", web2 + ":8080"}, masq: []string{web1 + ":8080", web2 + ":8080"}, class: "node"},
		{name: "bridge: Local from a pod short-circuits", cfg: bridge, p: iif(pkt(podA, nodeA+":30081"), "cni0"), want: Forward,
			kind: "NodePort", cands: []string{"10.244.2.20:8080"}, class: "pod"},
		{name: "bridge: pod egress to the internet is masqueraded", cfg: bridge, p: iif(pkt(podA, inet+":443"), "cni0"), want: Route,
			masq: []string{"yes"}, class: "pod"},
		{name: "bridge: egress to a non-masquerade range keeps the source", cfg: bridge, p: iif(pkt(podA, web2+":8080"), "cni0"), want: Route,
			class: "pod"},
		{name: "bridge: traffic from elsewhere is not pod egress", cfg: bridge, p: iif(pkt(podB, inet+":443"), "eth0"), want: Route,
			class: "outside"},
		{name: "an unallocated address of the Service CIDR: dropped", cfg: svcCIDR, p: pkt(podA, "10.96.5.5:80"), want: Drop,
			reason: "is in the Service CIDR 10.96.0.0/12 and no Service of kubenat's has this address"},
		{name: "an unallocated address from the node: dropped", cfg: svcCIDR, p: local(pkt(nodeA, "10.96.5.5:80")), want: Drop},
		{name: "an address of the node's interfaces inside the Service CIDR (IPVS-like): delivered", cfg: func(c *model.Config) {
			c.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}
			c.LocalAddrs = []netip.Addr{netip.MustParseAddr("10.96.99.1")}
		}, p: local(pkt(nodeA, "10.96.99.1:22")), want: Deliver},
		{name: "without Service CIDRs the same address is routed", p: pkt(podA, "10.96.5.5:80"), want: Route},
		{name: "a ClusterIP in the Service CIDR is still served", cfg: svcCIDR, p: pkt(podA, webVIP+":80"), want: Forward, kind: "ClusterIP",
			cands: []string{web1 + ":8080", web2 + ":8080"}, class: "pod"},
		{name: "IPv6 ClusterIP", p: v6("fd00:244:0:1::12", "["+webVIP6+"]:80"), want: Forward, kind: "ClusterIP",
			cands: []string{"[fd00:244:0:1::10]:8080"}, class: "pod",
			excl: []string{web1 + ":8080=an IPv4 endpoint; this packet is IPv6"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := fixtureState(t, tc.cfg)
			r, err := Trace(st, tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if r.Verdict != tc.want {
				t.Errorf("verdict %s (%s), want %s", r.Verdict, r.Reason, tc.want)
			}
			kind := ""
			if r.Frontend != nil {
				kind = r.Frontend.Kind
			}
			if kind != tc.kind {
				t.Errorf("frontend kind %q, want %q", kind, tc.kind)
			}
			if tc.class != "" && r.Source.Class != tc.class {
				t.Errorf("source class %q, want %q", r.Source.Class, tc.class)
			}
			if tc.reason != "" && !strings.Contains(r.Reason, tc.reason) {
				t.Errorf("reason %q, want it to contain %q", r.Reason, tc.reason)
			}
			var cands, masq []string
			if r.Endpoints != nil {
				sum := 0.0
				for _, c := range r.Endpoints.Candidates {
					ap := netip.AddrPortFrom(c.Addr, c.Port).String()
					cands = append(cands, ap)
					if c.Masquerade {
						masq = append(masq, ap)
					}
					sum += c.Probability
				}
				if len(cands) > 0 && (sum < 0.999 || sum > 1.001) {
					t.Errorf("probabilities sum to %v", sum)
				}
				excl := map[string]string{}
				for _, x := range r.Endpoints.Excluded {
					excl[netip.AddrPortFrom(x.Addr, x.Port).String()] = x.Reason
				}
				for _, e := range tc.excl {
					ap, why, _ := strings.Cut(e, "=")
					if excl[ap] != why {
						t.Errorf("excluded %s: %q, want %q", ap, excl[ap], why)
					}
				}
			} else if len(tc.excl) > 0 {
				t.Errorf("no endpoints listed, want exclusions %v", tc.excl)
			}
			if r.Verdict != Forward && r.Masquerade != nil && r.Masquerade.Masquerade {
				masq = append(masq, "yes")
			}
			if !slices.Equal(cands, tc.cands) {
				t.Errorf("candidates %v, want %v", cands, tc.cands)
			}
			if !slices.Equal(masq, tc.masq) {
				t.Errorf("masqueraded %v, want %v", masq, tc.masq)
			}
			switch r.Verdict {
			case Forward:
				if r.DNAT == nil || len(r.DNAT.To) != len(cands) || r.Masquerade == nil {
					t.Errorf("forward without DNAT or masquerade decision: %+v", r)
				}
			case Reject, Drop:
				if r.DNAT != nil || r.Masquerade != nil {
					t.Errorf("%s with a DNAT or masquerade decision", r.Verdict)
				}
			}
			if r.Verdict == Reject && r.RejectWith == "" {
				t.Error("reject without RejectWith")
			}
		})
	}
}

// TestTraceHintsAtIIF: with the pods recognized by interface, a packet
// from an address of this node's pod CIDR traced without --iif is taken
// for outside traffic, and trace says how to say otherwise.
func TestTraceHintsAtIIF(t *testing.T) {
	st := fixtureState(t, func(c *model.Config) {
		c.LocalDetect = model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: "cni0"}
		c.ClusterCIDRs = nil
	})
	r, err := Trace(st, pkt(podA, webVIP+":80"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "10.244.1.12 is in this node's pod CIDR 10.244.1.0/24: give --iif if it comes from a pod"; r.Source.Class != "outside" || !strings.Contains(r.Source.Why, want) {
		t.Errorf("source %+v, want outside with the hint %q", r.Source, want)
	}
	p := pkt(podA, webVIP+":80")
	p.IIF = `veth" x`
	if _, err := Trace(st, p); err == nil || !strings.Contains(err.Error(), `interface "veth\" x"`) {
		t.Errorf("a hostile --iif: %v", err)
	}
}

func TestTraceRejectsMalformedPackets(t *testing.T) {
	st := fixtureState(t, nil)
	for _, tc := range []struct {
		name string
		p    Packet
		want string
	}{
		{"families differ", pkt(podA, "["+webVIP6+"]:80"), "different address families"},
		{"local with an interface", Packet{Protocol: model.TCP, Src: netip.MustParseAddrPort(nodeA + ":1"),
			Dst: netip.MustParseAddrPort(webVIP + ":80"), Local: true, IIF: "eth0"}, "does not arrive on an interface"},
		{"no destination port", Packet{Protocol: model.TCP, Src: netip.MustParseAddrPort(podA + ":0"),
			Dst: netip.MustParseAddrPort(webVIP + ":0")}, "needs an address and a port"},
		{"unknown protocol", Packet{Protocol: "ICMP", Src: netip.MustParseAddrPort(podA + ":0"),
			Dst: netip.MustParseAddrPort(webVIP + ":80")}, "must be tcp, udp or sctp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Trace(st, tc.p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		src     bool
		want    string
		wantErr bool
	}{
		{"10.0.0.1", true, "10.0.0.1:0", false},
		{"10.0.0.1:5000", true, "10.0.0.1:5000", false},
		{"fd00::1", true, "[fd00::1]:0", false},
		{"[fd00::1]:53", true, "[fd00::1]:53", false},
		{"::ffff:10.0.0.1", true, "10.0.0.1:0", false},
		{"nonsense", true, "", true},
		{"10.0.0.1:80", false, "10.0.0.1:80", false},
		{"10.0.0.1", false, "", true},
		{"10.0.0.1:0", false, "", true},
	} {
		parse := ParseDestination
		if tc.src {
			parse = ParseSource
		}
		got, err := parse(tc.in)
		if (err != nil) != tc.wantErr || (err == nil && got.String() != tc.want) {
			t.Errorf("parse(%q, src=%v) = %v, %v; want %s, error %v", tc.in, tc.src, got, err, tc.want, tc.wantErr)
		}
	}
	for _, s := range []string{"tcp", "UDP", "Sctp"} {
		if _, err := ParseProtocol(s); err != nil {
			t.Errorf("ParseProtocol(%q): %v", s, err)
		}
	}
	if _, err := ParseProtocol("icmp"); err == nil {
		t.Error("ParseProtocol(icmp) succeeded")
	}
}

// TestTraceSocketLB checks what Trace says when the socket load balancer
// is on: connects from this node to a ClusterIP it holds go straight to an
// endpoint; everything else is traced as nftables does it.
func TestTraceSocketLB(t *testing.T) {
	st := fixtureState(t, func(c *model.Config) { c.SocketLB = true })
	for _, tc := range []struct {
		name     string
		p        Packet
		socketLB bool
	}{
		{"pod to ClusterIP", pkt(podA, webVIP+":80"), true},
		{"hairpin: no masquerade, the pod connects to itself", pkt(web1, webVIP+":80"), true},
		{"node to ClusterIP", local(pkt(nodeA, webVIP+":80")), true},
		{"pod on another node: its own node decides, here nftables", pkt(podB, webVIP+":80"), false},
		{"UDP stays with nftables", udp(pkt(podA, webVIP+":53")), false},
		{"NodePort stays with nftables", pkt(podA, nodeA+":30080"), false},
		{"ClientIP affinity stays with nftables", pkt(podA, "10.96.0.50:80"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Trace(st, tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if r.Verdict != Forward || r.SocketLB != tc.socketLB {
				t.Fatalf("verdict %s, socketLB %v; want forward, socketLB %v", r.Verdict, r.SocketLB, tc.socketLB)
			}
			if !tc.socketLB {
				if r.DNAT == nil {
					t.Errorf("no DNAT for a packet nftables translates")
				}
				return
			}
			if r.DNAT != nil || r.Masquerade == nil || r.Masquerade.Masquerade || !strings.Contains(r.Reason, "socket load balancer") {
				t.Errorf("DNAT %v, masquerade %+v, reason %q; want no NAT and the socket load balancer named", r.DNAT, r.Masquerade, r.Reason)
			}
			for _, c := range r.Endpoints.Candidates {
				if c.Masquerade {
					t.Errorf("candidate %s is masqueraded", c.Addr)
				}
			}
		})
	}
}

// TestTraceUntracked checks that trace says a balanced connection is
// untracked only when its family's cluster CIDR is untracked and holds
// the client.
func TestTraceUntracked(t *testing.T) {
	v4only := func(c *model.Config) {
		c.SocketLB, c.UntrackPodTCP = true, true
		c.ClusterCIDRs = c.ClusterCIDRs[:1]
	}
	dual := func(c *model.Config) { c.SocketLB, c.UntrackPodTCP = true, true }
	const pod6 = "fd00:244:0:1::12"
	for _, tc := range []struct {
		name  string
		tweak func(*model.Config)
		p     Packet
		want  string // "" for no untracked wording
	}{
		{"IPv4 pod, IPv4 untracked", v4only, pkt(podA, webVIP+":80"), "TCP between pods of 10.244.0.0/16 is untracked"},
		{"IPv6 pod, only IPv4 untracked", v4only, pkt(pod6, "["+webVIP6+"]:80"), ""},
		{"IPv6 pod, both untracked", dual, pkt(pod6, "["+webVIP6+"]:80"), "TCP between pods of fd00:244::/56 is untracked"},
		{"the node itself is not a pod", dual, local(pkt(nodeA, webVIP+":80")), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Trace(fixtureState(t, tc.tweak), tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if !r.SocketLB || r.Masquerade == nil {
				t.Fatalf("socketLB %v, masquerade %+v: want the socket load balancer", r.SocketLB, r.Masquerade)
			}
			if got := strings.Contains(r.Masquerade.Rule, "untracked"); got != (tc.want != "") || !strings.Contains(r.Masquerade.Rule, tc.want) {
				t.Errorf("masquerade rule %q, want %q", r.Masquerade.Rule, tc.want)
			}
		})
	}
}

// TestTraceTCNAT checks what Trace says when the tc NAT is on: external
// traffic to an external frontend it holds is its; everything else is
// traced as nftables does it.
func TestTraceTCNAT(t *testing.T) {
	st := fixtureState(t, func(c *model.Config) { c.TCNAT = true })
	for _, tc := range []struct {
		name  string
		p     Packet
		tcNAT bool
	}{
		{"external client to a NodePort", pkt(client, nodeA+":30080"), true},
		{"external client to a Local NodePort with a local endpoint", pkt(client, nodeA+":30082"), true},
		{"a pod to the NodePort stays with nftables", pkt(podA, nodeA+":30080"), false},
		{"the node to the NodePort stays with nftables", local(pkt(nodeA, nodeA+":30080")), false},
		{"an external client to a ClusterIP stays with nftables", pkt(client, webVIP+":80"), false},
		{"source ranges stay with nftables", pkt("192.168.100.5", "192.168.200.40:80"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Trace(st, tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if r.Verdict != Forward || r.TCNAT != tc.tcNAT {
				t.Fatalf("verdict %s, tcNAT %v (%s); want forward, tcNAT %v", r.Verdict, r.TCNAT, r.Reason, tc.tcNAT)
			}
			if r.TCNAT != strings.Contains(r.Reason, "tc NAT") {
				t.Errorf("reason %q does not say whether the tc NAT translates it", r.Reason)
			}
		})
	}
}

// TestTraceDirectPodToPod checks when Trace says the tc NAT's pod program
// delivers a connection straight into the destination pod.
func TestTraceDirectPodToPod(t *testing.T) {
	on := func(c *model.Config) {
		c.SocketLB, c.UntrackPodTCP, c.TCNAT, c.TCNATPodToPod = true, true, true, true
	}
	for _, tc := range []struct {
		name   string
		cfg    func(*model.Config)
		p      Packet
		want   Verdict
		direct bool
	}{
		{"a pod to a pod of this node", on, pkt(podA, web1+":8080"), Route, true},
		{"off", func(c *model.Config) { on(c); c.TCNATPodToPod = false }, pkt(podA, web1+":8080"), Route, false},
		{"UDP", on, udp(pkt(podA, web1+":8080")), Route, false},
		{"a pod to a pod of another node", on, pkt(podA, web2+":8080"), Route, false},
		{"a pod of another node", on, pkt(podB, web1+":8080"), Route, false},
		{"a pod to its own address", on, pkt(web1, web1+":8080"), Route, false},
		{"a tracked endpoint (externalTrafficPolicy Local)", on, pkt(podA, "10.244.1.21:8080"), Route, false},
		{"a tracked endpoint's replies", on, pkt("10.244.1.21:8080", podA+":40000"), Route, false},
		{"through the socket load balancer, a candidate on this node", on, pkt(podA, webVIP+":80"), Forward, true},
		{"the socket load balancer, no candidate on this node", on, pkt(podA, "10.96.0.60:80"), Forward, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Trace(fixtureState(t, tc.cfg), tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if r.Verdict != tc.want || r.DirectPodToPod != tc.direct {
				t.Fatalf("verdict %s, directPodToPod %v (%s); want %s, %v", r.Verdict, r.DirectPodToPod, r.Reason, tc.want, tc.direct)
			}
			said := strings.Contains(r.Reason, "pod program")
			if r.Masquerade != nil {
				said = said || strings.Contains(r.Masquerade.Rule, "pod program")
			}
			if said != tc.direct {
				t.Errorf("reason %q, masquerade %+v: does not say whether the pod program delivers it", r.Reason, r.Masquerade)
			}
		})
	}
}
