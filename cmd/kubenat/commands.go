package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kubenat/kubenat/internal/agent"
	"github.com/kubenat/kubenat/internal/config"
	"github.com/kubenat/kubenat/internal/dataplane/iptables"
	"github.com/kubenat/kubenat/internal/dataplane/nftables"
	"github.com/kubenat/kubenat/internal/dataplane/socketlb"
	"github.com/kubenat/kubenat/internal/dataplane/tcnat"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/nft"
	"github.com/kubenat/kubenat/internal/trace/live"
)

func newAgentCmd() *cobra.Command {
	var once bool
	var configFile, writeConfigTo string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Program this node's kernel from Services, EndpointSlices and the Node, and keep it up to date",
		Long: `agent programs this node's nftables from Kubernetes objects and keeps them up to
date. The objects come from exactly one source: the Kubernetes API
(--kubeconfig, or the in-cluster configuration when run in a pod) or a
directory of manifests (--manifests). Nothing is programmed before the source
has delivered its complete content. With --once it syncs once and exits. On
SIGTERM it exits and leaves the rules in place, so established connections
survive a restart.

Settings come from --config (a KubenatConfiguration file) and flags; a flag
given on the command line overrides the file. --write-config-to prints the
effective configuration and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := agentConfig(cmd.ErrOrStderr(), cmd.Flags(), configFile)
			if err != nil {
				return err
			}
			if writeConfigTo != "" {
				return writeConfig(cmd.OutOrStdout(), cfg, writeConfigTo)
			}
			return runAgent(cmd.Context(), cfg, once)
		},
	}
	registerInputFlags(cmd.Flags(), &configFile)
	cmd.Flags().BoolVar(&once, "once", false, "sync once and exit")
	cmd.Flags().StringVar(&writeConfigTo, "write-config-to", "", `write the effective configuration to this file ("-" for stdout) and exit`)
	return cmd
}

func newRenderCmd() *cobra.Command {
	var configFile string
	cmd := &cobra.Command{
		Use:   "render",
		Short: "Print the ruleset the agent would program (no root needed)",
		Long: `render prints exactly the ruleset "kubenat agent" programs for the same
inputs, in nft syntax, or with --datapath iptables as iptables-restore input
(IPv4, then IPv6; the jumps from the built-in chains are listed first as
comments): it takes the agent's flags and configuration file, and reads
the same source (--manifests or the Kubernetes API). Problems in the input are
reported on stderr; the objects they concern are left out and the rest is
rendered. The one input it does not read is the addresses of this machine's
interfaces, which the agent follows when --nodeport-addresses has CIDRs and
for the untracked rule's node-addrs set: render uses the node's addresses
alone (--node-ip, else the Node object's, else the source addresses of this
machine's default routes, as the agent does), so that it can run anywhere.
Without a Node object named --node-name, render says what it assumed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var datapath string
			st, err := loadState(cmd.Context(), cmd.ErrOrStderr(), cmd.Flags(), configFile, func(cfg *config.Configuration, _ *model.Config) error {
				datapath = cfg.Datapath
				return nil
			})
			if err != nil {
				return err
			}
			if variant, ok := iptables.DatapathVariant(datapath); ok {
				fmt.Fprint(cmd.OutOrStdout(), iptables.RenderText(st, iptables.Options{}, iptables.Exec{Variant: variant}))
				return nil
			}
			fmt.Fprint(cmd.OutOrStdout(), nftables.Render(st, nftables.Options{}))
			return nil
		},
	}
	registerInputFlags(cmd.Flags(), &configFile)
	return cmd
}

// registerInputFlags defines the flags that describe the node and where its
// objects come from, shared by agent, render and trace: every configuration
// field's flag and --config.
func registerInputFlags(fs *pflag.FlagSet, configFile *string) {
	config.RegisterFlags(fs)
	fs.StringVar(configFile, "config", "", "KubenatConfiguration file (apiVersion kubenat.io/v1alpha1); flags override it")
}

// loadState reads the configured source once and builds the State,
// printing input problems, and what it assumed without a Node object, to
// stderr. tweaks adjust the model configuration first (e.g. with what only
// the node itself knows).
func loadState(ctx context.Context, stderr io.Writer, fs *pflag.FlagSet, configFile string, tweaks ...func(*config.Configuration, *model.Config) error) (*model.State, error) {
	cfg, err := agentConfig(stderr, fs, configFile)
	if err != nil {
		return nil, err
	}
	mc, err := cfg.ModelConfig()
	if err != nil {
		return nil, err
	}
	mc.FallbackNodeIPs = agent.DefaultRouteAddrs()
	if err := setTCNATPorts(cfg, &mc); err != nil {
		return nil, err
	}
	for _, tweak := range tweaks {
		if err := tweak(cfg, &mc); err != nil {
			return nil, err
		}
	}
	src, _, _, err := newSource(cfg, mc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, onceTimeout)
	defer cancel()
	snap, err := agent.Collect(ctx, mc, src)
	if err != nil {
		return nil, err
	}
	for _, w := range append(slices.Clip(snap.Warnings), snap.State.Warnings()...) {
		fmt.Fprintln(stderr, "warning:", w)
	}
	if !snap.NodeFound {
		fmt.Fprintf(stderr, "warning: no Node object named %q (--node-name): NodePorts are served on %s, and this node's pods are recognized by %s\n",
			mc.NodeName, describeAddrs(snap.State.Node.Addrs), localPodsBy(snap.State))
	}
	for _, e := range append(snap.SourceErrors, snap.State.Errors...) {
		fmt.Fprintln(stderr, "error:", e)
	}
	return snap.State, nil
}

