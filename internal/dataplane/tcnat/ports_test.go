package tcnat

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFreePorts(t *testing.T) {
	tests := []struct {
		sysctl  string
		want    [2]uint16
		wantErr bool
	}{
		{"32768\t60999\n", [2]uint16{1024, 32767}, false},
		{"1024 50000", [2]uint16{50001, 65535}, false},
		{"40000 65535", [2]uint16{1024, 39999}, false},
		{"1024 65535", [2]uint16{}, true},
		{"60999 32768", [2]uint16{}, true},
		{"garbage", [2]uint16{}, true},
	}
	for _, tt := range tests {
		file := filepath.Join(t.TempDir(), "ip_local_port_range")
		if err := os.WriteFile(file, []byte(tt.sysctl), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := freePorts(file)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("freePorts(%q) = %v, %v; want %v (error %v)", tt.sysctl, got, err, tt.want, tt.wantErr)
		}
	}
}
