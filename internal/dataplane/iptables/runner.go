package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/kubenat/kubenat/internal/model"
)

// Runner runs the iptables commands of one family.
type Runner interface {
	// Restore applies input with iptables-restore --noflush: each table's
	// section is committed atomically, chains it declares are flushed (or
	// created), and nothing it does not name is touched.
	Restore(ctx context.Context, f model.Family, input string) error
	// Save returns iptables-save's output for the tables that exist.
	Save(ctx context.Context, f model.Family) (string, error)
	// Check reports whether table's chain holds rule (iptables -C); a
	// missing chain is reported as false.
	Check(ctx context.Context, f model.Family, table, chain, rule string) (bool, error)
	// Names names the commands, for messages.
	Names() string
}

// DatapathNames returns the names of the datapaths this package serves
// (the agent's --datapath): the system's commands, and each variant.
func DatapathNames() []string { return []string{"iptables", "iptables-nft", "iptables-legacy"} }

// DatapathVariant returns the Variant of the commands a datapath name
// selects: "iptables" the system's (""), "iptables-nft" and
// "iptables-legacy" theirs; ok is false for any other name.
func DatapathVariant(name string) (variant string, ok bool) {
	switch name {
	case "iptables":
		return "", true
	case "iptables-nft", "iptables-legacy":
		return strings.TrimPrefix(name, "iptables-"), true
	}
	return "", false
}

// Exec runs the iptables commands on PATH.
type Exec struct {
	// Variant selects the commands: "" uses iptables and ip6tables (the
	// system's choice), "nft" iptables-nft, "legacy" iptables-legacy.
	Variant string
	// NetNS, when set, runs them in that named network namespace (ip
	// netns exec); else in the caller's.
	NetNS string
	// version is the commands' version, when Probe read it.
	version version
}

// cmd returns the command that runs the family's command with suffix
// ("", "-save", "-restore") and args.
func (e Exec) cmd(ctx context.Context, f model.Family, suffix string, args ...string) *exec.Cmd {
	name := e.command(f, suffix)
	if e.NetNS != "" {
		return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.NetNS, name}, args...)...)
	}
	return exec.CommandContext(ctx, name, args...)
}

// command returns the name of the family's command with suffix ("",
// "-save", "-restore").
func (e Exec) command(f model.Family, suffix string) string {
	name := "iptables"
	if f == model.IPv6 {
		name = "ip6tables"
	}
	if e.Variant != "" {
		name += "-" + e.Variant
	}
	return name + suffix
}

// Names names the commands of both families, e.g. "iptables-nft,
// ip6tables-nft" (each with its -save and -restore).
func (e Exec) Names() string {
	return e.command(model.IPv4, "") + ", " + e.command(model.IPv6, "")
}

// Available reports whether the commands of both families are on PATH.
func (e Exec) Available() bool {
	for _, f := range model.Families {
		for _, s := range []string{"", "-save", "-restore"} {
			if _, err := exec.LookPath(e.command(f, s)); err != nil {
				return false
			}
		}
	}
	return true
}

// Kind returns which variant e's commands are: its Variant when named,
// else what `iptables --version` says ("nf_tables": "nft", "legacy", and
// any version before 1.8, which had no other: "legacy"); "" when that
// cannot be told.
func (e Exec) Kind(ctx context.Context) (string, error) {
	if e.Variant != "" {
		return e.Variant, nil
	}
	out, err := e.versionText(ctx)
	if err != nil {
		return "", err
	}
	switch v, ok := parseVersion(out); {
	case strings.Contains(out, "(nf_tables)"):
		return "nft", nil
	case strings.Contains(out, "(legacy)"), ok && v.less(version{1, 8, 0}):
		return "legacy", nil
	}
	return "", nil
}

func (e Exec) versionText(ctx context.Context) (string, error) {
	out, err := e.cmd(ctx, model.IPv4, "", "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", e.command(model.IPv4, ""), err)
	}
	return string(out), nil
}

// Probe returns e fitted to its version, and the Options that version
// allows: iptables before 1.6.2 has neither iptables-restore's -w nor
// MASQUERADE's --random-fully (which also needs Linux 3.13), so its
// masquerade keeps the kernel's port choice, which may race on busy nodes
// (kube-proxy has the same fallback); before 1.4.22, iptables' -w takes no
// number of seconds.
func (e Exec) Probe(ctx context.Context) (Exec, Options, error) {
	out, err := e.versionText(ctx)
	if err != nil {
		return e, Options{}, err
	}
	var o Options
	if v, ok := parseVersion(out); ok {
		e.version = v
		o.NoRandomFully = v.less(version{1, 6, 2})
	}
	return e, o, nil
}

// older reports whether Probe found a version before v.
func (e Exec) older(v version) bool { return e.version != (version{}) && e.version.less(v) }

// version is an iptables version.
type version [3]int

func (v version) less(o version) bool {
	for i := range v {
		if v[i] != o[i] {
			return v[i] < o[i]
		}
	}
	return false
}

var versionRE = regexp.MustCompile(`v(\d+)\.(\d+)\.(\d+)`)

// parseVersion reads the version from `iptables --version`'s answer, e.g.
// "iptables v1.8.9 (nf_tables)".
func parseVersion(s string) (version, bool) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return version{}, false
	}
	var v version
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v, true
}

// Installed returns a runner for each variant of the iptables commands
// installed (iptables-nft, iptables-legacy), in netns ("" for the
// caller's namespace); with neither, the system's plain commands when
// installed; else none.
func Installed(netns string) []Exec {
	var out []Exec
	for _, v := range []string{"nft", "legacy"} {
		if e := (Exec{Variant: v, NetNS: netns}); e.Available() {
			out = append(out, e)
		}
	}
	if e := (Exec{NetNS: netns}); len(out) == 0 && e.Available() {
		out = append(out, e)
	}
	return out
}

// Restore implements Runner. It waits for the xtables lock.
func (e Exec) Restore(ctx context.Context, f model.Family, input string) error {
	name := e.command(f, "-restore")
	args := []string{"-w", "5", "--noflush"}
	if e.older(version{1, 6, 2}) {
		args = args[2:]
	}
	cmd := e.cmd(ctx, f, "-restore", args...)
	cmd.Stdin = strings.NewReader(input)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Save implements Runner.
func (e Exec) Save(ctx context.Context, f model.Family) (string, error) {
	name := e.command(f, "-save")
	cmd := e.cmd(ctx, f, "-save")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Check implements Runner: iptables exits with 1 when the rule or its
// chain does not exist, and with 2 when the chain the rule jumps to does
// not (iptables-nft: "does not exist", iptables-legacy: "Couldn't load
// target").
func (e Exec) Check(ctx context.Context, f model.Family, table, chain, rule string) (bool, error) {
	name := e.command(f, "")
	wait := []string{"-w", "5"}
	if e.older(version{1, 4, 22}) {
		wait = wait[:1]
	}
	args := append(append(wait, "-t", table, "-C", chain), strings.Fields(rule)...)
	cmd := e.cmd(ctx, f, "", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &exit) && exit.ExitCode() == 1:
		return false, nil
	case errors.As(err, &exit) && exit.ExitCode() == 2 &&
		(strings.Contains(stderr.String(), "does not exist") || strings.Contains(stderr.String(), "Couldn't load target")):
		return false, nil
	}
	return false, fmt.Errorf("%s -t %s -C %s: %w: %s", name, table, chain, err, strings.TrimSpace(stderr.String()))
}
