"""`kernelsession open`'s proxy and the lab's own login: jupyter-server's ``username-*``
login cookie (set on requests that carry the token, good for as long as the lab runs)
never reaches the browser, and the printed login code works once, within its time.

Real jupyter-server with JupyterLab, the real proxy (:class:`LocalProxy`) in front of it
over TCP; the browser is an HTTP client with a cookie jar.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from helpers import async_wait_for

from kernelsession.client.cli._guard import LOGIN_CODE_SECONDS, Guard
from kernelsession.client.cli._localproxy import LocalProxy
from kernelsession.client.cli._upstream import TCPUpstream
from kernelsession.client.testing import LocalJupyterServer

LAB_OFFLINE = [
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    "--LabApp.news_url=None",
]
PATHS = ["/lab", "/lab/tree", "/tree", "/api/status", "/api/me", "/api/kernels", "/nothing"]


@pytest.fixture(scope="module")
def jupyterlab() -> Iterator[LocalJupyterServer]:
    with LocalJupyterServer(extra_args=LAB_OFFLINE) as server:
        yield server


def _set_cookies(response: httpx.Response) -> list[str]:
    chain = [*response.history, response]
    return [v for r in chain for v in r.headers.get_list("set-cookie")]


async def test_the_lab_sets_its_login_cookie_when_given_the_token(
    jupyterlab: LocalJupyterServer,
) -> None:
    """What the proxy must hide exists: straight to the lab, a token request gets it."""
    async with httpx.AsyncClient(trust_env=False) as direct:
        response = await direct.get(
            jupyterlab.url + "lab", headers={"Authorization": f"token {jupyterlab.token}"}
        )
    assert response.status_code == 200
    assert any(c.startswith("username-") for c in _set_cookies(response)), response.headers


async def test_lab_login_cookie_never_reaches_the_browser(
    jupyterlab: LocalJupyterServer,
) -> None:
    async with (
        LocalProxy(TCPUpstream.from_url(jupyterlab.url), token=jupyterlab.token) as proxy,
        httpx.AsyncClient(trust_env=False, follow_redirects=True) as browser,
    ):
        origin = f"http://127.0.0.1:{proxy.port}"
        seen = _set_cookies(await browser.get(proxy.url))
        for path in PATHS:
            response = await browser.get(origin + path)
            assert response.status_code in (200, 404), (path, response.status_code)
            seen += _set_cookies(response)
        kernel = await browser.post(origin + "/api/kernels", json={})
        assert kernel.status_code == 201
        seen += _set_cookies(kernel)
        deleted = await browser.delete(origin + f"/api/kernels/{kernel.json()['id']}")
        assert deleted.status_code == 204
        assert not [c for c in seen if c.startswith("username-")], seen
        assert not [n for n in browser.cookies if n.startswith("username-")]
        # what the browser does get: the proxy's own cookie and the lab's XSRF cookie
        assert f"kernelsession-{proxy.port}" in browser.cookies
        assert any(c.startswith("_xsrf=") for c in seen), seen


async def test_login_code_works_once(jupyterlab: LocalJupyterServer) -> None:
    async with (
        LocalProxy(TCPUpstream.from_url(jupyterlab.url), token=jupyterlab.token) as proxy,
        httpx.AsyncClient(trust_env=False) as browser,
        httpx.AsyncClient(trust_env=False) as other,
    ):
        first = await browser.get(proxy.url)
        assert first.status_code == 303
        replay = await other.get(proxy.url)
        assert replay.status_code == 403
        assert (await other.get(f"http://127.0.0.1:{proxy.port}/api/status")).status_code == 403
        assert (await browser.get(f"http://127.0.0.1:{proxy.port}/api/status")).status_code == 200


async def test_login_code_expires(jupyterlab: LocalJupyterServer) -> None:
    async with (
        LocalProxy(
            TCPUpstream.from_url(jupyterlab.url), token=jupyterlab.token, login_code_seconds=1
        ) as proxy,
        httpx.AsyncClient(trust_env=False) as browser,
    ):
        assert proxy.guard is not None
        guard = proxy.guard
        await async_wait_for(lambda: guard.code_expired, timeout=10, what="the code expired")
        late = await browser.get(proxy.url)
        assert late.status_code == 403
        assert "expired" in late.text
        assert "set-cookie" not in late.headers
        assert not browser.cookies
        refused = await browser.get(f"http://127.0.0.1:{proxy.port}/api/status")
        assert refused.status_code == 403


def test_the_command_uses_a_code_of_at_most_a_minute() -> None:
    assert LOGIN_CODE_SECONDS <= 60
    assert Guard(port=1).code_seconds == LOGIN_CODE_SECONDS
