"""Continuous probing: ``kernelsession probe NAME --every S --metrics-port P`` and ``--spawn``.

Two probers for machines (health checks, synthetic testers):

* :class:`LabProber` keeps one lab session open (reopening it when it breaks) and
  runs a short check each interval.
* :func:`spawn_once` probes the whole path: create a temporary ``KernelSession``
  (``probe-<random>``, labelled ``kernelsession.dev/probe=spawn``), wait until Ready,
  run code, delete it and wait until its children are gone. It never leaves the
  session behind: the delete runs in a ``finally``, also when cancelled.

Both record into :class:`ProbeMetrics` (a ``prometheus_client`` registry of their
own, never the global one) and produce :class:`ProbeResult` objects, printed as a
line of text or one JSON object each (``--json``). Tokens never appear: errors are
redacted when made and URLs pass through :func:`redact`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from ._errors import JupyterError, redact
from ._kubernetes import (
    KernelSessionClient,
    KernelSessionError,
    KernelSessionFailedError,
)
from ._models import NotebookResult
from ._session import JupyterLabSession, JupyterLabSessionManager
from .kubeapi import load_api_client
from .resources import GROUP

__all__ = [
    "LAB_PHASES",
    "PROBE_LABEL",
    "ProbeMetrics",
    "ProbeResult",
    "UnexpectedOutputError",
    "error_dict",
    "error_type",
    "failure_reason",
    "format_result",
    "notebook_report",
    "spawn_once",
]

PROBE_CODE = "print('kernelsession-probe-ok')"
PROBE_EXPECTED = "kernelsession-probe-ok\n"
#: Label on sessions made by ``probe --spawn`` (find leftovers with ``-l``).
PROBE_LABEL = (f"{GROUP}/probe", "spawn")
#: Phases of a lab session, in order, as ``kernelsession_probe_seconds{phase=...}``.
LAB_PHASES = ("login", "session_create", "websocket_open", "execute")
_LAB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SPAWN_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_CLOSE_TIMEOUT = 15.0


class KubeconfigError(Exception):
    """No Kubernetes credentials could be loaded (kubeconfig or in-cluster)."""


class UnexpectedOutputError(Exception):
    """The probe code ran but printed something else than expected."""


def error_type(error: BaseException | None) -> str:
    """The ``error`` label value of a failure: the error's class name ("" for success).

    Pure: ``JupyterWebError``, ``JupyterWebSocketError``, ``KernelSessionNotFoundError``,
    ``UnexpectedOutputError``, ``TimeoutError``... (``asyncio.TimeoutError`` is
    ``TimeoutError``).
    """
    if error is None:
        return ""
    return type(error).__name__


def failure_reason(error: BaseException | None) -> str:
    """The ``reason`` label of a failed spawn: the session's own reason when it went
    Failed (``ImagePullFailed``, ``CrashLoop``...), else the error's class name. Pure."""
    if isinstance(error, KernelSessionFailedError) and error.reason:
        return str(error.reason)
    return error_type(error)


def error_dict(error: BaseException) -> dict[str, Any]:
    """A JSON-ready, redacted description of ``error`` for alerting.

    ``JupyterError.to_dict()`` for the lab's errors; for the rest type, message and
    the attributes that say what failed (session, namespace, reason, HTTP status).
    """
    if isinstance(error, JupyterError):
        return error.to_dict()
    result: dict[str, Any] = {"type": type(error).__name__, "message": redact(str(error))}
    if isinstance(error, KernelSessionError):
        result["session"] = error.name
        result["namespace"] = error.namespace
        for attr in ("phase", "reason", "status"):
            if hasattr(error, attr):
                result[attr] = getattr(error, attr)
    return result


@dataclass
class ProbeResult:
    """One check's outcome: which phases ran for how long, and the error if any."""

    kind: str  # "lab" or "spawn"
    target: str  # redacted URL, or namespace/name
    started_at: datetime
    seconds: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.interrupted

    def to_dict(self) -> dict[str, Any]:
        """One JSON object: ``result`` ("success"/"failure"), phases' seconds, error."""
        return {
            "probe": self.kind,
            "target": self.target,
            "result": "success" if self.ok else "failure",
            "healthy": self.ok,
            "started_at": self.started_at.isoformat(),
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "error": error_dict(self.error) if self.error is not None else None,
            "interrupted": self.interrupted,
        }


