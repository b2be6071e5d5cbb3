// Package agent wires a Source, the model and a datapath backend into the
// node agent: it collects object changes, builds the State incrementally
// and programs the kernel in batched, atomic syncs.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/klog/v2"

	"github.com/kubenat/kubenat/internal/conntrack"
	"github.com/kubenat/kubenat/internal/dataplane/iptables"
	"github.com/kubenat/kubenat/internal/dataplane/nftables"
	"github.com/kubenat/kubenat/internal/dataplane/socketlb"
	"github.com/kubenat/kubenat/internal/dataplane/tcnat"
	"github.com/kubenat/kubenat/internal/events"
	"github.com/kubenat/kubenat/internal/healthcheck"
	"github.com/kubenat/kubenat/internal/ipmasq"
	"github.com/kubenat/kubenat/internal/metrics"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/nft"
)

// Source delivers objects to a Sink.
type Source interface {
	// Load delivers the current content once and calls Synced. ctx bounds
	// the wait for the content.
	Load(ctx context.Context, sink Sink) error
	// Run delivers the content, then every change, until ctx ends.
	Run(ctx context.Context, sink Sink) error
}

// Options configure an Agent.
type Options struct {
	Config model.Config
	NFT    nftables.Options
	// Runner applies nftables scripts; nil picks libnftables or the nft
	// binary.
	Runner nft.Runner
	// Datapath selects the backend: "nftables" (or "") or "iptables".
	// With iptables, nftables is only used to remove the tables an
	// earlier agent left, and may be missing.
	Datapath string
	// IPTables runs the iptables commands: the iptables datapath's, and,
	// with nftables, the removal of chains an earlier iptables agent left.
	// Nil: the system's commands (iptables.Exec), when installed.
	IPTables iptables.Runner
	// MinSyncPeriod is the least time between two syncs: changes arriving
	// meanwhile are batched into the next one. The one exception: with
	// Config.UntrackPodTCP, a change of the node's addresses is synced at
	// once.
	MinSyncPeriod time.Duration
	// HealthzBindAddress is where /healthz and /livez are served (Run
	// only); empty disables them.
	HealthzBindAddress string
	// MasqueradeConfig is an ip-masq-agent config file whose changes Run
	// follows (Config.Egress holds its content at start).
	MasqueradeConfig string
	// HealthTimeout is how long a change may wait to be programmed before
	// the agent reports itself unhealthy; default 60s plus MinSyncPeriod
	// (a change waits up to MinSyncPeriod by design).
	HealthTimeout time.Duration
	// HoldCheckPeriod is how often endpoints held for open connections
	// (nftables.Options.InUse) are checked: about how long such an
	// endpoint stays tracked after its last connection; default 30s.
	HoldCheckPeriod time.Duration
	// TableCheckPeriod is how often the agent checks that its tables are
	// still in the kernel (nftables.Backend.Intact): tables flushed or
	// deleted from outside are programmed again within about this long;
	// default 30s.
	TableCheckPeriod time.Duration
	// Metrics receives the agent's measurements; nil means metrics.Nop.
	Metrics metrics.Reporter
	// Events records problems with a Service as Kubernetes Events on it;
	// nil means events.Nop.
	Events events.Recorder
	// SocketLB places the socket load balancer when Config.SocketLB is set
	// (and MasqueradeAll is not). When it is off, a balancer pinned in
	// SocketLB.PinDir by an earlier agent is removed.
	SocketLB socketlb.Options
	// TCNAT places the tc NAT when Config.TCNAT is set. When it is off,
	// the filters an earlier agent left on the node's interfaces and its
	// connection maps pinned in TCNAT.PinDir are removed.
	TCNAT tcnat.Options
	// Conntrack are the connection-tracking sysctls set after the first
	// successful sync (its rules load the conntrack module); the zero
	// value sets none.
	Conntrack conntrack.Settings
}

// Agent programs the node's datapath from the objects a Source delivers.
type Agent struct {
	opts    Options
	backend datapath
	// removedOther is true once the other datapaths' leftover rules are
	// removed (after the first successful sync; a failure is retried with
	// the table checks, every TableCheckPeriod).
	removedOther bool
	// balancer is the socket load balancer; nil when it is off. It is
	// updated before the nftables sync and pruned after it.
	balancer *socketlb.Balancer
	// dropPins is the pin directory of a balancer to remove after the next
	// successful nftables sync (which removes the untracked chain first):
	// an earlier agent's, when the balancer is off, or this agent's after
	// it failed.
	dropPins string
	// tcnat is the tc NAT; nil when it is off. It is updated after the
	// nftables sync, which serves whatever it does not take.
	tcnat *tcnat.NAT
	// tcAddrs are the node addresses the tc NAT was last attached for.
	tcAddrs []netip.Addr
	// dropTCNAT asks for the tc NAT's filters and pins to be removed after
	// the next successful sync: an earlier agent's, when it is off, or
	// this agent's after it failed.
	dropTCNAT bool
	cleaner   *conntrack.Cleaner // nil when conntrack netlink is unavailable
	health    *healthcheck.ProxyHealth
	// svcHealth serves healthCheckNodePorts; nil until Run starts it.
	svcHealth *healthcheck.ServiceHealth
	// programmed is true once a sync succeeded in this process: from then
	// on, changes are changes (on the first sync every Service looks new).
	programmed bool

	mu         sync.Mutex
	builder    *model.Builder
	synced     bool // the source delivered its initial content
	sourceErrs []error
	warnings   []string
	reported   map[string]bool
	kick       chan struct{}
	pending    int                   // changes since the last successful sync
	triggers   *metrics.TriggerTimes // EndpointSlice changes not programmed yet
	counter    *metrics.StateCounter // programmed Services and endpoints
	// unapplied is what the Builds of failed syncs said changed: the next
	// sync applies it with its own Delta (Build reports a change once,
	// and the balancer, the health-check servers, the conntrack cleanup
	// and the programmed-objects counter work from the Delta).
	unapplied *model.Delta
}

