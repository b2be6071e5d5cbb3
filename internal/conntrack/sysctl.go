package conntrack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Settings are the connection-tracking sysctls a node's service proxy
// sets, as kube-proxy does with its conntrack options. A zero field leaves
// the kernel's value alone.
//
// The table's size is global: nf_conntrack_max (and the module's hashsize)
// can only be written from the host's network namespace. The timeouts and
// nf_conntrack_tcp_be_liberal belong to the network namespace of the
// thread that writes them.
type Settings struct {
	// Max is net.netfilter.nf_conntrack_max, the most entries the table
	// holds; a full table drops the packets of new connections. When Max
	// is set and the hash table has fewer than Max/4 buckets, the
	// nf_conntrack module's hashsize grows to Max/4 as well (it is never
	// shrunk).
	Max int
	// TCPEstablishedTimeout is nf_conntrack_tcp_timeout_established: how
	// long an established TCP connection lives in the table without a
	// packet (the kernel's default is 5 days).
	TCPEstablishedTimeout time.Duration
	// TCPCloseWaitTimeout is nf_conntrack_tcp_timeout_close_wait.
	TCPCloseWaitTimeout time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal to 1: packets outside
	// the TCP window are no longer marked invalid, so they are translated
	// like the rest of their connection instead of reaching a pod or a
	// client untranslated (kube-proxy's advice instead of dropping invalid
	// packets). False leaves the kernel's value.
	TCPBeLiberal bool
	// UDPTimeout is nf_conntrack_udp_timeout (UDP flows that saw one
	// direction only, e.g. DNS queries).
	UDPTimeout time.Duration
	// UDPStreamTimeout is nf_conntrack_udp_timeout_stream (UDP flows that
	// saw replies).
	UDPStreamTimeout time.Duration
	// Paths are where the host's /proc and /sys are; empty fields mean
	// "/proc" and "/sys".
	Paths Paths
}

// Change is one sysctl Apply wrote.
type Change struct {
	// Name is the sysctl's name, e.g. "net.netfilter.nf_conntrack_max", or
	// "nf_conntrack hashsize" for the module's parameter.
	Name     string
	Old, New int
}

// Paths are where Apply finds the host's proc and sys file systems: "/proc"
// and "/sys", or where a container mounts the host's (e.g. "/host/proc").
// Apply reads and writes below Procfs/sys/net/netfilter and
// Sysfs/module/nf_conntrack/parameters only. The timeouts written through
// Procfs are those of the writer's network namespace, wherever the file
// system is mounted.
type Paths struct {
	Procfs, Sysfs string
}

// hashsizeParam is the nf_conntrack module's bucket count, under Sys.
const hashsizeParam = "module/nf_conntrack/parameters/hashsize"

// Apply writes each of s's settings whose value differs from the kernel's
// and returns what it changed. A setting that cannot be read or written is
// an error naming it, and does not stop the others; the errors are joined.
// The files exist only once the nf_conntrack module is loaded (the agent
// applies s after its first sync, whose rules need it).
func (s Settings) Apply() ([]Change, error) {
	p := s.Paths
	if p.Procfs == "" {
		p.Procfs = "/proc"
	}
	if p.Sysfs == "" {
		p.Sysfs = "/sys"
	}
	var changes []Change
	var errs []error
	set := func(name string, value int) bool {
		c, err := p.setSysctl(name, value)
		if err != nil {
			errs = append(errs, err)
			return false
		}
		if c != nil {
			changes = append(changes, *c)
		}
		return true
	}
	if s.Max > 0 && set("net/netfilter/nf_conntrack_max", s.Max) {
		c, err := p.growHashsize(s.Max / 4)
		if err != nil {
			errs = append(errs, err)
		} else if c != nil {
			changes = append(changes, *c)
		}
	}
	for _, t := range []struct {
		name string
		d    time.Duration
	}{
		{"net/netfilter/nf_conntrack_tcp_timeout_established", s.TCPEstablishedTimeout},
		{"net/netfilter/nf_conntrack_tcp_timeout_close_wait", s.TCPCloseWaitTimeout},
		{"net/netfilter/nf_conntrack_udp_timeout", s.UDPTimeout},
		{"net/netfilter/nf_conntrack_udp_timeout_stream", s.UDPStreamTimeout},
	} {
		if t.d > 0 {
			set(t.name, int(t.d/time.Second))
		}
	}
	if s.TCPBeLiberal {
		set("net/netfilter/nf_conntrack_tcp_be_liberal", 1)
	}
	return changes, errors.Join(errs...)
}

// setSysctl writes value to the sysctl name ("net/netfilter/…") unless
// it already holds it; it returns the change, or nil when there was none.
func (p Paths) setSysctl(name string, value int) (*Change, error) {
	dotted := strings.ReplaceAll(name, "/", ".")
	path := filepath.Join(p.Procfs, "sys", name)
	old, err := readInt(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", dotted, err)
	}
	if old == value {
		return nil, nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(value)), 0); err != nil {
		if errors.Is(err, os.ErrPermission) && name == "net/netfilter/nf_conntrack_max" {
			err = fmt.Errorf("%w (it can only be written from the host's network namespace)", err)
		}
		return nil, fmt.Errorf("setting %s to %d (it is %d): %w", dotted, value, old, err)
	}
	return &Change{Name: dotted, Old: old, New: value}, nil
}

// growHashsize raises the conntrack hash table's bucket count to buckets
// when it has fewer, as kube-proxy does; it returns the change, or nil.
func (p Paths) growHashsize(buckets int) (*Change, error) {
	path := filepath.Join(p.Sysfs, hashsizeParam)
	old, err := readInt(path)
	if err != nil {
		return nil, fmt.Errorf("reading the conntrack hashsize: %w", err)
	}
	if old >= buckets {
		return nil, nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(buckets)), 0); err != nil {
		return nil, fmt.Errorf("setting the conntrack hashsize to %d (it is %d): %w", buckets, old, err)
	}
	return &Change{Name: "nf_conntrack hashsize", Old: old, New: buckets}, nil
}

// readInt reads a file holding one decimal integer.
func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}
