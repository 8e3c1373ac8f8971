#!/usr/bin/env bash
# Build the local cluster's ingress controller, Traefik v3, from the Go module proxy into $1
# (a cache directory outside the repo). The pinned version comes from the environment (set by
# kernelsession.localcluster.building.ingressbinaries, which pins it).
#
# Traefik's go.mod carries directives that Go ignores in a dependency: replaces by forks
# (gorilla/mux, go-http-auth...) and excludes. The wrapper module below copies them, with
# Traefik's exact dependency versions, as build-controlplane.sh does for Kubernetes.
# Traefik v3.7 also replaces its nested module github.com/traefik/traefik/dynamic/ext by a
# local directory: that module is not published (its path does not match its directory in
# the repository) and module zips leave nested modules out, so when asked for, the wrapper
# provides it: it only declares the empty extension points (`type HTTP struct{}`,
# `type Router struct{}`) that Traefik's own build leaves empty too.
set -euo pipefail
out=${1:?usage: build-ingress.sh OUTDIR}
traefik=${KS_TRAEFIK_VERSION:?}
command -v go >/dev/null || { echo "build-ingress: no 'go' on PATH" >&2; exit 3; }
work=$(mktemp -d "${TMPDIR:-/tmp}/ks-ingressbuild.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$out"
export GOFLAGS=-mod=mod CGO_ENABLED=0

mkdir -p "$work/traefik" && cd "$work/traefik"
go mod download -json "github.com/traefik/traefik/v3@$traefik" > dl.json
gomod=$(python3 -c 'import json; print(json.load(open("dl.json"))["GoMod"])')
ext=github.com/traefik/traefik/dynamic/ext
if grep -q "^replace $ext => \./" "$gomod"; then
  mkdir -p ext
  printf 'module %s\n\ngo 1.24\n' "$ext" > ext/go.mod
  cat > ext/ext.go <<'EOF'
// Package ext holds Traefik's dynamic-configuration extension points, empty in Traefik's
// own build.
package ext

// HTTP is a dynamic.HTTP extension.
type HTTP struct{}

// Router is a dynamic.Router extension.
type Router struct{}

// RouterIng is a RouterIng extension for ingress provider annotations.
type RouterIng struct{}

// ToRouter converts RouterIng to a Router.
func (r RouterIng) ToRouter() Router { return Router{} }
EOF
fi
{
  echo "module ksingress"
  echo
  sed -n '/^go /p' "$gomod"
  echo
  echo "require github.com/traefik/traefik/v3 $traefik"
  # keep the exact dependency versions Traefik pins
  sed -n '/^require (/,/^)/p;/^require [^(]/p' "$gomod"
  # its forks (module replaces; local paths only for the nested module above) and excludes
  sed -n '/^replace (/,/^)/p;/^replace [^(]* => [^.]/p;/^exclude /p' "$gomod"
  if [ -d ext ]; then echo "replace $ext => ./ext"; fi
} > go.mod
ld="-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$traefik"
ld="$ld -X github.com/traefik/traefik/v3/pkg/version.BuildDate=modproxy"
go build -trimpath -ldflags "$ld" -o "$out/traefik" github.com/traefik/traefik/v3/cmd/traefik
"$out/traefik" version
