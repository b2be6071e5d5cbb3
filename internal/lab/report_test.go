package lab

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/trace/live"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// sampleReport is a report of one pipeline as the lab prints it.
func sampleReport() *Report {
	ap := netip.MustParseAddrPort
	addr := netip.MustParseAddr
	top := &Topology{Prefix: "kl1-", Hosts: []Host{
		{Name: "ext", Role: "external client", Addr: addr("198.51.100.10")},
		{Name: "lb", Role: "load balancer", Addr: addr("192.168.100.2")},
		{Name: "node-a", Role: "node", Addr: addr("192.168.100.11"), PodCIDR: netip.MustParsePrefix("10.244.1.0/24")},
		{Name: "web-a", Role: "pod", Addr: addr("10.244.1.10"), Node: "node-a"},
	}}
	flow := Flow{Proto: "HTTP", From: "ext", Src: ap("198.51.100.10:40000"), Dst: ap("192.0.2.80:80"),
		Answer: &Answer{Server: "web-a", Node: "node-a", Seen: ap("192.168.100.11:2000")},
		Hops: []Hop{
			{Host: "lb", In: Packet{ap("198.51.100.10:40000"), ap("192.0.2.80:80")}, Out: Packet{ap("198.51.100.10:40000"), ap("192.168.100.11:30080")},
				DNAT: true, By: "the load balancer (table ip lab-lb)",
				Conntrack: &live.CTEntry{Protocol: model.TCP, OrigSrc: ap("198.51.100.10:40000"), OrigDst: ap("192.0.2.80:80"),
					ReplySrc: ap("192.168.100.11:30080"), ReplyDst: ap("198.51.100.10:40000"), DNAT: true, State: "ESTABLISHED"}},
			{Host: "node-a", In: Packet{ap("198.51.100.10:40000"), ap("192.168.100.11:30080")}, Out: Packet{ap("192.168.100.11:2000"), ap("10.244.1.10:8080")},
				DNAT: true, SNAT: true, By: "kubenat",
				Conntrack: &live.CTEntry{Protocol: model.TCP, OrigSrc: ap("198.51.100.10:40000"), OrigDst: ap("192.168.100.11:30080"),
					ReplySrc: ap("10.244.1.10:8080"), ReplyDst: ap("192.168.100.11:2000"), DNAT: true, SNAT: true, State: "ESTABLISHED"},
				Model: &ModelView{Verdict: "forward", Frontend: "NodePort of default/web", Candidates: []string{"10.244.1.10:8080"},
					Masquerade: true, Rule: "NodePort with externalTrafficPolicy Cluster: masquerade", Agree: true}},
		}}
	dropped := Flow{Proto: "HTTP", From: "ext", Dst: ap("192.168.100.12:30081"), ExpectDrop: true, Error: "no answer within 1s (dropped)",
		Note: "straight to node-b's NodePort",
		Hops: []Hop{{Host: "node-b", In: Packet{Src: ap("198.51.100.10:0"), Dst: ap("192.168.100.12:30081")}, By: "kubenat",
			Model: &ModelView{Verdict: "drop", Frontend: "NodePort of default/web-local", Rule: "externalTrafficPolicy Local and no endpoint on this node", Agree: true}}}}
	// A connection expected to be dropped that was accepted (the user
	// changed the manifests): what the kernel did is shown, and trace
	// agrees with it.
	accepted := Flow{Proto: "HTTP", From: "ext", Dst: ap("192.168.100.12:30081"), ExpectDrop: true,
		Note: "straight to node-b's NodePort",
		Hops: []Hop{{Host: "node-b", In: Packet{Src: ap("198.51.100.10:41000"), Dst: ap("192.168.100.12:30081")},
			Out: Packet{Src: ap("192.168.100.12:3000"), Dst: ap("10.244.1.10:8080")}, DNAT: true, SNAT: true, By: "kubenat",
			Conntrack: &live.CTEntry{Protocol: model.TCP, OrigSrc: ap("198.51.100.10:41000"), OrigDst: ap("192.168.100.12:30081"),
				ReplySrc: ap("10.244.1.10:8080"), ReplyDst: ap("192.168.100.12:3000"), DNAT: true, SNAT: true, State: "TIME_WAIT"},
			Model: &ModelView{Verdict: "forward", Frontend: "NodePort of default/web-local", Candidates: []string{"10.244.1.10:8080"},
				Masquerade: true, Rule: "NodePort with externalTrafficPolicy Cluster: masquerade", Agree: true}}}}
	return &Report{Topology: top, InputErrors: []string{"Service default/api (api.yaml): spec.ports[0].port: 70000 is out of range 1-65535"}, Pipelines: []Pipeline{{
		N: 1, Title: "external → LB → NodePort → pod", Seed: "the seed's pipeline", Notes: []string{"a note"},
		Flows: []Flow{flow, dropped, accepted},
		Checks: []Check{{What: "the pod saw a node's address", OK: true},
			{What: "something else", OK: false, Detail: "what went wrong"}},
	}}}
}

func TestReportText(t *testing.T) {
	var got bytes.Buffer
	if err := sampleReport().WriteText(&got); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "report.txt")
	if *update {
		if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./internal/lab -run TestReportText -update creates it)", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("the report differs from %s:\n--- got\n%s--- want\n%s", path, got.String(), want)
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	h := back.Pipelines[0].Flows[0].Hops[1]
	if h.Out.Dst.String() != "10.244.1.10:8080" || !h.SNAT || h.Conntrack.ReplyDst.String() != "192.168.100.11:2000" || !h.Model.Agree {
		t.Errorf("round trip lost data: %+v", h)
	}
}

func TestTopologyState(t *testing.T) {
	top := sampleReport().Topology
	top.PID = 1 // init: alive
	path := filepath.Join(t.TempDir(), "state.json")
	if err := top.WriteState(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.Host("web-a") == nil || back.Host("web-a").Node != "node-a" || !back.Alive() {
		t.Errorf("state round trip: %+v", back)
	}
	back.PID = 0
	if back.Alive() {
		t.Error("a lab without a process is alive")
	}
}

// TestNodeStateKeepsTheValidObjects: a bad object in the lab's manifests is
// reported with its file, and the others are still traced.
func TestNodeStateKeepsTheValidObjects(t *testing.T) {
	dir := t.TempDir()
	good := k8sobj.Service{Name: "good", ClusterIPs: []string{"10.96.7.1"}, Ports: []k8sobj.Port{{Name: "http", Port: 80, TargetPort: 8080}}}
	if err := k8sobj.WriteService(dir, good); err != nil {
		t.Fatal(err)
	}
	bad := "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {clusterIP: 10.96.7.2, ports: [{port: 70000}]}\n"
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	st, errs, err := nodeState(t.Context(), dir, NodeSetup{Name: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Services[model.ServiceKey{Namespace: "default", Name: "good"}]; !ok {
		t.Error("the valid Service is missing")
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "Service default/bad (bad.yaml): spec.ports[0].port") {
		t.Errorf("problems %v, want the bad Service's port, with its file", errs)
	}
}
