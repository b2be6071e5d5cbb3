// Package kubeproxy renders Services the way kube-proxy's iptables mode
// structures them, as iptables-restore input: the baseline the benchmarks
// compare kubenat with. It is written from kube-proxy's documented and
// observable ruleset shape, not from its code, and covers what the
// benchmark exercises: ClusterIP and NodePort Services with
// externalTrafficPolicy Cluster, TCP.
//
// nat table: PREROUTING and OUTPUT jump to KUBE-SERVICES, which holds one
// rule per Service port (destination ClusterIP and port → KUBE-SVC-*) in
// the order given, then the rule that sends traffic to local addresses to
// KUBE-NODEPORTS. A KUBE-SVC-* chain marks traffic from outside the cluster
// CIDR for masquerade (KUBE-MARK-MASQ), then picks an endpoint chain
// KUBE-SEP-* with `statistic --mode random` probabilities 1/n, 1/(n-1), …,
// 1; a KUBE-SEP-* chain marks hairpin traffic and DNATs. NodePorts go
// through KUBE-EXT-* (mark for masquerade, then KUBE-SVC-*).
// KUBE-POSTROUTING masquerades marked packets. filter table: the
// KUBE-FORWARD, KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS and
// KUBE-PROXY-FIREWALL hooks kube-proxy installs (empty here but for
// KUBE-FORWARD, as no Service lacks endpoints).
package kubeproxy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// MasqueradeMark is the mark bit kube-proxy uses.
const MasqueradeMark = 0x4000

// Service is one Service port to render.
type Service struct {
	Namespace, Name, Port string
	ClusterIP             netip.Addr
	ServicePort           uint16
	NodePort              uint16 // 0: none
	Endpoints             []netip.AddrPort
}

// portName is the Service port's name as kube-proxy prints it in comments.
func (s *Service) portName() string { return s.Namespace + "/" + s.Name + ":" + s.Port }

// chainName returns prefix + a 16-character hash of the Service port (or
// endpoint), like kube-proxy's chain names.
func chainName(prefix, id string) string {
	h := sha256.Sum256([]byte(id))
	return prefix + base32.StdEncoding.EncodeToString(h[:])[:16]
}

// Write renders services as iptables-restore input. clusterCIDR is the pod
// range (traffic to a ClusterIP from outside it is masqueraded). The
// Services' KUBE-SERVICES rules (and NodePort rules) appear in the given
// order, so the last Service is evaluated last.
func Write(w io.Writer, services []Service, clusterCIDR netip.Prefix) error {
	bw := &errWriter{w: w}
	mark := fmt.Sprintf("0x%x", MasqueradeMark)

	bw.line("*filter")
	for _, c := range []string{"KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"} {
		bw.line(":" + c + " - [0:0]")
	}
	bw.line(`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	bw.line(`-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS`)
	bw.line(`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`)
	bw.line(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	bw.line(`-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`)
	bw.line(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	bw.line(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES`)
	bw.line(`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	bw.line(`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	bw.line(`-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`)
	bw.line(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark ` + mark + `/` + mark + ` -j ACCEPT`)
	bw.line(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)
	bw.line("COMMIT")

	bw.line("*nat")
	for _, c := range []string{"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"} {
		bw.line(":" + c + " - [0:0]")
	}
	type names struct {
		svc, ext string
		seps     []string
	}
	chains := make([]names, len(services))
	for i := range services {
		s := &services[i]
		id := s.portName() + "/tcp"
		n := names{svc: chainName("KUBE-SVC-", id)}
		if s.NodePort != 0 {
			n.ext = chainName("KUBE-EXT-", id)
		}
		for _, ep := range s.Endpoints {
			n.seps = append(n.seps, chainName("KUBE-SEP-", id+"/"+ep.String()))
		}
		chains[i] = n
		bw.line(":" + n.svc + " - [0:0]")
		if n.ext != "" {
			bw.line(":" + n.ext + " - [0:0]")
		}
		for _, sep := range n.seps {
			bw.line(":" + sep + " - [0:0]")
		}
	}
	bw.line(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	bw.line(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	bw.line(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	bw.line(`-A KUBE-MARK-MASQ -j MARK --or-mark ` + mark)
	bw.line(`-A KUBE-POSTROUTING -m mark ! --mark ` + mark + `/` + mark + ` -j RETURN`)
	bw.line(`-A KUBE-POSTROUTING -j MARK --xor-mark ` + mark)
	bw.line(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	for i := range services {
		s := &services[i]
		n := chains[i]
		pn := s.portName()
		vip := s.ClusterIP.String() + "/32"
		port := strconv.Itoa(int(s.ServicePort))
		bw.line(`-A KUBE-SERVICES -d ` + vip + ` -p tcp -m comment --comment "` + pn + ` cluster IP" -m tcp --dport ` + port + ` -j ` + n.svc)
		bw.line(`-A ` + n.svc + ` ! -s ` + clusterCIDR.String() + ` -d ` + vip + ` -p tcp -m comment --comment "` + pn + ` cluster IP" -m tcp --dport ` + port + ` -j KUBE-MARK-MASQ`)
		for j, ep := range s.Endpoints {
			rule := `-A ` + n.svc + ` -m comment --comment "` + pn + ` -> ` + ep.String() + `"`
			if left := len(s.Endpoints) - j; left > 1 {
				rule += ` -m statistic --mode random --probability ` + strconv.FormatFloat(1/float64(left), 'f', 11, 64)
			}
			bw.line(rule + ` -j ` + n.seps[j])
			bw.line(`-A ` + n.seps[j] + ` -s ` + ep.Addr().String() + `/32 -m comment --comment "` + pn + `" -j KUBE-MARK-MASQ`)
			bw.line(`-A ` + n.seps[j] + ` -p tcp -m comment --comment "` + pn + `" -m tcp -j DNAT --to-destination ` + ep.String())
		}
		if n.ext != "" {
			bw.line(`-A ` + n.ext + ` -m comment --comment "masquerade traffic for ` + pn + ` external destinations" -j KUBE-MARK-MASQ`)
			bw.line(`-A ` + n.ext + ` -j ` + n.svc)
		}
	}
	for i := range services {
		s := &services[i]
		if chains[i].ext == "" {
			continue
		}
		bw.line(`-A KUBE-NODEPORTS -p tcp -m comment --comment "` + s.portName() + `" -m tcp --dport ` + strconv.Itoa(int(s.NodePort)) + ` -j ` + chains[i].ext)
	}
	bw.line(`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`)
	bw.line("COMMIT")
	return bw.err
}

// Rules counts the rules Write produces for services (both tables).
func Rules(services []Service) int {
	n := 12 + 7 + 1 // filter rules, fixed nat rules, the nodeports rule
	for _, s := range services {
		n += 2 + 3*len(s.Endpoints)
		if s.NodePort != 0 {
			n += 3
		}
	}
	return n
}

type errWriter struct {
	w   io.Writer
	err error
	sb  strings.Builder
}

func (e *errWriter) line(s string) {
	if e.err != nil {
		return
	}
	e.sb.Reset()
	e.sb.WriteString(s)
	e.sb.WriteByte('\n')
	_, e.err = io.WriteString(e.w, e.sb.String())
}
