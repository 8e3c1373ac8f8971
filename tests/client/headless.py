"""Headless Chromium driven through a chromedriver this test run starts (and stops by PID).

Network: Chromium resolves no host name but loopback (``--host-resolver-rules``),
uses no proxy and has background networking, sync and component updates off, so the
only traffic is to 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
from selenium import webdriver
from selenium.webdriver.chrome.options import Options

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (Debian packages chromium and chromium-driver)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process_tree(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM a process we started and every descendant it has, by PID; then SIGKILL."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(children, timeout=10)


@contextmanager
def chromedriver(log: Path) -> Iterator[str]:
    """Start chromedriver on a free loopback port; yield its URL; stop it and Chromium."""
    port = _free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(trust_env=False, timeout=2) as http:
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if http.get(f"{url}/status").json()["value"]["ready"]:
                        break
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                assert time.monotonic() < deadline, "chromedriver did not start in 30 s"
                time.sleep(0.05)  # polling the condition above, bounded by the deadline
        yield url
    finally:
        stop_process_tree(process)


def chromium_options(profile: Path) -> Options:
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,900",
        "--no-first-run",
        "--no-default-browser-check",
        "--no-proxy-server",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-features=OptimizationHints,MediaRouter,Translate",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    ):
        options.add_argument(arg)
    return options


@contextmanager
def headless_chromium(tmp_path: Path) -> Iterator[webdriver.Remote]:
    """A headless Chromium session; quits it and stops chromedriver (and Chromium) by PID."""
    with chromedriver(tmp_path / "chromedriver.log") as url:
        driver = webdriver.Remote(command_executor=url, options=chromium_options(tmp_path / "p"))
        try:
            yield driver
        finally:
            driver.quit()
