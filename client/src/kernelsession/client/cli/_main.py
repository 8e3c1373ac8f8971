"""The ``kernelsession`` command: ``exec`` code or a ``notebook`` in a lab, ``probe`` its health.

Exit codes: 0 success/healthy, 1 failure/unhealthy (the typed error is
printed), 2 usage error. Tokens are read from a file or an environment
variable only, never from the command line (where ``ps`` would show them).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .._errors import JupyterError, redact
from .._kubernetes import KernelSessionClient, KernelSessionError
from .._logging import LOGGER_NAME
from .._manager import JupyterLabSessionManager
from .._notebook import load_code_cells
from ..resources import DEFAULT_NAMESPACE
from ._args import UsageError, read_token
from ._metrics import ProbeMetrics
from ._open import add_open_parser, run_open
from ._probers import LabProber, SpawnSettings, spawn_once
from ._results import notebook_report
from ._runloop import announcer, run_continuous, run_spawn_once

__all__ = ["LabTarget", "ResolveError", "UsageError", "main", "resolve_target"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

PROBE_CODE = "print('kernelsession-probe-ok')"
PROBE_EXPECTED = "kernelsession-probe-ok\n"


class ResolveError(Exception):
    """The named session could not be resolved to a lab (exit code 1)."""


@dataclass(frozen=True)
class LabTarget:
    """Where to connect: the lab's base URL, its token and the user name."""

    base_url: str
    token: str
    username: str


async def resolve_target(args: argparse.Namespace) -> LabTarget:
    """Turn parsed arguments into the lab to connect to.

    Two forms:
    * ``--url URL`` with ``--token-file``/``--token-env``: a lab anywhere.
    * ``NAME [-n NAMESPACE]``: a ``KernelSession`` resource, resolved through
      the Kubernetes side of the client (``kernelsession.client._kubernetes``).

    Raises:
        UsageError: Neither form given.
        ResolveError: The named session is missing, not Ready, or unreadable.
    """
    if args.url:
        if args.name:
            raise UsageError("give a session NAME or --url URL, not both")
        if not args.url.startswith(("http://", "https://")):
            raise UsageError("--url must start with http:// or https://")
        return LabTarget(args.url, read_token(args), args.user or getpass.getuser())
    if not args.name:
        raise UsageError("give a session NAME or --url URL")
    # session-name form: resolved through the Kubernetes side of the client
    try:
        async with KernelSessionClient(namespace=args.namespace) as sessions:
            base_url, token, username = await sessions.credentials(args.name)
    except KernelSessionError as e:
        raise ResolveError(f"session {args.namespace}/{args.name}: {e}") from None
    except Exception as e:  # kubeconfig missing, API server unreachable...
        raise ResolveError(
            f"cannot read session {args.namespace}/{args.name}: {type(e).__name__}: {e}"
        ) from None
    return LabTarget(str(base_url), str(token), args.user or str(username))


def _manager(target: LabTarget, args: argparse.Namespace) -> JupyterLabSessionManager:
    return JupyterLabSessionManager(
        base_url=target.base_url,
        token=target.token,
        username=target.username,
        kernel_name=args.kernel,
        websocket_open_timeout=timedelta(seconds=args.open_timeout),
    )


