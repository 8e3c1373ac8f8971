"""What the operator costs while the bench runs: CPU and memory of its process and of the
node's daemons (sampled with psutil), its ``/metrics``, and its API requests from the
audit log."""

from __future__ import annotations

import contextlib
import re
import statistics
import threading

import psutil

from kernelsession.localcluster.cluster import LocalCluster, audit
from kernelsession.localcluster.deploy import InClusterOperator
from kernelsession.localcluster.deploy.operator_process import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE

OPERATOR_USER = audit.service_account(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)


class NodeProcesses:
    """The node's processes by role: the kubelet and containerd (daemons), the runc shims
    (one per pod), and the labs (everything the shims started)."""

    def __init__(self, cluster: LocalCluster) -> None:
        assert cluster.node is not None
        self.node = cluster.node
        daemons = self.node.daemon_pids()
        self.kubelet = psutil.Process(daemons["kubelet"])
        self.containerd = psutil.Process(daemons["containerd"])

    def shims_and_labs(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        shims: dict[int, psutil.Process] = {}
        labs: list[psutil.Process] = []
        for pid in self.node.task_pids().values():
            with contextlib.suppress(psutil.Error):
                task = psutil.Process(pid)
                parent = task.parent()
                if parent is not None:
                    shims[parent.pid] = parent
                labs += [task, *task.children(recursive=True)]
        return list(shims.values()), labs

    def daemons_rss(self) -> int:
        shims, _ = self.shims_and_labs()
        total = 0
        for proc in [self.kubelet, self.containerd, *shims]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def cpu(self) -> tuple[float, float, float]:
        """CPU seconds of (kubelet + containerd, shims, labs)."""
        shims, labs = self.shims_and_labs()
        return (
            cpu_seconds(self.kubelet) + cpu_seconds(self.containerd),
            sum(_safe_cpu(p) for p in shims),
            sum(_safe_cpu(p) for p in labs),
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


def metric_value(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", line)
        if m:
            total += float(m.group(1))
    return total


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
