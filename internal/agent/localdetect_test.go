package agent

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

func TestLocalDetectWarnings(t *testing.T) {
	netnstest.Require(t)
	ns := netnstest.NewNamespace(t)
	for _, cmd := range [][]string{
		{"link", "add", "br-pods", "type", "bridge"},
		{"link", "add", "vpod0", "type", "veth", "peer", "name", "vpod0p"},
		{"link", "set", "vpod0", "master", "br-pods"},
		{"link", "add", "routed0", "type", "veth", "peer", "name", "other0"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, cmd...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", cmd, err, out)
		}
	}
	tests := []struct {
		name string
		d    model.LocalDetect
		want string // part of the one warning, "" for none
	}{
		{"by CIDR: nothing to check", model.LocalDetect{}, ""},
		{"an existing bridge", model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: "br-pods"}, ""},
		{"a missing bridge", model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: "cni0"}, `the pods' bridge "cni0" does not exist (yet)`},
		{"not a bridge", model.LocalDetect{Mode: model.DetectBridgeInterface, Interface: "routed0"}, `"routed0" is a veth, not a bridge`},
		{"a prefix of routed interfaces", model.LocalDetect{Mode: model.DetectInterfacePrefix, Interface: "routed"}, ""},
		{"a prefix of bridge ports", model.LocalDetect{Mode: model.DetectInterfacePrefix, Interface: "vpod"}, "vpod0 (bridge br-pods)"},
		{"a prefix matching the bridge too", model.LocalDetect{Mode: model.DetectInterfacePrefix, Interface: "br-"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var warns []string
			err := topo.InNS(ns, func() error {
				var err error
				warns, err = localDetectWarnings(tc.d)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.want == "" && len(warns) > 0:
				t.Errorf("warnings %q, want none", warns)
			case tc.want != "" && (len(warns) != 1 || !strings.Contains(warns[0], tc.want)):
				t.Errorf("warnings %q, want one containing %q", warns, tc.want)
			}
		})
	}
}