// New returns an Agent for opts.
func New(opts Options) (*Agent, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	if opts.Config.NeedsLocalAddrs() && opts.Config.LocalAddrs == nil {
		addrs, err := localAddrs()
		if err != nil {
			return nil, err
		}
		opts.Config.LocalAddrs = addrs
	}
	variant, useIPTables := iptables.DatapathVariant(opts.Datapath)
	switch {
	case opts.Datapath == "" || opts.Datapath == nftablesDatapath:
	case useIPTables:
		if opts.Config.SocketLB {
			return nil, errors.New("the socket load balancer needs the nftables datapath")
		}
	default:
		return nil, fmt.Errorf("unknown datapath %q", opts.Datapath)
	}
	if opts.Runner == nil {
		r, err := nft.New()
		switch {
		case err != nil && !useIPTables:
			return nil, err
		case err != nil:
			klog.V(2).InfoS("nftables cannot be used here; nothing to remove of an nftables datapath", "reason", err)
		default:
			opts.Runner = r
		}
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.Nop
	}
	if opts.Events == nil {
		opts.Events = events.Nop
	}
	if warns, err := localDetectWarnings(opts.Config.LocalDetect); err != nil {
		klog.ErrorS(err, "Checking the interfaces of the local traffic detection")
	} else {
		for _, w := range warns {
			klog.InfoS("Warning: the local traffic detection may miss pods", "detectLocalMode", opts.Config.LocalDetect.Mode, "problem", w)
		}
	}
	cleaner, err := conntrack.NewCleaner()
	if err != nil {
		klog.ErrorS(err, "Stale UDP conntrack entries will not be cleared")
		cleaner = nil
	}
	// With untracked pod TCP, endpoints whose DNATed connections are still
	// open stay tracked after their Service lets go of them. The backend
	// reads conntrack from the Run goroutine (syncs, releaseHolds), as
	// clearConntrack does: one socket serves both.
	if opts.Config.UntrackPodTCP && opts.NFT.InUse == nil && cleaner != nil {
		opts.NFT.InUse = func(_ context.Context, cidr netip.Prefix) (map[netip.AddrPort]bool, error) {
			used, err := cleaner.DNATed(cidr)
			if err != nil {
				klog.ErrorS(err, "Reading conntrack for the endpoints DNATed connections use failed; keeping them tracked")
			}
			return used, err
		}
	}
	if opts.HoldCheckPeriod == 0 {
		opts.HoldCheckPeriod = 30 * time.Second
	}
	if opts.TableCheckPeriod == 0 {
		opts.TableCheckPeriod = 30 * time.Second
	}
	if opts.HealthTimeout == 0 {
		opts.HealthTimeout = 60*time.Second + opts.MinSyncPeriod
	}
	var balancer *socketlb.Balancer
	var dropPins string
	switch {
	case opts.Config.SocketLB && !opts.Config.MasqueradeAll:
		if balancer, err = socketlb.Open(opts.SocketLB); err != nil {
			// Serve with nftables alone rather than not at all: a failed
			// start would leave a balancer pinned earlier rewriting
			// connects from maps nobody updates, and a new node without
			// rules. The pinned balancer goes after the first full sync,
			// as when the configuration turns it off.
			klog.ErrorS(err, "The socket load balancer cannot be opened: it is off, nftables serves every connection")
			balancer = nil
			opts.Config.SocketLB = false
			dropPins = opts.SocketLB.PinDir
			break
		}
		klog.InfoS("Socket load balancer attached", "cgroup", opts.SocketLB.Cgroup, "pinDir", opts.SocketLB.PinDir,
			"mptcpGetpeername", balancer.MPTCPGetpeername())
	case opts.SocketLB.PinDir != "":
		if opts.Config.SocketLB {
			klog.InfoS("The socket load balancer is off: masqueradeAll needs every ClusterIP connection translated by nftables")
		}
		dropPins = opts.SocketLB.PinDir
	}
	var nat *tcnat.NAT
	dropTCNAT := false
	if opts.Config.TCNAT {
		if nat, err = tcnat.Open(opts.TCNAT); err != nil {
			klog.ErrorS(err, "The tc NAT cannot be opened: it is off, nftables serves every connection")
			opts.Config.TCNAT = false
			dropTCNAT = true
		} else {
			// The kernel's Service masquerade keeps to other ports.
			opts.Config.TCNATPorts = nat.Ports()
			klog.InfoS("tc NAT loaded", "pinDir", opts.TCNAT.PinDir, "snatPorts", fmt.Sprintf("%d-%d", nat.Ports()[0], nat.Ports()[1]))
		}
	} else {
		dropTCNAT = true
	}
	if dropTCNAT && opts.TCNAT.PinDir != "" {
		// Programs an earlier agent left deliver pod-to-pod TCP past
		// conntrack until the first sync removes them: not once this
		// agent's rules may DNAT pod traffic.
		if err := tcnat.StopDelivery(opts.TCNAT.PinDir); err != nil {
			klog.ErrorS(err, "Turning off an earlier agent's direct pod-to-pod delivery failed")
		}
	}
	// The backend last: it takes the options completed above (InUse).
	var dp datapath
	if useIPTables {
		if dp, err = newIPTDatapath(opts, variant); err != nil {
			return nil, err
		}
	} else {
		dp = newNFTDatapath(opts)
	}
	return &Agent{
		balancer:  balancer,
		dropPins:  dropPins,
		tcnat:     nat,
		dropTCNAT: dropTCNAT,
		opts:      opts,
		health:    healthcheck.NewProxyHealth(opts.HealthTimeout),
		cleaner:   cleaner,
		backend:   dp,
		builder:   model.NewBuilder(opts.Config),
		reported:  map[string]bool{},
		kick:      make(chan struct{}, 1),
		triggers:  metrics.NewTriggerTimes(time.Now()),
		counter:   metrics.NewStateCounter(),
	}, nil
}

