#!/usr/bin/env bash
# Build the node's non-Kubernetes daemons from the Go module proxy into $1 (a cache directory
# outside the repo): containerd (daemon, ctr, the runc shim), CoreDNS and
# local-path-provisioner (the default StorageClass's dynamic provisioner). Pinned versions
# come from the environment (set by kernelsession.localcluster.building.nodebinaries, which pins
# them). The three are separate modules and build side by side.
set -euo pipefail
out=${1:?usage: build-node.sh OUTDIR}
containerd=${KS_CONTAINERD_VERSION:?}
coredns=${KS_COREDNS_VERSION:?}
localpath=${KS_LOCAL_PATH_VERSION:?}
command -v go >/dev/null || { echo "build-node: no 'go' on PATH" >&2; exit 3; }
work=$(mktemp -d "${TMPDIR:-/tmp}/ks-nodebuild.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
export GOFLAGS=-mod=mod CGO_ENABLED=0
# shellcheck source=hack/lib-build.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-build.sh"

build_containerd() {
  # containerd 2.x: the daemon, ctr and the runc v2 shim (runc itself is Debian's).
  mkdir -p "$work/containerd" && cd "$work/containerd"
  printf 'module kscontainerd\n\ngo 1.24\n\nrequire github.com/containerd/containerd/v2 %s\n' \
    "$containerd" > go.mod
  local ld="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd"
  ld="$ld -X github.com/containerd/containerd/v2/version.Revision=modproxy"
  go build -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ld" -o "$out/" \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/ctr \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
}

build_coredns() {
  # CoreDNS with its default plugin set (kubernetes, forward, cache, ...).
  mkdir -p "$work/coredns" && cd "$work/coredns"
  printf 'module kscoredns\n\ngo 1.24\n\nrequire github.com/coredns/coredns %s\n' "$coredns" > go.mod
  go build -trimpath -ldflags "-s -w" -o "$out/coredns" github.com/coredns/coredns
}

build_localpath() {
  # local-path-provisioner: PersistentVolumes in a directory of the node, per claim.
  mkdir -p "$work/localpath" && cd "$work/localpath"
  printf 'module kslocalpath\n\ngo 1.24\n\nrequire github.com/rancher/local-path-provisioner %s\n' \
    "$localpath" > go.mod
  go build -trimpath -ldflags "-s -w" -o "$out/local-path-provisioner" \
    github.com/rancher/local-path-provisioner
}

start_part "containerd $containerd" build_containerd
start_part "coredns $coredns" build_coredns
start_part "local-path-provisioner $localpath" build_localpath
wait_parts
"$out/containerd" --version
"$out/coredns" -version | head -1
