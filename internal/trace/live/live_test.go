package live

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/trace"
)

// Lines as nft 1.0.6 prints them for a node sending to a ClusterIP that is
// DNATed to a local pod and masqueraded.
var clusterIPLines = []string{
	`add table ip kubenat-trace`,
	`trace id d556a852 ip kubenat-trace output packet: oif "eth0" ip saddr 192.168.100.11 ip daddr 10.96.0.10 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 40001 ip length 60 tcp sport 42283 tcp dport 80 tcp flags == syn tcp window 64240 `,
	`trace id d556a852 ip kubenat-trace output unknown rule handle 4 (verdict continue)`,
	`trace id d556a852 ip kubenat-trace output policy accept `,
	`trace id d556a852 ip kubenat filter-output packet: oif "eth0" ip saddr 192.168.100.11 ip daddr 10.96.0.10 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 40001 ip length 60 tcp sport 42283 tcp dport 80 tcp flags == syn tcp window 64240 `,
	`trace id d556a852 ip kubenat filter-output rule ct state new jump filter-services (verdict jump filter-services)`,
	`trace id d556a852 ip kubenat nat-services rule goto lb (verdict goto lb)`,
	`trace id d556a852 ip kubenat lb rule dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @backends-2 (verdict accept)`,
	// A retransmission traced again by our table: ignored.
	`trace id 11111111 ip kubenat-trace output packet: oif "eth0" ip saddr 192.168.100.11 ip daddr 10.96.0.10 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 40002 ip length 60 tcp sport 42283 tcp dport 80 tcp flags == syn `,
	// Another packet traced by someone else: ignored.
	`trace id 22222222 ip kubenat nat-postrouting packet: oif "eth0" ip saddr 10.0.0.9 ip daddr 10.0.0.8 ip id 7 tcp sport 1 tcp dport 2 `,
	// The same packet under a new trace id after routing: taken.
	`trace id 9a9a9a9a ip kubenat nat-postrouting packet: oif "cni0" ip saddr 192.168.100.11 ip daddr 10.244.1.10 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 40001 ip length 60 tcp sport 42283 tcp dport 8080 tcp flags == syn `,
	`trace id 9a9a9a9a ip kubenat nat-postrouting rule meta mark & 0x00004000 == 0x00004000 meta mark set meta mark & 0xffffbfff masquerade fully-random (verdict accept)`,
}

