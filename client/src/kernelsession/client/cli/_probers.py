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
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .._kubernetes import KernelSessionClient
from .._manager import JupyterLabSessionManager
from .._session import JupyterLabSession
from ..kubeapi import load_api_client
from ..resources import GROUP
from ._metrics import ProbeMetrics
from ._results import LAB_PHASES, KubeconfigError, ProbeResult, UnexpectedOutputError

__all__ = [
    "PROBE_CODE",
    "PROBE_EXPECTED",
    "PROBE_LABEL",
    "LabProber",
    "SpawnSettings",
    "spawn_name",
    "spawn_once",
]

PROBE_CODE = "print('kernelsession-probe-ok')"
PROBE_EXPECTED = "kernelsession-probe-ok\n"


#: Label on sessions made by ``probe --spawn`` (find leftovers with ``-l``).
PROBE_LABEL = (f"{GROUP}/probe", "spawn")
_CLOSE_TIMEOUT = 15.0


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
