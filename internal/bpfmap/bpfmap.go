// Package bpfmap holds what kubenat's eBPF datapaths (the socket load
// balancer, the tc NAT) do alike with their maps: batch writes and
// deletions that tolerate missing keys, and the pin directory check.
package bpfmap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DeleteAll deletes keys from m; keys already missing are skipped (a
// batch stops at the first one, so the rest is deleted after it).
func DeleteAll[K any](m *ebpf.Map, keys []K) error {
	for len(keys) > 0 {
		n, err := m.BatchDelete(keys, nil)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) || n >= len(keys) {
			return err
		}
		keys = keys[n+1:]
	}
	return nil
}

// BatchUpdate writes keys[i] → vals[i] to m in one call (none when keys
// is empty).
func BatchUpdate[K, V any](m *ebpf.Map, keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := m.BatchUpdate(keys, vals, nil)
	return err
}

// PinDir returns an error unless dir is, or would be created, on a bpf
// file system, and creates it. what names the pins in errors (e.g. "socket
// load balancer").
func PinDir(dir, what string) error {
	probe := dir
	for {
		var st unix.Statfs_t
		err := unix.Statfs(probe, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("%s pin directory %s: not on a bpf file system (mount one: mount -t bpf bpf /sys/fs/bpf)", what, dir)
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("%s pin directory: %w", what, err)
			}
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) || filepath.Dir(probe) == probe {
			return fmt.Errorf("%s pin directory %s: %w", what, dir, err)
		}
		probe = filepath.Dir(probe)
	}
}
