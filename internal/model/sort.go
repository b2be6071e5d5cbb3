package model

import (
	"cmp"
	"net/netip"
	"slices"
)

func sortKeys(keys []ServiceKey) {
	slices.SortFunc(keys, func(a, b ServiceKey) int {
		if c := cmp.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
}

func sortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
}

func sortAddrs(as []netip.Addr) {
	slices.SortFunc(as, func(a, b netip.Addr) int { return a.Compare(b) })
}

func compareEndpoints(a, b Endpoint) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return cmp.Compare(a.Port, b.Port)
}

func compareServicePorts(a, b ServicePort) int {
	if c := cmp.Compare(a.Name.Family, b.Name.Family); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Name.Protocol, b.Name.Protocol); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return cmp.Compare(a.Name.Port, b.Name.Port)
}
