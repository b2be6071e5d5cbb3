package kube_test

import "k8s.io/client-go/rest"

// restConfigUnreachable points at a port nothing listens on (port 1 on
// loopback refuses at once).
var restConfigUnreachable = rest.Config{Host: "https://127.0.0.1:1"}
