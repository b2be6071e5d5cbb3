// Package ipmasq reads egress masquerade configuration in the format of
// ip-masq-agent's config file (YAML or JSON):
//
//	nonMasqueradeCIDRs: [10.0.0.0/8, 192.168.0.0/16]
//	masqLinkLocal: false
//	masqLinkLocalIPv6: false
//	resyncInterval: 60s
//
// and follows changes to it. A file that cannot be read or parsed is
// reported and the last good configuration stays in force.
package ipmasq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"reflect"
	"time"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/kubenat/kubenat/internal/model"
)

// file is the on-disk format.
type file struct {
	NonMasqueradeCIDRs []string `json:"nonMasqueradeCIDRs"`
	MasqLinkLocal      bool     `json:"masqLinkLocal"`
	MasqLinkLocalIPv6  bool     `json:"masqLinkLocalIPv6"`
	// ResyncInterval is ip-masq-agent's poll period; accepted for
	// compatibility (kubenat polls every second).
	ResyncInterval string `json:"resyncInterval"`
}

// Parse decodes a configuration. Unknown fields and invalid CIDRs are
// errors naming the field. A file without nonMasqueradeCIDRs keeps the
// default ranges.
func Parse(data []byte) (model.EgressConfig, error) {
	var cfg model.EgressConfig
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return cfg, fmt.Errorf("not YAML or JSON: %w", err)
	}
	var f file
	if len(bytes.TrimSpace(js)) > 0 && string(bytes.TrimSpace(js)) != "null" {
		strict, err := kjson.UnmarshalStrict(js, &f, kjson.DisallowUnknownFields)
		if err != nil {
			return cfg, err
		}
		if err := errors.Join(strict...); err != nil {
			return cfg, err
		}
	}
	if f.NonMasqueradeCIDRs != nil {
		cfg.NonMasqueradeCIDRs = []netip.Prefix{}
		for i, s := range f.NonMasqueradeCIDRs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return cfg, fmt.Errorf("nonMasqueradeCIDRs[%d]: %q is not a CIDR", i, s)
			}
			cfg.NonMasqueradeCIDRs = append(cfg.NonMasqueradeCIDRs, p.Masked())
		}
	}
	if f.ResyncInterval != "" {
		if _, err := time.ParseDuration(f.ResyncInterval); err != nil {
			return cfg, fmt.Errorf("resyncInterval: %q is not a duration", f.ResyncInterval)
		}
	}
	cfg.MasqLinkLocal, cfg.MasqLinkLocalIPv6 = f.MasqLinkLocal, f.MasqLinkLocalIPv6
	return cfg, nil
}

// Load reads and parses the file at path. A missing file gives the
// defaults (as ip-masq-agent does) and found=false.
func Load(path string) (cfg model.EgressConfig, found bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return model.EgressConfig{}, false, nil
	}
	if err != nil {
		return cfg, false, fmt.Errorf("reading %s: %w", path, err)
	}
	cfg, err = Parse(data)
	if err != nil {
		return cfg, true, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, true, nil
}

// Watch polls path every interval and calls apply with each valid
// configuration that differs from the one in use (current, at first), and
// report with each new problem (nil when a problem is gone). It returns
// when ctx ends. ConfigMap volumes update files by swapping symlinks, so
// the content is compared, not events. The first poll compares the file
// with current, not with what it held when current was read: an edit made
// in between is applied.
func Watch(ctx context.Context, path string, interval time.Duration, current model.EgressConfig, apply func(model.EgressConfig), report func(error)) {
	var last []byte // the content current was parsed from, once read here
	read := false
	var lastErr string
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			data, err = nil, nil
		}
		if err == nil && read && bytes.Equal(data, last) {
			continue
		}
		var cfg model.EgressConfig
		if err == nil {
			cfg, err = Parse(data)
		}
		if err != nil {
			if msg := err.Error(); msg != lastErr {
				lastErr = msg
				report(fmt.Errorf("%s: %w; keeping the previous configuration", path, err))
			}
			continue
		}
		if lastErr != "" {
			lastErr = ""
			report(nil)
		}
		last, read = data, true
		if reflect.DeepEqual(cfg, current) {
			continue
		}
		current = cfg
		apply(cfg)
	}
}
