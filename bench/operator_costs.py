"""What the operator costs while the bench runs: CPU and memory of its process and of the
node's daemons (sampled with psutil), its ``/metrics``, and its API requests from the
audit log."""

from __future__ import annotations

import contextlib
import re
import statistics
import threading

import psutil

from kernelsession.client.resources import SESSION_LABEL
from kernelsession.localcluster.cluster import LocalCluster, audit
from kernelsession.localcluster.deploy import InClusterOperator
from kernelsession.localcluster.deploy.operator_process import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE

OPERATOR_USER = audit.service_account(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)


class NodeProcesses:
    """The node's processes by role: the kubelet and containerd (daemons), the runc shims
    (one per pod), the labs (the containers of session pods, and what they started), and
    every other container (the operator's replicas, pause containers...)."""

    def __init__(self, cluster: LocalCluster) -> None:
        assert cluster.node is not None
        self.cluster = cluster
        self.node = cluster.node
        daemons = self.node.daemon_pids()
        self.kubelet = psutil.Process(daemons["kubelet"])
        self.containerd = psutil.Process(daemons["containerd"])

    def lab_containers(self) -> set[str]:
        """Container IDs of the session pods' containers (label ``SESSION_LABEL``)."""
        pods = self.cluster.get_json("pods", "-A", "-l", SESSION_LABEL)["items"]
        return {
            str(cs["containerID"]).rsplit("/", 1)[-1]
            for pod in pods
            for cs in (pod.get("status") or {}).get("containerStatuses") or []
            if cs.get("containerID")
        }

    def shims_and_labs(
        self, labs_only: bool = False
    ) -> tuple[list[psutil.Process], list[psutil.Process], list[psutil.Process]]:
        """(shims, lab processes, other containers' processes); the lab containers are
        told apart only when ``labs_only`` (a kubectl call)."""
        lab_ids = self.lab_containers() if labs_only else None
        shims: dict[int, psutil.Process] = {}
        labs: list[psutil.Process] = []
        others: list[psutil.Process] = []
        for container, pid in self.node.task_pids().items():
            with contextlib.suppress(psutil.Error):
                task = psutil.Process(pid)
                parent = task.parent()
                if parent is not None:
                    shims[parent.pid] = parent
                tree = [task, *task.children(recursive=True)]
                if lab_ids is None or container in lab_ids:
                    labs += tree
                else:
                    others += tree
        return list(shims.values()), labs, others

    def daemons_rss(self) -> int:
        shims, _, _ = self.shims_and_labs()
        total = 0
        for proc in [self.kubelet, self.containerd, *shims]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def cpu(self) -> tuple[float, float, float, float]:
        """CPU seconds of (kubelet + containerd, shims, lab containers, other containers:
        the operator's replicas among them)."""
        shims, labs, others = self.shims_and_labs(labs_only=True)
        return (
            cpu_seconds(self.kubelet) + cpu_seconds(self.containerd),
            sum(_safe_cpu(p) for p in shims),
            sum(_safe_cpu(p) for p in labs),
            sum(_safe_cpu(p) for p in others),
        )


def _safe_cpu(proc: psutil.Process) -> float:
    try:
        return cpu_seconds(proc)
    except psutil.Error:
        return 0.0


def operator_process(cluster: LocalCluster, op: InClusterOperator) -> psutil.Process:
    """The operator container's main process, found through containerd."""
    assert cluster.node is not None
    pod = op.leader_pod()
    container_id = pod["status"]["containerStatuses"][0]["containerID"].rsplit("/", 1)[1]
    return psutil.Process(cluster.node.task_pids()[container_id])


class Sampler:
    """Samples peak RSS of the operator (every 0.2 s) and of the node daemons (kubelet,
    containerd, shims; every 2 s) in a thread."""

    def __init__(self, operator: psutil.Process, node: NodeProcesses) -> None:
        self.operator = operator
        self.node = node
        self.operator_peak = 0
        self.node_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.2):
            try:
                self.operator_peak = max(self.operator_peak, self.operator.memory_info().rss)
            except psutil.Error:
                return
            if tick % 10 == 0:
                self.node_peak = max(self.node_peak, self.node.daemons_rss())
            tick += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def process_label(cmdline: list[str]) -> str:
    """What a process is, for a table of who used the CPU: its program's name, and for a
    Python program the module (``-m``) or script it runs."""
    if not cmdline:
        return "?"
    program = cmdline[0].rsplit("/", 1)[-1]
    if not program.startswith("python"):
        return program
    args = cmdline[1:]
    if "-c" in args:
        return "python -c"
    if "-m" in args[:-1]:
        return f"python -m {args[args.index('-m') + 1]}"
    script = next((a for a in args if not a.startswith("-")), "")
    return f"python {script.rsplit('/', 1)[-1]}" if script else program


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every process's (label, CPU seconds) now, by pid (those that vanish are skipped)."""
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        times = proc.info.get("cpu_times")
        if times is None:
            continue
        out[proc.pid] = (process_label(proc.info.get("cmdline") or []), times.user + times.system)
    return out


def cpu_used_since(before: dict[int, tuple[str, float]], top: int = 8) -> dict[str, float]:
    """CPU seconds used since ``before`` (a :func:`cpu_by_process`), summed by label, the
    ``top`` largest, most first; a process started since counts from its start."""
    used: dict[str, float] = {}
    for pid, (label, seconds) in cpu_by_process().items():
        earlier = before.get(pid)
        spent = seconds - earlier[1] if earlier and earlier[0] == label else seconds
        used[label] = used.get(label, 0.0) + max(spent, 0.0)
    ranked = sorted(used.items(), key=lambda kv: -kv[1])[:top]
    return {label: round(seconds, 1) for label, seconds in ranked}


PASSES_METRIC = "kernelsession_passes_total"
"""The operator's passes by what began them (label ``cause``)."""


def metric_value(text: str, name: str) -> float:
    """The sum of metric ``name``'s samples, whatever their labels."""
    return sum(metric_by_label(text, name, "").values())


def metric_by_label(text: str, name: str, label: str) -> dict[str, float]:
    """Metric ``name``'s samples summed by the value of ``label`` ("" when absent)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? ([0-9.eE+-]+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
            value = labels.get(label, "")
            totals[value] = totals.get(value, 0.0) + float(m.group(2))
    return totals


def operator_requests(cluster: LocalCluster, offset: int) -> list[audit.Entry]:
    log = cluster.audit_log
    assert log is not None
    return [
        e
        for e in audit.read(log, user=OPERATOR_USER, offset=offset)
        if not e.user_agent.startswith("kubectl/") and not e.resource.startswith("/")
    ]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
