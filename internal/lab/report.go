package lab

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the lab report: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// WriteText writes the cluster, then each pipeline as hop diagrams (the
// addresses before and after each NAT, kubenat trace's answer for each
// node, the conntrack entries that carry the return path) and its checks,
// then a summary line.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	b.WriteString("kubenat lab: the NAT pipelines of a Kubernetes node, live\n\n")
	r.Topology.writeText(&b)
	if len(r.InputErrors) > 0 {
		b.WriteString("\nproblems in the lab's manifests (trace leaves these objects out; the agents keep their last valid version):\n")
		for _, e := range r.InputErrors {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	for _, p := range r.Pipelines {
		fmt.Fprintf(&b, "\n=== %d. %s\n", p.N, p.Title)
		fmt.Fprintf(&b, "    %s\n", p.Seed)
		for _, n := range p.Notes {
			fmt.Fprintf(&b, "    %s\n", n)
		}
		for _, f := range p.Flows {
			b.WriteString("\n")
			writeFlow(&b, f)
		}
		b.WriteString("\n  checks:\n")
		for _, c := range p.Checks {
			mark := "ok  "
			if !c.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(&b, "    %s %s", mark, c.What)
			if c.Detail != "" && (!c.OK || strings.HasPrefix(c.Detail, "NAT done by")) {
				fmt.Fprintf(&b, " (%s)", c.Detail)
			}
			b.WriteString("\n")
		}
	}
	failed := 0
	for _, p := range r.Pipelines {
		for _, c := range p.Checks {
			if !c.OK {
				failed++
			}
		}
	}
	if r.OK {
		fmt.Fprintf(&b, "\nall %d pipelines behaved as the seed describes and as kubenat trace predicts\n", len(r.Pipelines))
	} else {
		noun := "checks"
		if failed == 1 {
			noun = "check"
		}
		fmt.Fprintf(&b, "\n%d %s FAILED\n", failed, noun)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeText lists the lab's hosts.
func (t *Topology) writeText(b *strings.Builder) {
	b.WriteString("cluster (network namespaces " + t.Prefix + "*):\n")
	for _, h := range t.Hosts {
		if h.Role == "LAN switch" || h.Role == "pod" {
			continue
		}
		line := fmt.Sprintf("  %-9s %-15s %s", h.Name, h.Addr, h.Role)
		switch h.Role {
		case "node":
			var pods []string
			for _, p := range t.Hosts {
				if p.Node == h.Name {
					pods = append(pods, fmt.Sprintf("%s %s", p.Name, p.Addr))
				}
			}
			line += fmt.Sprintf(", pods %s: %s", h.PodCIDR, strings.Join(pods, ", "))
		case "external client":
			line += ", behind the load balancer"
		case "load balancer":
			line += ", DNATs LoadBalancer IPs to nodeIP:NodePort"
		}
		b.WriteString(line + "\n")
	}
}

func writeFlow(b *strings.Builder, f Flow) {
	src := f.From
	if f.Src.IsValid() {
		src += " " + f.Src.String()
	}
	fmt.Fprintf(b, "  %s %s → %s", f.Proto, src, f.Dst)
	if f.Note != "" {
		fmt.Fprintf(b, "   (%s)", f.Note)
	}
	b.WriteString("\n")
	for _, h := range f.Hops {
		prefix := fmt.Sprintf("    %-8s", h.Host)
		var lines []string
		if h.DNAT {
			lines = append(lines, fmt.Sprintf("DNAT dst %s → %s", h.In.Dst, h.Out.Dst))
		}
		if h.SNAT {
			lines = append(lines, fmt.Sprintf("SNAT src %s → %s", h.In.Src, h.Out.Src))
		}
		if len(lines) == 0 {
			switch {
			case h.Conntrack == nil:
				lines = append(lines, fmt.Sprintf("dropped %s → %s", h.In.Src.Addr(), h.In.Dst))
			default:
				lines = append(lines, "routed, no NAT")
			}
		}
		if h.By != "" && (h.DNAT || h.SNAT) {
			lines[0] += "   by " + h.By
		}
		for i, l := range lines {
			if i > 0 {
				prefix = strings.Repeat(" ", len(prefix))
			}
			fmt.Fprintf(b, "%s%s\n", prefix, l)
		}
		if m := h.Model; m != nil {
			fmt.Fprintf(b, "%s  trace: %s\n", strings.Repeat(" ", 12), modelLine(m))
		}
	}
	if a := f.Answer; a != nil {
		where := ""
		if a.Node != "" {
			where = " on " + a.Node
		}
		fmt.Fprintf(b, "    ▶ %s%s answered; it saw the connection come from %s\n", a.Server, where, a.Seen)
	} else if f.ExpectDrop && f.Error == "" {
		b.WriteString("    ▶ the connection was accepted, though this pipeline expects it dropped\n")
	} else {
		fmt.Fprintf(b, "    ▶ no answer: %s\n", f.Error)
	}
	var cts []string
	for _, h := range f.Hops {
		if h.Conntrack != nil && h.Conntrack.Protocol != "" {
			cts = append(cts, fmt.Sprintf("      %-8s %s", h.Host, h.Conntrack))
		}
	}
	if len(cts) > 0 {
		b.WriteString("    return path (conntrack, original | reply):\n")
		for _, c := range cts {
			b.WriteString(c + "\n")
		}
	}
}

func modelLine(m *ModelView) string {
	var s string
	switch m.Verdict {
	case "forward":
		s = fmt.Sprintf("%s → one of %s; masquerade %s (%s)", m.Frontend, strings.Join(m.Candidates, " | "), yesNo(m.Masquerade), m.Rule)
	case "route", "deliver":
		s = fmt.Sprintf("%s, masquerade %s (%s)", m.Verdict, yesNo(m.Masquerade), m.Rule)
	default:
		s = fmt.Sprintf("%s (%s)", m.Verdict, m.Rule)
		if m.Frontend != "" {
			s = m.Frontend + ": " + s
		}
	}
	if m.Agree {
		return s + " [kernel agrees]"
	}
	return s + " [DISAGREES: " + m.Mismatch + "]"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
