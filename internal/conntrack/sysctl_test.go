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

// fakeProc is a /proc with the files Apply reads, holding the kernel's
// defaults of a machine with 65,536 buckets and 262,144 entries.
func fakeProc(t *testing.T) string {
	t.Helper()
	procfs := t.TempDir()
	files := map[string]int{
		"net/netfilter/nf_conntrack_buckets":                 65536,
		"net/netfilter/nf_conntrack_max":                     262144,
		"net/netfilter/nf_conntrack_tcp_timeout_established": 432000,
		"net/netfilter/nf_conntrack_tcp_timeout_close_wait":  60,
		"net/netfilter/nf_conntrack_udp_timeout":             30,
		"net/netfilter/nf_conntrack_udp_timeout_stream":      120,
		"net/netfilter/nf_conntrack_tcp_be_liberal":          0,
	}
	for name, v := range files {
		writeFile(t, filepath.Join(procfs, "sys", name), v)
	}
	return procfs
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
			after: map[string]int{"nf_conntrack_max": 131072, "nf_conntrack_buckets": 65536},
		},
		{
			name:  "a larger table grows the hash table to a quarter of it",
			s:     Settings{Max: 1 << 20},
			want:  []Change{{"net.netfilter.nf_conntrack_max", 262144, 1 << 20}, {"net.netfilter.nf_conntrack_buckets", 65536, 1 << 18}},
			after: map[string]int{"nf_conntrack_max": 1 << 20, "nf_conntrack_buckets": 1 << 18},
		},
		{
			name:  "a smaller table leaves the hash table",
			s:     Settings{Max: 131072},
			want:  []Change{{"net.netfilter.nf_conntrack_max", 262144, 131072}},
			after: map[string]int{"nf_conntrack_buckets": 65536},
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
			after: map[string]int{"nf_conntrack_tcp_be_liberal": 1, "nf_conntrack_udp_timeout_stream": 180},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.s.Procfs = fakeProc(t)
			got, err := tc.s.Apply()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("changes:\n got %v\nwant %v", got, tc.want)
			}
			for file, v := range tc.after {
				if n := readFile(t, filepath.Join(tc.s.Procfs, "sys/net/netfilter", file)); n != v {
					t.Errorf("%s holds %d, want %d", file, n, v)
				}
			}
		})
	}
}

func TestApplySettingsErrors(t *testing.T) {
	procfs := fakeProc(t)
	dir := filepath.Join(procfs, "sys/net/netfilter")
	// nf_conntrack_max cannot be used (a directory in its place: file
	// modes do not stop root, who runs the tests; the kernel test sees
	// the real read-only file of a network namespace).
	if err := os.Remove(filepath.Join(dir, "nf_conntrack_max")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "nf_conntrack_max"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The UDP timeouts are missing, as when the module is not loaded.
	if err := os.Remove(filepath.Join(dir, "nf_conntrack_udp_timeout")); err != nil {
		t.Fatal(err)
	}
	got, err := Settings{Max: 1 << 20, TCPEstablishedTimeout: 24 * time.Hour, UDPTimeout: time.Minute, Procfs: procfs}.Apply()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_udp_timeout"} {
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
	if n := readFile(t, filepath.Join(dir, "nf_conntrack_buckets")); n != 65536 {
		t.Errorf("nf_conntrack_buckets %d, want it unchanged", n)
	}
}

func TestOnlineCPUs(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"0\n", 1},
		{"0-3\n", 4},
		{"0-3,8-11,16\n", 9},
		{"", 0},
		{"0-x", 0},
		{"3-1", 0},
	}
	for _, tc := range tests {
		if got := parseCPUList(tc.in); got != tc.want {
			t.Errorf("parseCPUList(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
	if n := OnlineCPUs(); n < 1 {
		t.Errorf("OnlineCPUs() = %d", n)
	}
}
