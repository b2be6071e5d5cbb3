// Package deploy holds the tests of kubenat's deployment files: the Helm
// chart in helm/kubenat, the plain manifests in kubenat.yaml (rendered from
// the chart) and the Dockerfile at the repository's root.
//
// The chart is rendered with Helm's own engine and schema validation, and
// every object is decoded strictly with the Kubernetes API types, so a typo
// in a field name fails here rather than at `kubectl apply`.
package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/kubenat/kubenat/internal/config"
)

var update = flag.Bool("update", false, "rewrite kubenat.yaml from the chart")

const (
	chartDir  = "helm/kubenat"
	plainFile = "kubenat.yaml"
	namespace = "kube-system"
)

// plainValues are the values kubenat.yaml is rendered with.
var plainValues = map[string]any{"config": map[string]any{"clusterCIDRs": []any{"10.244.0.0/16"}}}

const plainHeader = `# kubenat: the DaemonSet, its ServiceAccount and RBAC, and its configuration.
#
# Generated from the Helm chart in deploy/helm/kubenat (release "kubenat" in
# kube-system) by "go test ./deploy -update"; change the chart, not this file.
# Before applying it, set clusterCIDRs in the ConfigMap to your cluster's pod
# ranges, the image to one you built with the Dockerfile, and, when kubenat
# replaces kube-proxy, add the API server's address to the kubenat
# container's env (the chart's apiServer.host and apiServer.port values):
#   - {name: KUBERNETES_SERVICE_HOST, value: "<API server address>"}
#   - {name: KUBERNETES_SERVICE_PORT, value: "6443"}
# Without them the agent reaches the API through the "kubernetes" Service's
# ClusterIP, which needs a service proxy already running.
`

// render renders the chart as release "kubenat" in kube-system with vals
// (checked against values.schema.json) and returns the manifests in file
// order, NOTES.txt left out.
func render(vals map[string]any) (string, error) {
	chrt, err := loader.Load(chartDir)
	if err != nil {
		return "", fmt.Errorf("loading the chart: %w", err)
	}
	rv, err := chartutil.ToRenderValues(chrt, vals,
		chartutil.ReleaseOptions{Name: "kubenat", Namespace: namespace, IsInstall: true}, nil)
	if err != nil {
		return "", err
	}
	files, err := engine.Render(chrt, rv)
	if err != nil {
		return "", fmt.Errorf("rendering the chart: %w", err)
	}
	var names []string
	for name := range files {
		if strings.HasSuffix(name, ".yaml") {
			names = append(names, name)
		}
	}
	// In the order kubectl should create them: what the DaemonSet's pods
	// refer to first.
	order := []string{"serviceaccount.yaml", "rbac.yaml", "configmap.yaml", "daemonset.yaml"}
	rank := func(name string) int {
		for i, o := range order {
			if strings.HasSuffix(name, "/"+o) {
				return i
			}
		}
		return len(order)
	}
	sort.Slice(names, func(i, j int) bool {
		if ri, rj := rank(names[i]), rank(names[j]); ri != rj {
			return ri < rj
		}
		return names[i] < names[j]
	})
	var b strings.Builder
	for _, name := range names {
		body := strings.TrimSpace(files[name])
		if body == "" {
			continue
		}
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", name, body)
	}
	return b.String(), nil
}

// decodeAll splits a multi-document manifest and decodes every document
// strictly (unknown and duplicate fields are errors) into its API type.
func decodeAll(t *testing.T, manifest string) []runtime.Object {
	t.Helper()
	dec := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
	var objs []runtime.Object
	for i, doc := range strings.Split(manifest, "\n---\n") {
		doc = strings.TrimPrefix(doc, "---\n")
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		obj, gvk, err := dec.Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("document %d does not decode as a Kubernetes object: %v\n%s", i, err, doc)
		}
		if gvk.Kind == "" {
			t.Fatalf("document %d has no kind", i)
		}
		objs = append(objs, obj)
	}
	return objs
}

