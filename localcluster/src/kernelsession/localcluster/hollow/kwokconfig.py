"""What KWOK is given (pure): its configuration with the Stage resources, and the fake
Nodes.

Stages (KWOK's own ``fast`` node stages and a start delay for pods): a pod bound to a
fake node gets its IP and Initialized at once, then turns Running/Ready after
``delay_ms`` plus up to ``jitter_ms`` (about what a real lab took on the real node, ~4 s),
the same for session labs and plain pods; a deleted pod goes at once. Fake nodes carry
:data:`NODE_LABEL`, no taint (the bench cordons the real node instead, so no pod spec
changes) and each its own slice of the hollow pod range as ``podCIDR``, from which KWOK
assigns pod IPs.
"""

from __future__ import annotations

import ipaddress
from typing import Any

NODE_LABEL = "kernelsession.dev/hollow"
KWOK_API = "kwok.x-k8s.io/v1alpha1"
CONFIG_API = "config.kwok.x-k8s.io/v1alpha1"


def node_cidrs(pod_range: str, count: int, prefix: int = 22) -> list[str]:
    """``count`` per-node pod CIDRs carved from ``pod_range``.

    Raises:
        ValueError: the range holds fewer than ``count`` such blocks.
    """
    subnets = ipaddress.ip_network(pod_range).subnets(new_prefix=prefix)
    cidrs = []
    for _ in range(count):
        try:
            cidrs.append(str(next(subnets)))
        except StopIteration:
            raise ValueError(f"{pod_range} holds fewer than {count} /{prefix} blocks") from None
    return cidrs


def node(name: str, pod_cidr: str, pods: int = 1000) -> dict[str, Any]:
    """A fake Node managed by KWOK."""
    capacity = {"cpu": "256", "memory": "1Ti", "pods": str(pods)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {NODE_LABEL: "true", "type": "kwok", "kubernetes.io/hostname": name},
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"allocatable": capacity, "capacity": capacity},
    }


def _stage(name: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": KWOK_API,
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {"resourceRef": {"apiGroup": "v1", "kind": kind}, **spec},
    }


def stages(delay_ms: int = 3000, jitter_ms: int = 5000) -> list[dict[str, Any]]:
    """Node and pod stages; pods turn Ready between ``delay_ms`` and ``jitter_ms``
    (KWOK picks uniformly between the delay and the jitter bound)."""
    not_deleting = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    node_init = _stage(
        "node-initialize",
        "Node",
        {
            "selector": {
                "matchExpressions": [
                    {
                        "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
                        "operator": "NotIn",
                        "values": ["True"],
                    }
                ]
            },
            "next": {
                "statusTemplate": (
                    'conditions:\n- type: Ready\n  status: "True"\n  reason: KubeletReady\n'
                    "  message: hollow\n  lastHeartbeatTime: {{ Now | Quote }}\n"
                    "  lastTransitionTime: {{ Now | Quote }}\n"
                    "addresses:\n- type: InternalIP\n  address: {{ NodeIP }}\n"
                    "phase: Running\n"
                )
            },
        },
    )
    heartbeat = _stage(
        "node-heartbeat",
        "Node",
        {
            "selector": {
                "matchExpressions": [
                    {
                        "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
                        "operator": "In",
                        "values": ["True"],
                    }
                ]
            },
            "delay": {"durationMilliseconds": 20000, "jitterDurationMilliseconds": 25000},
            "next": {
                "statusTemplate": (
                    'conditions:\n- type: Ready\n  status: "True"\n  reason: KubeletReady\n'
                    "  message: hollow\n  lastHeartbeatTime: {{ Now | Quote }}\n"
                    '  lastTransitionTime: {{ NodeLastTransitionTime "Ready" | Quote }}\n'
                )
            },
            "immediateNextStage": True,
        },
    )
    pod_ready = _stage(
        "pod-ready",
        "Pod",
        {
            "selector": {
                "matchExpressions": [
                    not_deleting,
                    {"key": ".status.podIP", "operator": "DoesNotExist"},
                ]
            },
            "delay": {"durationMilliseconds": delay_ms, "jitterDurationMilliseconds": jitter_ms},
            "next": {
                "statusTemplate": (
                    "{{ $now := Now }}\n"
                    "conditions:\n"
                    '{{ range $t := list "PodScheduled" "Initialized" "ContainersReady" '
                    '"Ready" }}\n'
                    '- type: {{ $t }}\n  status: "True"\n  lastTransitionTime: {{ $now | Quote }}\n'
                    "{{ end }}\n"
                    "containerStatuses:\n"
                    "{{ range .spec.containers }}\n"
                    "- name: {{ .name | Quote }}\n  image: {{ .image | Quote }}\n  ready: true\n"
                    "  started: true\n  restartCount: 0\n"
                    "  state:\n    running:\n      startedAt: {{ $now | Quote }}\n"
                    "{{ end }}\n"
                    "hostIP: {{ NodeIPWith .spec.nodeName | Quote }}\n"
                    "podIP: {{ PodIPWith .spec.nodeName false .metadata.uid .metadata.name "
                    ".metadata.namespace | Quote }}\n"
                    "phase: Running\n"
                    "startTime: {{ $now | Quote }}\n"
                )
            },
        },
    )
    pod_delete = _stage(
        "pod-delete",
        "Pod",
        {
            "selector": {
                "matchExpressions": [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}]
            },
            "next": {"finalizers": {"empty": True}, "delete": True},
        },
    )
    return [node_init, heartbeat, pod_ready, pod_delete]


def configuration(pod_range: str) -> dict[str, Any]:
    """KWOK's own configuration: manage the labelled nodes only."""
    return {
        "apiVersion": CONFIG_API,
        "kind": "KwokConfiguration",
        "options": {
            "cidr": pod_range,
            "nodeIP": "10.244.0.1",
            "manageNodesWithLabelSelector": f"{NODE_LABEL}=true",
        },
    }
