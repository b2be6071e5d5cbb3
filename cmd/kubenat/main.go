// Command kubenat is the NAT dataplane of a Kubernetes node: it replaces
// kube-proxy (Service DNAT) and ip-masq-agent (pod egress SNAT).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/kubenat/kubenat/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "kubenat:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "kubenat",
		Short: "The NAT dataplane of a Kubernetes node: Service DNAT and pod SNAT",
		Long: `kubenat programs a node's kernel so that traffic to Kubernetes Services reaches
their pods (DNAT), pod traffic leaving the cluster carries the node's address
(SNAT), and every NAT decision can be seen and explained.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	root.PersistentFlags().AddGoFlag(klogFlags.Lookup("v"))
	root.PersistentFlags().AddGoFlag(klogFlags.Lookup("vmodule"))
	root.SetFlagErrorFunc(kubeProxyFlagError)
	root.AddCommand(newAgentCmd(), newRenderCmd(), newCleanupCmd(), newVersionCmd(), newTraceCmd(), newLabCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the kubenat version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), version.String())
		},
	}
}