func stripComments(doc string) string {
	var out []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// objects is a rendered chart, by kind.
type objects struct {
	sa      *v1.ServiceAccount
	role    *rbacv1.ClusterRole
	binding *rbacv1.ClusterRoleBinding
	cm      *v1.ConfigMap
	ds      *appsv1.DaemonSet
}

func collect(t *testing.T, objs []runtime.Object) objects {
	t.Helper()
	var o objects
	for _, obj := range objs {
		switch x := obj.(type) {
		case *v1.ServiceAccount:
			o.sa = x
		case *rbacv1.ClusterRole:
			o.role = x
		case *rbacv1.ClusterRoleBinding:
			o.binding = x
		case *v1.ConfigMap:
			o.cm = x
		case *appsv1.DaemonSet:
			o.ds = x
		default:
			t.Errorf("unexpected object %T", obj)
		}
	}
	if o.cm == nil || o.ds == nil {
		t.Fatalf("the chart rendered no ConfigMap or no DaemonSet")
	}
	return o
}

func mustRender(t *testing.T, vals map[string]any) objects {
	t.Helper()
	out, err := render(vals)
	if err != nil {
		t.Fatal(err)
	}
	return collect(t, decodeAll(t, out))
}

// allows reports whether rules grant verb on group/resource.
func allows(rules []rbacv1.PolicyRule, group, resource, verb string) bool {
	for _, r := range rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}

func container(t *testing.T, ds *appsv1.DaemonSet) v1.Container {
	t.Helper()
	cs := ds.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("%d containers, want 1", len(cs))
	}
	return cs[0]
}

// agentConfig decodes and validates the ConfigMap's KubenatConfiguration
// with kubenat's own strict decoder.
func agentConfig(t *testing.T, cm *v1.ConfigMap) *config.Configuration {
	t.Helper()
	c, err := config.Decode([]byte(cm.Data["config.yaml"]))
	if err != nil {
		t.Fatalf("the chart's configuration does not decode: %v\n%s", err, cm.Data["config.yaml"])
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("the chart's configuration is invalid: %v", err)
	}
	return c
}

