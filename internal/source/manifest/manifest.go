// Package manifest reads Kubernetes objects (core/v1 Service,
// discovery.k8s.io/v1 EndpointSlice, core/v1 Node) from a directory of
// ordinary YAML or JSON manifests, as kubectl would take them: several
// documents per file, and "kind: List" documents, are allowed.
//
// A file that cannot be read or parsed is reported and, when it parsed
// before, its previous objects are kept, so a bad edit never removes what
// is already programmed. Objects of other kinds are skipped with a warning.
package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Snapshot is the content of a manifest directory.
type Snapshot struct {
	Services       []*v1.Service
	EndpointSlices []*discovery.EndpointSlice
	Nodes          []*v1.Node
	ServiceCIDRs   []*networkingv1.ServiceCIDR
	// Origins maps each object to where it was read, e.g. "web.yaml" or
	// "web.yaml (document 2)".
	Origins map[Ref]string
	// Errors are problems that made a file or document unusable, and
	// duplicate objects.
	Errors []error
	// Warnings are documents skipped on purpose (other kinds).
	Warnings []string
}

// Ref identifies an object in a Snapshot.
type Ref struct {
	Kind      string
	Namespace string
	Name      string
}

// String returns "Kind namespace/name" (or "Kind name" for Nodes).
func (r Ref) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

// fileResult is what one file yielded.
type fileResult struct {
	info    os.FileInfo // of the file a symlink points to
	statAt  time.Time   // when info was taken
	objects []object
	err     error   // the file could not be parsed at all
	docErrs []error // documents that could not be used
	warns   []string
}

type object struct {
	ref    Ref
	obj    any
	origin string
}

// Reader reads a manifest directory, re-parsing only files that changed
// since the previous Read. It is not safe for concurrent use.
type Reader struct {
	dir   string
	files map[string]*fileResult // last good result per file name
}

// NewReader returns a Reader for dir.
func NewReader(dir string) *Reader { return &Reader{dir: dir, files: map[string]*fileResult{}} }

// Dir returns the directory read.
func (r *Reader) Dir() string { return r.dir }

// Read returns the directory's current content. It fails only when the
// directory itself cannot be listed.
func (r *Reader) Read() (*Snapshot, error) {
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return nil, fmt.Errorf("reading manifest directory: %w", err)
	}
	snap := &Snapshot{Origins: map[Ref]string{}}
	present := map[string]bool{}
	var results []*fileResult
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !isManifest(name) {
			continue
		}
		path := filepath.Join(r.dir, name)
		// Stat, not the entry's Lstat: in a ConfigMap volume every file
		// is a symlink through ..data, which an update swaps, and the
		// symlinks themselves never change.
		statAt := time.Now()
		info, err := os.Stat(path)
		if err != nil {
			present[name] = true
			snap.Errors = append(snap.Errors, fmt.Errorf("%s: %w", name, err))
			continue
		}
		if info.IsDir() {
			continue
		}
		present[name] = true
		prev := r.files[name]
		if prev != nil && prev.err == nil && prev.settled() && unchanged(prev.info, info) {
			results = append(results, prev)
			continue
		}
		res := readFile(path, name, prev)
		res.info, res.statAt = info, statAt
		if res.err != nil {
			snap.Errors = append(snap.Errors, res.err)
			if prev != nil && prev.err == nil {
				// Keep serving the last good content of the file.
				snap.Errors = append(snap.Errors, fmt.Errorf("%s: keeping its previous content", name))
				results = append(results, prev)
				continue
			}
			snap.Errors = append(snap.Errors, fmt.Errorf("%s: none of its objects are used until it is fixed", name))
			r.files[name] = res
			continue
		}
		r.files[name] = res
		results = append(results, res)
	}
	for name := range r.files {
		if !present[name] {
			delete(r.files, name)
		}
	}

	for _, res := range results {
		snap.Warnings = append(snap.Warnings, res.warns...)
		snap.Errors = append(snap.Errors, res.docErrs...)
		for _, o := range res.objects {
			if first, dup := snap.Origins[o.ref]; dup {
				snap.Errors = append(snap.Errors, fmt.Errorf("%s (%s): duplicate of the object in %s; ignored", o.ref, o.origin, first))
				continue
			}
			snap.Origins[o.ref] = o.origin
			switch obj := o.obj.(type) {
			case *v1.Service:
				snap.Services = append(snap.Services, obj)
			case *discovery.EndpointSlice:
				snap.EndpointSlices = append(snap.EndpointSlices, obj)
			case *v1.Node:
				snap.Nodes = append(snap.Nodes, obj)
			case *networkingv1.ServiceCIDR:
				snap.ServiceCIDRs = append(snap.ServiceCIDRs, obj)
			}
		}
	}
	return snap, nil
}

