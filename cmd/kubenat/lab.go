package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kubenat/kubenat/internal/lab"
)

// defaultLabDir is where "kubenat lab up" keeps a running lab's state.
const defaultLabDir = "/run/kubenat-lab"

func newLabCmd() *cobra.Command {
	var asJSON bool
	var datapath string
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run the seed's NAT pipelines live in a cluster of network namespaces, and check them",
		Long: `lab builds a small cluster inside network namespaces — two nodes with pods, each
running the real kubenat agent, a front load balancer that DNATs to
nodeIP:NodePort with an external client behind it, and an "internet" host —
drives real HTTP and UDP traffic through it and prints each NAT pipeline as a
diagram of hops with the addresses before and after each NAT, kubenat trace's
answer for each node, and the conntrack entries that carry the return path:

  1. external → LB → NodePort → pod, externalTrafficPolicy Cluster (the pod sees a node)
  2. the same with externalTrafficPolicy Local (the pod sees the client; only nodes
     with a local pod take traffic)
  3. pod → ClusterIP → pod on another node (no SNAT)
  4. pod → internet (MASQUERADE to the node's address)
  5. pod → internet with a non-masquerade range (the pod's address is kept)

Every result is checked; a mismatch exits with status 1. The lab removes all
it created when it ends, also on Ctrl-C, and never touches the root
namespace's addresses, routes or rules. Needs root, iproute2 and nftables.
--datapath runs the agents with another datapath (iptables, iptables-nft or
iptables-legacy).

"kubenat lab up" keeps a lab running for exploration ("lab exec", "lab run",
"lab status"), "kubenat lab down" removes it. See docs/lab.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			l, err := lab.Up(ctx, lab.Options{Log: cmd.ErrOrStderr(), Datapath: datapath})
			if err != nil {
				return interrupted(ctx, fmt.Errorf("lab: %w", err))
			}
			defer func() {
				fmt.Fprintln(cmd.ErrOrStderr(), "lab: removing the lab")
				if err := l.Down(); err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "lab: cleanup:", err)
				}
			}()
			return interrupted(ctx, runPipelines(ctx, cmd.OutOrStdout(), &l.Topology, asJSON))
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().StringVar(&datapath, "datapath", "", labDatapathHelp)
	cmd.AddCommand(newLabUpCmd(), newLabDownCmd(), newLabRunCmd(), newLabStatusCmd(), newLabExecCmd(), newLabServeCmd())
	return cmd
}

// interrupted replaces err by a plain message when ctx was cancelled (the
// lab was interrupted and has cleaned up).
func interrupted(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return errors.New("lab: interrupted; everything the lab created is removed")
	}
	return err
}

// runPipelines runs the pipelines against t and prints the report; failed
// checks make it return an error.
func runPipelines(ctx context.Context, w io.Writer, t *lab.Topology, asJSON bool) error {
	rep, err := lab.Run(ctx, t)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if asJSON {
		err = rep.WriteJSON(w)
	} else {
		err = rep.WriteText(w)
	}
	if err != nil {
		return err
	}
	if !rep.OK {
		return errors.New("lab: some pipelines did not behave as expected (see FAIL above)")
	}
	return nil
}

func stateFile(dir string) string { return filepath.Join(dir, "state.json") }

// readLab returns the running lab kept in dir.
func readLab(dir string) (*lab.Topology, error) {
	t, err := lab.ReadState(stateFile(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no lab is up (no %s); start one with kubenat lab up: %w", stateFile(dir), os.ErrNotExist)
	}
	return t, err
}

// readLiveLab returns the running lab kept in dir, and an error when its
// process (and with it its agents) is gone.
func readLiveLab(dir string) (*lab.Topology, error) {
	t, err := readLab(dir)
	if err != nil {
		return nil, err
	}
	if !t.Alive() {
		return nil, fmt.Errorf("the lab process %d is gone (its agents with it); kubenat lab down cleans up", t.PID)
	}
	return t, nil
}

func newLabUpCmd() *cobra.Command {
	var dir string
	var asJSON bool
	var datapath string
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Build the lab and keep it running in the background",
		Long: `up builds the lab and leaves it running (the agents and servers live in a
background "kubenat lab serve" process); it prints the hosts. Explore with
"kubenat lab exec HOST -- CMD", re-run the pipelines with "kubenat lab run",
and remove it with "kubenat lab down".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if t, err := lab.ReadState(stateFile(dir)); err == nil {
				if t.Alive() {
					return fmt.Errorf("a lab is already up (process %d); kubenat lab down removes it", t.PID)
				}
				fmt.Fprintln(cmd.ErrOrStderr(), "lab: removing the remains of a lab whose process is gone")
				if err := removeLabState(dir, t); err != nil {
					return err
				}
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("creating %s: %w", dir, err)
			}
			t, err := startLabDaemon(cmd.Context(), dir, datapath, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), t)
			}
			return writeStatus(cmd.OutOrStdout(), t, dir)
		},
	}
	cmd.Flags().StringVar(&dir, "state-dir", defaultLabDir, "directory of the running lab's state, manifests and logs")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the hosts as JSON")
	cmd.Flags().StringVar(&datapath, "datapath", "", labDatapathHelp)
	return cmd
}