def format_result(result: ProbeResult, *, as_json: bool) -> str:
    """The line printed per result: one JSON object, or a short human line. Pure."""
    if as_json:
        return json.dumps(result.to_dict(), sort_keys=False)
    phases = " ".join(f"{k}={v * 1000:.1f}ms" for k, v in result.seconds.items())
    when = result.started_at.isoformat(timespec="seconds")
    if result.ok:
        return f"{when} {result.kind} {result.target} success {phases}".rstrip()
    if result.interrupted and result.error is None:
        return f"{when} {result.kind} {result.target} interrupted {phases}".rstrip()
    error = result.error
    message = getattr(error, "message", None) or redact(str(error))
    first = message.splitlines()[0] if message else ""
    return f"{when} {result.kind} {result.target} failure {error_type(error)}: {first} {phases}"


def notebook_report(
    path: str,
    started_at: datetime,
    *,
    result: NotebookResult | None = None,
    error: JupyterError | None = None,
) -> dict[str, Any]:
    """One JSON object for a notebook run (``kernelsession notebook --json``). Pure.

    ``result``: "success" with every cell's number, id, seconds and stdout; or
    "failure" with the error's redacted ``to_dict()`` (its ``context`` names the
    notebook, cell id and cell number).
    """
    report: dict[str, Any] = {
        "notebook": result.notebook if result is not None else Path(path).name,
        "result": "success" if error is None else "failure",
        "started_at": started_at.isoformat(),
        "seconds": round(result.seconds, 6) if result is not None else None,
        "cells": [],
        "error": error.to_dict() if error is not None else None,
    }
    if result is not None:
        report["cells"] = [
            {
                "cell_number": cell.cell_number,
                "cell_id": cell.cell_id,
                "seconds": round(cell.seconds, 6),
                "stdout": cell.stdout,
            }
            for cell in result.cells
        ]
    return report


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


def _timings(manager: JupyterLabSessionManager) -> dict[str, float]:
    phases = manager.timings.as_dict()
    return {k: v for k in LAB_PHASES if (v := phases.get(k)) is not None}


OpenManager = Callable[[], Awaitable[JupyterLabSessionManager]]


class LabProber:
    """Keep one lab session open and check it; reopen it after a failure.

    ``open_manager`` returns a fresh (not yet entered) manager each time a session
    must be opened: for a named session it re-reads the URL and token Secret, so a
    session deleted and created again is found with its new token.
    """

    def __init__(
        self,
        open_manager: OpenManager,
        *,
        target: str,
        timeout: float,
        metrics: ProbeMetrics,
        deadline: float | None = None,
        notebook: str | None = None,
    ) -> None:
        self._open_manager = open_manager
        #: A notebook to run each check (a synthetic test) instead of the probe code.
        self.notebook = notebook
        self.target = target
        self.timeout = timeout
        #: Bound on a whole check (opening included): a hung server is a failure, not a hang.
        self.deadline = deadline if deadline is not None else timeout + 90.0
        self.metrics = metrics
        self._manager: JupyterLabSessionManager | None = None
        self._session: JupyterLabSession | None = None

    async def check(self) -> ProbeResult:
        """One check: open the session if needed, run the probe code; record the result.

        Every failure is a result whose ``error`` is typed by its class (a check that
        takes longer than ``deadline`` fails with ``TimeoutError``); the session is then
        closed, and the next check opens a new one.
        """
        result = ProbeResult("lab", self.target, datetime.now(tz=UTC))
        try:
            async with asyncio.timeout(self.deadline):
                await self._check(result)
        except asyncio.CancelledError:
            result.interrupted = True
            raise
        except Exception as e:  # every failure is a result, typed by its class
            result.error = e
            await self.close()
        finally:
            self.metrics.record(result)
        return result

    async def _check(self, result: ProbeResult) -> None:
        if self._session is None:
            manager = await self._open_manager()
            self._manager = manager
            try:
                self._session = await manager.__aenter__()
            finally:
                result.seconds.update(_timings(manager))
        t0 = time.perf_counter()
        if self.notebook is not None:
            await self._session.run_notebook(self.notebook, timeout=self.timeout)
            result.seconds["execute"] = time.perf_counter() - t0
            return
        output = await self._session.run_python(PROBE_CODE, timeout=self.timeout)
        result.seconds["execute"] = time.perf_counter() - t0
        if output != PROBE_EXPECTED:
            raise UnexpectedOutputError(f"unexpected output {output[:200]!r}")

    async def close(self) -> None:
        """Close the open lab session (deleting what it created), bounded in time."""
        manager, self._manager, self._session = self._manager, None, None
        if manager is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await manager.__aexit__(None, None, None)


