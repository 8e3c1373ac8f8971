"""Run benchmark sections: ``python -m bench`` (all) or ``python -m bench client``.

Each section is a module ``bench.<section>_bench`` with ``main(args) -> int``;
sections whose module is not there yet are skipped.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

SECTIONS = {
    "client": "bench.client_bench",
    "operator": "bench.operator_bench",
    "scale": "bench.scale_bench",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"one of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--iterations", type=int, default=200, help="latency samples")
    parser.add_argument("--quick", action="store_true", help="fewer samples, no 100 MB run")
    parser.add_argument(
        "--sessions", type=int, default=100, help="operator: sessions applied at once"
    )
    parser.add_argument(
        "--window", type=float, default=60.0, help="operator: steady-state window (seconds)"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="scale: sessions created per second (10)"
    )
    parser.add_argument(
        "--json", action="store_true", help="scale: last stdout line is one JSON object"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="scale: run in a LabProfile's namespace (owner User bench) instead of labs",
    )
    parser.add_argument(
        "--api-qps",
        type=float,
        default=None,
        metavar="QPS",
        help="scale: the operator's KERNELSESSION_API_QPS (burst twice that; default: "
        "the operator's own, 50)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="FILE",
        help="scale: record the active replica with py-spy while sessions are created",
    )
    parser.add_argument(
        "--logs",
        type=Path,
        default=None,
        metavar="DIR",
        help="scale: keep the operator replicas' logs (current and previous runs) in DIR",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    status = 0
    for name in args.sections or list(SECTIONS):
        try:
            module = importlib.import_module(SECTIONS[name])
        except ModuleNotFoundError as e:
            if e.name != SECTIONS[name]:
                raise
            print(f"== {name}: skipped (no {SECTIONS[name]} yet)")
            continue
        print(f"== {name}")
        status = max(status, int(module.main(args)))
    return status


if __name__ == "__main__":
    sys.exit(main())
