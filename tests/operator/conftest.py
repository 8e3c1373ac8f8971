"""The operator on the local cluster (fixtures ``installed``, ``operator``, ``ks`` and
``session_name`` live in tests/conftest.py so tests/e2e shares the one operator process).

Helpers are re-exported here for the tests in this directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from helpers import (  # noqa: F401  (re-exported for `from conftest import ...`)
    LABS,
    OPERATOR_ENV,
    apply_session,
    children,
    events_for,
    get_ks,
    wait_phase,
)