// unchanged reports whether a file is the one read before, as it was: the
// same file (a file replaced by rename, or by a swapped symlink, is
// another), the same size, the same modification time.
func unchanged(before, now os.FileInfo) bool {
	return os.SameFile(before, now) && before.Size() == now.Size() && before.ModTime().Equal(now.ModTime())
}

// racyWindow is how long after a file's modification time its size and
// time may still not tell a later write from it: two writes within one
// tick of the file system's clock (coarse on some file systems) leave the
// same time, and with the same size the second would pass unseen.
const racyWindow = 2 * time.Second

// settled reports whether the file had been left alone for racyWindow
// when it was read, so that an unchanged size and time mean unchanged
// content (git's "racily clean" rule). A file read sooner is read again
// until it settles.
func (f *fileResult) settled() bool {
	return f.info.ModTime().Before(f.statAt.Add(-racyWindow))
}

// isManifest selects YAML and JSON files, skipping hidden and editor files.
func isManifest(name string) bool {
	if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") || strings.HasPrefix(name, "#") {
		return false
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// maxFileSize bounds one manifest file.
const maxFileSize = 256 << 20

// readFile parses every document of one file. A YAML syntax error makes the
// whole file unusable (the caller keeps its previous content). A document
// whose object cannot be decoded is reported; when the file's previous
// version had an object of the same kind and name, that object is kept.
func readFile(path, name string, prev *fileResult) *fileResult {
	res := &fileResult{}
	f, err := os.Open(path)
	if err != nil {
		res.err = fmt.Errorf("%s: %w", name, err)
		return res
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		res.err = fmt.Errorf("%s: %w", name, err)
		return res
	}
	if len(data) > maxFileSize {
		res.err = fmt.Errorf("%s: larger than %d MiB", name, maxFileSize>>20)
		return res
	}
	yr := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := yr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			res.err = fmt.Errorf("%s: document %d: %w", name, doc, err)
			return res
		}
		if len(bytes.TrimSpace(raw)) == 0 || isOnlyComments(raw) {
			continue
		}
		origin := name
		if doc > 1 {
			origin = fmt.Sprintf("%s (document %d)", name, doc)
		}
		if err := decodeDoc(raw, origin, res, prev); err != nil {
			if isSyntaxError(err) {
				res.err = err
				return res
			}
			res.docErrs = append(res.docErrs, err)
		}
	}
	return res
}

// syntaxError marks a document that is not valid YAML.
type syntaxError struct{ error }

func (e syntaxError) Unwrap() error { return e.error }

func isSyntaxError(err error) bool {
	var se syntaxError
	return errors.As(err, &se)
}

// keepPrevious carries the previous version of ref forward after its new
// version failed to decode, and returns the error to report.
func keepPrevious(res, prev *fileResult, ref Ref, err error) error {
	if prev == nil || ref.Name == "" {
		return err
	}
	for _, o := range prev.objects {
		if o.ref == ref {
			res.objects = append(res.objects, o)
			return fmt.Errorf("%w; keeping its previous version", err)
		}
	}
	return err
}

func isOnlyComments(raw []byte) bool {
	for _, line := range bytes.Split(raw, []byte("\n")) {
		l := bytes.TrimSpace(line)
		if len(l) > 0 && l[0] != '#' && !bytes.Equal(l, []byte("---")) {
			return false
		}
	}
	return true
}

