"""Build what the local cluster needs, side by side: ``make binaries`` and ``make images``.

``python -m kernelsession.localcluster.building.prepare binaries images`` finds the control-plane
binaries (Kubernetes, etcd), the node's daemons (containerd, CoreDNS,
local-path-provisioner) and the four images in their caches, and builds whatever is
missing, each part in its own process, all at once: the Go module downloads, mmdebstrap
and pip are network-bound and the links single-threaded, so on a small machine they
overlap the compiling instead of queueing behind it. The control plane and the node's
daemons are one part: they share one module graph (:mod:`.pins`), and the node's build,
run after the control plane's, reuses the packages it compiled instead of compiling them
again beside it. Each output line is prefixed with its
part (``[binaries 312s] ...``), a progress line names the parts still running every
minute, and the end prints each part's seconds.

When everything is cached this checks the caches in-process and starts nothing
(``make run`` and ``make test`` call it every time).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from kernelsession.localcluster.building import (
    binaries,
    gobuild,
    images,
    ingressbinaries,
    kwok,
    nodebinaries,
)

#: The groups ``make`` asks for, and the parts (processes) each consists of.
GROUPS: dict[str, tuple[str, ...]] = {
    "binaries": ("binaries",),
    "images": ("images",),
    "ingress": ("ingress",),
    "kwok": ("kwok",),
}
PROGRESS_EVERY = 60.0


@dataclass
class Part:
    """One build process: its name, command line and what happened."""

    name: str
    argv: list[str]
    started: float = 0.0
    seconds: float | None = None
    returncode: int | None = None
    lines: list[str] = field(default_factory=list)


def commands(python: str = sys.executable) -> dict[str, list[str]]:
    """The command line of each part (each ensures one cache and prints where it is)."""
    return {
        "binaries": [python, "-m", binaries.__name__, "ensure"],
        "images": [python, "-m", images.__name__, "ensure"],
        "ingress": [python, "-m", binaries.__name__, "ensure", "--ingress"],
        "kwok": [python, "-m", kwok.__name__, "ensure"],
    }


def cached_lines(part: str) -> list[str] | None:
    """The part's summary when its cache is complete (nothing to build), else None.

    Cheap: no process, no build tool; images are looked up by their inputs' content hash.
    """
    if part == "binaries":
        found = binaries.find()
        try:
            node = nodebinaries.ensure_node(build_missing=False)
        except gobuild.BinariesUnavailableError:
            return None
        if found is None:
            return None
        return [binaries.describe_controlplane(found), nodebinaries.describe_node(node)]
    if part == "ingress":
        ingress = ingressbinaries.find_ingress()
        if ingress is None:
            return None
        return [f"ingress: Traefik {ingressbinaries.TRAEFIK_VERSION} in {ingress.directory}"]
    if part == "kwok":
        fake_nodes = kwok.find_kwok()
        return None if fake_nodes is None else [kwok.describe_kwok(fake_nodes)]
    if part == "images":
        tags = images.input_hashes()
        lines = []
        for name in images.NAMES:
            hit = images.cached(name, tags[name])
            if hit is None:
                return None
            lines.append(f"{name:9} {hit.ref}  cached")
        return lines
    raise ValueError(f"unknown part {part!r}")


def run_parts(
    parts: Sequence[Part],
    *,
    out: TextIO = sys.stdout,
    progress_every: float = PROGRESS_EVERY,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run ``parts`` at once; prefix each output line with ``[name SECONDSs]``; every
    ``progress_every`` seconds print which are still running. Fills in each part's
    ``seconds`` and ``returncode``."""
    lock = threading.Lock()
    t0 = clock()
    width = max((len(p.name) for p in parts), default=0)

    def emit(text: str) -> None:
        with lock:
            out.write(text + "\n")
            out.flush()

    def pump(part: Part, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            part.lines.append(line)
            emit(f"[{part.name:<{width}} {clock() - part.started:4.0f}s] {line}")
        part.returncode = proc.wait()
        part.seconds = clock() - part.started
        state = "done" if part.returncode == 0 else f"FAILED (exit {part.returncode})"
        emit(f"[{part.name:<{width}} {part.seconds:4.0f}s] {state}")

    threads = []
    for part in parts:
        part.started = clock()
        proc = subprocess.Popen(
            part.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        thread = threading.Thread(target=pump, args=(part, proc), daemon=True)
        thread.start()
        threads.append(thread)
    next_progress = t0 + progress_every
    while True:
        alive = [t for t in threads if t.is_alive()]
        if not alive:
            break
        alive[0].join(timeout=1.0)
        if clock() >= next_progress:
            running = [p.name for p in parts if p.returncode is None]
            if running:
                emit(f"[prepare {clock() - t0:4.0f}s] still building: {', '.join(running)}")
            next_progress += progress_every


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster.building.prepare")
    parser.add_argument("groups", nargs="+", choices=sorted(GROUPS))
    args = parser.parse_args(argv)
    names = [p for g in GROUPS if g in args.groups for p in GROUPS[g]]
    started = time.monotonic()
    todo: list[Part] = []
    argvs = commands()
    for name in names:
        lines = cached_lines(name)
        if lines is None:
            todo.append(Part(name, argvs[name]))
        else:
            for line in lines:
                print(line)
    if not todo:
        return 0
    print(
        f"prepare: building {', '.join(p.name for p in todo)} side by side "
        "(first time only; the Go builds take several minutes)",
        flush=True,
    )
    run_parts(todo)
    failed = [p for p in todo if p.returncode != 0]
    summary = ", ".join(f"{p.name} {p.seconds or 0:.0f}s" for p in todo)
    print(f"prepare: {summary}; {time.monotonic() - started:.0f}s in all", flush=True)
    if failed:
        for p in failed:
            print(f"prepare: {p.name} failed (exit {p.returncode}); see its lines above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
