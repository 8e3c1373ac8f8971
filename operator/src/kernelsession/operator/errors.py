"""The operator's own outcomes of a failed pass (kopf's exceptions are for kopf handlers)."""

from __future__ import annotations


class RetryLater(Exception):
    """A pass could not finish for a passing reason; try again after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    """The session cannot be reconciled until someone changes something; not retried
    until the session changes (or after a long back-off)."""


class SessionGone(Exception):
    """The session no longer exists (a deletion the watch did not deliver): forget it."""


class NotLeading(Exception):
    """This replica may not write: it does not hold the Lease (or could not renew it
    within the renew deadline). Raised before the request is sent."""
