"""Starting and stopping child processes by PID, with per-process log files, and
:class:`ProcessGroup`: daemons started in order and stopped in reverse."""

from __future__ import annotations

import ctypes
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when the thread that started it exits.

    A safety net for a parent killed with SIGKILL; orderly shutdown stops children by PID.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def start_logged(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log_path``.

    Raises OSError when the executable cannot be started.
    """
    with open(log_path, "ab") as log:
        preexec: Callable[[], None] | None = _die_with_parent if die_with_parent else None
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
        )


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> int | None:
    """Stop ``proc`` by PID: SIGTERM, wait up to ``grace`` seconds, then SIGKILL.

    Returns the exit status (None if it could not be reaped). Never raises for a process
    that already exited.
    """
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return proc.poll()
    try:
        proc.kill()
        return proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        return proc.poll()


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        data = path.read_bytes()[-32768:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    alive: Callable[[], str | None] | None = None,
) -> float:
    """Poll ``check`` until it returns True; return the seconds waited.

    ``alive`` returns an error text when what we wait for can no longer succeed (e.g. the
    process died). Raises TimeoutError on the deadline, RuntimeError when ``alive`` fails.
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if check():
            return time.monotonic() - started
        if alive is not None:
            problem = alive()
            if problem:
                raise RuntimeError(problem)
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout:.0f}s")
        time.sleep(interval)


def await_process(
    name: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    error: type[Exception] = RuntimeError,
) -> None:
    """Wait until ``check`` passes for the process ``name`` (logging to ``log``).

    Raises:
        error: it exited or was not ready in ``timeout`` seconds; the message has the
            reason and the tail of its log.
    """

    def alive() -> str | None:
        if proc.poll() is not None:
            return f"{name} exited with status {proc.returncode}"
        return None

    try:
        wait_until(check, timeout=timeout, interval=interval, alive=alive)
    except (TimeoutError, RuntimeError) as exc:
        raise error(
            f"{name} did not become ready: {exc}\n--- tail of {log} ---\n{log_tail(log)}"
        ) from exc


def http_ok(url: str, *, context: ssl.SSLContext | None = None) -> bool:
    """Whether ``url`` answers 200 within 2 s (a readiness check)."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ProcessGroup(Mapping[str, "subprocess.Popen[bytes]"]):
    """Daemons started in order, each logging to ``WORKDIR/NAME.log``, awaited by a check,
    and stopped by PID in reverse start order.

    ``on_start(name, process)`` is called for each process started (the node records
    it for the cleanup after a crash). A process started again under the same name (a
    restart) keeps its place in the order. A read-only mapping of name -> process.
    """

    def __init__(
        self,
        workdir: Callable[[], Path],
        *,
        error: type[Exception],
        start_timeout: float,
        interval: float = 0.05,
        on_start: Callable[[str, subprocess.Popen[bytes]], None] | None = None,
    ) -> None:
        self._workdir = workdir
        self._interval = interval
        self._error = error
        self.start_timeout = start_timeout
        self.on_start = on_start
        self._order: list[str] = []
        self._running: dict[str, subprocess.Popen[bytes]] = {}

    def __getitem__(self, name: str) -> subprocess.Popen[bytes]:
        return self._running[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._order if name in self._running)

    def __len__(self) -> int:
        return len(self._running)

    def log(self, name: str) -> Path:
        """Where process ``name`` logs."""
        return self._workdir() / f"{name}.log"

    def spawn(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name`` in the work directory.

        Raises:
            error: it cannot be started (the executable is missing...).
        """
        try:
            proc = start_logged(argv, self.log(name), cwd=self._workdir(), env=env)
        except OSError as exc:
            raise self._error(f"cannot start {name} ({argv[0]}): {exc}") from exc
        if name not in self._order:
            self._order.append(name)
        self._running[name] = proc
        if self.on_start is not None:
            self.on_start(name, proc)
        return proc

    def await_ready(
        self, name: str, check: Callable[[], bool], timeout: float | None = None
    ) -> None:
        """Wait until ``check`` passes for ``name`` (``start_timeout`` by default).

        Raises:
            error: it exited or was not ready in time (with the tail of its log).
        """
        await_process(
            name,
            self._running[name],
            self.log(name),
            check,
            timeout=timeout or self.start_timeout,
            interval=self._interval,
            error=self._error,
        )

    def stop(self, name: str, *, grace: float = 10.0) -> subprocess.Popen[bytes] | None:
        """Stop ``name`` by PID (SIGTERM, ``grace`` s, SIGKILL); the process, if it ran."""
        proc = self._running.pop(name, None)
        if proc is not None:
            stop_process(proc, grace=grace)
        return proc

    def stop_all(self, *, keep: Collection[str] = (), grace: float = 10.0) -> None:
        """Stop every process but those in ``keep``, in reverse start order."""
        for name in reversed(self._order):
            if name not in keep:
                self.stop(name, grace=grace)

    def pids(self) -> dict[str, int]:
        """name -> PID of each process still running."""
        return {name: proc.pid for name, proc in self.items() if proc.poll() is None}
