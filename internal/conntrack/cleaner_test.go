package conntrack

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"

	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

var (
	feDNS  = netip.MustParseAddrPort("10.96.0.10:53")
	feDNS6 = netip.MustParseAddrPort("[fd00:96::10]:53")
	feNTP  = netip.MustParseAddrPort("10.96.0.11:123")
	feOff  = netip.MustParseAddrPort("10.96.0.10:54")
	ep1    = netip.MustParseAddrPort("10.244.1.5:53")
	ep2    = netip.MustParseAddrPort("10.244.2.5:53")
	ep6    = netip.MustParseAddrPort("[fd00:244::5]:53")
	epNTP  = netip.MustParseAddrPort("10.244.1.6:123")
)

// entry is one conntrack entry the tests create: a client's flow to a
// frontend, DNATed to an endpoint.
type entry struct {
	name     string
	proto    uint8
	frontend netip.AddrPort
	endpoint netip.AddrPort
}

var entries = []entry{
	{"udp dns→ep1", protoUDP, feDNS, ep1},
	{"udp dns→ep2", protoUDP, feDNS, ep2},
	{"tcp dns→ep1", protoTCP, feDNS, ep1},
	{"udp dns:54→ep1", protoUDP, feOff, ep1},
	{"udp ntp→epNTP", protoUDP, feNTP, epNTP},
	{"udp6 dns→ep6", protoUDP, feDNS6, ep6},
	{"udp6 other:53→ep6", protoUDP, netip.MustParseAddrPort("[fd00:96::11]:53"), ep6},
}

// flow returns the conntrack entry of a client (its port the entry's index)
// whose flow to the frontend was DNATed to the endpoint.
func (e entry) flow(i int) ct.Flow {
	client := netip.MustParseAddr("10.244.0.7")
	if e.frontend.Addr().Is6() {
		client = netip.MustParseAddr("fd00:244::7")
	}
	f := ct.NewFlow(e.proto, 0, client, e.frontend.Addr(), uint16(40000+i), e.frontend.Port(), 120, 0)
	f.TupleReply.IP.SourceAddress = e.endpoint.Addr()
	f.TupleReply.Proto.SourcePort = e.endpoint.Port()
	if e.proto == protoTCP {
		f.ProtoInfo.TCP = &ct.ProtoInfoTCP{State: 3} // ESTABLISHED
	}
	return f
}

// name returns which of entries f is, by its client port.
func name(f ct.Flow) string {
	i := int(f.TupleOrig.Proto.SourcePort) - 40000
	if i < 0 || i >= len(entries) {
		return fmt.Sprintf("unknown %v", f)
	}
	return entries[i].name
}

// names returns the names of flows (see name), sorted.
func names(flows []ct.Flow) []string {
	var out []string
	for _, f := range flows {
		out = append(out, name(f))
	}
	slices.Sort(out)
	return out
}

