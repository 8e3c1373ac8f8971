"""One loop per session while this replica is active: a pass whenever something wakes
it (the session or a child changed), else when the last pass said to look again.

Passes of all sessions share a bound (``max_concurrent_passes``). A failing pass backs
off exponentially up to a minute and is counted; a :class:`PermanentError` waits a
minute or a change of the session. Nothing escapes a loop: one bad object never stops
the operator.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from kernelsession.operator import metrics, passslots, reconcile
from kernelsession.operator.act import event
from kernelsession.operator.config import Settings
from kernelsession.operator.errors import NotLeading, PermanentError, RetryLater, SessionGone
from kernelsession.operator.observe import ChildView, settled
from kernelsession.operator.runtime import Runtime
from kernelsession.operator.state import SessionState

log = structlog.get_logger("kernelsession.operator")
MAX_BACKOFF = 60.0
IMMEDIATE_PASSES = 3
# What began a pass (``kernelsession_passes{cause}``; a wake's cause is the kind of what
# changed, see ``SessionState.wake_for``).
FIRST = "first"
"""The loop's first pass (a new session, or every session when this replica takes over)."""
AGAIN = "again"
"""The previous pass asked for another at once (e.g. the token Secret was just made)."""
TIMER = "timer"
"""The previous pass's look-again time came with nothing waking the session sooner."""
UNKNOWN = "unknown"
SWEEP_SPACING_UNLIMITED = 0.01
"""Seconds between settled sessions' first passes when the API rate is not limited."""


def start(rt: Runtime, state: SessionState) -> None:
    """Start the session's loop unless it runs (only while this replica is active).

    A session whose status and pods agree on a steady state (:func:`observe.settled`:
    what a replica that starts acting finds in most sessions) has its first pass in the
    next free slot of the sweep (:func:`sweep_spacing`), or as soon as a change of its
    own wakes it; any other session at once. A new leader's (or a restarted operator's)
    first decisions do not queue behind a pass over every session."""
    if not rt.active or state.running or rt.indexes is None:
        return
    after = 0.0
    if settled(state.body, rt.indexes.pods.get(state.key, [])):
        now = time.monotonic()
        slot = max(now, rt.sweep_next)
        rt.sweep_next = slot + sweep_spacing(rt.settings)
        after = slot - now
        state.wake.clear()  # what woke it while this replica stood by is in that pass
    state.task = asyncio.get_running_loop().create_task(
        session_loop(rt, state, after), name=f"session {state.key}"
    )


def start_all(rt: Runtime) -> None:
    """This replica starts acting (a takeover): every session it knows (:func:`start`)."""
    for state in rt.sessions:
        start(rt, state)


def sweep_spacing(cfg: Settings) -> float:
    """Seconds between the first passes of settled sessions: at most half the API rate
    (``api_qps``; each such pass reads the token Secret), the rest left to sessions that
    need something."""
    return 2.0 / cfg.api_qps if cfg.api_qps > 0 else SWEEP_SPACING_UNLIMITED


def stop_all(rt: Runtime) -> None:
    for state in rt.sessions:
        state.stop()


async def one_pass(rt: Runtime, state: SessionState) -> float:
    idx = rt.indexes
    assert idx is not None
    key = state.key
    claims: Any = idx.claims.get(key, [])
    policies: Any = idx.policies.get(key, [])
    ingresses: Any = idx.ingresses.get(key, [])
    readers: Any = idx.token_readers.get(key, [])
    async with rt.passes.slot(passslots.priority(state.body)):
        state.begin_pass()
        return await reconcile.reconcile(
            rt,
            state,
            list(idx.pods.get(key, [])),
            key in idx.services,
            ChildView.of(next(iter(policies), None)),
            ChildView.of(next(iter(ingresses), None)),
            next(iter(claims), None),
            next(iter(readers), None),
        )


async def session_loop(rt: Runtime, state: SessionState, after: float = 0.0) -> None:
    """Reconcile one session until it is deleted or this replica stops acting; the
    first pass ``after`` seconds from now unless something wakes it sooner."""
    namespace, name = state.key
    failures = immediate = 0
    cause = FIRST
    if after > 0 and await _woken(state, after):
        cause = state.woken_by or FIRST
    while True:
        state.wake.clear()
        state.woken_by = None
        metrics.PASSES.labels(cause).inc()
        try:
            delay = await one_pass(rt, state)
            failures = 0
        except asyncio.CancelledError:
            raise
        except SessionGone:
            log.info(
                "session gone; forgotten", namespace=namespace, session=name, missed_event=True
            )
            metrics.FORGOTTEN.inc()
            rt.forget(state.key, state.body.get("metadata", {}).get("uid"))
            return
        except NotLeading:
            return  # stepped down: the loop ends (the elector stops every loop)
        except PermanentError as exc:
            metrics.RECONCILE_ERRORS.labels("PermanentError").inc()
            log.error(
                "session cannot be reconciled", namespace=namespace, session=name, error=str(exc)
            )
            await event(rt, state.body, "ReconcileFailed", str(exc), warning=True)
            delay = MAX_BACKOFF
        except Exception as exc:
            failures += 1
            metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
            delay = min(MAX_BACKOFF, 0.5 * 2**failures)
            if isinstance(exc, RetryLater):
                delay = min(delay, exc.delay)
            log.warning(
                "reconcile failed; retrying",
                namespace=namespace,
                session=name,
                error=f"{type(exc).__name__}: {exc}",
                retry_in=delay,
            )
        metrics.RECONCILES.inc()
        immediate = immediate + 1 if delay <= 0 else 0
        if delay <= 0 and immediate <= IMMEDIATE_PASSES:
            cause = AGAIN
            continue  # e.g. the token Secret was just created: build the pod now
        delay = max(delay, rt.settings.starting_interval)
        woken = await _woken(state, delay)
        cause = (state.woken_by or UNKNOWN) if woken else TIMER


async def _woken(state: SessionState, timeout: float) -> bool:
    """Wait until something wakes the session (True) or ``timeout`` seconds pass."""
    try:
        await asyncio.wait_for(state.wake.wait(), timeout=timeout)
    except TimeoutError:
        return False
    return True
