package nftables

import (
	"testing"

	"github.com/kubenat/kubenat/internal/netnstest"
	"github.com/kubenat/kubenat/internal/nft"
)

func newNamespace(t *testing.T) string { return netnstest.NewNamespace(t) }

func runnerIn(ns string) nft.Runner { return netnstest.NSRunner{NS: ns} }
