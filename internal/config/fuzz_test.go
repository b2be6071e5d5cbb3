package config

import (
	"testing"
)

// FuzzDecodeAndValidate: whatever a configuration file holds, decoding
// and validating it does not panic, and a configuration that validates
// gives its model configuration, its warnings and its YAML without
// panicking (ModelConfig parses what Validate accepted with Must*).
func FuzzDecodeAndValidate(f *testing.F) {
	for _, s := range []string{
		"apiVersion: kubenat.io/v1alpha1\nkind: KubenatConfiguration\nclusterCIDRs: [10.244.0.0/16]\n",
		"apiVersion: kubenat.io/v1alpha1\nkind: KubenatConfiguration\nclusterCIDRs: [10.244.1.0/16, fd00::/48]\nserviceCIDRs: [10.96.0.0/12]\nnodeIPs: [192.168.1.1, \"::ffff:192.168.1.2\"]\nnodePortAddresses: [primary, 192.168.0.0/16]\n",
		"apiVersion: kubenat.io/v1alpha1\nkind: KubenatConfiguration\ndetectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: veth}\n",
		"apiVersion: kubenat.io/v1alpha1\nkind: KubenatConfiguration\nclusterCIDRs: [10.244.0.0/16]\nminSyncPeriod: 1h\nsyncPeriod: 1s\nconntrack: {maxPerCore: 2147483647, min: 2147483647, tcpEstablishedTimeout: 596h}\n",
		"apiVersion: kubenat.io/v1alpha1\nkind: KubenatConfiguration\nclusterCIDRs: [\"::ffff:10.0.0.0/104\"]\nmetricsBindAddress: \"[::]:1\"\nhealthzBindAddress: \":1\"\n",
		"{\"apiVersion\":\"kubenat.io/v1alpha1\",\"kind\":\"KubenatConfiguration\",\"clusterCIDRs\":[\"0.0.0.0/0\"]}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Decode(data)
		if err != nil {
			return
		}
		if c.Validate() != nil {
			return
		}
		_ = c.Warnings()
		if _, err := c.ModelConfig(); err != nil && c.Masquerade.ConfigFile == "" {
			t.Errorf("a configuration that validates has no model configuration: %v", err)
		}
		if _, err := c.Encode(); err != nil {
			t.Errorf("encoding a valid configuration: %v", err)
		}
	})
}