func TestParseEvent(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Event
		ok   bool
	}{
		{clusterIPLines[0], Event{}, false},
		{clusterIPLines[2], Event{ID: "d556a852", Family: "ip", Table: "kubenat-trace", Chain: "output", Kind: "rule",
			Rule: "unknown rule handle 4", Handle: 4, Verdict: "continue"}, true},
		{clusterIPLines[3], Event{ID: "d556a852", Family: "ip", Table: "kubenat-trace", Chain: "output", Kind: "policy", Verdict: "accept"}, true},
		{clusterIPLines[5], Event{ID: "d556a852", Family: "ip", Table: "kubenat", Chain: "filter-output", Kind: "rule",
			Rule: "ct state new jump filter-services", Verdict: "jump filter-services"}, true},
		{`trace id 1 ip kubenat refuse rule meta l4proto tcp reject with tcp reset (verdict drop)`,
			Event{ID: "1", Family: "ip", Table: "kubenat", Chain: "refuse", Kind: "rule", Rule: "meta l4proto tcp reject with tcp reset", Verdict: "drop"}, true},
	} {
		got, ok := parseEvent(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseEvent(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParsePacket(t *testing.T) {
	e, _ := parseEvent(`trace id 4be248a7 ip kubenat-trace prerouting packet: iif "cni0" ether saddr 72:23:52:90:cf:66 ether daddr 06:03:74:71:25:42 ip saddr 10.244.1.11 ip daddr 203.0.113.100 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 37163 ip length 34 udp sport 59766 udp dport 9000 udp length 14 @th,64,48 0x68656c6c6f0a `)
	got := parsePacket(e.Rule)
	want := packetFields{IIF: "cni0", Src: netip.MustParseAddr("10.244.1.11"), Dst: netip.MustParseAddr("203.0.113.100"),
		SrcPort: 59766, DstPort: 9000, IPID: 37163}
	if got != want {
		t.Errorf("parsePacket = %+v, want %+v", got, want)
	}
	e, _ = parseEvent(`trace id 5 ip6 kubenat-trace prerouting packet: iif "eth0" ip6 saddr fd00:100::50 ip6 daddr fd00:100::12 ip6 dscp cs0 ip6 flowlabel 1 tcp sport 4000 tcp dport 30060 `)
	if got := parsePacket(e.Rule); got.Src != netip.MustParseAddr("fd00:100::50") || got.DstPort != 30060 || got.IPID != -1 {
		t.Errorf("IPv6 packet: %+v", got)
	}
}

// fakeMonitor feeds lines to collect.
func fakeMonitor(lines []string) *monitor {
	m := &monitor{lines: make(chan string, len(lines)), done: make(chan struct{})}
	for _, l := range lines {
		m.lines <- l
	}
	return m
}

func TestCollectFollowsThePacket(t *testing.T) {
	events, err := collect(context.Background(), fakeMonitor(clusterIPLines), "ip", 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range events {
		ids = append(ids, e.ID)
	}
	if got := strings.Join(ids, ","); got != "d556a852,d556a852,d556a852,d556a852,d556a852,d556a852,d556a852,9a9a9a9a,9a9a9a9a" {
		t.Errorf("collected ids %s", got)
	}
	k := kernelOf(events)
	if k.Verdict != "forward" || k.DNATTo == nil || k.DNATTo.String() != "10.244.1.10:8080" || !k.Masquerade ||
		k.Src.String() != "192.168.100.11:42283" || k.Dst.String() != "10.96.0.10:80" {
		t.Errorf("kernel = %+v", k)
	}
}

func TestCollectTimesOutWithoutPacket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	m := fakeMonitor([]string{"add table ip kubenat-trace"})
	if _, err := collect(ctx, m, "ip", time.Second); err != ErrNoPacket {
		t.Errorf("collect = %v, want ErrNoPacket", err)
	}
}

func TestKernelVerdicts(t *testing.T) {
	pkt := `packet: iif "eth0" ip saddr 192.168.100.50 ip daddr 192.168.100.11 ip id 1 tcp sport 5 tcp dport 30081 `
	for _, tc := range []struct {
		rules []string
		want  string
	}{
		{[]string{"ip daddr . meta l4proto . th dport @local-drop-frontends fib saddr type != local ip saddr != @local-pod-cidrs drop (verdict drop)"}, "drop"},
		{[]string{"goto refuse (verdict goto refuse)", "meta l4proto tcp reject with tcp reset (verdict drop)"}, "reject"},
		{[]string{"goto lb (verdict goto lb)"}, "accept"},
	} {
		lines := []string{"trace id 1 ip kubenat-trace prerouting " + pkt}
		for _, r := range tc.rules {
			lines = append(lines, "trace id 1 ip kubenat filter-services rule "+r)
		}
		events, err := collect(context.Background(), fakeMonitor(lines), "ip", 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if k := kernelOf(events); k.Verdict != tc.want {
			t.Errorf("rules %v: verdict %s, want %s", tc.rules, k.Verdict, tc.want)
		}
	}
}

func TestCompare(t *testing.T) {
	ep := func(s string) *netip.AddrPort { a := netip.MustParseAddrPort(s); return &a }
	fwd := &trace.Result{Verdict: trace.Forward, Packet: trace.PacketInfo{Protocol: model.TCP},
		Endpoints: &trace.Endpoints{Candidates: []trace.Candidate{
			{Addr: netip.MustParseAddr("10.244.1.10"), Port: 8080, Masquerade: true},
			{Addr: netip.MustParseAddr("10.244.2.10"), Port: 8080},
		}}}
	route := &trace.Result{Verdict: trace.Route, Packet: trace.PacketInfo{Dst: netip.MustParseAddr("203.0.113.100"), DstPort: 9000},
		Masquerade: &trace.Masquerade{Masquerade: true}}
	drop := &trace.Result{Verdict: trace.Drop}
	ct := &CTEntry{ReplySrc: netip.MustParseAddrPort("10.244.1.10:8080"), ReplyDst: netip.MustParseAddrPort("10.244.1.1:999"), DNAT: true, SNAT: true}
	for _, tc := range []struct {
		name  string
		m     *trace.Result
		k     Kernel
		agree bool
	}{
		{"forward to a candidate, masqueraded as modelled", fwd, Kernel{Verdict: "forward", DNATTo: ep("10.244.1.10:8080"), Masquerade: true, Conntrack: ct}, true},
		{"forward without conntrack entry", fwd, Kernel{Verdict: "forward", DNATTo: ep("10.244.2.10:8080")}, true},
		{"forward to a non-candidate", fwd, Kernel{Verdict: "forward", DNATTo: ep("10.244.3.10:8080")}, false},
		{"masquerade the model does not want", fwd, Kernel{Verdict: "forward", DNATTo: ep("10.244.2.10:8080"), Masquerade: true}, false},
		{"conntrack contradicts the events", fwd, Kernel{Verdict: "forward", DNATTo: ep("10.244.2.10:8080"), Conntrack: ct}, false},
		{"kernel rejects what the model forwards", fwd, Kernel{Verdict: "reject"}, false},
		{"drop agreed", drop, Kernel{Verdict: "drop"}, true},
		{"drop vs accept", drop, Kernel{Verdict: "accept"}, false},
		{"egress masquerade agreed", route, Kernel{Verdict: "accept", Masquerade: true}, true},
		{"egress not masqueraded", route, Kernel{Verdict: "accept"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checks := compare(tc.m, tc.k)
			agree := true
			for _, c := range checks {
				agree = agree && c.Agree
			}
			if agree != tc.agree {
				t.Errorf("agree = %v, want %v: %+v", agree, tc.agree, checks)
			}
		})
	}
}

func TestMatchExpr(t *testing.T) {
	p := trace.Packet{Protocol: model.UDP, Src: netip.MustParseAddrPort("10.244.1.11:0"), Dst: netip.MustParseAddrPort("10.96.0.10:53")}
	if got, want := matchExpr("ip", p), "meta l4proto udp ip saddr 10.244.1.11 ip daddr 10.96.0.10 th dport 53 ct state new"; got != want {
		t.Errorf("matchExpr = %q, want %q", got, want)
	}
	p = trace.Packet{Protocol: model.TCP, Src: netip.MustParseAddrPort("[fd00::1]:4000"), Dst: netip.MustParseAddrPort("[fd00::2]:80")}
	if got, want := matchExpr("ip6", p), "meta l4proto tcp ip6 saddr fd00::1 ip6 daddr fd00::2 th sport 4000 th dport 80 ct state new"; got != want {
		t.Errorf("matchExpr = %q, want %q", got, want)
	}
}

func TestHeldUntil(t *testing.T) {
	until := time.Date(2026, 11, 27, 22, 50, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, listing string
		handle        string
		until         time.Time
		err           bool
	}{
		{name: "a trace's table",
			listing: "table ip kubenat-trace { # handle 7\n\tcomment \"" + claimComment(until) + "\"\n\tchain output { # handle 1\n",
			handle:  "7", until: until},
		{name: "no comment (an older kubenat's)",
			listing: "table ip6 kubenat-trace { # handle 12\n\tchain prerouting { # handle 1\n",
			handle:  "12"},
		{name: "someone else's comment",
			listing: "table ip kubenat-trace { # handle 3\n\tcomment \"mine\"\n}\n",
			handle:  "3"},
		{name: "a comment naming no time",
			listing: "table ip kubenat-trace { # handle 3\n\tcomment \"" + claimPrefix + "soon\"\n}\n",
			handle:  "3"},
		{name: "not a listing", listing: "Error: No such file or directory", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			handle, got, err := heldUntil(tc.listing)
			if (err != nil) != tc.err || handle != tc.handle || !got.Equal(tc.until) {
				t.Errorf("heldUntil = %q, %v, %v; want %q, %v, error %v", handle, got, err, tc.handle, tc.until, tc.err)
			}
		})
	}
}
