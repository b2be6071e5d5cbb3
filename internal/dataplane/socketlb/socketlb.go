// Package socketlb is kubenat's socket load balancer: eBPF programs on
// the cgroup connect4 and connect6 hooks that rewrite a TCP connect() to a
// ClusterIP into a connect() to one of the Service's endpoints, chosen with
// equal probability, before the first packet exists (bpf/connect.c), for
// IPv4 and IPv6 ClusterIPs. An IPv6 socket connecting to the IPv4-mapped
// form of a ClusterIP (::ffff:a.b.c.d, Java's default) is balanced the same
// way. Programs on
// the getpeername4/6 hooks make a balanced socket's getpeername() return
// the ClusterIP it was connected to (Multipath TCP sockets included).
//
// It only accelerates: the nftables tables keep every rule, and a connect
// the balancer does not rewrite (a frontend it does not hold, a Service
// without endpoints, UDP, a process outside the cgroup) is
// served by them as before (with model.Config.UntrackPodTCP, only for the
// ports the model keeps tracked: see model.State.TrackedEndpoints). Which ports it
// holds, and with which endpoints, is the model's decision
// (model.State.SocketEndpoints).
//
// A port's endpoints are a group of slots in the backends map under a
// group id; the frontends map points each frontend at its group. Each
// address family has its own pair of maps. A change
// writes the new group under a fresh id, switches the frontend to it in
// one map update, then deletes the old group: a connect sees either group,
// whole (the program looks again when a slot vanished under it, and uses
// what it read only when the same keys still lead to it: the kernel may
// reuse a replaced element at once for another frontend or slot).
//
// Changes are applied in two steps around the nftables sync: Update adds
// and changes frontends, Prune removes those no longer wanted. A frontend
// therefore leaves the balancer only after nftables is ready to serve it
// (and to keep its endpoints tracked, see model.State.TrackedEndpoints),
// and enters it before nftables stops tracking.
package socketlb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/kubenat/kubenat/internal/bpfmap"
	"github.com/kubenat/kubenat/internal/model"
)

// hook is one of the cgroup hooks the balancer's programs are attached
// to: the name its link is pinned under in PinDir, and its program.
type hook struct {
	pin    string
	attach ebpf.AttachType
	prog   func(*bpfObjects) *ebpf.Program
}

// hooks returns the balancer's hooks.
func hooks() []hook {
	return []hook{
		{"connect4", ebpf.AttachCGroupInet4Connect, func(o *bpfObjects) *ebpf.Program { return o.KubenatConnect4 }},
		{"connect6", ebpf.AttachCGroupInet6Connect, func(o *bpfObjects) *ebpf.Program { return o.KubenatConnect6 }},
		{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(o *bpfObjects) *ebpf.Program { return o.KubenatGetpeername4 }},
		{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(o *bpfObjects) *ebpf.Program { return o.KubenatGetpeername6 }},
	}
}

// Options configure a Balancer.
type Options struct {
	// Cgroup is the cgroup v2 directory whose processes (and those of its
	// descendants) connect through the balancer: on a node, the root of
	// the cgroup v2 hierarchy, so that every pod is served.
	Cgroup string
	// PinDir, when set, is a directory on a bpf file system (created when
	// missing) where the link and the maps are pinned: the balancer keeps
	// working after the process exits, and the next Open takes it over,
	// maps and all. Empty: everything is released when the Balancer is
	// closed.
	PinDir string
}

// group is what the maps hold for one frontend: its id and its backends
// (B: bpfBackend or bpfBackend6).
type group[B comparable] struct {
	id       uint32
	backends []B
}

// table is one address family's frontends and backends maps (F: the
// family's frontend key, B: its backend) and what they hold.
type table[F, B comparable] struct {
	name      string // "IPv4" or "IPv6", for errors
	frontends *ebpf.Map
	backends  *ebpf.Map
	groups    map[F]group[B] // what the maps hold
	used      map[uint32]bool
	nextID    uint32
	prune     []F // removals Prune applies
}