// nftablesDatapath is Options.Datapath's name of the nftables datapath
// (the others are iptables.DatapathNames).
const nftablesDatapath = "nftables"

// newNFTDatapath returns the nftables datapath, which removes the chains
// of the iptables variants installed (Options.IPTables alone when set).
func newNFTDatapath(opts Options) datapath {
	d := nftDatapath{b: nftables.New(opts.Runner, opts.NFT)}
	if opts.IPTables != nil {
		d.ipt = []iptables.Runner{opts.IPTables}
		return d
	}
	for _, e := range iptables.Installed("") {
		d.ipt = append(d.ipt, e)
	}
	return d
}

// newIPTDatapath returns the iptables datapath with the commands of
// variant ("" the system's), or Options.IPTables when set. It removes the
// nftables tables and the chains of the other iptables variant installed.
func newIPTDatapath(opts Options, variant string) (datapath, error) {
	d := iptDatapath{datapath: opts.Datapath, nft: opts.Runner, nftOpts: opts.NFT}
	run := opts.IPTables
	var ipo iptables.Options
	if run == nil {
		ctx := context.Background()
		e := iptables.Exec{Variant: variant}
		if !e.Available() {
			return nil, fmt.Errorf("datapath %s (--datapath) needs %s, each with its -save and -restore, on PATH", opts.Datapath, e.Names())
		}
		e, o, err := e.Probe(ctx)
		if err != nil {
			return nil, err
		}
		if o.NoRandomFully {
			klog.InfoS("Warning: this iptables is older than 1.6.2: masquerade without fully random source ports, iptables-restore without waiting for the xtables lock", "commands", e.Names())
		}
		if !iptables.IPv6Enabled() {
			o.IPv4Only = true
			klog.InfoS("The kernel has no IPv6: the iptables datapath programs IPv4 only")
		}
		run, ipo = e, o
		kind, err := e.Kind(ctx)
		if err != nil {
			return nil, err
		}
		// The other variant's chains, when it is known which one is ours.
		for _, other := range iptables.Installed("") {
			if kind != "" && other.Variant != "" && other.Variant != kind {
				d.others = append(d.others, other)
				warnOtherVariant(ctx, e, other)
			}
		}
		klog.InfoS("The iptables datapath programs through these commands", "datapath", opts.Datapath, "commands", e.Names(), "variant", kind)
	}
	d.b = iptables.New(run, ipo)
	return d, nil
}

// warnOtherVariant warns when the other variant of the iptables commands
// holds more of the node's rules than the one kubenat uses (iptables-
// wrapper's test): the node's other rules (kubelet's, Docker's, a CNI's)
// are then there, and their policies (a FORWARD policy of DROP) are not
// kubenat's to accept. In a container, "iptables" is the image's choice,
// not the host's.
func warnOtherVariant(ctx context.Context, ours, other iptables.Exec) {
	count := func(e iptables.Exec) int {
		out, err := e.Save(ctx, model.IPv4)
		if err != nil {
			return 0
		}
		return strings.Count(out, "\n-A ")
	}
	if n, m := count(other), count(ours); n > m {
		klog.InfoS("Warning: the node's other iptables rules are in the other variant; consider --datapath iptables-"+other.Variant,
			"commands", ours.Names(), "rulesThere", m, "other", other.Names(), "rulesInOther", n)
	}
}

