package bpfmap

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestPinDirRefusesOtherFileSystems(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing", "pins")
	err := PinDir(dir, "tc NAT")
	if err == nil || !strings.Contains(err.Error(), "tc NAT pin directory "+dir+": not on a bpf file system") {
		t.Errorf("PinDir(%s) = %v, want the bpf file system named", dir, err)
	}
}
