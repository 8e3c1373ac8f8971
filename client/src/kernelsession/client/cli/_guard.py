"""The local proxy's decisions, pure: who may pass (:class:`Guard`: the one-time login
code, valid for :data:`LOGIN_CODE_SECONDS`, the session cookie, ``Host`` and ``Origin``),
the headers forwarded each way (jupyter-server's ``username-*`` login cookie in neither
direction), and the token kept out of what the browser gets (:func:`redact`)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

LOGIN_PARAMETER = "kernelsession-login"
"""Query parameter of the printed URL that carries the one-time login code."""

LOGIN_CODE_SECONDS = 60.0
"""How long the printed login code works (once)."""

LAB_LOGIN_COOKIE_PREFIX = b"username-"
"""jupyter-server's login cookie: ``username-{host}`` (non-alphanumerics as ``-``); it is
set on requests that carry the token and logs in whoever holds it while the lab runs."""


Headers = list[tuple[bytes, bytes]]


# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded, except the pair that asks
# for a websocket upgrade.
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
}
# Response bodies that are scanned for the token (and so buffered): text a browser reads.
_SCANNED_TYPES = (
    b"text/",
    b"application/json",
    b"application/javascript",
    b"application/xhtml",
    b"application/xml",
    b"image/svg",
)


@dataclass(frozen=True)
class Respond:
    """Answer the request locally (login redirect, refusal)."""

    status: int
    headers: Headers
    body: bytes = b""


@dataclass(frozen=True)
class Forward:
    """Forward the request with these headers."""

    headers: Headers


def header_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def text_response(status: int, text: str, extra: Headers | None = None) -> Respond:
    body = (text + "\n").encode()
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    return Respond(status, headers, body)


@dataclass
class Guard:
    """Who may use the local port: the holder of the one-time login code, then its cookie.

    Args:
        port: The local port (part of the allowed Host and Origin, and the cookie name).
        landing: Path the login redirects to (the lab's ``/lab``).
        code_seconds: How long the login code works, from the guard's creation.
    """

    port: int
    landing: str = "/lab"
    code_seconds: float = LOGIN_CODE_SECONDS
    login_code: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    session_cookie: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    login_used: bool = False
    issued: float = field(default_factory=time.monotonic)

    @property
    def code_expired(self) -> bool:
        return time.monotonic() - self.issued > self.code_seconds

    @property
    def cookie_name(self) -> str:
        # One name per port: several labs side by side keep their own cookies (cookies
        # are not port-scoped, names are).
        return f"{COOKIE_PREFIX}{self.port}"

    @property
    def origins(self) -> tuple[bytes, ...]:
        return (
            f"http://127.0.0.1:{self.port}".encode(),
            f"http://localhost:{self.port}".encode(),
        )

    def login_url(self) -> str:
        """The URL to print: opens the lab and logs the browser in, once."""
        return f"http://127.0.0.1:{self.port}{self.landing}?{LOGIN_PARAMETER}={self.login_code}"

    def has_cookie(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        for key, value in headers:
            if key.lower() != b"cookie":
                continue
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
            morsel = jar.get(self.cookie_name)
            if morsel is not None and secrets.compare_digest(
                morsel.value.encode(), self.session_cookie.encode()
            ):
                return True
        return False

    def check(
        self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Respond | Forward | None:
        """Decide about one request: a local answer, or None to forward it.

        (Callers build the forwarded headers with :func:`upstream_headers`.)
        """
        host = header_value(headers, b"host")
        if host not in (f"127.0.0.1:{self.port}".encode(), f"localhost:{self.port}".encode()):
            return text_response(421, "kernelsession open: wrong Host (use the printed URL)")
        origin = header_value(headers, b"origin")
        if origin is not None and origin not in self.origins:
            return text_response(403, "kernelsession open: cross-origin request refused")
        parts = urlsplit(target.decode("latin-1"))
        query = parse_qsl(parts.query, keep_blank_values=True)
        codes = [v for k, v in query if k == LOGIN_PARAMETER]
        if codes:
            rest = urlencode([(k, v) for k, v in query if k != LOGIN_PARAMETER])
            location = urlunsplit(("", "", parts.path or "/", rest, "")).encode()
            if self.has_cookie(headers):
                return Respond(303, [(b"location", location), (b"cache-control", b"no-store")])
            valid = not self.login_used and secrets.compare_digest(
                codes[0].encode(), self.login_code.encode()
            )
            if valid and self.code_expired:
                self.login_used = True  # spent: it never works later
                return text_response(
                    403,
                    f"kernelsession open: this login link expired (it works for "
                    f"{self.code_seconds:g} s); run `kernelsession open` again for a new one",
                )
            if not valid:
                return text_response(
                    403,
                    "kernelsession open: this login link was already used, expired or is "
                    "wrong; run `kernelsession open` again for a new one",
                )
            self.login_used = True
            cookie = f"{self.cookie_name}={self.session_cookie}; Path=/; HttpOnly; SameSite=Strict"
            return Respond(
                303,
                [
                    (b"location", location),
                    (b"set-cookie", cookie.encode()),
                    (b"cache-control", b"no-store"),
                ],
            )
        if not self.has_cookie(headers):
            return text_response(
                403,
                "kernelsession open: not logged in; open the URL that `kernelsession open` "
                "printed (it logs in this browser once)",
            )
        return None


def is_upgrade(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    connection = header_value(headers, b"connection") or b""
    tokens = {t.strip().lower() for t in connection.split(b",")}
    return b"upgrade" in tokens and header_value(headers, b"upgrade") is not None


COOKIE_PREFIX = "kernelsession-"


def _strip_cookie(value: bytes, name: str) -> bytes:
    """``value`` without the proxy's cookie, nor those of other ``open`` proxies.

    Browsers do not scope cookies by port, so every lab served on 127.0.0.1 receives
    every proxy's cookie; none of them is the lab's business.
    """
    kept = []
    for part in value.split(b";"):
        cookie_name = part.strip().split(b"=", 1)[0].strip()
        if not part.strip() or cookie_name == name.encode():
            continue
        if cookie_name.startswith((COOKIE_PREFIX.encode(), LAB_LOGIN_COOKIE_PREFIX)):
            continue  # also jupyter-server login cookies the browser holds from elsewhere
        kept.append(part.strip())
    return b"; ".join(kept)


def _is_lab_login_cookie(set_cookie: bytes) -> bool:
    """Whether a ``Set-Cookie`` value sets jupyter-server's login cookie."""
    return set_cookie.split(b"=", 1)[0].strip().startswith(LAB_LOGIN_COOKIE_PREFIX)


def upstream_headers(
    headers: Sequence[tuple[bytes, bytes]], *, token: str, cookie_name: str
) -> Headers:
    """The request headers to send to the lab.

    Drops hop-by-hop headers (keeping a websocket upgrade), any ``Authorization`` the
    browser sent, the cookies of ``open`` proxies and jupyter-server login cookies
    (``username-*``: the token authenticates every request) and ``Accept-Encoding``
    (bodies come back uncompressed so they can be scanned for the token); adds
    ``Authorization: token``.
    """
    upgrade = is_upgrade(headers)
    out: Headers = []
    for key, value in headers:
        name = key.lower()
        if name in _HOP_BY_HOP or name in (b"authorization", b"accept-encoding"):
            continue
        if name == b"cookie":
            value = _strip_cookie(value, cookie_name)
            if not value:
                continue
        out.append((name, value))
    if upgrade:
        out.append((b"connection", b"Upgrade"))
        out.append((b"upgrade", header_value(headers, b"upgrade") or b"websocket"))
    out.append((b"authorization", f"token {token}".encode()))
    return out


def scanned(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a response body is text a browser reads (and so scanned for the token)."""
    content_type = (header_value(headers, b"content-type") or b"").lower()
    if content_type.startswith(b"text/event-stream"):
        return False  # a stream that never ends: passed through as it comes
    if (header_value(headers, b"content-encoding") or b"identity").lower() != b"identity":
        return False  # compressed (not asked for): cannot hold the token in clear
    return content_type.startswith(_SCANNED_TYPES)


def redact(data: bytes, token: str) -> bytes:
    """``data`` without the token (jupyter-server writes it into JupyterLab's page)."""
    return data.replace(token.encode(), b"") if token else data


def downstream_headers(
    headers: Sequence[tuple[bytes, bytes]], *, token: str, body_length: int | None = None
) -> Headers:
    """The response headers to send to the browser.

    Drops hop-by-hop headers (a 101 keeps its ``Connection``/``Upgrade`` pair, added by
    the caller) and jupyter-server's login cookie (it logs in whoever holds it, for as long
    as the lab runs), removes the token from any header value, and with ``body_length`` (a
    scanned, rewritten body) replaces the framing headers with that length.
    """
    out: Headers = []
    for key, value in headers:
        name = key.lower()
        if name in _HOP_BY_HOP:
            continue
        if name == b"set-cookie" and _is_lab_login_cookie(value):
            continue
        if body_length is not None and name in (b"content-length", b"transfer-encoding"):
            continue
        out.append((name, redact(value, token)))
    if body_length is not None:
        out.append((b"content-length", str(body_length).encode()))
    return out
