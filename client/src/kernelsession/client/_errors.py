"""The ``JupyterError`` family and the text helpers they use (ANSI stripping, redaction)."""

from __future__ import annotations

import dataclasses
import re
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ._models import CodeContext

__all__ = [
    "JupyterError",
    "JupyterExecutionError",
    "JupyterExecutionTimeoutError",
    "JupyterKernelDiedError",
    "JupyterNotFoundError",
    "JupyterOutputLostError",
    "JupyterTimeoutError",
    "JupyterUnsupportedError",
    "JupyterWebError",
    "JupyterWebSocketError",
    "redact",
    "strip_ansi",
]

REDACTED = "<redacted>"

_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_TOKEN_PARAM_RE = re.compile(r"(?i)((?:[?&;]|\b)(?:token|password|_xsrf)=)[^&\s;\"']+")
_AUTH_HEADER_RE = re.compile(r"(?i)(authorization:\s*(?:token|bearer)\s+)\S+")

_MAX_BODY = 2000


def strip_ansi(text: str) -> str:
    """Remove ANSI escape sequences (colours, cursor moves) from ``text``."""
    return _ANSI_RE.sub("", text)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every secret in ``text``, and any ``token=``/``password=`` value, by a marker."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _TOKEN_PARAM_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return _AUTH_HEADER_RE.sub(lambda m: m.group(1) + REDACTED, text)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def _redact_with(kwargs: dict[str, object], text: str) -> str:
    secrets = kwargs.get("secrets", ())
    return redact(text, secrets if isinstance(secrets, tuple | list) else ())


class JupyterError(Exception):
    """Base of every error this client raises.

    Attributes are safe to log: every string given to the constructor is passed
    through :func:`redact` with the ``secrets`` (the lab token) first.

    Attributes:
        message: What went wrong, one line.
        user: The lab's user name.
        started_at: When the failed operation started.
        failed_at: When it failed.
        context: Where the code came from, if code was running.
        code: The code that was running, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        user: str | None = None,
        started_at: datetime | None = None,
        failed_at: datetime | None = None,
        context: CodeContext | None = None,
        code: str | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        secrets = tuple(s for s in secrets if s)  # used here, never stored
        self.message = redact(message, secrets)
        self.user = user
        self.failed_at = failed_at or datetime.now(tz=UTC)
        self.started_at = started_at or self.failed_at
        self.context = context
        self._code_text = redact(code, secrets) if code is not None else None
        super().__init__(self.message)

    @property
    def code(self) -> str | None:
        """The code that was running, if any (redacted)."""
        return self._code_text

    def _details(self) -> list[tuple[str, str]]:
        """Extra ``(label, value)`` lines of subclasses, shown by ``str()``."""
        return []

    def _fields(self) -> dict[str, Any]:
        """Extra fields of subclasses for :meth:`to_dict`."""
        return {}

    def _traceback_text(self) -> str | None:
        if self.__traceback__ is None:
            return None
        # Not the chained exceptions: their texts were not redacted with the token.
        text = "".join(
            traceback.format_exception(type(self), self, self.__traceback__, chain=False)
        )
        return redact(text)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready, redacted form for alerting and structured logs.

        Keys: ``type``, ``message``, ``user``, ``code`` (the code that ran),
        ``context`` (dict or ``None``), ``started_at`` and ``failed_at`` (ISO 8601),
        ``traceback`` (the kernel's traceback without colours for execution errors,
        else where the client raised it, or ``None``), then the subclass's fields.
        Every string was redacted when the error was made: the token never appears.
        """
        return {
            "type": type(self).__name__,
            "message": self.message,
            "user": self.user,
            "code": self._code_text,
            "context": dataclasses.asdict(self.context) if self.context is not None else None,
            "started_at": self.started_at.isoformat(),
            "failed_at": self.failed_at.isoformat(),
            "traceback": self._traceback_text(),
            **self._fields(),
        }

    def __str__(self) -> str:
        lines = [f"{type(self).__name__}: {self.message}"]
        if self.user is not None:
            lines.append(f"  user: {self.user}")
        lines.append(f"  started: {self.started_at.isoformat()}")
        lines.append(f"  failed: {self.failed_at.isoformat()}")
        if self.context is not None and self.context.describe():
            lines.append(f"  context: {self.context.describe()}")
        for label, value in self._details():
            if "\n" in value:
                lines.append(f"  {label}:")
                lines.append(_indent(value))
            else:
                lines.append(f"  {label}: {value}")
        if self._code_text is not None:
            lines.append("  code:")
            lines.append(_indent(self._code_text) if self._code_text.strip() else "    (empty)")
        return "\n".join(lines)


