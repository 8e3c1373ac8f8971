"""What a probe or notebook run produced: :class:`ProbeResult`, its error's type and
redacted form, the line printed per result, the ``notebook --json`` report. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .._errors import JupyterError, redact
from .._kubernetes import KernelSessionError, KernelSessionFailedError
from .._models import NotebookResult

__all__ = [
    "LAB_PHASES",
    "KubeconfigError",
    "ProbeResult",
    "UnexpectedOutputError",
    "error_dict",
    "error_type",
    "failure_reason",
    "format_result",
    "notebook_report",
]

#: Phases of a lab session, in order, as ``kernelsession_probe_seconds{phase=...}``.
LAB_PHASES = ("login", "session_create", "websocket_open", "execute")


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
