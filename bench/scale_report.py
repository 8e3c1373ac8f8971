"""The scale bench's figures (pure): percentiles, counting the operator's writes, the
table and the JSON line (``hollow``, ``sessions``, ``ready``, ``ready_p95_s``, ...)."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.yardstick import in_yardsticks
from kernelsession.localcluster.cluster import audit


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks
    (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 of ``values``."""
    return {f"p{q}": percentile(values, q) for q in (50, 95, 99)}


def operator_writes(entries: Iterable[audit.Entry]) -> list[audit.Entry]:
    """The writes the contract counts: successful mutating requests other than on the
    operator's Lease (events included)."""
    return [
        e
        for e in entries
        if e.write and e.code is not None and 200 <= e.code < 300 and e.resource != "leases"
    ]


def epoch(stamp: str) -> float:
    """Seconds since the epoch of an audit timestamp (RFC 3339, ``Z``); NaN for ""."""
    if not stamp:
        return math.nan
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def api_calls(entries: Iterable[audit.Entry]) -> list[audit.Entry]:
    """What counts against a client's request rate: every request but watches and those
    on the operator's Lease (the election's own, never held back)."""
    return [e for e in entries if e.verb != "watch" and e.resource != "leases"]


def peak_rate(entries: Iterable[audit.Entry], bucket_s: float = 1.0) -> float:
    """The most requests received in one ``bucket_s`` window (aligned on the epoch), per
    second; 0 for none."""
    buckets = Counter(
        math.floor(t / bucket_s)
        for t in (epoch(e.received or e.time) for e in entries)
        if not math.isnan(t)
    )
    return max(buckets.values(), default=0) / bucket_s


def seconds_to_first(entries: Iterable[audit.Entry], since: float) -> float:
    """Seconds from ``since`` (epoch) to the first of ``entries`` received; NaN for none."""
    stamps = [epoch(e.received or e.time) for e in entries]
    stamps = [t for t in stamps if not math.isnan(t)]
    return min(stamps) - since if stamps else math.nan


def by_kind(entries: Iterable[audit.Entry]) -> dict[str, int]:
    """Requests per ``"VERB RESOURCE"``, most first."""
    counts = Counter(e.key for e in entries)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass
