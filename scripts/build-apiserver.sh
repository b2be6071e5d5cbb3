#!/usr/bin/env bash
# build-apiserver.sh — build the real kube-apiserver and etcd used by kubenat's
# control-plane tests (internal/apiservertest) from the Go module proxy.
#
# The versions are pinned by the separate tools module in tools/apiserver.
# Binaries are cached outside the clone, keyed by Kubernetes version:
#
#   ${KUBENAT_TOOLS_CACHE:-$HOME/.cache/kubenat}/k8s-v1.37.2/bin/{kube-apiserver,etcd}
#
# Behaviour:
#   - If both binaries exist and report the expected versions, nothing is built.
#   - Concurrent runs are serialised with flock(1) on a lock file next to bin/;
#     a run that waited re-checks the cache and normally finds it filled.
#   - Binaries are built into a temporary directory on the same filesystem and
#     renamed into bin/ only when complete, so bin/ never holds a partial file.
#   - On success the bin directory is printed on stdout (and nothing else);
#     progress goes to stderr. Exit status is non-zero on any failure.
#
# A cold build takes about 7 minutes and 2.4 GB of memory on 2 cores.
set -euo pipefail

readonly K8S_VERSION=v1.37.2
readonly ETCD_VERSION=3.7.0

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools_dir="$(cd "${script_dir}/../tools/apiserver" && pwd)"

cache_root="${KUBENAT_TOOLS_CACHE:-${HOME}/.cache/kubenat}"
version_dir="${cache_root}/k8s-${K8S_VERSION}"
bin_dir="${version_dir}/bin"
lock_file="${version_dir}/.build.lock"

log() { printf 'build-apiserver: %s\n' "$*" >&2; }

# cached_ok succeeds when both binaries exist, run, and report the pinned versions.
cached_ok() {
	[[ -x "${bin_dir}/kube-apiserver" && -x "${bin_dir}/etcd" ]] || return 1
	local v
	v="$(timeout 30 "${bin_dir}/kube-apiserver" --version 2>/dev/null)" || return 1
	[[ "${v}" == "Kubernetes ${K8S_VERSION}" ]] || return 1
	v="$(timeout 30 "${bin_dir}/etcd" --version 2>/dev/null)" || return 1
	[[ "${v}" == *"etcd Version: ${ETCD_VERSION}"* ]] || return 1
}

if cached_ok; then
	printf '%s\n' "${bin_dir}"
	exit 0
fi

command -v go >/dev/null || { log "go is not on PATH"; exit 1; }
command -v flock >/dev/null || { log "flock (util-linux) is not on PATH"; exit 1; }

mkdir -p "${version_dir}"
exec 9>"${lock_file}"
if ! flock -n 9; then
	log "another build holds ${lock_file}; waiting for it"
	flock 9
fi

# Another run may have finished the build while this one waited for the lock.
if cached_ok; then
	printf '%s\n' "${bin_dir}"
	exit 0
fi

tmp_dir="$(mktemp -d "${version_dir}/.build.XXXXXX")"
trap 'rm -rf "${tmp_dir}"' EXIT

# Same stamping as Kubernetes' hack/lib/version.sh, so /version reports the
# real release instead of v0.0.0-master.
pkg=k8s.io/component-base/version
ldflags="-s -w"
ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
ldflags+=" -X ${pkg}.gitMajor=1"
ldflags+=" -X ${pkg}.gitMinor=37"
ldflags+=" -X ${pkg}.gitTreeState=clean"

export CGO_ENABLED=0

start=${SECONDS}
log "building kube-apiserver ${K8S_VERSION} (cold: ~7 min on 2 cores)"
go build -C "${tools_dir}" -trimpath -ldflags "${ldflags}" \
	-o "${tmp_dir}/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
log "building etcd ${ETCD_VERSION}"
go build -C "${tools_dir}" -trimpath -ldflags "-s -w" \
	-o "${tmp_dir}/etcd" go.etcd.io/etcd/server/v3

mkdir -p "${bin_dir}"
mv -f "${tmp_dir}/etcd" "${bin_dir}/etcd"
mv -f "${tmp_dir}/kube-apiserver" "${bin_dir}/kube-apiserver"

if ! cached_ok; then
	log "built binaries in ${bin_dir} do not report ${K8S_VERSION} / etcd ${ETCD_VERSION}"
	exit 1
fi
log "done in $((SECONDS - start)) s"
printf '%s\n' "${bin_dir}"
