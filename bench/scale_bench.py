"""Scale section (hollow): N sessions and N plain pods on KWOK fake nodes, served by the
hollow lab; figures labelled hollow.

``make bench BENCH_ARGS="scale --sessions N [--rate R] [--json]"``. On a fresh local
cluster with the audit log on and the operator as its Deployment (on the real node), the
bench builds KWOK when missing (:mod:`kernelsession.localcluster.building.kwok`), starts
a :class:`~kernelsession.localcluster.hollow.run.HollowRun` (hollow network, hollow lab,
KWOK with fake nodes whose pods turn Ready 3-5 s after binding; real node cordoned), then:

1. creates N plain pods at R/s (the baseline: same fake nodes, same start delay, no
   operator), waits for them Ready, deletes them;
2. creates N sessions at R/s; apply -> session Ready per session (watch times), the
   operator's CPU and peak RSS (its container's process, sampled), its API requests
   from the audit log (writes: successful mutating requests other than on its Lease);
3. a steady window with nothing changing (writes and reads per minute);
4. leader takeover: the leader's process SIGKILLed and one lab pod deleted at once;
5. upgrade: a change to the operator's pod template rolled out (new pods, one at a time,
   each listing everything cold), then one lab pod deleted: the new leader's first
   decision;
6. culling: every hollow lab reports a busy kernel until this step, then all stop at
   once; they become cullable ``IDLE_TIMEOUT`` seconds later, all at the same moment,
   and the step times the culls from then;
7. deletes all N sessions and times it until their pods are gone.

Prints a table; with ``--json`` logs go to stderr and the last stdout line is the JSON
object (:mod:`bench.scale_report`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import psutil
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from bench import pyspy, yardstick
from bench.operator_costs import (
    PASSES_METRIC,
    NodeProcesses,
    Sampler,
    cpu_by_process,
    cpu_seconds,
    cpu_used_since,
    metric_by_label,
    operator_process,
    operator_requests,
)
from bench.operator_watch import LABS, PLAIN_LABEL, SESSION_LABEL, Times, until, watch_times
from bench.scale_report import (
    ScaleFigures,
    api_calls,
    by_kind,
    epoch,
    json_line,
    not_culled,
    operator_writes,
    peak_rate,
    seconds_to_first,
)
from kernelsession.client import resources
from kernelsession.localcluster.building.kwok import ensure_kwok
from kernelsession.localcluster.cluster import LocalCluster, audit
from kernelsession.localcluster.deploy import InClusterOperator
from kernelsession.localcluster.hollow.run import HollowRun
from kernelsession.operator.config import Settings

READY_GRACE = 300.0
IDLE_TIMEOUT = 420
"""The sessions' ``idleTimeoutSeconds``: longer than the operator's CullingSoon warning
(300 s), short enough to wait for once. Until the culling step every hollow lab reports
a busy kernel, so none is culled before then."""


def _session(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": resources.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "user": "bench",
            # what the labs namespace's session rules demand: limits, a maximum age
            "culling": {"idleTimeoutSeconds": IDLE_TIMEOUT, "maxAgeSeconds": 86400},
            "resources": {
                "requests": {"cpu": "10m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "1Gi"},
            },
            "startTimeoutSeconds": 900,
        },
    }


def _plain_pod(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {PLAIN_LABEL: name}},
        "spec": {
            # what the labs namespace's "restricted" Pod Security level demands
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "lab",
                    "image": "hollow.invalid/plain:0",
                    "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


async def _at_rate(
    names: list[str], rate: float, create: Callable[[str], Any], applied: dict[str, float]
) -> None:
    """Call ``create(name)`` for each name, ``rate`` per second (each request in its own
    task so a slow answer does not slow the rate); record when each was sent."""
    start = time.monotonic()
    tasks = []
    for i, name in enumerate(names):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the requests, not waiting on a condition
        applied[name] = time.monotonic()
        tasks.append(asyncio.create_task(create(name)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        first = failed[0]
        detail = (
            f"{first.status} {first.reason}: {str(first.body)[:600]}"
            if isinstance(first, k8s.ApiException)
            else repr(first)
        )
        raise RuntimeError(f"{len(failed)} creates failed, first: {detail}")


async def _sample_load(samples: list[float], every: float = 5.0) -> None:
    """Append the host's 1-minute load average every ``every`` seconds until cancelled."""
    while True:
        samples.append(os.getloadavg()[0])
        await asyncio.sleep(every)  # a sampling period, not a wait


