package agent

import (
	"context"
	"fmt"

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
	// sync makes the kernel match st (see nftables.Backend.Sync); it
	// returns whether everything was rewritten and how many elements or
	// chains changed.
	sync(ctx context.Context, st *model.State, d model.Delta) (full bool, changes int, err error)
	// intact reports whether the programmed rules are still in the
	// kernel; when not, the next sync is a full one.
	intact(ctx context.Context) (bool, error)
	// holds and releaseHolds: see nftables.Backend.Holds.
	holds() int
	releaseHolds(ctx context.Context) (int, error)
	// removeOther removes the rules the other datapath left (an agent
	// switched from one to the other), and reports whether there were
	// any.
	removeOther(ctx context.Context) (bool, error)
}

// nftDatapath is the nftables datapath.
type nftDatapath struct {
	b *nftables.Backend
	// ipt remove kubenat's iptables chains, one per variant of the
	// iptables commands installed (none: there are none).
	ipt []iptables.Runner
}

func (d nftDatapath) name() string { return "nftables" }

func (d nftDatapath) sync(ctx context.Context, st *model.State, delta model.Delta) (bool, int, error) {
	res, err := d.b.Sync(ctx, st, delta)
	return res.Full, res.Elements, err
}

func (d nftDatapath) intact(context.Context) (bool, error) { return d.b.Intact() }
func (d nftDatapath) holds() int                           { return d.b.Holds() }
func (d nftDatapath) releaseHolds(ctx context.Context) (int, error) {
	return d.b.ReleaseHolds(ctx)
}

// removeOther removes kubenat's iptables chains.
func (d nftDatapath) removeOther(ctx context.Context) (bool, error) {
	return removeChains(ctx, d.ipt)
}

// removeChains removes kubenat's iptables chains with each runner.
func removeChains(ctx context.Context, runners []iptables.Runner) (bool, error) {
	removed := false
	for _, r := range runners {
		n, err := iptables.Cleanup(ctx, r)
		removed = removed || n
		if err != nil {
			return removed, fmt.Errorf("removing kubenat's iptables chains: %w", err)
		}
	}
	return removed, nil
}

// iptDatapath is the iptables datapath.
type iptDatapath struct {
	b *iptables.Backend
	// nft removes the nftables tables; nil when nftables cannot be used
	// here (then there are none).
	nft     nft.Runner
	nftOpts nftables.Options
	// others remove the chains of the other iptables variant.
	others []iptables.Runner
}

func (d iptDatapath) name() string { return "iptables" }

func (d iptDatapath) sync(ctx context.Context, st *model.State, delta model.Delta) (bool, int, error) {
	res, err := d.b.Sync(ctx, st, delta)
	return res.Full, res.Chains, err
}

func (d iptDatapath) intact(ctx context.Context) (bool, error) { return d.b.Intact(ctx) }
func (d iptDatapath) holds() int                               { return 0 }
func (d iptDatapath) releaseHolds(context.Context) (int, error) {
	return 0, nil
}

// removeOther removes kubenat's nftables tables (they would take every
// Service first: their DNAT runs before iptables' nat chains) and the
// other iptables variant's chains.
func (d iptDatapath) removeOther(ctx context.Context) (bool, error) {
	removed := false
	if d.nft != nil {
		var err error
		if removed, err = nftables.Cleanup(ctx, d.nft, d.nftOpts); err != nil {
			return removed, fmt.Errorf("removing the nftables datapath's tables: %w", err)
		}
	}
	chains, err := removeChains(ctx, d.others)
	return removed || chains, err
}
