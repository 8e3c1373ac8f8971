"""Operations without losing anyone's work, on the real node (docs/operations.md).

- A settings change and a lab image upgrade on the operator Deployment (its pods roll)
  leave a running lab alone: the client keeps its websocket and kernel and reads back
  ``x = 42``; the session says ``UpToDate`` False (``TemplateChanged``).
  ``KERNELSESSION_ROLLOUT=idle`` then replaces an idle outdated lab, with an event, and
  never the one with a connected kernel.
- A lab that trickles its answers, and one that answers an endless body, do not hold the
  operator: other sessions become Ready and its peak RSS stays flat.
- A session deleted while the operator cannot see it (a partition of its pods and an
  API server restart in between, so the watch resumes with a 410 and re-lists) is
  forgotten; nothing is created for it afterwards.
- Deleting a session keeps its home (reclaimPolicy Retain): recreated under the same
  name and user it finds the file; another user gets ``HomeConflict``; ``Delete`` takes it.
- Restarting the node's containerd and kubelet leaves the labs, their kernels and the
  sessions as they were; the operator replaces nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    LABS,
    OPERATOR_ENV,
    apply_session,
    children,
    events_for,
    get_ks,
    wait_for,
    wait_phase,
)

from kernelsession.client import KernelSessionClient
from kernelsession.localcluster.cluster import LocalCluster, audit
from kernelsession.localcluster.deploy import InClusterOperator, operator_account

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _condition(cluster: LocalCluster, name: str, kind: str) -> dict[str, Any] | None:
    status = get_ks(cluster, name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


def _lab_pods(cluster: LocalCluster, name: str) -> list[str]:
    pods = children(cluster, name).get("Pod", [])
    return sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp"))


def _delete_session(cluster: LocalCluster, name: str) -> None:
    cluster.kubectl("-n", LABS, "delete", "ks", name, "--ignore-not-found", "--timeout=60s")


@pytest.fixture
def restore_operator(operator: InClusterOperator) -> Iterator[InClusterOperator]:
    """The operator, given back its test settings afterwards."""
    try:
        yield operator
    finally:
        if operator.env != OPERATOR_ENV:
            operator.reconfigure(OPERATOR_ENV)


async def test_settings_change_and_image_upgrade_keep_the_kernel_then_idle_rollout(
    installed: LocalCluster,
    restore_operator: InClusterOperator,
    ks: KernelSessionClient,
) -> None:
    operator = restore_operator
    busy_name, idle_name = f"up{uuid.uuid4().hex[:6]}", f"id{uuid.uuid4().hex[:6]}"
    try:
        apply_session(installed, busy_name, {"user": "ada"})
        apply_session(installed, idle_name, {"user": "ida"})
        wait_phase(installed, busy_name, "Ready", timeout=180)
        wait_phase(installed, idle_name, "Ready", timeout=180)
        (busy_pod,) = _lab_pods(installed, busy_name)
        (idle_pod,) = _lab_pods(installed, idle_name)
        async with await ks.lab_session(busy_name) as lab:
            assert await lab.run_python("x = 42; print(x)") == "42\n"

            # 1. a settings change: the operator's pods roll with a new lab argument
            settings = OPERATOR_ENV | {
                "KERNELSESSION_LAB_EXTRA_ARGS": "--ServerApp.shutdown_no_activity_timeout=0"
            }
            took = operator.reconfigure(settings)
            wait_for(
                lambda: (
                    (_condition(installed, busy_name, "UpToDate") or {}).get("reason")
                    == "TemplateChanged"
                ),
                timeout=60,
                what="UpToDate False (TemplateChanged) after the settings change",
            )
            assert _lab_pods(installed, busy_name) == [busy_pod]
            assert await lab.run_python("print(x)") == "42\n"
            print(f"\n[ops] settings change: operator rolled in {took:.1f}s; lab kept")

            # 2. a lab image upgrade: the default image is a new tag
            node = installed.node
            assert node is not None
            old_image = installed.image_refs["lab"]
            new_image = old_image.rpartition(":")[0] + ":upgraded"
            node.ctr("images", "tag", "--force", old_image, new_image)
            took = operator.reconfigure(settings | {"KERNELSESSION_DEFAULT_IMAGE": new_image})
            assert get_ks(installed, busy_name)["status"]["phase"] == "Ready"
            assert _lab_pods(installed, busy_name) == [busy_pod]
            assert _lab_pods(installed, idle_name) == [idle_pod]
            assert await lab.run_python("print(x)") == "42\n"
            print(f"[ops] image upgrade: operator rolled in {took:.1f}s; lab kept")

            # 3. rollout=idle: the idle lab gets the new template, the connected one not
            operator.reconfigure(
                settings
                | {"KERNELSESSION_DEFAULT_IMAGE": new_image, "KERNELSESSION_ROLLOUT": "idle"}
            )
            wait_for(
                lambda: _lab_pods(installed, idle_name) not in ([], [idle_pod]),
                timeout=60,
                what=f"the idle lab {idle_name} replaced",
            )
            wait_phase(installed, idle_name, "Ready", timeout=120)
            wait_for(
                lambda: (
                    (_condition(installed, idle_name, "UpToDate") or {}).get("status") == "True"
                ),
                timeout=30,
                what="the rolled lab up to date",
            )
            (new_idle_pod,) = _lab_pods(installed, idle_name)
            assert new_idle_pod != idle_pod
            pod = installed.get_json("-n", LABS, f"pod/{new_idle_pod}")
            assert pod["spec"]["containers"][0]["image"] == new_image
            # the connected lab was probed many times meanwhile and is kept
            assert _lab_pods(installed, busy_name) == [busy_pod]
            assert not any(e["reason"] == "RollingOut" for e in events_for(installed, busy_name))
            assert (_condition(installed, busy_name, "UpToDate") or {})["status"] == "False"
            assert await lab.run_python("print(x)") == "42\n"
        reasons = [e["reason"] for e in events_for(installed, idle_name)]
        assert "RollingOut" in reasons, reasons
    finally:
        for name in (busy_name, idle_name):
            installed.kubectl("-n", LABS, "delete", "ks", name, "--wait=false", check=False)


# -- a lab that trickles, a lab that floods ---------------------------------------------
MISBEHAVING_LAB = """
import asyncio, os
from jupyter_server.services.api import handlers

