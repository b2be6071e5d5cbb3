package model

import (
	"fmt"
	"slices"
)

// ExclusionReason says why ep is not one of the endpoints group g of this
// port spreads traffic over, or returns "" when it is. It follows the
// selection rule of SelectEndpoints (ready endpoints; when none is ready,
// the serving terminating ones; for the local group, only this node's), so
// tools that explain a decision (kubenat trace) never restate the rule.
func (sp *ServicePort) ExclusionReason(g Group, ep Endpoint) string {
	group := sp.GroupEndpoints(g)
	if slices.Contains(group, ep) {
		return ""
	}
	if g == LocalGroup && !ep.Local {
		where := "on no known node"
		if ep.NodeName != "" {
			where = "on node " + ep.NodeName
		}
		return fmt.Sprintf("%s, not this one: a Local traffic policy uses this node's endpoints only", where)
	}
	if t := TopologyFilter(sp.Endpoints); g == ClusterGroup && ep.Ready && ep.Hints&t != t {
		if t == ForThisNode {
			return "topology hints (trafficDistribution PreferSameNode): meant for other nodes, and this node has endpoints of its own"
		}
		return "topology hints (trafficDistribution PreferClose/PreferSameZone, topology-mode Auto): meant for other zones than this node's"
	}
	switch {
	case ep.Terminating && ep.Serving:
		return "terminating (still serving): used only when no endpoint is ready"
	case ep.Terminating:
		return "terminating and no longer serving"
	case !ep.Ready:
		return "not ready"
	}
	return "not selected"
}
