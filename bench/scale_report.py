"""The scale bench's figures (pure): percentiles, counting the operator's writes, the
table and the JSON line (``hollow``, ``sessions``, ``ready``, ``ready_p95_s``, ...)."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    operator_rss_peak_bytes: int = 0
    operator_rss_base_bytes: int = 0
    """The operator's RSS just before the sessions were created (its idle size)."""
    creation_writes: int = 0
    creation_reads: int = 0
    creation_by_kind: dict[str, int] = field(default_factory=dict)
    steady_window_s: float = 0.0
    steady_writes: int = 0
    steady_reads: int = 0
    delete_s: float = math.nan
    enforcer_rules: int = 0
    hollow_requests: int = 0
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
            "operator_rss_base_mib": _round(self.operator_rss_base_bytes / 2**20),
            "operator_rss_kib_per_session": _round(
                max(self.operator_rss_peak_bytes - self.operator_rss_base_bytes, 0) / 1024 / n
            ),
            "reads_per_session": _round(self.creation_reads / n),
            "creation_requests_by_kind": self.creation_by_kind,
            "steady_reads_per_min": _round(self.steady_reads / minutes),
            "delete_all_s": _round(self.delete_s),
            "enforcer_rules": self.enforcer_rules,
            "hollow_lab_requests": self.hollow_requests,
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
            f"scale (hollow: KWOK nodes, hollow lab), {self.sessions} sessions at {self.rate:g}/s",
            f"  sessions Ready {self.ready}/{self.sessions}; apply->Ready "
            f"p50 {s['p50']:.2f}s p95 {s['p95']:.2f}s p99 {s['p99']:.2f}s",
            f"  plain pods Ready {self.plain_ready}/{self.sessions}; create->Ready "
            f"p50 {p['p50']:.2f}s p95 {p['p95']:.2f}s p99 {p['p99']:.2f}s",
            f"  operator: {j['operator_cpu_ms_per_session']} ms CPU per session "
            f"({j['operator_cpu_s']} s), peak RSS {j['operator_rss_mib']} MiB (idle "
            f"{j['operator_rss_base_mib']} MiB, {j['operator_rss_kib_per_session']} KiB "
            "per session)",
            f"  API per session created: {j['writes_per_session']} writes, "
            f"{j['reads_per_session']} reads",
        ]
        rows += [
            f"    {k:<40} {v / max(self.sessions, 1):8.2f}"
            for k, v in self.creation_by_kind.items()
        ]
        rows += [
            f"  steady ({self.steady_window_s:.0f}s): {j['steady_writes_per_min']} writes/min, "
            f"{j['steady_reads_per_min']} reads/min",
            f"  delete all: {self.delete_s:.1f}s; NetworkPolicy enforcer rules "
            f"{self.enforcer_rules}; hollow lab requests {self.hollow_requests}",
            f"  host load (1 min) during the run: mean {j['load_1m_mean']}, max {j['load_1m_max']}",
            *(f"  note: {n}" for n in self.notes),
        ]
        return "\n".join(rows)


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
    "by_kind",
    "json_line",
    "operator_writes",
    "parse_json_line",
    "percentile",
    "spread",
]
