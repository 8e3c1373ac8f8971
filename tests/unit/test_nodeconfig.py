"""The node's configuration files (pure renderers of
:mod:`kernelsession.localcluster.cluster.nodeconfig`) and the shared lookup of built
binaries (:mod:`kernelsession.localcluster.building.gobuild`)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from kernelsession.localcluster.building.gobuild import cache_root, first_complete
from kernelsession.localcluster.cluster import nodeconfig
from kernelsession.localcluster.host import network as hostnet


def test_containerd_runs_runc_with_the_pinned_sandbox_and_the_node_cni(tmp_path: Path) -> None:
    text = nodeconfig.containerd_config(
        root=tmp_path / "root",
        state=tmp_path / "state",
        address=tmp_path / "c.sock",
        sandbox_image="localhost/kernelsession/pause:abc",
        runc=Path("/usr/sbin/runc"),
        cni_bin_dir=Path("/usr/lib/cni"),
        cni_conf_dir=tmp_path / "net.d",
    )
    config = tomllib.loads(text)
    assert config["version"] == 3
    assert config["root"] == str(tmp_path / "root")
    assert config["grpc"]["address"] == str(tmp_path / "c.sock")
    assert config["ttrpc"]["address"] == f"{tmp_path / 'c.sock'}.ttrpc"
    plugins = config["plugins"]
    images = plugins["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == "localhost/kernelsession/pause:abc"
    runtime = plugins["io.containerd.cri.v1.runtime"]
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runtime["containerd"]["default_runtime_name"] == "runc"
    assert runc["options"]["BinaryName"] == "/usr/sbin/runc"
    assert runc["options"]["Root"] == str(tmp_path / "state" / "runc")
    assert runtime["cni"] == {
        "bin_dirs": ["/usr/lib/cni"],
        "conf_dir": str(tmp_path / "net.d"),
        "max_conf_num": 1,
    }
    assert plugins["io.containerd.nri.v1.nri"]["disable"] is True


def test_pods_get_node_subnet_addresses_on_the_bridge_and_no_ipv6(tmp_path: Path) -> None:
    conf = json.loads(nodeconfig.cni_config(tmp_path / "ipam"))
    bridge, tuning, portmap = conf["plugins"]
    assert bridge["bridge"] == hostnet.BRIDGE
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")
    assert bridge["ipam"]["ranges"] == [
        [{"subnet": hostnet.NODE_SUBNET, "gateway": hostnet.NODE_IP}]
    ]
    assert tuning["sysctl"]["net.ipv6.conf.all.disable_ipv6"] == "1"
    assert portmap["capabilities"] == {"portMappings": True}


def test_the_kubelet_authenticates_every_client_and_serves_on_the_node_ip(tmp_path: Path) -> None:
    config = yaml.safe_load(
        nodeconfig.kubelet_config(
            containerd_address=tmp_path / "c.sock",
            port=10250,
            healthz_port=10248,
            ca_file=tmp_path / "ca.crt",
            kubelet_root=tmp_path / "kubelet",
            max_pods=42,
        )
    )
    assert config["kind"] == "KubeletConfiguration"
    assert config["containerRuntimeEndpoint"] == f"unix://{tmp_path / 'c.sock'}"
    assert (config["address"], config["port"], config["readOnlyPort"]) == (
        hostnet.NODE_IP,
        10250,
        0,
    )
    assert (config["healthzBindAddress"], config["healthzPort"]) == ("127.0.0.1", 10248)
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["x509"] == {"clientCAFile": str(tmp_path / "ca.crt")}
    assert config["authorization"]["mode"] == "Webhook"
    assert config["clusterDomain"] == nodeconfig.CLUSTER_DOMAIN
    assert config["clusterDNS"] == [hostnet.DNS_SERVICE_IP]
    assert config["maxPods"] == 42
    assert config["podLogsDir"] == str(tmp_path / "kubelet" / "pod-logs")


def test_kube_proxy_listens_on_loopback_and_leaves_conntrack_alone(tmp_path: Path) -> None:
    config = yaml.safe_load(
        nodeconfig.kube_proxy_config(
            kubeconfig=tmp_path / "kubeconfig", healthz_port=10256, metrics_port=10249
        )
    )
    assert config["mode"] == "iptables"
    assert config["clientConnection"] == {"kubeconfig": str(tmp_path / "kubeconfig")}
    assert config["hostnameOverride"] == nodeconfig.NODE_NAME
    assert config["healthzBindAddress"] == "127.0.0.1:10256"
    assert config["metricsBindAddress"] == "127.0.0.1:10249"
    assert config["nodePortAddresses"] == [f"{hostnet.NODE_IP}/32"]
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["iptables"] == {"localhostNodePorts": False}


def test_built_binaries_are_looked_up_in_the_assets_directory_then_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache" / "kernelsession"
    entry = cache_root() / "thing" / "thing-v1"
    assets = tmp_path / "assets"

    def complete(directory: Path) -> bool:
        return (directory / "thing").is_file()

    monkeypatch.delenv("KS_TEST_ASSETS", raising=False)
    assert first_complete("KS_TEST_ASSETS", entry, complete) is None
    (entry / "bin").mkdir(parents=True)
    (entry / "bin" / "thing").write_text("")
    assert first_complete("KS_TEST_ASSETS", entry, complete) == (entry / "bin").resolve()
    monkeypatch.setenv("KS_TEST_ASSETS", str(assets))
    assert first_complete("KS_TEST_ASSETS", entry, complete) == (entry / "bin").resolve()
    assets.mkdir()
    (assets / "thing").write_text("")
    assert first_complete("KS_TEST_ASSETS", entry, complete) == assets.resolve()
