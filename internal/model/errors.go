package model

import (
	"fmt"
	"strings"
)

// ObjectError is a problem with one input object. It names the object, the
// field and, when known, where the object came from (a manifest file).
type ObjectError struct {
	Kind      string // "Service", "EndpointSlice" or "Node"
	Namespace string
	Name      string
	Origin    string // e.g. the manifest file; empty for the API
	Field     string // e.g. "spec.ports[1].port"; empty for the whole object
	Msg       string
}

// Error formats as `Service default/web (web.yaml): spec.ports[1].port: 70000 is out of range 1-65535`.
func (e *ObjectError) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind)
	b.WriteByte(' ')
	if e.Namespace != "" {
		b.WriteString(e.Namespace)
		b.WriteByte('/')
	}
	b.WriteString(e.Name)
	if e.Origin != "" {
		fmt.Fprintf(&b, " (%s)", e.Origin)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// objErrs collects the errors of one object.
type objErrs struct {
	kind, ns, name, origin string
	errs                   []error
}

func (o *objErrs) add(field, format string, args ...any) {
	o.errs = append(o.errs, &ObjectError{
		Kind: o.kind, Namespace: o.ns, Name: o.name, Origin: o.origin,
		Field: field, Msg: fmt.Sprintf(format, args...),
	})
}
