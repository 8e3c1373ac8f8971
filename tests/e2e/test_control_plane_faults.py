"""Faults of the control plane around the operator: the operator process itself killed
mid-spawn, and kube-apiserver restarted under it. Each test asserts nothing is lost
(every session Ready) and nothing is doubled (exactly one of each child per session).

Both use the run's one operator process (tests/conftest.py ``operator``); a test that
kills it starts it again in a ``finally`` so later tests still have it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from helpers import LABS, children, get_ks, wait_for, wait_phase

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

CHILD_KINDS = ["Ingress", "NetworkPolicy", "Pod", "Secret", "Service"]


def session(name: str, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "KernelSession",
        "metadata": {"name": name, "namespace": LABS},
        "spec": {"user": user},
    }


def assert_one_of_each(cluster: LocalCluster, name: str) -> None:
    """Exactly one Secret, Pod, Service and NetworkPolicy, the pod the one in status."""
    kids = children(cluster, name)
    assert sorted(kids) == CHILD_KINDS, (name, sorted(kids))
    for kind, objs in kids.items():
        assert len(objs) == 1, (name, kind, [o["metadata"]["name"] for o in objs])
    assert kids["Pod"][0]["metadata"]["name"] == get_ks(cluster, name)["status"]["podName"]


def delete_sessions(cluster: LocalCluster, names: list[str]) -> None:
    cluster.kubectl(
        "-n", LABS, "delete", "ks", *names, "--ignore-not-found", "--wait=false", check=False
    )


def test_operator_killed_mid_spawn_converges_without_duplicates(
    installed: LocalCluster, operator: InClusterOperator
) -> None:
    """SIGKILL the operator as soon as the first of 5 sessions has a pod; a new operator
    process adopts what exists: one pod per session, all Ready."""
    tag = uuid.uuid4().hex[:6]
    names = [f"kill{tag}-{i}" for i in range(5)]
    selector = f"kernelsession.dev/session in ({','.join(names)})"
    try:
        installed.apply([session(n, "ivan") for n in names])

        def lab_pods() -> list[dict[str, Any]]:
            return list(installed.get_json("-n", LABS, "pods", "-l", selector)["items"])

        wait_for(lab_pods, timeout=30, interval=0.05, what="the first lab pod")
        operator.kill()
        at_kill = lab_pods()
        ready_at_kill = [
            n for n in names if (get_ks(installed, n).get("status") or {}).get("phase") == "Ready"
        ]
        print(f"killed with {len(at_kill)} pod(s) created, {len(ready_at_kill)} session(s) Ready")
        assert len(ready_at_kill) < len(names)  # really mid-spawn

        restarted = time.monotonic()
        operator.start()
        for n in names:
            wait_phase(installed, n, "Ready", timeout=120)
        print(f"all {len(names)} Ready {time.monotonic() - restarted:.1f}s after the restart")
        for n in names:
            assert_one_of_each(installed, n)
        # The pods that existed at the kill were adopted, not replaced.
        survivors = {p["metadata"]["name"] for p in lab_pods()}
        assert {p["metadata"]["name"] for p in at_kill} <= survivors
        assert len(survivors) == len(names)
    finally:
        if not operator.running():
            operator.start()
        delete_sessions(installed, names)


def test_apiserver_restart_operator_keeps_reconciling(
    installed: LocalCluster, operator: InClusterOperator
) -> None:
    """kube-apiserver restarts under a Ready session: afterwards the operator still
    reacts to new sessions and to deleted children, and nothing is duplicated."""
    tag = uuid.uuid4().hex[:6]
    before, after = f"api{tag}-a", f"api{tag}-b"
    try:
        installed.apply([session(before, "judy")])
        wait_phase(installed, before, "Ready", timeout=90)
        pid = operator.instance()

        seconds = installed.restart_apiserver()
        print(f"kube-apiserver back after {seconds:.1f}s")

        installed.apply([session(after, "judy")])
        wait_phase(installed, after, "Ready", timeout=90)
        # A child deleted after the restart is recreated: the watches reconnected.
        svc = children(installed, before)["Service"][0]["metadata"]["name"]
        installed.kubectl("-n", LABS, "delete", "service", svc)
        installed.kubectl("-n", LABS, "delete", "networkpolicy", f"{before}-lab")
        wait_for(
            lambda: {"Service", "NetworkPolicy"} <= set(children(installed, before)),
            timeout=30,
            what="service and network policy recreated after the apiserver restart",
        )
        wait_phase(installed, before, "Ready", timeout=30)
        for n in (before, after):
            assert_one_of_each(installed, n)
        assert operator.instance() == pid
        assert operator.running(), "the operator exited"
    finally:
        delete_sessions(installed, [before, after])