// Close releases what the agent holds open. The datapath stays: the
// nftables tables, and the socket load balancer when it is pinned.
func (a *Agent) Close() error {
	var errs []error
	if a.cleaner != nil {
		errs = append(errs, a.cleaner.Close())
	}
	if a.balancer != nil {
		errs = append(errs, a.balancer.Close())
	}
	if a.tcnat != nil {
		errs = append(errs, a.tcnat.Close())
	}
	return errors.Join(errs...)
}

// SyncOnce loads src once and programs the result. Once started, the sync
// runs to its end even if ctx ends (see Run).
func (a *Agent) SyncOnce(ctx context.Context, src Source) error {
	if err := src.Load(ctx, a); err != nil {
		return fmt.Errorf("loading objects: %w", err)
	}
	return a.sync(context.WithoutCancel(ctx))
}

// Run runs src and programs every change until ctx ends. It returns nil on
// cancellation, leaving the programmed rules in place.
func (a *Agent) Run(ctx context.Context, src Source) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.mu.Lock()
	a.svcHealth = healthcheck.NewServiceHealth(ctx, a.health, nil, func(k model.ServiceKey, err error) {
		if err != nil {
			klog.ErrorS(err, "Service health check not served", "service", k.String())
			a.opts.Events.Eventf(k, v1.EventTypeWarning, "FailedToStartServiceHealthcheck", "%v", err)
		}
	})
	a.mu.Unlock()
	if a.opts.HealthzBindAddress != "" {
		go a.serveHealthz(ctx)
	}
	if path := a.opts.MasqueradeConfig; path != "" {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			// ip-masq-agent's meaning (its ConfigMap is optional), but
			// a mistyped path should not pass unseen.
			klog.InfoS("The masquerade configuration file does not exist: using the default non-masquerade ranges until it appears", "file", path)
		}
		a.mu.Lock()
		egress := a.builder.Config().Egress
		a.mu.Unlock()
		go ipmasq.Watch(ctx, path, time.Second, egress, a.setEgress, func(err error) {
			if err != nil {
				klog.ErrorS(err, "Invalid masquerade configuration")
			} else {
				klog.InfoS("The masquerade configuration is valid again", "file", path)
			}
		})
	}
	srcErr := make(chan error, 1)
	go func() { srcErr <- src.Run(ctx, a) }()

	// The node's addresses are followed when the rules depend on them:
	// notified by the kernel, and checked every 10 s in case a
	// notification was lost. With untracked pod TCP their changes are
	// applied at once, without waiting for MinSyncPeriod: the replies to
	// a new address are untracked until it is programmed.
	addrsChanged := make(chan struct{}, 1)
	if a.opts.Config.NeedsLocalAddrs() {
		go watchAddrs(ctx, addrsChanged, time.Second)
	}
	addrCheck := time.NewTicker(10 * time.Second)
	defer addrCheck.Stop()
	// Endpoints held in tracked-endpoints for open connections (see
	// nftables.Options.InUse) are let go of once those are closed.
	holdCheck := time.NewTicker(a.opts.HoldCheckPeriod)
	defer holdCheck.Stop()
	// Tables flushed or deleted from outside are programmed again.
	tableCheck := time.NewTicker(a.opts.TableCheckPeriod)
	defer tableCheck.Stop()
	addrsNow := func() bool { return a.refreshLocalAddrs() && a.opts.Config.UntrackPodTCP }
	// The tc NAT's pod links follow the node's interfaces, neighbours and
	// bridge forwarding tables: notified by the kernel, refreshed at most
	// once a second (and with every sync and table check).
	linksChanged := make(chan struct{}, 1)
	var linksDue <-chan time.Time
	if a.tcnat != nil {
		go watchPodLinks(ctx, linksChanged, time.Second)
	}

	var last time.Time // the last sync's start
	backoff := time.Second
	// due fires when the next sync is due: MinSyncPeriod after the last
	// one once something changed, or, after a failure, when both the
	// backoff and MinSyncPeriod have passed. Changes do not bring a retry
	// forward: a failure is the kernel's, not an object's (the model
	// leaves bad objects out), and a stream of changes would otherwise
	// retry a failing full sync every MinSyncPeriod.
	var due <-chan time.Time
	for {
		now := false
		select {
		case <-addrCheck.C:
			now = addrsNow()
		case <-holdCheck.C:
			a.releaseHolds(ctx)
		case <-tableCheck.C:
			a.checkTables(ctx)
		case <-addrsChanged:
			now = addrsNow()
		case <-linksChanged:
			if linksDue == nil {
				linksDue = time.After(time.Second)
			}
		case <-linksDue:
			linksDue = nil
			a.refreshPodLinks()
		case <-ctx.Done():
			return nil
		case err := <-srcErr:
			if err != nil {
				return fmt.Errorf("source stopped: %w", err)
			}
			<-ctx.Done()
			return nil
		case <-a.kick:
			if due == nil {
				due = time.After(max(0, a.opts.MinSyncPeriod-time.Since(last)))
			}
		case <-due:
			due, now = nil, true
		}
		if !now || !a.sourceSynced() {
			// Objects may still be arriving; Synced kicks again when the
			// initial content is complete.
			continue
		}
		// This sync takes every change so far, including those whose kick
		// is still pending.
		due = nil
		select {
		case <-a.kick:
		default:
		}
		last = time.Now()
		// A sync runs to its end, also on SIGTERM: a full sync stopped
		// halfway would leave the rebuilt tables partly filled.
		err := a.sync(context.WithoutCancel(ctx))
		switch {
		case errors.Is(err, errNotSynced): // Synced will kick again
		case err != nil:
			wait := max(backoff, a.opts.MinSyncPeriod-time.Since(last))
			klog.ErrorS(err, "Sync failed; will retry", "after", wait)
			due = time.After(wait)
			backoff = min(2*backoff, 30*time.Second)
		default:
			backoff = time.Second
		}
	}
}