@dataclass
class SpawnSettings:
    """What ``probe --spawn`` creates."""

    namespace: str
    user: str
    image: str | None = None
    ready_timeout: float = 300.0
    delete_timeout: float = 120.0
    execute_timeout: float = 60.0
    kubeconfig: str | None = None


def spawn_name() -> str:
    """A fresh name for a temporary session: ``probe-`` and 8 random hex digits."""
    return f"probe-{secrets.token_hex(4)}"


async def _children_gone(sessions: KernelSessionClient, name: str, deadline: float) -> None:
    """Wait until no child of session ``name`` remains (Pod, Service, Secret...)."""
    delay = 0.05
    while True:
        left = await sessions.children(name)
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"children of {sessions.namespace}/{name} still present: {left}")
        await asyncio.sleep(delay)  # polling the condition, bounded by the deadline
        delay = min(delay * 2, 0.5)


async def spawn_once(
    settings: SpawnSettings,
    metrics: ProbeMetrics | None = None,
    *,
    on_name: Callable[[str], None] | None = None,
    on_result: Callable[[ProbeResult], None] | None = None,
) -> ProbeResult:
    """Create a temporary session, wait until Ready, run code, delete it; time each step.

    Steps in ``seconds``: ``create`` (the API request), ``ready`` (create until Ready),
    the lab phases, ``delete`` (until the session and its children are gone). The
    session is deleted in a ``finally``: cancelling this coroutine (SIGINT/SIGTERM)
    still deletes it (the delete itself is shielded from the cancellation).
    """
    name = spawn_name()
    result = ProbeResult("spawn", f"{settings.namespace}/{name}", datetime.now(tz=UTC))
    create_sent = False
    api: Any = None
    try:
        try:
            api = await load_api_client(settings.kubeconfig)
        except Exception as e:  # no kubeconfig, no in-cluster service account...
            raise KubeconfigError(f"cannot load Kubernetes credentials: {e}") from None
        sessions = KernelSessionClient(namespace=settings.namespace, api_client=api)
        if on_name is not None:
            on_name(name)
        t0 = time.perf_counter()
        create_sent = True
        # Shielded: a create cancelled in flight could land after the cleanup's delete
        # and leave the session behind; a cancel waits for it (well under a second).
        create = asyncio.ensure_future(
            sessions.create(
                name,
                settings.user,
                image=settings.image,
                labels={
                    PROBE_LABEL[0]: PROBE_LABEL[1],
                    "app.kubernetes.io/created-by": "kernelsession-probe",
                },
            )
        )
        await _await_shielded(create)
        t1 = time.perf_counter()
        result.seconds["create"] = t1 - t0
        await sessions.wait_ready(name, timeout=settings.ready_timeout)
        result.seconds["ready"] = time.perf_counter() - t0
        manager = await sessions.lab_session(
            name, websocket_open_timeout=timedelta(seconds=settings.execute_timeout)
        )
        try:
            async with manager as session:
                t2 = time.perf_counter()
                output = await session.run_python(PROBE_CODE, timeout=settings.execute_timeout)
                result.seconds["execute"] = time.perf_counter() - t2
        finally:
            result.seconds.update(_timings(manager))
        if output != PROBE_EXPECTED:
            raise UnexpectedOutputError(f"unexpected output {output[:200]!r}")
    except asyncio.CancelledError:
        result.interrupted = True
        raise
    except Exception as e:  # every failure is a result, typed by its class
        result.error = e
    finally:
        try:
            if create_sent:
                cleanup = asyncio.ensure_future(_delete(sessions, settings, name, result))
                await _await_shielded(cleanup)
        finally:
            if api is not None:
                await api.close()
            if metrics is not None:
                metrics.record(result)
            if on_result is not None:
                on_result(result)
    return result


