#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
# and kubectl from the Go module proxy
# into $1 (a cache directory outside the repo). Pinned versions come from the environment
# (set by kernelsession.localcluster.building.binaries, which is the one place that decides them).
# Kubernetes and etcd are separate modules with different dependency pins: they build side
# by side (one's module downloads and single-threaded links overlap the other's compiling).
set -euo pipefail
out=${1:?usage: build-controlplane.sh OUTDIR}
k8s=${KS_K8S_VERSION:?}
etcd=${KS_ETCD_VERSION:?}
command -v go >/dev/null || { echo "build-controlplane: no 'go' on PATH" >&2; exit 3; }
work=$(mktemp -d "${TMPDIR:-/tmp}/ks-cpbuild.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
staging=${k8s/v1./v0.}
export GOFLAGS=-mod=mod CGO_ENABLED=0
# shellcheck source=hack/lib-build.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-build.sh"

build_k8s() {
  # A wrapper module that maps the staging replace directives to published versions.
  mkdir -p "$work/k8s" && cd "$work/k8s"
  go mod download -json "k8s.io/kubernetes@$k8s" > dl.json
  gomod=$(python3 -c 'import json,sys; print(json.load(open("dl.json"))["GoMod"])')
  {
    echo "module kswrapper"
    echo
    sed -n '/^go /p' "$gomod"
    echo
    echo "require k8s.io/kubernetes $k8s"
    # keep the exact dependency versions Kubernetes pins
    sed -n '/^require (/,/^)/p' "$gomod"
    echo "replace ("
    sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$staging"'#p' "$gomod"
    echo ")"
  } > go.mod
  local ver="k8s.io/component-base/version" cver="k8s.io/client-go/pkg/version" minor ld p
  minor=$(echo "$k8s" | cut -d. -f2)
  ld="-s -w"
  for p in $ver $cver; do
    ld="$ld -X $p.gitVersion=$k8s -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  go build -trimpath -ldflags "$ld" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  # The server module's own replace directives are ignored in a dependency, and its
  # sibling modules are published at the same version.
  mkdir -p "$work/etcd" && cd "$work/etcd"
  printf 'module ksetcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$etcd" > go.mod
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
}

start_part "kubernetes $k8s" build_k8s
start_part "etcd $etcd" build_etcd
wait_parts
"$out/etcd" --version | head -1
"$out/kube-apiserver" --version
