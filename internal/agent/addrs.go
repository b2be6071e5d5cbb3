package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"
)

// localAddrs returns the unicast addresses configured on this network
// namespace's interfaces (model.Config.LocalAddrs), sorted.
func localAddrs() ([]netip.Addr, error) {
	list, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() {
			continue
		}
		out = append(out, ip)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out), nil
}

// LocalAddrs returns the unicast addresses configured on this network
// namespace's interfaces, as the agent reads them into Config.LocalAddrs:
// without loopback, link-local and multicast addresses, sorted. Tools that
// must see the node as the agent does (kubenat trace --live) use it.
func LocalAddrs() ([]netip.Addr, error) { return localAddrs() }

// watchAddrs signals on changed each time an address is added to or
// removed from an interface of this network namespace (see watch).
func watchAddrs(ctx context.Context, changed chan<- struct{}, retry time.Duration) {
	watch(ctx, "the node's addresses", changed, retry, func(ch chan netlink.AddrUpdate, done chan struct{}, onErr func(error)) error {
		return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr, ReceiveBufferSize: rcvBuf})
	})
}

// watchPodLinks signals on changed each time an interface of this network
// namespace comes or goes, or its neighbour or bridge forwarding tables
// change: what the tc NAT's pod links are learnt from (see watch).
func watchPodLinks(ctx context.Context, changed chan<- struct{}, retry time.Duration) {
	go watch(ctx, "the node's interfaces", changed, retry, func(ch chan netlink.LinkUpdate, done chan struct{}, onErr func(error)) error {
		return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr, ReceiveBufferSize: rcvBuf})
	})
	watch(ctx, "the node's neighbours", changed, retry, func(ch chan netlink.NeighUpdate, done chan struct{}, onErr func(error)) error {
		return netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{ErrorCallback: onErr, ReceiveBufferSize: rcvBuf})
	})
}

// rcvBuf is the receive buffer of the subscriptions: room for a burst (a
// CNI configuring many interfaces) before the kernel drops
// notifications, which ends the subscription (the watch then subscribes
// again and signals). The kernel caps it at net.core.rmem_max; forcing
// it past that needs CAP_NET_ADMIN, and a refusal would end every
// subscription.
const rcvBuf = 1 << 20

// watch signals on changed each time a notification arrives on a
// subscription open makes (about what), and once after each subscription
// (for changes made while none was open), until ctx ends. A signal is
// never waited for: one pending signal stands for any number of changes.
// A subscription that fails is opened again after retry; the agent's
// periodic checks cover the gap.
func watch[T any](ctx context.Context, what string, changed chan<- struct{}, retry time.Duration,
	open func(ch chan T, done chan struct{}, onErr func(error)) error) {
	for {
		err := subscribe(ctx, what, changed, open)
		if ctx.Err() != nil {
			return
		}
		klog.ErrorS(err, "Watching "+what+" failed; subscribing again", "after", retry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// subscribe is one subscription of watch. It returns when ctx ends, or
// with an error when the subscription fails or ends.
func subscribe[T any](ctx context.Context, what string, changed chan<- struct{},
	open func(ch chan T, done chan struct{}, onErr func(error)) error) error {
	updates := make(chan T, 64)
	done := make(chan struct{})
	err := open(updates, done, func(err error) {
		if ctx.Err() == nil {
			klog.ErrorS(err, "Reading the changes of "+what)
		}
	})
	if err != nil {
		close(done)
		return fmt.Errorf("subscribing to the changes of %s: %w", what, err)
	}
	defer func() {
		close(done) // closes the socket: the receiver ends and closes updates
		for range updates {
		}
	}()
	notify(changed)
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-updates:
			if !ok {
				return fmt.Errorf("the subscription to the changes of %s ended", what)
			}
			notify(changed)
		}
	}
}

// notify signals on c unless a signal is already pending.
func notify(c chan<- struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// DefaultRouteAddrs returns, per family, the source address this network
// namespace uses for its default route: the node's primary addresses when
// neither --node-ip nor the Node object gives them. A family without a
// default route is left out.
func DefaultRouteAddrs() []netip.Addr {
	var out []netip.Addr
	// Route lookups only (no packet is sent) for addresses outside any
	// private range, so the default route answers.
	for _, probe := range []string{"8.8.8.8", "2001:4860:4860::8888"} {
		dst := netip.MustParseAddr(probe)
		routes, err := netlink.RouteGet(dst.AsSlice())
		if err != nil {
			continue
		}
		for _, r := range routes {
			if src, ok := netip.AddrFromSlice(r.Src); ok && !src.IsUnspecified() && !src.IsLoopback() {
				out = append(out, src.Unmap())
				break
			}
		}
	}
	return out
}
