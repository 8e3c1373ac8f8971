"""The node's configuration files, rendered from what they depend on (pure functions):
containerd's ``config.toml``, the CNI network, the kubelet's and kube-proxy's
configurations. :mod:`.node` writes them and starts the daemons; :mod:`.addons` has the
add-ons' (CoreDNS, local-path) objects."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kernelsession.localcluster.host import network as hostnet

NODE_NAME = "local-node"
CLUSTER_DOMAIN = "cluster.local"


def containerd_config(
    *,
    root: Path,
    state: Path,
    address: Path,
    sandbox_image: str,
    runc: Path,
    cni_bin_dir: Path,
    cni_conf_dir: Path,
) -> str:
    """containerd's ``config.toml`` (version 3): content under ``root`` (kept between
    runs), state under ``state``, the gRPC socket at ``address``, runc as the only
    runtime, the CRI's CNI plugins from ``cni_bin_dir`` with the network in
    ``cni_conf_dir``."""
    runtime = '[plugins."io.containerd.cri.v1.runtime"'
    return f"""version = 3
root = "{root}"
state = "{state / "state"}"
oom_score = 0

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[debug]
  level = "warn"

[plugins]
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "{sandbox_image}"
  [plugins."io.containerd.cri.v1.runtime"]
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    max_container_log_line_size = 16384
    {runtime}.containerd]
      default_runtime_name = "runc"
      {runtime}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        {runtime}.containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          SystemdCgroup = false
          Root = "{state / "runc"}"
    {runtime}.cni]
      bin_dirs = ["{cni_bin_dir}"]
      conf_dir = "{cni_conf_dir}"
      max_conf_num = 1
  [plugins."io.containerd.internal.v1.opt"]
    path = "{state / "opt"}"
  [plugins."io.containerd.nri.v1.nri"]
    disable = true
"""


def cni_config(ipam_dir: Path) -> str:
    """The pods' network (a conflist): the node's bridge with host-local addresses from the
    node subnet (kept in ``ipam_dir``), IPv6 off in pods, port mappings."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "kernelsession",
        "plugins": [
            {
                "type": "bridge",
                "bridge": hostnet.BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": hostnet.NODE_SUBNET, "gateway": hostnet.NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            # no IPv6 in pods: no link-local path between pods around the IPv4 rules
            {
                "type": "tuning",
                "sysctl": {
                    "net.ipv6.conf.all.disable_ipv6": "1",
                    "net.ipv6.conf.default.disable_ipv6": "1",
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conf, indent=1)


def kubelet_config(
    *,
    containerd_address: Path,
    port: int,
    healthz_port: int,
    ca_file: Path,
    kubelet_root: Path,
    max_pods: int,
) -> str:
    """The kubelet's KubeletConfiguration: serving on the node IP at ``port`` (webhook
    authentication and authorisation, clients signed by ``ca_file``), healthz on
    127.0.0.1 at ``healthz_port``, containerd's CRI at ``containerd_address``."""
    sock = f"unix://{containerd_address}"
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": sock,
        "imageServiceEndpoint": sock,
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "address": hostnet.NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True, "cacheTTL": "30s"},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {
            "mode": "Webhook",
            "webhook": {"cacheAuthorizedTTL": "30s", "cacheUnauthorizedTTL": "5s"},
        },
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "podLogsDir": str(kubelet_root / "pod-logs"),
        "volumePluginDir": str(kubelet_root / "volume-plugins"),
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [hostnet.DNS_SERVICE_IP],
        "resolvConf": "/etc/resolv.conf",
        "maxPods": max_pods,
        "registerNode": True,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
            "imagefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "imageMinimumGCAge": "24h",
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "20s",
        "runtimeRequestTimeout": "2m",
        "hairpinMode": "hairpin-veth",
        "protectKernelDefaults": False,
        # no CAP_SYS_RESOURCE here, and the open-files hard limit is 20000
        "oomScoreAdj": 0,
        "maxOpenFiles": 20000,
        "localStorageCapacityIsolation": True,
        "shutdownGracePeriod": "0s",
        "logging": {"format": "text"},
    }
    return yaml.safe_dump(config, sort_keys=False)


def kube_proxy_config(*, kubeconfig: Path, healthz_port: int, metrics_port: int) -> str:
    """kube-proxy's KubeProxyConfiguration: iptables mode, NodePorts on the node IP only,
    health and metrics on 127.0.0.1, the host's conntrack tunables left alone."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": hostnet.POD_RANGE,
        "hostnameOverride": NODE_NAME,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{hostnet.NODE_IP}/32"],
        # leave the host's conntrack tunables alone
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False},
    }
    return yaml.safe_dump(config, sort_keys=False)
