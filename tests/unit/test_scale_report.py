"""The scale bench's percentiles, write counting and JSON line (no cluster)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from bench import pyspy
from bench.scale_report import (
    ScaleFigures,
    api_calls,
    epoch,
    json_line,
    not_culled,
    operator_writes,
    parse_json_line,
    peak_rate,
    percentile,
    seconds_to_first,
)
from kernelsession.localcluster.cluster import audit

REQUIRED = (
    "hollow",
    "sessions",
    "ready",
    "ready_p95_s",
    "plain_pod_p95_s",
    "operator_rss_mib",
    "operator_cpu_ms_per_session",
    "writes_per_session",
    "steady_writes_per_min",
)


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert percentile([4.2], 95) == 4.2
    assert math.isnan(percentile([], 95))
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def _entry(verb: str, resource: str, code: int | None) -> audit.Entry:
    return audit.Entry(verb, resource, "labs", "x", "", "u", code, "ResponseComplete", "t")


def test_operator_writes_exclude_lease_reads_and_failures() -> None:
    entries = [
        _entry("create", "pods", 201),
        _entry("patch", "kernelsessions/status", 200),
        _entry("create", "events", 201),
        _entry("update", "leases", 200),
        _entry("create", "secrets", 409),
        _entry("get", "pods", 200),
    ]
    assert [e.key for e in operator_writes(entries)] == [
        "create pods",
        "patch kernelsessions/status",
        "create events",
    ]


def test_json_line_is_last_line_with_required_keys() -> None:
    figures = ScaleFigures(
        sessions=4,
        rate=10,
        ready=4,
        session_ready_s=[4.0, 4.5, 5.0, 6.0],
        plain_ready=4,
        plain_ready_s=[3.9, 4.1, 4.4, 5.2],
        operator_cpu_s=0.2,
        yardstick_ms=20.0,
        operator_rss_peak_bytes=100 * 2**20,
        operator_rss_base_bytes=60 * 2**20,
        creation_writes=32,
        steady_window_s=120,
        steady_writes=0,
        load_1m=[2.0, 4.0, 9.0],
        creation_passes={"first": 4.0, "timer": 2.0, "Pod": 6.0},
    )
    stdout = "== scale\n" + figures.table() + "\n" + json_line(figures) + "\n"
    data = parse_json_line(stdout)
    assert all(key in data for key in REQUIRED)
    assert data["hollow"] is True
    assert data["sessions"] == 4
    assert data["ready"] == 4
    assert data["ready_p95_s"] == pytest.approx(5.85)
    assert data["plain_pod_p95_s"] == pytest.approx(5.08)
    assert data["operator_rss_mib"] == 100
    assert data["operator_cpu_ms_per_session"] == 50
    assert data["cpu_yardstick_ms"] == 20
    assert data["operator_cpu_yardsticks_per_session"] == 2.5
    assert data["writes_per_session"] == 8
    assert data["steady_writes_per_min"] == 0
    assert data["operator_rss_base_mib"] == 60
    assert data["operator_rss_kib_per_session"] == 10240  # (100 - 60) MiB / 4
    assert data["load_1m_mean"] == 5
    assert data["load_1m_max"] == 9
    assert data["passes_per_session"] == 3
    assert list(data["passes_per_session_by_cause"].items()) == [
        ("Pod", 1.5),
        ("first", 1),
        ("timer", 0.5),
    ]
    assert "operator passes per session: 3.0 (Pod 1.5, first 1.0, timer 0.5)" in stdout


def test_json_line_carries_nan_as_null() -> None:
    data = json.loads(json_line(ScaleFigures(sessions=3, rate=10, ready=0)))
    assert data["ready_p95_s"] is None
    assert data["steady_writes_per_min"] is None
    assert data["load_1m_max"] is None


def test_parse_json_line_refuses_non_object() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_json_line("table\n[1, 2]\n")
    with pytest.raises(ValueError, match="no output"):
        parse_json_line("\n")


def _at(verb: str, resource: str, received: str) -> audit.Entry:
    return audit.Entry(
        verb, resource, "labs", "x", "", "u", 200, "ResponseComplete", received, received=received
    )


def test_request_rates_from_audit_times() -> None:
    assert epoch("2026-12-05T05:00:01.500000Z") - epoch("2026-12-05T05:00:00Z") == 1.5
    assert math.isnan(epoch(""))
    entries = [
        _at("delete", "pods", "2026-12-05T05:00:00.100000Z"),
        _at("patch", "kernelsessions/status", "2026-12-05T05:00:00.900000Z"),
        _at("create", "events", "2026-12-05T05:00:01.000000Z"),
        _at("update", "leases", "2026-12-05T05:00:01.100000Z"),
        _at("watch", "pods", "2026-12-05T05:00:01.200000Z"),
    ]
    calls = api_calls(entries)
    assert [e.key for e in calls] == ["delete pods", "patch kernelsessions/status", "create events"]
    assert peak_rate(calls) == 2  # two in the second 05:00:00
    assert peak_rate(calls, bucket_s=2.0) == 1.5  # three in one 2-second window
    assert peak_rate([]) == 0
    since = epoch("2026-12-05T04:59:58Z")
    assert seconds_to_first(calls, since) == pytest.approx(2.1)
    assert math.isnan(seconds_to_first([], since))


def test_takeover_and_culling_figures_in_the_json_line() -> None:
    figures = ScaleFigures(
        sessions=10,
        rate=10,
        ready=10,
        takeover_first_write_s=12.5,
        takeover_writes_first_min=5,
        culled=10,
        cull_s=40.0,
        cull_requests=200,
        cull_writes=30,
        cull_peak_rps=20,
        cull_operator_cpu_s=30.0,
        cull_cpu={"kube-apiserver": 61.5, "python kernelsession-operator": 30.2},
        cull_by_kind={"delete pods": 10, "patch kernelsessions/status": 10},
    )
    data = parse_json_line(json_line(figures))
    assert data["takeover_first_decision_s"] == 12.5
    assert data["takeover_writes_per_session_first_min"] == 0.5
    assert data["culled"] == 10
    assert data["cull_requests_per_s_mean"] == 5
    assert data["cull_requests_per_s_peak"] == 20
    assert data["cull_writes_per_session"] == 3
    assert data["cull_operator_cpu_s"] == 30
    assert data["cull_operator_cores"] == 0.75
    assert list(data["cull_cpu_by_process_s"]) == [
        "kube-apiserver",
        "python kernelsession-operator",
    ]
    assert data["creation_cpu_by_process_s"] == {}
    assert data["api_qps"] is None
    assert data["cull_requests_by_kind"] == {"delete pods": 10, "patch kernelsessions/status": 10}
    table = figures.table()
    assert "takeover" in table
    assert "CPU s by process while culling:" in table
    assert "CPU s by process while creating" not in table
    assert any(line.split() == ["kube-apiserver", "61.5"] for line in table.splitlines())
    assert any(
        line.split() == ["patch", "kernelsessions/status", "1.00"] for line in table.splitlines()
    )


def test_hot_frames_counts_a_frame_once_per_sample_and_ranks_by_inclusive_share() -> None:
    collapsed = [
        "run (loop.py:1);handle (kopf.py:2);loads (json.py:3) 6",
        "run (loop.py:1);handle (kopf.py:2);handle (kopf.py:2) 2",  # recursion counts once
        "run (loop.py:1);send (http.py:4) 2",
        "not a stack line",
    ]
    hot = pyspy.hot_frames(collapsed, top=3)
    assert [h.frame for h in hot] == ["run (loop.py:1)", "handle (kopf.py:2)", "loads (json.py:3)"]
    assert hot[0].inclusive == 1.0
    assert hot[0].own == 0.0
    assert hot[1].inclusive == 0.8
    assert hot[1].own == 0.2
    assert hot[2].own == 0.6
    assert pyspy.hot_frames([]) == []


def test_sessions_not_culled_are_told_by_phase_and_reason() -> None:
    def session(name: str, phase: str, reason: str, message: str) -> dict[str, Any]:
        condition = {"type": "Ready", "status": "False", "reason": reason, "message": message}
        return {"metadata": {"name": name}, "status": {"phase": phase, "conditions": [condition]}}

    sessions = [
        session("a", "Culled", "IdleTimeout", "culled"),
        session("b", "Ready", "LabReady", "the lab answers"),
        session("c", "Ready", "LabReady", "the lab answers too"),
        session("d", "Starting", "LabStarting", "x" * 300),
        {"metadata": {"name": "e"}},
    ]
    notes = not_culled(sessions, culled={"a"})
    assert notes[0] == "not culled: 2 Ready/LabReady (the lab answers)"
    assert notes[1] == f"not culled: 1 Starting/LabStarting ({'x' * 120})"
    assert notes[2] == "not culled: 1 -/- ()"
    assert not_culled(sessions[:1], culled={"a"}) == []


def test_upgrade_figures_in_the_json_line_and_the_table() -> None:
    figures = ScaleFigures(
        sessions=100,
        rate=10,
        ready=100,
        upgrade_s=21.0,
        upgrade_recreate_s=9.5,
        upgrade_writes_by_kind={"create pods": 1, "patch kernelsessions/status": 3},
        upgrade_leader_cpu_s=4.0,
        upgrade_leader_rss_bytes=100 * 2**20,
    )
    data = parse_json_line(json_line(figures))
    assert data["upgrade_rollout_s"] == 21
    assert data["upgrade_first_decision_s"] == 9.5
    assert data["upgrade_writes_per_session"] == 0.04
    assert data["upgrade_lab_pods_deleted"] == 0
    assert data["upgrade_leader_cpu_ms_per_session"] == 40
    assert data["upgrade_leader_rss_mib"] == 100
    deleted = ScaleFigures(sessions=10, rate=1, ready=10, upgrade_writes_by_kind={"delete pods": 2})
    assert parse_json_line(json_line(deleted))["upgrade_lab_pods_deleted"] == 2
    assert "(0 lab pods deleted)" in figures.table()