func TestChartDefaults(t *testing.T) {
	o := mustRender(t, plainValues)
	ds, pod := o.ds, o.ds.Spec.Template.Spec
	c := container(t, ds)

	if !pod.HostNetwork {
		t.Error("the DaemonSet does not use the host network")
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", pod.PriorityClassName)
	}
	if pod.DNSPolicy != v1.DNSDefault {
		t.Errorf("dnsPolicy %q, want Default (cluster DNS needs kubenat)", pod.DNSPolicy)
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != v1.TolerationOpExists || pod.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want to tolerate every taint", pod.Tolerations)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ds.Spec.UpdateStrategy.RollingUpdate == nil {
		t.Errorf("update strategy %+v, want RollingUpdate", ds.Spec.UpdateStrategy)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Add, "NET_ADMIN") || !slices.Contains(sc.Capabilities.Add, "NET_RAW") ||
		!slices.Contains(sc.Capabilities.Drop, "ALL") || sc.Privileged == nil || *sc.Privileged {
		t.Errorf("security context %+v, want unprivileged with NET_ADMIN and NET_RAW only", sc)
	}
	if sc != nil && (sc.RunAsUser == nil || *sc.RunAsUser != 0) {
		t.Error("the container must run as root: capabilities are not effective for other users")
	}
	var nodeName bool
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
		if e.Name == "KUBERNETES_SERVICE_HOST" {
			t.Error("KUBERNETES_SERVICE_HOST is set although apiServer.host is empty")
		}
	}
	if !nodeName {
		t.Errorf("NODE_NAME does not come from the downward API: %+v", c.Env)
	}
	if want := []string{"agent", "--config=/etc/kubenat/config.yaml", "--v=0"}; !reflect.DeepEqual(c.Args, want) {
		t.Errorf("args %q, want %q", c.Args, want)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/livez" ||
		c.LivenessProbe.HTTPGet.Port.StrVal != "healthz" {
		t.Errorf("liveness probe %+v, want /livez on the healthz port", c.LivenessProbe)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/healthz" ||
		c.ReadinessProbe.HTTPGet.Port.StrVal != "healthz" {
		t.Errorf("readiness probe %+v, want /healthz on the healthz port (ready after the first sync)", c.ReadinessProbe)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	// Metrics on 127.0.0.1 (kube-proxy's default) cannot be scraped from
	// outside: the pod names no port for them.
	if want := map[string]int32{"healthz": 10256}; !reflect.DeepEqual(ports, want) {
		t.Errorf("ports %v, want %v", ports, want)
	}
	if !reflect.DeepEqual(ds.Spec.Selector.MatchLabels, map[string]string{
		"app.kubernetes.io/name": "kubenat", "app.kubernetes.io/instance": "kubenat"}) {
		t.Errorf("selector %v", ds.Spec.Selector.MatchLabels)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("the pod template lacks the selector label %s=%s", k, v)
		}
	}

	// The pieces refer to each other.
	if o.sa == nil || o.role == nil || o.binding == nil {
		t.Fatal("no ServiceAccount, ClusterRole or ClusterRoleBinding")
	}
	if pod.ServiceAccountName != o.sa.Name || o.sa.Namespace != namespace {
		t.Errorf("the pod runs as %q, the ServiceAccount is %s/%s", pod.ServiceAccountName, o.sa.Namespace, o.sa.Name)
	}
	if o.binding.RoleRef.Name != o.role.Name || o.binding.RoleRef.Kind != "ClusterRole" ||
		len(o.binding.Subjects) != 1 || o.binding.Subjects[0].Name != o.sa.Name || o.binding.Subjects[0].Namespace != namespace {
		t.Errorf("the binding %+v does not bind %s to %s", o.binding, o.role.Name, o.sa.Name)
	}
	for _, need := range []struct{ group, resource, verb string }{
		{"", "services", "list"}, {"", "services", "watch"},
		{"discovery.k8s.io", "endpointslices", "list"}, {"discovery.k8s.io", "endpointslices", "watch"},
		{"", "nodes", "list"}, {"", "nodes", "watch"},
		{"networking.k8s.io", "servicecidrs", "list"}, {"networking.k8s.io", "servicecidrs", "watch"},
		{"", "events", "create"}, {"", "events", "patch"},
	} {
		if !allows(o.role.Rules, need.group, need.resource, need.verb) {
			t.Errorf("the ClusterRole does not allow %s on %s.%s", need.verb, need.resource, need.group)
		}
	}
	if allows(o.role.Rules, "", "services", "update") || allows(o.role.Rules, "", "nodes", "patch") {
		t.Error("the ClusterRole allows writing Services or Nodes")
	}
	var cmVolume bool
	for _, v := range pod.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == o.cm.Name {
			cmVolume = true
		}
	}
	if !cmVolume {
		t.Errorf("no volume mounts the ConfigMap %s", o.cm.Name)
	}
	cfg := agentConfig(t, o.cm)
	if !reflect.DeepEqual(cfg.ClusterCIDRs, []string{"10.244.0.0/16"}) {
		t.Errorf("clusterCIDRs %v", cfg.ClusterCIDRs)
	}
	// The conntrack sysctls: the container's /proc/sys is read-only, so
	// the agent writes the host's, mounted writable where procfs says.
	checkProcSysNet(t, o, "/host/proc")
	if ds.Spec.Template.Annotations["checksum/config"] == "" {
		t.Error("no checksum/config annotation: a configuration change would not roll the pods")
	}
}

// checkProcSysNet checks that the agent's configuration finds the host's
// /proc/sys/net/netfilter, mounted writable, below procfs.
func checkProcSysNet(t *testing.T, o objects, procfs string) {
	t.Helper()
	cfg := agentConfig(t, o.cm)
	if cfg.Conntrack.Procfs != procfs {
		t.Errorf("conntrack.procfs %q, want %q", cfg.Conntrack.Procfs, procfs)
	}
	volumes := map[string]*v1.HostPathVolumeSource{}
	for _, v := range o.ds.Spec.Template.Spec.Volumes {
		volumes[v.Name] = v.HostPath
	}
	for _, m := range container(t, o.ds).VolumeMounts {
		if m.MountPath == "/host/proc/sys/net/netfilter" {
			if hp := volumes[m.Name]; hp == nil || hp.Path != "/proc/sys/net/netfilter" || m.ReadOnly {
				t.Errorf("/host/proc/sys/net/netfilter mounts %+v (read-only %v), want the host's /proc/sys/net/netfilter, writable", hp, m.ReadOnly)
			}
			return
		}
	}
	t.Error("the host's /proc/sys/net/netfilter is not mounted at /host/proc/sys/net/netfilter")
}

