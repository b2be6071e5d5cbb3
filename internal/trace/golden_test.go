package trace

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestGolden pins the text format (and the JSON of one case) of
// representative traces: go test ./internal/trace -update rewrites them.
func TestGolden(t *testing.T) {
	iif := func(p Packet, name string) Packet { p.IIF = name; return p }
	withPort := pkt(client+":40000", nodeA+":30080")
	for _, tc := range []struct {
		file string
		p    Packet
		json bool
	}{
		{"nodeport-cluster.txt", iif(withPort, "eth0"), false},
		{"nodeport-cluster.json", iif(withPort, "eth0"), true},
		{"clusterip-hairpin.txt", pkt(web1, webVIP+":80"), false},
		{"clusterip-from-node.txt", local(pkt(nodeA, webVIP+":80")), false},
		{"local-policy-drop.txt", pkt(client, nodeA+":30081"), false},
		{"local-policy-from-pod.txt", pkt(podA, nodeA+":30081"), false},
		{"source-ranges-drop.txt", pkt(client, "192.168.200.40:80"), false},
		{"affinity.txt", pkt(podA, "10.96.0.50:80"), false},
		{"source-ranges-admitted.txt", pkt("192.168.100.5", "192.168.200.40:80"), false},
		{"clusterip-other-protocol.txt", udp(pkt(podA, "10.96.0.99:80")), false},
		{"idle-reject.txt", pkt(podA, "10.96.0.99:80"), false},
		{"unknown-port.txt", pkt(podA, webVIP+":81"), false},
		{"egress.txt", pkt(podA+":5000", inet+":443"), false},
		{"pod-to-pod.txt", pkt(podA, web2+":8080"), false},
		{"deliver-near-miss.txt", udp(pkt(client, nodeA+":30080")), false},
		{"ipv6.txt", pkt("fd00:244:0:1::12", "["+webVIP6+"]:80"), false},
	} {
		t.Run(tc.file, func(t *testing.T) {
			r, err := Trace(fixtureState(t, nil), tc.p)
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			if tc.json {
				err = r.WriteJSON(&got)
			} else {
				err = r.WriteText(&got)
			}
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.file)
			if *update {
				if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/trace -update to create it)", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("%s differs from the golden file:\n--- got\n%s--- want\n%s", tc.file, got.String(), want)
			}
		})
	}
}
