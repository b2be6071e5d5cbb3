package kernel

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

func TestHealthChecks(t *testing.T) { eachDatapath(t, testHealthChecks) }

func testHealthChecks(t *testing.T, datapath string) {
	e := twoNodes(t)
	e.datapath = datapath
	c := e.c
	nodeA, nodeB := c.Node("node-a"), c.Node("node-b")
	lb := func(name string, index int, hcPort int32, eps ...k8sobj.Endpoint) k8sobj.Service {
		return k8sobj.Service{Name: name, Type: v1.ServiceTypeLoadBalancer, ETPLocal: true,
			ClusterIPs:          []string{fmt.Sprintf("10.96.5.%d", index)},
			LoadBalancerIPs:     []string{fmt.Sprintf("192.168.200.5%d", index)},
			HealthCheckNodePort: hcPort,
			Ports:               []k8sobj.Port{{Name: "http", Port: 80, TargetPort: echoPort, NodePort: int32(30500 + index)}},
			Endpoints:           eps}
	}
	e.writeService(t, lb("web", 1, 32000, e.ep("l1"), e.ep("l2"), e.ep("r1")))

	// Something already listens on the port another Service asks for.
	busy, err := topo.Listen(&nodeA.Host, ":32001")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	e.writeService(t, lb("busy", 2, 32001, e.ep("l1")))

	procs := map[string]*netnstest.Process{}
	for _, n := range c.Nodes {
		procs[n.Name] = netnstest.StartKubenat(t, &n.Host, append(e.agentArgs(n), "--min-sync-period", "50ms")...)
	}
	get := func(n *topo.Node, port int, path string) (int, map[string][]string, string, error) {
		code, hdr, body, err := topo.HTTPGet(t.Context(), c.Client, fmt.Sprintf("http://%s:%d%s", n.Addr, port, path))
		return code, hdr, body, err
	}

	t.Run("healthCheckNodePort answers per node", func(t *testing.T) {
		for _, tc := range []struct {
			node   *topo.Node
			code   int
			weight string
			body   string
		}{
			{nodeA, 200, "2", `{"service":{"namespace":"default","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}`},
			{nodeB, 200, "1", `{"service":{"namespace":"default","name":"web"},"localEndpoints":1,"serviceProxyHealthy":true}`},
		} {
			var code int
			var hdr map[string][]string
			var body string
			msg := eventually(10*time.Second, func() string {
				var err error
				code, hdr, body, err = get(tc.node, 32000, "/")
				if err != nil {
					return err.Error()
				}
				return ""
			})
			if msg != "" {
				t.Fatalf("%s: %s\n%s", tc.node.Name, msg, procs[tc.node.Name].Output())
			}
			if code != tc.code || strings.TrimSpace(body) != tc.body || http1(hdr, "X-Load-Balancing-Endpoint-Weight") != tc.weight {
				t.Errorf("%s: %d %q %s; want %d %q %s", tc.node.Name, code, http1(hdr, "X-Load-Balancing-Endpoint-Weight"), body, tc.code, tc.weight, tc.body)
			}
		}
	})

	t.Run("no local endpoint: 503", func(t *testing.T) {
		e.writeService(t, lb("web", 1, 32000, e.ep("l1"), e.ep("l2")))
		msg := eventually(5*time.Second, func() string {
			code, _, body, err := get(nodeB, 32000, "/")
			if err != nil || code != 503 || !strings.Contains(body, `"localEndpoints":0`) {
				return fmt.Sprint(code, body, err)
			}
			return ""
		})
		if msg != "" {
			t.Error(msg)
		}
	})

	t.Run("a busy port is reported naming the Service; the others are served", func(t *testing.T) {
		if !strings.Contains(procs["node-a"].Output(), "Service default/busy: serving healthCheckNodePort 32001") {
			t.Errorf("no report naming the Service; the agent said:\n%s", procs["node-a"].Output())
		}
		if code, _, _, err := get(nodeA, 32000, "/"); err != nil || code != 200 {
			t.Errorf("web's health check: %d %v", code, err)
		}
	})

	t.Run("the Service goes away: its server stops", func(t *testing.T) {
		if err := os.Remove(filepath.Join(e.dir, "default-web.yaml")); err != nil {
			t.Fatal(err)
		}
		msg := eventually(5*time.Second, func() string {
			if _, _, _, err := get(nodeA, 32000, "/"); err == nil {
				return "still served"
			}
			return ""
		})
		if msg != "" {
			t.Error(msg)
		}
	})

	t.Run("/healthz and /livez; a node being deleted fails /healthz only", func(t *testing.T) {
		code, _, body, err := get(nodeA, 10256, "/healthz")
		var st struct {
			LastUpdated, CurrentTime string
			NodeEligible             *bool
			Healthy                  bool
		}
		if err != nil || code != 200 || json.Unmarshal([]byte(body), &st) != nil || !st.Healthy || st.LastUpdated == "" || st.CurrentTime == "" {
			t.Fatalf("/healthz: %d %s %v", code, body, err)
		}
		node := k8sobj.Node("node-a", []string{nodeA.Addr.String()}, []string{nodeA.PodCIDR.String()})
		node.Spec.Taints = []v1.Taint{{Key: "ToBeDeletedByClusterAutoscaler", Effect: v1.TaintEffectNoSchedule}}
		if err := k8sobj.WriteFile(e.dir, "node-node-a.yaml", node); err != nil {
			t.Fatal(err)
		}
		msg := eventually(5*time.Second, func() string {
			code, _, body, err := get(nodeA, 10256, "/healthz")
			if err != nil || code != 503 || !strings.Contains(body, `"nodeEligible":false`) {
				return fmt.Sprint(code, body, err)
			}
			return ""
		})
		if msg != "" {
			t.Errorf("/healthz of a node being deleted: %s", msg)
		}
		if code, _, body, err := get(nodeA, 10256, "/livez"); err != nil || code != 200 {
			t.Errorf("/livez: %d %s %v", code, body, err)
		}
	})
}

func http1(h map[string][]string, k string) string {
	if v := h[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}