// syncTCNAT brings the tc NAT in step with st once nftables serves it:
// the programs on the node's interfaces, then the maps. An error leaves
// the connections it does not take to nftables, and makes the caller
// retry (the next Update compares everything). When the tc NAT is off,
// what an earlier agent left is removed instead.
func (a *Agent) syncTCNAT(st *model.State, delta model.Delta) error {
	if a.tcnat == nil {
		if !a.dropTCNAT {
			return nil
		}
		removed, err := tcnat.Cleanup(a.opts.TCNAT.PinDir)
		if err != nil {
			return fmt.Errorf("removing the tc NAT an earlier agent left: %w", err)
		}
		if removed {
			klog.InfoS("Removed the tc NAT an earlier agent left (the tc NAT is off)")
		}
		a.dropTCNAT = false
		return nil
	}
	a.tcAddrs = st.NodeAddrs(model.IPv4)
	attachErr := a.tcnat.Attach(a.tcAddrs)
	// The endpoints the rules keep tracked for connections still using
	// them stay out of direct delivery too.
	if err := a.tcnat.Hold(a.backend.heldEndpoints(model.IPv4)); err != nil {
		return errors.Join(attachErr, fmt.Errorf("updating the tc NAT: %w", err))
	}
	if err := a.tcnat.Update(st, delta); err != nil {
		return errors.Join(attachErr, fmt.Errorf("updating the tc NAT: %w", err))
	}
	if attachErr != nil {
		return fmt.Errorf("attaching the tc NAT: %w", attachErr)
	}
	return nil
}

// refreshPodLinks brings the tc NAT's programs and pod links in step with
// the node's interfaces, neighbour and bridge tables, once the first sync
// attached them: a new pod's link, a pod the node has met, a link that
// went. Like sync, it runs in the Run goroutine.
func (a *Agent) refreshPodLinks() {
	if a.tcnat == nil || !a.programmed {
		return
	}
	if err := a.tcnat.Attach(a.tcAddrs); err != nil {
		klog.ErrorS(err, "Refreshing the tc NAT's interfaces failed")
	}
}

// removeOther removes the rules the other datapaths left, and logs what
// it removed or why it failed. Like sync, it runs in the Run goroutine.
func (a *Agent) removeOther(ctx context.Context) {
	removed, err := a.backend.removeOther(ctx)
	if len(removed) > 0 {
		klog.InfoS("Removed the rules an agent with another datapath left", "datapath", a.backend.name(), "removed", removed)
	}
	if err != nil {
		klog.ErrorS(err, "Removing the rules of the other datapaths failed; retrying with the next table check", "datapath", a.backend.name())
		return
	}
	a.removedOther = true
}

// checkTables asks the backend whether its tables are still in the
// kernel and, when they were flushed or deleted from outside, has them
// programmed again: the backend's next sync is a full one, and the change
// counts for /healthz like any other. Like sync, it runs in the Run
// goroutine, the only one that uses the backend.
func (a *Agent) checkTables(ctx context.Context) {
	if a.programmed && !a.removedOther {
		a.removeOther(ctx)
	}
	a.refreshPodLinks()
	if a.tcnat != nil {
		if err := a.tcnat.Intact(); err != nil {
			klog.InfoS("Warning: the tc NAT's programs were removed from outside; attaching them again", "problem", err.Error())
			a.tcnat.Forget()
			a.mu.Lock()
			a.changed()
			a.mu.Unlock()
		}
	}
	ok, err := a.backend.intact(ctx)
	if err != nil {
		klog.ErrorS(err, "Checking that kubenat's tables are in place failed")
		return
	}
	if ok {
		return
	}
	klog.InfoS("Warning: kubenat's rules were flushed or deleted from outside (e.g. nft flush ruleset, iptables -F); programming them again", "datapath", a.backend.name())
	a.opts.Metrics.TablesRestored()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.changed()
}

