"""No change detection: the operator has no kopf changing handlers, so nothing to diff.

kopf (1.45) builds, clears and diffs every object's "essence" on every watch event, for
``on.create``/``on.update``/``on.delete`` handlers: a deep copy of the whole body each
time, whether or not such handlers exist. The operator has none (``on.event`` and
indexes only: no finalizer, no annotation written), and at 3,000 sessions that copy was
6% of its interpreter time (a py-spy recording of ``make bench BENCH_ARGS="scale
--py-spy FILE"``). :class:`NoDiffBase` keeps no diff base: every event's essence is
empty, and nothing is stored on the object.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff base storage for an operator without changing handlers."""

    def build(
        self,
        *,
        body: kopf.Body,
        extra_fields: Iterable[Any] | None = None,
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def changing_handlers(registry: kopf.OperatorRegistry) -> list[str]:
    """The ids of ``registry``'s changing handlers (with :class:`NoDiffBase` there must be
    none: they would never see a change)."""
    return [str(h.id) for h in registry._changing.get_all_handlers()]
