# Shared by hack/build-controlplane.sh and hack/build-node.sh.

# write_graph_module DIR: make DIR a wrapper module whose one dependency graph holds every
# Go program the local cluster runs: Kubernetes with its exact pins (its staging modules
# mapped to their published versions), etcd, containerd, CoreDNS and
# local-path-provisioner, each at the version in KS_*_VERSION (MVS raises a shared
# dependency to the highest version any of them asks for). Built from one graph, the
# packages they share (client-go, apimachinery, api, grpc, protobuf, otel, prometheus, ...)
# compile once: the control plane's `go build` fills GOCACHE and the node's reuses it.
# Also writes DIR/coredns/main.go: CoreDNS with only the plugins the cluster's Corefile
# uses (cluster/addons.py), without the cloud providers' SDKs of its default set.
# Both build scripts call it with the same versions, so both see the same graph.
write_graph_module() {
  local dir=$1 k8s=${KS_K8S_VERSION:?} gomod staging
  staging=${k8s/v1./v0.}
  mkdir -p "$dir/coredns"
  (cd "$dir" && go mod download -json "k8s.io/kubernetes@$k8s" > dl.json)
  gomod=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["GoMod"])' "$dir/dl.json")
  {
    echo "module ksgraph"
    echo
    sed -n '/^go /p' "$gomod"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $k8s"
    echo "	go.etcd.io/etcd/server/v3 ${KS_ETCD_VERSION:?}"
    echo "	github.com/containerd/containerd/v2 ${KS_CONTAINERD_VERSION:?}"
    echo "	github.com/coredns/coredns ${KS_COREDNS_VERSION:?}"
    echo "	github.com/rancher/local-path-provisioner ${KS_LOCAL_PATH_VERSION:?}"
    echo ")"
    echo
    # Kubernetes' own pins, but for the modules required above at their pinned versions
    sed -n '/^require (/,/^)/p' "$gomod" \
      | grep -v -E '^\s(go\.etcd\.io/etcd/server/v3|github\.com/containerd/containerd/v2|github\.com/coredns/coredns|github\.com/rancher/local-path-provisioner) '
    echo "replace ("
    sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$staging"'#p' "$gomod"
    echo ")"
  } > "$dir/go.mod"
  cat > "$dir/coredns/main.go" <<'GO'
// CoreDNS with the plugins the local cluster's Corefile uses, in CoreDNS's own order.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func init() {
	dnsserver.Directives = []string{
		"bind", "ready", "health", "errors", "log", "cache", "template", "kubernetes",
	}
}

func main() { coremain.Run() }
GO
}

# The flags every build from the graph shares (the same flags keep GOCACHE entries shared).
GRAPH_TAGS="no_btrfs no_devmapper no_zfs"
