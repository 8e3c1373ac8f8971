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
from pathlib import Path
from typing import Any

import yaml

NODE_LABEL = "kernelsession.dev/hollow"
KWOK_API = "kwok.x-k8s.io/v1alpha1"
CONFIG_API = "config.kwok.x-k8s.io/v1alpha1"
PARALLELISM = 16
"""Pod stages KWOK plays at once (its default, 4, when given by flag, is for a few pods)."""


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


STAGES_FILE = Path(__file__).parent / "stages" / "kwok-stages.yaml"


def stages(delay_ms: int = 3000, jitter_ms: int = 5000) -> list[dict[str, Any]]:
    """KWOK's own node (fast, heartbeat) and pod (general) stages; a pod is created at
    once, turns Ready between ``delay_ms`` and ``jitter_ms`` later (KWOK picks uniformly
    between the delay and the jitter bound), and is deleted at once."""
    docs = [d for d in yaml.safe_load_all(STAGES_FILE.read_text()) if d]
    delays = {"pod-create": (0, 0), "pod-ready": (delay_ms, jitter_ms), "pod-delete": (0, 0)}
    for doc in docs:
        name = doc["metadata"]["name"]
        if name in delays:
            low, high = delays[name]
            delay = doc["spec"].setdefault("delay", {})
            delay["durationMilliseconds"] = low
            delay["jitterDurationMilliseconds"] = max(low, high)
            delay.pop("durationFrom", None)
            delay.pop("jitterDurationFrom", None)
    return docs


def configuration(pod_range: str) -> dict[str, Any]:
    """KWOK's own configuration: manage the labelled nodes only."""
    return {
        "apiVersion": CONFIG_API,
        "kind": "KwokConfiguration",
        "options": {
            "cidr": pod_range,
            "nodeIP": "10.244.0.1",
            "manageNodesWithLabelSelector": f"{NODE_LABEL}=true",
            # A configuration file gets no defaults: KWOK v0.8.0 refuses to start with
            # "playStageParallelism must be greater than 0" without these.
            "podPlayStageParallelism": PARALLELISM,
            "nodePlayStageParallelism": 4,
            "nodeLeaseParallelism": 4,
        },
    }
