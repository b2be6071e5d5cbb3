package kubeproxy

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	svcs := []Service{
		{Namespace: "ns", Name: "a", Port: "http", ClusterIP: netip.MustParseAddr("10.96.0.1"), ServicePort: 80,
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.244.1.10:8080")}},
		{Namespace: "ns", Name: "b", Port: "http", ClusterIP: netip.MustParseAddr("10.96.0.2"), ServicePort: 80, NodePort: 30080,
			Endpoints: []netip.AddrPort{
				netip.MustParseAddrPort("10.244.1.11:8080"),
				netip.MustParseAddrPort("10.244.1.12:8080"),
				netip.MustParseAddrPort("10.244.1.13:8080"),
			}},
	}
	var b bytes.Buffer
	if err := Write(&b, svcs, netip.MustParsePrefix("10.244.0.0/16")); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	rules := 0
	var services []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "-A ") {
			rules++
		}
		if strings.HasPrefix(l, "-A KUBE-SERVICES ") {
			services = append(services, l)
		}
	}
	if rules != Rules(svcs) {
		t.Errorf("wrote %d rules, Rules says %d", rules, Rules(svcs))
	}
	// Services in the given order, then the NodePorts jump, last.
	if len(services) != 3 || !strings.Contains(services[0], "10.96.0.1/32") || !strings.Contains(services[1], "10.96.0.2/32") ||
		!strings.Contains(services[2], "-j KUBE-NODEPORTS") {
		t.Errorf("KUBE-SERVICES rules out of order:\n%s", strings.Join(services, "\n"))
	}
	for _, want := range []string{
		"--probability 0.33333333333", "--probability 0.50000000000",
		"-j DNAT --to-destination 10.244.1.13:8080",
		"-A KUBE-NODEPORTS -p tcp -m comment --comment \"ns/b:http\" -m tcp --dport 30080 -j KUBE-EXT-",
		"! -s 10.244.0.0/16 -d 10.96.0.1/32",
		"-j MASQUERADE --random-fully",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Count(out, "COMMIT") != 2 {
		t.Error("want two tables")
	}
}
