"""The ingress controller's API proxy: Traefik reads the API server through it, Secrets
excepted.

Traefik's ``kubernetesingress`` provider always lists and watches every Secret of the
namespaces it serves (for Ingress TLS, which the local cluster's plain-HTTP entry point
does not use), and RBAC cannot grant "Secrets of Ingress TLS only". So Traefik's service
account gets no access to Secrets, and this sidecar, in Traefik's pod on 127.0.0.1,
forwards every request to the API server (with Traefik's own token, over TLS, verified
with the cluster CA) except those for Secrets, which it answers itself: an empty list, a
watch with no events, "not found". No Secret is ever requested from the API server.

Standard library only: the file is mounted into the container (a ConfigMap) and run with
``python3 -I``. :func:`secret_answer` is pure and unit tested.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_SECRETS = re.compile(r"^/api/v1/(?:namespaces/[^/]+/)?secrets(?:/([^/]+))?/?$")
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
MAX_WATCH_SECONDS = 300


def secret_answer(method: str, target: str) -> tuple[int, list[bytes], float] | None:
    """The answer to a request for Secrets, or None for any other request. Pure.

    Returns (status, JSON documents to send, seconds to keep a watch open): a list is
    empty; a watch sends only the bookmark that ends its initial events when asked for
    them (``sendInitialEvents=true``), then nothing until its timeout; one Secret is not
    found; anything but a read is forbidden.
    """
    url = urllib.parse.urlsplit(target)
    match = _SECRETS.match(url.path)
    if match is None:
        return None
    query = urllib.parse.parse_qs(url.query)
    status_doc = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    if method != "GET":
        doc = {**status_doc, "reason": "Forbidden", "code": 403, "message": "secrets: forbidden"}
        return 403, [json.dumps(doc).encode()], 0.0
    if match.group(1):
        doc = {**status_doc, "reason": "NotFound", "code": 404, "message": "secret not found"}
        return 404, [json.dumps(doc).encode()], 0.0
    if query.get("watch", ["false"])[0] in ("true", "1"):
        seconds = min(float(query.get("timeoutSeconds", [MAX_WATCH_SECONDS])[0]), 300.0)
        events: list[bytes] = []
        if query.get("sendInitialEvents", ["false"])[0] == "true":
            bookmark = {
                "type": "BOOKMARK",
                "object": {
                    "kind": "Secret",
                    "apiVersion": "v1",
                    "metadata": {
                        "resourceVersion": "1",
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                },
            }
            events.append(json.dumps(bookmark).encode() + b"\n")
        return 200, events, seconds
    empty = {"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}}
    return 200, [json.dumps({**empty, "items": []}).encode()], 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("", 0)
    tls: ssl.SSLContext

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _handle(self) -> None:
        answer = secret_answer(self.command, self.path)
        if answer is not None:
            status, docs, keep_open = answer
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if keep_open:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for doc in docs:
                    self._chunk(doc)
                time.sleep(keep_open)
                self._chunk(b"")
            else:
                answer_body = b"".join(docs)
                self.send_header("Content-Length", str(len(answer_body)))
                self.end_headers()
                self.wfile.write(answer_body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        conn = http.client.HTTPSConnection(*self.upstream, context=self.tls, timeout=600)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in _HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while data := resp.read1(65536):
                self._chunk(data)
            self._chunk(b"")
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _handle


def main() -> None:
    """Serve on ``127.0.0.1:$PORT`` (default 8001) until killed."""
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = int(os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
    _Handler.upstream = (host, port)
    _Handler.tls = ssl.create_default_context(cafile=f"{SA_DIR}/ca.crt")
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8001"))), _Handler)
    server.daemon_threads = True
    print(f"apiproxy: serving on 127.0.0.1:{server.server_port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
