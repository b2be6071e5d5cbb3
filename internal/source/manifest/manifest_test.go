package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const goodService = `apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.96.0.10
  ports:
  - port: 80
`

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func errText(s *Snapshot) string {
	var b strings.Builder
	for _, e := range s.Errors {
		b.WriteString(e.Error() + "\n")
	}
	return b.String()
}

func TestReadKinds(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "all.yaml", goodService+`---
# only a comment
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints: []
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.96.0.0/12]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
`)
	write(t, dir, "list.json", `{"apiVersion":"v1","kind":"List","items":[
	  {"apiVersion":"v1","kind":"Service","metadata":{"name":"api","namespace":"prod"},"spec":{"clusterIP":"10.96.0.11","ports":[{"port":443}]}}]}`)
	write(t, dir, "notes.txt", "not a manifest")
	write(t, dir, ".hidden.yaml", "garbage: [")
	s, err := NewReader(dir).Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Errors) > 0 {
		t.Fatalf("errors: %s", errText(s))
	}
	if len(s.Services) != 2 || len(s.EndpointSlices) != 1 || len(s.Nodes) != 1 || len(s.ServiceCIDRs) != 1 {
		t.Fatalf("got %d services, %d slices, %d nodes, %d ServiceCIDRs", len(s.Services), len(s.EndpointSlices), len(s.Nodes), len(s.ServiceCIDRs))
	}
	if got := s.ServiceCIDRs[0].Spec.CIDRs; len(got) != 1 || got[0] != "10.96.0.0/12" {
		t.Errorf("the ServiceCIDR's cidrs: %v", got)
	}
	if s.Services[0].Namespace != "default" && s.Services[1].Namespace != "default" {
		t.Error("the default namespace was not applied")
	}
	if got := s.Origins[Ref{"Service", "prod", "api"}]; got != "list.json, item 0" {
		t.Errorf("origin of prod/api = %q", got)
	}
	if got := s.Origins[Ref{"EndpointSlice", "default", "web-1"}]; got != "all.yaml (document 3)" {
		t.Errorf("origin of web-1 = %q", got)
	}
	if len(s.Warnings) != 1 || !strings.Contains(s.Warnings[0], "skipping apps/v1 Deployment web") {
		t.Errorf("warnings %v", s.Warnings)
	}
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name, content string
		want          string
	}{
		{"syntax.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x\n", "syntax.yaml: none of its objects are used until it is fixed"},
		{"unknown-field.yaml", strings.Replace(goodService, "  clusterIP:", "  clusterIPz: x\n  clusterIP:", 1), `unknown field "spec.clusterIPz"`},
		{"wrong-type.yaml", strings.Replace(goodService, "port: 80", "port: eighty", 1), "wrong-type.yaml: Service web"},
		{"no-kind.yaml", "foo: bar\n", "not a Kubernetes object"},
		{"no-name.yaml", "apiVersion: v1\nkind: Service\nspec: {clusterIP: 10.96.0.12}\n", "metadata.name: must be set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "good.yaml", strings.Replace(goodService, "name: web", "name: good", 1))
			write(t, dir, tc.name, tc.content)
			s, err := NewReader(dir).Read()
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Services) != 1 || s.Services[0].Name != "good" {
				t.Errorf("the good file is not served: %d services", len(s.Services))
			}
			if msg := errText(s); !strings.Contains(msg, tc.want) {
				t.Errorf("errors %q, want one containing %q", msg, tc.want)
			}
		})
	}
}

func TestDuplicates(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", goodService)
	write(t, dir, "b.yaml", goodService)
	s, err := NewReader(dir).Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Services) != 1 || s.Origins[Ref{"Service", "default", "web"}] != "a.yaml" {
		t.Errorf("kept %d services from %q", len(s.Services), s.Origins[Ref{"Service", "default", "web"}])
	}
	if msg := errText(s); !strings.Contains(msg, "Service default/web (b.yaml): duplicate of the object in a.yaml") {
		t.Errorf("errors %q", msg)
	}
}

