"""The node's add-ons as objects and configuration: CoreDNS (its Corefile and the
``kube-dns`` Service with an EndpointSlice for the node) and local-path-provisioner
(namespace, config and the default StorageClass). Pure: no I/O."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kernelsession.localcluster.host import network as hostnet


def corefile(domain: str, ip: str, health_port: int, kubeconfig: Path) -> str:
    """CoreDNS serving ``domain`` on ``ip`` from the API server; nothing else resolves."""
    return f"""{domain}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {ip}
    errors
    ready 127.0.0.1:{health_port}
    kubernetes {domain} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
.:53 {{
    bind {ip}
    errors
    # nothing leaves this machine: names outside the cluster do not exist
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def kube_dns_objects(ip: str, service_ip: str = hostnet.DNS_SERVICE_IP) -> list[dict[str, Any]]:
    """The ``kube-dns`` Service (``service_ip``) and an EndpointSlice to CoreDNS on ``ip``."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
        },
        "spec": {
            "clusterIP": service_ip,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        },
    }
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kube-dns-node",
            "namespace": "kube-system",
            "labels": {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": "kernelsession-localcluster",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ],
    }
    return [service, slice_]


LOCAL_PATH_NAMESPACE = "local-path-storage"
LOCAL_PATH_HELPER_POD = """apiVersion: v1
kind: Pod
metadata:
  name: helper-pod
spec:
  priorityClassName: system-node-critical
  tolerations:
  - {{key: node.kubernetes.io/disk-pressure, operator: Exists, effect: NoSchedule}}
  containers:
  - name: helper-pod
    image: {image}
    imagePullPolicy: IfNotPresent
"""


def local_path_objects(storage_dir: Path, helper_image: str) -> list[dict[str, Any]]:
    """Namespace, helper service account, config and the default StorageClass of
    local-path-provisioner (as its upstream deploy/local-path-storage.yaml, minus the
    Deployment: the provisioner runs on the node as a process)."""
    config = {
        "nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(storage_dir)]}]
    }
    ns = LOCAL_PATH_NAMESPACE
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "local-path-provisioner-service-account", "namespace": ns},
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "local-path-config", "namespace": ns},
            "data": {
                "config.json": json.dumps(config),
                "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
                "helperPod.yaml": LOCAL_PATH_HELPER_POD.format(image=helper_image),
            },
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": "local-path",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "rancher.io/local-path",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        },
    ]