async def _misbehave(self):
    self.set_header("Content-Type", "application/json")
    if os.environ.get("KS_TEST_MODE") == "trickle":
        for _ in range(100000):  # one byte every half second: never a whole answer
            self.write(" ")
            await self.flush()
            await asyncio.sleep(0.5)
    chunk = " " * (1 << 20)
    for _ in range(4096):  # 4 GiB, as fast as the reader takes it
        self.write(chunk)
        await self.flush()
    self.finish("{}")

handlers.APIStatusHandler.get = _misbehave
"""


def _operator_peak_rss_kib(cluster: LocalCluster, operator: InClusterOperator) -> int:
    """VmHWM (peak RSS) of the active operator's process, read on the node."""
    node = cluster.node
    assert node is not None
    # right after a rollout of the operator (an earlier test's settings change) the Lease
    # may be between holders for a moment
    pod = wait_for(operator.leader_pod, timeout=60, what="an active operator pod")
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://")[-1]
    pid = node.task_pids()[container]
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1))


async def test_trickling_and_flooding_labs_do_not_hold_the_operator(
    installed: LocalCluster, operator: InClusterOperator
) -> None:
    config = "ks-misbehave"  # allowed by name in the labs namespace (helpers.TEST_POLICY)
    names = {mode: f"{mode[:2]}{uuid.uuid4().hex[:6]}" for mode in ("trickle", "flood")}
    good = f"ok{uuid.uuid4().hex[:6]}"
    installed.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": config, "namespace": LABS},
                "data": {"jupyter_server_config.py": MISBEHAVING_LAB},
            }
        ]
    )
    try:
        peak_before = _operator_peak_rss_kib(installed, operator)
        for mode, name in names.items():
            apply_session(
                installed,
                name,
                {
                    "user": "mal",
                    "env": [
                        {"name": "JUPYTER_CONFIG_DIR", "value": "/ks-config"},
                        {"name": "KS_TEST_MODE", "value": mode},
                    ],
                    "volumes": [{"name": "cfg", "configMap": {"name": config}}],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/ks-config"}],
                    "startTimeoutSeconds": 600,
                },
            )

        def says(name: str, text: str) -> bool:
            status = get_ks(installed, name).get("status") or {}
            if text not in str(status.get("message")):  # not yet: the failure shows it
                raise AssertionError(f"status: {status}")
            return True

        wait_for(lambda: says(names["trickle"], "no complete answer"), 120, what="trickle")
        wait_for(lambda: says(names["flood"], "larger than"), 120, what="flood")
        started = time.monotonic()
        apply_session(installed, good, {"user": "gus"})
        wait_phase(installed, good, "Ready", timeout=120)
        ready_s = time.monotonic() - started
        # keep them probing a while longer: dozens of probes of each
        wait_for(
            lambda: time.monotonic() - started > 30 and says(names["flood"], "larger than"),
            60,
            what="30 s more of probes",
        )
        for name in names.values():
            assert get_ks(installed, name)["status"]["phase"] == "Starting"
        peak_after = _operator_peak_rss_kib(installed, operator)
        print(
            f"\n[ops] trickle+flood: another session Ready in {ready_s:.1f}s; operator peak RSS "
            f"{peak_before / 1024:.1f} -> {peak_after / 1024:.1f} MiB"
        )
        assert peak_after - peak_before < 64 * 1024  # the 4 GiB bodies were never read
    finally:
        for name in [*names.values(), good]:
            installed.kubectl("-n", LABS, "delete", "ks", name, "--wait=false", check=False)
        installed.kubectl("-n", LABS, "delete", "configmap", config, check=False)


