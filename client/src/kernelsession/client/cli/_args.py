"""What the CLI's commands share about their command lines: the usage error and the
lab token given with ``--url``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class UsageError(Exception):
    """The command line cannot be acted on (exit code 2)."""


def read_token(args: argparse.Namespace) -> str:
    """The token for ``--url``: from ``--token-file``, ``--token-env`` or ``JUPYTER_TOKEN``.

    Raises:
        UsageError: the file cannot be read, or the variable is unset or empty.
    """
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise UsageError(f"cannot read --token-file: {e.strerror}") from None
    elif args.token_env:
        token = os.environ.get(args.token_env, "").strip()
        if not token:
            raise UsageError(f"environment variable {args.token_env} is not set or empty")
    else:
        token = os.environ.get("JUPYTER_TOKEN", "").strip()
        if not token:
            raise UsageError(
                "--url needs a token: give --token-file FILE or --token-env VAR "
                "(or set JUPYTER_TOKEN)"
            )
    return token
