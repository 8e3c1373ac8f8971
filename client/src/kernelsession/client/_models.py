"""Data classes of the public API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CellResult",
    "CodeContext",
    "ExecutionResult",
    "NotebookResult",
    "OutputChunk",
    "SessionTimings",
]


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
    ``images`` holds ``(mime_type, bytes)`` decoded from their ``image/png`` and
    ``image/jpeg`` entries, in order.
    """

    msg_id: str
    stdout: str
    stderr: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    execution_count: int | None = None
    status: str = "ok"
    images: list[tuple[str, bytes]] = field(default_factory=list)

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


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """A piece of stream output as the kernel produced it (:meth:`JupyterLabSession.stream`).

    ``name`` is ``"stdout"`` or ``"stderr"``.
    """

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class CellResult:
    """One code cell of a notebook run: its id, 1-based position among all cells, output."""

    cell_id: str | None
    cell_number: int
    stdout: str
    seconds: float
    result: ExecutionResult = field(repr=False)


@dataclass(frozen=True, slots=True)
class NotebookResult:
    """A notebook run: every code cell's result in order, and the total seconds."""

    notebook: str
    cells: list[CellResult]
    seconds: float

    @property
    def stdout(self) -> str:
        """All code cells' stdout, concatenated in order."""
        return "".join(cell.stdout for cell in self.cells)
