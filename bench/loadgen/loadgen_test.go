package loadgen

import (
	"net/netip"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/topo"
)

// TestConnectLoop: a loop over two destinations uses both. One
// accepts and one refuses (nothing listens), so a loop that stuck to
// either would see no error or no connection.
func TestConnectLoop(t *testing.T) {
	netnstest.Require(t)
	h := &topo.Host{Name: "loadgen", NS: netnstest.NewNamespace(t)}
	a, err := ServeAcceptClose(h, 8080)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	open, closed := netip.AddrPortFrom(lo, 8080), netip.AddrPortFrom(lo, 8081)

	for _, tc := range []struct {
		name       string
		dsts       []netip.AddrPort
		wantErrors bool
	}{
		{"one open port", []netip.AddrPort{open}, false},
		{"an open and a closed port", []netip.AddrPort{open, closed}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := ConnectLoop(t.Context(), h, tc.dsts, 0, 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if res.Connections == 0 {
				t.Error("no connection")
			}
			if got := res.Errors > 0; got != tc.wantErrors {
				t.Errorf("%d refused connects; want some: %v", res.Errors, tc.wantErrors)
			}
		})
	}
}
