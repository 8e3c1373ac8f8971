"""Headless Chromium driven through a chromedriver this test run starts (and stops by PID).

Network: Chromium resolves no host name but loopback (``--host-resolver-rules``),
uses no proxy and has background networking, sync and component updates off, so the
only traffic is to 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from kernelsession.client.testing import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (Debian packages chromium and chromium-driver)"
    return None


def stop_process_tree(
    process: subprocess.Popen[bytes] | subprocess.Popen[str], *, grace: float = 10
) -> None:
    """SIGTERM a process we started, give it ``grace`` seconds, then SIGKILL it and every
    descendant it had, by PID."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
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
    port = free_port()
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


def chromium_options(profile: Path, hosts: Mapping[str, str] | None = None) -> Options:
    """Chromium's options; ``hosts`` maps names to the local node's addresses (an
    Ingress host to its controller's Service IP), everything else stays unresolvable."""
    mapped = "".join(f"MAP {name} {ip}, " for name, ip in (hosts or {}).items())
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
        f"--host-resolver-rules={mapped}MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    ):
        options.add_argument(arg)
    return options


@contextmanager
def headless_chromium(
    tmp_path: Path, hosts: Mapping[str, str] | None = None
) -> Iterator[webdriver.Remote]:
    """A headless Chromium session; quits it and stops chromedriver (and Chromium) by PID."""
    with chromedriver(tmp_path / "chromedriver.log") as url:
        options = chromium_options(tmp_path / "p", hosts)
        driver = webdriver.Remote(command_executor=url, options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for_launcher(driver: WebDriver, timeout: float = 90) -> None:
    """Until JupyterLab's launcher shows its cards."""
    WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, ".jp-Launcher .jp-LauncherCard"))
    )


def run_in_notebook(driver: WebDriver, code: str, expected: str, timeout: float = 60) -> None:
    """From the launcher: open a Python notebook, run ``code``, wait for ``expected``."""
    wait = WebDriverWait(driver, timeout)
    card = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, '.jp-LauncherCard[data-category="Notebook"]'))
    )
    card.click()
    # JupyterLab drops a cell run before the notebook's kernel is connected: wait for it
    wait.until(
        ec.presence_of_element_located(
            (By.XPATH, "//*[@id='jp-main-statusbar']//*[contains(text(), '| Idle')]")
        )
    )
    editor = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell .cm-content"))
    )
    editor.click()
    editor.send_keys(code)
    editor.send_keys(Keys.SHIFT, Keys.ENTER)
    wait.until(
        ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, ".jp-NotebookPanel .jp-OutputArea-output"), expected
        )
    )