async def _progress(times: Times, hollow: HollowRun, every: float = 30.0) -> None:
    """Log how far the run is every ``every`` seconds (a long run is followed, not guessed)."""
    while True:
        await asyncio.sleep(every)  # a logging period, not a wait
        _log(
            f"scale: pods seen/Ready {len(times.pod_seen)}/{len(times.pod_ready)}, sessions "
            f"seen/Ready {len(times.session_seen)}/{len(times.session_ready)}, hollow labs "
            f"{len(hollow.lab.labs)} ({hollow.lab.requests} requests, {hollow.lab.refused} "
            f"refused), load {os.getloadavg()[0]:.1f}"
        )


@contextlib.contextmanager
def _logs_to_stderr(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _log(text: str) -> None:
    print(text, flush=True)


async def _run(
    args: argparse.Namespace, cluster: LocalCluster, op: InClusterOperator, hollow: HollowRun
) -> ScaleFigures:
    n, rate, ns = args.sessions, args.rate, hollow.namespace
    figures = ScaleFigures(sessions=n, rate=rate, ready=0, namespace=ns)
    # manifests/ leave the operator's default unless --api-qps sets it
    figures.api_qps = args.api_qps if args.api_qps is not None else Settings().api_qps
    api = await k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    times = Times()
    watchers = [asyncio.create_task(watch_times(api, times, k, ns)) for k in ("pods", "sessions")]
    watchers.append(asyncio.create_task(_sample_load(figures.load_1m)))
    watchers.append(asyncio.create_task(_progress(times, hollow)))
    deadline_for = n / rate + READY_GRACE
    try:
        # 1. baseline: plain pods on the same fake nodes
        plain = [f"plain{i:05d}" for i in range(n)]
        plain_applied: dict[str, float] = {}
        _log(f"scale: {n} plain pods at {rate:g}/s")
        await _at_rate(
            plain,
            rate,
            lambda name: core.create_namespaced_pod(ns, cast(Any, _plain_pod(name, ns))),
            plain_applied,
        )
        await until(
            times, lambda: all(p in times.pod_ready for p in plain), time.monotonic() + deadline_for
        )
        figures.plain_ready = sum(p in times.pod_ready for p in plain)
        figures.plain_ready_s = [
            times.pod_ready[p] - plain_applied[p] for p in plain if p in times.pod_ready
        ]
        await core.delete_collection_namespaced_pod(
            ns, label_selector=PLAIN_LABEL, grace_period_seconds=0
        )
        _log(f"scale: plain pods Ready {figures.plain_ready}/{n}")

        # 2. sessions
        names = [f"s{i:05d}" for i in range(n)]
        applied: dict[str, float] = {}
        operator = operator_process(cluster, op)
        log = cluster.audit_log
        assert log is not None
        offset = audit.size(log)
        cpu0 = cpu_seconds(operator)
        passes0 = metric_by_label(op.metrics(), PASSES_METRIC, "cause")
        before = yardstick.measure()
        processes = cpu_by_process()
        figures.operator_rss_base_bytes = operator.memory_info().rss
        _log(f"scale: {n} sessions at {rate:g}/s")
        with (
            Sampler(operator, NodeProcesses(cluster)) as sampler,
            pyspy.recording(operator.pid, args.py_spy),
        ):
            await _at_rate(
                names,
                rate,
                lambda name: custom.create_namespaced_custom_object(
                    resources.GROUP, resources.VERSION, ns, resources.PLURAL, _session(name, ns)
                ),
                applied,
            )
            await until(
                times,
                lambda: all(s in times.session_ready for s in names),
                time.monotonic() + deadline_for,
            )
            figures.operator_cpu_s = cpu_seconds(operator) - cpu0
            figures.creation_cpu = cpu_used_since(processes)
        figures.yardstick_ms = min(before, yardstick.measure())
        passes = metric_by_label(op.metrics(), PASSES_METRIC, "cause")
        figures.creation_passes = {c: v - passes0.get(c, 0.0) for c, v in passes.items()}
        figures.operator_rss_peak_bytes = sampler.operator_peak
        figures.ready = sum(s in times.session_ready for s in names)
        figures.session_ready_s = [
            times.session_ready[s] - applied[s] for s in names if s in times.session_ready
        ]
        entries = operator_requests(cluster, offset)
        figures.creation_writes = len(operator_writes(entries))
        figures.creation_reads = len(audit.reads(entries))
        figures.creation_by_kind = by_kind(entries)
        figures.enforcer_rules = hollow.enforcer_rules()
        _log(f"scale: sessions Ready {figures.ready}/{n}")
        _log(f"scale: figures so far {json_line(figures)}")  # kept should a later step fail
        if args.py_spy is not None:
            _log(pyspy.summary(args.py_spy))

        # 3. steady window
        offset = audit.size(log)
        await asyncio.sleep(args.window)  # a fixed measurement window, not a wait
        steady = operator_requests(cluster, offset)
        figures.steady_window_s = args.window
        figures.steady_writes = len(operator_writes(steady))
        figures.steady_reads = len(audit.reads(steady))
        figures.hollow_requests = hollow.lab.requests

        # 4. leader takeover with N sessions; 5. an upgrade; 6. culling of N idle labs
        await _takeover(cluster, op, core, times, hollow, figures, names)
        try:
            await _upgrade(cluster, op, core, times, hollow, figures, names)
        except Exception as exc:  # a failed step is a note; the culling still runs
            figures.notes.append(f"upgrade: {type(exc).__name__}: {exc}"[:300])
            _log(f"scale: upgrade failed: {exc}")
        await _culling(cluster, op, times, hollow, figures, names)
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            (args.logs / "operator.log").write_text(op.logs())
            _log(f"scale: the operator replicas' logs are in {args.logs / 'operator.log'}")

        # 7. delete all: one deletecollection, asked again while sessions remain (the API
        # server may drop a deletecollection of thousands at its request timeout, having
        # deleted part of them); a failure here is a note, the figures above stand
        t0 = time.monotonic()

        async def delete_all() -> None:
            try:
                await custom.delete_collection_namespaced_custom_object(
                    resources.GROUP, resources.VERSION, ns, resources.PLURAL
                )
            except (TimeoutError, aiohttp.ClientError, k8s.ApiException) as exc:
                figures.notes.append(f"deletecollection: {type(exc).__name__}: {exc}"[:200])

        async def gone() -> bool:
            pods = await core.list_namespaced_pod(ns, label_selector=SESSION_LABEL, limit=1)
            sessions = await custom.list_namespaced_custom_object(
                resources.GROUP, resources.VERSION, ns, resources.PLURAL, limit=1
            )
            return not pods.items and not sessions["items"]

        deadline = time.monotonic() + deadline_for
        await delete_all()
        asked = time.monotonic()
        while not await gone() and time.monotonic() < deadline:
            if time.monotonic() - asked > DELETE_AGAIN:
                await delete_all()
                asked = time.monotonic()
            await asyncio.sleep(1.0)  # polling a condition with a deadline
        figures.delete_s = time.monotonic() - t0 if await gone() else float("nan")
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await api.close()
    return figures


DELETE_AGAIN = 30.0
"""Seconds after which a deletecollection is asked again while sessions remain."""
TAKEOVER_WINDOW = 60.0
"""Seconds after the kill over which the next leader's writes are counted."""
CULL_DEADLINE = 420.0
"""Seconds the culling of all labs may take once they are cullable (the goal: 5 min)."""


async def _takeover(
    cluster: LocalCluster,
    op: InClusterOperator,
    core: k8s.CoreV1Api,
    times: Times,
    hollow: HollowRun,
    figures: ScaleFigures,
    names: list[str],
) -> None:
    """SIGKILL the leader's process and at once delete one lab pod: the next leader's
    first decision is to create it again. Its writes in the first minute are counted."""
    log = cluster.audit_log
    assert log is not None
    leader = operator_process(cluster, op)
    offset = audit.size(log)
    killed = time.time()
    t0 = time.monotonic()
    leader.kill()  # SIGKILL to the leader container's own process (by PID)
    _log("scale: leader killed")
    figures.takeover_recreate_s = await _recreated(core, times, hollow, names[0], t0)
    remaining = t0 + TAKEOVER_WINDOW - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)  # the fixed first-minute window, not a wait
    entries = [
        e
        for e in operator_requests(cluster, offset)
        if epoch(e.received or e.time) < killed + TAKEOVER_WINDOW
    ]
    writes = operator_writes(entries)
    figures.takeover_first_write_s = seconds_to_first(writes, killed)
    figures.takeover_writes_first_min = len(writes)
    figures.takeover_leader = op.leader() or ""
    _log(
        f"scale: takeover: first write after {figures.takeover_first_write_s:.1f}s, "
        f"{len(writes)} writes in the first minute, leader {figures.takeover_leader}"
    )


