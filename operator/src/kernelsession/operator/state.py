"""What the operator remembers about one session, in one object: forgetting a session is
one ``pop`` (:meth:`Sessions.pop`).

Nothing here is the truth about a session (the API server is); it is what lets a pass
avoid repeating itself: the newest body seen, the token read once, children created but
not yet shown by the watch, a pod the API server refused, whether CullingSoon was posted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]


@dataclass
class TokenRecord:
    uid: str
    token: str
    checked: float
    unused: bool = False
    """Created by this process and no pod made with it yet: its first pod needs no
    re-read of the Secret (the create's answer is as fresh as a read)."""

    def __repr__(self) -> str:  # never print the token
        return f"TokenRecord(uid={self.uid!r}, checked={self.checked})"


@dataclass
class HomeCheck:
    """The last look at a home volume that was not bound: its storage class and events."""

    checked: float
    class_name: str | None
    binding_mode: str | None
    """The class's volumeBindingMode; None when the class does not exist (or none is set)."""
    class_exists: bool
    event: str | None


@dataclass
class PolicyRecord:
    """The last look at the session's policy: the namespace's ConfigMap and the lookups
    its references needed, for the spec of ``generation``."""

    checked: float
    generation: int
    view: Any
    """An ``observe.PolicyView``."""


@dataclass
class SessionState:
    key: Key
    body: dict[str, Any]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    token: TokenRecord | None = None
    token_create_tried: bool = False
    """This process asked for the token Secret to be created (once is enough to know that
    a new session's Secret may exist: see ``observe._token``)."""
    created: dict[str, float] = field(default_factory=dict)
    """Children this process created, by name (monotonic time): the watch may lag."""
    rejected: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Children the API server refused, by name: (message, monotonic time)."""
    warned: bool = False
    phase: str | None = None
    home: HomeCheck | None = None
    rolling_out: bool = False
    """The rollout policy replaced this lab and its new pod is not Ready yet."""
    policy: PolicyRecord | None = None
    token_readers: tuple[str, ...] | None = None
    """The users the token-reader RoleBinding names (None: not made by this process)."""
    status_written: float | None = None
    """When this process last wrote the status (monotonic time)."""
    first_pass: float | None = None
    """When this process first looked at the session in a pass (monotonic time)."""
    woken_by: str | None = None
    """What first woke the loop since its last pass began (``kernelsession_passes``'s
    cause: the session's own event, or the kind of the child or object that changed)."""

    def wake_for(self, cause: str) -> None:
        """Wake the loop for ``cause`` (the first cause since the last pass is kept)."""
        if not self.wake.is_set():
            self.woken_by = cause
        self.wake.set()

    def begin_pass(self) -> None:
        """A pass over the session begins (it holds a pass slot): remember the first."""
        if self.first_pass is None:
            self.first_pass = time.monotonic()

    def acting_age(self) -> float:
        """Seconds since this process's first pass over the session (0 before it)."""
        return 0.0 if self.first_pass is None else time.monotonic() - self.first_pass

    def status_age(self) -> float | None:
        """Seconds since this process last wrote the status (None: never)."""
        if self.status_written is None:
            return None
        return time.monotonic() - self.status_written

    def remember(self, body: dict[str, Any]) -> None:
        """Keep the newest known state (watch events and our own writes race)."""
        if _version(body) >= _version(self.body):
            self.body = lean(body)

    def recently_created(self, name: str, within: float) -> bool:
        when = self.created.get(name)
        return when is not None and time.monotonic() - when < within

    def note_created(self, name: str) -> None:
        self.created[name] = time.monotonic()

    def seen(self, name: str) -> None:
        """The watch shows child ``name``: stop remembering that we created it."""
        self.created.pop(name, None)

    def own_echo(self, name: str, event: str | None) -> bool:
        """Whether a watch event is the first sight of child ``name`` that this process
        created (``ADDED``): its create's answer told the pass as much, so it wakes no
        pass.

        The child stays remembered as created: only a pass's own observation marks it
        seen (:meth:`seen`, from the indexes it reads). A pass that observed before the
        echo and acts after it would otherwise make the child again (a refused create:
        at N = 3,000, 2,376 of them when this echo forgot it)."""
        return event == "ADDED" and name in self.created

    def recent_rejections(self, within: float) -> dict[str, str]:
        now = time.monotonic()
        return {n: msg for n, (msg, when) in self.rejected.items() if now - when < within}

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None


class Sessions:
    """Every session this replica knows, by (namespace, name)."""

    def __init__(self) -> None:
        self._by_key: dict[Key, SessionState] = {}

    def remember(self, key: Key, body: dict[str, Any]) -> SessionState:
        state = self._by_key.get(key)
        if state is not None and _uid(body) != _uid(state.body):
            # deleted and created again under the same name (the DELETED event was
            # missed in a watch gap): nothing remembered about the old one applies
            state.stop()
            state = None
        if state is None:
            state = self._by_key[key] = SessionState(key, lean(body))
        else:
            state.remember(body)
        return state

    def is_news(self, key: Key, body: dict[str, Any]) -> bool:
        """Whether ``body`` tells this replica anything: a session it does not know (or
        another one of that name), or a newer resourceVersion. The watch's echo of this
        process's own status write is not news: the write's answer was remembered (with
        its resourceVersion) when it was made, so it wakes no pass."""
        state = self._by_key.get(key)
        if state is None or _uid(body) != _uid(state.body):
            return True
        version = _version(body)
        return version < 0 or version > _version(state.body)

    def get(self, key: Key) -> SessionState | None:
        return self._by_key.get(key)

    def pop(self, key: Key, uid: str | None = None) -> None:
        """Forget the session: stop its loop and drop everything remembered about it
        (only when it is the session with ``uid``, when given)."""
        state = self._by_key.get(key)
        if state is None or (uid is not None and _uid(state.body) not in (None, uid)):
            return
        del self._by_key[key]
        state.stop()

    def keys(self) -> list[Key]:
        return list(self._by_key)

    def in_namespace(self, namespace: str) -> list[SessionState]:
        return [s for s in self._by_key.values() if s.key[0] == namespace]

    def phases(self) -> list[str]:
        return [s.phase for s in self._by_key.values() if s.phase and s.running]

    def __iter__(self) -> Iterator[SessionState]:
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)


def lean(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without ``metadata.managedFields``, which the operator never reads: a
    session remembered by thousands is held without the API server's field bookkeeping."""
    meta = body.get("metadata")
    if not isinstance(meta, dict) or "managedFields" not in meta:
        return body
    return {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def _uid(body: dict[str, Any]) -> str | None:
    uid = body.get("metadata", {}).get("uid")
    return str(uid) if uid else None


def _version(body: dict[str, Any]) -> int:
    """resourceVersion as a number: one etcd's revisions only grow (-1 when opaque)."""
    try:
        return int(body.get("metadata", {}).get("resourceVersion", -1))
    except (TypeError, ValueError):
        return -1
