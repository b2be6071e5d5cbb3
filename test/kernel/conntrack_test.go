package kernel

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestStaleUDPConntrack keeps one UDP socket open to a Service (like a DNS
// client that reuses its socket) while the Service changes under it. Each
// change must take effect for that same flow: kubenat deletes the conntrack
// entries the change made stale.
func TestStaleUDPConntrack(t *testing.T) {
	e := twoNodes(t)
	nodeA, cli := e.c.Node("node-a"), e.c.Pod("cli")
	dns := func(eps ...k8sobj.Endpoint) k8sobj.Service {
		return k8sobj.Service{Name: "dns", ClusterIPs: []string{"10.96.4.53"},
			Ports:     []k8sobj.Port{{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: echoPort}},
			Endpoints: eps}
	}
	e.writeService(t, dns(e.ep("r1")))
	p := netnstest.StartKubenat(t, &nodeA.Host, append(e.agentArgs(nodeA), "--min-sync-period", "50ms")...)

	flow, err := topo.OpenUDPFlow(&cli.Host, ap("10.96.4.53", 53))
	if err != nil {
		t.Fatal(err)
	}
	defer flow.Close()
	// answeredBy pings on the same socket until the reply comes from want.
	answeredBy := func(want string) string {
		return eventually(8*time.Second, func() string {
			r, err := flow.Ping(300 * time.Millisecond)
			switch {
			case err != nil:
				return err.Error()
			case r.Server != want:
				return "answered by " + r.Server
			}
			return ""
		})
	}
	if msg := answeredBy("r1"); msg != "" {
		t.Fatalf("the flow never reached r1: %s\n%s", msg, p.Output())
	}

	t.Run("the endpoint is replaced: the same flow moves", func(t *testing.T) {
		e.writeService(t, dns(e.ep("l1")))
		if msg := answeredBy("l1"); msg != "" {
			t.Fatalf("the flow stayed stale: %s", msg)
		}
	})
	t.Run("the Service is deleted: the flow is no longer DNATed", func(t *testing.T) {
		if err := removeManifest(e, "default-dns.yaml"); err != nil {
			t.Fatal(err)
		}
		msg := eventually(8*time.Second, func() string {
			if r, err := flow.Ping(300 * time.Millisecond); err == nil {
				return "still answered by " + r.Server
			}
			return ""
		})
		if msg != "" {
			t.Fatal(msg)
		}
	})
	t.Run("a Service gets its first endpoint: the waiting flow reaches it", func(t *testing.T) {
		e.writeService(t, dns())
		time.Sleep(300 * time.Millisecond)
		if _, err := flow.Ping(300 * time.Millisecond); err == nil {
			t.Fatal("a Service without endpoints answered")
		}
		e.writeService(t, dns(e.ep("l2")))
		if msg := answeredBy("l2"); msg != "" {
			t.Fatalf("the flow never reached the new endpoint: %s", msg)
		}
	})
}
