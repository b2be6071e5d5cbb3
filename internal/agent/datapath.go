package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/kubenat/kubenat/internal/dataplane/iptables"
	"github.com/kubenat/kubenat/internal/dataplane/nftables"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/nft"
)

// datapath is the backend that programs the State: nftables (the default)
// or iptables. Only the Run goroutine uses it.
type datapath interface {
	// name is the datapath's name, for logs.
	name() string
	// unit names what sync counts: "elements" or "chains".
	unit() string
	// sync makes the kernel match st (see nftables.Backend.Sync); it
	// returns whether everything was rewritten and how many elements or
	// chains changed.
	sync(ctx context.Context, st *model.State, d model.Delta) (full bool, changes int, err error)
	// intact reports whether the programmed rules are still in the
	// kernel; when not, the next sync is a full one.
	intact(ctx context.Context) (bool, error)
	// holds, heldEndpoints and releaseHolds: see nftables.Backend.Holds.
	holds() int
	heldEndpoints(f model.Family) []netip.AddrPort
	releaseHolds(ctx context.Context) (int, error)
	// removeOther removes the rules the other datapaths left (an agent
	// switched from one to another), and says what it removed.
	removeOther(ctx context.Context) ([]string, error)
}

// nftDatapath is the nftables datapath.
type nftDatapath struct {
	b *nftables.Backend
	// ipt remove kubenat's iptables chains, one per variant of the
	// iptables commands installed (none: there are none).
	ipt []iptables.Runner
}

func (d nftDatapath) name() string { return "nftables" }
func (d nftDatapath) unit() string { return "elements" }

func (d nftDatapath) sync(ctx context.Context, st *model.State, delta model.Delta) (bool, int, error) {
	res, err := d.b.Sync(ctx, st, delta)
	return res.Full, res.Elements, err
}

func (d nftDatapath) intact(context.Context) (bool, error) { return d.b.Intact() }
func (d nftDatapath) holds() int                           { return d.b.Holds() }
func (d nftDatapath) heldEndpoints(f model.Family) []netip.AddrPort {
	return d.b.HeldEndpoints(f)
}
func (d nftDatapath) releaseHolds(ctx context.Context) (int, error) {
	return d.b.ReleaseHolds(ctx)
}

// removeOther removes kubenat's iptables chains.
func (d nftDatapath) removeOther(ctx context.Context) ([]string, error) {
	return removeChains(ctx, d.ipt, nil)
}

// removeChains removes kubenat's iptables chains with each runner, and
// adds what it removed to removed.
func removeChains(ctx context.Context, runners []iptables.Runner, removed []string) ([]string, error) {
	for _, r := range runners {
		ok, err := iptables.Cleanup(ctx, r)
		if ok {
			removed = append(removed, "the iptables chains ("+r.Names()+")")
		}
		if err != nil {
			return removed, fmt.Errorf("removing kubenat's iptables chains (%s): %w", r.Names(), err)
		}
	}
	return removed, nil
}

// iptDatapath is the iptables datapath.
type iptDatapath struct {
	// datapath is the configured name: iptables, iptables-nft or
	// iptables-legacy.
	datapath string
	b        *iptables.Backend
	// nft removes the nftables tables; nil when nftables cannot be used
	// here (then there are none).
	nft     nft.Runner
	nftOpts nftables.Options
	// others remove the chains of the other iptables variant.
	others []iptables.Runner
}

func (d iptDatapath) name() string { return d.datapath }
func (d iptDatapath) unit() string { return "chains" }

func (d iptDatapath) sync(ctx context.Context, st *model.State, delta model.Delta) (bool, int, error) {
	res, err := d.b.Sync(ctx, st, delta)
	return res.Full, res.Chains, err
}

func (d iptDatapath) intact(ctx context.Context) (bool, error)    { return d.b.Intact(ctx) }
func (d iptDatapath) holds() int                                  { return 0 }
func (d iptDatapath) heldEndpoints(model.Family) []netip.AddrPort { return nil }
func (d iptDatapath) releaseHolds(context.Context) (int, error) {
	return 0, nil
}

// removeOther removes kubenat's nftables tables (they would take every
// Service first: their DNAT runs before iptables' nat chains) and the
// other iptables variant's chains. A kernel without nf_tables (libnftables
// loads, the kernel refuses every table) has no tables to remove.
func (d iptDatapath) removeOther(ctx context.Context) ([]string, error) {
	var removed []string
	var nftErr error
	if d.nft != nil {
		ok, err := nftables.Cleanup(ctx, d.nft, d.nftOpts)
		switch {
		case err != nil && !nft.Unsupported(err):
			nftErr = fmt.Errorf("removing the nftables datapath's tables: %w", err)
		case ok && err == nil:
			removed = append(removed, "the nftables tables")
		}
	}
	removed, err := removeChains(ctx, d.others, removed)
	return removed, errors.Join(nftErr, err)
}