// releaseHolds lets the backend let go of the held endpoints no connection
// uses any more. Like sync, it runs in the Run goroutine, the only one
// that uses the backend; it does not take mu, so the sources are not held
// up while conntrack is read.
func (a *Agent) releaseHolds(ctx context.Context) {
	before := a.backend.holds()
	if before == 0 {
		return
	}
	n, err := a.backend.releaseHolds(context.WithoutCancel(ctx))
	a.opts.Metrics.SetHeldEndpoints(n)
	if a.tcnat != nil && n < before {
		// After the rules: the tc NAT keeps them tracked no shorter.
		if err := a.tcnat.Hold(a.backend.heldEndpoints(model.IPv4)); err != nil {
			klog.ErrorS(err, "Releasing held endpoints from the tc NAT failed; retrying later")
		}
	}
	if err != nil {
		klog.ErrorS(err, "Releasing held endpoints failed; retrying later", "held", n)
		return
	}
	if n < before {
		klog.V(2).InfoS("Released held endpoints: their connections are closed", "released", before-n, "held", n)
	}
}

// setEgress applies a new egress masquerade configuration.
func (a *Agent) setEgress(e model.EgressConfig) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cfg := a.builder.Config()
	cfg.Egress = e
	a.builder.SetConfig(cfg)
	klog.InfoS("Applying a new masquerade configuration", "nonMasqueradeCIDRs", e.NonMasqueradeCIDRs,
		"masqLinkLocal", e.MasqLinkLocal, "masqLinkLocalIPv6", e.MasqLinkLocalIPv6)
	a.changed()
}

