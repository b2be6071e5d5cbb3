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
