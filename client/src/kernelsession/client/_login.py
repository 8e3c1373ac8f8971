"""HTTP side of a lab: browser-style token login, XSRF, and typed HTTP errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from ._errors import JupyterWebError

__all__ = ["LabHttp"]

_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class LabHttp:
    """An ``httpx.AsyncClient`` logged in to one lab as a browser would be.

    ``login()`` fetches the login page (which sets the ``_xsrf`` cookie), then
    posts the token as the login form's password, which sets the login cookie.
    The token thus never appears in a URL. Later non-GET requests carry the
    ``X-XSRFToken`` header. Every failure raises :class:`JupyterWebError`
    with the token redacted.
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

    async def aclose(self) -> None:
        await self.client.aclose()

    @property
    def xsrf(self) -> str | None:
        return self.client.cookies.get("_xsrf")

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.client.cookies.jar)

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

    async def login(self) -> None:
        """Log in with the token through the login form.

        Raises:
            JupyterWebError: If the login page is unreachable or the token is refused.
        """
        await self.request("GET", "login", what="fetching the login page")
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
