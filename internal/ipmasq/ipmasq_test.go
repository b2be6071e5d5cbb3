package ipmasq

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubenat/kubenat/internal/model"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in string
		want     model.EgressConfig
		err      string
	}{
		{"empty keeps defaults", "", model.EgressConfig{}, ""},
		{"ip-masq-agent YAML", "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 203.0.113.0/24\nmasqLinkLocal: true\nresyncInterval: 60s\n",
			model.EgressConfig{NonMasqueradeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("203.0.113.0/24")}, MasqLinkLocal: true}, ""},
		{"JSON", `{"nonMasqueradeCIDRs":[],"masqLinkLocalIPv6":true}`, model.EgressConfig{NonMasqueradeCIDRs: []netip.Prefix{}, MasqLinkLocalIPv6: true}, ""},
		{"bad CIDR", "nonMasqueradeCIDRs: [10.0.0.0/33]", model.EgressConfig{}, `nonMasqueradeCIDRs[0]: "10.0.0.0/33" is not a CIDR`},
		{"unknown field", "nonMasqueradeCIDR: [10.0.0.0/8]", model.EgressConfig{}, `unknown field "nonMasqueradeCIDR"`},
		{"bad interval", "resyncInterval: soon", model.EgressConfig{}, "resyncInterval"},
		{"not YAML", "nonMasqueradeCIDRs: [", model.EgressConfig{}, "not YAML"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestWatchKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ip-masq-agent")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var applied []model.EgressConfig
	var problems []string
	start, err := Parse(nil) // no file: the defaults
	if err != nil {
		t.Fatal(err)
	}
	go Watch(ctx, path, 10*time.Millisecond, start, func(c model.EgressConfig) {
		mu.Lock()
		applied = append(applied, c)
		mu.Unlock()
	}, func(err error) {
		mu.Lock()
		if err != nil {
			problems = append(problems, err.Error())
		}
		mu.Unlock()
	})
	wait := func(cond func() bool) {
		t.Helper()
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
		}
		t.Fatalf("timed out: applied %v, problems %v", applied, problems)
	}
	os.WriteFile(path, []byte("masqLinkLocal: true\n"), 0o644)
	wait(func() bool { return len(applied) == 1 && applied[0].MasqLinkLocal })
	os.WriteFile(path, []byte("nonMasqueradeCIDRs: [nope]\n"), 0o644)
	wait(func() bool {
		return len(problems) == 1 && strings.Contains(problems[0], "keeping the previous configuration")
	})
	os.WriteFile(path, []byte("masqLinkLocal: false\n"), 0o644)
	wait(func() bool { return len(applied) == 2 && !applied[1].MasqLinkLocal })
}
