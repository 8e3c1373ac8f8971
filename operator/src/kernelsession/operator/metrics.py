"""Prometheus metrics of the operator, served on their own port."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from http.server import ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kernelsession.operator import endpoints
from kernelsession.operator.status import PHASES

REGISTRY = CollectorRegistry()

SPAWN_SECONDS = Histogram(
    "kernelsession_spawn_seconds",
    "Seconds from lab pod creation to the session being Ready",
    buckets=(1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 300, 600),
    registry=REGISTRY,
)
CULLS = Counter("kernelsession_culls", "Labs culled, by reason", ["reason"], registry=REGISTRY)
RECONCILE_ERRORS = Counter(
    "kernelsession_reconcile_errors",
    "Reconcile iterations that raised, by exception type",
    ["error"],
    registry=REGISTRY,
)
RECONCILES = Counter("kernelsession_reconciles", "Reconcile iterations run", registry=REGISTRY)
PASSES = Counter(
    "kernelsession_passes",
    "Reconcile passes begun, by what began them: first, again, timer, or the kind of "
    "object whose change woke the session (KernelSession, Pod, Service, ...)",
    ["cause"],
    registry=REGISTRY,
)
STATUS_WRITES = Counter(
    "kernelsession_status_writes", "Status patches sent to the API server", registry=REGISTRY
)
API_THROTTLED_SECONDS = Counter(
    "kernelsession_api_throttled_seconds",
    "Seconds API requests waited for the operator's own rate limit (KERNELSESSION_API_QPS)",
    registry=REGISTRY,
)
FORGOTTEN = Counter(
    "kernelsession_sessions_forgotten",
    "Sessions found gone by the periodic list (their deletion was missed by the watch)",
    registry=REGISTRY,
)


LEADER = Gauge(
    "kernelsession_leader",
    "1 while this replica is the active one (holds the Lease), else 0",
    registry=REGISTRY,
)


def _no_phases() -> Iterable[str]:
    return ()


class PhaseCollector(Collector):
    """``kernelsession_sessions{phase}`` from the operator's current view.

    ``source`` returns the phase of every session this replica looks after (set at
    startup to read the per-session state; nothing is stored here).
    """

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[str]] = _no_phases

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kernelsession_sessions", "KernelSessions by phase", labels=["phase"]
        )
        counts: dict[str, int] = dict.fromkeys(PHASES, 0)
        for phase in list(self.source()):
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family


SESSIONS = PhaseCollector()
REGISTRY.register(SESSIONS)


PATH = "/metrics"


def exposition() -> endpoints.Answer:
    """The registry in Prometheus' text format, as the endpoint answers it."""
    return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer | None:
    """Serve ``GET /metrics`` on ``host:port`` from a daemon thread
    (:func:`endpoints.serve`); ``port`` 0 serves nothing and returns None.

    Raises:
        OSError: the port cannot be bound.
    """
    if not port:
        return None
    return endpoints.serve("metrics", {PATH: exposition}, port, host)