func newTable[F, B comparable](name string, frontends, backends *ebpf.Map) *table[F, B] {
	return &table[F, B]{name: name, frontends: frontends, backends: backends,
		groups: map[F]group[B]{}, used: map[uint32]bool{}}
}

// Balancer keeps the balancer's maps in step with the model's State.
// It is not safe for concurrent use.
type Balancer struct {
	objs   bpfObjects
	mptcp  bool // the programs name an MPTCP subflow's socket
	links  []link.Link
	v4     *table[bpfFrontend, bpfBackend]
	v6     *table[bpfFrontend6, bpfBackend6]
	synced bool
}

// Open loads the programs and attaches them to o.Cgroup, or, when o.PinDir
// holds a balancer pinned by an earlier process, replaces that one's
// programs and takes over its maps (their content is kept until the first
// Update says otherwise). A hook the earlier balancer had no link on (one
// from before kubenat had connect6 and getpeername programs) gets a new
// one, and maps it did not have (the IPv6 ones) are created empty.
func Open(o Options) (_ *Balancer, err error) {
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones
	// to the cgroup (then this does nothing).
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("lifting the memlock limit for the socket load balancer: %w", err)
	}
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("reading the socket load balancer's program: %w", err)
	}
	var opts ebpf.CollectionOptions
	if o.PinDir != "" {
		if err := bpfmap.PinDir(o.PinDir, "socket load balancer"); err != nil {
			return nil, err
		}
		for name, m := range spec.Maps {
			// Not the constants (.rodata): each load has its own.
			if !strings.HasPrefix(name, ".") {
				m.Pinning = ebpf.PinByName
			}
		}
		opts.Maps.PinPath = o.PinDir
	}
	// Multipath TCP sockets get their getpeername where the kernel lets
	// the programs name the MPTCP socket of a subflow (Linux 5.19 and
	// later, CAP_PERFMON). The probe can pass where the load then fails
	// (e.g. a kernel without BTF for the helper's result): the programs
	// are loaded again without it.
	b := &Balancer{mptcp: features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSkcToMptcpSock) == nil}
	if err := load(spec, &b.objs, &opts, b.mptcp); err != nil {
		if !b.mptcp {
			return nil, fmt.Errorf("loading the socket load balancer (pinned in %q): %w", o.PinDir, err)
		}
		b.mptcp = false
		if err := load(spec, &b.objs, &opts, false); err != nil {
			return nil, fmt.Errorf("loading the socket load balancer (pinned in %q): %w", o.PinDir, err)
		}
	}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	b.v4 = newTable[bpfFrontend, bpfBackend]("IPv4", b.objs.Frontends, b.objs.Backends)
	b.v6 = newTable[bpfFrontend6, bpfBackend6]("IPv6", b.objs.Frontends6, b.objs.Backends6)
	if o.PinDir != "" {
		if err := b.dropUnservedIPv6(o.PinDir); err != nil {
			return nil, err
		}
	}
	if err := b.v4.read(); err != nil {
		return nil, err
	}
	if err := b.v6.read(); err != nil {
		return nil, err
	}
	if err := b.attach(o); err != nil {
		return nil, err
	}
	return b, nil
}

