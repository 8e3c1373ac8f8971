"""Idle culling decisions (pure): from the lab's own activity and the session's limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kernelsession.operator.config import Settings
from kernelsession.operator.labapi import LabActivity

Action = Literal["keep", "warn", "cull"]


@dataclass(frozen=True)
class CullDecision:
    action: Action
    reason: str = ""
    message: str = ""


def limits(spec: Mapping[str, Any], settings: Settings) -> tuple[int, int]:
    """(idleTimeoutSeconds, maxAgeSeconds) with operator defaults; 0 means never."""
    culling = spec.get("culling") or {}
    idle = culling.get("idleTimeoutSeconds")
    age = culling.get("maxAgeSeconds")
    return (
        settings.default_idle_timeout if idle is None else int(idle),
        settings.default_max_age if age is None else int(age),
    )


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
    """Whether to keep, warn about, or cull a Ready lab.

    A busy kernel is never culled, whatever the limits; a kernel with open connections
    counts as active unless ``cull_connected``.
    """
    if activity.busy:
        return CullDecision("keep", "Busy", "a kernel is busy")
    if activity.connections and not cull_connected:
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
            if idle >= idle_timeout - warning:
                left = int(idle_timeout - idle)
                return CullDecision(
                    "warn", "IdleSoon", f"The lab is idle and will be culled in about {left}s."
                )
    return CullDecision("keep")
