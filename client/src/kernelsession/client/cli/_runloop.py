"""The command-line side of probing: run a probe every interval until SIGTERM/SIGINT,
or one spawn probe, printing each result (called from ``_main.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TextIO

from ._metrics import ProbeMetrics
from ._probers import PROBE_LABEL, SpawnSettings, spawn_once
from ._results import LAB_PHASES, ProbeResult, format_result

__all__ = [
    "Stopper",
    "announcer",
    "emit",
    "run_continuous",
    "run_spawn_once",
]


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
