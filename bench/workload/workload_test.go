package workload

import "testing"

func TestGenerate(t *testing.T) {
	c, err := Generate(Spec{Services: 40, Endpoints: 250, NodePortEvery: 20})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Services) != 40 {
		t.Fatalf("%d Services", len(c.Services))
	}
	// 250 endpoints: 3 slices of at most 100.
	if len(c.SlicesOf[0]) != 3 || len(c.EndpointSlices) != 120 {
		t.Errorf("slices: %d for the first Service, %d in all", len(c.SlicesOf[0]), len(c.EndpointSlices))
	}
	seen := map[string]bool{}
	for _, sl := range c.EndpointSlices {
		if len(sl.Endpoints) > MaxEndpointsPerSlice {
			t.Errorf("%s has %d endpoints", sl.Name, len(sl.Endpoints))
		}
		for _, e := range sl.Endpoints {
			if seen[e.Addresses[0]] {
				t.Errorf("endpoint %s used twice", e.Addresses[0])
			}
			seen[e.Addresses[0]] = true
		}
	}
	if c.Services[0].Spec.Ports[0].NodePort != NodePortBase || c.Services[20].Spec.Ports[0].NodePort != NodePortBase+1 ||
		c.Services[1].Spec.Ports[0].NodePort != 0 {
		t.Error("every 20th Service should be a NodePort Service")
	}
	c2, _ := Generate(Spec{Services: 10, EndpointsCycle: 5})
	for i, want := range []int{1, 2, 3, 4, 5, 1} {
		if got := len(c2.EndpointSlices[c2.SlicesOf[i][0]].Endpoints); got != want {
			t.Errorf("Service %d has %d endpoints, want %d", i, got, want)
		}
	}
	if _, err := Generate(Spec{Services: 10, Endpoints: 1 << 23}); err == nil {
		t.Error("no error for more endpoints than addresses")
	}
}
