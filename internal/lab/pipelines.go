package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/kubenat/kubenat/internal/agent"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/topo"
	"github.com/kubenat/kubenat/internal/trace"
	"github.com/kubenat/kubenat/internal/trace/live"
)

// Report is the outcome of running the pipelines.
type Report struct {
	Topology *Topology `json:"topology"`
	// InputErrors are the problems found in the lab's manifests; the
	// objects they name are left out of trace's answers (the agents keep
	// their last valid version).
	InputErrors []string   `json:"inputErrors,omitempty"`
	Pipelines   []Pipeline `json:"pipelines"`
	// OK is true when every check of every pipeline passed.
	OK bool `json:"ok"`
}

// Pipeline is one of the seed's NAT pipelines, run for real.
type Pipeline struct {
	N     int    `json:"n"`
	Title string `json:"title"`
	// Seed says which part of the seed document it shows.
	Seed   string   `json:"seed"`
	Notes  []string `json:"notes,omitempty"`
	Flows  []Flow   `json:"flows"`
	Checks []Check  `json:"checks"`
	OK     bool     `json:"ok"`
}

// Flow is one connection, hop by hop, as the kernels' conntrack tables
// recorded it.
type Flow struct {
	// Proto is "HTTP" (TCP) or "UDP".
	Proto string `json:"proto"`
	From  string `json:"from"`
	// Src is the client socket's address; Dst the address it connected to.
	Src  netip.AddrPort `json:"src"`
	Dst  netip.AddrPort `json:"dst"`
	Hops []Hop          `json:"hops"`
	// Answer is what the server saw; nil when nothing answered.
	Answer *Answer `json:"answer,omitempty"`
	// Error says why nothing answered.
	Error string `json:"error,omitempty"`
	// ExpectDrop marks a connection that should get no answer.
	ExpectDrop bool `json:"expectDrop,omitempty"`
	// Note says what is special about the connection.
	Note string `json:"note,omitempty"`
}

// Packet is a packet's addresses at one point of its way.
type Packet struct {
	Src netip.AddrPort `json:"src"`
	Dst netip.AddrPort `json:"dst"`
}

// Hop is one host on the way that tracked the connection.
type Hop struct {
	Host string `json:"host"`
	// In is the packet as it reached the host, Out as it left.
	In  Packet `json:"in"`
	Out Packet `json:"out"`
	// DNAT and SNAT say what the host translated.
	DNAT bool `json:"dnat"`
	SNAT bool `json:"snat"`
	// By names what translated: the load balancer's table or kubenat.
	By string `json:"by,omitempty"`
	// Conntrack is the host's entry, which carries the return path; nil
	// for a dropped packet.
	Conntrack *live.CTEntry `json:"conntrack,omitempty"`
	// Model is kubenat trace's answer for this packet on a node.
	Model *ModelView `json:"model,omitempty"`
}

// ModelView is kubenat trace's answer for a hop, and whether the kernel
// did that.
type ModelView struct {
	Verdict    string   `json:"verdict"`
	Frontend   string   `json:"frontend,omitempty"`
	Candidates []string `json:"candidates,omitempty"`
	Masquerade bool     `json:"masquerade"`
	Rule       string   `json:"rule"`
	Agree      bool     `json:"agree"`
	// Mismatch says how the kernel differed.
	Mismatch string `json:"mismatch,omitempty"`
}

