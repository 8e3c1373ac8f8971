"""``python -m kernelsession.localcluster up``: run a local cluster until Ctrl-C.

Prints ``export KUBECONFIG=/abs/path`` once the cluster serves pods; on SIGINT/SIGTERM
stops the kubelet (and its pods' processes) and the control plane, by PID.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .binaries import BinariesUnavailableError
from .cluster import LocalCluster
from .controlplane import ControlPlaneError


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster")
    parser.add_argument("command", choices=["up"])
    parser.parse_args(argv)
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
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