// dropUnservedIPv6 empties the pinned IPv6 maps unless the connect6
// program the pinned link runs reads them. Otherwise an agent from before
// them ran in between (a downgrade and an upgrade), and they hold groups
// of unknown age, which the new programs, attached before the first
// Update, would serve. The IPv4 maps are kept: every version served them.
func (b *Balancer) dropUnservedIPv6(pinDir string) error {
	served := false
	if l, err := link.LoadPinnedLink(filepath.Join(pinDir, "connect6"), nil); err == nil {
		served, err = runsMap(l, b.objs.Frontends6)
		l.Close()
		if errors.Is(err, os.ErrPermission) {
			// Opening a program by its ID needs CAP_SYS_ADMIN, which the
			// agent's pod does not have. A pinned connect6 program is then
			// taken to serve the IPv6 maps, as every version with one does:
			// only a downgrade to a version from before the IPv6 maps and
			// an upgrade back would leave groups of unknown age in them.
			served, err = true, nil
		}
		if err != nil {
			return err
		}
	}
	if served {
		return nil
	}
	for _, m := range []*ebpf.Map{b.objs.Frontends6, b.objs.Backends6} {
		if err := clearMap(m); err != nil {
			return fmt.Errorf("emptying the socket load balancer's IPv6 maps: %w", err)
		}
	}
	return nil
}

// runsMap reports whether the program l runs uses m.
func runsMap(l link.Link, m *ebpf.Map) (bool, error) {
	info, err := l.Info()
	if err != nil {
		return false, fmt.Errorf("describing the pinned socket load balancer: %w", err)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return false, fmt.Errorf("opening the pinned socket load balancer's program: %w", err)
	}
	defer prog.Close()
	pi, err := prog.Info()
	if err != nil {
		return false, fmt.Errorf("describing the pinned socket load balancer's program: %w", err)
	}
	mi, err := m.Info()
	if err != nil {
		return false, fmt.Errorf("describing the socket load balancer's map: %w", err)
	}
	ids, _ := pi.MapIDs()
	id, _ := mi.ID()
	return slices.Contains(ids, id), nil
}

// clearMap deletes every key of m: all keys are listed first (a hash
// map's next key after a deleted one starts over from its first bucket).
func clearMap(m *ebpf.Map) error {
	var keys [][]byte
	var prev any // nil: the first key
	for {
		next := make([]byte, m.KeySize())
		if err := m.NextKey(prev, &next); errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		} else if err != nil {
			return err
		}
		keys = append(keys, next)
		prev = next
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// load loads spec into objs, with or without the programs' use of
// bpf_skc_to_mptcp_sock (the have_mptcp_helper constant).
func load(spec *ebpf.CollectionSpec, objs *bpfObjects, opts *ebpf.CollectionOptions, mptcp bool) error {
	var v uint8
	if mptcp {
		v = 1
	}
	if err := spec.Variables["have_mptcp_helper"].Set(v); err != nil {
		return fmt.Errorf("configuring the socket load balancer's programs: %w", err)
	}
	return spec.LoadAndAssign(objs, opts)
}

// MPTCPGetpeername reports whether getpeername on a balanced Multipath TCP
// socket returns the ClusterIP (see Open); when false it returns the
// endpoint.
func (b *Balancer) MPTCPGetpeername() bool { return b.mptcp }

// attach links the programs to the cgroup, or updates the pinned links.
func (b *Balancer) attach(o Options) error {
	var ino uint64
	if fi, err := os.Stat(o.Cgroup); err != nil {
		return fmt.Errorf("socket load balancer cgroup: %w", err)
	} else if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino // a cgroup's id is its directory's inode number
	}
	for _, h := range hooks() {
		l, err := attachHook(o, ino, h.pin, h.attach, h.prog(&b.objs))
		if err != nil {
			return err
		}
		b.links = append(b.links, l)
	}
	return nil
}