// newCleaner returns a Cleaner in a new namespace, closed when the test
// ends, after fill made the namespace's entries with it.
func newCleaner(tb testing.TB, fill func(c *Cleaner) error) *Cleaner {
	tb.Helper()
	netnstest.Require(tb)
	ns := netnstest.NewNamespace(tb)
	var c *Cleaner
	err := topo.InNS(ns, func() error {
		var err error
		if c, err = NewCleaner(); err != nil {
			return err
		}
		return fill(c)
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// cleanerIn returns a Cleaner in a new namespace holding the entries, and
// a function that lists the names of the entries left there.
func cleanerIn(t *testing.T) (*Cleaner, func() []string) {
	t.Helper()
	c := newCleaner(t, func(c *Cleaner) error {
		for i, e := range entries {
			if err := c.conn.Create(e.flow(i)); err != nil {
				return fmt.Errorf("creating %s: %w", e.name, err)
			}
		}
		return nil
	})
	left := func() []string {
		t.Helper()
		flows, err := c.conn.Dump(nil)
		if err != nil {
			t.Fatal(err)
		}
		return names(flows)
	}
	return c, left
}

func TestClearDeletesWhatTheRulesSelect(t *testing.T) {
	many := []netip.AddrPort{feDNS}
	for i := range maxFrontendDumps {
		many = append(many, netip.AddrPortFrom(netip.MustParseAddr("10.96.1.1"), uint16(1000+i)))
	}
	tests := []struct {
		name    string
		rules   []Rule
		deleted int
		left    []string
	}{
		{"an endpoint is gone: only the UDP entries DNATed to it",
			[]Rule{{Frontends: []netip.AddrPort{feDNS}, Endpoints: []netip.AddrPort{ep1}}},
			1, []string{"tcp dns→ep1", "udp dns:54→ep1", "udp dns→ep2", "udp ntp→epNTP", "udp6 dns→ep6", "udp6 other:53→ep6"}},
		{"ports are removed, in both families: every UDP entry to them",
			[]Rule{{Frontends: []netip.AddrPort{feDNS}}, {Frontends: []netip.AddrPort{feDNS6}}},
			3, []string{"tcp dns→ep1", "udp dns:54→ep1", "udp ntp→epNTP", "udp6 other:53→ep6"}},
		{"more frontends than dumps: one dump of the family's UDP entries",
			[]Rule{{Frontends: many}},
			2, []string{"tcp dns→ep1", "udp dns:54→ep1", "udp ntp→epNTP", "udp6 dns→ep6", "udp6 other:53→ep6"}},
		{"no rules", nil,
			0, []string{"tcp dns→ep1", "udp dns:54→ep1", "udp dns→ep1", "udp dns→ep2", "udp ntp→epNTP", "udp6 dns→ep6", "udp6 other:53→ep6"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, left := cleanerIn(t)
			n, err := c.Clear(tt.rules)
			if err != nil {
				t.Fatal(err)
			}
			if n != tt.deleted {
				t.Errorf("deleted %d entries, want %d", n, tt.deleted)
			}
			if got := left(); !slices.Equal(got, tt.left) {
				t.Errorf("left %q\nwant %q", got, tt.left)
			}
		})
	}
}

// TestDumpUDPIsFilteredByTheKernel checks that the kernel, not Clear's
// second look, selects the entries: Clear would be right without the
// filter, only slow.
func TestDumpUDPIsFilteredByTheKernel(t *testing.T) {
	c, _ := cleanerIn(t)
	tests := []struct {
		family netfilter.ProtoFamily
		dst    netip.AddrPort
		want   []string
	}{
		{netfilter.ProtoIPv4, feDNS, []string{"udp dns→ep1", "udp dns→ep2"}},
		{netfilter.ProtoIPv4, feNTP, []string{"udp ntp→epNTP"}},
		// by port only: see dumpUDP
		{netfilter.ProtoIPv6, feDNS6, []string{"udp6 dns→ep6", "udp6 other:53→ep6"}},
		{netfilter.ProtoIPv6, netip.MustParseAddrPort("[fd00:96::10]:54"), nil},
		{netfilter.ProtoIPv4, netip.AddrPort{}, []string{"udp dns:54→ep1", "udp dns→ep1", "udp dns→ep2", "udp ntp→epNTP"}},
		{netfilter.ProtoIPv6, netip.AddrPort{}, []string{"udp6 dns→ep6", "udp6 other:53→ep6"}},
	}
	for _, tt := range tests {
		flows, err := c.dumpUDP(tt.family, tt.dst)
		if err != nil {
			t.Fatal(err)
		}
		if got := names(flows); !slices.Equal(got, tt.want) {
			t.Errorf("dump of %v to %v: %q, want %q", tt.family, tt.dst, got, tt.want)
		}
	}
}

// BenchmarkClear compares a Clear of one frontend's entries in a table of
// 100,000 other entries (a quarter of them UDP) with what it replaced, a
// dump of every entry filtered here: run as root,
// go test -run '^$' -bench Clear -benchmem ./internal/conntrack.
func BenchmarkClear(b *testing.B) {
	c := newCleaner(b, func(c *Cleaner) error {
		for i := range 100_000 {
			proto := uint8(protoTCP)
			if i%4 == 0 {
				proto = protoUDP
			}
			src := netip.AddrFrom4([4]byte{10, 244, byte(i >> 16), byte(i >> 8)})
			f := ct.NewFlow(proto, 0, src, netip.MustParseAddr("10.96.0.20"), uint16(i), 80, 600, 0)
			if proto == protoTCP {
				f.ProtoInfo.TCP = &ct.ProtoInfoTCP{State: 3}
			}
			if err := c.conn.Create(f); err != nil {
				return fmt.Errorf("creating entry %d: %w", i, err)
			}
		}
		return nil
	})
	rules := []Rule{{Frontends: []netip.AddrPort{feDNS}, Endpoints: []netip.AddrPort{ep1}}}
	b.Run("dump-every-entry", func(b *testing.B) {
		for b.Loop() {
			flows, err := c.conn.Dump(nil)
			if err != nil {
				b.Fatal(err)
			}
			for _, f := range flows {
				if Matches(rules, f) {
					b.Fatal("matched")
				}
			}
		}
	})
	b.Run("filtered", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Clear(rules); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("filtered-udp-only", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.dumpUDP(netfilter.ProtoIPv4, netip.AddrPort{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
