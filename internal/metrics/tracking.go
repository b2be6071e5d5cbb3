package metrics

import (
	"maps"
	"slices"
	"time"

	"github.com/kubenat/kubenat/internal/model"
)

// AnnotationLastChangeTriggerTime is set by the EndpointSlice controller
// on each EndpointSlice: when the change to the Service or its Pods that
// caused the slice's latest update happened.
const AnnotationLastChangeTriggerTime = "endpoints.kubernetes.io/last-change-trigger-time"

// TriggerTimes collects the trigger times of EndpointSlice changes that
// are not programmed yet, for kubenat_network_programming_duration_seconds.
//
// A trigger time counts when it parses (RFC 3339), is not before the
// tracker started (an older change was programmed by an earlier kubenat, or
// before it ran: its age would measure the restart, not the datapath), and
// differs from the last one seen for the same slice (updates that do not
// touch the annotation, such as label changes or a relist after a watch
// expired, are not new changes). Of a slice's changes waiting for one
// sync, the earliest counts: the wait of the oldest change is the one to
// measure, and what waits is bounded by the number of slices however
// long syncs keep failing.
//
// It is not safe for concurrent use.
type TriggerTimes struct {
	start   time.Time
	last    map[sliceName]time.Time
	pending map[sliceName]time.Time
}

type sliceName struct{ namespace, name string }

// NewTriggerTimes returns a tracker ignoring trigger times before start.
func NewTriggerTimes(start time.Time) *TriggerTimes {
	return &TriggerTimes{start: start, last: map[sliceName]time.Time{}, pending: map[sliceName]time.Time{}}
}

// SliceChanged records a new or updated EndpointSlice's annotations.
func (t *TriggerTimes) SliceChanged(namespace, name string, annotations map[string]string) {
	v, ok := annotations[AnnotationLastChangeTriggerTime]
	if !ok {
		return
	}
	ts, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return
	}
	k := sliceName{namespace, name}
	if prev, ok := t.last[k]; ok && prev.Equal(ts) {
		return
	}
	t.last[k] = ts
	if ts.Before(t.start) {
		return
	}
	if _, waiting := t.pending[k]; !waiting {
		t.pending[k] = ts
	}
}

// SliceDeleted forgets a deleted EndpointSlice.
func (t *TriggerTimes) SliceDeleted(namespace, name string) {
	delete(t.last, sliceName{namespace, name})
}

// Take returns the pending trigger times, in no particular order, and
// forgets them: call it when a sync has programmed every change received
// so far.
func (t *TriggerTimes) Take() []time.Time {
	p := slices.Collect(maps.Values(t.pending))
	clear(t.pending)
	return p
}

// StateCounter keeps the number of programmed Services and endpoints up to
// date from each sync's Delta, in time proportional to the change (a full
// Delta recounts everything).
//
// It is not safe for concurrent use.
type StateCounter struct {
	perService map[model.ServiceKey]int
	endpoints  int
}

// NewStateCounter returns an empty counter.
func NewStateCounter() *StateCounter {
	return &StateCounter{perService: map[model.ServiceKey]int{}}
}

// Update applies a programmed State and the Delta it came with, and
// returns the number of Services with at least one port, and of endpoints
// counted once per Service port and family.
func (c *StateCounter) Update(st *model.State, d model.Delta) (services, endpoints int) {
	if d.Full {
		clear(c.perService)
		c.endpoints = 0
		for k := range st.Services {
			c.set(st, k)
		}
	} else {
		for _, k := range d.Changed {
			c.set(st, k)
		}
	}
	return len(c.perService), c.endpoints
}

func (c *StateCounter) set(st *model.State, k model.ServiceKey) {
	c.endpoints -= c.perService[k]
	ports, ok := st.Services[k]
	if !ok {
		delete(c.perService, k)
		return
	}
	n := 0
	for i := range ports {
		n += len(ports[i].Endpoints)
	}
	c.perService[k] = n
	c.endpoints += n
}
