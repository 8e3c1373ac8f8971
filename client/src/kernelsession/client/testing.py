"""Real Jupyter servers and a cuttable TCP proxy on loopback, for tests and benchmarks.

>>> with LocalJupyterServer() as lab:
...     manager = JupyterLabSessionManager(base_url=lab.url, token=lab.token, username="u")

:class:`LocalJupyterServer` is a jupyter-server (what JupyterLab runs on);
:class:`LocalKernelGateway` a Jupyter Kernel Gateway (``jupyter-websocket``
personality: kernels only, no login page, no contents API). Each runs with its
own temporary HOME, root, runtime and data directories, a random token and a
free port; ``stop()`` ends it by PID (SIGTERM, then SIGKILL after a grace
period). :class:`TcpProxy` forwards a loopback port to a server and can cut
every connection through it, as a flaky network would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from ._websocket import QuickAckClientConnection

__all__ = [
    "LocalJupyterServer",
    "LocalKernelGateway",
    "QuickAckClientConnection",
    "TcpProxy",
    "free_port",
]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalJupyterServer:
    """Start ``python -m jupyter_server`` on 127.0.0.1 and wait until it answers.

    Args:
        base_url: Server base URL path, e.g. ``"/user/alice/"``.
        extra_args: More ``--Class.trait=value`` arguments (e.g. to lift the
            IOPub data rate limit or select the legacy websocket protocol).
        start_timeout: Seconds to wait for ``api/status`` to answer.
        port: Listen on this port (default: a free one), e.g. to restart a server
            where a client expects it.
        token: The server's token (default: a random one).
    """

    def __init__(
        self,
        *,
        base_url: str = "/",
        extra_args: list[str] | None = None,
        start_timeout: float = 60.0,
        port: int | None = None,
        token: str | None = None,
    ) -> None:
        if not base_url.startswith("/"):
            base_url = "/" + base_url
        if not base_url.endswith("/"):
            base_url += "/"
        self.base_path = base_url
        self.extra_args = list(extra_args or [])
        self.start_timeout = start_timeout
        self.token = token or secrets.token_hex(24)
        self.port = 0
        self._requested_port = port
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    @property
    def runtime_dir(self) -> Path:
        """Where the server writes kernel connection files (``kernel-<id>.json``)."""
        assert self._dir is not None
        return self._dir / "runtime"

    @property
    def log_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "server.log"

    def log(self) -> str:
        """The server's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> LocalJupyterServer:
        self._dir = Path(tempfile.mkdtemp(prefix="kernelsession-lab-"))
        for sub in ("home", "root", "runtime", "data", "config"):
            (self._dir / sub).mkdir()
        self.port = self._requested_port or free_port()
        env = {
            **os.environ,
            "HOME": str(self._dir / "home"),
            "JUPYTER_RUNTIME_DIR": str(self._dir / "runtime"),
            "JUPYTER_DATA_DIR": str(self._dir / "data"),
            "JUPYTER_CONFIG_DIR": str(self._dir / "config"),
            "JUPYTER_PLATFORM_DIRS": "1",
        }
        env.pop("JUPYTER_TOKEN", None)
        args = [*self._command(self._dir / "root"), *self.extra_args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self, root: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "jupyter_server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.base_url={self.base_path}",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",
            f"--ServerApp.root_dir={root}",
        ]

    #: Path (relative to the base URL) that answers 200 with the token once ready.
    _ready_path = "api/status"

    @property
    def root_dir(self) -> Path:
        """The server's root directory (where the contents API reads and writes)."""
        assert self._dir is not None
        return self._dir / "root"

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        headers = {"Authorization": f"token {self.token}"}
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{type(self).__name__} exited with {self.process.returncode}:\n"
                        + self.log()
                    )
                try:
                    if client.get(self.url + self._ready_path, headers=headers).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{type(self).__name__} not ready after {self.start_timeout} s:\n"
                        + self.log()
                    )
                time.sleep(0.05)

    def _children(self) -> list[int]:
        """PIDs of the server's descendants (its kernels), if psutil is available."""
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            import psutil
        except ImportError:
            return []
        try:
            return [c.pid for c in psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.Error:
            return []

    @staticmethod
    def _kill_pids(pids: list[int]) -> None:
        for pid in pids:  # grandchildren: reaped by init, not by us
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue

    def kill(self) -> None:
        """SIGKILL the server at once (to test a dropped websocket), then its kernels."""
        if self.process is not None and self.process.poll() is None:
            children = self._children()
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self._kill_pids(children)

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server by PID: SIGTERM, wait, then SIGKILL; remove its directory."""
        process = self.process
        children = self._children()
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        # Kernels the server did not shut down (it was killed, or too slow).
        self._kill_pids(children)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LocalJupyterServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalKernelGateway(LocalJupyterServer):
    """Start Jupyter Kernel Gateway 3 (``python -m kernel_gateway``) on 127.0.0.1.

    ``jupyter-websocket`` personality with ``auth_token``: kernels only, no login
    page, no contents API. Listing kernels (``GET api/kernels``) is enabled so
    tests can see what a client left behind.
    """

    _ready_path = "api/kernelspecs"

    def _command(self, root: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kernel_gateway",
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={self.port}",
            "--KernelGatewayApp.port_retries=0",
            f"--KernelGatewayApp.base_url={self.base_path}",
            f"--KernelGatewayApp.auth_token={self.token}",
            "--JupyterWebsocketPersonality.list_kernels=True",
        ]


class TcpProxy:
    """A loopback TCP proxy (asyncio) in front of ``target_port`` that tests can cut.

    Run it inside the test's event loop: ``async with TcpProxy(port) as proxy:``
    then connect to ``proxy.url_for(server)``. :meth:`cut` aborts every open
    connection at once (no close frame or FIN handshake reaches either end
    cleanly: both see a reset), like a dropped network path. :meth:`hold`
    makes new connections wait (accepted, not forwarded) until :meth:`release`.
    ``idle_timeout`` cuts an open websocket (upgrade requested and answered)
    that carried no bytes for that long, as load balancers do
    (``websocket_idle_cuts`` counts them).
    """

    def __init__(self, target_port: int, *, idle_timeout: float | None = None) -> None:
        self.target_port = target_port
        self.idle_timeout = idle_timeout
        self.port = 0
        self.connections = 0
        self.cuts = 0
        self.websocket_idle_cuts = 0
        self._last_byte = 0.0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._open = asyncio.Event()
        self._open.set()

    def url_for(self, server: LocalJupyterServer) -> str:
        return f"http://127.0.0.1:{self.port}{server.base_path}"

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        self.cut(count=False)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def quiet_for(self) -> float:
        """Seconds since any byte went through the proxy (in either direction)."""
        return time.monotonic() - self._last_byte

    def hold(self) -> None:
        """New connections wait until :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def cut(self, *, count: bool = True) -> int:
        """Abort every connection through the proxy; return how many were cut."""
        writers = list(self._writers)
        for writer in writers:
            writer.transport.abort()
        self._writers.clear()
        if count and writers:
            self.cuts += 1
        return len(writers)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        pumps: list[asyncio.Task[None]] = []
        pair: tuple[asyncio.StreamWriter, ...] = (client_w,)
        try:
            await self._open.wait()
            try:
                server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            self.connections += 1
            pair = (client_w, server_w)
            self._writers.update(pair)
            # activity: [last byte time, 0 / 1 upgrade asked / 2 upgrade answered]
            activity: list[float] = [asyncio.get_running_loop().time(), 0.0]
            pumps = [
                asyncio.create_task(self._pump(client_r, server_w, activity, upstream=True)),
                asyncio.create_task(self._pump(server_r, client_w, activity, upstream=False)),
            ]
            if self.idle_timeout is not None:
                pumps.append(asyncio.create_task(self._idle_watch(activity, pair)))
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is closing
        finally:
            for task in pumps:
                task.cancel()
            for writer in pair:
                self._writers.discard(writer)
                writer.transport.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        activity: list[float],
        *,
        upstream: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                activity[0] = asyncio.get_running_loop().time()
                self._last_byte = time.monotonic()
                if upstream and not activity[1] and b"upgrade: websocket" in data.lower():
                    activity[1] = 1.0
                elif not upstream and activity[1] == 1.0:
                    activity[1] = 2.0
                writer.write(data)
                await writer.drain()

    async def _idle_watch(
        self, activity: list[float], pair: tuple[asyncio.StreamWriter, ...]
    ) -> None:
        assert self.idle_timeout is not None
        loop = asyncio.get_running_loop()
        while True:
            left = activity[0] + self.idle_timeout - loop.time()
            if activity[1] < 2.0:
                left = self.idle_timeout  # not an open websocket (yet)
            elif left <= 0:
                self.websocket_idle_cuts += 1
                for writer in pair:
                    writer.transport.abort()
                return
            await asyncio.sleep(left)  # re-checks the last-activity time at its deadline