// attachHook links prog to the cgroup's (whose id is ino) hook attach,
// or updates the link pinned under name.
func attachHook(o Options, ino uint64, name string, attach ebpf.AttachType, prog *ebpf.Program) (link.Link, error) {
	pin := filepath.Join(o.PinDir, name)
	if o.PinDir != "" {
		l, err := link.LoadPinnedLink(pin, nil)
		switch {
		case err == nil:
			// A kernel that cannot describe the link skips the check.
			if info, ierr := l.Info(); ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId != ino {
				l.Close()
				return nil, fmt.Errorf("the socket load balancer pinned in %s is attached to another cgroup than %s (run kubenat cleanup first)", o.PinDir, o.Cgroup)
			}
			if err := l.Update(prog); err != nil {
				l.Close()
				return nil, fmt.Errorf("replacing the socket load balancer's %s program: %w", name, err)
			}
			return l, nil
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("opening the pinned socket load balancer (%s): %w", name, err)
		}
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: o.Cgroup, Attach: attach, Program: prog})
	if err != nil {
		return nil, fmt.Errorf("attaching the socket load balancer's %s program to cgroup %s: %w", name, o.Cgroup, err)
	}
	if o.PinDir != "" {
		if err := l.Pin(pin); err != nil {
			l.Close()
			return nil, fmt.Errorf("pinning the socket load balancer's %s program: %w", name, err)
		}
	}
	return l, nil
}