// TestKeepsLastGoodContent: a bad edit keeps what the file held before.
func TestKeepsLastGoodContent(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "web.yaml", goodService+"---\n"+strings.Replace(goodService, "name: web", "name: other", 1))
	r := NewReader(dir)
	if s, _ := r.Read(); len(s.Services) != 2 {
		t.Fatalf("first read: %d services", len(s.Services))
	}
	bump := func() { // make sure the change is seen even within one mtime tick
		later := time.Now().Add(2 * time.Second)
		_ = os.Chtimes(filepath.Join(dir, "web.yaml"), later, later)
	}
	// A document that no longer decodes keeps its previous object.
	write(t, dir, "web.yaml", strings.Replace(goodService, "port: 80", "port: eighty", 1)+"---\n"+strings.Replace(goodService, "name: web", "name: other", 1))
	bump()
	s, _ := r.Read()
	if len(s.Services) != 2 || !strings.Contains(errText(s), "keeping its previous version") {
		t.Errorf("after a bad document: %d services, errors %q", len(s.Services), errText(s))
	}
	// A file that is no longer YAML keeps its whole previous content.
	write(t, dir, "web.yaml", "kind: [")
	bump()
	s, _ = r.Read()
	if len(s.Services) != 2 || !strings.Contains(errText(s), "keeping its previous content") {
		t.Errorf("after a syntax error: %d services, errors %q", len(s.Services), errText(s))
	}
	// Removing the file removes its objects.
	os.Remove(filepath.Join(dir, "web.yaml"))
	if s, _ := r.Read(); len(s.Services) != 0 {
		t.Errorf("after removal: %d services", len(s.Services))
	}
}

// TestSameSizeEditWithinOneTick: a file edited in place to content of the
// same size, within one tick of the file system's clock (its modification
// time unchanged), is read again while it is that recent.
func TestSameSizeEditWithinOneTick(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "web.yaml")
	write(t, dir, "web.yaml", goodService)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(dir)
	if s, _ := r.Read(); len(s.Services) != 1 || s.Services[0].Spec.Ports[0].Port != 80 {
		t.Fatalf("first read: %+v", s.Services)
	}
	edited := strings.Replace(goodService, "port: 80", "port: 81", 1)
	if len(edited) != len(goodService) {
		t.Fatal("the edit changes the size")
	}
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
	if s, _ := r.Read(); len(s.Services) != 1 || s.Services[0].Spec.Ports[0].Port != 81 {
		t.Errorf("after a same-size edit within one tick: port %d, want 81", s.Services[0].Spec.Ports[0].Port)
	}
}

// TestConfigMapVolume: in a ConfigMap volume each file is a symlink
// through ..data to a timestamped directory, and an update writes a new
// directory and swaps ..data. The symlinks never change; the files they
// lead to do, and must be read again (here with the same size and
// modification time: only the file's identity tells).
func TestConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	stamp := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	version := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name), "web.yaml", content)
		if err := os.Chtimes(filepath.Join(dir, name, "web.yaml"), stamp, stamp); err != nil {
			t.Fatal(err)
		}
		// The kubelet's swap: a new symlink renamed over ..data.
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_11_27_12_00_00.1", goodService)
	if err := os.Symlink("..data/web.yaml", filepath.Join(dir, "web.yaml")); err != nil {
		t.Fatal(err)
	}
	r := NewReader(dir)
	s, err := r.Read()
	if err != nil || len(s.Services) != 1 || s.Services[0].Spec.ClusterIP != "10.96.0.10" {
		t.Fatalf("first read: %v, %+v", err, s)
	}
	version("..2026_11_27_12_00_00.2", strings.Replace(goodService, "10.96.0.10", "10.96.0.99", 1))
	s, err = r.Read()
	if err != nil || len(s.Services) != 1 || s.Services[0].Spec.ClusterIP != "10.96.0.99" {
		t.Errorf("after the ConfigMap update: %v, ClusterIP %v; want 10.96.0.99", err, s.Services)
	}
	if len(s.Errors) > 0 {
		t.Errorf("errors: %q", errText(s))
	}
}
