package nftables

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubenat/kubenat/internal/k8sobj"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/netnstest"
)

// canonical lists kubenat's tables in ns as JSON with set elements sorted
// and rule handles removed, so two namespaces programmed differently but
// holding the same ruleset compare equal.
func canonical(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset").Output()
	if err != nil {
		t.Fatalf("listing the ruleset in %s: %v", ns, err)
	}
	var doc struct {
		Nftables []map[string]map[string]any `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	var objs []string
	for _, o := range doc.Nftables {
		for kind, body := range o {
			if kind == "metainfo" {
				continue
			}
			delete(body, "handle")
			if elems, ok := body["elem"].([]any); ok {
				var ss []string
				for _, e := range elems {
					b, _ := json.Marshal(e)
					ss = append(ss, string(b))
				}
				slices.Sort(ss)
				body["elem"] = ss
			}
			b, _ := json.Marshal(map[string]any{kind: body})
			objs = append(objs, string(b))
		}
	}
	slices.Sort(objs)
	b, _ := json.MarshalIndent(objs, "", " ")
	return string(b)
}

// randomBuilder returns a Builder holding n random Services, and the
// random source for more.
func randomBuilder(seed uint64, n int) (*model.Builder, *rand.Rand) {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := model.NewBuilder(testConfig())
	for i := range n {
		svc, sl := k8sobj.Random(r, i).Objects()
		b.SetService(svc, "")
		for _, x := range sl {
			b.SetEndpointSlice(x, "")
		}
	}
	return b, r
}

// onlyConflicts fails the test if the model found problems other than the
// frontend conflicts randomService makes on purpose.
func onlyConflicts(t *testing.T, st *model.State) {
	t.Helper()
	for _, err := range st.Errors {
		if !strings.Contains(err.Error(), "is already used by Service") {
			t.Fatalf("model error %v", err)
		}
	}
}

// TestIncrementalMatchesFullRender programs random sequences of changes
// incrementally in one namespace and from scratch in another, and checks
// the kernel holds the same ruleset in both after every step; with the
// socket load balancer too (the tracked endpoints are shared elements).
func TestIncrementalMatchesFullRender(t *testing.T) {
	for _, socketLB := range []bool{false, true} {
		t.Run(fmt.Sprintf("socketLB=%v", socketLB), func(t *testing.T) {
			cfg := testConfig()
			cfg.SocketLB, cfg.UntrackPodTCP = socketLB, socketLB
			incrementalMatchesFullRender(t, cfg)
		})
	}
	// With Service CIDRs in both families from the configuration, a
	// ServiceCIDR object that comes, changes and goes is an incremental
	// change of the node's elements.
	t.Run("serviceCIDRs", func(t *testing.T) { incrementalMatchesFullRender(t, serviceCIDRConfig()) })
}

func incrementalMatchesFullRender(t *testing.T, cfg model.Config) {
	incNS, refNS := netnstest.NewNamespace(t), netnstest.NewNamespace(t)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	b := model.NewBuilder(cfg)
	inc := New(netnstest.NSRunner{NS: incNS}, Options{})
	services := map[int]k8sobj.Service{}
	for step := range 40 {
		// Add, change or remove a few Services.
		for range 1 + r.IntN(6) {
			i := r.IntN(30)
			if _, ok := services[i]; ok && r.IntN(4) == 0 {
				delete(services, i)
				b.DeleteService(model.ServiceKey{Namespace: "default", Name: fmt.Sprintf("svc-%d", i)})
				continue
			}
			s := k8sobj.Random(r, i)
			services[i] = s
			svc, sl := s.Objects()
			b.SetService(svc, "")
			for _, x := range sl {
				b.SetEndpointSlice(x, "")
			}
			// Drop slices the new version no longer has.
			for j := len(sl); j < 4; j++ {
				b.DeleteEndpointSlice("default", fmt.Sprintf("svc-%d-%d", i, j))
			}
		}
		if len(cfg.ServiceCIDRs) > 0 {
			// Ranges outside the configured ones, so that they change the
			// sets.
			switch ranges := [][]string{{"10.200.0.0/24"}, {"10.200.0.0/16", "fd00:97::/112"}, nil}[r.IntN(3)]; ranges {
			case nil:
				b.DeleteServiceCIDR("extra")
			default:
				b.SetServiceCIDR(&networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "extra"},
					Spec: networkingv1.ServiceCIDRSpec{CIDRs: ranges}}, "")
			}
		}
		st, d := b.Build()
		onlyConflicts(t, st)
		res, err := inc.Sync(ctx, st, d)
		if err != nil {
			t.Fatalf("step %d: incremental sync: %v", step, err)
		}
		if step > 0 && res.Full {
			t.Errorf("step %d: a partial change was applied as a full sync", step)
		}
		ref := New(netnstest.NSRunner{NS: refNS}, Options{})
		if _, err := ref.Sync(ctx, st, model.Delta{Full: true}); err != nil {
			t.Fatalf("step %d: full sync: %v", step, err)
		}
		if got, want := canonical(t, incNS), canonical(t, refNS); got != want {
			t.Fatalf("step %d: incremental ruleset differs from the full rendering\nincremental:\n%s\nfull:\n%s", step, got, want)
		}
	}
}

// TestRenderMatchesFullSync: the kernel holds the same ruleset whether it
// is loaded from Render's text (what `kubenat render` prints) or programmed
// by the Backend's full sync, in one transaction or in chunks.
func TestRenderMatchesFullSync(t *testing.T) {
	ctx := context.Background()
	b, _ := randomBuilder(5, 40)
	st, d := b.Build()
	onlyConflicts(t, st)

	want := rendered(t, st)
	for _, chunk := range []int{-1, 9} {
		ns := netnstest.NewNamespace(t)
		if _, err := New(runnerIn(ns), Options{InitialChunk: chunk}).Sync(ctx, st, d); err != nil {
			t.Fatalf("full sync (chunk %d): %v", chunk, err)
		}
		if got := canonical(t, ns); got != want {
			t.Errorf("full sync (chunk %d) differs from the rendering:\n%s\nrendering:\n%s", chunk, got, want)
		}
	}
}
