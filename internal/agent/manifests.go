package agent

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"

	"github.com/kubenat/kubenat/internal/source/manifest"
)

// ManifestSource feeds the objects of a manifest directory to a Sink and,
// when watching, follows changes to it.
type ManifestSource struct {
	reader *manifest.Reader
	prev   map[manifest.Ref]any
	// Poll is a safety net re-read interval for missed file events.
	Poll time.Duration
	// Debounce groups bursts of file events.
	Debounce time.Duration
}

// NewManifestSource returns a source reading dir.
func NewManifestSource(dir string) *ManifestSource {
	return &ManifestSource{reader: manifest.NewReader(dir), prev: map[manifest.Ref]any{},
		Poll: 10 * time.Second, Debounce: 100 * time.Millisecond}
}

// Load reads the directory once and delivers its content. Reading does
// not block, so ctx is not consulted.
func (m *ManifestSource) Load(_ context.Context, sink Sink) error {
	snap, err := m.reader.Read()
	if err != nil {
		return err
	}
	m.deliver(snap, sink)
	sink.Synced()
	return nil
}

// Run loads the directory, then watches it until ctx ends, delivering each
// change. A directory that becomes unreadable keeps the last content.
func (m *ManifestSource) Run(ctx context.Context, sink Sink) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching manifests: %w", err)
	}
	defer w.Close()
	if err := w.Add(m.reader.Dir()); err != nil {
		return fmt.Errorf("watching manifest directory %s: %w", m.reader.Dir(), err)
	}
	if err := m.Load(ctx, sink); err != nil {
		return err
	}
	poll := time.NewTicker(m.Poll)
	defer poll.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("watching manifest directory %s: the watcher closed", m.reader.Dir())
			}
			klog.V(4).InfoS("Manifest event", "event", ev.String())
			if debounce == nil {
				debounce = time.After(m.Debounce)
			}
		case err, ok := <-w.Errors:
			if ok {
				klog.ErrorS(err, "Watching the manifest directory failed; it is still polled", "dir", m.reader.Dir())
			}
		case <-debounce:
			debounce = nil
			m.reload(sink)
		case <-poll.C:
			m.reload(sink)
		}
	}
}

func (m *ManifestSource) reload(sink Sink) {
	snap, err := m.reader.Read()
	if err != nil {
		klog.ErrorS(err, "Reading manifests failed; keeping the current objects")
		return
	}
	m.deliver(snap, sink)
}

// deliver sends what changed since the previous delivery.
func (m *ManifestSource) deliver(snap *manifest.Snapshot, sink Sink) {
	next := make(map[manifest.Ref]any, len(snap.Origins))
	changed := func(ref manifest.Ref, obj any) bool {
		next[ref] = obj
		old, ok := m.prev[ref]
		return !ok || (old != obj && !reflect.DeepEqual(old, obj))
	}
	for _, n := range snap.Nodes {
		ref := manifest.Ref{Kind: "Node", Name: n.Name}
		if changed(ref, n) {
			sink.SetNode(n, snap.Origins[ref])
		}
	}
	for _, s := range snap.Services {
		ref := manifest.Ref{Kind: "Service", Namespace: s.Namespace, Name: s.Name}
		if changed(ref, s) {
			sink.SetService(s, snap.Origins[ref])
		}
	}
	for _, s := range snap.EndpointSlices {
		ref := manifest.Ref{Kind: "EndpointSlice", Namespace: s.Namespace, Name: s.Name}
		if changed(ref, s) {
			sink.SetEndpointSlice(s, snap.Origins[ref])
		}
	}
	for _, sc := range snap.ServiceCIDRs {
		ref := manifest.Ref{Kind: "ServiceCIDR", Name: sc.Name}
		if changed(ref, sc) {
			sink.SetServiceCIDR(sc, snap.Origins[ref])
		}
	}
	for ref := range m.prev {
		if _, ok := next[ref]; ok {
			continue
		}
		switch ref.Kind {
		case "Service":
			sink.DeleteService(ref.Namespace, ref.Name)
		case "EndpointSlice":
			sink.DeleteEndpointSlice(ref.Namespace, ref.Name)
		case "Node":
			sink.DeleteNode(ref.Name)
		case "ServiceCIDR":
			sink.DeleteServiceCIDR(ref.Name)
		}
	}
	m.prev = next
	sink.SourceErrors(snap.Errors, snap.Warnings)
}
