package model

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
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
	name := e.Name
	if e.Namespace != "" {
		name = e.Namespace + "/" + e.Name
	}
	b.WriteString(quoteIfHostile(name))
	if e.Origin != "" {
		fmt.Fprintf(&b, " (%s)", quoteIfHostile(e.Origin))
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

// quoteIfHostile returns s, or s quoted as a Go string when it holds
// control or unprintable characters: names come from the input, and one
// with a newline must not forge a line of its own in a log or an error
// message.
func quoteIfHostile(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}
