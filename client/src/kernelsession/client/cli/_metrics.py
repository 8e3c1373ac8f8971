"""The prober's Prometheus metrics (:class:`ProbeMetrics`, a registry of its own)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from ._results import LAB_PHASES, ProbeResult, error_type, failure_reason

__all__ = [
    "ProbeMetrics",
]

_LAB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SPAWN_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class ProbeMetrics:
    """The prober's Prometheus metrics, on a registry of its own.

    * ``kernelsession_probe_total{result,error}``: checks by outcome and error type.
    * ``kernelsession_probe_seconds{phase}``: latency of login, session_create,
      websocket_open, execute (only for phases that ran).
    * ``kernelsession_probe_last_success_timestamp_seconds``, ``kernelsession_probe_up``.
    * Spawn probes add ``kernelsession_spawn_seconds`` (create until Ready),
      ``kernelsession_spawn_delete_seconds`` (delete until the children are gone) and
      ``kernelsession_spawn_total{result,reason}``.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, spawn: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._servers: list[Any] = []
        r = self.registry
        spawn_registry = r if spawn else None  # spawn metrics exported by spawn probers only
        self.total = Counter(
            "kernelsession_probe_total",
            "Probe checks by result and error type",
            ["result", "error"],
            registry=r,
        )
        self.seconds = Histogram(
            "kernelsession_probe_seconds",
            "Seconds per phase of a lab check",
            ["phase"],
            buckets=_LAB_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "kernelsession_probe_last_success_timestamp_seconds",
            "Unix time of the last successful check",
            registry=r,
        )
        self.up = Gauge(
            "kernelsession_probe_up", "1 if the last check succeeded, else 0", registry=r
        )
        self.spawn_seconds = Histogram(
            "kernelsession_spawn_seconds",
            "Seconds from creating a session until it is Ready",
            buckets=_SPAWN_BUCKETS,
            registry=spawn_registry,
        )
        self.spawn_delete_seconds = Histogram(
            "kernelsession_spawn_delete_seconds",
            "Seconds from deleting a session until it and its children are gone",
            buckets=_SPAWN_BUCKETS,
            registry=spawn_registry,
        )
        self.spawn_total = Counter(
            "kernelsession_spawn_total",
            "Spawn probes by result and failure reason",
            ["result", "reason"],
            registry=spawn_registry,
        )
        self.total.labels(result="success", error="")
        for phase in LAB_PHASES:
            self.seconds.labels(phase=phase)

    def record(self, result: ProbeResult) -> None:
        """Count one result and observe its phases."""
        if result.interrupted and result.error is None:
            return
        for phase, value in result.seconds.items():
            if phase in LAB_PHASES:
                self.seconds.labels(phase=phase).observe(value)
        if result.kind == "spawn":
            if "ready" in result.seconds:
                self.spawn_seconds.observe(result.seconds["ready"])
            if "delete" in result.seconds:
                self.spawn_delete_seconds.observe(result.seconds["delete"])
            self.spawn_total.labels(
                result="success" if result.ok else "failure", reason=failure_reason(result.error)
            ).inc()
        if result.ok:
            self.total.labels(result="success", error="").inc()
            self.last_success.set(time.time())
            self.up.set(1)
        else:
            self.total.labels(result="failure", error=error_type(result.error)).inc()
            self.up.set(0)

    def serve(self, port: int, address: str) -> int:
        """Serve ``/metrics`` over HTTP in a daemon thread; return the bound port."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        self._servers.append(server)
        return int(server.server_port)

    def stop_serving(self) -> None:
        """Stop the HTTP servers started by :meth:`serve` and close their sockets."""
        while self._servers:
            server = self._servers.pop()
            server.shutdown()
            server.server_close()