# -- a deletion in a watch gap ----------------------------------------------------------
def _pod_netns_pids(cluster: LocalCluster, operator: InClusterOperator) -> list[int]:
    node = cluster.node
    assert node is not None
    tasks = node.task_pids()
    pids = []
    for pod in operator.pods():
        for cs in pod["status"].get("containerStatuses") or []:
            container = str(cs.get("containerID", "")).split("://")[-1]
            if container in tasks:
                pids.append(tasks[container])
    return pids


def _partition(pids: list[int], api_ip: str, *, on: bool) -> None:
    """Drop every packet between the operator pods and the API server's Service address,
    inside each pod's network namespace (no conntrack rule there lets established ones
    pass), or remove those rules."""
    flag = "-I" if on else "-D"
    for pid in pids:
        for chain, where in (("OUTPUT", "-d"), ("INPUT", "-s")):
            subprocess.run(
                [
                    "nsenter",
                    "-t",
                    str(pid),
                    "-n",
                    "iptables",
                    "-w",
                    flag,
                    chain,
                    where,
                    f"{api_ip}/32",
                    "-j",
                    "DROP",
                ],
                check=on,
                capture_output=True,
            )
        if not on:  # close what the restarted API server will never answer
            subprocess.run(
                ["nsenter", "-t", str(pid), "-n", "ss", "-K", "dst", api_ip],
                check=False,
                capture_output=True,
            )


def _forgotten(operator: InClusterOperator, name: str) -> bool:
    return any(
        "session gone; forgotten" in line and name in line for line in operator.logs().splitlines()
    )


