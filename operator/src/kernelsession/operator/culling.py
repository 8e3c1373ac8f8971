"""Idle culling decisions (pure): from the lab's own activity and the session's limits,
and when a Ready lab needs to be asked again (``CullDecision.due``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from kernelsession.operator.config import Settings
from kernelsession.operator.labapi import LabActivity

Action = Literal["keep", "warn", "cull"]


@dataclass(frozen=True)
class CullDecision:
    action: Action
    reason: str = ""
    message: str = ""
    due: float = 0.0
    """Seconds until the clock alone changes this decision (:func:`_next_look`)."""


def limits(spec: Mapping[str, Any], settings: Settings) -> tuple[int, int]:
    """(idleTimeoutSeconds, maxAgeSeconds) with operator defaults; 0 means never."""
    culling = spec.get("culling") or {}
    idle = culling.get("idleTimeoutSeconds")
    age = culling.get("maxAgeSeconds")
    return (
        settings.default_idle_timeout if idle is None else int(idle),
        settings.default_max_age if age is None else int(age),
    )


@dataclass(frozen=True)
class Limits:
    """What a culling decision is judged against besides the lab's activity."""

    idle_timeout: int
    max_age: int
    started: datetime | None
    now: datetime
    warning: int
    cull_connected: bool


def decide(
    activity: LabActivity,
    *,
    idle_timeout: int,
    max_age: int,
    started: datetime | None,
    now: datetime,
    warning: int,
    cull_connected: bool,
) -> CullDecision:
    """Whether to keep, warn about, or cull a Ready lab, and when to ask it again
    (``CullDecision.due``, :func:`_next_look`).

    A busy kernel is never culled, whatever the limits; a kernel with open connections
    counts as active unless ``cull_connected``.
    """
    limits = Limits(idle_timeout, max_age, started, now, warning, cull_connected)
    return replace(_decide(activity, limits), due=_next_look(activity, limits))


def _decide(activity: LabActivity, limits: Limits) -> CullDecision:
    idle_timeout, max_age, started, now = (
        limits.idle_timeout,
        limits.max_age,
        limits.started,
        limits.now,
    )
    if activity.busy:
        return CullDecision("keep", "Busy", "a kernel is busy")
    if activity.connections and not limits.cull_connected:
        return CullDecision("keep", "Connected", "a client is connected to a kernel")
    if max_age and started is not None:
        age = (now - started).total_seconds()
        if age >= max_age:
            return CullDecision(
                "cull", "MaxAge", f"The lab reached spec.culling.maxAgeSeconds ({max_age}s)."
            )
    if idle_timeout:
        last = activity.latest() or started
        if last is not None:
            idle = (now - last).total_seconds()
            if idle >= idle_timeout:
                return CullDecision(
                    "cull",
                    "IdleTimeout",
                    f"The lab was idle for {int(idle)}s "
                    f"(spec.culling.idleTimeoutSeconds: {idle_timeout}s).",
                )
            if idle >= idle_timeout - limits.warning:
                left = int(idle_timeout - idle)
                return CullDecision(
                    "warn", "IdleSoon", f"The lab is idle and will be culled in about {left}s."
                )
    return CullDecision("keep")


ANY_MOMENT = 0.0
"""``CullDecision.due``: something other than the clock can make the lab cullable."""


def _next_look(activity: LabActivity, limits: Limits) -> float:
    """Seconds from ``now`` until the clock alone can change :func:`decide`'s answer for
    this lab: its next CullingSoon or cull deadline, from the activity seen now.

    A lab's activity only ever moves its idle deadline later (a kernel busy now is idle
    from now at the earliest), so a lab asked again at that moment (or sooner, when its
    pod wakes its session) is culled on time without being asked in between.

    Returns :data:`ANY_MOMENT` when something else can: an idle kernel kept by a
    connected client (``cull_connected`` off) may be cullable the moment the client
    leaves, so the caller asks as often as it asks anything. ``math.inf``: no deadline.
    """
    idle_timeout, max_age, started, now, warning = (
        limits.idle_timeout,
        limits.max_age,
        limits.started,
        limits.now,
        limits.warning,
    )
    if not activity.busy and activity.connections and not limits.cull_connected:
        return ANY_MOMENT
    deadlines: list[datetime] = []
    if max_age and started is not None:
        deadlines.append(started + timedelta(seconds=max_age))
    if idle_timeout:
        last = now if activity.busy else (activity.latest() or started)
        if last is not None:
            deadlines.append(last + timedelta(seconds=idle_timeout))
    future = [
        left
        for end in deadlines
        for left in (
            (end - now).total_seconds() - warning,
            (end - now).total_seconds(),
        )
        if left > 0
    ]
    return min(future, default=math.inf)
