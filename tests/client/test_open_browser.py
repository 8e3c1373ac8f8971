"""`kernelsession open` in a real browser: headless Chromium, a real jupyter-server with
JupyterLab, the real CLI process. The upstream is the lab's loopback address here
(``--url``); tests/e2e/test_open.py runs the same through the API server's port-forward.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from headless import (
    browser_missing,
    headless_chromium,
    run_in_notebook,
    stop_process_tree,
    wait_for_launcher,
)
from selenium.webdriver.common.by import By
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from kernelsession.client.testing import LocalJupyterServer

CLI = str(Path(sys.executable).parent / "kernelsession")
LOGIN = "kernelsession-login"
# JupyterLab asks the internet for news and new releases unless told not to: traffic
# stays on loopback.
LAB_OFFLINE = [
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    "--LabApp.news_url=None",
]


@dataclass
class OpenProcess:
    """A running `kernelsession open` and the URL it printed."""

    process: subprocess.Popen[str]
    url: str
    stderr_path: Path
    started: float
    token: str

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def interrupt(self) -> int:
        """Ctrl-C (SIGINT by PID) and the exit code."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(30)


def start_open(tmp_path: Path, lab: LocalJupyterServer, *extra: str) -> OpenProcess:
    token_file = tmp_path / f"token-{lab.port}"
    token_file.write_text(lab.token)
    token_file.chmod(0o600)
    stderr_path = tmp_path / f"open-{lab.port}.stderr"
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_TOKEN", "DISPLAY")}
    started = time.monotonic()
    with stderr_path.open("w") as err:
        process = subprocess.Popen(
            [CLI, "open", "--url", lab.url, "--token-file", str(token_file), "-v", *extra],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # the one line it prints (pytest-timeout bounds this)
    assert line, f"open printed nothing; stderr:\n{stderr_path.read_text()}"
    return OpenProcess(process, line.strip(), stderr_path, started, lab.token)


@pytest.fixture(scope="module")
def jupyterlab() -> Iterator[LocalJupyterServer]:
    """A jupyter-server with JupyterLab for this module (the lab needs its token)."""
    server = LocalJupyterServer(extra_args=LAB_OFFLINE)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_lab() -> Iterator[LocalJupyterServer]:
    """A lab of its own (a used lab restores its workspace: no launcher in front)."""
    with LocalJupyterServer(extra_args=LAB_OFFLINE) as server:
        yield server


@contextmanager
def running_open(tmp_path: Path, lab: LocalJupyterServer) -> Iterator[OpenProcess]:
    proc = start_open(tmp_path, lab)
    try:
        yield proc
    finally:
        stop_process_tree(proc.process)


@pytest.fixture
def opened(tmp_path: Path, jupyterlab: LocalJupyterServer) -> Iterator[OpenProcess]:
    with running_open(tmp_path, jupyterlab) as proc:
        yield proc


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_browser_opens_lab_runs_code_and_never_sees_the_token(
    tmp_path: Path, fresh_lab: LocalJupyterServer
) -> None:
    token = fresh_lab.token
    with headless_chromium(tmp_path) as driver, running_open(tmp_path, fresh_lab) as opened:
        printed = time.monotonic() - opened.started
        assert opened.url.startswith("http://127.0.0.1:")
        assert f"/lab?{LOGIN}=" in opened.url
        assert token not in opened.url
        driver.get(opened.url)
        wait_for_launcher(driver)
        rendered = time.monotonic() - opened.started
        # the one-time code is spent and gone from the address bar
        assert driver.current_url == opened.origin + "/lab"
        try:
            run_in_notebook(driver, "print(6*7)", "42")
        except Exception:
            driver.save_screenshot(str(tmp_path / "failure.png"))
            raise
        outputs = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-OutputArea-output")
        assert any(o.text.strip() == "42" for o in outputs)
        screenshot = tmp_path / "jupyterlab.png"
        assert driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000

        # pages served: the DOM, the page config and the raw /lab page as the browser gets it
        assert token not in driver.page_source
        config = json.loads(
            driver.execute_script(
                "return document.getElementById('jupyter-config-data').textContent"
            )
        )
        assert config["token"] == ""
        raw = driver.execute_script(
            "return fetch('/lab', {credentials: 'same-origin'}).then(r => r.text())"
        )
        assert "jupyter-config-data" in raw
        assert token not in raw

        timing = (
            f"open -> URL printed: {printed:.2f} s; "
            f"open -> JupyterLab launcher rendered: {rendered:.2f} s\n"
        )
        (tmp_path / "timing.txt").write_text(timing)
        print(timing, end="")
        assert opened.interrupt() == 0
        stderr = opened.stderr()
        assert "Traceback" not in stderr
        assert "request" in stderr  # -v logs every request...
        assert token not in stderr  # ...and never the token
        assert "stopped" in stderr
        assert "interrupted" not in stderr


def test_login_link_is_one_time_and_the_port_is_guarded(opened: OpenProcess) -> None:
    with httpx.Client(trust_env=False) as browser, httpx.Client(trust_env=False) as other:
        first = browser.get(opened.url)
        assert first.status_code == 303
        assert first.headers["location"] == "/lab"
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert browser.get(opened.origin + "/api/status").status_code == 200
        # the same link again, from someone without the cookie: spent
        replay = other.get(opened.url)
        assert replay.status_code == 403
        assert "already used" in replay.text
        # no cookie: refused, whatever the path
        for path in ("/lab", "/api/kernels", "/api/contents", "/static/lab/"):
            assert other.get(opened.origin + path).status_code == 403
        # jupyter-server writes the token into its pages (404 page, /lab page config,
        # tree redirect): none of it reaches the browser
        for path in ("/no-such-page", "/lab", "/lab/tree", "/tree", "/api/me", "/"):
            served = browser.get(opened.origin + path, follow_redirects=True)
            assert served.status_code in (200, 404), path
            assert opened.token not in served.text, path
            assert all(opened.token not in v for v in served.headers.values()), path
            if path == "/no-such-page":  # where the lab writes it, now empty
                assert 'data-jupyter-api-token=""' in served.text
        # the browser that logged in may open the link again (a second tab)
        assert browser.get(opened.url).status_code == 303
        # DNS rebinding: another Host name on the same address
        port = opened.origin.rsplit(":", 1)[1]
        rebound = browser.get(opened.origin + "/api/status", headers={"host": f"evil.test:{port}"})
        assert rebound.status_code == 421
        # a page from another origin (another site, or another port on 127.0.0.1)
        for origin in ("http://evil.test", f"http://127.0.0.1:{int(port) + 1}"):
            cross = browser.post(opened.origin + "/api/kernels", headers={"origin": origin})
            assert cross.status_code == 403
        # the browser's own origin may
        same = browser.get(opened.origin + "/api/kernels", headers={"origin": opened.origin})
        assert same.status_code == 200
        # websocket upgrades pass the same guard
        ws_url = opened.origin.replace("http://", "ws://") + "/api/events/subscribe"
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        with pytest.raises(InvalidStatus) as no_cookie:
            ws_connect(ws_url, open_timeout=30)
        assert no_cookie.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as foreign:
            ws_connect(ws_url, origin="http://evil.test", additional_headers={"Cookie": cookie})
        assert foreign.value.response.status_code == 403
        with ws_connect(ws_url, additional_headers={"Cookie": cookie}, open_timeout=30) as ws:
            assert ws.protocol.state.name == "OPEN"


def test_two_labs_side_by_side(tmp_path: Path, jupyterlab: LocalJupyterServer) -> None:
    with LocalJupyterServer(extra_args=LAB_OFFLINE) as second:
        a = start_open(tmp_path, jupyterlab)
        b = start_open(tmp_path, second)
        try:
            assert a.origin != b.origin
            with httpx.Client(trust_env=False, follow_redirects=True) as browser:
                # one browser, both labs: each proxy keeps its own cookie
                assert browser.get(a.url).status_code == 200
                assert browser.get(b.url).status_code == 200
                root_a = browser.get(a.origin + "/api/contents").json()
                root_b = browser.get(b.origin + "/api/contents").json()
                assert root_a["path"] == root_b["path"] == ""
                put = browser.put(
                    a.origin + "/api/contents/only-in-a.txt",
                    json={"type": "file", "format": "text", "content": "a"},
                )
                assert put.status_code == 201
                assert browser.get(a.origin + "/api/contents/only-in-a.txt").status_code == 200
                assert browser.get(b.origin + "/api/contents/only-in-a.txt").status_code == 404
            assert a.interrupt() == 0
            assert b.interrupt() == 0
        finally:
            stop_process_tree(a.process)
            stop_process_tree(b.process)


def test_port_option_and_port_taken(tmp_path: Path, jupyterlab: LocalJupyterServer) -> None:
    a = start_open(tmp_path, jupyterlab)
    try:
        port = a.origin.rsplit(":", 1)[1]
        token_file = tmp_path / "token"
        token_file.write_text(jupyterlab.token)
        taken = subprocess.run(
            [CLI, "open", "--url", jupyterlab.url, "--token-file", str(token_file), "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert taken.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert "Traceback" not in taken.stderr
        assert taken.stdout == ""
    finally:
        stop_process_tree(a.process)


def test_wrong_token_unreachable_lab_and_usage_errors(
    tmp_path: Path, jupyterlab: LocalJupyterServer
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, "open", *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    bad = run("--url", jupyterlab.url, "--token-file", str(wrong), "--no-browser")
    assert bad.returncode == 1
    assert "answered HTTP 403" in bad.stderr
    assert "not-the-token" not in bad.stderr + bad.stdout

    # a port nothing listens on (bound, never listened, closed: connection refused)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/"
    gone = run("--url", dead_url, "--token-file", str(wrong), "--no-browser")
    assert gone.returncode == 1
    assert "cannot connect to 127.0.0.1" in gone.stderr

    for args in ((), ("--url", jupyterlab.url), ("alice", "--url", jupyterlab.url)):
        usage = run(*args)
        assert usage.returncode == 2, usage.stderr
        assert "kernelsession open: error:" in usage.stderr
    for result in (bad, gone):
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


def test_ctrl_c_while_the_lab_does_not_answer_yet(tmp_path: Path) -> None:
    """A lab that accepts connections but never answers (a bare listening socket, a real
    hang): open waits, Ctrl-C ends it cleanly with exit 0 and prints no URL."""
    token_file = tmp_path / "token"
    token_file.write_text("x" * 48)
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        port = hung.getsockname()[1]
        stderr_path = tmp_path / "open.stderr"
        with stderr_path.open("w") as err:
            process = subprocess.Popen(
                [
                    CLI,
                    "open",
                    "--url",
                    f"http://127.0.0.1:{port}/",
                    "--token-file",
                    str(token_file),
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        try:
            connection, _ = hung.accept()  # open's check of the lab has connected
            with connection:
                connection.settimeout(30)
                assert connection.recv(4096).startswith(b"GET /api/status HTTP/1.1")
                process.send_signal(signal.SIGINT)
                assert process.wait(30) == 0
        finally:
            stop_process_tree(process)
        assert process.stdout is not None
        assert process.stdout.read() == ""
        stderr = stderr_path.read_text()
        assert "interrupted" in stderr
        assert "Traceback" not in stderr
        assert "x" * 48 not in stderr


def test_lab_under_a_base_url(tmp_path: Path) -> None:
    """A lab served under /user/alice/ (like a JupyterHub single-user server)."""
    with (
        LocalJupyterServer(base_url="/user/alice/", extra_args=LAB_OFFLINE) as lab,
        running_open(tmp_path, lab) as opened,
        httpx.Client(trust_env=False) as browser,
    ):
        assert opened.url.startswith(opened.origin + f"/user/alice/lab?{LOGIN}=")
        login = browser.get(opened.url)
        assert login.status_code == 303
        assert login.headers["location"] == "/user/alice/lab"
        page = browser.get(opened.origin + "/user/alice/lab")
        assert page.status_code == 200
        assert '"baseUrl": "/user/alice/"' in page.text
        assert lab.token not in page.text
        assert opened.interrupt() == 0


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_one_browser_two_labs(tmp_path: Path) -> None:
    """Two `open`s side by side in one real browser: cookies are not scoped by port, so
    each proxy's cookie has its own name and logging in to one keeps the other.
    (Fresh labs: a used one restores its workspace, with no launcher in front.)"""
    with (
        LocalJupyterServer(extra_args=LAB_OFFLINE) as first,
        LocalJupyterServer(extra_args=LAB_OFFLINE) as second,
        running_open(tmp_path, first) as a,
        running_open(tmp_path, second) as b,
        headless_chromium(tmp_path) as driver,
    ):
        driver.get(a.url)
        wait_for_launcher(driver)
        driver.get(b.url)
        wait_for_launcher(driver)
        names = {c["name"] for c in driver.get_cookies()}
        assert {f"kernelsession-{p.origin.rsplit(':', 1)[1]}" for p in (a, b)} <= names
        for lab in (a, b):  # both still logged in, without their (spent) links
            driver.get(lab.origin + "/lab")
            wait_for_launcher(driver)
            assert driver.current_url == lab.origin + "/lab"


def test_browser_flag_hands_the_url_to_the_default_browser(
    tmp_path: Path, jupyterlab: LocalJupyterServer
) -> None:
    """`--browser` runs the user's browser command ($BROWSER, as Python's webbrowser
    reads it) with the printed URL; here that command records what it was given."""
    record = tmp_path / "opened-url"
    launcher = tmp_path / "browser.sh"
    launcher.write_text(f'#!/bin/sh\nprintf %s "$1" > {record}.tmp && mv {record}.tmp {record}\n')
    launcher.chmod(0o755)
    token_file = tmp_path / "token"
    token_file.write_text(jupyterlab.token)
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_TOKEN", "DISPLAY")}
    env["BROWSER"] = f"{launcher} %s"
    process = subprocess.Popen(
        [CLI, "open", "--url", jupyterlab.url, "--token-file", str(token_file), "--browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        deadline = time.monotonic() + 30
        while not record.exists():  # the launcher runs once the URL is printed
            assert time.monotonic() < deadline, "the browser command did not run"
            time.sleep(0.05)  # polling the condition above, bounded by the deadline
        assert record.read_text() == url
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        stop_process_tree(process)