async def test_a_session_deleted_in_a_watch_gap_is_forgotten(
    installed: LocalCluster, operator: InClusterOperator
) -> None:
    name, witness = f"gap{uuid.uuid4().hex[:6]}", f"wit{uuid.uuid4().hex[:6]}"
    apply_session(installed, name, {"user": "gil"})
    wait_phase(installed, name, "Ready", timeout=180)
    api_ip = installed.get_json("service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    pids = _pod_netns_pids(installed, operator)
    assert pids
    _partition(pids, api_ip, on=True)
    try:
        _delete_session(installed, name)  # its children go by ownerReferences
        restart_s = installed.restart_apiserver()  # watches resume from an old version: 410
    finally:
        _partition(pids, api_ip, on=False)
    healed = time.monotonic()
    wait_for(lambda: _forgotten(operator, name), timeout=180, what=f"{name} forgotten")
    forgotten_s = time.monotonic() - healed
    log = installed.audit_log
    assert log is not None
    offset = audit.size(log)
    # passes go on (a new session becomes Ready), and none is about the gone session
    apply_session(installed, witness, {"user": "wit"})
    wait_phase(installed, witness, "Ready", timeout=120)
    about_it = [
        e
        for e in audit.read(log, user=operator_account(), offset=offset)
        if e.write and e.name and e.name.startswith(name)
    ]
    assert about_it == []
    assert children(installed, name) == {}
    gone_410 = "410" in operator.logs() or "Gone" in operator.logs()
    print(
        f"\n[ops] watch gap: API server restarted in {restart_s:.1f}s; forgotten "
        f"{forgotten_s:.1f}s after healing; kopf saw a 410: {gone_410}",
        file=sys.stderr,
    )
    _delete_session(installed, witness)


# -- homes outlive sessions -------------------------------------------------------------
async def test_delete_and_recreate_finds_the_file_in_the_retained_home(
    installed: LocalCluster, operator: InClusterOperator, ks: KernelSessionClient
) -> None:
    name = f"hm{uuid.uuid4().hex[:6]}"
    claim = f"{name}-home"
    spec = {"user": "hana", "home": {"size": "64Mi"}}
    try:
        apply_session(installed, name, spec)
        wait_phase(installed, name, "Ready", timeout=180)
        async with await ks.lab_session(name) as lab:
            await lab.run_python("open('/home/jovyan/kept.txt', 'w').write('still here')")
        _delete_session(installed, name)
        pvc = installed.get_json("-n", LABS, f"pvc/{claim}")
        assert not pvc["metadata"].get("ownerReferences")
        assert pvc["metadata"]["labels"]["kernelsession.dev/user"] == "hana"
        assert pvc["metadata"]["labels"]["kernelsession.dev/session"] == name

        apply_session(installed, name, spec)  # same name, same user: mounted again
        wait_phase(installed, name, "Ready", timeout=180)
        async with await ks.lab_session(name) as lab:
            assert await lab.run_python("print(open('/home/jovyan/kept.txt').read())") == (
                "still here\n"
            )
        _delete_session(installed, name)

        apply_session(installed, name, {**spec, "user": "mallory"})  # someone else
        status = wait_phase(installed, name, "Failed", timeout=60, reason="HomeConflict")
        assert "'hana'" in status["message"]
        uid = get_ks(installed, name)["metadata"]["uid"]
        pods = children(installed, name).get("Pod", [])  # the previous one may be going
        assert [
            p for p in pods if uid in {o["uid"] for o in p["metadata"]["ownerReferences"]}
        ] == []
        _delete_session(installed, name)

        # Delete: the claim goes with the session (the operator gives it the owner)
        apply_session(
            installed, name, {**spec, "home": {**spec["home"], "reclaimPolicy": "Delete"}}
        )
        wait_phase(installed, name, "Ready", timeout=180)
        uid = get_ks(installed, name)["metadata"]["uid"]
        wait_for(
            lambda: (
                [
                    o["uid"]
                    for o in installed.get_json("-n", LABS, f"pvc/{claim}")["metadata"].get(
                        "ownerReferences"
                    )
                    or []
                ]
                == [uid]
            ),
            timeout=30,
            what="the claim owned by the session",
        )
        _delete_session(installed, name)
        wait_for(
            lambda: (
                installed.kubectl("-n", LABS, "get", f"pvc/{claim}", check=False).returncode != 0
            ),
            timeout=60,
            what="the claim deleted with the session",
        )
    finally:
        _delete_session(installed, name)
        installed.kubectl("-n", LABS, "delete", "pvc", claim, "--wait=false", check=False)


async def test_recreated_session_gets_a_new_token(
    installed: LocalCluster, operator: InClusterOperator
) -> None:
    name = f"tk{uuid.uuid4().hex[:6]}"
    apply_session(installed, name, {"user": "tom"})
    wait_phase(installed, name, "Ready", timeout=180)
    first = installed.get_json("-n", LABS, f"secret/{name}-token")
    installed.kubectl("-n", LABS, "delete", "ks", name, "--wait=false")
    apply_session(installed, name, {"user": "tom"})  # at once: the old Secret may remain
    try:
        wait_phase(installed, name, "Ready", timeout=180)
        second = installed.get_json("-n", LABS, f"secret/{name}-token")
        uid = get_ks(installed, name)["metadata"]["uid"]
        assert second["metadata"]["uid"] != first["metadata"]["uid"]
        assert second["data"]["token"] != first["data"]["token"]
        assert [o["uid"] for o in second["metadata"]["ownerReferences"]] == [uid]
    finally:
        _delete_session(installed, name)


# -- the node's daemons restart under running labs ---------------------------------------
async def test_containerd_and_kubelet_restarts_leave_labs_and_kernels_running(
    installed: LocalCluster, operator: InClusterOperator, ks: KernelSessionClient
) -> None:
    node = installed.node
    assert node is not None
    name = f"nd{uuid.uuid4().hex[:6]}"
    apply_session(installed, name, {"user": "nia"})
    try:
        wait_phase(installed, name, "Ready", timeout=180)
        (pod,) = _lab_pods(installed, name)
        pod_uid = installed.get_json("-n", LABS, f"pod/{pod}")["metadata"]["uid"]
        operators = sorted(p["metadata"]["uid"] for p in operator.pods())
        async with await ks.lab_session(name) as lab:
            assert await lab.run_python("x = 42; print(x)") == "42\n"
            figures = []
            for daemon in ("containerd", "kubelet"):
                seconds = node.restart_daemon(daemon)
                assert await lab.run_python("print(x)") == "42\n"
                figures.append(f"{daemon} back in {seconds:.1f}s")
            wait_for(
                lambda: (
                    (_condition(installed, name, "Ready") or {}).get("status") == "True"
                    and installed.get_json("-n", LABS, f"pod/{pod}")["status"]
                    .get("containerStatuses", [{}])[0]
                    .get("ready")
                ),
                timeout=60,
                what="the lab Ready after the restarts",
            )
            assert await lab.run_python("print(x)") == "42\n"
        after = installed.get_json("-n", LABS, f"pod/{pod}")
        assert after["metadata"]["uid"] == pod_uid
        assert after["status"]["containerStatuses"][0]["restartCount"] == 0
        assert _lab_pods(installed, name) == [pod]
        assert sorted(p["metadata"]["uid"] for p in operator.pods()) == operators
        reasons = [e["reason"] for e in events_for(installed, name)]
        assert "Created" not in reasons  # the lab pod was never made again
        print(f"\n[ops] node daemons: {'; '.join(figures)}; lab, kernel and session kept")
        print(json.dumps(get_ks(installed, name)["status"]["conditions"]))
    finally:
        _delete_session(installed, name)


# -- Ready means the URL runs code ------------------------------------------------------
CLI = str(Path(sys.executable).parent / "kernelsession")


def _cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)