func TestChartValues(t *testing.T) {
	with := func(extra map[string]any) map[string]any {
		vals := map[string]any{"config": map[string]any{"clusterCIDRs": []any{"10.244.0.0/16"}}}
		for k, v := range extra {
			vals[k] = v
		}
		return vals
	}
	tests := []struct {
		name  string
		vals  map[string]any
		check func(t *testing.T, o objects)
	}{
		{"apiServer.host reaches the API without a service proxy",
			with(map[string]any{"apiServer": map[string]any{"host": "10.0.0.1", "port": 6443}}),
			func(t *testing.T, o objects) {
				env := map[string]string{}
				for _, e := range container(t, o.ds).Env {
					env[e.Name] = e.Value
				}
				if env["KUBERNETES_SERVICE_HOST"] != "10.0.0.1" || env["KUBERNETES_SERVICE_PORT"] != "6443" {
					t.Errorf("env %v", env)
				}
			}},
		{"an ip-masq-agent ConfigMap is mounted and configured",
			with(map[string]any{"ipMasqAgentConfigMap": "ip-masq-agent"}),
			func(t *testing.T, o objects) {
				if got := agentConfig(t, o.cm).Masquerade.ConfigFile; got != "/etc/config/ip-masq-agent/config" {
					t.Errorf("masquerade.configFile %q", got)
				}
				found := false
				for _, v := range o.ds.Spec.Template.Spec.Volumes {
					if v.ConfigMap != nil && v.ConfigMap.Name == "ip-masq-agent" {
						found = true
					}
				}
				if !found {
					t.Error("the ip-masq-agent ConfigMap is not mounted")
				}
			}},
		{"configuration fields reach the agent",
			map[string]any{"config": map[string]any{"clusterCIDRs": []any{"10.1.0.0/16", "fd00::/48"}, "minSyncPeriod": "1s",
				"masqueradeAll": true, "metricsBindAddress": "0.0.0.0:9100", "masquerade": map[string]any{"masqLinkLocal": true}}},
			func(t *testing.T, o objects) {
				c := agentConfig(t, o.cm)
				if c.MinSyncPeriod != "1s" || !c.MasqueradeAll || c.MetricsBindAddress != "0.0.0.0:9100" ||
					!c.Masquerade.MasqLinkLocal || len(c.ClusterCIDRs) != 2 {
					t.Errorf("configuration %+v", c)
				}
				metrics := int32(0)
				for _, p := range container(t, o.ds).Ports {
					if p.Name == "metrics" {
						metrics = p.ContainerPort
					}
				}
				if metrics != 9100 {
					t.Errorf("metrics port %d, want 9100", metrics)
				}
			}},
		{"the socket load balancer: the host's cgroups and bpf file system, and the BPF and PERFMON capabilities",
			map[string]any{"config": map[string]any{"clusterCIDRs": []any{"10.244.0.0/16"},
				"socketLB": map[string]any{"cgroup": "/sys/fs/cgroup"}}},
			func(t *testing.T, o objects) {
				if got := agentConfig(t, o.cm).SocketLB.Cgroup; got != "/sys/fs/cgroup" {
					t.Errorf("socketLB.cgroup %q", got)
				}
				c := container(t, o.ds)
				mounts := map[string]bool{}
				for _, m := range c.VolumeMounts {
					mounts[m.MountPath] = true
				}
				if !mounts["/sys/fs/cgroup"] || !mounts["/sys/fs/bpf"] {
					t.Errorf("mounts %v: want /sys/fs/cgroup and /sys/fs/bpf", mounts)
				}
				if caps := c.SecurityContext.Capabilities.Add; !slices.Contains(caps, "BPF") || !slices.Contains(caps, "PERFMON") {
					t.Errorf("capabilities %v: want BPF and PERFMON", caps)
				}
			}},
		{"the tc NAT with pod-to-pod delivery: the BPF capability",
			map[string]any{"config": map[string]any{"clusterCIDRs": []any{"10.244.0.0/16"},
				"socketLB": map[string]any{"cgroup": "/sys/fs/cgroup", "untrackPodTCP": true},
				"tcNAT":    map[string]any{"enabled": true, "snatPorts": "1024-32767", "podToPod": true}}},
			func(t *testing.T, o objects) {
				if got := agentConfig(t, o.cm).TCNAT; !got.Enabled || got.SNATPorts != "1024-32767" || !got.PodToPod {
					t.Errorf("tcNAT %+v", got)
				}
				c := container(t, o.ds)
				if caps := c.SecurityContext.Capabilities.Add; !slices.Contains(caps, "BPF") || !slices.Contains(caps, "NET_ADMIN") {
					t.Errorf("capabilities %v: want BPF and NET_ADMIN", caps)
				}
			}},
		{"pods recognized by their bridge: no cluster CIDR needed",
			map[string]any{"config": map[string]any{"detectLocalMode": "BridgeInterface", "detectLocal": map[string]any{"bridgeInterface": "cni0"}}},
			func(t *testing.T, o objects) {
				c := agentConfig(t, o.cm)
				if c.DetectLocalMode != "BridgeInterface" || c.DetectLocal.BridgeInterface != "cni0" || len(c.ClusterCIDRs) != 0 {
					t.Errorf("configuration %+v", c)
				}
			}},
		{"conntrack settings are passed on, procfs kept when set",
			map[string]any{"config": map[string]any{"clusterCIDRs": []any{"10.244.0.0/16"},
				"conntrack": map[string]any{"maxPerCore": 0, "tcpEstablishedTimeout": "2h", "tcpBeLiberal": true, "procfs": "/proc"}}},
			func(t *testing.T, o objects) {
				c := agentConfig(t, o.cm).Conntrack
				if c.MaxPerCore != 0 || c.TCPEstablishedTimeout != "2h" || !c.TCPBeLiberal || c.TCPCloseWaitTimeout != "1h0m0s" {
					t.Errorf("conntrack %+v", c)
				}
				checkProcSysNet(t, o, "/proc")
			}},
		{"health endpoints disabled: no probe, no port",
			map[string]any{"config": map[string]any{"clusterCIDRs": []any{"10.244.0.0/16"}, "healthzBindAddress": ""}},
			func(t *testing.T, o objects) {
				c := container(t, o.ds)
				if c.LivenessProbe != nil {
					t.Error("a liveness probe without a health endpoint")
				}
				for _, p := range c.Ports {
					if p.Name == "healthz" {
						t.Error("a healthz port without a health endpoint")
					}
				}
			}},
		{"no ServiceAccount or RBAC when not asked",
			with(map[string]any{"serviceAccount": map[string]any{"create": false, "name": "existing"}, "rbac": map[string]any{"create": false}}),
			func(t *testing.T, o objects) {
				if o.sa != nil || o.role != nil || o.binding != nil {
					t.Error("ServiceAccount or RBAC rendered")
				}
				if got := o.ds.Spec.Template.Spec.ServiceAccountName; got != "existing" {
					t.Errorf("serviceAccountName %q", got)
				}
			}},
		{"verbosity, extra flags and image",
			with(map[string]any{"logVerbosity": 4, "extraArgs": []any{"--kube-api-qps=20"},
				"image": map[string]any{"repository": "registry.example/kubenat", "tag": "v1.2.3"}}),
			func(t *testing.T, o objects) {
				c := container(t, o.ds)
				if want := []string{"agent", "--config=/etc/kubenat/config.yaml", "--v=4", "--kube-api-qps=20"}; !reflect.DeepEqual(c.Args, want) {
					t.Errorf("args %q, want %q", c.Args, want)
				}
				if c.Image != "registry.example/kubenat:v1.2.3" {
					t.Errorf("image %q", c.Image)
				}
			}},
		{"another release name",
			with(nil),
			func(t *testing.T, o objects) {
				if o.ds.Name != "kubenat" || o.cm.Name != "kubenat" || o.role.Name != "kubenat" {
					t.Errorf("names %s %s %s, want kubenat", o.ds.Name, o.cm.Name, o.role.Name)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.check(t, mustRender(t, tc.vals)) })
	}
}

// TestSchemaRejectsBadValues checks that values.schema.json catches
// mistakes at install time, naming what is wrong.
func TestSchemaRejectsBadValues(t *testing.T) {
	cidrs := []any{"10.244.0.0/16"}
	tests := []struct {
		name string
		vals map[string]any
		want string
	}{
		{"no cluster CIDR", map[string]any{}, "clusterCIDRs"},
		{"empty cluster CIDRs", map[string]any{"config": map[string]any{"clusterCIDRs": []any{}}}, "clusterCIDRs"},
		{"not a CIDR", map[string]any{"config": map[string]any{"clusterCIDRs": []any{"10.244.0.0"}}}, "clusterCIDRs"},
		{"an IPv4 prefix too long", map[string]any{"config": map[string]any{"clusterCIDRs": []any{"10.244.0.0/33"}}}, "clusterCIDRs"},
		{"an IPv6 prefix too long", map[string]any{"config": map[string]any{"clusterCIDRs": []any{"fd00::/129"}}}, "clusterCIDRs"},
		{"unknown configuration field", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "minSyncPerod": "1s"}}, "minSyncPerod"},
		{"unknown nested field", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "masquerade": map[string]any{"masqLinkLocl": true}}}, "masqLinkLocl"},
		{"unknown value", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs}, "tolerration": []any{}}, "tolerration"},
		{"bad bind address", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "metricsBindAddress": "localhost"}}, "metricsBindAddress"},
		{"bad duration", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "minSyncPeriod": "5"}}, "minSyncPeriod"},
		{"hostile bridge name", map[string]any{"config": map[string]any{"detectLocalMode": "BridgeInterface", "detectLocal": map[string]any{"bridgeInterface": "cni0;"}}}, "bridgeInterface"},
		{"bridge mode without the bridge", map[string]any{"config": map[string]any{"detectLocalMode": "BridgeInterface"}}, "detectLocal"},
		{"prefix mode with the bridge only", map[string]any{"config": map[string]any{"detectLocalMode": "InterfaceNamePrefix",
			"detectLocal": map[string]any{"bridgeInterface": "cni0"}}}, "interfaceNamePrefix"},
		{"untracking without a cluster CIDR", map[string]any{"config": map[string]any{"detectLocalMode": "BridgeInterface",
			"detectLocal": map[string]any{"bridgeInterface": "cni0"}, "socketLB": map[string]any{"cgroup": "/sys/fs/cgroup", "untrackPodTCP": true}}}, "clusterCIDRs"},
		{"unknown detectLocalMode", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "detectLocalMode": "ClusterCIDR"}}, "detectLocalMode"},
		{"conntrack timeout in days", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "conntrack": map[string]any{"tcpEstablishedTimeout": "1d"}}}, "tcpEstablishedTimeout"},
		{"negative conntrack size", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "conntrack": map[string]any{"maxPerCore": -1}}}, "maxPerCore"},
		{"bad pull policy", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs}, "image": map[string]any{"pullPolicy": "Sometimes"}}, "pullPolicy"},
		{"manifests in a cluster", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "manifests": "/m"}}, "manifests"},
		{"unknown datapath", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "datapath": "ipvs"}}, "datapath"},
		{"socket load balancer with iptables", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "datapath": "iptables",
			"socketLB": map[string]any{"cgroup": "/sys/fs/cgroup"}}}, "cgroup"},
		{"tc NAT with iptables", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs, "datapath": "iptables-legacy",
			"tcNAT": map[string]any{"enabled": true}}}, "enabled"},
		{"tc NAT ports not a range", map[string]any{"config": map[string]any{"clusterCIDRs": cidrs,
			"tcNAT": map[string]any{"enabled": true, "snatPorts": "1024"}}}, "snatPorts"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(tc.vals)
			if err == nil {
				t.Fatalf("values %v accepted", tc.vals)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not name %q:\n%v", tc.want, err)
			}
		})
	}
}

