package memlimit

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestCgroupLimit(t *testing.T) {
	const v1Self = "9:name=systemd:/\n4:memory:/kubepods/pod1/c1\n0::/\n"
	const v2Self = "0::/kubepods.slice/pod1/c1\n"
	tests := []struct {
		name    string
		self    string
		files   map[string]string // path under root → content
		want    int64
		wantErr string
	}{
		{"v2 own group", v2Self, map[string]string{"kubepods.slice/pod1/c1/memory.max": "1073741824\n"}, 1 << 30, ""},
		{"v2 namespaced: the root is the container", "0::/\n", map[string]string{"memory.max": "536870912\n"}, 512 << 20, ""},
		{"v2 path not mounted: the root", v2Self, map[string]string{"memory.max": "536870912\n"}, 512 << 20, ""},
		{"v2 unlimited", v2Self, map[string]string{"kubepods.slice/pod1/c1/memory.max": "max\n"}, 0, ""},
		{"v1 own group", v1Self, map[string]string{"memory/kubepods/pod1/c1/memory.limit_in_bytes": "268435456\n"}, 256 << 20, ""},
		{"v1 unlimited", v1Self, map[string]string{"memory/kubepods/pod1/c1/memory.limit_in_bytes": "9223372036854771712\n"}, 0, ""},
		{"v1 controller listed with others", "4:cpu,memory:/g\n", map[string]string{"memory/g/memory.limit_in_bytes": "1000\n"}, 1000, ""},
		{"nothing readable", v2Self, nil, 0, ""},
		{"no memory controller", "1:cpu:/\n", map[string]string{"memory.max": "1000"}, 0, ""},
		{"garbage", v2Self, map[string]string{"memory.max": "lots\n"}, 0, `holds "lots"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for p, c := range tt.files {
				file := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, []byte(c), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := CgroupLimit(root, tt.self)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("CgroupLimit = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

func TestApplyLeavesGOMEMLIMITAlone(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "100MiB")
	if soft, cg, err := Apply(); soft != 0 || cg != 0 || err != nil {
		t.Fatalf("Apply with GOMEMLIMIT set = %d, %d, %v; want nothing done", soft, cg, err)
	}
}

func TestSetGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	os.Unsetenv("GOGC")
	if got := SetGCPercent(); got != GCPercent || debug.SetGCPercent(GCPercent) != GCPercent {
		t.Errorf("without GOGC: SetGCPercent = %d, want %d in effect", got, GCPercent)
	}
	t.Setenv("GOGC", "200")
	debug.SetGCPercent(200) // what the runtime read from GOGC at start
	if got := SetGCPercent(); got != 200 || debug.SetGCPercent(200) != 200 {
		t.Errorf("with GOGC=200: SetGCPercent = %d, want 200 left in effect", got)
	}
}
