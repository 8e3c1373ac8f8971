"""Data classes of the public API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CodeContext", "ExecutionResult", "SessionTimings"]


@dataclass(frozen=True, slots=True)
class CodeContext:
    """Where code came from, carried by errors to say what failed.

    All fields are optional; monkeys running notebooks fill in the notebook and
    cell, health checks usually leave them empty.
    """

    node: str | None = None
    image: str | None = None
    notebook: str | None = None
    cell: str | None = None
    cell_number: str | None = None

    def describe(self) -> str:
        """Return the set fields as ``key=value`` pairs, or an empty string."""
        parts = [
            f"{name}={value}"
            for name, value in (
                ("node", self.node),
                ("image", self.image),
                ("notebook", self.notebook),
                ("cell", self.cell),
                ("cell_number", self.cell_number),
            )
            if value is not None
        ]
        return ", ".join(parts)


@dataclass(slots=True)
class ExecutionResult:
    """Everything an execution produced, for callers that want more than stdout.

    ``stdout`` and ``stderr`` are the concatenated stream text in arrival order.
    ``outputs`` holds the ``content`` of each ``execute_result`` and
    ``display_data`` message in order (their ``data`` dicts are MIME bundles).
    """

    msg_id: str
    stdout: str
    stderr: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    execution_count: int | None = None
    status: str = "ok"

    @property
    def result(self) -> dict[str, Any] | None:
        """The ``execute_result`` MIME bundle (the value of the last expression), if any."""
        for output in reversed(self.outputs):
            if "execution_count" in output:
                data: dict[str, Any] = output.get("data", {})
                return data
        return None


@dataclass(slots=True)
class SessionTimings:
    """Seconds spent in each phase of a lab session's life (``None``: not reached)."""

    login: float | None = None
    session_create: float | None = None
    websocket_open: float | None = None
    cleanup: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        """Return the phases as a plain dict (for JSON)."""
        return {
            "login": self.login,
            "session_create": self.session_create,
            "websocket_open": self.websocket_open,
            "cleanup": self.cleanup,
        }
