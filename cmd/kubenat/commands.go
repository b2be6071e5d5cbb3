package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kubenat/kubenat/internal/agent"
	"github.com/kubenat/kubenat/internal/config"
	"github.com/kubenat/kubenat/internal/dataplane/nftables"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/nft"
	"github.com/kubenat/kubenat/internal/source/manifest"
)

func newAgentCmd() *cobra.Command {
	var nf nodeFlags
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
			cfg, err := agentConfig(cmd.Flags(), configFile)
			if err != nil {
				return err
			}
			if writeConfigTo != "" {
				return writeConfig(cmd.OutOrStdout(), cfg, writeConfigTo)
			}
			return runAgent(cmd.Context(), cfg, once)
		},
	}
	nf.register(cmd.Flags())
	config.RegisterFlags(cmd.Flags())
	cmd.Flags().BoolVar(&once, "once", false, "sync once and exit")
	cmd.Flags().StringVar(&configFile, "config", "", "KubenatConfiguration file (apiVersion kubenat.io/v1alpha1); flags override it")
	cmd.Flags().StringVar(&writeConfigTo, "write-config-to", "", `write the effective configuration to this file ("-" for stdout) and exit`)
	return cmd
}

func newRenderCmd() *cobra.Command {
	var nf nodeFlags
	cmd := &cobra.Command{
		Use:   "render",
		Short: "Print the nftables ruleset the agent would program (no root needed)",
		Long: `render prints, in nft syntax, exactly the ruleset "kubenat agent" programs for
the same inputs. Problems in the input are reported on stderr; the objects
they concern are left out and the rest is rendered.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := loadState(&nf)
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), nftables.Render(st, nftables.Options{}))
			return nil
		},
	}
	nf.register(cmd.Flags())
	return cmd
}

// loadState reads the manifests once and builds the State, printing input
// problems to stderr. tweaks adjust the configuration first (e.g. with what
// only the node itself knows).
func loadState(nf *nodeFlags, tweaks ...func(*model.Config) error) (*model.State, error) {
	cfg, err := nf.config()
	if err != nil {
		return nil, err
	}
	for _, tweak := range tweaks {
		if err := tweak(&cfg); err != nil {
			return nil, err
		}
	}
	if nf.manifests == "" {
		return nil, errors.New("--manifests is required")
	}
	cfg.FallbackNodeIPs = agent.DefaultRouteAddrs()
	snap, err := manifest.NewReader(nf.manifests).Read()
	if err != nil {
		return nil, err
	}
	b := model.NewBuilder(cfg)
	for _, n := range snap.Nodes {
		b.SetNode(n, snap.Origins[manifest.Ref{Kind: "Node", Name: n.Name}])
	}
	for _, s := range snap.Services {
		b.SetService(s, snap.Origins[manifest.Ref{Kind: "Service", Namespace: s.Namespace, Name: s.Name}])
	}
	for _, s := range snap.EndpointSlices {
		b.SetEndpointSlice(s, snap.Origins[manifest.Ref{Kind: "EndpointSlice", Namespace: s.Namespace, Name: s.Name}])
	}
	st, _ := b.Build()
	for _, w := range snap.Warnings {
		fmt.Fprintln(os.Stderr, "warning:", w)
	}
	for _, e := range append(snap.Errors, st.Errors...) {
		fmt.Fprintln(os.Stderr, "error:", e)
	}
	return st, nil
}

func newCleanupCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cleanup",
		Short: "Remove everything kubenat programmed in the kernel, and nothing else",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			run, err := nft.New()
			if err != nil {
				return err
			}
			if err := nftables.Cleanup(cmd.Context(), run, nftables.Options{}); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "removed the kubenat tables (ip, ip6)")
			return nil
		},
	}
}
