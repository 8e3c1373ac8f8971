"""The local proxy's decisions and header rewriting: pure functions, no sockets."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from helpers import wait_for

from kernelsession.client.cli._guard import (
    LOGIN_PARAMETER,
    Guard,
    Respond,
    downstream_headers,
    redact,
    scanned,
    upstream_headers,
)

TOKEN = "0123456789abcdef" * 3
PORT = 43210
HOST = (b"host", f"127.0.0.1:{PORT}".encode())


def guard() -> Guard:
    return Guard(port=PORT)


def cookie_of(answer: Respond) -> tuple[bytes, bytes]:
    value = dict(answer.headers)[b"set-cookie"]
    return (b"cookie", value.split(b";", 1)[0])


def check(g: Guard, target: str, *headers: tuple[bytes, bytes]) -> Respond | None:
    answer = g.check(b"GET", target.encode(), [HOST, *headers])
    assert not (answer is not None and not isinstance(answer, Respond))
    return answer


def test_login_url_has_a_one_time_code_and_no_token() -> None:
    g = guard()
    url = g.login_url()
    assert url.startswith(f"http://127.0.0.1:{PORT}/lab?{LOGIN_PARAMETER}=")
    assert url.endswith(g.login_code)
    assert len(g.login_code) >= 40  # 32 random bytes
    assert g.login_code != guard().login_code


def test_login_sets_a_strict_httponly_cookie_and_redirects_once() -> None:
    g = guard()
    answer = check(g, f"/lab?{LOGIN_PARAMETER}={g.login_code}&reset")
    assert answer is not None
    assert answer.status == 303
    headers = dict(answer.headers)
    assert headers[b"location"] == b"/lab?reset="
    cookie = headers[b"set-cookie"].decode()
    assert cookie.startswith(f"kernelsession-{PORT}={g.session_cookie};")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert g.login_code not in cookie
    # spent: the same code without the cookie is refused
    again = check(g, f"/lab?{LOGIN_PARAMETER}={g.login_code}")
    assert again is not None
    assert again.status == 403
    assert b"already used" in again.body
    # with the cookie: forwarded, and the link just redirects
    assert check(g, "/lab", cookie_of(answer)) is None
    relink = check(g, f"/lab?{LOGIN_PARAMETER}={g.login_code}", cookie_of(answer))
    assert relink is not None
    assert relink.status == 303
    assert b"set-cookie" not in dict(relink.headers)


def test_wrong_code_does_not_spend_the_real_one() -> None:
    g = guard()
    wrong = check(g, f"/lab?{LOGIN_PARAMETER}=guess")
    assert wrong is not None
    assert wrong.status == 403
    right = check(g, f"/lab?{LOGIN_PARAMETER}={g.login_code}")
    assert right is not None
    assert right.status == 303


@pytest.mark.parametrize(
    "cookie",
    [
        b"",
        b"kernelsession-43210=wrong",
        b"kernelsession-43211=SESSION",  # another proxy's cookie name
        b"kernelsession-43210",
        b"\x00garbage=;;",
    ],
)
def test_requests_without_the_right_cookie_are_refused(cookie: bytes) -> None:
    g = guard()
    value = cookie.replace(b"SESSION", g.session_cookie.encode())
    answer = check(g, "/api/kernels", (b"cookie", value))
    assert answer is not None
    assert answer.status == 403


def test_cookie_among_others_is_found() -> None:
    g = guard()
    jar = f"_xsrf=2|abc; kernelsession-{PORT}={g.session_cookie}; username-x=y".encode()
    assert check(g, "/api/kernels", (b"cookie", jar)) is None


@pytest.mark.parametrize(
    "host", [b"evil.test:43210", b"127.0.0.1", b"127.0.0.1:80", b"localhost.evil.test:43210"]
)
def test_foreign_host_is_refused_dns_rebinding(host: bytes) -> None:
    g = guard()
    jar = (b"cookie", f"kernelsession-{PORT}={g.session_cookie}".encode())
    answer = g.check(b"GET", b"/lab", [(b"host", host), jar])
    assert answer is not None
    assert answer.status == 421


def test_localhost_name_is_accepted() -> None:
    g = guard()
    jar = (b"cookie", f"kernelsession-{PORT}={g.session_cookie}".encode())
    assert g.check(b"GET", b"/lab", [(b"host", f"localhost:{PORT}".encode()), jar]) is None


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (f"http://127.0.0.1:{PORT}", True),
        (f"http://localhost:{PORT}", True),
        ("http://evil.test", False),
        (f"http://127.0.0.1:{PORT + 1}", False),  # another local site: cookies are not per port
        ("null", False),
        (f"https://127.0.0.1:{PORT}", False),
    ],
)
def test_origin_must_be_the_proxy_itself(origin: str, allowed: bool) -> None:
    g = guard()
    jar = (b"cookie", f"kernelsession-{PORT}={g.session_cookie}".encode())
    answer = g.check(b"POST", b"/api/kernels", [HOST, jar, (b"origin", origin.encode())])
    assert (answer is None) is allowed


def header_values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


def test_upstream_headers_add_the_token_and_strip_what_the_lab_must_not_see() -> None:
    out = upstream_headers(
        [
            HOST,
            (b"Authorization", b"token from-the-browser"),
            (b"Cookie", f"_xsrf=1; kernelsession-{PORT}=secret; other=2".encode()),
            (b"Cookie", b"kernelsession-1234=another-proxys; username-127-0-0-1-1=x"),
            (b"Accept-Encoding", b"gzip, br"),
            (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Authorization", b"basic x"),
            (b"X-XSRFToken", b"1"),
        ],
        token=TOKEN,
        cookie_name=f"kernelsession-{PORT}",
    )
    assert header_values(out, b"authorization") == [f"token {TOKEN}".encode()]
    # its own cookie, other `open` proxies' cookies (browsers send them to every port) and
    # jupyter-server login cookies: the token authenticates every request
    assert header_values(out, b"cookie") == [b"_xsrf=1; other=2"]
    assert header_values(out, b"host") == [f"127.0.0.1:{PORT}".encode()]
    assert header_values(out, b"x-xsrftoken") == [b"1"]
    for gone in (b"accept-encoding", b"connection", b"keep-alive", b"proxy-authorization"):
        assert header_values(out, gone) == []


def test_upstream_headers_drop_a_cookie_header_that_only_had_ours() -> None:
    out = upstream_headers(
        [HOST, (b"cookie", b"kernelsession-1=x")], token=TOKEN, cookie_name="kernelsession-1"
    )
    assert header_values(out, b"cookie") == []


def test_upstream_headers_keep_a_websocket_upgrade() -> None:
    out = upstream_headers(
        [
            HOST,
            (b"Connection", b"keep-alive, Upgrade"),
            (b"Upgrade", b"websocket"),
            (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            (b"Sec-WebSocket-Version", b"13"),
            (b"Sec-WebSocket-Protocol", b"v1.kernel.websocket.jupyter.org"),
        ],
        token=TOKEN,
        cookie_name="c",
    )
    assert header_values(out, b"connection") == [b"Upgrade"]
    assert header_values(out, b"upgrade") == [b"websocket"]
    assert header_values(out, b"sec-websocket-key") == [b"dGhlIHNhbXBsZSBub25jZQ=="]
    assert header_values(out, b"sec-websocket-protocol") == [b"v1.kernel.websocket.jupyter.org"]
    assert header_values(out, b"authorization") == [f"token {TOKEN}".encode()]


def test_downstream_headers_never_carry_the_token() -> None:
    out = downstream_headers(
        [
            (b"Location", f"/lab?token={TOKEN}".encode()),
            (b"Content-Type", b"text/html"),
            (b"Content-Length", b"1000"),
            (b"Connection", b"keep-alive"),
            (b"Set-Cookie", b"_xsrf=2|x; Path=/"),
        ],
        token=TOKEN,
        body_length=900,
    )
    assert header_values(out, b"location") == [b"/lab?token="]
    assert header_values(out, b"content-length") == [b"900"]
    assert header_values(out, b"connection") == []
    assert header_values(out, b"set-cookie") == [b"_xsrf=2|x; Path=/"]
    assert all(TOKEN.encode() not in v for _, v in out)


def test_streamed_response_keeps_its_framing() -> None:
    out = downstream_headers(
        [(b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"image/png")], token=TOKEN
    )
    assert header_values(out, b"transfer-encoding") == [b"chunked"]


def test_page_bodies_are_scanned_and_redacted() -> None:
    page = f'<script id="jupyter-config-data">{{"token": "{TOKEN}"}}</script>'.encode()
    assert redact(page, TOKEN) == b'<script id="jupyter-config-data">{"token": ""}</script>'
    assert redact(page, "") == page
    for content_type in (b"text/html; charset=UTF-8", b"application/json", b"text/javascript"):
        assert scanned([(b"content-type", content_type)])
    for content_type in (b"image/png", b"application/octet-stream", b"font/woff2"):
        assert not scanned([(b"content-type", content_type)])
    assert not scanned([])
    assert not scanned([(b"content-type", b"text/event-stream")])
    assert not scanned([(b"content-type", b"text/html"), (b"content-encoding", b"gzip")])
    assert scanned([(b"content-type", b"text/html"), (b"content-encoding", b"identity")])


def test_lab_login_cookie_never_reaches_the_browser() -> None:
    out = downstream_headers(
        [
            (b"Set-Cookie", b'username-127-0-0-1-8888="2|1:0|10:17|..."; expires=x; HttpOnly'),
            (b"set-cookie", b"username-lab-labs-svc-8888=abc; Path=/"),
            (b"Set-Cookie", b"_xsrf=2|aa|bb; Path=/"),
            (b"Content-Type", b"text/html"),
        ],
        token=TOKEN,
    )
    assert header_values(out, b"set-cookie") == [b"_xsrf=2|aa|bb; Path=/"]
    assert header_values(out, b"content-type") == [b"text/html"]


def test_lab_login_cookies_from_the_browser_never_reach_the_lab() -> None:
    out = upstream_headers(
        [HOST, (b"Cookie", b"username-127-0-0-1-8888=stolen; _xsrf=1")],
        token=TOKEN,
        cookie_name=f"kernelsession-{PORT}",
    )
    assert header_values(out, b"cookie") == [b"_xsrf=1"]


def test_login_code_expires() -> None:
    g = Guard(port=PORT, code_seconds=0.2)
    wait_for(lambda: g.code_expired, timeout=10, what="the login code expired")
    answer = check(g, f"/lab?{LOGIN_PARAMETER}={g.login_code}")
    assert answer is not None
    assert answer.status == 403
    assert b"expired" in answer.body
    assert b"set-cookie" not in dict(answer.headers)
    # spent: it does not work later either
    assert g.login_used


def test_login_code_works_within_its_time_once() -> None:
    g = guard()
    assert g.code_seconds == 60
    assert not g.code_expired
    first = check(g, f"/lab?{LOGIN_PARAMETER}={g.login_code}")
    assert first is not None
    assert first.status == 303
    again = check(g, f"/lab?{LOGIN_PARAMETER}={g.login_code}")
    assert again is not None
    assert again.status == 403
