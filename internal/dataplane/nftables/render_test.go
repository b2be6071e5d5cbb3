package nftables

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
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

// socketLBConfig is testConfig with the socket load balancer, untracked
// pod TCP and interface addresses, of which node-addrs keeps the bridge
// address only: not the LAN one (outside the cluster CIDR) nor the IPv6
// one (IPv6 is never untracked).
func socketLBConfig() model.Config {
	cfg := testConfig()
	cfg.SocketLB, cfg.UntrackPodTCP = true, true
	cfg.LocalAddrs = []netip.Addr{netip.MustParseAddr("192.168.100.11"), netip.MustParseAddr("10.244.1.1"),
		netip.MustParseAddr("fd00:244::1")}
	return cfg
}

// interfaceConfigs are testConfig with the node's pods recognized by
// their bridge, and by their interfaces' prefix without a cluster CIDR.
func interfaceConfigs() (bridge, prefix model.Config) {
	bridge, prefix = testConfig(), testConfig()
	bridge.LocalDetect = model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: "cni0"}
	prefix.LocalDetect = model.LocalDetect{Mode: model.DetectInterfacePrefix, Interface: "veth"}
	prefix.ClusterCIDRs = nil
	return bridge, prefix
}

// serviceCIDRConfig is testConfig with Service CIDRs of both families.
func serviceCIDRConfig() model.Config {
	cfg := testConfig()
	cfg.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:96::/112")}
	return cfg
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

// TestRenderGolden pins the rendered ruleset of the bundled examples.
// Run with -update to rewrite the golden files after an intended change.
func TestRenderGolden(t *testing.T) {
	cfgMasqAll := testConfig()
	cfgMasqAll.MasqueradeAll = true
	cfgSocketLB := socketLBConfig()
	cfgBridge, cfgPrefix := interfaceConfigs()
	cfgTCNAT := testConfig()
	cfgTCNAT.TCNAT, cfgTCNAT.TCNATPorts = true, [2]uint16{1024, 32767}
	tests := []struct {
		name string
		dir  string
		cfg  model.Config
	}{
		{"basic", "../../../examples/basic", testConfig()},
		{"basic-masquerade-all", "../../../examples/basic", cfgMasqAll},
		{"basic-socket-lb", "../../../examples/basic", cfgSocketLB},
		{"basic-bridge-interface", "../../../examples/basic", cfgBridge},
		{"basic-interface-prefix", "../../../examples/basic", cfgPrefix},
		{"basic-service-cidrs", "../../../examples/basic", serviceCIDRConfig()},
		{"basic-tc-nat", "../../../examples/basic", cfgTCNAT},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Render(loadDir(t, tc.dir, tc.cfg), Options{})
			golden := filepath.Join("testdata", tc.name+".nft")
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

// TestRenderLoads checks nft accepts the rendering, in a namespace.
func TestRenderLoads(t *testing.T) {
	// Covered with real kernels by TestIncrementalMatchesFullRender, which
	// loads full renderings of random states; here only the examples.
	ns := newNamespace(t)
	cfgSocketLB := socketLBConfig()
	cfgBridge, cfgPrefix := interfaceConfigs()
	cfgTCNAT := testConfig()
	cfgTCNAT.TCNAT, cfgTCNAT.TCNATPorts = true, [2]uint16{1024, 32767}
	for _, cfg := range []model.Config{testConfig(), cfgSocketLB, cfgBridge, cfgPrefix, serviceCIDRConfig(), cfgTCNAT} {
		st := loadDir(t, "../../../examples/basic", cfg)
		loadRendering(t, ns, st)
	}
}
