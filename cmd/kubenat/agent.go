package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/kubenat/kubenat/internal/agent"
	"github.com/kubenat/kubenat/internal/config"
	"github.com/kubenat/kubenat/internal/conntrack"
	"github.com/kubenat/kubenat/internal/dataplane/socketlb"
	"github.com/kubenat/kubenat/internal/dataplane/tcnat"
	"github.com/kubenat/kubenat/internal/events"
	"github.com/kubenat/kubenat/internal/memlimit"
	"github.com/kubenat/kubenat/internal/metrics"
	"github.com/kubenat/kubenat/internal/model"
	"github.com/kubenat/kubenat/internal/source/kube"
	"github.com/kubenat/kubenat/internal/version"
)

// onceTimeout bounds `agent --once` waiting for the API's initial lists.
const onceTimeout = 2 * time.Minute

// agentConfig returns the effective configuration: the file at path (or
// the defaults), overridden by the flags set on the command line, and
// validated. What in it is used otherwise than written is printed to
// stderr as a warning.
func agentConfig(stderr io.Writer, fs *pflag.FlagSet, path string) (*config.Configuration, error) {
	cfg := config.Default()
	if path != "" {
		var err error
		if cfg, err = config.Load(path); err != nil {
			return nil, err
		}
	}
	if err := cfg.ApplyFlags(fs); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n  %s", strings.ReplaceAll(err.Error(), "\n", "\n  "))
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(stderr, "warning:", w)
	}
	return cfg, nil
}

// writeConfig writes cfg as YAML to path, or to stdout for "-".
func writeConfig(stdout io.Writer, cfg *config.Configuration, path string) error {
	out, err := cfg.Encode()
	if err != nil {
		return err
	}
	if path == "-" {
		_, err = stdout.Write(out)
		return err
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return fmt.Errorf("writing the configuration: %w", err)
	}
	return nil
}

// runAgent runs the agent with cfg until ctx ends (or once).
func runAgent(ctx context.Context, cfg *config.Configuration, once bool) error {
	mc, err := cfg.ModelConfig()
	if err != nil {
		return err
	}
	mc.FallbackNodeIPs = agent.DefaultRouteAddrs()
	gcPercent := memlimit.SetGCPercent()
	switch soft, limit, err := memlimit.Apply(); {
	case err != nil:
		klog.InfoS("No Go memory limit from the cgroup", "err", err)
	case soft > 0:
		klog.InfoS("Go soft memory limit set from the cgroup's", "softLimitBytes", soft, "cgroupLimitBytes", limit)
	}
	if err := setTCNATPorts(cfg, &mc); err != nil {
		return err
	}
	m := metrics.New(version.Version)
	opts := agent.Options{
		Config:             mc,
		Datapath:           cfg.Datapath,
		MinSyncPeriod:      cfg.MinSync(),
		TableCheckPeriod:   cfg.TableCheckPeriod(),
		HealthzBindAddress: cfg.HealthzBindAddress,
		MasqueradeConfig:   cfg.Masquerade.ConfigFile,
		Metrics:            m,
		SocketLB:           socketlb.Options{Cgroup: cfg.SocketLB.Cgroup, PinDir: cfg.SocketLB.PinDir},
		TCNAT:              tcnat.Options{PinDir: config.TCNATPinDir(cfg.SocketLB.PinDir), PortRange: mc.TCNATPorts},
		Conntrack:          cfg.ConntrackSettings(conntrack.OnlineCPUs()),
	}
	src, client, sourceName, err := newSource(cfg, mc)
	if err != nil {
		return err
	}
	if ks, ok := src.(*kube.Source); ok && !once {
		rec := events.New(ctx, client, mc.NodeName, ks.ServiceUID)
		defer rec.Shutdown()
		opts.Events = rec
	}
	a, err := agent.New(opts)
	if err != nil {
		return err
	}
	defer a.Close()
	klog.InfoS("Starting kubenat agent", "version", version.String(), "node", mc.NodeName, "source", sourceName, "datapath", cfg.Datapath,
		"minSyncPeriod", cfg.MinSync(), "gcPercent", gcPercent)
	if once {
		ctx, cancel := context.WithTimeout(ctx, onceTimeout)
		defer cancel()
		return a.SyncOnce(ctx, src)
	}
	if cfg.MetricsBindAddress != "" {
		go m.Run(ctx, cfg.MetricsBindAddress, cfg.EnableProfiling)
	}
	err = a.Run(ctx, src)
	klog.InfoS("kubenat agent stopped; the programmed rules stay in place")
	return err
}

// setTCNATPorts sets the source ports the tc NAT allocates, when it is
// on: tcNAT.snatPorts, or the range this node's own connections do not use
// (the kernel's Service masquerade then keeps to the others).
func setTCNATPorts(cfg *config.Configuration, mc *model.Config) error {
	if !mc.TCNAT {
		return nil
	}
	ports, err := cfg.TCNAT.PortRange()
	if err != nil {
		return err
	}
	if ports == [2]uint16{} {
		if ports, err = tcnat.FreePorts(); err != nil {
			return err
		}
	}
	mc.TCNATPorts = ports
	return nil
}

// newSource returns the configured source of objects: the manifest
// directory, or the Kubernetes API (with its client). It says which.
func newSource(cfg *config.Configuration, mc model.Config) (agent.Source, kubernetes.Interface, string, error) {
	if cfg.Manifests != "" {
		return agent.NewManifestSource(cfg.Manifests), nil, "manifests " + cfg.Manifests, nil
	}
	restCfg, where, err := restConfig(cfg)
	if err != nil {
		return nil, nil, "", err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, nil, "", fmt.Errorf("creating the Kubernetes client: %w", err)
	}
	ks, err := kube.New(client, kube.Options{NodeName: mc.NodeName, ProxyName: mc.ProxyName})
	if err != nil {
		return nil, nil, "", err
	}
	return ks, client, "Kubernetes API " + restCfg.Host + " (" + where + ")", nil
}

// restConfig returns the client configuration: from the kubeconfig file
// when one is set, else in-cluster when running in a pod. It says which.
func restConfig(cfg *config.Configuration) (*rest.Config, string, error) {
	cc := cfg.ClientConnection
	var rc *rest.Config
	var where string
	switch {
	case cc.Kubeconfig != "":
		var err error
		rc, err = clientcmd.BuildConfigFromFlags("", cc.Kubeconfig)
		if err != nil {
			return nil, "", fmt.Errorf("loading the kubeconfig %s: %w", cc.Kubeconfig, err)
		}
		where = "kubeconfig " + cc.Kubeconfig
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		var err error
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, "", fmt.Errorf("loading the in-cluster configuration: %w", err)
		}
		where = "in-cluster"
	default:
		return nil, "", errors.New("no source of objects: give --kubeconfig FILE (or run in a pod, where the in-cluster configuration is used) or --manifests DIR")
	}
	rc.ContentType = cc.ContentType
	rc.AcceptContentTypes = cc.ContentType
	if cc.ContentType == config.ContentTypeProtobuf {
		rc.AcceptContentTypes = cc.ContentType + "," + config.ContentTypeJSON
	}
	rc.QPS, rc.Burst = cc.QPS, int(cc.Burst)
	rc.UserAgent = "kubenat/" + version.Version
	return rc, where, nil
}
