"""Waiting for a Deployment's rollout on the local cluster, and saying why it failed."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernelsession.localcluster.cluster import LocalCluster

__all__ = ["RolloutError", "pod_logs", "pods", "wait_rollout"]


class RolloutError(RuntimeError):
    """A Deployment did not become available; the message has its pods' state and logs."""


def pods(cluster: LocalCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The pods matching ``selector`` (running or not), oldest first."""
    items = cluster.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return sorted(items, key=lambda p: p["metadata"]["creationTimestamp"])


def pod_logs(cluster: LocalCluster, namespace: str, selector: str) -> str:
    """Logs of every container of the matching pods (previous run, then current)."""
    parts: list[str] = []
    for pod in pods(cluster, namespace, selector):
        name = pod["metadata"]["name"]
        for previous in (True, False):
            args = ["-n", namespace, "logs", name, "--all-containers"]
            if previous:
                args.append("--previous")
            out = cluster.kubectl(*args, check=False).stdout
            if out:
                parts.append(out)
    return "".join(parts)


def wait_rollout(
    cluster: LocalCluster,
    namespace: str,
    deployment: str,
    *,
    selector: str,
    timeout: float,
    what: str,
) -> float:
    """``kubectl rollout status deploy/DEPLOYMENT`` within ``timeout`` s; the seconds waited.

    Raises:
        RolloutError: not available in time; names ``what``, with the pods' status and
            the last lines of their logs.
    """
    started = time.monotonic()
    result = cluster.kubectl(
        "-n",
        namespace,
        "rollout",
        "status",
        f"deploy/{deployment}",
        f"--timeout={int(timeout)}s",
        check=False,
        timeout=timeout + 30,
    )
    if result.returncode != 0:
        states = json.dumps([p.get("status") for p in pods(cluster, namespace, selector)], indent=1)
        raise RolloutError(
            f"{what} (deploy/{deployment} in {namespace}) not available within {timeout:g}s: "
            f"{result.stderr.strip()}\npods: {states[:4000]}\n"
            f"logs:\n{pod_logs(cluster, namespace, selector)[-4000:]}"
        )
    return time.monotonic() - started