// decodeDoc decodes one document (or List) into res.
func decodeDoc(raw []byte, origin string, res, prev *fileResult) error {
	var tm struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(raw, &tm); err != nil {
		return syntaxError{fmt.Errorf("%s: %w", origin, err)}
	}
	what := tm.Kind
	if tm.Metadata.Name != "" {
		what += " " + tm.Metadata.Name
	}
	switch {
	case tm.APIVersion == "v1" && tm.Kind == "Service":
		var svc v1.Service
		if err := decodeStrict(raw, &svc); err != nil {
			return keepPrevious(res, prev, Ref{"Service", orDefault(tm.Metadata.Namespace), tm.Metadata.Name},
				fmt.Errorf("%s: %s: %w", origin, what, err))
		}
		defaultNamespace(&svc.ObjectMeta)
		return add(res, &svc, Ref{"Service", svc.Namespace, svc.Name}, origin)
	case tm.APIVersion == "discovery.k8s.io/v1" && tm.Kind == "EndpointSlice":
		var s discovery.EndpointSlice
		if err := decodeStrict(raw, &s); err != nil {
			return keepPrevious(res, prev, Ref{"EndpointSlice", orDefault(tm.Metadata.Namespace), tm.Metadata.Name},
				fmt.Errorf("%s: %s: %w", origin, what, err))
		}
		defaultNamespace(&s.ObjectMeta)
		return add(res, &s, Ref{"EndpointSlice", s.Namespace, s.Name}, origin)
	case tm.APIVersion == "v1" && tm.Kind == "Node":
		var n v1.Node
		if err := decodeStrict(raw, &n); err != nil {
			return keepPrevious(res, prev, Ref{"Node", "", tm.Metadata.Name},
				fmt.Errorf("%s: %s: %w", origin, what, err))
		}
		return add(res, &n, Ref{"Node", "", n.Name}, origin)
	case tm.APIVersion == "networking.k8s.io/v1" && tm.Kind == "ServiceCIDR":
		var sc networkingv1.ServiceCIDR
		if err := decodeStrict(raw, &sc); err != nil {
			return keepPrevious(res, prev, Ref{"ServiceCIDR", "", tm.Metadata.Name},
				fmt.Errorf("%s: %s: %w", origin, what, err))
		}
		return add(res, &sc, Ref{"ServiceCIDR", "", sc.Name}, origin)
	case tm.APIVersion == "v1" && tm.Kind == "List":
		var list struct {
			Items []yamlRaw `json:"items"`
		}
		if err := yaml.Unmarshal(raw, &list); err != nil {
			return fmt.Errorf("%s: List: %w", origin, err)
		}
		var errs []error
		for i, item := range list.Items {
			if err := decodeDoc(item, fmt.Sprintf("%s, item %d", origin, i), res, prev); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	case tm.Kind == "":
		return fmt.Errorf("%s: not a Kubernetes object (no kind)", origin)
	default:
		res.warns = append(res.warns, fmt.Sprintf("%s: skipping %s %s (kubenat reads v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Node and networking.k8s.io/v1 ServiceCIDR)", origin, tm.APIVersion, what))
		return nil
	}
}

// decodeStrict decodes a YAML or JSON document into obj, rejecting unknown
// and duplicate fields with errors that give their path (e.g. unknown field
// "spec.clusterIPz").
func decodeStrict(raw []byte, obj any) error {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(js, obj, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// yamlRaw keeps a List item as raw JSON for a second decoding pass.
type yamlRaw []byte

// UnmarshalJSON stores the raw item.
func (y *yamlRaw) UnmarshalJSON(b []byte) error {
	*y = slices.Clone(b)
	return nil
}

func defaultNamespace(m *metav1.ObjectMeta) { m.Namespace = orDefault(m.Namespace) }

// orDefault applies kubectl's default namespace.
func orDefault(ns string) string {
	if ns == "" {
		return "default"
	}
	return ns
}

func add(res *fileResult, obj any, ref Ref, origin string) error {
	if ref.Name == "" {
		return fmt.Errorf("%s: %s: metadata.name: must be set", origin, ref.Kind)
	}
	res.objects = append(res.objects, object{ref: ref, obj: obj, origin: origin})
	return nil
}