async def _await_shielded(task: asyncio.Future[Any]) -> None:
    """Wait for ``task`` to finish even if the caller is cancelled meanwhile; then re-raise."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


async def _delete(
    sessions: KernelSessionClient, settings: SpawnSettings, name: str, result: ProbeResult
) -> None:
    t0 = time.perf_counter()
    deadline = time.monotonic() + settings.delete_timeout
    try:
        await sessions.delete(name, wait=True, timeout=settings.delete_timeout)
        await _children_gone(sessions, name, deadline)
        result.seconds["delete"] = time.perf_counter() - t0
    except Exception as e:  # the delete failing is the result's failure if none came first
        if result.error is None:
            result.error = e


# -- the command-line side (called from _cli.py) --------------------------------------


class Stopper:
    """SIGTERM/SIGINT set an event (and cancel the running step) instead of killing."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.current: asyncio.Task[Any] | None = None
        self._loop = asyncio.get_running_loop()

    def __enter__(self) -> Stopper:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        if not self.event.is_set():
            self.event.set()
            if self.current is not None:
                self.current.cancel()

    async def run(self, step: Awaitable[Any]) -> Any:
        """Run ``step`` as a task that a signal cancels; ``None`` when it was cancelled."""
        self.current = asyncio.ensure_future(step)
        try:
            return await self.current
        except asyncio.CancelledError:
            if not self.event.is_set():
                raise
            return None
        finally:
            self.current = None

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until a signal, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout=max(seconds, 0))


def announcer(settings: SpawnSettings) -> Callable[[str], None]:
    """``on_name`` for :func:`spawn_once`: say on stderr which session is being created."""

    def announce(name: str) -> None:
        print(f"creating KernelSession {settings.namespace}/{name}", file=sys.stderr, flush=True)

    return announce


def emit(result: ProbeResult, *, as_json: bool, out: TextIO = sys.stdout) -> None:
    print(format_result(result, as_json=as_json), file=out, flush=True)


async def run_continuous(
    step: Callable[[], Awaitable[ProbeResult]],
    *,
    every: float,
    as_json: bool,
    metrics: ProbeMetrics,
    metrics_port: int | None,
    metrics_address: str,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Run ``step`` every ``every`` seconds until SIGTERM/SIGINT; exit 0 after cleanup."""
    if metrics_port is not None:
        port = metrics.serve(metrics_port, metrics_address)
        print(f"serving metrics on http://{metrics_address}:{port}/metrics", file=sys.stderr)
        sys.stderr.flush()
    with Stopper() as stopper:
        try:
            while not stopper.event.is_set():
                started = time.monotonic()
                result = await stopper.run(step())
                if result is not None:
                    emit(result, as_json=as_json)
                await stopper.sleep(every - (time.monotonic() - started))
        finally:
            if on_stop is not None:
                await on_stop()
            metrics.stop_serving()
    print("probe stopped", file=sys.stderr)
    return 0


async def run_spawn_once(settings: SpawnSettings, *, as_json: bool) -> int:
    """One spawn probe; SIGINT/SIGTERM interrupt it (the session is still deleted).

    Exit 0 when it all worked, 1 when a step failed, 130 when interrupted.
    """
    seen: list[ProbeResult] = []
    with Stopper() as stopper:
        await stopper.run(spawn_once(settings, on_name=announcer(settings), on_result=seen.append))
    if not seen:  # interrupted before it named a session: nothing was created
        return 130
    (result,) = seen
    if result.interrupted:
        if as_json:
            emit(result, as_json=True)
        if "delete" in result.seconds:
            print(f"probe interrupted; {result.target} was deleted", file=sys.stderr)
        elif result.error is None:
            print("probe interrupted before creating a session", file=sys.stderr)
        else:
            print(
                f"probe interrupted; deleting {result.target} failed: {result.error}; find "
                f"leftovers with: kubectl get ks -A -l {PROBE_LABEL[0]}={PROBE_LABEL[1]}",
                file=sys.stderr,
            )
        return 130
    emit(result, as_json=as_json)
    if not as_json and result.ok:
        print(_spawn_table(result.seconds))
    return 0 if result.ok else 1


def _spawn_table(seconds: Mapping[str, float]) -> str:
    order = ["create", "ready", *LAB_PHASES, "delete"]
    return "\n".join(
        f"  {key:<15} {seconds[key] * 1000:9.1f} ms" for key in order if key in seconds
    )
