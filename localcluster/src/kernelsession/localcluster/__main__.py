"""``python -m kernelsession.localcluster COMMAND``: the local cluster by hand.

- ``up``: run a local cluster until Ctrl-C; prints ``export KUBECONFIG=/abs/path`` once the
  node is Ready. On SIGINT/SIGTERM everything is stopped by PID and the host restored.
- ``cleanup``: remove what a node that did not stop (SIGKILL, power loss of its process
  tree) left on this machine; a no-op when there is nothing (``up`` does it first anyway).
- ``check-host --save FILE`` / ``check-host --against FILE``: record the host's state
  (mounts, network namespaces, links, routes, iptables, nftables tables, ipsets, kubepods
  cgroups, sysctls, host paths), or compare with a recording and list every difference
  (exit 1 when there is one).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from kernelsession.localcluster.building.gobuild import BinariesUnavailableError
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.cluster.controlplane import ControlPlaneError
from kernelsession.localcluster.cluster.nodehost import NodeLock
from kernelsession.localcluster.host import state as hoststate
from kernelsession.localcluster.host.crash import cleanup_crashed


def _up() -> int:
    done = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # explicit handlers: a shell starting us in the background may have ignored SIGINT
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    cluster = LocalCluster()
    try:
        timings = cluster.start()
        print(timings.summary(), file=sys.stderr)
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        print("local cluster running; Ctrl-C stops it", file=sys.stderr, flush=True)
        done.wait()
    except KeyboardInterrupt:
        print("stopping local cluster...", file=sys.stderr)
    except (BinariesUnavailableError, ControlPlaneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        problems = cluster.stop()
        if problems:
            print(f"could not restore: {', '.join(problems)}", file=sys.stderr)
    return 0


def _cleanup() -> int:
    lock = NodeLock()
    try:
        lock.acquire()
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        cleaned = cleanup_crashed(sys.stderr)
    finally:
        lock.release()
    print("cleaned up after a crashed node" if cleaned else "nothing to clean up")
    return 0


def _check_host(save: Path | None, against: Path | None) -> int:
    now = hoststate.snapshot()
    if save is not None:
        save.write_text(now.to_json())
        print(f"host state saved to {save}")
        return 0
    assert against is not None
    changes = hoststate.diff(hoststate.HostState.from_json(against.read_text()), now)
    for change in changes:
        print(change)
    print(f"{len(changes)} difference(s) from {against}")
    return 1 if changes else 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run a local cluster until Ctrl-C")
    sub.add_parser("cleanup", help="remove what a crashed node left")
    check = sub.add_parser("check-host", help="record or compare the host's state")
    group = check.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path, metavar="FILE")
    group.add_argument("--against", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    if args.command == "up":
        return _up()
    if args.command == "cleanup":
        return _cleanup()
    return _check_host(args.save, args.against)


if __name__ == "__main__":
    sys.exit(main())
