"""Operator section: apply-to-Ready, scale, and API requests, on a fresh local cluster.

Everything runs in one go against a LocalCluster (the real node: kubelet, containerd,
runc) this benchmark starts with the API server's audit log on, and the operator as its
Deployment from ``manifests/`` (its image, default intervals); all of it is stopped at the
end.

* one session, repeated: ``kubectl apply`` -> session Ready, split into the operator's
  own time (session seen -> lab pod created, lab pod Ready -> session Ready) and the lab
  start (pod created -> pod Ready: kubelet + containerd + jupyter-server); times are taken
  from watch events as they arrive. Baseline in the same run: ``kubectl create`` of the
  same Pod (same spec, no operator) -> Ready.
* N sessions applied at once: time until all are Ready, the operator's CPU seconds and
  peak RSS (its container's process, psutil, sampled), the node's overhead (kubelet,
  containerd and the runc shims: CPU, RSS per lab) and the labs' totals.
* API requests by the operator (audit log, its service account, kubectl excluded):
  per session during creation, and over a steady-state window with every session Ready
  and nothing changing (writes must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml
from kubernetes_asyncio import config as k8s_config

from bench import yardstick
from bench.operator_costs import (
    PASSES_METRIC,
    NodeProcesses,
    Sampler,
    cpu_seconds,
    median,
    metric_by_label,
    metric_value,
    operator_process,
    operator_requests,
)
from bench.operator_watch import LABS, PLAIN_LABEL, SESSION_LABEL, Times, until, watch_times
from kernelsession.client import resources
from kernelsession.localcluster.cluster import LocalCluster, audit
from kernelsession.localcluster.deploy import InClusterOperator

REPEATS = 5
SCALE_DEADLINE = 900.0


async def _kubectl(cluster: LocalCluster, *args: str, input: str | None = None) -> str:
    kubectl = cluster.binaries.kubectl
    assert kubectl is not None
    proc = await asyncio.create_subprocess_exec(
        str(kubectl),
        f"--kubeconfig={cluster.kubeconfig}",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(input.encode() if input else None)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {err.decode()}")
    return out.decode()


def _allow_never_culled(cluster: LocalCluster) -> None:
    """The bench's labs are never culled (culling 0): the labs namespace's session rules
    (manifests/admission.yaml) refuse that unless its ConfigMap allows it."""
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kernelsession-policy", "namespace": "labs"},
        "data": {"cullingNeverAllowed": "true"},
    }
    cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=kernelsession-bench",
        "-f",
        "-",
        input=json.dumps(config),
    )


def _session(name: str) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": resources.KIND,
        "metadata": {"name": name, "namespace": LABS},
        "spec": {
            "user": "bench",
            # what the labs namespace's session rules demand (limits, a maximum age), with
            # nothing culled during the run
            "culling": {"idleTimeoutSeconds": 3600, "maxAgeSeconds": 86400},
            # the scheduler counts requests: 100 labs at the default 100m would need 10 cores
            "resources": {
                "requests": {"cpu": "10m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "1Gi"},
            },
            "startTimeoutSeconds": int(SCALE_DEADLINE),
        },
    }


async def _delete_sessions(cluster: LocalCluster, times: Times, names: list[str]) -> None:
    await _kubectl(cluster, "-n", LABS, "delete", "ks", *names, "--wait=true", "--timeout=300s")
    pods = json.loads(
        await _kubectl(cluster, "-n", LABS, "get", "pods", "-l", SESSION_LABEL, "-o", "json")
    )["items"]
    if pods:
        await _kubectl(
            cluster,
            "-n",
            LABS,
            "wait",
            "--for=delete",
            "pods",
            "-l",
            SESSION_LABEL,
            "--timeout=300s",
        )
    times.forget(names)


async def _one_session(
    cluster: LocalCluster, times: Times, repeats: int
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    rows: list[dict[str, float]] = []
    pod_template: dict[str, Any] = {}
    for i in range(repeats):
        name = f"one{i}"
        t_apply = time.monotonic()
        await _kubectl(
            cluster, "apply", "--server-side", "-f", "-", input=yaml.safe_dump(_session(name))
        )
        ok = await until(times, lambda n=name: n in times.session_ready, time.monotonic() + 180)
        if not ok:
            raise RuntimeError(f"session {name} not Ready within 180 s")
        rows.append(
            {
                "total": times.session_ready[name] - t_apply,
                "kubectl": times.session_seen[name] - t_apply,
                "op_create": times.pod_seen[name] - times.session_seen[name],
                "lab": times.pod_ready[name] - times.pod_seen[name],
                "op_ready": times.session_ready[name] - times.pod_ready[name],
            }
        )
        if not pod_template:
            pod_template = json.loads(
                await _kubectl(
                    cluster,
                    "-n",
                    LABS,
                    "get",
                    "pods",
                    "-l",
                    f"{SESSION_LABEL}={name}",
                    "-o",
                    "json",
                )
            )["items"][0]
        await _delete_sessions(cluster, times, [name])
    return rows, pod_template


def _plain_pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    spec = dict(template["spec"])
    for key in ("nodeName",):
        spec.pop(key, None)
    for container in spec["containers"]:
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                ref["name"] = "bench-plain-token"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": LABS, "labels": {PLAIN_LABEL: name}},
        "spec": spec,
    }


async def _baseline(
    cluster: LocalCluster, times: Times, template: dict[str, Any], repeats: int
) -> list[dict[str, float]]:
    await _kubectl(
        cluster,
        "-n",
        LABS,
        "create",
        "secret",
        "generic",
        "bench-plain-token",
        "--from-literal=token=bench-plain-token-value",
    )
    rows = []
    for i in range(repeats):
        name = f"plain{i}"
        t_create = time.monotonic()
        await _kubectl(cluster, "create", "-f", "-", input=json.dumps(_plain_pod(template, name)))
        ok = await until(times, lambda n=name: n in times.pod_ready, time.monotonic() + 180)
        if not ok:
            raise RuntimeError(f"plain pod {name} not Ready within 180 s")
        rows.append(
            {
                "total": times.pod_ready[name] - t_create,
                "kubectl": times.pod_seen[name] - t_create,
                "lab": times.pod_ready[name] - times.pod_seen[name],
            }
        )
        await _kubectl(cluster, "-n", LABS, "delete", "pod", name, "--wait=true")
        times.forget([name])
    return rows


@dataclass
class Scale:
    n: int
    ready: int
    seconds: float
    apply_seconds: float
    operator_cpu: float
    operator_peak_rss: int
    operator_rss_before: int
    node_cpu: float
    shims_cpu: float
    labs_cpu: float
    """CPU seconds of the session pods' containers only."""
    others_cpu: float
    """CPU seconds of every other container on the node (the operator's replicas...)."""
    node_rss_before: int
    node_peak_rss: int
    creation: Counter[str]
    conflicts: Counter[str]
    spawn: list[float]
    reconciles: float
    """The operator's passes (its reconciles metric) from the apply until all were Ready."""
    pass_causes: dict[str, float]
    """Those passes by what began them (``kernelsession_passes{cause}``)."""
    yardstick_ms: float
    """The CPU yardstick (:mod:`bench.yardstick`), the lesser of before and after."""