// serveHealthz serves /healthz and /livez, retrying while the address
// cannot be bound (e.g. while the previous agent is still exiting).
func (a *Agent) serveHealthz(ctx context.Context) {
	for {
		err := metrics.ServeHTTP(ctx, a.opts.HealthzBindAddress, metrics.CountResponses(a.opts.Metrics, a.health.Handler()))
		if ctx.Err() != nil {
			return
		}
		klog.ErrorS(err, "Health server failed; retrying", "address", a.opts.HealthzBindAddress)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// refreshLocalAddrs re-reads the node's addresses when the rules depend
// on them (model.Config.NeedsLocalAddrs) and records them if they changed,
// which it reports.
func (a *Agent) refreshLocalAddrs() bool {
	if !a.opts.Config.NeedsLocalAddrs() {
		return false
	}
	addrs, err := localAddrs()
	if err != nil {
		klog.ErrorS(err, "Reading the node's addresses failed")
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if slices.Equal(a.builder.Config().LocalAddrs, addrs) {
		return false
	}
	klog.InfoS("The node's addresses changed", "addresses", addrs)
	a.builder.SetLocalAddrs(addrs)
	a.changed()
	return true
}

// sourceSynced reports whether the source has delivered its initial
// content.
func (a *Agent) sourceSynced() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.synced
}

// errNotSynced is returned when the source has not delivered its initial
// content yet.
var errNotSynced = errors.New("the source has not delivered its initial content")

// sync builds the State and programs it.
func (a *Agent) sync(ctx context.Context) error {
	a.mu.Lock()
	if !a.synced {
		a.mu.Unlock()
		return errNotSynced
	}
	start := time.Now()
	st, delta := a.builder.Build()
	if a.unapplied != nil {
		delta, a.unapplied = a.unapplied.Then(delta), nil
	}
	a.report(st)
	// failed counts one failure per sync, whatever failed in it. A
	// balancer that failed and was turned off is one, and yet the sync
	// is a success (observed, and clearing /healthz's wait): nftables
	// serves every connection completely.
	failed := false
	// The socket load balancer takes new frontends before nftables stops
	// tracking their endpoints, and lets go of frontends only after
	// nftables serves them (see socketlb).
	if a.balancer != nil {
		if err := a.balancer.Update(st, delta); err != nil {
			// nftables alone serves the node from now on: its rules are
			// complete, and the untracked chain goes with this full sync
			// before the balancer is removed.
			klog.ErrorS(err, "The socket load balancer failed: turning it off, nftables serves every connection")
			failed = true
			a.dropPins = a.opts.SocketLB.PinDir
			_ = a.balancer.Close()
			a.balancer = nil
			cfg := a.builder.Config()
			cfg.SocketLB = false
			a.builder.SetConfig(cfg)
			var again model.Delta
			st, again = a.builder.Build()
			delta = delta.Then(again)
		}
	}
	// The tc NAT delivers pod-to-pod TCP past conntrack: an endpoint the
	// rules are about to DNAT pod traffic to leaves its reach first (see
	// tcnat.NAT.Track); the Update after the rules removes the others.
	var trackErr error
	if a.tcnat != nil {
		trackErr = a.tcnat.Track(st, delta)
	}
	// The backend only reads the changed Services of st, under the lock:
	// sources may not change the Builder meanwhile.
	var full bool
	var changes int
	var err error
	if errors.Is(trackErr, tcnat.ErrDelivering) {
		err = trackErr // the rules wait: they could break connections
	} else {
		full, changes, err = a.backend.sync(ctx, st, delta)
	}
	if err != nil {
		// The backend replaces everything on the next Sync; everything
		// else gets this Delta again with the next one (the balancer's
		// removals, for one, were not applied).
		a.unapplied = &delta
		a.mu.Unlock()
		a.opts.Metrics.SyncFailed()
		return err
	}
	// The other datapaths' rules (an agent switched from one to another)
	// go once this one serves every Service: kubenat's nftables DNAT runs
	// before iptables' nat chains and would shadow them. Before the
	// balancer's pins, so that the untracked chain goes first. Once: a
	// failure is tried again with the table checks.
	if !a.programmed {
		a.removeOther(ctx)
	}
	// A balancer left pinned keeps rewriting connects from maps nobody
	// updates: the error makes the caller retry soon, as for a prune.
	var pinsErr error
	if a.dropPins != "" {
		if _, err := socketlb.Cleanup(a.dropPins); err != nil {
			pinsErr = fmt.Errorf("removing the socket load balancer pinned in %s: %w", a.dropPins, err)
		} else {
			a.dropPins = ""
		}
	}
	// A failed prune leaves frontends nftables serves anyway: the sync
	// is complete, and returning the error makes the caller retry (the
	// balancer then compares everything).
	tcErr := errors.Join(trackErr, a.syncTCNAT(st, delta))
	var pruneErr error
	frontends := 0
	if a.balancer != nil {
		if err := a.balancer.Prune(); err != nil {
			pruneErr = fmt.Errorf("pruning the socket load balancer: %w", err)
		}
		frontends = a.balancer.Frontends()
	}
	a.opts.Metrics.SetSocketLBFrontends(frontends)
	a.opts.Metrics.SetHeldEndpoints(a.backend.holds())
	// The rules are programmed; the sync succeeded when the balancer and
	// the tc NAT are up to date too. Until then its timings are not a success's and
	// /healthz keeps counting the wait: a balancer that cannot be
	// updated turns the node unhealthy after the health timeout.
	ok := pinsErr == nil && pruneErr == nil && tcErr == nil
	if failed || !ok {
		a.opts.Metrics.SyncFailed()
	}
	a.observe(st, delta, full, ok, start)
	services := len(st.Services)
	if ok {
		a.health.Updated()
	}
	a.updateServiceHealth(st, delta)
	var stale []conntrack.Rule
	if a.programmed {
		stale = conntrack.Plan(st, delta)
	}
	first := !a.programmed
	a.programmed = true
	a.mu.Unlock()
	if full || changes > 0 {
		klog.InfoS("Programmed "+a.backend.name(), "full", full, "changedServices", len(delta.Changed),
			a.backend.unit(), changes, "services", services, "duration", time.Since(start))
	}
	if first {
		a.tuneConntrack()
	}
	a.clearConntrack(stale)
	if full {
		// A full sync's transient garbage (every element as text, the
		// scripts) is the agent's peak: give it back to the system rather
		// than keep it as idle heap (at 50,000 Services RSS drops by ~40 %
		// for one garbage collection).
		go debug.FreeOSMemory()
	}
	return errors.Join(pinsErr, pruneErr, tcErr)
}

// tuneConntrack sets the configured conntrack sysctls and logs what it
// changed and what it could not set.
func (a *Agent) tuneConntrack() {
	changes, err := a.opts.Conntrack.Apply()
	for _, c := range changes {
		klog.InfoS("Set conntrack sysctl", "name", c.Name, "old", c.Old, "new", c.New)
	}
	if err != nil {
		klog.ErrorS(err, "Some conntrack sysctls were not set (the conntrack options; 0 leaves a setting alone)")
	}
}

// updateServiceHealth starts, updates and stops the healthCheckNodePort
// servers of the changed Services. Called with a.mu held.
func (a *Agent) updateServiceHealth(st *model.State, d model.Delta) {
	if a.svcHealth == nil {
		return
	}
	keys := d.Changed
	if d.Full {
		keys = st.SortedKeys()
		for _, k := range a.svcHealth.Services() {
			if _, ok := st.Services[k]; !ok {
				keys = append(keys, k)
			}
		}
	}
	for _, k := range keys {
		a.svcHealth.Update(k, healthcheck.InfoOf(st.Services[k]))
	}
	a.svcHealth.Retry()
}

// clearConntrack deletes the UDP conntrack entries the last sync made
// stale. Failures are logged: the rules are programmed either way.
func (a *Agent) clearConntrack(rules []conntrack.Rule) {
	if a.cleaner == nil || len(rules) == 0 {
		return
	}
	n, err := a.cleaner.Clear(rules)
	if err != nil {
		klog.ErrorS(err, "Clearing stale UDP conntrack entries failed, in part", "deleted", n)
	}
	for _, r := range rules {
		klog.V(2).InfoS("Cleared conntrack entries", "reason", r.Why, "frontends", r.Frontends, "endpoints", r.Endpoints)
	}
	if n > 0 {
		klog.InfoS("Deleted stale UDP conntrack entries", "count", n)
		a.opts.Metrics.ConntrackEntriesDeleted(n)
	}
}

// observe reports a sync whose rules were programmed to the metrics; its
// duration and time only when the whole sync succeeded (ok). The caller
// holds mu.
func (a *Agent) observe(st *model.State, delta model.Delta, full, ok bool, start time.Time) {
	now := time.Now()
	m := a.opts.Metrics
	if ok {
		m.ObserveSync(full, now.Sub(start))
	}
	for _, t := range a.triggers.Take() {
		m.ObserveNetworkProgramming(now.Sub(t))
	}
	a.pending = 0
	m.SetPendingChanges(0)
	m.SetProgrammed(a.counter.Update(st, delta))
	m.SetInvalidObjects(len(a.sourceErrs) + len(st.Errors))
}

// report logs input problems not reported before, and records those about
// a Service as a Warning event on it.
func (a *Agent) report(st *model.State) {
	now := map[string]bool{}
	for _, w := range a.warnings {
		if !a.reported[w] {
			klog.InfoS("Skipped input", "detail", w)
		}
		now[w] = true
	}
	for _, w := range st.Warnings() {
		if !a.reported[w] {
			klog.InfoS("Warning: the configuration", "detail", w)
		}
		now[w] = true
	}
	for _, list := range [][]error{a.sourceErrs, st.Errors} {
		for _, e := range list {
			msg := e.Error()
			if !a.reported[msg] {
				klog.ErrorS(nil, "Invalid input; the other objects are served", "problem", msg)
				var oe *model.ObjectError
				if errors.As(e, &oe) && oe.Kind == "Service" {
					detail := oe.Msg
					if oe.Field != "" {
						detail = oe.Field + ": " + detail
					}
					a.opts.Events.Eventf(model.ServiceKey{Namespace: oe.Namespace, Name: oe.Name},
						v1.EventTypeWarning, "NotProgrammed", "%s", detail)
				}
			}
			now[msg] = true
		}
	}
	a.reported = now
}

// changed records a change and wakes Run. The health clock starts once
// the source has delivered its initial content (Synced calls changed): a
// slow initial list is not a sync falling behind, and /livez failing then
// would only restart the agent into the same list. Called with mu held.
func (a *Agent) changed() {
	if a.synced {
		a.health.QueuedUpdate()
	}
	a.pending++
	a.opts.Metrics.SetPendingChanges(a.pending)
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// SetService implements Sink.
func (a *Agent) SetService(svc *v1.Service, origin string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.builder.SetService(svc, origin)
	a.changed()
}

// DeleteService implements Sink.
func (a *Agent) DeleteService(namespace, name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.builder.DeleteService(model.ServiceKey{Namespace: namespace, Name: name})
	a.changed()
}

// SetEndpointSlice implements Sink.
func (a *Agent) SetEndpointSlice(s *discovery.EndpointSlice, origin string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.builder.SetEndpointSlice(s, origin)
	a.triggers.SliceChanged(s.Namespace, s.Name, s.Annotations)
	a.changed()
}

// DeleteEndpointSlice implements Sink.
func (a *Agent) DeleteEndpointSlice(namespace, name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.builder.DeleteEndpointSlice(namespace, name)
	a.triggers.SliceDeleted(namespace, name)
	a.changed()
}

// SetNode implements Sink.
// Whether the node may take load-balanced traffic (/healthz) follows
// the Node at once, as kube-proxy's does, not after the full sync a Node
// change causes.
func (a *Agent) SetNode(n *v1.Node, origin string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if n.Name == a.builder.Config().NodeName {
		a.health.SetNodeEligible(!model.NodeTerminating(n))
	}
	a.builder.SetNode(n, origin)
	a.changed()
}

// DeleteNode implements Sink.
// Without its Node object the node is eligible again, as SetNode's rule
// gives for no object.
func (a *Agent) DeleteNode(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if name == a.builder.Config().NodeName {
		a.health.SetNodeEligible(true)
	}
	a.builder.DeleteNode(name)
	a.changed()
}

// SetServiceCIDR implements Sink.
func (a *Agent) SetServiceCIDR(sc *networkingv1.ServiceCIDR, origin string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.builder.SetServiceCIDR(sc, origin)
	a.changed()
}

// DeleteServiceCIDR implements Sink.
func (a *Agent) DeleteServiceCIDR(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.builder.DeleteServiceCIDR(name)
	a.changed()
}

// SourceErrors implements Sink. A change of them alone (a manifest file broken, its previous content
// kept) is a change: the next sync reports it (log, events, the
// invalid-objects metric).
func (a *Agent) SourceErrors(errs []error, warnings []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	same := slices.Equal(warnings, a.warnings) &&
		slices.EqualFunc(errs, a.sourceErrs, func(x, y error) bool { return x.Error() == y.Error() })
	a.sourceErrs, a.warnings = errs, warnings
	if !same && a.synced {
		a.changed()
	}
}

// Synced implements Sink.
func (a *Agent) Synced() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.synced {
		a.synced = true
		a.changed()
	}
}