// TestSchemaCoversTheConfiguration keeps the chart's schema of config in
// step with the KubenatConfiguration type.
func TestSchemaCoversTheConfiguration(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	type node struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	var schema node
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	var inSchema []string
	var walk func(prefix string, props map[string]json.RawMessage)
	walk = func(prefix string, props map[string]json.RawMessage) {
		for name, sub := range props {
			var n node
			_ = json.Unmarshal(sub, &n)
			if n.Properties != nil {
				walk(prefix+name+".", n.Properties)
				continue
			}
			inSchema = append(inSchema, prefix+name)
		}
	}
	var cfg node
	if err := json.Unmarshal(schema.Properties["config"], &cfg); err != nil {
		t.Fatal(err)
	}
	walk("", cfg.Properties)
	var inType []string
	var walkType func(prefix string, typ reflect.Type)
	walkType = func(prefix string, typ reflect.Type) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "apiVersion" || name == "kind" {
				continue
			}
			if f.Type.Kind() == reflect.Struct {
				walkType(prefix+name+".", f.Type)
				continue
			}
			inType = append(inType, prefix+name)
		}
	}
	walkType("", reflect.TypeFor[config.Configuration]())
	sort.Strings(inSchema)
	sort.Strings(inType)
	if !reflect.DeepEqual(inSchema, inType) {
		t.Errorf("the schema's config fields\n%v\ndiffer from KubenatConfiguration's\n%v", inSchema, inType)
	}
}