async def _scale(cluster: LocalCluster, op: InClusterOperator, times: Times, n: int) -> Scale:
    names = [f"s{i:03d}" for i in range(n)]
    operator = operator_process(cluster, op)
    node = NodeProcesses(cluster)
    log = cluster.audit_log
    assert log is not None
    offset = audit.size(log)
    cpu0 = cpu_seconds(operator)
    node0 = node.cpu()
    rss0 = operator.memory_info().rss
    node_rss0 = node.daemons_rss()
    before = yardstick.measure()
    metrics0 = op.metrics()
    passes0 = metric_value(metrics0, "kernelsession_reconciles_total")
    causes0 = metric_by_label(metrics0, PASSES_METRIC, "cause")
    with Sampler(operator, node) as sampler:
        t0 = time.monotonic()
        await _kubectl(
            cluster,
            "apply",
            "--server-side",
            "-f",
            "-",
            input=yaml.safe_dump_all([_session(name) for name in names]),
        )
        applied = time.monotonic() - t0
        await until(
            times,
            lambda: all(name in times.session_ready for name in names),
            t0 + SCALE_DEADLINE,
        )
        seconds = time.monotonic() - t0
        node1 = node.cpu()
    metrics1 = op.metrics()
    passes = metric_value(metrics1, "kernelsession_reconciles_total") - passes0
    causes = {
        cause: count - causes0.get(cause, 0.0)
        for cause, count in metric_by_label(metrics1, PASSES_METRIC, "cause").items()
    }
    ready = sum(name in times.session_ready for name in names)
    entries = operator_requests(cluster, offset)
    return Scale(
        n=n,
        ready=ready,
        seconds=seconds,
        apply_seconds=applied,
        operator_cpu=cpu_seconds(operator) - cpu0,
        operator_peak_rss=sampler.operator_peak,
        operator_rss_before=rss0,
        node_cpu=node1[0] - node0[0],
        shims_cpu=node1[1] - node0[1],
        labs_cpu=node1[2] - node0[2],
        others_cpu=node1[3] - node0[3],
        node_rss_before=node_rss0,
        node_peak_rss=sampler.node_peak,
        creation=audit.count(entries),
        conflicts=audit.count(e for e in entries if e.code == 409),
        spawn=[
            times.session_ready[name] - times.session_seen[name]
            for name in names
            if name in times.session_ready
        ],
        reconciles=passes,
        pass_causes=causes,
        yardstick_ms=min(before, yardstick.measure()),
    )


