# syntax=docker/dockerfile:1
#
# The kubenat image: the agent and what its datapaths need at run time.
#
#   docker build -t ghcr.io/kubenat/kubenat:dev --build-arg VERSION=dev .
#
# kubenat is built with cgo: it dlopens libnftables.so.1 at run time (and
# falls back to the nft binary), so the runtime stage installs Debian's
# nftables package, which brings both, on the same Debian release the binary
# was linked against (glibc). The iptables datapath runs Debian's iptables
# commands: "iptables" is iptables-nft here, whatever the host uses (set
# datapath: iptables-legacy on hosts whose rules are legacy). conntrack
# entries are cleared over netlink: no conntrack binary is needed.
#
# This file is not built by the test suite (no container engine runs on the
# development machine); deploy/deploy_test.go checks what it can: the files
# it copies exist, every line is a comment or an instruction, the Go version
# matches go.mod, cgo is on, nftables and iptables are installed and the
# entrypoint is the binary built.

ARG GO_VERSION=1.26
FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -trimpath -ldflags "-s -w -X github.com/kubenat/kubenat/internal/version.Version=${VERSION}" -o /out/kubenat ./cmd/kubenat

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends nftables iptables && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kubenat /usr/local/bin/kubenat
ENTRYPOINT ["/usr/local/bin/kubenat"]
