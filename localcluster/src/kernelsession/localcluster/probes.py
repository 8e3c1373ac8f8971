"""Executing probes (httpGet, tcpSocket, exec) the way a kubelet does.

A probe succeeds on HTTP 200-399 (redirects are not followed), on an accepted TCP
connection, or on exit status 0 of the exec command; anything else, including a
timeout after ``timeoutSeconds``, is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from .podspec import ProbeSpec

USER_AGENT = "kube-probe/1.35"


async def run_probe(
    spec: ProbeSpec,
    session: aiohttp.ClientSession,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[bool, str]:
    """Run one probe; return (success, a short description of the outcome).

    Never raises for a failing target (a failure is a result); cancellation propagates.
    """
    try:
        if spec.kind == "http":
            return await _http(spec, session)
        if spec.kind == "tcp":
            return await _tcp(spec)
        if spec.kind == "exec":
            return await _exec(spec, env or {}, cwd)
    except TimeoutError:
        return False, f"timeout after {spec.timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return False, f"unsupported probe kind {spec.kind}"


async def _http(spec: ProbeSpec, session: aiohttp.ClientSession) -> tuple[bool, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    headers.update(dict(spec.headers))
    async with session.get(
        spec.url,
        headers=headers,
        allow_redirects=False,
        ssl=False,
        timeout=aiohttp.ClientTimeout(total=spec.timeout),
    ) as resp:
        await resp.read()
        ok = 200 <= resp.status < 400
        return ok, f"HTTP probe {spec.url} returned {resp.status}"


async def _tcp(spec: ProbeSpec) -> tuple[bool, str]:
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(spec.host, spec.port), timeout=spec.timeout
    )
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"TCP {spec.host}:{spec.port} accepted"


async def _exec(spec: ProbeSpec, env: Mapping[str, str], cwd: Path | None) -> tuple[bool, str]:
    if not spec.command:
        return False, "exec probe without command"
    proc = await asyncio.create_subprocess_exec(
        *spec.command,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=spec.timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    text = out.decode(errors="replace").strip()[-200:]
    return proc.returncode == 0, f"exec probe exited {proc.returncode}: {text}"