async def _steady(
    cluster: LocalCluster, op: InClusterOperator, window: float
) -> tuple[Counter[str], float, float, float]:
    """Operator requests during ``window`` seconds with nothing changing; also the
    status-writes and reconciles metrics' increase and the operator's CPU seconds."""
    log = cluster.audit_log
    assert log is not None
    proc = operator_process(cluster, op)
    before = op.metrics()
    offset = audit.size(log)
    cpu0 = cpu_seconds(proc)
    await asyncio.sleep(window)  # a fixed measurement window, not a wait for a condition
    cpu = cpu_seconds(proc) - cpu0
    after = op.metrics()
    counts = audit.count(operator_requests(cluster, offset))
    writes = metric_value(after, "kernelsession_status_writes_total") - metric_value(
        before, "kernelsession_status_writes_total"
    )
    reconciles = metric_value(after, "kernelsession_reconciles_total") - metric_value(
        before, "kernelsession_reconciles_total"
    )
    return counts, writes, reconciles, cpu


def _requests_table(counts: Counter[str], per: float, unit: str) -> None:
    writes = sum(v for k, v in counts.items() if k.split()[0] in audit.WRITE_VERBS)
    reads = sum(v for k, v in counts.items() if k.split()[0] in audit.READ_VERBS)
    print(f"    writes {writes / per:7.2f}{unit}   reads {reads / per:7.2f}{unit}")
    for key, value in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"      {key:<34} {value / per:8.2f}{unit}")


