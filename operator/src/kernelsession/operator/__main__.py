"""``python -m kernelsession.operator`` / ``kernelsession-operator``: run the operator.

Flags override the ``KERNELSESSION_*`` environment variables they name.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import kopf

from kernelsession.operator import config, health, logs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kernelsession-operator", description=__doc__)
    p.add_argument(
        "--namespaces",
        help="comma-separated namespaces to watch, or * for all "
        "(KERNELSESSION_NAMESPACES, default: labs)",
    )
    p.add_argument(
        "--url-mode",
        choices=["auto", "service", "pod-ip"],
        help="how clients reach labs (KERNELSESSION_URL_MODE)",
    )
    p.add_argument("--default-image", help="lab image when spec.image is unset")
    p.add_argument("--health-port", type=int, help="liveness endpoint port (default 8080)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 9090, 0: off)")
    p.add_argument("--log-format", choices=["json", "console"])
    p.add_argument("--log-level")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict[str, str] = {}
    for flag, var in [
        ("namespaces", "NAMESPACES"),
        ("url_mode", "URL_MODE"),
        ("default_image", "DEFAULT_IMAGE"),
        ("health_port", "HEALTH_PORT"),
        ("metrics_port", "METRICS_PORT"),
        ("log_format", "LOG_FORMAT"),
        ("log_level", "LOG_LEVEL"),
    ]:
        value = getattr(args, flag)
        if value is not None:
            overrides[var] = str(value)
    try:
        cfg = config.from_env(os.environ, overrides)
    except config.ConfigError as exc:
        print(f"kernelsession-operator: {exc}", file=sys.stderr)
        return 2
    logs.configure(cfg.log_level, cfg.log_format)
    from kernelsession.operator import handlers  # noqa: F401  (registers the handlers)

    # The liveness endpoint is answered from its own thread (health), not kopf's loop.
    live = health.Health()
    server = health.serve(live, cfg.health_port)
    try:
        asyncio.run(
            kopf.operator(
                standalone=True,
                clusterwide=cfg.clusterwide,
                namespaces=list(cfg.namespaces),
                memo=kopf.Memo(settings=cfg, health=live),  # read by every handler
            )
        )
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
