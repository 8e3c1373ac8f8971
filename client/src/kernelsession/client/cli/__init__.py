"""The ``kernelsession`` command: the client library's apps (``exec``, ``probe``,
``notebook``, ``open``).

They need more than the library (an HTTP proxy, port-forward, Prometheus metrics):
install them with the ``cli`` extra, ``pip install 'kernelsession-client[cli]'``.
Without it, :func:`main` says which extra to install (exit 2) instead of a traceback.
"""

from __future__ import annotations

import sys

__all__ = ["CLI_EXTRA", "main"]

#: What to install for the command.
CLI_EXTRA = "kernelsession-client[cli]"
#: The modules only the command needs (the ``cli`` extra's requirements).
_EXTRA_MODULES = frozenset({"h11", "aiohttp", "prometheus_client"})


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``kernelsession``: returns the exit code."""
    try:
        from ._main import main as run
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _EXTRA_MODULES:
            raise
        print(
            f"kernelsession: the command needs the client's [cli] extra (module {e.name!r} "
            f"is missing): pip install '{CLI_EXTRA}'",
            file=sys.stderr,
        )
        return 2
    return run(argv)
