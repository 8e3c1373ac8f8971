"""Running the image builds' commands: the tools they need, their output and messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from kernelsession.localcluster.building.imagecache import (
    ImagesUnavailableError,
)


def require_tool(tool: str, package: str, why: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ImagesUnavailableError(
            f"`{tool}` is not installed; it is needed to {why}.\n"
            f"Fix: run `make os-packages` (as root, on Debian) or "
            f"`apt-get install -y --no-install-recommends {package}`."
        )
    return found


def run_step(
    argv: list[str],
    *,
    what: str,
    log: bool,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a build step and return its output (stdout and stderr merged). When logging, the
    output is also streamed to stderr as it comes; a failure quotes its last lines."""
    lines: list[str] = []
    with subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if log:
                sys.stderr.write(line)
        returncode = proc.wait()
    if returncode != 0:
        tail = "".join(lines[-40:])
        raise ImagesUnavailableError(
            f"{what} failed (exit {returncode}): {' '.join(argv[:6])} ...\n{tail}"
        )
    return "".join(lines)


def say(log: bool, message: str) -> None:
    if log:
        print(f"kernelsession images: {message}", file=sys.stderr, flush=True)


def userns_works() -> bool:
    try:
        return (
            subprocess.run(["unshare", "--user", "--map-root-user", "true"], check=False).returncode
            == 0
        )
    except OSError:
        return False
