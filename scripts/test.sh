#!/usr/bin/env bash
# Runs every kubenat test: formatting, vet, unit tests and the kernel tests
# (real packets in network namespaces; they need root). Installs the Debian
# packages the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

./scripts/install-deps.sh
# A real kube-apiserver and etcd for the control-plane tests, built from the
# Go module proxy once and cached outside the clone (~5 min cold, 0.1 s after).
./scripts/build-apiserver.sh >/dev/null

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:" $unformatted >&2
  exit 1
fi
echo "== go vet"
go vet ./...
echo "== go test"
go test -count=1 -timeout 20m ./... "$@"
