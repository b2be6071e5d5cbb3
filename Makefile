# kubenat's make targets. `make bench` runs the benchmark suite (root, about
# 40 minutes: the datapath stage ~36, the control plane ~5) and rewrites docs/benchmarks.md and docs/bench/.
GO ?= go

.PHONY: bench bench-quick bpf

bench:
	./scripts/install-deps.sh
	$(GO) run ./bench/cmd/kubenat-bench -out docs

# A few minutes' check of the suite; writes to /tmp/kubenat-bench-quick.
bench-quick:
	./scripts/install-deps.sh
	$(GO) run ./bench/cmd/kubenat-bench -quick -out /tmp/kubenat-bench-quick

# Regenerates the socket load balancer's eBPF object and its Go bindings
# (internal/dataplane/socketlb/bpf_bpfel.{o,go}, committed: building kubenat
# needs no clang) from bpf/connect.c. Needs clang and libbpf-dev.
bpf:
	$(GO) generate ./internal/dataplane/socketlb