// labDatapathHelp documents the lab's --datapath flag.
const labDatapathHelp = "the agents' --datapath: nftables (default), iptables, iptables-nft or iptables-legacy"

// startLabDaemon starts "kubenat lab serve" in its own session and waits
// until it has written the lab's state.
func startLabDaemon(ctx context.Context, dir, datapath string, log io.Writer) (*lab.Topology, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding the kubenat binary: %w", err)
	}
	logPath := filepath.Join(dir, "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	d := exec.Command(self, "lab", "serve", "--state-dir", dir, "--datapath", datapath)
	d.Stdout, d.Stderr = logf, logf
	d.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.Start(); err != nil {
		return nil, fmt.Errorf("starting the lab process: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = d.Wait(); close(exited) }()
	fmt.Fprintf(log, "lab: building the lab in process %d (log: %s)\n", d.Process.Pid, logPath)
	deadline := time.After(2 * time.Minute)
	for {
		if t, err := lab.ReadState(stateFile(dir)); err == nil && t.PID == d.Process.Pid {
			return t, nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("the lab process exited:\n%s", strings.TrimSpace(string(b)))
		case <-deadline:
			_ = d.Process.Signal(syscall.SIGTERM)
			return nil, errors.New("the lab was not up within 2 minutes")
		case <-ctx.Done():
			_ = d.Process.Signal(syscall.SIGTERM)
			<-exited
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func newLabServeCmd() *cobra.Command {
	var dir string
	var datapath string
	cmd := &cobra.Command{
		Use:    "serve",
		Short:  "Run a lab until SIGTERM (started by kubenat lab up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			l, err := lab.Up(ctx, lab.Options{Dir: dir, Log: cmd.ErrOrStderr(), Datapath: datapath})
			if err != nil {
				return err
			}
			defer func() {
				if err := l.Down(); err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "lab: cleanup:", err)
				}
				_ = os.Remove(stateFile(dir))
			}()
			if err := l.WriteState(stateFile(dir)); err != nil {
				return err
			}
			<-ctx.Done()
			fmt.Fprintln(cmd.ErrOrStderr(), "lab: stopping")
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "state-dir", defaultLabDir, "directory of the lab's state, manifests and logs")
	cmd.Flags().StringVar(&datapath, "datapath", "", labDatapathHelp)
	return cmd
}

func newLabDownCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove the lab started by kubenat lab up",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := readLab(dir)
			if errors.Is(err, os.ErrNotExist) {
				// Taking down what is not up succeeds, as a teardown
				// should.
				fmt.Fprintln(cmd.OutOrStdout(), "no lab is up; nothing to remove")
				return nil
			}
			if err != nil {
				return err
			}
			if t.Alive() {
				if err := syscall.Kill(t.PID, syscall.SIGTERM); err != nil {
					return fmt.Errorf("stopping the lab process %d: %w", t.PID, err)
				}
				for deadline := time.Now().Add(30 * time.Second); t.Alive() && time.Now().Before(deadline); {
					time.Sleep(100 * time.Millisecond)
				}
				if t.Alive() {
					return fmt.Errorf("the lab process %d did not stop within 30s", t.PID)
				}
			}
			if err := removeLabState(dir, t); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "the lab is down")
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "state-dir", defaultLabDir, "directory of the running lab's state")
	return cmd
}

