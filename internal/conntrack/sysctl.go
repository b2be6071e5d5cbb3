package conntrack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Settings are the connection-tracking sysctls a node's service proxy
// sets, as kube-proxy does with its conntrack options. A zero field leaves
// the kernel's value alone.
//
// The table's size is global: nf_conntrack_max and nf_conntrack_buckets
// can only be written from the host's network namespace. The timeouts and
// nf_conntrack_tcp_be_liberal belong to the network namespace of the
// thread that writes them.
type Settings struct {
	// Max is net.netfilter.nf_conntrack_max, the most entries the table
	// holds; a full table drops the packets of new connections. When Max
	// is set and the hash table has fewer than Max/4 buckets,
	// net.netfilter.nf_conntrack_buckets (the nf_conntrack module's
	// hashsize) grows to Max/4 as well; it is never shrunk.
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
	// Procfs is where the host's /proc is; empty means "/proc". Apply
	// reads and writes below Procfs/sys/net/netfilter only. The values
	// written are those of the writer's network namespace, wherever the
	// file system is mounted.
	Procfs string
}

// Change is one sysctl Apply wrote.
type Change struct {
	// Name is the sysctl's name, e.g. "net.netfilter.nf_conntrack_max".
	Name     string
	Old, New int
}

// Apply writes each of s's settings whose value differs from the kernel's
// and returns what it changed. A setting that cannot be read or written is
// an error naming it, and does not stop the others; the errors are joined.
// The files exist only once the nf_conntrack module is loaded (the agent
// applies s after its first sync, whose rules need it).
func (s Settings) Apply() ([]Change, error) {
	procfs := s.Procfs
	if procfs == "" {
		procfs = "/proc"
	}
	var changes []Change
	var errs []error
	set := func(name string, value int, grow bool) bool {
		c, err := setSysctl(procfs, name, value, grow)
		if err != nil {
			errs = append(errs, err)
			return false
		}
		if c != nil {
			changes = append(changes, *c)
		}
		return true
	}
	if s.Max > 0 && set("nf_conntrack_max", s.Max, false) {
		set("nf_conntrack_buckets", s.Max/4, true)
	}
	for _, t := range []struct {
		name string
		d    time.Duration
	}{
		{"nf_conntrack_tcp_timeout_established", s.TCPEstablishedTimeout},
		{"nf_conntrack_tcp_timeout_close_wait", s.TCPCloseWaitTimeout},
		{"nf_conntrack_udp_timeout", s.UDPTimeout},
		{"nf_conntrack_udp_timeout_stream", s.UDPStreamTimeout},
	} {
		if t.d > 0 {
			set(t.name, int(t.d/time.Second), false)
		}
	}
	if s.TCPBeLiberal {
		set("nf_conntrack_tcp_be_liberal", 1, false)
	}
	return changes, errors.Join(errs...)
}

// MaxTimeout is the longest timeout the kernel accepts on every
// configuration: it keeps timeouts in jiffies in an int, and HZ is at
// most 1000.
const MaxTimeout = (1<<31 - 1) / 1000 * time.Second

// setSysctl writes value to net.netfilter.name below procfs unless it
// already holds it (or, with grow, at least it); it returns the change, or
// nil when there was none.
func setSysctl(procfs, name string, value int, grow bool) (*Change, error) {
	dotted := "net.netfilter." + name
	path := filepath.Join(procfs, "sys/net/netfilter", name)
	old, err := readInt(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", dotted, err)
	}
	if old == value || grow && old > value {
		return nil, nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(value)), 0); err != nil {
		if errors.Is(err, os.ErrPermission) {
			err = fmt.Errorf("%w (read-only here: the table's size can only be set from the host's network namespace, and a security module may deny it)", err)
		}
		return nil, fmt.Errorf("setting %s to %d (it is %d): %w", dotted, value, old, err)
	}
	return &Change{Name: dotted, Old: old, New: value}, nil
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

// OnlineCPUs returns the number of the machine's online CPUs, which sizes
// the table (as kube-proxy counts them): all of them, not only those the
// process may run on (runtime.NumCPU), since the table serves every
// CPU's connections. It falls back to runtime.NumCPU when
// /sys/devices/system/cpu/online cannot be read.
func OnlineCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	if n := parseCPUList(string(b)); n > 0 {
		return n
	}
	return runtime.NumCPU()
}

// parseCPUList counts the CPUs of a kernel CPU list ("0-3,8,10-11"); 0 if
// it does not parse.
func parseCPUList(s string) int {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0
	}
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0
			}
		}
		n += b - a + 1
	}
	return n
}
