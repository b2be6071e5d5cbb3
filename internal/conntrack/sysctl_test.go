package conntrack

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeTree is a /proc/sys and /sys with the files Apply reads, holding
// the kernel's defaults of a machine with 262,144 entries.
func fakeTree(t *testing.T) Paths {
	t.Helper()
	dir := t.TempDir()
	p := Paths{Procfs: filepath.Join(dir, "proc"), Sysfs: filepath.Join(dir, "sys")}
	files := map[string]int{
		"net/netfilter/nf_conntrack_max":                     262144,
		"net/netfilter/nf_conntrack_tcp_timeout_established": 432000,
		"net/netfilter/nf_conntrack_tcp_timeout_close_wait":  60,
		"net/netfilter/nf_conntrack_udp_timeout":             30,
		"net/netfilter/nf_conntrack_udp_timeout_stream":      120,
		"net/netfilter/nf_conntrack_tcp_be_liberal":          0,
	}
	for name, v := range files {
		writeFile(t, filepath.Join(p.Procfs, "sys", name), v)
	}
	writeFile(t, filepath.Join(p.Sysfs, hashsizeParam), 65536)
	return p
}

func writeFile(t *testing.T, path string, v int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(v)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) int {
	t.Helper()
	n, err := readInt(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestApplySettings(t *testing.T) {
	tests := []struct {
		name string
		s    Settings
		want []Change
		// after is what the files hold afterwards (unlisted: unchanged).
		after map[string]int
	}{
		{name: "zero settings change nothing", s: Settings{}},
		{
			name: "kube-proxy's defaults on two cores",
			s:    Settings{Max: 131072, TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour},
			want: []Change{
				{"net.netfilter.nf_conntrack_max", 262144, 131072},
				{"net.netfilter.nf_conntrack_tcp_timeout_established", 432000, 86400},
				{"net.netfilter.nf_conntrack_tcp_timeout_close_wait", 60, 3600},
			},
			after: map[string]int{"proc/sys/net/netfilter/nf_conntrack_max": 131072, "sys/" + hashsizeParam: 65536},
		},
		{
			name:  "a larger table grows the hash table to a quarter of it",
			s:     Settings{Max: 1 << 20},
			want:  []Change{{"net.netfilter.nf_conntrack_max", 262144, 1 << 20}, {"nf_conntrack hashsize", 65536, 1 << 18}},
			after: map[string]int{"sys/" + hashsizeParam: 1 << 18},
		},
		{
			name: "values the kernel already holds are not written",
			s:    Settings{Max: 262144, TCPEstablishedTimeout: 432000 * time.Second, UDPTimeout: 30 * time.Second},
		},
		{
			name: "UDP timeouts and be_liberal",
			s:    Settings{UDPTimeout: 45 * time.Second, UDPStreamTimeout: 3 * time.Minute, TCPBeLiberal: true},
			want: []Change{
				{"net.netfilter.nf_conntrack_udp_timeout", 30, 45},
				{"net.netfilter.nf_conntrack_udp_timeout_stream", 120, 180},
				{"net.netfilter.nf_conntrack_tcp_be_liberal", 0, 1},
			},
			after: map[string]int{"proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal": 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := fakeTree(t)
			tc.s.Paths = p
			got, err := tc.s.Apply()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("changes:\n got %v\nwant %v", got, tc.want)
			}
			root := filepath.Dir(p.Procfs)
			for file, v := range tc.after {
				if n := readFile(t, filepath.Join(root, file)); n != v {
					t.Errorf("%s holds %d, want %d", file, n, v)
				}
			}
		})
	}
}

func TestApplySettingsErrors(t *testing.T) {
	p := fakeTree(t)
	// nf_conntrack_max cannot be used (a directory in its place: file
	// modes do not stop root, who runs the tests; the kernel test sees
	// the real read-only file of a network namespace).
	maxPath := filepath.Join(p.Procfs, "sys/net/netfilter/nf_conntrack_max")
	if err := os.Remove(maxPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(maxPath, 0o755); err != nil {
		t.Fatal(err)
	}
	// The UDP timeouts are missing, as when the module is not loaded.
	if err := os.Remove(filepath.Join(p.Procfs, "sys/net/netfilter/nf_conntrack_udp_timeout")); err != nil {
		t.Fatal(err)
	}
	got, err := Settings{Max: 1 << 20, TCPEstablishedTimeout: 24 * time.Hour, UDPTimeout: time.Minute, Paths: p}.Apply()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"nf_conntrack_max", "net.netfilter.nf_conntrack_udp_timeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	// The failures do not stop the other settings, and the hash table
	// only grows along with a table that could be enlarged.
	want := []Change{{"net.netfilter.nf_conntrack_tcp_timeout_established", 432000, 86400}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("changes:\n got %v\nwant %v", got, want)
	}
	if n := readFile(t, filepath.Join(p.Sysfs, hashsizeParam)); n != 65536 {
		t.Errorf("hashsize %d, want it unchanged", n)
	}
}
