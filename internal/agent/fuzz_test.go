package agent

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubenat/kubenat/internal/dataplane/nftables"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/trace"
)

// hostileManifests are seeds for FuzzManifestPipeline: what an editor, a
// typo or an attacker may put in a manifest directory.
var hostileManifests = []string{
	"",
	"---\n---\n",
	"kind: Service\nmetadata: [\n",
	"apiVersion: v1\nkind: Service\nmetadata:\n  name: \"web\\nadd rule ip kubenat x drop\"\n  namespace: default\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: \"10.96.0.1; flush ruleset\"\n  ports: [{port: 80}]\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIPs: [10.96.0.1, \"::ffff:10.96.0.2\", fd00::1, 10.96.0.3]\n  ports: [{port: 0}, {port: 70000}, {port: -1, protocol: ICMP}]\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.1\n  externalIPs: [\"0.0.0.0\", \"255.255.255.255\", \"127.0.0.1\", \"fe80::1%eth0\"]\n  loadBalancerSourceRanges: [\"0.0.0.0/0\", \"10.0.0.1/33\", \"x\"]\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 99999\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: -5}}\n  ports: [{port: 80, nodePort: 30000, targetPort: http}]\nstatus:\n  loadBalancer: {ingress: [{ip: 10.96.0.1}, {ip: \"bad\"}, {hostname: x}]}\n",
	"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints:\n- addresses: [\"10.244.1.10\", \"10.244.1.10\", \"::1\", \"not-an-ip\"]\n  conditions: {ready: true, serving: false, terminating: true}\n  nodeName: node-a\n  hints: {forZones: [{name: \"\"}], forNodes: [{name: node-a}]}\nports: [{name: http, port: 0, protocol: TCP}, {port: 65536}]\n",
	"apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nspec:\n  podCIDRs: [\"10.244.1.0/24\", \"10.244.1.0/33\", \"::/0\"]\nstatus:\n  addresses: [{type: InternalIP, address: \"192.168.1.11\"}, {type: InternalIP, address: \"0.0.0.0\"}, {type: ExternalIP, address: \"::\"}]\n",
	"apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: x}\nspec: {cidrs: [\"0.0.0.0/0\", \"10.244.0.0/16\", \"10.96.0.0/12\", \"::ffff:0:0/96\"]}\n",
	"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a, namespace: default}, spec: {clusterIP: 10.96.0.9, ports: [{port: 53, protocol: UDP}, {port: 53, protocol: SCTP}]}}\n- {apiVersion: v1, kind: Pod, metadata: {name: p}}\n",
}

// FuzzManifestPipeline feeds a manifest file through what `kubenat render`
// and `kubenat trace` do: the manifest reader, the model, the nftables
// renderer and trace. Whatever the file holds, nothing panics; every
// problem is an error naming an object; and the ruleset stays well-formed
// (as root, `nft -c` accepts it in a namespace of the test's: no input
// can inject a statement or break the script).
func FuzzManifestPipeline(f *testing.F) {
	for _, s := range hostileManifests {
		f.Add([]byte(s))
	}
	examples, _ := filepath.Glob("../../examples/basic/*.yaml")
	for _, p := range examples {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	check := nftCheck(f)
	cfg := model.Config{NodeName: "node-a", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.1.11")}}
	packets := []trace.Packet{
		{Protocol: model.TCP, Src: netip.MustParseAddrPort("10.244.1.5:40000"), Dst: netip.MustParseAddrPort("10.96.0.1:80")},
		{Protocol: model.UDP, Src: netip.MustParseAddrPort("203.0.113.7:5353"), Dst: netip.MustParseAddrPort("192.168.1.11:30000")},
		{Protocol: model.TCP, Src: netip.MustParseAddrPort("192.168.1.11:0"), Dst: netip.MustParseAddrPort("10.96.0.10:53"), Local: true},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "in.yaml"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		snap, err := Collect(context.Background(), cfg, NewManifestSource(dir))
		if err != nil {
			t.Fatalf("Collect: %v", err)
		}
		for _, e := range append(snap.SourceErrors, snap.State.Errors...) {
			if e == nil || e.Error() == "" {
				t.Errorf("an empty error among %q", snap.State.Errors)
			}
		}
		script := nftables.Render(snap.State, nftables.Options{})
		check(t, script)
		for _, p := range packets {
			if _, err := trace.Trace(snap.State, p); err != nil {
				t.Errorf("trace %+v: %v", p, err)
			}
		}
	})
}

// nftCheck returns a function that has `nft -c` check a ruleset in a
// namespace of the test's (it needs the kernel to validate the script;
// nothing is applied). Without root it checks nothing, except with
// CI=true, where the fuzz target fails instead (netnstest.Require), as
// kernel tests do.
func nftCheck(f *testing.F) func(*testing.T, string) {
	if os.Geteuid() != 0 && os.Getenv("CI") != "true" {
		return func(*testing.T, string) {}
	}
	ns := netnstest.NewNamespace(f)
	return func(t *testing.T, script string) {
		t.Helper()
		cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-c", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft -c refuses the rendered ruleset: %v\n%s\n%s", err, out, script)
		}
	}
}
