"""A real jupyter-server on loopback, for tests and benchmarks of this client.

>>> with LocalJupyterServer() as lab:
...     manager = JupyterLabSessionManager(base_url=lab.url, token=lab.token, username="u")

The server runs with its own temporary HOME, root, runtime and data
directories, a random token and a free port; ``stop()`` ends it by PID
(SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

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

__all__ = ["LocalJupyterServer"]


def _free_port() -> int:
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
    """

    def __init__(
        self,
        *,
        base_url: str = "/",
        extra_args: list[str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        if not base_url.startswith("/"):
            base_url = "/" + base_url
        if not base_url.endswith("/"):
            base_url += "/"
        self.base_path = base_url
        self.extra_args = list(extra_args or [])
        self.start_timeout = start_timeout
        self.token = secrets.token_hex(24)
        self.port = 0
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
        self.port = _free_port()
        env = {
            **os.environ,
            "HOME": str(self._dir / "home"),
            "JUPYTER_RUNTIME_DIR": str(self._dir / "runtime"),
            "JUPYTER_DATA_DIR": str(self._dir / "data"),
            "JUPYTER_CONFIG_DIR": str(self._dir / "config"),
            "JUPYTER_PLATFORM_DIRS": "1",
        }
        env.pop("JUPYTER_TOKEN", None)
        args = [
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
            f"--ServerApp.root_dir={self._dir / 'root'}",
            *self.extra_args,
        ]
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

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        headers = {"Authorization": f"token {self.token}"}
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"jupyter server exited with {self.process.returncode}:\n{self.log()}"
                    )
                try:
                    if client.get(self.url + "api/status", headers=headers).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"jupyter server not ready after {self.start_timeout} s:\n{self.log()}"
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