// Check is one promise of a pipeline, checked.
type Check struct {
	What   string `json:"what"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// runner runs the pipelines against a topology.
type runner struct {
	t      *Topology
	states map[string]*model.State
}

// Run drives the pipelines' traffic through the lab described by t (which
// may be run by another process) and checks every result. It returns an
// error only when the lab cannot be used at all; failed checks are in the
// report (Report.OK is false).
func Run(ctx context.Context, t *Topology) (*Report, error) {
	r := &runner{t: t, states: map[string]*model.State{}}
	rep := &Report{Topology: t, OK: true}
	seen := map[string]bool{}
	for _, n := range t.Nodes {
		st, errs, err := nodeState(ctx, t.Manifests, n)
		if err != nil {
			return nil, err
		}
		r.states[n.Name] = st
		for _, e := range errs {
			if msg := e.Error(); !seen[msg] {
				seen[msg] = true
				rep.InputErrors = append(rep.InputErrors, msg)
			}
		}
	}
	for _, p := range []func(context.Context) Pipeline{r.externalCluster, r.externalLocal, r.podToClusterIP, r.egress, r.egressNonMasq} {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		pl := p(ctx)
		pl.N = len(rep.Pipelines) + 1
		pl.OK = true
		for _, c := range pl.Checks {
			pl.OK = pl.OK && c.OK
		}
		rep.OK = rep.OK && pl.OK
		rep.Pipelines = append(rep.Pipelines, pl)
	}
	return rep, ctx.Err()
}

// nodeState builds what kubenat on node s sees, from the same manifests
// and configuration as its agent, and returns the problems found in them
// (each naming its file); the objects they name are left out.
func nodeState(ctx context.Context, dir string, s NodeSetup) (*model.State, []error, error) {
	cfg := model.Config{NodeName: s.Name, ClusterCIDRs: []netip.Prefix{topo.ClusterCIDR, topo.ClusterCIDR6}}
	if s.NonMasqueradeCIDRs != nil {
		cfg.Egress.NonMasqueradeCIDRs = []netip.Prefix{}
		for _, c := range s.NonMasqueradeCIDRs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				return nil, nil, fmt.Errorf("node %s: %w", s.Name, err)
			}
			cfg.Egress.NonMasqueradeCIDRs = append(cfg.Egress.NonMasqueradeCIDRs, p)
		}
	}
	snap, err := agent.Collect(ctx, cfg, agent.NewManifestSource(dir))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the lab's manifests: %w", err)
	}
	return snap.State, append(slices.Clip(snap.SourceErrors), snap.State.Errors...), nil
}

const timeout = 2 * time.Second

// connect makes one connection from host from to dst, follows it through
// the hosts in order, and closes it.
func (r *runner) connect(ctx context.Context, proto, from string, dst netip.AddrPort, order []string) Flow {
	f := Flow{Proto: proto, From: from, Dst: dst}
	h := r.t.mustHost(from)
	var c *conn
	var err error
	if proto == "UDP" {
		c, err = udpEcho(ctx, h, dst, timeout)
	} else {
		c, err = httpGet(ctx, h, dst, timeout)
	}
	if err != nil {
		f.Error = describeErr(err)
		return f
	}
	defer c.Close()
	if h := r.t.Host(c.Answer.Server); h != nil && c.Answer.Node == "" {
		c.Answer.Node = h.Node
	}
	f.Src, f.Answer = c.Src, &c.Answer
	f.Hops = r.follow(proto, Packet{Src: c.Src, Dst: dst}, order)
	return f
}

// follow reconstructs a connection's way from the conntrack tables of the
// hosts in order: each host whose table has an entry for the packet as it
// stands is a hop, and its entry's reply direction gives the translated
// packet the next host sees.
func (r *runner) follow(proto string, p Packet, order []string) []Hop {
	mp := model.TCP
	if proto == "UDP" {
		mp = model.UDP
	}
	var hops []Hop
	visited := map[string]bool{}
	for {
		found := false
		for _, name := range order {
			if visited[name] {
				continue
			}
			e, ok := r.conntrack(name, mp, p)
			if !ok {
				continue
			}
			visited[name], found = true, true
			hop := Hop{Host: name, In: p, DNAT: e.DNAT, SNAT: e.SNAT, Conntrack: &e}
			if e.DNAT {
				p.Dst = e.ReplySrc
			}
			if e.SNAT {
				p.Src = e.ReplyDst
			}
			hop.Out = p
			if name == "lb" {
				hop.By = fmt.Sprintf("the load balancer (table ip %s)", lbTable)
			} else {
				hop.By = "kubenat"
				hop.Model = r.model(name, mp, hop)
			}
			hops = append(hops, hop)
			break
		}
		if !found {
			return hops
		}
	}
}

// conntrack returns host name's entry whose original direction is p.
func (r *runner) conntrack(name string, proto model.Protocol, p Packet) (live.CTEntry, bool) {
	var ents []live.CTEntry
	err := topo.InNS(r.t.mustHost(name).NS, func() error {
		var err error
		ents, err = live.Conntrack(live.CTFilter{Protocol: proto, Src: p.Src.Addr(), SrcPort: p.Src.Port(),
			Dst: p.Dst.Addr(), DstPort: p.Dst.Port()})
		return err
	})
	if err != nil || len(ents) == 0 {
		return live.CTEntry{}, false
	}
	return ents[0], true
}

// model asks kubenat trace about the packet entering a node and compares
// with what the node's kernel did (hop's DNAT and SNAT; a nil Conntrack
// means the packet got no answer).
func (r *runner) model(node string, proto model.Protocol, hop Hop) *ModelView {
	res, err := trace.Trace(r.states[node], trace.Packet{Protocol: proto, Src: hop.In.Src, Dst: hop.In.Dst})
	if err != nil {
		return &ModelView{Verdict: "error", Rule: err.Error(), Mismatch: err.Error()}
	}
	mv := &ModelView{Verdict: string(res.Verdict)}
	if f := res.Frontend; f != nil {
		mv.Frontend = fmt.Sprintf("%s of %s", f.Kind, f.Service)
	}
	if res.Masquerade != nil {
		mv.Masquerade, mv.Rule = res.Masquerade.Masquerade, res.Masquerade.Rule
	} else {
		mv.Rule = res.Reason
	}
	dropped := hop.Conntrack == nil
	switch res.Verdict {
	case trace.Forward:
		var chosen *trace.Candidate
		for i, c := range res.Endpoints.Candidates {
			ap := netip.AddrPortFrom(c.Addr, c.Port)
			mv.Candidates = append(mv.Candidates, ap.String())
			if hop.DNAT && ap == hop.Out.Dst {
				chosen = &res.Endpoints.Candidates[i]
			}
		}
		switch {
		case dropped:
			mv.Mismatch = "the kernel dropped the packet"
		case chosen == nil:
			mv.Mismatch = fmt.Sprintf("the kernel sent it to %s", hop.Out.Dst)
		case chosen.Masquerade != hop.SNAT:
			mv.Masquerade = chosen.Masquerade
			mv.Mismatch = fmt.Sprintf("the kernel's masquerade was %v", hop.SNAT)
		default:
			mv.Masquerade = chosen.Masquerade
			if chosen.MasqueradeRule != "" {
				mv.Rule = chosen.MasqueradeRule
			}
		}
	case trace.Route, trace.Deliver:
		switch {
		case dropped:
			mv.Mismatch = "the kernel dropped the packet"
		case hop.DNAT:
			mv.Mismatch = fmt.Sprintf("the kernel DNATed it to %s", hop.Out.Dst)
		case mv.Masquerade != hop.SNAT:
			mv.Mismatch = fmt.Sprintf("the kernel's masquerade was %v", hop.SNAT)
		}
	case trace.Drop, trace.Reject:
		if !dropped {
			mv.Mismatch = "the kernel let the connection through"
		}
	}
	mv.Agree = mv.Mismatch == ""
	return mv
}

// expectDropped connects from host from to dst and records whether the
// connection got no answer, with the model's answer for node.
func (r *runner) expectDropped(ctx context.Context, from string, dst netip.AddrPort, node string) Flow {
	f := Flow{Proto: "HTTP", From: from, Dst: dst, ExpectDrop: true}
	h := r.t.mustHost(from)
	nc, err := dial(ctx, h, "tcp", dst, time.Second)
	if err == nil {
		f.Src = unmap(netip.MustParseAddrPort(nc.LocalAddr().String()))
		nc.Close()
		f.Error = ""
	} else {
		f.Error = describeErr(err)
	}
	hop := Hop{Host: node, In: Packet{Src: netip.AddrPortFrom(h.Addr, 0), Dst: dst}}
	hop.Out = hop.In
	if err == nil {
		// It was answered: find the entry to show what happened.
		if e, ok := r.conntrack(node, model.TCP, Packet{Src: f.Src, Dst: dst}); ok {
			hop.Conntrack, hop.DNAT, hop.SNAT = &e, e.DNAT, e.SNAT
			hop.In.Src = f.Src
			hop.Out = hop.In
			if e.DNAT {
				hop.Out.Dst = e.ReplySrc
			}
			if e.SNAT {
				hop.Out.Src = e.ReplyDst
			}
		} else {
			hop.Conntrack = &live.CTEntry{}
		}
	}
	hop.By = "kubenat"
	hop.Model = r.model(node, model.TCP, hop)
	f.Hops = []Hop{hop}
	return f
}

func describeErr(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Sprintf("no answer within %s (dropped)", time.Second)
	}
	return err.Error()
}

// nodeAddrs returns the addresses a node may masquerade to.
func (r *runner) nodeAddrs(name string) []netip.Addr {
	h := r.t.mustHost(name)
	return []netip.Addr{h.Addr, h.Gateway}
}

func (r *runner) isNodeAddr(a netip.Addr) (string, bool) {
	for _, n := range r.t.Nodes {
		if slices.Contains(r.nodeAddrs(n.Name), a) {
			return n.Name, true
		}
	}
	return "", false
}

// Common checks.

func answered(flows []Flow) Check {
	c := Check{What: "every connection was answered", OK: true}
	for _, f := range flows {
		if !f.ExpectDrop && f.Answer == nil {
			c.OK = false
			c.Detail += fmt.Sprintf("%s %s -> %s: %s; ", f.Proto, f.From, f.Dst, f.Error)
		}
	}
	c.Detail = strings.TrimSuffix(c.Detail, "; ")
	return c
}

func modelAgrees(flows []Flow) Check {
	c := Check{What: "kubenat trace predicted every node's NAT", OK: true}
	n := 0
	for _, f := range flows {
		for _, h := range f.Hops {
			if h.Model == nil {
				continue
			}
			n++
			if !h.Model.Agree {
				c.OK = false
				c.Detail += fmt.Sprintf("%s on %s: %s; ", f.Dst, h.Host, h.Model.Mismatch)
			}
		}
	}
	if n == 0 {
		c.OK, c.Detail = false, "no node hop was seen"
	}
	c.Detail = strings.TrimSuffix(c.Detail, "; ")
	return c
}

// natHosts returns, per flow, the kubenat node that did the DNAT.
func natHosts(flows []Flow) []string {
	var out []string
	for _, f := range flows {
		for _, h := range f.Hops {
			if h.Model != nil && h.DNAT {
				out = append(out, h.Host)
			}
		}
	}
	return out
}

// The pipelines.

// externalCluster: external → LB → NodePort → pod with
// externalTrafficPolicy Cluster: the pod sees a node address.
func (r *runner) externalCluster(ctx context.Context) Pipeline {
	p := Pipeline{
		Title: "external → LB → NodePort → pod, externalTrafficPolicy: Cluster",
		Seed:  "the seed's pipeline (1)→(2)→(3)→(4): the load balancer DNATs to nodeIP:NodePort, the node DNATs to a pod and SNATs, replies return through the same node",
		Notes: []string{fmt.Sprintf("lb: %s:80 → nodeIP:%d of node-a and node-b in turn; Service default/web has web-a (node-a) and web-b (node-b)", webVIP, webNodePort)},
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr(webVIP), 80)
	for range 2 {
		p.Flows = append(p.Flows, r.connect(ctx, "HTTP", "ext", vip, []string{"lb", "node-a", "node-b"}))
	}
	ext := r.t.mustHost("ext").Addr
	seesNode := Check{What: fmt.Sprintf("the pod saw a node's address, never the client's %s", ext), OK: true}
	consistent := Check{What: "the pod saw exactly the masquerade address in the node's conntrack entry", OK: true}
	for _, f := range p.Flows {
		if f.Answer == nil {
			continue
		}
		if _, ok := r.isNodeAddr(f.Answer.Seen.Addr()); !ok {
			seesNode.OK = false
			seesNode.Detail += fmt.Sprintf("%s saw %s; ", f.Answer.Server, f.Answer.Seen)
		}
		if n := len(f.Hops); n == 0 || f.Hops[n-1].Out.Src != f.Answer.Seen {
			consistent.OK = false
			consistent.Detail += fmt.Sprintf("%s saw %s; ", f.Answer.Server, f.Answer.Seen)
		}
	}
	nodes := natHosts(p.Flows)
	spread := Check{What: "the load balancer's connections landed on both nodes",
		OK: slices.Contains(nodes, "node-a") && slices.Contains(nodes, "node-b"), Detail: "NAT done by " + strings.Join(nodes, ", ")}
	p.Checks = []Check{answered(p.Flows), seesNode, consistent, spread, modelAgrees(p.Flows)}
	return p
}

// externalLocal: externalTrafficPolicy Local: the pod sees the client, and
// only nodes with local pods take traffic.
func (r *runner) externalLocal(ctx context.Context) Pipeline {
	p := Pipeline{
		Title: "external → LB → NodePort → pod, externalTrafficPolicy: Local",
		Seed:  "the seed's way to keep the client IP: no SNAT on the node, so only nodes with a local pod may take the traffic",
	}
	// The health checks are asked again: the manifests may have changed
	// since the load balancer was programmed from them (lab up).
	lb := r.t.mustHost("lb")
	var fresh []HealthProbe
	stale := false
	for _, then := range r.t.Health {
		h := probe(ctx, lb, then.Node, then.URL)
		fresh = append(fresh, h)
		stale = stale || h.Status != then.Status
		status := "no answer"
		if h.Status != 0 {
			status = fmt.Sprintf("%d %s", h.Status, h.Body)
		}
		p.Notes = append(p.Notes, fmt.Sprintf("lb health check %s: %s", h.URL, status))
	}
	if r.t.HealthNote != "" {
		p.Notes = append(p.Notes, r.t.HealthNote)
	}
	if stale {
		p.Notes = append(p.Notes, "the health checks changed since the lab came up; the load balancer still sends to the nodes that passed them then (lab down and lab up program it again)")
	}
	p.Notes = append(p.Notes, fmt.Sprintf("lb: %s:80 → nodeIP:%d of %s only; Service default/web-local has web-a (node-a)",
		localVIP, localNP, strings.Join(r.t.LocalBackends, ", ")))
	vip := netip.AddrPortFrom(netip.MustParseAddr(localVIP), 80)
	for range 2 {
		p.Flows = append(p.Flows, r.connect(ctx, "HTTP", "ext", vip, []string{"lb", "node-a", "node-b"}))
	}
	nodeB := r.t.mustHost("node-b")
	direct := r.expectDropped(ctx, "ext", netip.AddrPortFrom(nodeB.Addr, localNP), "node-b")
	direct.Note = "straight to node-b's NodePort, past the load balancer's health check"
	p.Flows = append(p.Flows, direct)

	health := Check{What: "the health checks pass only on the node with a local pod", OK: len(fresh) == 2}
	for _, h := range fresh {
		want := map[string]int{"node-a": 200, "node-b": 503}[h.Node]
		health.Detail += fmt.Sprintf("%s: %d; ", h.Node, h.Status)
		health.OK = health.OK && h.Status == want
	}
	health.Detail = strings.TrimSuffix(health.Detail, "; ")
	seesClient := Check{What: "the pod saw the client's own address and port", OK: true}
	for _, f := range p.Flows {
		if f.Answer != nil && f.Answer.Seen != f.Src {
			seesClient.OK = false
			seesClient.Detail += fmt.Sprintf("client %s, %s saw %s; ", f.Src, f.Answer.Server, f.Answer.Seen)
		}
	}
	seesClient.Detail = strings.TrimSuffix(seesClient.Detail, "; ")
	nodes := natHosts(p.Flows[:2])
	onlyA := Check{What: "only the node with a local pod took the traffic", OK: len(nodes) == 2,
		Detail: "NAT done by " + strings.Join(nodes, ", ")}
	for _, n := range nodes {
		onlyA.OK = onlyA.OK && n == "node-a"
	}
	dropped := Check{What: fmt.Sprintf("node-b (no local pod) drops its NodePort %d", localNP),
		OK: direct.Answer == nil && strings.Contains(direct.Error, "dropped"), Detail: direct.Error}
	p.Checks = []Check{health, answered(p.Flows), seesClient, onlyA, dropped, modelAgrees(p.Flows)}
	return p
}

// podToClusterIP: a pod reaches a ClusterIP served by a pod on another
// node; nothing rewrites its source.
func (r *runner) podToClusterIP(ctx context.Context) Pipeline {
	p := Pipeline{
		Title: "pod → ClusterIP → pod on another node",
		Seed:  "kube-proxy's DNAT (ClusterIP:port → PodIP:containerPort); pod-to-pod traffic keeps its source",
		Notes: []string{fmt.Sprintf("Service default/api: ClusterIP %s, HTTP 80 and UDP 53, served by web-b on node-b", apiVIP)},
	}
	order := []string{"node-a", "node-b"}
	p.Flows = append(p.Flows,
		r.connect(ctx, "HTTP", "cli-a", netip.AddrPortFrom(netip.MustParseAddr(apiVIP), 80), order),
		r.connect(ctx, "UDP", "cli-a", netip.AddrPortFrom(netip.MustParseAddr(apiVIP), 53), order))
	served := Check{What: "web-b on node-b answered", OK: true}
	kept := Check{What: "the pod on node-b saw cli-a's own address and port (no SNAT)", OK: true}
	for _, f := range p.Flows {
		if f.Answer == nil {
			continue
		}
		if f.Answer.Server != "web-b" {
			served.OK = false
			served.Detail += f.Answer.Server + " answered; "
		}
		if f.Answer.Seen != f.Src {
			kept.OK = false
			kept.Detail += fmt.Sprintf("%s saw %s, cli-a is %s; ", f.Proto, f.Answer.Seen, f.Src)
		}
	}
	p.Checks = []Check{answered(p.Flows), served, kept, modelAgrees(p.Flows)}
	return p
}

// egress: a pod reaches the internet; the internet host sees the node.
func (r *runner) egress(ctx context.Context) Pipeline {
	inet := r.t.mustHost("internet").Addr
	nodeA := r.t.mustHost("node-a")
	p := Pipeline{
		Title: "pod → internet (MASQUERADE)",
		Seed:  "POSTROUTING -s 10.244.0.0/16 ! -d <non-masquerade ranges> -j MASQUERADE: the pod's source becomes the node's",
	}
	order := []string{"node-a", "node-b"}
	p.Flows = append(p.Flows,
		r.connect(ctx, "HTTP", "cli-a", netip.AddrPortFrom(inet, inetHTTP), order),
		r.connect(ctx, "UDP", "cli-a", netip.AddrPortFrom(inet, udpPort), order))
	sees := Check{What: fmt.Sprintf("the internet host saw node-a's address %s, not the pod's", nodeA.Addr), OK: true}
	for _, f := range p.Flows {
		if f.Answer != nil && f.Answer.Seen.Addr() != nodeA.Addr {
			sees.OK = false
			sees.Detail += fmt.Sprintf("%s: saw %s; ", f.Proto, f.Answer.Seen)
		}
	}
	p.Checks = []Check{answered(p.Flows), sees, modelAgrees(p.Flows)}
	return p
}

// egressNonMasq: with the internet in the non-masquerade ranges, the pod's
// address reaches the internet host.
func (r *runner) egressNonMasq(ctx context.Context) Pipeline {
	inet := r.t.mustHost("internet").Addr
	cli := r.t.mustHost("cli-b")
	var ranges []string
	for _, n := range r.t.Nodes {
		if n.Name == "node-b" {
			ranges = n.NonMasqueradeCIDRs
		}
	}
	p := Pipeline{
		Title: "pod → internet with a non-masquerade range (ip-masq-agent)",
		Seed:  "ip-masq-agent's nonMasqueradeCIDRs turn the MASQUERADE off for chosen destinations",
		Notes: []string{fmt.Sprintf("node-b runs with --non-masquerade-cidr %s; the router routes the pod networks back to the nodes",
			strings.Join(ranges, ","))},
	}
	order := []string{"node-b", "node-a"}
	p.Flows = append(p.Flows,
		r.connect(ctx, "HTTP", "cli-b", netip.AddrPortFrom(inet, inetHTTP), order),
		r.connect(ctx, "UDP", "cli-b", netip.AddrPortFrom(inet, udpPort), order))
	sees := Check{What: fmt.Sprintf("the internet host saw the pod's own address %s", cli.Addr), OK: true}
	for _, f := range p.Flows {
		if f.Answer != nil && f.Answer.Seen != f.Src {
			sees.OK = false
			sees.Detail += fmt.Sprintf("%s: saw %s; ", f.Proto, f.Answer.Seen)
		}
	}
	p.Checks = []Check{answered(p.Flows), sees, modelAgrees(p.Flows)}
	return p
}
