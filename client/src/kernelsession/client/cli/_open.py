"""``kernelsession open NAME``: JupyterLab of a session in this machine's browser.

Waits until the session is Ready (resuming it when Culled or Suspended, unless
``--no-resume``), forwards a local port to the lab through the API server (the pod's
``portforward`` subresource, as the caller), and serves it on 127.0.0.1 through
``_localproxy.LocalProxy``, which adds the token to every
request. Prints one line, the URL that opens the lab logged in, and serves until
Ctrl-C (exit 0). ``--url URL --token-file FILE`` opens any Jupyter server this
machine reaches instead of a session.

Exit codes: 0 stopped by Ctrl-C/SIGTERM, 1 runtime failure (message printed), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import webbrowser
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from .._errors import redact
from .._kubernetes import (
    KernelSessionClient,
    KernelSessionError,
    KernelSessionStatus,
)
from ..kubeapi import api_message, load_api_client
from ..resources import DEFAULT_NAMESPACE, LAB_PORT, Phase
from ._args import UsageError, read_token
from ._guard import LOGIN_CODE_SECONDS
from ._localproxy import LocalProxy
from ._portforward import PortForwardUpstream
from ._upstream import ByteStream, TCPUpstream, Upstream, UpstreamError

__all__ = ["OpenError", "add_open_parser", "run_open"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
CHECK_TIMEOUT = 30.0  # seconds for the lab to answer its API through the forward


class OpenError(Exception):
    """``open`` cannot go on (exit code 1); the message says why, never the token."""


@dataclass
class _Lab:
    upstream: Upstream
    token: str
    base_path: str  # the lab's base URL path, ending in "/"
    what: str  # for messages: "labs/alice (user alice)"


def add_open_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``open`` on the ``kernelsession`` sub-command parsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "open",
        help="open a session's JupyterLab in this machine's browser (serves until Ctrl-C)",
        description=(
            "Forward a local port to the lab through the API server and print one URL "
            "that opens JupyterLab logged in (a one-time link). Serves until Ctrl-C."
        ),
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="KernelSession name")
    parser.add_argument(
        "-n", "--namespace", default=DEFAULT_NAMESPACE, help="namespace of NAME (default: labs)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="local port on 127.0.0.1 (default: any free port)"
    )
    browser = parser.add_mutually_exclusive_group()
    browser.add_argument(
        "--browser",
        dest="browser",
        action="store_true",
        default=None,
        help="open the URL in the default browser (default when a display is available)",
    )
    browser.add_argument(
        "--no-browser",
        dest="browser",
        action="store_false",
        help="only print the URL (default without a display)",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="fail instead of resuming a Culled or Suspended session",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the session to be Ready (default: 300)",
    )
    parser.add_argument("--url", help="a Jupyter server's base URL instead of a session NAME")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="FILE", help="file holding the lab token (--url)")
    token.add_argument("--token-env", metavar="VAR", help="variable holding the token (--url)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each request to stderr")
    return parser


_SECRETS: list[str] = []  # the lab token once known: kept out of every message


def _say(text: str) -> None:
    print(f"kernelsession open: {redact(text, _SECRETS)}", file=sys.stderr, flush=True)


def _url_lab(args: argparse.Namespace) -> _Lab:
    try:
        upstream = TCPUpstream.from_url(args.url)
    except ValueError as e:
        raise UsageError(f"--url: {e} (https:// labs are not supported by open)") from None
    path = urlsplit(args.url).path or "/"
    if not path.endswith("/"):
        path += "/"
    return _Lab(upstream, read_token(args), path, upstream.describe())


def _usable(status: KernelSessionStatus) -> bool:
    return bool(status.ready and status.current and status.url and status.pod_name)


async def _wait_ready(
    sessions: KernelSessionClient, args: argparse.Namespace
) -> KernelSessionStatus:
    name, namespace = args.name, args.namespace
    status = await sessions.get(name)
    if not _usable(status) and status.phase in (Phase.CULLED, Phase.SUSPENDED):
        if args.no_resume:
            raise OpenError(
                f"session {namespace}/{name} is {status.phase}; run without --no-resume "
                "to start it again"
            )
        _say(f"session {namespace}/{name} is {status.phase}: resuming it")
        await sessions.resume(name, status)
    resumed = status.phase in (Phase.CULLED, Phase.SUSPENDED)
    last = status
    shown = ""
    async for last in sessions.follow(name, timeout=args.timeout):
        if _usable(last):
            return last
        if last.phase == Phase.FAILED and last.current and not resumed:
            raise OpenError(f"session is Failed: {last.describe()}")
        if last.phase not in (None, Phase.CULLED, Phase.SUSPENDED, Phase.FAILED):
            resumed = False  # the operator acted on the resume; a Failed from now on is real
        if last.phase != shown:
            shown = last.phase or ""
            _say(f"waiting for {namespace}/{name} to be Ready ({shown or 'no status yet'})")
    raise OpenError(
        f"session {namespace}/{name} not Ready after {args.timeout:g}s; last: {last.describe()}"
    )


async def _session_lab(args: argparse.Namespace, api: client.ApiClient) -> _Lab:
    name, namespace = args.name, args.namespace
    async with KernelSessionClient(namespace=namespace, api_client=api) as sessions:
        status = await _wait_ready(sessions, args)
        assert status.url is not None
        assert status.pod_name is not None
        token = await sessions.token(name, status)
    url = urlsplit(status.url)
    path = url.path or "/"
    if not path.endswith("/"):
        path += "/"
    upstream = PortForwardUpstream(
        api.configuration, namespace=namespace, pod=status.pod_name, port=url.port or LAB_PORT
    )
    return _Lab(upstream, token, path, f"{namespace}/{name} (user {status.user})")


async def check_lab(
    upstream: Upstream, token: str, base_path: str, timeout: float = CHECK_TIMEOUT
) -> None:
    """One ``GET api/status`` through ``upstream`` with the token: 200, or OpenError."""
    try:
        async with asyncio.timeout(timeout):
            await _check_lab(upstream, token, base_path)
    except TimeoutError:
        raise OpenError(
            f"the lab at {upstream.describe()} did not answer within {timeout:g} s"
        ) from None


async def _check_lab(upstream: Upstream, token: str, base_path: str) -> None:
    stream: ByteStream = await upstream.connect()
    try:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=f"{base_path}api/status",
            headers=[
                ("host", "127.0.0.1"),
                ("authorization", f"token {token}"),
                ("connection", "close"),
            ],
        )
        await stream.send(conn.send(request) + conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive())
                continue
            if isinstance(event, h11.Response):
                if event.status_code != 200:
                    raise OpenError(
                        f"the lab at {upstream.describe()} answered HTTP {event.status_code} "
                        "to the token (wrong token, or not a Jupyter server)"
                    )
                return
            raise OpenError(f"the lab at {upstream.describe()} closed the connection")
    except h11.ProtocolError as e:
        raise OpenError(f"the lab at {upstream.describe()} does not speak HTTP: {e}") from None
    finally:
        await stream.aclose()


def _wants_browser(args: argparse.Namespace) -> bool:
    if args.browser is not None:
        return bool(args.browser)
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


async def _open_and_serve(
    args: argparse.Namespace, stopping: asyncio.Event, serving: asyncio.Event
) -> int:
    api: client.ApiClient | None = None
    lab: _Lab | None = None
    try:
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port {args.port}: not a port number (0 picks a free one)")
        if args.url:
            if args.name:
                raise UsageError("give a session NAME or --url URL, not both")
            lab = _url_lab(args)
        else:
            if not args.name:
                raise UsageError("give a session NAME (or --url URL)")
            if args.token_file or args.token_env:
                raise UsageError("--token-file/--token-env go with --url")
            try:
                api = await load_api_client()
            except Exception as e:  # no kubeconfig, unreadable file...
                raise OpenError(f"cannot load Kubernetes credentials: {e}") from None
            lab = await _session_lab(args, api)
        _SECRETS.append(lab.token)
        await check_lab(lab.upstream, lab.token, lab.base_path)
        proxy = LocalProxy(
            lab.upstream, token=lab.token, port=args.port, landing=f"{lab.base_path}lab"
        )
        try:
            await proxy.start()
        except OSError as e:
            raise OpenError(f"cannot listen on 127.0.0.1:{args.port}: {e.strerror}") from None
        try:
            serving.set()
            print(proxy.url, flush=True)
            _say(
                f"serving {lab.what} on http://127.0.0.1:{proxy.port}{lab.base_path}lab "
                f"(the printed link logs in one browser, once, within "
                f"{LOGIN_CODE_SECONDS:g} s); Ctrl-C to stop"
            )
            if _wants_browser(args):
                # a daemon thread: a launcher that blocks (a console browser) never delays
                # Ctrl-C or the exit
                threading.Thread(target=webbrowser.open, args=(proxy.url,), daemon=True).start()
            await stopping.wait()
            _say("stopped")
        finally:
            await proxy.close()
        return EXIT_OK
    finally:
        if lab is not None and isinstance(lab.upstream, PortForwardUpstream):
            await lab.upstream.aclose()
        if api is not None:
            await api.close()


def _api_error(exc: ApiException, args: argparse.Namespace) -> str:
    where = f"{args.namespace}/{args.name}"
    if exc.status == 403:
        return f"forbidden (403) for session {where}: {api_message(exc)}"
    if exc.status == 404:
        return f"not found (404) for session {where}: {api_message(exc)}"
    return f"the API server answered {exc.status} for session {where}: {api_message(exc)}"


async def run_open(args: argparse.Namespace) -> int:
    """Run ``kernelsession open``; returns the exit code (SIGINT/SIGTERM stop it: 0)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    serving = asyncio.Event()
    work = asyncio.ensure_future(_open_and_serve(args, stopping, serving))
    waiter = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if serving.is_set():  # serving: it stops itself (closing the proxy) on the signal
            await asyncio.wait({work})
        if not work.done():  # interrupted before serving: give up cleanly
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            _say("interrupted")
            return EXIT_OK
        try:
            return work.result()
        except UsageError as e:
            print(f"kernelsession open: error: {redact(str(e), _SECRETS)}", file=sys.stderr)
            return EXIT_USAGE
        except OpenError as e:
            _say(str(e))
            return EXIT_FAILED
        except KernelSessionError as e:  # not found, no token, the API refused...
            _say(str(e))
            return EXIT_FAILED
        except ApiException as e:
            _say(_api_error(e, args))
            return EXIT_FAILED
        except UpstreamError as e:
            _say(str(e))
            return EXIT_FAILED
        except Exception as e:  # anything else: the typed error, no traceback
            _say(f"{type(e).__name__}: {e}")
            return EXIT_FAILED
    finally:
        waiter.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