async def _recreated(
    core: k8s.CoreV1Api, times: Times, hollow: HollowRun, victim: str, since: float
) -> float:
    """Delete the lab pod of session ``victim`` and return the seconds from ``since``
    (monotonic) until the operator has created it again (NaN if not within 300 s)."""
    ns = hollow.namespace
    pods = await core.list_namespaced_pod(ns, label_selector=f"{SESSION_LABEL}={victim}")
    times.forget([victim])
    for pod in pods.items:
        await core.delete_namespaced_pod(pod.metadata.name, ns, grace_period_seconds=0)
    _log(f"scale: lab pod of {victim} deleted")
    await until(times, lambda: victim in times.pod_ready, since + 300)
    return times.pod_seen[victim] - since if victim in times.pod_seen else float("nan")


UPGRADE_TIMEOUT = 600.0
"""Seconds the operator's rollout may take."""
UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
"""The taint of a cordoned node."""


async def _upgrade(
    cluster: LocalCluster,
    op: InClusterOperator,
    core: k8s.CoreV1Api,
    times: Times,
    hollow: HollowRun,
    figures: ScaleFigures,
    names: list[str],
) -> None:
    """An operator upgrade with N sessions: a change to its pod template rolled out (new
    pods one at a time, each listing everything cold; the old leader gives the Lease up
    when it is stopped). Once the rollout is done one lab pod is deleted: the new leader's first
    decision is to create it again. Counted from the restart to a minute after the
    rollout: the operator's writes by kind (no lab may be deleted), and the new leader's
    CPU since it started."""
    log = cluster.audit_log
    assert log is not None
    offset = audit.size(log)
    # the change rolled out: the operator's pods pinned to the real node, which the run
    # cordons (without it the new pods would land on the fake nodes and never run)
    pinned = {
        "nodeSelector": {"kubernetes.io/hostname": cluster.node_name},
        "tolerations": [{"key": UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}],
    }
    _log("scale: upgrade: the operator's pod template changed, rolling out")
    figures.upgrade_s = await asyncio.to_thread(op.roll, pinned, UPGRADE_TIMEOUT)
    done = time.monotonic()
    figures.upgrade_recreate_s = await _recreated(core, times, hollow, names[1], done)
    remaining = done + TAKEOVER_WINDOW - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)  # the fixed first-minute window, not a wait
    leader = operator_process(cluster, op)
    figures.upgrade_leader_cpu_s = cpu_seconds(leader)
    figures.upgrade_leader_rss_bytes = leader.memory_info().rss
    figures.upgrade_writes_by_kind = by_kind(operator_writes(operator_requests(cluster, offset)))
    _log(
        f"scale: upgrade: rollout {figures.upgrade_s:.1f}s, pod back after "
        f"{figures.upgrade_recreate_s:.1f}s, writes {figures.upgrade_writes_by_kind}"
    )


