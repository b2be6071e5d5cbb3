package agent

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/kubenat/kubenat/internal/model"
)

// localDetectWarnings checks d against the interfaces of this network
// namespace and returns what makes it miss pods: a bridge that does not
// exist (yet) or is no bridge, or, by name prefix, interfaces that are
// ports of a bridge (the IP hooks then see the bridge as the input
// interface, never the port). Nothing is wrong with NodeCIDR.
func localDetectWarnings(d model.LocalDetect) ([]string, error) {
	if !d.ByInterface() {
		return nil, nil
	}
	var warns []string
	switch d.Mode {
	case model.DetectBridgeInterface:
		l, err := netlink.LinkByName(d.Interface)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound):
			warns = append(warns, fmt.Sprintf("the pods' bridge %q does not exist (yet): until it does, no packet is recognized as a pod's", d.Interface))
		case err != nil:
			return nil, fmt.Errorf("looking up the pods' bridge %q: %w", d.Interface, err)
		case l.Type() != "bridge":
			warns = append(warns, fmt.Sprintf("the pods' bridge %q is a %s, not a bridge: check --pod-bridge-interface", d.Interface, l.Type()))
		}
	case model.DetectInterfacePrefix:
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("listing the node's interfaces: %w", err)
		}
		byIndex := map[int]netlink.Link{}
		for _, l := range links {
			byIndex[l.Attrs().Index] = l
		}
		var bridged []string
		for _, l := range links {
			a := l.Attrs()
			if !strings.HasPrefix(a.Name, d.Interface) || a.MasterIndex == 0 {
				continue
			}
			if m, ok := byIndex[a.MasterIndex]; ok && m.Type() == "bridge" && !strings.HasPrefix(m.Attrs().Name, d.Interface) {
				bridged = append(bridged, fmt.Sprintf("%s (bridge %s)", a.Name, m.Attrs().Name))
			}
		}
		if len(bridged) > 0 {
			warns = append(warns, fmt.Sprintf("interfaces named %s* are bridge ports: %s; the IP hooks see their bridge as the input interface, so their pods are not recognized (use --detect-local-mode=BridgeInterface)",
				d.Interface, strings.Join(bridged, ", ")))
		}
	}
	return warns, nil
}
