"""HTTP side of a Jupyter server: token login (form or header), XSRF, typed HTTP errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from ._errors import JupyterWebError

__all__ = ["LabHttp"]

_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class LabHttp:
    """An ``httpx.AsyncClient`` logged in to one Jupyter server.

    ``login()`` fetches the login page (which sets the ``_xsrf`` cookie), then
    posts the token as the login form's password, which sets the login cookie,
    as a browser does; later non-GET requests carry the ``X-XSRFToken`` header.
    A server without a login page (Jupyter Kernel Gateway) gets the token in an
    ``Authorization: token ...`` header instead. The token never appears in a
    URL. Every failure raises :class:`JupyterWebError` with the token redacted.
    """

    def __init__(self, base_url: str, token: str, username: str) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        self.base_url = base_url
        self._token = token
        self._username = username
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=_TIMEOUT, follow_redirects=False, trust_env=False
        )
        #: Whether the server has a login page (``None`` before :meth:`login`).
        self.has_login_page: bool | None = None

    async def aclose(self) -> None:
        await self.client.aclose()

    @property
    def xsrf(self) -> str | None:
        return self.client.cookies.get("_xsrf")

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.client.cookies.jar)

    def websocket_headers(self) -> dict[str, str]:
        """Headers that authenticate a websocket handshake as this client."""
        headers: dict[str, str] = {}
        cookies = self.cookie_header()
        if cookies:
            headers["Cookie"] = cookies
        if self.xsrf:
            headers["X-XSRFToken"] = self.xsrf
        authorization = self.client.headers.get("Authorization")
        if authorization:
            headers["Authorization"] = authorization
        return headers

    def error(
        self,
        message: str,
        *,
        method: str,
        path: str,
        started_at: datetime,
        status: int | None = None,
        body: str | None = None,
    ) -> JupyterWebError:
        """A :class:`JupyterWebError` about ``method path`` (token redacted)."""
        return self._error(
            message, method=method, path=path, started_at=started_at, status=status, body=body
        )

    def url(self, path: str) -> str:
        return self.base_url + path.lstrip("/")

    def _error(
        self,
        message: str,
        *,
        method: str,
        path: str,
        started_at: datetime,
        status: int | None = None,
        body: str | None = None,
    ) -> JupyterWebError:
        return JupyterWebError(
            message,
            method=method,
            url=self.url(path),
            status=status,
            body=body,
            user=self._username,
            started_at=started_at,
            secrets=(self._token,),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...] = (200, 201, 204),
        what: str | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request relative to the base URL; raise ``JupyterWebError`` unless ``expect``.

        Raises:
            JupyterWebError: On a connection failure or an unexpected status.
        """
        started_at = datetime.now(tz=UTC)
        headers = dict(kwargs.pop("headers", {}) or {})
        if method != "GET" and self.xsrf:
            headers["X-XSRFToken"] = self.xsrf
        try:
            response = await self.client.request(
                method, path.lstrip("/"), headers=headers, **kwargs
            )
        except httpx.HTTPError as e:
            raise self._error(
                f"{what or 'request'} failed: {type(e).__name__}: {e}",
                method=method,
                path=path,
                started_at=started_at,
            ) from None
        if response.status_code not in expect:
            raise self._error(
                f"{what or 'request'} failed with HTTP {response.status_code}",
                method=method,
                path=path,
                started_at=started_at,
                status=response.status_code,
                body=response.text,
            )
        return response

    async def login(self) -> bool:
        """Log in with the token; return whether the server has a login page.

        Through the login form where there is one; otherwise (HTTP 404, e.g.
        Jupyter Kernel Gateway) the token goes in an ``Authorization`` header,
        checked with ``GET api/kernelspecs``.

        Raises:
            JupyterWebError: If the server is unreachable or the token is refused.
        """
        page = await self.request("GET", "login", expect=(200, 404), what="fetching the login page")
        if page.status_code == 404:
            self.has_login_page = False
            self.client.headers["Authorization"] = f"token {self._token}"
            response = await self.request(
                "GET", "api/kernelspecs", expect=(200, 401, 403), what="checking the token"
            )
            if response.status_code != 200:
                raise self._error(
                    "login refused: the server did not accept the token",
                    method="GET",
                    path="api/kernelspecs",
                    started_at=datetime.now(tz=UTC),
                    status=response.status_code,
                    body=response.text,
                )
            return False
        self.has_login_page = True
        if not self.xsrf:
            raise self._error(
                "the login page set no _xsrf cookie",
                method="GET",
                path="login",
                started_at=datetime.now(tz=UTC),
            )
        response = await self.request(
            "POST",
            "login",
            data={"_xsrf": self.xsrf, "password": self._token},
            expect=(200, 302, 303, 401, 403),
            what="login",
        )
        if response.status_code in (401, 403) or response.status_code == 200:
            # 200 means the form was rendered again: the token was not accepted.
            raise self._error(
                "login refused: the lab did not accept the token",
                method="POST",
                path="login",
                started_at=datetime.now(tz=UTC),
                status=response.status_code,
                body=response.text,
            )
        return True