class JupyterWebError(JupyterError):
    """An HTTP request to the lab failed (login, session create/delete, interrupt).

    Attributes:
        method: HTTP method.
        url: Request URL, token redacted.
        status: HTTP status, or ``None`` when no response came (connection error).
        body: Start of the response body, token redacted.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str,
        url: str,
        status: int | None = None,
        body: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.method = method
        self.url = _redact_with(kwargs, url)
        self.status = status
        self.body = _redact_with(kwargs, body[:_MAX_BODY]) if body is not None else None

    def _fields(self) -> dict[str, Any]:
        return {"method": self.method, "url": self.url, "status": self.status, "body": self.body}

    def _details(self) -> list[tuple[str, str]]:
        details = [("request", f"{self.method} {self.url}")]
        if self.status is not None:
            details.append(("status", str(self.status)))
        if self.body:
            details.append(("body", self.body.strip()))
        return details


class JupyterWebSocketError(JupyterError):
    """The kernel websocket could not be opened, or closed or broke while in use.

    Attributes:
        code: Websocket close code if one was received or sent (1006: abnormal
            closure, e.g. the server died; 1009: a message was larger than
            ``max_websocket_size``). The code that was running, if any, is
            ``running_code``.
        reason: Close reason given by the peer, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        close_code: int | None = None,
        reason: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.close_code = close_code
        self.reason = _redact_with(kwargs, reason) if reason else reason

    @property
    def code(self) -> int | None:  # type: ignore[override]
        """The websocket close code, if any."""
        return self.close_code

    @property
    def running_code(self) -> str | None:
        """The code that was running when the websocket broke, if any."""
        return self._code_text

    def _fields(self) -> dict[str, Any]:
        return {"close_code": self.close_code, "reason": self.reason}

    def _details(self) -> list[tuple[str, str]]:
        details = []
        if self.close_code is not None:
            details.append(("close code", str(self.close_code)))
        if self.reason:
            details.append(("close reason", self.reason))
        return details


class JupyterTimeoutError(JupyterError):
    """Opening the lab session (kernel websocket and first kernel reply) took too long."""


class JupyterExecutionError(JupyterError):
    """The code raised an exception in the kernel (or the kernel aborted the request).

    Attributes:
        error: The traceback text as the kernel sent it (may hold ANSI colours;
            ``str()`` strips them).
        ename: Exception class name, e.g. ``"ZeroDivisionError"``.
        evalue: Exception value.
        status: The ``execute_reply`` status (``"error"`` or ``"aborted"``).
    """

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        ename: str | None = None,
        evalue: str | None = None,
        status: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.error = _redact_with(kwargs, error) if error is not None else None
        self.ename = ename
        self.evalue = _redact_with(kwargs, evalue) if evalue is not None else None
        self.status = status

    def _traceback_text(self) -> str | None:
        return strip_ansi(self.error) if self.error is not None else super()._traceback_text()

    def _fields(self) -> dict[str, Any]:
        return {"ename": self.ename, "evalue": self.evalue, "status": self.status}

    def _details(self) -> list[tuple[str, str]]:
        details = []
        if self.status is not None:
            details.append(("status", self.status))
        if self.error:
            details.append(("error", strip_ansi(self.error)))
        return details


class JupyterExecutionTimeoutError(JupyterError):
    """The code ran longer than its timeout.

    The kernel was interrupted and the interrupted request's messages drained,
    so the session can run more code.

    Attributes:
        timeout: The timeout in seconds.
        interrupted: Whether the interrupt was delivered and the kernel went idle.
    """

    def __init__(
        self, message: str, *, timeout: float, interrupted: bool, **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.timeout = timeout
        self.interrupted = interrupted

    def _fields(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "interrupted": self.interrupted}

    def _details(self) -> list[tuple[str, str]]:
        return [
            ("timeout", f"{self.timeout:g} s"),
            ("kernel interrupted", "yes" if self.interrupted else "no"),
        ]


class JupyterKernelDiedError(JupyterError):
    """The kernel died (or was restarted) while the code ran.

    Attributes:
        execution_state: The kernel state reported (``"restarting"``, ``"dead"``...).
    """

    def __init__(self, message: str, *, execution_state: str | None = None, **kwargs: object):
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.execution_state = execution_state

    def _fields(self) -> dict[str, Any]:
        return {"execution_state": self.execution_state}

    def _details(self) -> list[tuple[str, str]]:
        if self.execution_state is None:
            return []
        return [("kernel state", self.execution_state)]


class JupyterOutputLostError(JupyterError):
    """The server dropped some of the output (its IOPub data or message rate limit).

    The code ran, but what it printed did not all arrive: rather than return a
    silently shortened result, this is raised. ``partial_stdout`` holds what
    did arrive; ``notice`` the server's message.
    """

    def __init__(self, message: str, *, notice: str, partial_stdout: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.notice = _redact_with(kwargs, notice)
        self.partial_stdout = partial_stdout

    def _fields(self) -> dict[str, Any]:
        return {"notice": self.notice, "partial_stdout_chars": len(self.partial_stdout)}

    def _details(self) -> list[tuple[str, str]]:
        return [
            ("server notice", self.notice.strip()),
            ("stdout received", f"{len(self.partial_stdout)} characters"),
        ]


class JupyterNotFoundError(JupyterWebError):
    """A remote path (file or directory in the lab's contents API) does not exist.

    Attributes:
        path: The remote path asked for.
    """

    def __init__(self, message: str, *, path: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.path = path

    def _fields(self) -> dict[str, Any]:
        return {**super()._fields(), "path": self.path}


class JupyterUnsupportedError(JupyterError):
    """The server does not offer what was asked (e.g. Kernel Gateway has no contents API).

    Attributes:
        feature: What is missing, e.g. ``"contents API"``.
    """

    def __init__(self, message: str, *, feature: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.feature = feature

    def _fields(self) -> dict[str, Any]:
        return {"feature": self.feature}

    def _details(self) -> list[tuple[str, str]]:
        return [("missing", self.feature)]