// read learns what the (possibly pinned) maps hold, and deletes the slots
// no frontend points at (left by a process stopped mid-change).
func (t *table[F, B]) read() error {
	var fe F
	var g bpfGroup
	counts := map[uint32]uint32{}
	it := t.frontends.Iterate()
	for it.Next(&fe, &g) {
		t.groups[fe] = group[B]{id: g.Id, backends: make([]B, g.Count)}
		t.used[g.Id] = true
		counts[g.Id] = g.Count
		t.nextID = max(t.nextID, g.Id)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the socket load balancer's %s frontends: %w", t.name, err)
	}
	slots := map[bpfSlot]B{}
	var orphans []bpfSlot
	var s bpfSlot
	var be B
	it = t.backends.Iterate()
	for it.Next(&s, &be) {
		if s.Index < counts[s.Id] {
			slots[s] = be
		} else {
			orphans = append(orphans, s)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the socket load balancer's %s backends: %w", t.name, err)
	}
	for _, g := range t.groups {
		// A slot missing (a process stopped mid-change) stays zero: no
		// endpoint equals it, so the next Update rewrites the group.
		for i := range g.backends {
			g.backends[i] = slots[bpfSlot{Id: g.id, Index: uint32(i)}]
		}
	}
	return bpfmap.DeleteAll(t.backends, orphans)
}

// Update adds the frontends st wants in the balancer and changes those
// whose endpoints changed (all of st when d.Full, on the first Update and
// after a failure; else the Services d names). Frontends to remove are
// remembered for Prune, which is called once nftables has been synced.
func (b *Balancer) Update(st *model.State, d model.Delta) error {
	w4, w6 := newWants[bpfFrontend, bpfBackend](), newWants[bpfFrontend6, bpfBackend6]()
	add := func(ports []model.ServicePort, wanted bool) {
		for i := range ports {
			sp := &ports[i]
			if sp.Name.Protocol != model.TCP {
				continue
			}
			eps, ok := st.SocketEndpoints(sp)
			ok = ok && wanted
			switch {
			case sp.Name.Family == model.IPv4 && sp.ClusterIP.Is4():
				w4.add(frontend4(sp), eps, ok, backend4)
			case sp.Name.Family == model.IPv6 && sp.ClusterIP.Is6():
				w6.add(frontend6(sp), eps, ok, backend6)
			}
		}
	}
	full := d.Full || !b.synced
	if full {
		for _, ports := range st.Services {
			add(ports, true)
		}
		w4.candidatesFrom(b.v4)
		w6.candidatesFrom(b.v6)
	} else {
		for _, k := range d.Changed {
			add(d.Old[k], false)
			add(st.Services[k], true)
		}
	}
	b.synced = false
	if err := b.v4.update(w4); err != nil {
		return err
	}
	if err := b.v6.update(w6); err != nil {
		return err
	}
	b.synced = true
	return nil
}

// wants is what an Update wants of one table: the frontends it looks at,
// and the backends of those it wants balanced.
type wants[F, B comparable] struct {
	candidates map[F]bool
	want       map[F][]B
}

func newWants[F, B comparable]() wants[F, B] {
	return wants[F, B]{candidates: map[F]bool{}, want: map[F][]B{}}
}

func (w wants[F, B]) add(fe F, eps []model.Endpoint, wanted bool, backend func(model.Endpoint) B) {
	w.candidates[fe] = true
	if !wanted {
		return
	}
	out := make([]B, len(eps))
	for i, ep := range eps {
		out[i] = backend(ep)
	}
	w.want[fe] = out
}

// candidatesFrom adds every frontend t holds (a full Update removes those
// no longer wanted).
func (w wants[F, B]) candidatesFrom(t *table[F, B]) {
	for fe := range t.groups {
		w.candidates[fe] = true
	}
}

// update writes w's groups to t: new groups under fresh ids, then the
// frontends switched to them, then the old groups deleted. Frontends to
// remove are remembered for prune.
func (t *table[F, B]) update(w wants[F, B]) error {
	var slots []bpfSlot
	var backends []B
	var fes []F
	var gs []bpfGroup
	var stale []group[B]
	next := map[F]group[B]{}
	t.prune = t.prune[:0]
	for fe := range w.candidates {
		eps, wanted := w.want[fe]
		old, had := t.groups[fe]
		switch {
		case !wanted:
			if had {
				t.prune = append(t.prune, fe)
			}
			continue
		case had && slices.Equal(old.backends, eps):
			continue
		}
		id := t.newID()
		for i, be := range eps {
			slots = append(slots, bpfSlot{Id: id, Index: uint32(i)})
			backends = append(backends, be)
		}
		fes = append(fes, fe)
		gs = append(gs, bpfGroup{Id: id, Count: uint32(len(eps))})
		next[fe] = group[B]{id: id, backends: eps}
		if had {
			stale = append(stale, old)
		}
	}
	// On failure, the new groups no frontend points at are deleted again
	// (best effort: what is left is found by the next Open), and the next
	// Update compares everything.
	if err := bpfmap.BatchUpdate(t.backends, slots, backends); err != nil {
		_ = bpfmap.DeleteAll(t.backends, slots)
		for _, g := range next {
			delete(t.used, g.id)
		}
		return fmt.Errorf("writing the socket load balancer's %s endpoints: %w", t.name, err)
	}
	if err := bpfmap.BatchUpdate(t.frontends, fes, gs); err != nil {
		// Some frontends may point at their new group already: keep those
		// groups' slots, and let the next Update rewrite everything.
		return fmt.Errorf("writing the socket load balancer's %s frontends: %w", t.name, err)
	}
	for fe, g := range next {
		t.groups[fe] = g
	}
	return t.deleteGroups(stale)
}

// Prune removes the frontends the last Update found no longer wanted:
// nftables serves them from now on. A family whose removal fails does not
// stop the other's; the next Update then compares everything.
func (b *Balancer) Prune() error {
	err := errors.Join(b.v4.applyPrune(), b.v6.applyPrune())
	if err != nil {
		b.synced = false
	}
	return err
}

func (t *table[F, B]) applyPrune() error {
	if len(t.prune) == 0 {
		return nil
	}
	var stale []group[B]
	for _, fe := range t.prune {
		stale = append(stale, t.groups[fe])
	}
	if err := bpfmap.DeleteAll(t.frontends, t.prune); err != nil {
		return fmt.Errorf("removing %d %s frontends from the socket load balancer: %w", len(t.prune), t.name, err)
	}
	for _, fe := range t.prune {
		delete(t.groups, fe)
	}
	t.prune = t.prune[:0]
	return t.deleteGroups(stale)
}

// Frontends returns the number of frontends the balancer holds.
func (b *Balancer) Frontends() int { return len(b.v4.groups) + len(b.v6.groups) }

// newID returns a group id no frontend of t uses.
func (t *table[F, B]) newID() uint32 {
	for {
		t.nextID++
		if t.nextID != 0 && !t.used[t.nextID] {
			t.used[t.nextID] = true
			return t.nextID
		}
	}
}

// deleteGroups deletes the slots of groups no frontend points at any more.
func (t *table[F, B]) deleteGroups(gs []group[B]) error {
	var slots []bpfSlot
	for _, g := range gs {
		for i := range g.backends {
			slots = append(slots, bpfSlot{Id: g.id, Index: uint32(i)})
		}
		delete(t.used, g.id)
	}
	if err := bpfmap.DeleteAll(t.backends, slots); err != nil {
		return fmt.Errorf("deleting %d %s endpoint slots of the socket load balancer: %w", len(slots), t.name, err)
	}
	return nil
}

// Close releases the balancer's file descriptors. A pinned balancer stays
// attached and keeps working; an unpinned one is detached.
func (b *Balancer) Close() error {
	var errs []error
	for _, l := range b.links {
		errs = append(errs, l.Close())
	}
	b.links = nil
	errs = append(errs, b.objs.Close())
	return errors.Join(errs...)
}

// Cleanup detaches the balancer pinned in pinDir and removes its pins, and
// the directory when nothing else is left in it, and reports whether there
// was one. Only the names the balancer pins are removed (its links and
// maps), so a pin directory shared with other software, or the bpf file
// system's root given by mistake, loses nothing else. A missing directory
// is not an error. Removing the last pin of a link detaches its program
// (no process holds the link once its agent is gone), also without BPF
// privileges; with them, the links are opened first so that the programs
// are detached when Cleanup returns (the kernel releases an unpinned link
// asynchronously).
func Cleanup(pinDir string) (removed bool, err error) {
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	spec, err := loadBpf()
	if err != nil {
		return false, fmt.Errorf("reading the socket load balancer's program: %w", err)
	}
	// The links first: the programs stop before their maps go.
	var names []string
	for _, h := range hooks() {
		if l, err := link.LoadPinnedLink(filepath.Join(pinDir, h.pin), nil); err == nil {
			defer l.Close()
		}
		names = append(names, h.pin)
	}
	var maps []string
	for name := range spec.Maps {
		if !strings.HasPrefix(name, ".") {
			maps = append(maps, name)
		}
	}
	slices.Sort(maps)
	for _, name := range append(names, maps...) {
		err := os.Remove(filepath.Join(pinDir, name))
		switch {
		case err == nil:
			removed = true
		case !errors.Is(err, os.ErrNotExist):
			return removed, fmt.Errorf("removing the socket load balancer's pins: %w", err)
		}
	}
	// Left when something else is in it (or it is a mount point).
	_ = unix.Rmdir(pinDir)
	return removed, nil
}

// frontend4 and frontend6 return sp's ClusterIP frontend as the programs
// key it; backend4 and backend6 an endpoint as they store it.
func frontend4(sp *model.ServicePort) bpfFrontend {
	return bpfFrontend{Addr: addr4(sp.ClusterIP.As4()), Port: port(sp.Port), Proto: unix.IPPROTO_TCP}
}

func frontend6(sp *model.ServicePort) bpfFrontend6 {
	return bpfFrontend6{Addr: addr6(sp.ClusterIP.As16()), Port: port(sp.Port), Proto: unix.IPPROTO_TCP}
}

func backend4(ep model.Endpoint) bpfBackend {
	return bpfBackend{Addr: addr4(ep.Addr.Unmap().As4()), Port: port(ep.Port)}
}

func backend6(ep model.Endpoint) bpfBackend6 {
	return bpfBackend6{Addr: addr6(ep.Addr.As16()), Port: port(ep.Port)}
}

// addr4, addr6 and port return what the programs read from a socket
// address: network byte order, as stored in memory.
func addr4(a [4]byte) uint32 { return binary.NativeEndian.Uint32(a[:]) }

func addr6(a [16]byte) [4]uint32 {
	var out [4]uint32
	for i := range out {
		out[i] = binary.NativeEndian.Uint32(a[4*i:])
	}
	return out
}

func port(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}