async def _exec(args: argparse.Namespace) -> int:
    target = await resolve_target(args)
    code = args.code
    if code == "-":
        code = sys.stdin.read()
    try:
        async with _manager(target, args) as session:
            output = await session.run_python(code, timeout=args.timeout)
    except JupyterError as e:
        print(str(e), file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(output)
    sys.stdout.flush()
    return EXIT_OK


def _check_notebook(path: str) -> None:
    """Read and parse the notebook before connecting: a bad path is a usage error (exit 2)."""
    if not Path(path).is_file():
        raise UsageError(f"notebook {path} does not exist or is not a file")
    try:
        load_code_cells(path)
    except OSError as e:
        raise UsageError(f"cannot read notebook {path}: {e.strerror}") from None
    except Exception as e:  # nbformat: NotJSONError (ValueError), jsonschema ValidationError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"{path} is not a Jupyter notebook: {first}") from None


async def _notebook(args: argparse.Namespace) -> int:
    if args.notebook_path is None:
        if not (args.url and args.name):
            raise UsageError("give the notebook: kernelsession notebook [NAME] PATH.ipynb")
        args.notebook_path, args.name = args.name, None  # --url URL PATH.ipynb
    _check_notebook(args.notebook_path)
    target = await resolve_target(args)
    started = datetime.now(tz=UTC)
    try:
        async with _manager(target, args) as session:
            result = await session.run_notebook(args.notebook_path, timeout=args.timeout)
    except JupyterError as e:
        if args.json:
            print(json.dumps(notebook_report(args.notebook_path, started, error=e)))
        else:
            print(str(e), file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(notebook_report(args.notebook_path, started, result=result)))
        return EXIT_OK
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    if args.verbose:
        for cell in result.cells:
            print(
                f"cell {cell.cell_number} (id {cell.cell_id}): {cell.seconds:.3f} s",
                file=sys.stderr,
            )
    print(
        f"{result.notebook}: {len(result.cells)} code cells ran in {result.seconds:.2f} s",
        file=sys.stderr,
    )
    return EXIT_OK


async def _probe(args: argparse.Namespace) -> int:
    if args.spawn or args.every is not None or args.metrics_port is not None or args.notebook:
        return await _probe_continuous(args)
    target = await resolve_target(args)
    manager = _manager(target, args)
    execute: float | None = None
    error: JupyterError | None = None
    healthy = False
    detail = ""
    t_start = time.perf_counter()
    try:
        async with manager as session:
            t0 = time.perf_counter()
            output = await session.run_python(PROBE_CODE, timeout=args.timeout)
            execute = time.perf_counter() - t0
            healthy = output == PROBE_EXPECTED
            if not healthy:
                detail = f"unexpected output {output!r}"
    except JupyterError as e:
        error = e
        detail = e.message
    total = time.perf_counter() - t_start
    phases: dict[str, float | None] = {**manager.timings.as_dict(), "execute": execute}
    order = ["login", "session_create", "websocket_open", "execute", "cleanup"]
    if args.json:
        report: dict[str, Any] = {
            "probe": "lab",
            "result": "success" if healthy else "failure",
            "healthy": healthy,
            "url": redact(target.base_url, (target.token,)),
            "user": target.username,
            "seconds": {k: phases[k] for k in order},
            "total_seconds": total,
        }
        if error is not None:
            report["error"] = error.to_dict()
        elif detail:
            report["error"] = {"type": "UnexpectedOutputError", "message": detail}
        print(json.dumps(report))
    else:
        print(
            f"{'healthy' if healthy else 'UNHEALTHY'}: {redact(target.base_url, (target.token,))}"
        )
        for key in order:
            value = phases[key]
            shown = "-" if value is None else f"{value * 1000:9.1f} ms"
            print(f"  {key:<15} {shown}")
        print(f"  {'total':<15} {total * 1000:9.1f} ms")
        if error is not None:
            print(str(error), file=sys.stderr)
        elif detail:
            print(detail, file=sys.stderr)
    return EXIT_OK if healthy else EXIT_FAILED


async def _probe_continuous(args: argparse.Namespace) -> int:
    """``probe --every``/``--metrics-port`` (one lab, kept open) and ``probe --spawn``."""
    if args.every is not None and args.every <= 0:
        raise UsageError("--every must be a positive number of seconds")
    if args.metrics_port is not None and args.every is None:
        raise UsageError("--metrics-port needs --every SECONDS (a continuous prober)")
    if args.notebook is not None:
        if args.spawn or args.every is None:
            raise UsageError("--notebook goes with --every (a continuous synthetic test)")
        _check_notebook(args.notebook)
    metrics = ProbeMetrics(spawn=args.spawn)
    keep_going = dict(
        every=args.every,
        as_json=args.json,
        metrics=metrics,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
    )
    if args.spawn:
        if args.name or args.url:
            raise UsageError("--spawn creates its own session: give no NAME or --url")
        settings = SpawnSettings(
            namespace=args.namespace,
            user=args.user or "probe",
            image=args.image,
            ready_timeout=args.ready_timeout,
            execute_timeout=args.timeout,
        )
        if args.every is None:
            return await run_spawn_once(settings, as_json=args.json)
        announce = announcer(settings)
        return await run_continuous(
            lambda: spawn_once(settings, metrics, on_name=announce), **keep_going
        )
    if args.url:
        target = await resolve_target(args)  # usage errors now, not at the first check

        async def open_url() -> JupyterLabSessionManager:
            token = read_token(args)  # read again each time: the token may be rotated
            return _manager(LabTarget(target.base_url, token, target.username), args)

        prober = LabProber(
            open_url,
            target=redact(target.base_url, (target.token,)),
            timeout=args.timeout,
            metrics=metrics,
            deadline=args.timeout + args.open_timeout + 30,
            notebook=args.notebook,
        )
        return await run_continuous(prober.check, on_stop=prober.close, **keep_going)
    if not args.name:
        raise UsageError("give a session NAME, --url URL or --spawn")
    try:
        sessions = await KernelSessionClient(namespace=args.namespace).__aenter__()
    except Exception as e:  # kubeconfig missing...
        raise ResolveError(f"cannot reach the cluster: {type(e).__name__}: {e}") from None
    async with sessions:

        async def open_named() -> JupyterLabSessionManager:
            return await sessions.lab_session(
                args.name,
                kernel_name=args.kernel,
                websocket_open_timeout=timedelta(seconds=args.open_timeout),
            )

        prober = LabProber(
            open_named,
            target=f"{args.namespace}/{args.name}",
            timeout=args.timeout,
            metrics=metrics,
            deadline=args.timeout + args.open_timeout + 30,
            notebook=args.notebook,
        )
        return await run_continuous(prober.check, on_stop=prober.close, **keep_going)


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="KernelSession name")
    parser.add_argument(
        "-n", "--namespace", default=DEFAULT_NAMESPACE, help="namespace of NAME (default: labs)"
    )
    parser.add_argument("--url", help="lab base URL instead of a session NAME")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="FILE", help="file holding the lab token")
    token.add_argument("--token-env", metavar="VAR", help="environment variable holding the token")
    parser.add_argument(
        "--user", help="user name for logs and errors (default: from NAME or $USER)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--kernel", default="python3", help="kernel spec name (default: python3)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds the code may run (default: 60)"
    )
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=60.0,
        help="seconds to open the kernel websocket (default: 60)",
    )


