package live

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// WriteJSON writes r as indented JSON followed by a newline.
func (r *Result) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the live trace: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// WriteText writes the model's trace, then what the kernel did (the base
// chains the packet entered, every rule it matched, the conntrack entry),
// then the comparison, one aspect per line, marking disagreements.
func (r *Result) WriteText(w io.Writer) error {
	var b strings.Builder
	if err := r.Model.WriteText(&b); err != nil {
		return err
	}
	k := r.Kernel
	fmt.Fprintf(&b, "\nkernel: nftables trace %s", k.TraceID)
	if k.Src.IsValid() {
		fmt.Fprintf(&b, " of %s -> %s", k.Src, k.Dst)
	}
	if k.IIF != "" {
		fmt.Fprintf(&b, " arriving on %s", k.IIF)
	}
	b.WriteString("\n")
	where := func(e Event) string { return fmt.Sprintf("%s %s %s", e.Family, e.Table, e.Chain) }
	width := 0
	for _, e := range k.Events {
		width = max(width, len(where(e)))
	}
	for _, e := range k.Events {
		switch e.Kind {
		case "packet":
			f := parsePacket(e.Rule)
			desc := fmt.Sprintf("packet %s", addrs(f))
			if f.OIF != "" {
				desc += " out " + f.OIF
			}
			fmt.Fprintf(&b, "  %-*s  %s\n", width, where(e), desc)
		case "rule":
			fmt.Fprintf(&b, "  %-*s  %s  => %s\n", width, where(e), e.Rule, e.Verdict)
		default:
			fmt.Fprintf(&b, "  %-*s  %s %s\n", width, where(e), e.Kind, strings.TrimSpace(e.Rule+" "+e.Verdict))
		}
	}
	if k.Conntrack != nil {
		fmt.Fprintf(&b, "conntrack: %s\n", k.Conntrack)
	} else if k.Verdict == "reject" || k.Verdict == "drop" {
		b.WriteString("conntrack: no entry (the packet made no connection)\n")
	} else {
		b.WriteString("conntrack: no entry (the connection was refused by its destination or is already gone)\n")
	}

	b.WriteString("\nmodel vs kernel:\n")
	aw, mw := 0, 0
	for _, c := range r.Checks {
		aw, mw = max(aw, len(c.Aspect)), max(mw, len(c.Model))
	}
	for _, c := range r.Checks {
		mark := "agree"
		if !c.Agree {
			mark = "DISAGREE"
		}
		fmt.Fprintf(&b, "  %-*s  %-*s  %s  [%s]\n", aw, c.Aspect, mw, c.Model, c.Kernel, mark)
	}
	if r.Agree {
		b.WriteString("the kernel did what the model says\n")
	} else {
		b.WriteString("the kernel DISAGREES with the model\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func addrs(f packetFields) string {
	ap := func(a fmt.Stringer, port uint16) string {
		if port == 0 {
			return a.String()
		}
		return fmt.Sprintf("%s:%d", a, port)
	}
	if !f.Src.IsValid() {
		return "(no IP header)"
	}
	if f.Src.Is6() {
		return fmt.Sprintf("[%s]:%d -> [%s]:%d", f.Src, f.SrcPort, f.Dst, f.DstPort)
	}
	return ap(f.Src, f.SrcPort) + " -> " + ap(f.Dst, f.DstPort)
}
