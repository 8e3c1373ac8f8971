#!/usr/bin/env bash
# Build KWOK (sigs.k8s.io/kwok, the `kwok` controller that runs fake nodes) from the Go module
# proxy into $1 (a cache directory outside the repo). The pinned version comes from the
# environment (set by kernelsession.localcluster.building.kwok, which pins it). KWOK builds
# against newer Kubernetes libraries than the local cluster's, so it has its own module
# graph: a wrapper module that requires KWOK with KWOK's exact dependency versions (its
# go.mod has no replaces or excludes). Only `make bench` (the scale section) builds it.
set -euo pipefail
out=${1:?usage: build-kwok.sh OUTDIR}
kwok=${KS_KWOK_VERSION:?}
command -v go >/dev/null || { echo "build-kwok: no 'go' on PATH" >&2; exit 3; }
work=$(mktemp -d "${TMPDIR:-/tmp}/ks-kwokbuild.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$out"
export GOFLAGS=-mod=mod CGO_ENABLED=0

cd "$work"
go mod download -json "sigs.k8s.io/kwok@$kwok" > dl.json
gomod=$(python3 -c 'import json; print(json.load(open("dl.json"))["GoMod"])')
{
  echo "module kskwok"
  echo
  sed -n '/^go /p' "$gomod"
  echo
  echo "require sigs.k8s.io/kwok $kwok"
  sed -n '/^require (/,/^)/p;/^require [^(]/p' "$gomod"
  sed -n '/^replace (/,/^)/p;/^replace [^(]* => [^.]/p;/^exclude /p' "$gomod"
} > go.mod
ld="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$kwok"
go build -trimpath -ldflags "$ld" -o "$out/kwok" sigs.k8s.io/kwok/cmd/kwok
"$out/kwok" --version || true
