//go:build !cgo

package nft

import (
	"context"
	"errors"
)

// Lib is unavailable in binaries built without cgo; New falls back to the
// nft binary.
type Lib struct{}

// NewLib reports that libnftables cannot be used without cgo.
func NewLib() (*Lib, error) { return nil, errors.New("built without cgo: libnftables unavailable") }

// Name returns "libnftables".
func (l *Lib) Name() string { return "libnftables" }

// Run always fails.
func (l *Lib) Run(context.Context, string) (string, error) {
	return "", errors.New("built without cgo: libnftables unavailable")
}
