#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
# and kubectl from the Go module proxy into $1 (a cache directory outside the repo), in one
# `go build` from the module graph the node's daemons share (lib-build.sh's
# write_graph_module). Pinned versions come from the environment (set by
# kernelsession.localcluster.building.pins, the one place that decides them).
set -euo pipefail
out=${1:?usage: build-controlplane.sh OUTDIR}
k8s=${KS_K8S_VERSION:?}
command -v go >/dev/null || { echo "build-controlplane: no 'go' on PATH" >&2; exit 3; }
work=$(mktemp -d "${TMPDIR:-/tmp}/ks-cpbuild.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
export GOFLAGS=-mod=mod CGO_ENABLED=0
# shellcheck source=hack/lib-build.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-build.sh"

write_graph_module "$work/graph"
cd "$work/graph"
ver="k8s.io/component-base/version" cver="k8s.io/client-go/pkg/version"
minor=$(echo "$k8s" | cut -d. -f2)
ld="-s -w"
for p in $ver $cver; do
  ld="$ld -X $p.gitVersion=$k8s -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
SECONDS=0
mkdir -p "$work/bin"
go build -trimpath -tags "$GRAPH_TAGS" -ldflags "$ld" -o "$work/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl \
  go.etcd.io/etcd/server/v3
# `go build` names a /vN module's program after the element before it
mv "$work/bin/server" "$work/bin/etcd"
mv "$work/bin"/* "$out/"
echo "built: Kubernetes $k8s and etcd ${KS_ETCD_VERSION:?} in ${SECONDS}s"
"$out/etcd" --version | sed -n 1p  # sed reads it all: head would close the pipe (SIGPIPE under pipefail)
"$out/kube-apiserver" --version
