"""The library's default logger: silent unless the application configures logging.

Log events go to the standard library logger ``kernelsession.client`` (which has
a ``NullHandler``, as libraries should), through structlog's stdlib wrapper. A
plain script therefore prints nothing; ``logging.basicConfig()`` (or any handler)
makes the events appear; a ``logger`` passed to the manager is used as is.
Disabled levels cost one ``isEnabledFor`` check.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["LOGGER_NAME", "default_logger"]

LOGGER_NAME = "kernelsession.client"

logging.getLogger(LOGGER_NAME).addHandler(logging.NullHandler())


def default_logger() -> Any:
    """A structlog logger writing to stdlib ``logging.getLogger("kernelsession.client")``."""
    return structlog.wrap_logger(
        logging.getLogger(LOGGER_NAME),
        wrapper_class=structlog.stdlib.BoundLogger,
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.KeyValueRenderer(key_order=["event"]),
        ],
    )
