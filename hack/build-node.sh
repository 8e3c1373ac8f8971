#!/usr/bin/env bash
# Build the node's non-Kubernetes daemons from the Go module proxy into $1 (a cache directory
# outside the repo): containerd (daemon, ctr, the runc shim), CoreDNS (only the plugins the
# cluster uses) and local-path-provisioner (the default StorageClass's dynamic provisioner),
# from the module graph the control plane shares (lib-build.sh's
# write_graph_module), so what Kubernetes' build compiled is reused from GOCACHE. Pinned
# versions come from the environment (set by kernelsession.localcluster.building.pins).
set -euo pipefail
out=${1:?usage: build-node.sh OUTDIR}
containerd=${KS_CONTAINERD_VERSION:?}
command -v go >/dev/null || { echo "build-node: no 'go' on PATH" >&2; exit 3; }
work=$(mktemp -d "${TMPDIR:-/tmp}/ks-nodebuild.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
export GOFLAGS=-mod=mod CGO_ENABLED=0
# shellcheck source=hack/lib-build.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-build.sh"

write_graph_module "$work/graph"
cd "$work/graph"
ld="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd"
ld="$ld -X github.com/containerd/containerd/v2/version.Revision=modproxy"
SECONDS=0
mkdir -p "$work/bin"
go build -trimpath -tags "$GRAPH_TAGS" -ldflags "$ld" -o "$work/bin/" \
  github.com/containerd/containerd/v2/cmd/containerd \
  github.com/containerd/containerd/v2/cmd/ctr \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
  ./coredns
# A build of its own: it imports logrus as github.com/Sirupsen/logrus, which one build with
# containerd's github.com/sirupsen/logrus refuses ("case-insensitive import collision").
go build -trimpath -tags "$GRAPH_TAGS" -ldflags "-s -w" -o "$work/bin/" \
  github.com/rancher/local-path-provisioner
mv "$work/bin"/* "$out/"
echo "built: containerd $containerd, CoreDNS ${KS_COREDNS_VERSION:?} and local-path-provisioner ${KS_LOCAL_PATH_VERSION:?} in ${SECONDS}s"
"$out/containerd" --version
"$out/coredns" -version | sed -n 1p