class ScaleFigures:
    """Everything the scale section measured in one run."""

    sessions: int
    rate: float
    ready: int
    session_ready_s: list[float] = field(default_factory=list)
    plain_ready: int = 0
    plain_ready_s: list[float] = field(default_factory=list)
    operator_cpu_s: float = 0.0
    yardstick_ms: float = math.nan
    """The CPU yardstick (:mod:`bench.yardstick`) measured in this run: the operator's CPU
    per session is also given in yardsticks, comparable between machines."""
    operator_rss_peak_bytes: int = 0
    operator_rss_base_bytes: int = 0
    """The operator's RSS just before the sessions were created (its idle size)."""
    creation_writes: int = 0
    creation_reads: int = 0
    creation_by_kind: dict[str, int] = field(default_factory=dict)
    creation_passes: dict[str, float] = field(default_factory=dict)
    """The operator's passes while the sessions were created, by what began them
    (``kernelsession_passes{cause}``)."""
    steady_window_s: float = 0.0
    steady_writes: int = 0
    steady_reads: int = 0
    delete_s: float = math.nan
    enforcer_rules: int = 0
    hollow_requests: int = 0
    takeover_first_write_s: float = math.nan
    """From SIGKILL of the leader to the first write of the next leader (its first
    decision: one lab pod deleted at the kill is recreated)."""
    takeover_recreate_s: float = math.nan
    """From the kill to the deleted lab pod existing again."""
    takeover_writes_first_min: int = 0
    takeover_leader: str = ""
    upgrade_s: float = math.nan
    """A change to the operator's pod template rolled out, until its Deployment was
    available."""
    upgrade_recreate_s: float = math.nan
    """From the rollout's end to a lab pod deleted then existing again (the new leader's
    first decision, after it listed everything cold)."""
    upgrade_writes_by_kind: dict[str, int] = field(default_factory=dict)
    """The operator's writes from the restart to a minute after the rollout, per
    ``"VERB RESOURCE"`` (the deleted pod's re-creation included)."""
    upgrade_leader_cpu_s: float = math.nan
    """The new leader's CPU seconds from its start to a minute after the rollout."""
    upgrade_leader_rss_bytes: int = 0
    """The new leader's RSS a minute after the rollout."""
    culled: int = 0
    cull_s: float = math.nan
    """From the labs becoming cullable (their idle timeout after every kernel stopped at
    once) to the last session Culled."""
    cull_first_s: float = math.nan
    """From the labs becoming cullable to the first session Culled (never negative)."""
    cull_idle_timeout_s: float = math.nan
    cull_requests: int = 0
    cull_writes: int = 0
    cull_peak_rps: float = 0.0
    creation_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds by process (the largest) while the sessions were created."""
    cull_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds by process (the largest) from the labs becoming cullable to the last
    cull: what the host's cores went to."""
    cull_operator_cpu_s: float = math.nan
    """The active operator's CPU seconds from the labs becoming cullable to the last cull
    (divided by that time: how many cores it used; about 1 means the operator's one
    Python thread, not the API budget, set the pace)."""
    cull_by_kind: dict[str, int] = field(default_factory=dict)
    """The operator's requests while culling, per ``"VERB RESOURCE"``."""
    api_qps: float = math.nan
    """The operator's configured API rate (``KERNELSESSION_API_QPS``), when it has one."""
    namespace: str = ""
    """Where the sessions ran: ``labs`` (shared) or a LabProfile's namespace."""
    load_1m: list[float] = field(default_factory=list)
    """The host's 1-minute load average, sampled through the run."""
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The contract's JSON object (the required keys first, then the details)."""
        n = max(self.sessions, 1)
        s = spread(self.session_ready_s)
        p = spread(self.plain_ready_s)
        minutes = self.steady_window_s / 60 if self.steady_window_s else math.nan
        out: dict[str, Any] = {
            "hollow": True,
            "sessions": self.sessions,
            "ready": self.ready,
            "ready_p95_s": _round(s["p95"]),
            "plain_pod_p95_s": _round(p["p95"]),
            "operator_rss_mib": _round(self.operator_rss_peak_bytes / 2**20),
            "operator_cpu_ms_per_session": _round(self.operator_cpu_s * 1000 / n),
            "writes_per_session": _round(self.creation_writes / n),
            "steady_writes_per_min": _round(self.steady_writes / minutes),
            "rate_per_s": self.rate,
            "ready_p50_s": _round(s["p50"]),
            "ready_p99_s": _round(s["p99"]),
            "plain_pods_ready": self.plain_ready,
            "plain_pod_p50_s": _round(p["p50"]),
            "plain_pod_p99_s": _round(p["p99"]),
            "operator_cpu_s": _round(self.operator_cpu_s),
            "cpu_yardstick_ms": _round(self.yardstick_ms),
            "operator_cpu_yardsticks_per_session": _round(
                in_yardsticks(self.operator_cpu_s * 1000 / n, self.yardstick_ms)
            ),
            "operator_rss_base_mib": _round(self.operator_rss_base_bytes / 2**20),
            "operator_rss_kib_per_session": _round(
                max(self.operator_rss_peak_bytes - self.operator_rss_base_bytes, 0) / 1024 / n
            ),
            "reads_per_session": _round(self.creation_reads / n),
            "creation_cpu_by_process_s": self.creation_cpu,
            "creation_requests_by_kind": self.creation_by_kind,
            "passes_per_session": _round(sum(self.creation_passes.values()) / n),
            "passes_per_session_by_cause": {
                cause: _round(count / n)
                for cause, count in sorted(self.creation_passes.items(), key=lambda c: -c[1])
            },
            "steady_reads_per_min": _round(self.steady_reads / minutes),
            "delete_all_s": _round(self.delete_s),
            "enforcer_rules": self.enforcer_rules,
            "hollow_lab_requests": self.hollow_requests,
            "takeover_first_decision_s": _round(self.takeover_first_write_s),
            "takeover_recreate_s": _round(self.takeover_recreate_s),
            "takeover_writes_per_session_first_min": _round(self.takeover_writes_first_min / n),
            "takeover_leader": self.takeover_leader,
            "upgrade_rollout_s": _round(self.upgrade_s),
            "upgrade_first_decision_s": _round(self.upgrade_recreate_s),
            "upgrade_writes_per_session": _round(sum(self.upgrade_writes_by_kind.values()) / n),
            "upgrade_lab_pods_deleted": self.upgrade_writes_by_kind.get("delete pods", 0),
            "upgrade_writes_by_kind": self.upgrade_writes_by_kind,
            "upgrade_leader_cpu_s": _round(self.upgrade_leader_cpu_s),
            "upgrade_leader_cpu_ms_per_session": _round(self.upgrade_leader_cpu_s * 1000 / n),
            "upgrade_leader_rss_mib": _round(self.upgrade_leader_rss_bytes / 2**20),
            "culled": self.culled,
            "cull_all_s": _round(self.cull_s),
            "cull_first_s": _round(self.cull_first_s),
            "cull_idle_timeout_s": _round(self.cull_idle_timeout_s),
            "cull_requests_per_s_peak": _round(self.cull_peak_rps),
            "cull_requests_per_s_mean": _round(
                self.cull_requests / self.cull_s if self.cull_s > 0 else math.nan
            ),
            "cull_writes_per_session": _round(self.cull_writes / n),
            "cull_operator_cpu_s": _round(self.cull_operator_cpu_s),
            "cull_cpu_by_process_s": self.cull_cpu,
            "cull_operator_cores": _round(
                self.cull_operator_cpu_s / self.cull_s if self.cull_s > 0 else math.nan
            ),
            "cull_requests_by_kind": self.cull_by_kind,
            "api_qps": _round(self.api_qps),
            "namespace": self.namespace,
            "load_1m_mean": _round(statistics.fmean(self.load_1m) if self.load_1m else math.nan),
            "load_1m_max": _round(max(self.load_1m, default=math.nan)),
            "notes": self.notes,
        }
        return out

    def table(self) -> str:
        """The human-readable table (goes to the docs)."""
        j = self.as_json()
        s, p = spread(self.session_ready_s), spread(self.plain_ready_s)
        rows = [
            f"scale (hollow: KWOK nodes, hollow lab), {self.sessions} sessions at {self.rate:g}/s "
            f"in namespace {self.namespace or '?'}",
            f"  sessions Ready {self.ready}/{self.sessions}; apply->Ready "
            f"p50 {s['p50']:.2f}s p95 {s['p95']:.2f}s p99 {s['p99']:.2f}s",
            f"  plain pods Ready {self.plain_ready}/{self.sessions}; create->Ready "
            f"p50 {p['p50']:.2f}s p95 {p['p95']:.2f}s p99 {p['p99']:.2f}s",
            f"  operator: {j['operator_cpu_ms_per_session']} ms CPU per session "
            f"({j['operator_cpu_s']} s; {j['operator_cpu_yardsticks_per_session']} CPU "
            f"yardsticks of {j['cpu_yardstick_ms']} ms), "
            f"peak RSS {j['operator_rss_mib']} MiB (idle "
            f"{j['operator_rss_base_mib']} MiB, {j['operator_rss_kib_per_session']} KiB "
            "per session)",
            f"  API per session created: {j['writes_per_session']} writes, "
            f"{j['reads_per_session']} reads",
        ]
        rows += [
            f"    {k:<40} {v / max(self.sessions, 1):8.2f}"
            for k, v in self.creation_by_kind.items()
        ]
        rows.append(
            f"  operator passes per session: {j['passes_per_session']} ("
            + ", ".join(f"{c} {v}" for c, v in j["passes_per_session_by_cause"].items())
            + ")"
        )
        rows += [
            f"  steady ({self.steady_window_s:.0f}s): {j['steady_writes_per_min']} writes/min, "
            f"{j['steady_reads_per_min']} reads/min",
            f"  delete all: {self.delete_s:.1f}s; NetworkPolicy enforcer rules "
            f"{self.enforcer_rules}; hollow lab requests {self.hollow_requests}",
            f"  takeover (leader SIGKILLed, one lab pod deleted): first decision after "
            f"{j['takeover_first_decision_s']}s, pod back after {j['takeover_recreate_s']}s, "
            f"{j['takeover_writes_per_session_first_min']} writes per session in the first "
            f"minute (new leader {self.takeover_leader or '?'})",
            f"  upgrade (pod template changed and rolled out, one lab pod deleted): rollout "
            f"{j['upgrade_rollout_s']}s, pod back {j['upgrade_first_decision_s']}s after it; "
            f"{j['upgrade_writes_per_session']} writes per session to a minute after "
            f"({j['upgrade_lab_pods_deleted']} lab pods deleted); new leader "
            f"{j['upgrade_leader_cpu_s']} CPU s ({j['upgrade_leader_cpu_ms_per_session']} ms "
            f"per session), RSS {j['upgrade_leader_rss_mib']} MiB",
            f"  culling (all kernels stopped at once, cullable {j['cull_idle_timeout_s']}s "
            f"later): {self.culled}/{self.sessions} culled, the first {j['cull_first_s']}s "
            f"and the last {j['cull_all_s']}s after that; "
            f"requests/s peak {j['cull_requests_per_s_peak']} mean "
            f"{j['cull_requests_per_s_mean']} (API QPS setting {j['api_qps']}); "
            f"{j['cull_writes_per_session']} writes per session; operator CPU "
            f"{j['cull_operator_cpu_s']} s ({j['cull_operator_cores']} cores)",
        ]
        rows += [
            f"    {k:<40} {v / max(self.sessions, 1):8.2f}" for k, v in self.cull_by_kind.items()
        ]
        rows += _cpu_rows("CPU s by process while creating", self.creation_cpu)
        rows += _cpu_rows("CPU s by process while culling", self.cull_cpu)
        rows += [
            f"  host load (1 min) during the run: mean {j['load_1m_mean']}, max {j['load_1m_max']}",
            *(f"  note: {n}" for n in self.notes),
        ]
        return "\n".join(rows)


