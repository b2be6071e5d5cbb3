package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/kubenat/kubenat/internal/config"
)

// commandOnlyFlags are agent flags that are not configuration fields.
var commandOnlyFlags = []string{"once", "config", "write-config-to", "help"}

// TestAgentFlagsAreConfigurationFields keeps the agent's flags and the
// configuration file in step: a flag that is neither a field nor listed
// here would be silently ignored by the agent.
func TestAgentFlagsAreConfigurationFields(t *testing.T) {
	cmd := newAgentCmd()
	fields := config.FlagNames()
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if !slices.Contains(fields, f.Name) && !slices.Contains(commandOnlyFlags, f.Name) {
			t.Errorf("flag --%s is not a configuration field: add it to internal/config", f.Name)
		}
	})
	for _, name := range fields {
		if cmd.Flags().Lookup(name) == nil {
			t.Errorf("configuration field flag --%s is not defined on the agent", name)
		}
	}
}

// TestAgentFlagDefaultsMatchTheConfiguration checks that flags defined by
// the shared node flags show the configuration's defaults.
func TestAgentFlagDefaultsMatchTheConfiguration(t *testing.T) {
	ref := pflag.NewFlagSet("ref", pflag.ContinueOnError)
	config.RegisterFlags(ref)
	newAgentCmd().Flags().VisitAll(func(f *pflag.Flag) {
		r := ref.Lookup(f.Name)
		if r == nil {
			return
		}
		if _, list := f.Value.(pflag.SliceValue); list {
			return // nil lists mean "the configuration's default"
		}
		if f.DefValue != r.DefValue {
			t.Errorf("--%s defaults to %q, the configuration to %q", f.Name, f.DefValue, r.DefValue)
		}
	})
}

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestAgentConfiguration(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "kubenat.yaml")
	if err := os.WriteFile(file, []byte(`apiVersion: kubenat.io/v1alpha1
kind: KubenatConfiguration
clusterCIDRs: [10.244.0.0/16]
minSyncPeriod: 2s
masqueradeAll: true
`), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: kubenat.io/v1alpha1\nkind: KubenatConfiguration\nminSyncPerod: 1s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		want    []string // substrings of the output
		wantErr []string // substrings of the error
	}{
		{name: "flags alone", args: []string{"--cluster-cidr=10.1.0.0/16"},
			want: []string{"clusterCIDRs:\n  - 10.1.0.0/16\n", "minSyncPeriod: 100ms\n", "metricsBindAddress: 127.0.0.1:10249\n"}},
		{name: "the file", args: []string{"--config", file},
			want: []string{"clusterCIDRs:\n  - 10.244.0.0/16\n", "minSyncPeriod: 2s\n", "masqueradeAll: true\n"}},
		{name: "flags override the file", args: []string{"--config", file, "--min-sync-period=250ms", "--masquerade-all=false", "--kubeconfig=/k"},
			want: []string{"minSyncPeriod: 250ms\n", "masqueradeAll: false\n", "kubeconfig: /k\n", "clusterCIDRs:\n  - 10.244.0.0/16\n"}},
		{name: "unknown field in the file", args: []string{"--config", bad},
			wantErr: []string{`unknown field "minSyncPerod"`}},
		{name: "invalid values", args: []string{"--cluster-cidr=nope", "--metrics-bind-address=:0x"},
			wantErr: []string{"invalid configuration", `clusterCIDRs[0] (--cluster-cidr): "nope" is not a CIDR`, "metricsBindAddress"}},
		{name: "two sources", args: []string{"--cluster-cidr=10.1.0.0/16", "--manifests=/m", "--kubeconfig=/k"},
			wantErr: []string{"set either manifests or clientConnection.kubeconfig"}},
		{name: "missing file", args: []string{"--config", filepath.Join(dir, "none.yaml")},
			wantErr: []string{"reading the configuration file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCmd(t, append([]string{"agent", "--write-config-to", "-"}, tc.args...)...)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("succeeded:\n%s", out)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			// What was written is a valid configuration file that says the same.
			c, err := config.Decode([]byte(out))
			if err != nil {
				t.Fatalf("the written configuration does not decode: %v\n%s", err, out)
			}
			again, _ := c.Encode()
			if string(again) != out {
				t.Errorf("re-encoding changed it:\n%s\nvs\n%s", out, again)
			}
		})
	}

	t.Run("to a file", func(t *testing.T) {
		path := filepath.Join(dir, "written.yaml")
		if _, err := runCmd(t, "agent", "--config", file, "--node-name=node-a", "--write-config-to", path); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if c.NodeName != "node-a" || c.MinSync().String() != "2s" {
			t.Errorf("written configuration %+v", c)
		}
	})
}

func TestAgentNeedsASource(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	_, err := runCmd(t, "agent", "--cluster-cidr=10.1.0.0/16", "--node-name=n", "--metrics-bind-address=", "--healthz-bind-address=")
	if err == nil || !strings.Contains(err.Error(), "no source of objects") {
		t.Errorf("agent without a source: %v", err)
	}
}