// removeLabState deletes what is left of a lab whose process is gone: its
// namespaces and the files it kept in dir (and dir itself when empty).
func removeLabState(dir string, t *lab.Topology) error {
	err := lab.Cleanup(t)
	for _, name := range []string{"manifests", "logs", "state.json", "state.json.tmp", "daemon.log"} {
		_ = os.RemoveAll(filepath.Join(dir, name))
	}
	_ = os.Remove(dir)
	return err
}

func newLabRunCmd() *cobra.Command {
	var dir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the pipelines against the lab started by kubenat lab up",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := readLiveLab(dir)
			if err != nil {
				return err
			}
			return runPipelines(cmd.Context(), cmd.OutOrStdout(), t, asJSON)
		},
	}
	cmd.Flags().StringVar(&dir, "state-dir", defaultLabDir, "directory of the running lab's state")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func newLabStatusCmd() *cobra.Command {
	var dir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the hosts of the lab started by kubenat lab up",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := readLiveLab(dir)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), t)
			}
			return writeStatus(cmd.OutOrStdout(), t, dir)
		},
	}
	cmd.Flags().StringVar(&dir, "state-dir", defaultLabDir, "directory of the running lab's state")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the hosts as JSON")
	return cmd
}

func newLabExecCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "exec HOST [-- COMMAND [ARG...]]",
		Short: "Run a command (default: a shell) in a namespace of the lab started by kubenat lab up",
		Example: `  kubenat lab exec node-a -- nft list table ip kubenat
  kubenat lab exec node-a -- conntrack -L
  kubenat lab exec cli-a -- curl -s http://10.96.0.20/
  kubenat lab exec ext`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := readLab(dir)
			if err != nil {
				return err
			}
			h := t.Host(args[0])
			if h == nil {
				var names []string
				for _, h := range t.Hosts {
					names = append(names, h.Name)
				}
				return fmt.Errorf("no host %q in the lab; hosts: %s", args[0], strings.Join(names, ", "))
			}
			command := args[1:]
			if len(command) == 0 {
				shell := os.Getenv("SHELL")
				if shell == "" {
					shell = "/bin/sh"
				}
				command = []string{shell}
			}
			ip, err := exec.LookPath("ip")
			if err != nil {
				return err
			}
			// Replace this process: the command gets the terminal and its
			// exit status is ours.
			return syscall.Exec(ip, append([]string{"ip", "netns", "exec", h.NS}, command...), os.Environ())
		},
	}
	cmd.Flags().StringVar(&dir, "state-dir", defaultLabDir, "directory of the running lab's state")
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// writeStatus prints the hosts of a running lab and how to use it.
func writeStatus(w io.Writer, t *lab.Topology, dir string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "the lab is up (process %d, state in %s)\n\n", t.PID, dir)
	fmt.Fprintf(&b, "%-9s %-16s %-15s %s\n", "HOST", "ROLE", "ADDRESS", "NAMESPACE")
	for _, h := range t.Hosts {
		addr := ""
		if h.Addr.IsValid() {
			addr = h.Addr.String()
		}
		role := h.Role
		if h.Node != "" {
			role += " on " + h.Node
		}
		fmt.Fprintf(&b, "%-9s %-16s %-15s %s\n", h.Name, role, addr, h.NS)
	}
	fmt.Fprintf(&b, "\nmanifests: %s (the agents follow changes)\nagent logs: %s\n", t.Manifests, filepath.Join(t.Dir, "logs"))
	b.WriteString("\nkubenat lab exec HOST -- CMD   run a command in a host's namespace\n")
	b.WriteString("kubenat lab run                run the pipelines again\n")
	b.WriteString("kubenat lab down               remove the lab\n")
	_, err := io.WriteString(w, b.String())
	return err
}
