"""A lab through its Ingress, as people on a platform open it: the real ingress controller
(Traefik, in the local cluster) routes ``http://HOST/labs/NS/NAME/`` to the lab's Service,
the lab's NetworkPolicy admits the controller, and JupyterLab works in headless Chromium:
the login page takes the token, the launcher renders, a notebook runs ``print(6*7)``.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from headless import browser_missing, headless_chromium, run_in_notebook, wait_for_launcher
from helpers import INGRESS_HOST, LABS, apply_session, lab_path, wait_for, wait_phase
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _token(cluster: LocalCluster, name: str) -> str:
    raw = cluster.get_json("-n", LABS, f"secret/{name}-token")["data"]["token"]
    return base64.b64decode(raw).decode()


def _through(controller: Any, path: str, token: str | None = None) -> httpx.Response:
    """GET ``path`` through the controller's Service with the Ingress host."""
    headers = {"Host": INGRESS_HOST}
    if token:
        headers["Authorization"] = f"token {token}"
    with httpx.Client(trust_env=False, timeout=10) as http:
        return http.get(f"http://{controller.service_ip}:{controller.port}{path}", headers=headers)


def test_api_through_the_ingress_controller(
    installed: LocalCluster,
    operator: InClusterOperator,
    ingress_controller: Any,
    session_name: str,
) -> None:
    apply_session(installed, session_name, {"user": "ines"})
    status = wait_phase(installed, session_name, "Ready", timeout=120)
    path = lab_path(session_name)
    assert urlsplit(status["externalURL"]).path == path
    token = _token(installed, session_name)
    # Ready means the lab answers; the controller serves the route once the EndpointSlice
    # of the now-ready pod reaches it (Traefik skips a Service without endpoints: 404).
    ready = time.monotonic()
    ok = wait_for(
        lambda: (
            (r := _through(ingress_controller, f"{path}api/status", token)).status_code != 404 and r
        ),
        timeout=30,
        what="the route served by the controller",
    )
    print(f"route served {time.monotonic() - ready:.2f} s after the session was Ready")
    assert ok.status_code == 200, ok.text
    assert "kernels" in ok.json()
    # the lab image's JupyterLab settings: no news fetched, no update check
    notification = _through(
        ingress_controller,
        f"{path}lab/api/settings/@jupyterlab/apputils-extension:notification",
        token,
    )
    assert notification.status_code == 200, notification.text
    defaults = notification.json()["schema"]["properties"]  # overrides.json sets defaults
    assert defaults["fetchNews"]["default"] == "false"
    assert defaults["checkForUpdates"]["default"] is False
    assert _through(ingress_controller, f"{path}api/status").status_code == 403  # no token
    elsewhere = _through(ingress_controller, lab_path(session_name + "-nope") + "api/status")
    assert elsewhere.status_code == 404


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_jupyterlab_in_a_browser_through_the_ingress(
    installed: LocalCluster,
    operator: InClusterOperator,
    ingress_controller: Any,
    session_name: str,
    tmp_path: Path,
) -> None:
    apply_session(installed, session_name, {"user": "ines"})
    status = wait_phase(installed, session_name, "Ready", timeout=120)
    external = status["externalURL"]
    token = _token(installed, session_name)
    hosts = {INGRESS_HOST: ingress_controller.service_ip}
    port = ingress_controller.port
    url = external if port == 80 else external.replace(INGRESS_HOST, f"{INGRESS_HOST}:{port}")
    wait_for(
        lambda: _through(ingress_controller, lab_path(session_name) + "api").status_code != 404,
        timeout=30,
        what="the route served by the controller",
    )
    with headless_chromium(tmp_path, hosts) as driver:
        started = time.monotonic()
        driver.get(url + "lab")
        # jupyter-server's own login page, under the lab's path: the user pastes the token
        wait = WebDriverWait(driver, 60)
        field = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input[type=password]")))
        assert urlsplit(driver.current_url).path == f"{lab_path(session_name)}login"
        field.send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#login_submit, button[type=submit]").click()
        wait_for_launcher(driver)
        rendered = time.monotonic() - started
        assert urlsplit(driver.current_url).path.startswith(f"{lab_path(session_name)}lab")
        run_in_notebook(driver, "print(6*7)", "42")
        assert driver.save_screenshot(str(tmp_path / "jupyterlab-ingress.png"))
        assert token not in driver.current_url
        print(f"ingress URL -> JupyterLab rendered (login included): {rendered:.2f} s")
