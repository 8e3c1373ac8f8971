"""Pure culling decisions from the lab's own activity."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from kernelsession.operator import culling
from kernelsession.operator.config import Settings
from kernelsession.operator.labapi import KernelActivity, LabActivity, parse_activity

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def act(idle: float, *kernels: KernelActivity) -> LabActivity:
    return LabActivity(last_activity=NOW - timedelta(seconds=idle), started=None, kernels=kernels)


def decide(
    a: LabActivity,
    idle: int = 60,
    age: int = 0,
    started_ago: float = 10,
    cull_connected: bool = False,
    later: float = 0,
) -> culling.CullDecision:
    """culling.decide for ``a``, asked ``later`` seconds after NOW (nothing new from the lab)."""
    return culling.decide(
        a,
        idle_timeout=idle,
        max_age=age,
        started=NOW - timedelta(seconds=started_ago),
        now=NOW + timedelta(seconds=later),
        warning=20,
        cull_connected=cull_connected,
    )


def test_idle_lab_is_culled_and_warned_first() -> None:
    assert decide(act(10)).action == "keep"
    assert decide(act(45)).action == "warn"
    d = decide(act(61))
    assert (d.action, d.reason) == ("cull", "IdleTimeout")
    assert "idleTimeoutSeconds" in d.message


def test_busy_kernel_is_never_culled() -> None:
    busy = KernelActivity("busy", 0, NOW - timedelta(hours=5))
    assert decide(act(10_000, busy)).action == "keep"
    assert decide(act(10_000, busy), age=5, started_ago=100).action == "keep"


def test_connected_kernel_counts_as_active_unless_configured() -> None:
    idle_connected = KernelActivity("idle", 1, NOW - timedelta(hours=1))
    assert decide(act(3600, idle_connected)).action == "keep"
    assert decide(act(3600, idle_connected), cull_connected=True).action == "cull"


def test_kernel_activity_counts_as_activity() -> None:
    recent = KernelActivity("idle", 0, NOW - timedelta(seconds=5))
    assert decide(act(3600, recent)).action == "keep"


def test_max_age_and_zero_means_never() -> None:
    d = decide(act(1), age=100, started_ago=101)
    assert (d.action, d.reason) == ("cull", "MaxAge")
    assert decide(act(10_000), idle=0).action == "keep"


def test_limits_default_from_settings() -> None:
    s = Settings(default_idle_timeout=7, default_max_age=9)
    assert culling.limits({}, s) == (7, 9)
    assert culling.limits({"culling": {"idleTimeoutSeconds": 0}}, s) == (0, 9)


def test_parse_activity_from_jupyter_answers() -> None:
    a = parse_activity(
        {"started": "2026-11-21T11:00:00.000000Z", "last_activity": "2026-11-21T11:59:00.000Z"},
        [
            {
                "execution_state": "idle",
                "connections": 2,
                "last_activity": "2026-11-21T11:59:30.123456Z",
            }
        ],
    )
    assert a.connections == 2
    assert not a.busy
    assert a.latest() == datetime(2026, 11, 21, 11, 59, 30, 123456, tzinfo=UTC)


def look(
    a: LabActivity,
    idle: int = 60,
    age: int = 0,
    started_ago: float = 10,
    cull_connected: bool = False,
) -> float:
    return decide(a, idle, age, started_ago, cull_connected).due


def test_an_idle_lab_is_next_looked_at_when_its_warning_then_its_cull_falls_due() -> None:
    a = act(10)  # idle for 10 s of 60: warning at 40, cull at 60
    assert look(a) == 30
    assert decide(a, later=30 - 0.1).action == "keep"
    assert decide(a, later=30).action == "warn"
    warned = act(45)
    assert look(warned) == 15
    assert decide(warned, later=15 - 0.1).action == "warn"
    assert decide(warned, later=15).action == "cull"


def test_a_busy_lab_is_idle_from_now_at_the_earliest() -> None:
    busy = act(500, KernelActivity("busy", 0, NOW - timedelta(seconds=500)))
    assert look(busy) == 40  # now + 60 - 20


def test_an_idle_kernel_with_a_client_can_turn_cullable_at_any_moment() -> None:
    connected = act(500, KernelActivity("idle", 1, NOW - timedelta(seconds=500)))
    assert look(connected) == culling.ANY_MOMENT
    assert look(connected, cull_connected=True) == math.inf  # overdue: no deadline ahead


def test_max_age_is_a_deadline_of_its_own() -> None:
    a = act(0)
    assert look(a, idle=0, age=100, started_ago=70) == 10  # warning at 80 s of age
    assert look(a, idle=0, age=100, started_ago=90) == 10  # the cull at 100 s
    assert look(a, idle=3600, age=100, started_ago=70) == 10


def test_no_limits_no_deadline() -> None:
    assert look(act(10), idle=0, age=0) == math.inf
