package iptables

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/source/manifest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func testConfig() model.Config {
	return model.Config{
		NodeName:     "node-a",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")},
		NodeIPs:      []netip.Addr{netip.MustParseAddr("192.168.100.11"), netip.MustParseAddr("fd00:100::11")},
	}
}

// loadDir builds the State of a manifest directory.
func loadDir(t *testing.T, dir string, cfg model.Config) *model.State {
	t.Helper()
	snap, err := manifest.NewReader(dir).Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Errors) > 0 {
		t.Fatalf("manifest errors: %v", snap.Errors)
	}
	st := model.Build(cfg, model.Objects{Services: snap.Services, EndpointSlices: snap.EndpointSlices, Nodes: snap.Nodes})
	if len(st.Errors) > 0 {
		t.Fatalf("model errors: %v", st.Errors)
	}
	return st
}

// TestRenderGolden pins the rendering of the bundled examples and of
// testdata/policies (every policy a Service port can have). Run with
// -update to rewrite the golden files after an intended change.
func TestRenderGolden(t *testing.T) {
	masqAll := testConfig()
	masqAll.MasqueradeAll = true
	bridge := testConfig()
	bridge.LocalDetect = model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: "cni0"}
	prefix := testConfig()
	prefix.LocalDetect = model.LocalDetect{Mode: model.DetectInterfacePrefix, Interface: "veth"}
	prefix.ClusterCIDRs = nil
	cidrs := testConfig()
	cidrs.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:96::/112")}
	tests := []struct {
		name string
		dir  string
		cfg  model.Config
	}{
		{"basic", "../../../examples/basic", testConfig()},
		{"basic-masquerade-all", "../../../examples/basic", masqAll},
		{"basic-bridge-interface", "../../../examples/basic", bridge},
		{"basic-interface-prefix", "../../../examples/basic", prefix},
		{"policies", "testdata/policies", cidrs},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := RenderText(loadDir(t, tc.dir, tc.cfg), Options{}, Exec{})
			golden := filepath.Join("testdata", tc.name+".rules")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("rendering differs from %s (run with -update if intended):\n%s", golden, got)
			}
		})
	}
}

// TestChainNames: every chain name fits iptables' limit (28 characters)
// and names one chain only.
func TestChainNames(t *testing.T) {
	st := loadDir(t, "testdata/policies", testConfig())
	for _, rs := range Render(st, Options{}) {
		for _, table := range tables {
			seen := map[string]bool{}
			for _, c := range rs.Chains(table) {
				if len(c.Name) > 28 || !strings.HasPrefix(c.Name, Prefix) {
					t.Errorf("chain name %q: want %s and at most 28 characters", c.Name, Prefix)
				}
				if seen[c.Name] {
					t.Errorf("%s %s: chain %s rendered twice", rs.Family, table, c.Name)
				}
				seen[c.Name] = true
			}
		}
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in   string
		want version
		old  bool
	}{
		{"iptables v1.8.9 (nf_tables)\n", version{1, 8, 9}, false},
		{"iptables v1.6.1\n", version{1, 6, 1}, true},
		{"iptables v1.4.21\n", version{1, 4, 21}, true},
		{"iptables v1.6.2 (legacy)\n", version{1, 6, 2}, false},
	}
	for _, tc := range tests {
		v, ok := parseVersion(tc.in)
		if !ok || v != tc.want || v.less(version{1, 6, 2}) != tc.old {
			t.Errorf("parseVersion(%q) = %v, %v; want %v, older than 1.6.2 %v", tc.in, v, ok, tc.want, tc.old)
		}
	}
	if _, ok := parseVersion("iptables: unknown"); ok {
		t.Error("parsed a version from nothing")
	}
}

// TestNoRandomFully: for iptables before 1.6.2, masquerade without
// --random-fully.
func TestNoRandomFully(t *testing.T) {
	st := loadDir(t, "../../../examples/basic", testConfig())
	got := RenderText(st, Options{NoRandomFully: true}, Exec{})
	if strings.Contains(got, "random-fully") || !strings.Contains(got, "-A KUBENAT-MASQUERADE -j MASQUERADE\n") ||
		!strings.Contains(got, "-A KUBENAT-EGRESS -j MASQUERADE\n") {
		t.Errorf("rendering without --random-fully:\n%s", got)
	}
}
