"""Where the operator's CPU goes: a py-spy recording of one process, summarised.

`scale --py-spy FILE` records the active replica while the sessions are created (py-spy
attaches to the process by PID from the host; the operator is not changed) and prints
the functions holding the most samples. The file holds py-spy's collapsed stacks
(``frame;frame;... count`` per line), readable by any flame graph tool.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

RATE = 97
"""Samples per second (a prime, so sampling does not lock step with periodic work)."""


@dataclass(frozen=True)
class Hot:
    frame: str
    own: float
    """Share of all samples with this frame on top of the stack."""
    inclusive: float
    """Share of all samples with this frame anywhere on the stack."""


def hot_frames(collapsed: Iterable[str], top: int = 15) -> list[Hot]:
    """The ``top`` frames by inclusive share, from collapsed stacks (pure).

    A frame counts once per sample however deep it recurs. Recorded with ``--gil``
    (only the thread holding the GIL), the shares are of the interpreter's time, not of
    threads waiting in a pool or a selector."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return []
    return [Hot(f, own[f] / total, n / total) for f, n in inclusive.most_common(top)]


@contextlib.contextmanager
def recording(pid: int, output: Path | None) -> Iterator[None]:
    """Record ``pid`` with py-spy into ``output`` while the block runs (nothing when
    ``output`` is None). py-spy is stopped by its own PID with SIGINT, which makes it
    write the file.

    Raises:
        RuntimeError: py-spy is not installed (it is in the dev group `make setup` installs).
    """
    if output is None:
        yield
        return
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when not on PATH
    exe = str(beside) if beside.exists() else shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("py-spy is not installed: run `make setup`")
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--gil",
            "--output",
            str(output),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not output.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")


def summary(output: Path, top: int = 15) -> str:
    """The hottest frames of a recording, one line each."""
    lines = output.read_text().splitlines()
    hot = hot_frames(lines, top)
    rows = [f"  {h.inclusive * 100:5.1f}% incl {h.own * 100:5.1f}% own  {h.frame}" for h in hot]
    return "\n".join([f"py-spy: {output} ({len(lines)} stacks)", *rows])
