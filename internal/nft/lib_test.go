//go:build cgo

package nft

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestLibAfterLargeScript runs a script above ReleaseThreshold, then small
// ones while the cache release may still be running: they must wait for
// it and act on the same namespace.
func TestLibAfterLargeScript(t *testing.T) {
	c := netnstest.NewCluster(t, topo.Spec{Nodes: []topo.NodeSpec{{Name: "node-a"}}})
	lib, err := NewLib()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("libnftables: %v (CI=true: kernel tests must run)", err)
		}
		t.Skipf("libnftables: %v", err)
	}
	run := func(script string) (string, error) {
		var out string
		err := topo.InNS(c.Nodes[0].NS, func() error {
			var err error
			out, err = lib.Run(context.Background(), script)
			return err
		})
		return out, err
	}
	var sb strings.Builder
	sb.WriteString("table ip libtest {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = {\n")
	for i := range 70000 {
		fmt.Fprintf(&sb, "\t\t\t10.%d.%d.%d,\n", i>>16, (i>>8)&255, i&255)
	}
	sb.WriteString("\t\t\t10.255.255.255\n\t\t}\n\t}\n}\n")
	if sb.Len() < ReleaseThreshold {
		t.Fatalf("script of %d bytes does not reach the release threshold", sb.Len())
	}
	if _, err := run(sb.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := run("add element ip libtest s { 192.168.0.1 }"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.0.0.0", "10.1.17.111", "10.255.255.255", "192.168.0.1"} {
		out, err := run("get element ip libtest s { " + want + " }")
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("the set lacks %s: %v\n%s", want, err, out)
		}
	}
}