def _endpoint_ready(cluster: LocalCluster, name: str, pod: str) -> bool:
    slices = cluster.get_json(
        "-n", LABS, "endpointslices", "-l", f"kubernetes.io/service-name={name}"
    )["items"]
    return any(
        (e.get("targetRef") or {}).get("name") == pod and (e.get("conditions") or {}).get("ready")
        for s in slices
        for e in s.get("endpoints") or []
    )


async def test_ready_means_exec_and_probe_work_at_once(
    installed: LocalCluster, operator: InClusterOperator
) -> None:
    """As a new user does it: apply, wait for Ready, exec, then probe, at once, 5 times
    with fresh sessions (the end-to-end run saw `probe` fail once right after `exec`)."""
    failures, endpoint_lag = [], 0
    for round_ in range(5):
        name = f"rd{round_}{uuid.uuid4().hex[:5]}"
        apply_session(installed, name, {"user": "rea"})
        try:
            wait_for(
                lambda name=name: (
                    (get_ks(installed, name).get("status") or {}).get("phase") == "Ready"
                ),
                timeout=180,
                interval=0.1,
                what=f"{name} Ready",
            )
            pod = get_ks(installed, name)["status"]["podName"]
            endpoint_lag += not _endpoint_ready(installed, name, pod)
            done = _cli(installed, "exec", name, "-n", LABS, "-c", "print(6 * 7)")
            probe = _cli(installed, "probe", name, "-n", LABS)
            for step, result in (("exec", done), ("probe", probe)):
                if result.returncode != 0:
                    failures.append((name, step, result.stdout[-800:], result.stderr[-800:]))
        finally:
            installed.kubectl("-n", LABS, "delete", "ks", name, "--wait=false", check=False)
    print(f"\n[ops] Ready before the Service endpoint was ready: {endpoint_lag}/5")
    assert failures == []
