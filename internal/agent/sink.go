package agent

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Sink receives the objects a Source watches. Its methods are safe for
// concurrent use.
type Sink interface {
	SetService(svc *v1.Service, origin string)
	DeleteService(namespace, name string)
	SetEndpointSlice(s *discovery.EndpointSlice, origin string)
	DeleteEndpointSlice(namespace, name string)
	SetNode(n *v1.Node, origin string)
	DeleteNode(name string)
	SetServiceCIDR(sc *networkingv1.ServiceCIDR, origin string)
	DeleteServiceCIDR(name string)
	// SourceErrors replaces the problems the source itself found (files
	// that cannot be parsed, duplicates, skipped kinds as warnings).
	SourceErrors(errs []error, warnings []string)
	// Synced says the source has delivered its complete initial content.
	// Nothing is programmed before the first call, so a restart never
	// programs a partial ruleset.
	Synced()
}