// TestPlainManifests checks that kubenat.yaml is the chart rendered with
// plainValues, and decodes into valid objects; -update rewrites it.
func TestPlainManifests(t *testing.T) {
	out, err := render(plainValues)
	if err != nil {
		t.Fatal(err)
	}
	want := plainHeader + out
	if *update {
		if err := os.WriteFile(plainFile, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(plainFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s is not the chart's rendering: run go test ./deploy -update", plainFile)
	}
	collect(t, decodeAll(t, string(got)))
}

// TestDockerfile checks what can be checked without a container engine
// (none runs on the development machine, so the image is not built here):
// the build copies files that exist, builds with cgo (kubenat dlopens
// libnftables), uses the Go version of go.mod, and the runtime stage
// installs nftables (libnftables.so.1, and the nft binary kubenat falls back
// to) and runs the binary it copied.
func TestDockerfile(t *testing.T) {
	root := ".."
	data, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var froms, copies, runs []string
	var entrypoint string
	sc := bufio.NewScanner(bytes.NewReader(data))
	continued := false // the previous line ended with a backslash
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		instr, rest, _ := strings.Cut(line, " ")
		wasContinued := continued
		continued = strings.HasSuffix(line, "\\")
		if line == "" || strings.HasPrefix(line, "#") || wasContinued {
			continue
		}
		switch strings.ToUpper(instr) {
		case "ARG", "WORKDIR", "ENV", "LABEL", "USER", "EXPOSE", "CMD":
		default:
			t.Errorf("Dockerfile line %q is neither a comment nor an instruction", line)
		case "FROM":
			froms = append(froms, rest)
		case "COPY":
			copies = append(copies, rest)
		case "RUN":
			runs = append(runs, rest)
		case "ENTRYPOINT":
			entrypoint = rest
		}
	}
	if len(froms) != 2 {
		t.Fatalf("%d stages, want a build and a runtime stage", len(froms))
	}
	var binary string
	for _, c := range copies {
		f := strings.Fields(c)
		if strings.HasPrefix(f[0], "--from=") {
			binary = f[len(f)-1]
			continue
		}
		for _, src := range f[:len(f)-1] {
			if _, err := os.Stat(filepath.Join(root, src)); err != nil {
				t.Errorf("COPY %s: %v", src, err)
			}
		}
	}
	if binary == "" || !strings.Contains(entrypoint, `"`+binary+`"`) {
		t.Errorf("ENTRYPOINT %s does not run the copied binary %s", entrypoint, binary)
	}
	build := strings.Join(runs, "\n")
	if !strings.Contains(build, "CGO_ENABLED=1") || !strings.Contains(build, "./cmd/kubenat") {
		t.Error("the binary is not built from ./cmd/kubenat with CGO_ENABLED=1")
	}
	for _, pkg := range []string{"nftables", "iptables"} {
		if !regexp.MustCompile(`apt-get install[^\n]*\b` + pkg + `\b`).MatchString(build) {
			t.Errorf("the runtime stage does not install %s", pkg)
		}
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goVersion == nil || !strings.Contains(string(data), "GO_VERSION="+string(goVersion[1])) {
		t.Errorf("the Dockerfile's GO_VERSION does not match go.mod's go %s", goVersion[1])
	}
	if !strings.Contains(froms[1], "bookworm") || !strings.Contains(froms[0], "bookworm") {
		t.Errorf("build and runtime stages %q should share the Debian release (the binary links glibc)", froms)
	}
}
