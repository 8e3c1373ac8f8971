"""A CPU yardstick: a fixed piece of pure-Python work like the operator's per watch event,
timed in the bench's own process, so that operator CPU read on one machine can be
compared with another's.

CPU milliseconds are this machine's: the same operator code used 46 ms per session on
one machine and 71 ms on the next (the real-node bench, 2026-12-06). The yardstick is
measured in the same run as the figure it scales (before and after it; the least of
several rounds, the one least disturbed by the rest of the machine), and the operator's
CPU is then also given in yardsticks, which cancel the machine's speed but not its load.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

ROUNDS = 5
EVENTS = 500
"""Watch events per round (about 40 ms of CPU on this machine's cores)."""


def _pod(i: int) -> dict[str, Any]:
    """A lab pod as a watch event carries it (the shape and size of the operator's)."""
    name = f"s{i:04d}"
    return {
        "type": "MODIFIED",
        "object": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-lab",
                "namespace": "labs",
                "uid": f"00000000-0000-0000-0000-{i:012d}",
                "resourceVersion": str(100000 + i),
                "labels": {
                    "app.kubernetes.io/name": "kernelsession-lab",
                    "kernelsession.dev/session": name,
                    "kernelsession.dev/user": f"user{i}",
                },
                "annotations": {"kernelsession.dev/spec-hash": "0123456789abcdef" * 2},
                "ownerReferences": [
                    {
                        "apiVersion": "kernelsession.dev/v1alpha1",
                        "kind": "KernelSession",
                        "name": name,
                        "uid": f"11111111-0000-0000-0000-{i:012d}",
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                "managedFields": [
                    {
                        "manager": "kernelsession-operator",
                        "operation": "Update",
                        "fieldsV1": {f"f:{k}": {} for k in ("labels", "annotations", "spec")},
                    }
                ],
            },
            "spec": {
                "containers": [
                    {
                        "name": "lab",
                        "image": "localhost/kernelsession/lab:0123456789abcdef",
                        "args": ["jupyter", "lab", "--ServerApp.port=8888", f"--base={name}"],
                        "env": [{"name": f"ENV_{k}", "value": str(k) * 8} for k in range(8)],
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "256Mi"},
                            "limits": {"cpu": "1", "memory": "1Gi"},
                        },
                        "securityContext": {
                            "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"}],
                    }
                ],
                "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": name}}],
            },
            "status": {
                "phase": "Running",
                "podIP": f"10.245.{i // 250}.{i % 250}",
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": "2026-12-06T23:00:00Z"}
                    for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ],
                "containerStatuses": [
                    {"name": "lab", "ready": True, "restartCount": 0, "containerID": "c://x"}
                ],
            },
        },
    }


def _round(texts: list[bytes]) -> int:
    """The work of one round: decode each event, copy it, read what a pass reads, and
    encode a status patch. Returns a checksum so that nothing is optimised away."""
    total = 0
    for text in texts:
        event = json.loads(text)
        body = copy.deepcopy(event["object"])
        status = body["status"]
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )
        labels = body["metadata"].get("labels") or {}
        patch = {
            "status": {
                "phase": "Ready" if ready else "Starting",
                "podName": body["metadata"]["name"],
                "url": f"http://{status['podIP']}:8888/{labels.get('kernelsession.dev/session')}/",
            }
        }
        total += len(json.dumps(patch, separators=(",", ":")))
    return total


def measure(rounds: int = ROUNDS, events: int = EVENTS) -> float:
    """CPU milliseconds (this process's user + system time) of the least of ``rounds``
    rounds of ``events`` events each.

    Raises:
        ValueError: when ``rounds`` or ``events`` is less than 1.
    """
    if rounds < 1 or events < 1:
        raise ValueError(f"rounds and events must be at least 1 (got {rounds}, {events})")
    texts = [json.dumps(_pod(i)).encode() for i in range(events)]
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        _round(texts)
        best = min(best, time.process_time() - t0)
    return best * 1000


def in_yardsticks(cpu_ms: float, yardstick_ms: float) -> float:
    """``cpu_ms`` as a multiple of the yardstick (nan without one)."""
    return cpu_ms / yardstick_ms if yardstick_ms > 0 else float("nan")
