// Package nsrun runs the benchmark's kernel-side tools inside a network
// namespace: libnftables (as an nft.Runner), iptables-restore and
// conntrack. Nothing here acts on the caller's own namespace.
package nsrun

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"

	"github.com/kubenat/kubenat/internal/nft"
	"github.com/kubenat/kubenat/internal/topo"
)

// NFT is an nft.Runner that applies every script on a thread switched into
// one namespace, through libnftables in-process when it can be loaded, else
// through the nft binary run with `ip netns exec`.
type NFT struct {
	ns  string
	lib *nft.Lib
}

// NewNFT returns a runner for namespace ns.
func NewNFT(ns string) *NFT {
	r := &NFT{ns: ns}
	if lib, err := nft.NewLib(); err == nil {
		r.lib = lib
	}
	return r
}

// Name describes the runner.
func (r *NFT) Name() string {
	if r.lib != nil {
		return "libnftables in " + r.ns
	}
	return "nft binary in " + r.ns
}

// Run applies script as one transaction in the namespace.
func (r *NFT) Run(ctx context.Context, script string) (string, error) {
	if r.lib == nil {
		out, err := Exec(ctx, r.ns, strings.NewReader(script), "nft", "-f", "-")
		if err != nil {
			return out, &nft.Error{Script: script, Output: out, Err: err}
		}
		return out, nil
	}
	var out string
	err := topo.InNS(r.ns, func() error {
		var err error
		out, err = r.lib.Run(ctx, script)
		return err
	})
	return out, err
}

// Exec runs a command inside namespace ns with stdin (may be nil) and
// returns its combined output.
func Exec(ctx context.Context, ns string, stdin io.Reader, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdin = stdin
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 2000 {
			msg = msg[:2000] + "…"
		}
		return out.String(), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), ns, err, msg)
	}
	return out.String(), nil
}