async def _culling(
    cluster: LocalCluster,
    op: InClusterOperator,
    times: Times,
    hollow: HollowRun,
    figures: ScaleFigures,
    names: list[str],
) -> None:
    """Every lab's kernel stops at once (busy until now, idle from now): they all become
    cullable ``IDLE_TIMEOUT`` seconds later, at the same moment. Measured: from then until
    every session is ``Culled``, and the operator's requests from the stop on (its
    ``lastActivity`` writes, CullingSoon events, then the culls)."""
    log = cluster.audit_log
    assert log is not None
    await until(times, lambda: len(hollow.lab.labs) >= len(names), time.monotonic() + 120)
    offset = audit.size(log)
    stopped = time.monotonic()
    idle = hollow.lab.set_activity(
        last_activity=datetime.now(UTC), execution_state="idle", connections=0
    )
    cullable = stopped + IDLE_TIMEOUT
    cullable_wall = time.time() + IDLE_TIMEOUT
    figures.cull_idle_timeout_s = IDLE_TIMEOUT
    _log(f"scale: {idle} hollow labs idle from now; cullable in {IDLE_TIMEOUT}s")
    # the idle timeout is a fixed span to wait out, not a condition: the operator's CPU is
    # read at the moment the labs turn cullable, from the process active then
    await asyncio.sleep(max(0.0, cullable - time.monotonic()))
    operator = operator_process(cluster, op)
    cpu0 = cpu_seconds(operator)
    processes = cpu_by_process()
    await until(
        times, lambda: all(s in times.session_culled for s in names), cullable + CULL_DEADLINE
    )
    try:
        figures.cull_operator_cpu_s = cpu_seconds(operator) - cpu0
    except psutil.NoSuchProcess:  # it ended while culling (a restart): a note, no figure
        figures.notes.append("culling: the active operator's process ended before the end")
    figures.cull_cpu = cpu_used_since(processes)
    culled = [times.session_culled[s] for s in names if s in times.session_culled]
    figures.culled = len(culled)
    figures.cull_s = max(culled) - cullable if culled else float("nan")
    figures.cull_first_s = min(culled) - cullable if culled else float("nan")
    calls = api_calls(operator_requests(cluster, offset))
    after = [c for c in calls if epoch(c.received or c.time) >= cullable_wall]
    figures.cull_requests = len(after)
    figures.cull_writes = len(operator_writes(calls))
    figures.cull_peak_rps = peak_rate(calls)
    figures.cull_by_kind = by_kind(calls)
    _log(
        f"scale: culled {figures.culled}/{len(names)}, the last {figures.cull_s:.1f}s and the "
        f"first {figures.cull_first_s:.1f}s after they became cullable"
    )
    if figures.culled < len(names):
        figures.notes += not_culled(
            cluster.get_json("kernelsessions", "-n", hollow.namespace)["items"],
            set(times.session_culled),
        )