// describeAddrs lists addresses, or says there are none.
func describeAddrs(addrs []netip.Addr) string {
	if len(addrs) == 0 {
		return "no address"
	}
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		parts[i] = a.String()
	}
	return strings.Join(parts, ", ")
}

// localPodsBy says how the State recognizes this node's pods.
func localPodsBy(st *model.State) string {
	if d := st.Config.LocalDetect; d.ByInterface() {
		return "the packets " + d.Describe()
	}
	var cidrs []string
	for _, f := range model.Families {
		for _, p := range st.LocalPodCIDRs(f) {
			cidrs = append(cidrs, p.String())
		}
	}
	if len(cidrs) == 0 {
		return "no CIDR"
	}
	return "the CIDRs " + strings.Join(cidrs, ", ")
}

func newCleanupCmd() *cobra.Command {
	pinDir := config.DefaultBPFPinDir
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove everything kubenat programmed in the kernel, and nothing else",
		Long: `cleanup removes what kubenat programs in this network namespace's kernel:
its nftables tables ("ip kubenat", "ip6 kubenat", and the standby tables an
interrupted full sync may leave), the table a killed "kubenat trace --live"
may leave, its iptables chains (those named KUBENAT-* in the nat, mangle and
filter tables of iptables and ip6tables, and the rules jumping to them,
through iptables-nft and iptables-legacy; it warns when chains may be where
a variant that is not installed would have to look), and the
socket load balancer pinned in --bpf-pin-dir. Nothing else is touched: not
kube-proxy's or anyone else's rules, and not the conntrack sysctls the agent
set (they keep their values).

Stop the agent first: a running agent programs its rules again within
its --sync-period. Connections through Services break once the rules are
gone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cleanup(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), pinDir)
		},
	}
	cmd.Flags().StringVar(&pinDir, "bpf-pin-dir", pinDir, "directory where the socket load balancer and the tc NAT's connections are pinned")
	return cmd
}

// cleanup removes what kubenat programmed here (see newCleanupCmd). Each
// part runs even when another fails; the errors are joined.
func cleanup(ctx context.Context, out, stderr io.Writer, pinDir string) error {
	var errs []error
	done := false
	say := func(format string, args ...any) {
		done = true
		fmt.Fprintf(out, format+"\n", args...)
	}
	ipt := iptables.Installed("")
	run, err := nft.New()
	if err != nil {
		fmt.Fprintln(stderr, "note: nftables cannot be used here, so no nftables table is looked for:", err)
		run = nil
	} else {
		// The tables first, as the agent does: with the untracked chain
		// gone, connects the balancer no longer rewrites are DNATed and
		// tracked; the other way round, their replies would be untracked
		// for a moment.
		switch removed, err := nftables.Cleanup(ctx, run, nftables.Options{}); {
		case nft.Unsupported(err):
			run = nil // a kernel without nf_tables: no table to remove
		case err != nil:
			errs = append(errs, err)
		case removed:
			say("removed the kubenat tables (ip, ip6)")
		}
	}
	if run != nil {
		switch traced, err := live.Cleanup(ctx, run); {
		case err != nil:
			errs = append(errs, err)
		case traced:
			say("removed the table of a live trace (%s)", live.Table)
		}
	}
	for _, e := range ipt {
		switch removed, err := iptables.Cleanup(ctx, e); {
		case err != nil:
			errs = append(errs, err)
		case removed:
			say("removed the kubenat iptables chains (%s)", e.Names())
		}
	}
	// The tc NAT's pins first: they are in a directory under pinDir.
	switch removed, err := tcnat.Cleanup(config.TCNATPinDir(pinDir)); {
	case err != nil:
		errs = append(errs, err)
	case removed:
		say("removed the tc NAT (its filters on the node's interfaces, its connections pinned in %s)", config.TCNATPinDir(pinDir))
	}
	switch unpinned, err := socketlb.Cleanup(pinDir); {
	case err != nil:
		errs = append(errs, err)
	case unpinned:
		say("removed the socket load balancer pinned in %s", pinDir)
	}
	missed := uncheckedIPTables(ctx, run, ipt)
	for _, m := range missed {
		fmt.Fprintln(stderr, "warning:", m)
	}
	if !done && len(errs) == 0 && len(missed) == 0 {
		fmt.Fprintln(out, "nothing to remove: kubenat has nothing programmed here")
	}
	return errors.Join(errs...)
}

// uncheckedIPTables says where kubenat's iptables chains may be that
// cleanup could not look into, because a variant of the iptables commands
// is not installed: chains of kubenat's seen through nft (iptables-nft's
// tables are nftables tables), and legacy tables in this namespace
// (/proc/net/ip_tables_names), which may hold them.
func uncheckedIPTables(ctx context.Context, run nft.Runner, installed []iptables.Exec) []string {
	have := map[string]bool{}
	for _, e := range installed {
		kind, err := e.Kind(ctx)
		if err == nil && kind != "" {
			have[kind] = true
		}
	}
	var out []string
	if !have["nft"] && run != nil {
		for _, table := range []string{"ip nat", "ip mangle", "ip filter", "ip6 nat", "ip6 mangle", "ip6 filter"} {
			if list, err := run.Run(ctx, "list chains "+table); err == nil && strings.Contains(list, "chain "+iptables.Prefix) {
				out = append(out, fmt.Sprintf("kubenat's iptables chains are in %s (iptables-nft), but iptables-nft is not installed to remove them", table))
				break
			}
		}
	}
	if !have["legacy"] {
		for _, names := range []string{"/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"} {
			if b, err := os.ReadFile(names); err == nil && len(strings.TrimSpace(string(b))) > 0 {
				out = append(out, "legacy iptables tables exist here ("+names+"), which may hold kubenat's chains, but iptables-legacy is not installed to look")
				break
			}
		}
	}
	return out
}