async def _run(args: argparse.Namespace, cluster: LocalCluster, op: InClusterOperator) -> int:
    api = await k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    times = Times()
    watchers = [asyncio.create_task(watch_times(api, times, kind)) for kind in ("pods", "sessions")]
    status = 0
    try:
        repeats = 3 if args.quick else REPEATS
        rows, template = await _one_session(cluster, times, repeats)
        plain = await _baseline(cluster, times, template, repeats)
        m = {k: median([r[k] for r in rows]) for k in rows[0]}
        p = {k: median([r[k] for r in plain]) for k in plain[0]}
        operator_own = m["op_create"] + m["op_ready"]
        print(f"one session, apply -> Ready, median of {repeats} (seconds):")
        print(f"  total (kubectl apply -> phase Ready)     {m['total']:6.2f}")
        print(f"    kubectl apply -> session seen          {m['kubectl']:6.2f}")
        print(f"    operator: session seen -> pod created  {m['op_create']:6.2f}")
        print(f"    lab start: pod created -> pod Ready    {m['lab']:6.2f}")
        print(f"    operator: pod Ready -> session Ready   {m['op_ready']:6.2f}")
        print(
            f"  baseline: kubectl create same Pod -> Ready {p['total']:6.2f}"
            f" (pod created -> Ready {p['lab']:.2f})"
        )
        print(
            f"  operator's own time {operator_own:.2f}s = "
            f"{operator_own / m['total'] * 100:.0f}% of apply->Ready; "
            f"session / plain pod = {m['total'] / p['total']:.2f}x"
        )

        n = args.sessions
        scale = await _scale(cluster, op, times, n)
        if scale.ready < n:
            print(
                f"{n} sessions: only {scale.ready} Ready after {scale.seconds:.0f}s "
                f"(machine: {psutil.cpu_count()} cores, "
                f"{psutil.virtual_memory().total / 2**30:.0f} GiB)"
            )
            status = 1
        print(f"{n} sessions applied at once (one kubectl apply, {scale.apply_seconds:.1f}s):")
        print(
            f"  all Ready after {scale.seconds:.1f}s ({scale.ready}/{n}); "
            f"per session seen->Ready median {median(scale.spawn):.1f}s, "
            f"max {max(scale.spawn, default=float('nan')):.1f}s"
        )
        print(
            f"  operator: {scale.operator_cpu:.1f} CPU s "
            f"({scale.operator_cpu / max(scale.ready, 1) * 1000:.0f} ms/session), "
            f"peak RSS {scale.operator_peak_rss / 2**20:.0f} MiB "
            f"(before {scale.operator_rss_before / 2**20:.0f} MiB); "
            f"{scale.reconciles / n:.1f} passes per session"
        )
        per_session_ms = scale.operator_cpu / max(scale.ready, 1) * 1000
        print(
            f"    CPU yardstick {scale.yardstick_ms:.1f} ms (bench/yardstick.py, this run): "
            f"{yardstick.in_yardsticks(per_session_ms, scale.yardstick_ms):.2f} yardsticks "
            "per session"
        )
        print(
            "    passes per session by what began them: "
            + ", ".join(
                f"{cause} {count / n:.2f}"
                for cause, count in sorted(scale.pass_causes.items(), key=lambda c: -c[1])
            )
        )
        labs, cores = max(scale.ready, 1), psutil.cpu_count() or 1
        print(
            f"  labs (session pods' containers only): {scale.labs_cpu:.1f} CPU s "
            f"({scale.labs_cpu / labs:.2f} s/lab; at least "
            f"{scale.labs_cpu / cores:.0f} s of wall time on {cores} cores); other "
            f"containers (the operator's replicas among them) {scale.others_cpu:.1f} CPU s"
        )
        print(
            f"  node overhead: kubelet+containerd {scale.node_cpu:.1f} CPU s, shims "
            f"{scale.shims_cpu:.1f} CPU s; kubelet+containerd+shims RSS "
            f"{scale.node_rss_before / 2**20:.0f} MiB before, peak "
            f"{scale.node_peak_rss / 2**20:.0f} MiB = "
            f"{(scale.node_peak_rss - scale.node_rss_before) / labs / 2**20:.1f} MiB per lab"
        )
        print("  operator API requests per session during creation (audit log):")
        _requests_table(scale.creation, n, "")
        if scale.conflicts:
            print("    of which refused as AlreadyExists (409), per session:")
            for key, value in sorted(scale.conflicts.items()):
                print(f"      {key:<34} {value / n:8.2f}")

        counts, writes, reconciles, cpu = await _steady(cluster, op, args.window)
        minutes = args.window / 60
        # the leader's Lease renewals (every 2 s) are the election's cost, not the sessions'
        api_writes = sum(
            v
            for k, v in counts.items()
            if k.split()[0] in audit.WRITE_VERBS and not k.endswith(" leases")
        )
        print(
            f"steady state, {scale.ready} Ready sessions, nothing changing, "
            f"{args.window:.0f}s window:"
        )
        print(
            f"  operator API writes for sessions {api_writes} (must be 0; Lease renewals "
            f"excluded); status writes metric +{writes:.0f}; "
            f"reconciles +{reconciles:.0f}; operator CPU {cpu:.2f}s "
            f"({cpu / args.window * 100:.1f}% of a core)"
        )
        print("  operator API requests per minute (all sessions):")
        _requests_table(counts, minutes, "/min")
        if api_writes:
            status = 1
        await _delete_sessions(cluster, times, [f"s{i:03d}" for i in range(n)])
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await api.close()
    return status


def main(args: argparse.Namespace) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    sessions = getattr(args, "sessions", 100)
    args.sessions = 10 if args.quick and sessions == 100 else sessions
    args.window = getattr(args, "window", 60.0)
    print(
        f"{time.strftime('%Y-%m-%d')}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, python {sys.version.split()[0]}"
    )
    with tempfile.TemporaryDirectory(prefix="ks-bench-") as tmp:
        cluster = LocalCluster(audit=True)
        timings = cluster.start()
        try:
            print(f"  {timings.summary()}")
            op = InClusterOperator(cluster, Path(tmp) / "operator")
            op.start()
            _allow_never_culled(cluster)
            return asyncio.run(_run(args, cluster, op))
        finally:
            cluster.stop()