func TestRestConfig(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://192.0.2.1:6443"}}]
users: [{name: u, user: {token: secret}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	cfg := config.Default()
	cfg.ClientConnection.Kubeconfig = kubeconfig
	cfg.ClientConnection.QPS, cfg.ClientConnection.Burst = 7, 9
	rc, where, err := restConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://192.0.2.1:6443" || rc.BearerToken != "secret" || where != "kubeconfig "+kubeconfig {
		t.Errorf("config %s %q from %q", rc.Host, rc.BearerToken, where)
	}
	if rc.QPS != 7 || rc.Burst != 9 || rc.ContentType != config.ContentTypeProtobuf ||
		rc.AcceptContentTypes != config.ContentTypeProtobuf+","+config.ContentTypeJSON || !strings.HasPrefix(rc.UserAgent, "kubenat/") {
		t.Errorf("client settings: qps %v burst %d content %q accept %q agent %q", rc.QPS, rc.Burst, rc.ContentType, rc.AcceptContentTypes, rc.UserAgent)
	}

	// In a pod without the service account files, the error says so.
	cfg.ClientConnection.Kubeconfig = ""
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	if _, _, err := restConfig(cfg); err == nil || !strings.Contains(err.Error(), "in-cluster") {
		t.Errorf("in-cluster without a token: %v", err)
	}
}

// TestRenderSaysWhatItAssumes: without a Node object of the given name,
// render (and trace) say which addresses and pod CIDRs they assumed.
func TestRenderSaysWhatItAssumes(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	base := []string{"render", "--manifests", "../../examples/basic", "--cluster-cidr", "10.244.0.0/16", "--node-ip", "192.0.2.7"}
	out, err := runCmd(t, append(base, "--node-name", "node-z")...)
	if err != nil {
		t.Fatal(err)
	}
	if want := `warning: no Node object named "node-z" (--node-name): NodePorts are served on 192.0.2.7, and this node's pods are recognized by the CIDRs 10.244.0.0/16`; !strings.Contains(out, want) {
		t.Errorf("render for an unknown node said:\n%s\nwant the line %q", out, want)
	}
	out, err = runCmd(t, append(base, "--node-name", "node-a")...)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "no Node object") || strings.Contains(out, "warning:") {
		t.Errorf("render for node-a, which has a Node object, warned:\n%s", out)
	}
	// Pods recognized by interface, and non-masquerade ranges that miss
	// the node's pod CIDR.
	out, err = runCmd(t, "render", "--manifests", "../../examples/basic", "--node-name", "node-a",
		"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cni0", "--non-masquerade-cidr=203.0.113.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if want := "warning: this node's pod CIDR 10.244.1.0/24 is outside the non-masquerade ranges"; !strings.Contains(out, want) {
		t.Errorf("render said:\n%s\nwant the line %q", out, want)
	}
}

// TestRenderIPTables: with --datapath iptables, render prints the
// iptables-restore input of both families.
func TestRenderIPTables(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	out, err := runCmd(t, "render", "--manifests", "../../examples/basic", "--node-name", "node-a",
		"--cluster-cidr", "10.244.0.0/16", "--datapath", "iptables")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"# IPv4: iptables-restore --noflush\n",
		"# IPv6: ip6tables-restore --noflush\n",
		`-A KUBENAT-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -m comment --comment "default/web:http cluster IP" -j KUBENAT-SVC-`,
		"-j DNAT --to-destination 10.244.1.10:8080\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("render --datapath iptables printed:\n%s\nwant %q", out, want)
		}
	}
	if strings.Contains(out, "table ip kubenat") {
		t.Errorf("render --datapath iptables printed nftables:\n%s", out)
	}
}

// TestLiveTraceRefusesIPTablesLegacy: nftables' tracing cannot see rules
// programmed through iptables-legacy, so --live refuses to compare them.
func TestLiveTraceRefusesIPTablesLegacy(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	_, err := runCmd(t, "trace", "--manifests", "../../examples/basic", "--node-name", "node-a", "--cluster-cidr", "10.244.0.0/16",
		"--datapath", "iptables-legacy", "--live", "--local", "--src", "192.168.100.11", "--dst", "10.96.0.10:80")
	if err == nil || !strings.Contains(err.Error(), "does not see rules programmed through iptables-legacy") {
		t.Errorf("trace --live --datapath iptables-legacy: %v", err)
	}
}

// TestKubeProxyFlagsAreAnswered: a kube-proxy flag kubenat lacks is an
// error that says what to use instead; other unknown flags are plain
// errors.
func TestKubeProxyFlagsAreAnswered(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--hostname-override=node-a"}, "unknown flag: --hostname-override (kube-proxy's flag: use --node-name)"},
		{[]string{"render", "--iptables-min-sync-period", "1s"}, "unknown flag: --iptables-min-sync-period (kube-proxy's flag: use --min-sync-period)"},
		{[]string{"trace", "--proxy-mode=iptables"}, "unknown flag: --proxy-mode (kube-proxy's flag: use --datapath"},
		{[]string{"agent", "--no-such-flag"}, "unknown flag: --no-such-flag"},
	} {
		_, err := runCmd(t, tc.args...)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("kubenat %s: %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
		if strings.HasPrefix(tc.args[1], "--no-such") && strings.Contains(fmt.Sprint(err), "kube-proxy") {
			t.Errorf("kubenat %s: %v names kube-proxy", strings.Join(tc.args, " "), err)
		}
	}
}
