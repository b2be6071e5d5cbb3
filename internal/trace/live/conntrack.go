package live

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/ti-mo/conntrack"

	"github.com/kubenat/kubenat/internal/model"
)

// CTEntry is one conntrack entry: the original direction as the first
// packet arrived, and the reply direction the kernel expects (which
// carries the reverse translation: a DNATed connection's replies come from
// the endpoint, a masqueraded one's go to the node's address).
type CTEntry struct {
	Protocol model.Protocol `json:"protocol"`
	OrigSrc  netip.AddrPort `json:"origSrc"`
	OrigDst  netip.AddrPort `json:"origDst"`
	ReplySrc netip.AddrPort `json:"replySrc"`
	ReplyDst netip.AddrPort `json:"replyDst"`
	// DNAT and SNAT are the kernel's status bits: the destination or the
	// source was translated.
	DNAT bool `json:"dnat"`
	SNAT bool `json:"snat"`
	// State is the TCP state ("" for other protocols).
	State string `json:"state,omitempty"`
	// TimeoutSeconds is the time left before the entry expires.
	TimeoutSeconds uint32 `json:"timeoutSeconds"`
}

// String formats the entry like the conntrack tool, shortened:
// "tcp ESTABLISHED 192.168.100.50:40000 -> 192.168.100.11:30080 | reply 10.244.2.10:8080 -> 192.168.100.11:61234 [DNAT SNAT]".
func (e CTEntry) String() string {
	var b strings.Builder
	b.WriteString(strings.ToLower(string(e.Protocol)))
	if e.State != "" {
		b.WriteString(" " + e.State)
	}
	fmt.Fprintf(&b, " %s -> %s | reply %s -> %s", e.OrigSrc, e.OrigDst, e.ReplySrc, e.ReplyDst)
	var flags []string
	if e.DNAT {
		flags = append(flags, "DNAT")
	}
	if e.SNAT {
		flags = append(flags, "SNAT")
	}
	if len(flags) > 0 {
		fmt.Fprintf(&b, " [%s]", strings.Join(flags, " "))
	}
	return b.String()
}

// CTFilter selects conntrack entries by their original direction. Zero
// fields match anything.
type CTFilter struct {
	Protocol model.Protocol
	Src      netip.Addr
	SrcPort  uint16
	Dst      netip.Addr
	DstPort  uint16
}

func (f CTFilter) match(e CTEntry) bool {
	return (f.Protocol == "" || f.Protocol == e.Protocol) &&
		(!f.Src.IsValid() || f.Src == e.OrigSrc.Addr()) &&
		(f.SrcPort == 0 || f.SrcPort == e.OrigSrc.Port()) &&
		(!f.Dst.IsValid() || f.Dst == e.OrigDst.Addr()) &&
		(f.DstPort == 0 || f.DstPort == e.OrigDst.Port())
}

// Conntrack returns the conntrack entries of the calling thread's network
// namespace that match f, read through the conntrack netlink interface.
// Callers that switch namespaces must lock the OS thread around the call.
func Conntrack(f CTFilter) ([]CTEntry, error) {
	c, err := conntrack.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("opening the conntrack netlink socket: %w", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("listing conntrack entries: %w", err)
	}
	var out []CTEntry
	for _, fl := range flows {
		e, ok := entryOf(fl)
		if ok && f.match(e) {
			out = append(out, e)
		}
	}
	return out, nil
}

var protoNames = map[uint8]model.Protocol{6: model.TCP, 17: model.UDP, 132: model.SCTP}

var tcpStates = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
	"LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

func entryOf(fl conntrack.Flow) (CTEntry, bool) {
	p, ok := protoNames[fl.TupleOrig.Proto.Protocol]
	if !ok {
		return CTEntry{}, false
	}
	ap := func(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a.Unmap(), port) }
	o, r := fl.TupleOrig, fl.TupleReply
	e := CTEntry{
		Protocol:       p,
		OrigSrc:        ap(o.IP.SourceAddress, o.Proto.SourcePort),
		OrigDst:        ap(o.IP.DestinationAddress, o.Proto.DestinationPort),
		ReplySrc:       ap(r.IP.SourceAddress, r.Proto.SourcePort),
		ReplyDst:       ap(r.IP.DestinationAddress, r.Proto.DestinationPort),
		DNAT:           fl.Status.DstNAT(),
		SNAT:           fl.Status.SrcNAT(),
		TimeoutSeconds: fl.Timeout,
	}
	if fl.ProtoInfo.TCP != nil && int(fl.ProtoInfo.TCP.State) < len(tcpStates) {
		e.State = tcpStates[fl.ProtoInfo.TCP.State]
	}
	return e, true
}