def not_culled(sessions: Iterable[Mapping[str, Any]], culled: set[str]) -> list[str]:
    """Notes on the sessions not seen ``Culled``: how many stand in each phase and reason,
    with one message of each (their status as the API server has it). Pure."""
    groups: Counter[tuple[str, str]] = Counter()
    messages: dict[tuple[str, str], str] = {}
    for session in sessions:
        if session["metadata"]["name"] in culled:
            continue
        status = session.get("status") or {}
        conditions = status.get("conditions") or []
        ready: Mapping[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        key = (str(status.get("phase") or "-"), str(ready.get("reason") or "-"))
        groups[key] += 1
        messages.setdefault(key, str(ready.get("message") or "")[:120])
    return [
        f"not culled: {count} {phase}/{reason} ({messages[(phase, reason)]})"
        for (phase, reason), count in groups.most_common()
    ]


def _cpu_rows(title: str, cpu: dict[str, float]) -> list[str]:
    if not cpu:
        return []
    return [f"  {title}:", *(f"    {label:<50} {seconds:8.1f}" for label, seconds in cpu.items())]


def _round(value: float) -> float | None:
    """Rounded for the JSON line; None (null) for NaN, which JSON cannot carry."""
    return None if math.isnan(value) else round(value, 3)


def json_line(figures: ScaleFigures) -> str:
    """The last stdout line under ``--json``."""
    return json.dumps(figures.as_json(), sort_keys=False, separators=(",", ":"))


def parse_json_line(stdout: str) -> dict[str, Any]:
    """The JSON object on the last non-empty line of a bench's stdout.

    Raises:
        ValueError: no line, or the last line is not a JSON object.
    """
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("no output")
    value = json.loads(lines[-1])
    if not isinstance(value, dict):
        raise ValueError("the last line is not a JSON object")
    return value


__all__ = [
    "ScaleFigures",
    "api_calls",
    "by_kind",
    "epoch",
    "json_line",
    "not_culled",
    "operator_writes",
    "parse_json_line",
    "peak_rate",
    "percentile",
    "seconds_to_first",
    "spread",
]
