"""``KernelSessionClient.credentials()`` raises only its documented typed errors.

The faults (the API server refusing the token Secret with 403, a missing Secret)
need RBAC and objects on an API server; this fast tier cannot start the local
control plane, so a small real HTTP server on loopback answers as the Kubernetes
API server would (same paths and Status bodies). The same 403 and missing session on
the real API server, with RBAC enforced: tests/operator/test_cli_by_name.py
(``test_credentials_errors_from_the_real_api_server``).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes_asyncio import client

from kernelsession.client import (
    KernelSessionApiError,
    KernelSessionClient,
    KernelSessionError,
    KernelSessionFailedError,
    KernelSessionNotFoundError,
    resources,
)

SESSION_PATH = f"/apis/{resources.GROUP}/{resources.VERSION}/namespaces/labs/{resources.PLURAL}/"


def _session(name: str, secret: str) -> dict[str, Any]:
    return {
        "apiVersion": resources.API_VERSION,
        "kind": resources.KIND,
        "metadata": {"name": name, "namespace": "labs", "generation": 1},
        "spec": {"user": "alice"},
        "status": {
            "phase": "Ready",
            "observedGeneration": 1,
            "url": "http://lab.invalid:8888/",
            "tokenSecretName": secret,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _status(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "status": "Failure", "message": reason, "code": code}


ROUTES: dict[str, tuple[int, dict[str, Any]]] = {
    SESSION_PATH + "ok": (200, _session("ok", "ok-token")),
    SESSION_PATH + "forbidden": (200, _session("forbidden", "forbidden-token")),
    SESSION_PATH + "nosecret": (200, _session("nosecret", "gone-token")),
    "/api/v1/namespaces/labs/secrets/ok-token": (
        200,
        {"kind": "Secret", "data": {"token": base64.b64encode(b"s3cret").decode()}},
    ),
    "/api/v1/namespaces/labs/secrets/forbidden-token": (
        403,
        _status(403, 'secrets "forbidden-token" is forbidden: User cannot get resource'),
    ),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = ROUTES.get(self.path.split("?")[0], (404, _status(404, "not found")))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.block_on_close = False  # keep-alive handler threads must not delay teardown
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def _credentials(api_url: str, name: str) -> tuple[str, str, str]:
    cfg = client.Configuration(host=api_url)
    async with (
        client.ApiClient(cfg) as api,
        KernelSessionClient(namespace="labs", api_client=api) as sessions,
    ):
        return await sessions.credentials(name)


async def test_credentials_of_a_ready_session(api_url):
    assert await _credentials(api_url, "ok") == ("http://lab.invalid:8888/", "s3cret", "alice")


async def test_forbidden_secret_is_a_typed_api_error(api_url):
    with pytest.raises(KernelSessionApiError) as excinfo:
        await _credentials(api_url, "forbidden")
    assert excinfo.value.status == 403
    assert "forbidden" in str(excinfo.value)
    assert (excinfo.value.name, excinfo.value.namespace) == ("forbidden", "labs")


async def test_missing_secret_and_missing_session(api_url):
    with pytest.raises(KernelSessionFailedError) as excinfo:
        await _credentials(api_url, "nosecret")
    assert excinfo.value.reason == "TokenMissing"
    with pytest.raises(KernelSessionNotFoundError):
        await _credentials(api_url, "absent")
    assert issubclass(KernelSessionApiError, KernelSessionError)