def _prober_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--every", type=float, metavar="SECONDS", help="keep probing, once every SECONDS"
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics (with --every)"
    )
    parser.add_argument(
        "--metrics-address", default="0.0.0.0", help="address for --metrics-port (0.0.0.0)"
    )
    parser.add_argument(
        "--spawn",
        action="store_true",
        help="probe the whole path: create a temporary session, Ready, run code, delete it",
    )
    parser.add_argument(
        "--notebook",
        metavar="PATH.ipynb",
        help="with --every: run this notebook's code cells each interval instead of print()",
    )
    parser.add_argument("--image", help="lab image of --spawn sessions (default: operator's)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=300.0,
        help="seconds a --spawn session may take to be Ready (default: 300)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``kernelsession`` parser (see :func:`parse_args` for options anywhere)."""
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top parser and each command's own parser, by command word."""
    parser = argparse.ArgumentParser(
        prog="kernelsession", description="Run code in JupyterLab sessions."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    exec_parser = sub.add_parser("exec", help="run code in a lab and print its stdout")
    _target_arguments(exec_parser)
    exec_parser.add_argument(
        "-c", "--code", required=True, help="Python code to run ('-' reads stdin)"
    )
    notebook_parser = sub.add_parser(
        "notebook", help="run a notebook's code cells in order; exit 1 on the first failing cell"
    )
    _target_arguments(notebook_parser)
    notebook_parser.add_argument("notebook_path", nargs="?", metavar="PATH.ipynb")
    notebook_parser.add_argument(
        "--json", action="store_true", help="print one JSON object with the result"
    )
    probe_parser = sub.add_parser(
        "probe", help="health check: exit 0 if the lab runs code, 1 if not, 2 on usage errors"
    )
    _target_arguments(probe_parser)
    probe_parser.add_argument(
        "--json", action="store_true", help="print one JSON object per result"
    )
    _prober_arguments(probe_parser)
    open_parser = add_open_parser(sub)
    commands = {
        "exec": exec_parser,
        "notebook": notebook_parser,
        "probe": probe_parser,
        "open": open_parser,
    }
    return parser, commands


def _configure_logging(verbose: bool) -> None:
    """Send the library's logs to stderr (stdout is the code's output) with -v; else none.

    Errors are printed by the command itself, so without ``-v`` nothing is logged.
    """
    if not verbose:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line with options anywhere, as kubectl takes them.

    ``kernelsession notebook alice -n labs nb.ipynb`` has two optional positionals
    around an option; plain argparse stops at the first option and refuses the
    second positional. Each command's own parser therefore parses intermixed
    (options first, then the positionals that remain, in order); argparse cannot
    intermix through sub-parsers, so the command word is picked out first.
    Usage errors exit 2 with argparse's message, as before.
    """
    parser, commands = _build()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in commands:
        # no command, an unknown one, or top-level options (-h) first: argparse says why
        return parser.parse_args(argv)
    args = commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def main(argv: list[str] | None = None) -> int:
    """Console entry point: returns the exit code (argparse exits 2 on bad usage)."""
    args = parse_args(argv)
    _configure_logging(args.verbose)
    runner = {"exec": _exec, "notebook": _notebook, "probe": _probe, "open": run_open}[args.command]
    try:
        return asyncio.run(runner(args))
    except UsageError as e:
        print(f"kernelsession {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ResolveError as e:
        print(f"kernelsession {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
