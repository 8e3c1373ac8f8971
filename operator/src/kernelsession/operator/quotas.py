"""What a ResourceQuota refusal means for a session (pure): ``Pending``/``QuotaExceeded``
naming the quota and the resource, rather than a failure of the spec."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kernelsession.client.resources import Reason

QUOTA_EXCEEDED = Reason.QUOTA_EXCEEDED
_EXCEEDED = re.compile(
    r"exceeded quota: (?P<quota>[^,\s]+), requested: (?P<requested>.*?), "
    r"used: (?P<used>.*?), limited: (?P<limited>[^\s]*)"
)
_UNSPECIFIED = re.compile(r"failed quota: (?P<quota>[^:\s]+): must specify (?P<what>.+)")


@dataclass(frozen=True)
class QuotaRefusal:
    quota: str
    resources: tuple[str, ...]
    detail: str


def quota_refusal(message: str) -> QuotaRefusal | None:
    """The quota and resources an API server refusal names; None when it is not one."""
    found = _EXCEEDED.search(message)
    if found:
        resources = tuple(term.partition("=")[0] for term in found["requested"].split(",") if term)
        detail = f"asks for {found['requested']} with {found['used']} used of {found['limited']}"
        return QuotaRefusal(found["quota"], resources, detail)
    found = _UNSPECIFIED.search(message)
    if found:
        resources = tuple(
            sorted({m for m in re.findall(r"([a-z.]+\.(?:cpu|memory))", found["what"])})
        )
        return QuotaRefusal(found["quota"], resources, f"must specify {found['what'].strip()}")
    return None


def quota_message(what: str, refusal: QuotaRefusal) -> str:
    """Words a user can act on (the lab is retried while it waits)."""
    return (
        f"The ResourceQuota {refusal.quota} refuses the {what} "
        f"({', '.join(refusal.resources) or 'resources'}): it {refusal.detail}. "
        "Stop or suspend another lab, ask for less, or ask an admin for more quota; "
        "the operator tries again."
    )
