// Package nft runs nftables scripts (the language of `nft -f`) against the
// kernel of the calling process's network namespace.
//
// Two runners are provided: one that calls libnftables in-process (the
// library behind the nft command, loaded at run time with dlopen, so the
// kubenat binary starts without it), and one that pipes the script to the
// nft binary. Both apply a script as one atomic transaction: either all of
// it takes effect or none of it does.
package nft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Runner applies nftables scripts.
type Runner interface {
	// Run applies script as one transaction and returns what nft printed
	// (e.g. for list commands).
	Run(ctx context.Context, script string) (string, error)
	// Name describes the runner, for logs.
	Name() string
}

// New returns the in-process libnftables runner when the library can be
// loaded, else the nft binary runner when nft is on PATH.
func New() (Runner, error) {
	lib, libErr := NewLib()
	if libErr == nil {
		return lib, nil
	}
	bin, binErr := NewBinary("")
	if binErr == nil {
		return bin, nil
	}
	return nil, fmt.Errorf("no way to program nftables: %w", errors.Join(libErr, binErr))
}

// Binary runs scripts with the nft command.
type Binary struct{ path string }

// NewBinary returns a runner for the nft binary at path, or found on PATH
// when path is empty.
func NewBinary(path string) (*Binary, error) {
	if path == "" {
		p, err := exec.LookPath("nft")
		if err != nil {
			return nil, fmt.Errorf("finding the nft binary: %w", err)
		}
		path = p
	}
	return &Binary{path: path}, nil
}

// Name returns "nft binary (path)".
func (b *Binary) Name() string { return "nft binary (" + b.path + ")" }

// Run pipes script to `nft -f -`.
func (b *Binary) Run(ctx context.Context, script string) (string, error) {
	cmd := exec.CommandContext(ctx, b.path, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), &Error{Script: script, Output: errOut.String(), Err: err}
	}
	return out.String(), nil
}

// Error is a failed script, with what nft said about it.
type Error struct {
	Script string
	Output string
	Err    error
}

// Error returns nft's message (the first lines of it).
func (e *Error) Error() string {
	msg := strings.TrimSpace(e.Output)
	if lines := strings.Split(msg, "\n"); len(lines) > 12 {
		msg = strings.Join(lines[:12], "\n") + fmt.Sprintf("\n… (%d more lines)", len(lines)-12)
	}
	if msg == "" && e.Err != nil {
		return "nft: " + e.Err.Error()
	}
	return "nft: " + msg
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Unsupported reports whether err says the kernel has no nftables (nft's
// "Operation not supported" or "Protocol not supported"): then no table
// exists, and none can be made.
func Unsupported(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "Operation not supported") || strings.Contains(msg, "Protocol not supported")
}