async def _hollow_run(
    args: argparse.Namespace, cluster: LocalCluster, op: InClusterOperator
) -> ScaleFigures:
    ns = _profile_namespace(cluster) if args.profile else LABS
    hollow = HollowRun(cluster, ns, nodes=max(1, args.sessions // 500 + 1))
    hollow.lab.start_busy = True  # in use until the culling step stops every kernel
    try:
        hollow.start_kwok()
        await hollow.start_lab()
        cluster.kubectl(
            "wait",
            "--for=condition=Ready",
            "node",
            *hollow.node_names,
            "--timeout=120s",
            timeout=130,
        )
        return await _run(args, cluster, op, hollow)
    finally:
        await hollow.stop()


BENCH_PROFILE = "bench"
"""The LabProfile ``--profile`` runs in (owner User bench, no quota)."""


def _profile_namespace(cluster: LocalCluster) -> str:
    """Make LabProfile ``bench`` and wait until its namespace is Ready; its name."""
    cluster.apply(
        [
            {
                "apiVersion": f"{resources.GROUP}/{resources.VERSION}",
                "kind": "LabProfile",
                "metadata": {"name": BENCH_PROFILE},
                "spec": {"owner": {"kind": "User", "name": "bench"}},
            }
        ]
    )
    cluster.kubectl(
        "wait", "--for=condition=Ready", f"labprofile/{BENCH_PROFILE}", "--timeout=120s",
        timeout=130,
    )  # fmt: skip
    status = cluster.get_json(f"labprofile/{BENCH_PROFILE}").get("status") or {}
    ns = str(status["namespace"])
    _log(f"scale: sessions and plain pods in LabProfile {BENCH_PROFILE}'s namespace {ns}")
    return ns


def _qps_env(qps: float) -> dict[str, str]:
    """The operator's API rate limit for ``--api-qps``, its burst twice that (as the
    defaults, 50 and 100)."""
    return {
        "KERNELSESSION_API_QPS": f"{qps:g}",
        "KERNELSESSION_API_BURST": str(max(1, int(2 * qps))),
    }


def main(args: argparse.Namespace) -> int:
    as_json = bool(getattr(args, "json", False))
    args.rate = float(getattr(args, "rate", None) or 10.0)
    args.window = float(getattr(args, "window", 60.0))
    args.profile = bool(getattr(args, "profile", False))
    args.api_qps = getattr(args, "api_qps", None)
    args.py_spy = getattr(args, "py_spy", None)
    args.logs = getattr(args, "logs", None)
    with _logs_to_stderr(as_json):
        ensure_kwok()
        with tempfile.TemporaryDirectory(prefix="ks-bench-scale-") as tmp:
            cluster = LocalCluster(audit=True)
            timings = cluster.start()
            try:
                _log(f"  {timings.summary()}")
                env = {} if args.api_qps is None else _qps_env(args.api_qps)
                op = InClusterOperator(cluster, Path(tmp) / "operator", env=env)
                op.start()
                figures = asyncio.run(_hollow_run(args, cluster, op))
            finally:
                cluster.stop()
        _log(figures.table())
    if as_json:
        print(json_line(figures), flush=True)
    return 0 if figures.ready == figures.sessions else 1
